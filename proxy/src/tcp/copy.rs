//! Moving bytes between two connections.
//!
//! Buffers grow with the traffic, as ztunnel's do: a connection starts with 1 KiB per direction and a direction
//! whose reads keep filling its buffer doubles it, up to 256 KiB. Ten thousand idle or chatty connections cost
//! a few KiB each; a bulk transfer quickly gets a buffer large enough not to be syscall-bound.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const INITIAL: usize = 1024;
const MAX: usize = 256 * 1024;

/// Copies both ways until both directions are done; an EOF on one side is passed on as a half-close (shutdown of
/// the write side) of the other, so a client that stops sending still gets the whole answer. An error in either
/// direction ends both. Returns (bytes from `a` to `b`, bytes from `b` to `a`).
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    tokio::try_join!(one_way(&mut a_read, &mut b_write), one_way(&mut b_read, &mut a_write))
}

async fn one_way<R, W>(reader: &mut R, writer: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; INITIAL];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
        if n == buf.len() && buf.len() < MAX {
            buf.resize((buf.len() * 2).min(MAX), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_grows_its_buffers() {
        let (mut client, mut proxy_front) = tokio::io::duplex(64 * 1024);
        let (mut proxy_back, mut server) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(async move { bidirectional(&mut proxy_front, &mut proxy_back).await });

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.expect("read the answer after half-closing");
            answer
        });
        // The server reads everything until the client's half-close, then answers.
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.expect("server read");
        assert!(received == payload, "bytes differ after the relay");
        server.write_all(b"done").await.expect("answer");
        server.shutdown().await.expect("close");
        assert_eq!(writer.await.expect("client"), b"done");
        let (up, down) = relay.await.expect("relay task").expect("relay");
        assert_eq!((up, down), (payload.len() as u64, 4));
    }
}
