//! Moving bytes between two connections.
//!
//! Buffers grow with the traffic, as ztunnel's do: a connection starts with 1 KiB per direction and a direction
//! whose reads keep filling its buffer doubles it, up to 256 KiB. Ten thousand idle or chatty connections cost
//! a few KiB each; a bulk transfer quickly gets a buffer large enough not to be syscall-bound. They shrink back
//! too: a long-lived connection that had one burst does not keep 256 KiB per direction for the rest of its life.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const INITIAL: usize = 1024;
const MAX: usize = 256 * 1024;
/// Reads in a row that use under a quarter of the buffer before it is halved.
const SHRINK_AFTER: u32 = 16;

/// The size a direction's buffer should have, from the reads it has seen.
#[derive(Debug)]
struct Sizing {
    len: usize,
    small_reads: u32,
}

impl Sizing {
    fn new() -> Self {
        Sizing { len: INITIAL, small_reads: 0 }
    }

    /// After a read of `n` bytes into a buffer of `self.len`: the new length, if it should change.
    fn after_read(&mut self, n: usize) -> Option<usize> {
        if n == self.len && self.len < MAX {
            self.small_reads = 0;
            self.len = (self.len * 2).min(MAX);
            return Some(self.len);
        }
        if n < self.len / 4 && self.len > INITIAL {
            self.small_reads += 1;
            if self.small_reads >= SHRINK_AFTER {
                self.small_reads = 0;
                self.len = (self.len / 2).max(INITIAL);
                return Some(self.len);
            }
        } else {
            self.small_reads = 0;
        }
        None
    }
}

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
    let mut sizing = Sizing::new();
    let mut buf = vec![0u8; sizing.len];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        total += n as u64;
        if let Some(len) = sizing.after_read(n) {
            buf.resize(len, 0);
            buf.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_with_full_reads_and_shrink_back_when_traffic_is_small() {
        let mut sizing = Sizing::new();
        while sizing.len < MAX {
            let len = sizing.len;
            assert_eq!(sizing.after_read(len), Some(len * 2));
        }
        assert_eq!(sizing.after_read(MAX), None, "never above the maximum");
        let mut shrunk = Vec::new();
        for _ in 0..10_000 {
            if let Some(len) = sizing.after_read(100) {
                shrunk.push(len);
            }
        }
        assert_eq!(sizing.len, INITIAL, "back to the initial size: {shrunk:?}");
        assert_eq!(shrunk.first(), Some(&(MAX / 2)));
        // One small read among large ones does not shrink it.
        let mut sizing = Sizing { len: 64 * 1024, small_reads: 0 };
        for i in 0..100 {
            let n = if i % 2 == 0 { 10 } else { 40 * 1024 };
            assert_eq!(sizing.after_read(n), None);
        }
    }

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
