//! Moving bytes between two connections.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction. Large enough that a bulk transfer is not syscall-bound, small enough that ten
/// thousand idle connections stay cheap.
const BUFFER: usize = 64 * 1024;

/// Copies both ways until both directions are done; an EOF on one side is passed on as a half-close (shutdown of
/// the write side) of the other, so a client that stops sending still gets the whole answer.
/// Returns (bytes from `a` to `b`, bytes from `b` to `a`).
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, BUFFER, BUFFER).await
}
