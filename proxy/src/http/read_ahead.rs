//! hyper_util's server first reads a connection's opening 24 bytes on their own, to tell an HTTP/2 preface from
//! an HTTP/1 request, and only then the rest of the request head: two `recvfrom` calls for every new client
//! connection, where the head nearly always arrived in one segment. [`ReadAhead`] answers that first small read
//! from one larger read ([`READ_AHEAD`] bytes) and hands out what is left to the reads that follow, so a new
//! connection's request costs one system call. Reads with room for [`READ_AHEAD`] bytes, and every read after the
//! first, go straight to the socket.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the first read asks the socket for: a typical request head, well under a segment.
pub const READ_AHEAD: usize = 4096;

/// An IO whose first read, when the caller asks for less than [`READ_AHEAD`] bytes, reads [`READ_AHEAD`].
///
/// The read lands on the stack: an idle connection, whose first read waits, holds no buffer, and what the caller
/// had no room for is kept in one allocation of just its size until the next reads take it.
#[derive(Debug)]
pub struct ReadAhead<T> {
    io: T,
    /// Bytes read ahead and not yet handed out; `None` once they are.
    ahead: Option<Vec<u8>>,
    /// Where the unread part of `ahead` starts.
    start: usize,
    /// The first read has happened: from here on reads pass through.
    first_done: bool,
}

impl<T> ReadAhead<T> {
    pub fn new(io: T) -> ReadAhead<T> {
        ReadAhead { io, ahead: None, start: 0, first_done: false }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(ahead) = &this.ahead {
            let unread = &ahead[this.start..];
            let n = unread.len().min(buf.remaining());
            buf.put_slice(&unread[..n]);
            this.start += n;
            if this.start == ahead.len() {
                this.ahead = None;
            }
            return Poll::Ready(Ok(()));
        }
        if this.first_done || buf.remaining() >= READ_AHEAD {
            this.first_done = true;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut storage = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut into = ReadBuf::uninit(&mut storage);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut into))?;
        this.first_done = true;
        let read = into.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.ahead = Some(read[n..].to_vec());
            this.start = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Counts the reads that reach the socket and return something.
    struct CountingReads {
        tcp: TcpStream,
        reads: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingReads {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let result = ready!(Pin::new(&mut self.tcp).poll_read(cx, buf));
            self.reads.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(result)
        }
    }

    async fn pair() -> (TcpStream, CountingReads, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let reads = Arc::new(AtomicUsize::new(0));
        (client, CountingReads { tcp: server, reads: reads.clone() }, reads)
    }

    const HEAD: &[u8] = b"GET /reviews/1 HTTP/1.1\r\nhost: reviews\r\naccept: */*\r\nuser-agent: oha/1\r\n\r\n";

    #[tokio::test]
    async fn a_small_first_read_and_the_one_after_it_cost_one_socket_read() {
        let (mut client, server, reads) = pair().await;
        client.write_all(HEAD).await.expect("write");
        let mut server = ReadAhead::new(server);
        // What hyper_util does: 24 bytes, then the rest into its own buffer.
        let mut preface = [0u8; 24];
        server.read_exact(&mut preface).await.expect("first read");
        let mut rest = vec![0u8; 16 * 1024];
        let n = server.read(&mut rest).await.expect("second read");
        assert_eq!([&preface[..], &rest[..n]].concat(), HEAD);
        assert_eq!(reads.load(Ordering::Relaxed), 1, "the head took more than one read from the socket");
        assert!(server.ahead.is_none(), "the read-ahead buffer is given back once handed out");
    }

    #[tokio::test]
    async fn bytes_after_the_read_ahead_come_through_in_order() {
        let (mut client, server, _) = pair().await;
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
        });
        let mut server = ReadAhead::new(server);
        let mut first = [0u8; 10];
        server.read_exact(&mut first).await.expect("first read");
        let mut received = first.to_vec();
        server.read_to_end(&mut received).await.expect("read to end");
        writer.await.expect("writer");
        assert_eq!(received, body);
    }

    #[tokio::test]
    async fn a_first_read_with_room_goes_straight_to_the_socket() {
        let (mut client, server, reads) = pair().await;
        client.write_all(HEAD).await.expect("write");
        let mut server = ReadAhead::new(server);
        let mut head = vec![0u8; READ_AHEAD];
        let n = server.read(&mut head).await.expect("read");
        assert_eq!(&head[..n], HEAD);
        assert!(server.ahead.is_none(), "no buffer of its own when the caller's is large enough");
        assert_eq!(reads.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (_client, server, _) = pair().await;
        let mut server = ReadAhead::new(server);
        let mut small = [0u8; 24];
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut small)).await;
        assert!(waited.is_err(), "a read on a silent connection returned: {waited:?}");
        assert!(server.ahead.is_none() && !server.first_done);
    }

    #[tokio::test]
    async fn end_of_stream_on_the_first_read_is_end_of_stream() {
        let (client, server, _) = pair().await;
        drop(client);
        let mut server = ReadAhead::new(server);
        let mut small = [0u8; 24];
        assert_eq!(server.read(&mut small).await.expect("read"), 0);
        assert_eq!(server.read(&mut small).await.expect("read again"), 0);
    }
}
