//! Moving bytes between two connections.
//!
//! Buffers grow with the traffic, as ztunnel's do: a connection starts with 1 KiB per direction and a direction
//! whose reads keep filling its buffer doubles it, up to 256 KiB. Ten thousand idle or chatty connections cost
//! a few KiB each; a bulk transfer quickly gets a buffer large enough not to be syscall-bound. They shrink back
//! too: a long-lived connection that had one burst does not keep 256 KiB per direction for the rest of its life.
//!
//! An idle direction holds no buffer at all: the buffer is given back whenever a read finds nothing (as long as
//! it is small enough for the allocator's thread cache to hand it back at once) and taken again when bytes
//! come. A reader that can say so without being lent one (a TCP socket: [`ReadReady`]) gets it only once they
//! are there; others (a tunnel stream) are lent one for each read, which costs an allocation per wake-up. Both
//! directions are polled by one future over the two connections, without `tokio::io::split` (which puts each
//! connection behind a lock in an allocation of its own).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const INITIAL: usize = 1024;
const MAX: usize = 256 * 1024;
/// Reads in a row that use under a quarter of the buffer before it is halved.
const SHRINK_AFTER: u32 = 16;
/// The largest buffer given back whenever its reader is drained. Larger ones belong to bulk transfers, whose
/// next read is near: they are kept (and shrink as above) rather than zeroed again at every pause.
const RELEASE_UP_TO: usize = 16 * 1024;

/// A connection the copy can ask whether a read would find something (bytes, an EOF, an error) before it lends
/// it a buffer, so that waking up with nothing to read costs no allocation.
pub(crate) trait ReadReady: AsyncRead + AsyncWrite + Unpin {
    /// `Ready` once a read would not wait, `Pending` (with the waker registered) until then. Readers that
    /// cannot tell without a buffer say `Ready` at once.
    fn poll_read_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ReadReady for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// A tunnel stream's bytes arrive as h2 DATA frames, which it keeps until they are read; it has no cheaper way
/// to say they are there.
impl ReadReady for crate::tunnel::H2Stream {}

/// The in-memory pipe between the L7 client and a local pod's destination side.
impl ReadReady for tokio::io::DuplexStream {}

/// An upgraded (WebSocket) HTTP connection.
impl ReadReady for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}

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
pub(crate) async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: ReadReady,
    B: ReadReady,
{
    let mut a_to_b = OneWay::new();
    let mut b_to_a = OneWay::new();
    poll_fn(|cx| {
        let a_to_b = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let b_to_a = b_to_a.poll(cx, &mut *b, &mut *a)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Where one direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Reading,
    /// `buf[written..filled]` is still to be written.
    Writing {
        written: usize,
        filled: usize,
    },
    /// The reader ended: half-close the writer.
    ShuttingDown,
    Done,
}

/// One direction of the copy: the bytes read from one connection and not yet written to the other.
#[derive(Debug)]
struct OneWay {
    /// Empty while the direction is idle (its last read found nothing, or it has not read yet).
    buf: Vec<u8>,
    sizing: Sizing,
    step: Step,
    total: u64,
}

impl OneWay {
    fn new() -> Self {
        OneWay { buf: Vec::new(), sizing: Sizing::new(), step: Step::Reading, total: 0 }
    }

    /// Moves bytes until the reader has none or the writer takes no more; `Ready` with the bytes copied once the
    /// reader's EOF has been passed on.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<io::Result<u64>>
    where
        R: ReadReady,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.step {
                Step::Reading => {
                    if self.buf.is_empty() {
                        ready!(reader.poll_read_ready(cx))?;
                        self.buf = vec![0; self.sizing.len];
                    }
                    let mut read = ReadBuf::new(&mut self.buf);
                    match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                        Poll::Pending => {
                            if self.buf.len() <= RELEASE_UP_TO {
                                self.buf = Vec::new();
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(result) => result?,
                    }
                    let filled = read.filled().len();
                    if filled == 0 {
                        self.buf = Vec::new();
                        self.step = Step::ShuttingDown;
                    } else {
                        self.step = Step::Writing { written: 0, filled };
                    }
                }
                Step::Writing { written, filled } => {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[written..filled]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    if written + n < filled {
                        self.step = Step::Writing { written: written + n, filled };
                        continue;
                    }
                    self.total += filled as u64;
                    if let Some(len) = self.sizing.after_read(filled) {
                        self.buf = vec![0; len];
                    }
                    self.step = Step::Reading;
                }
                Step::ShuttingDown => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.step = Step::Done;
                }
                Step::Done => return Poll::Ready(Ok(self.total)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Polls `way` once, with the test task's waker.
    async fn poll_once<R: ReadReady, W: AsyncWrite + Unpin>(
        way: &mut OneWay,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>> {
        poll_fn(|cx| Poll::Ready(way.poll(cx, reader, writer))).await
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (peer.expect("connect"), accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn an_idle_tcp_direction_holds_no_buffer_and_takes_one_when_bytes_come() {
        let (mut peer, mut front) = tcp_pair().await;
        let (mut back, mut far) = tokio::io::duplex(64 * 1024);
        let mut way = OneWay::new();

        assert!(poll_once(&mut way, &mut front, &mut back).await.is_pending());
        assert_eq!(way.buf.capacity(), 0, "no buffer before any byte came");

        peer.write_all(b"hello").await.expect("write");
        front.readable().await.expect("readable");
        assert!(poll_once(&mut way, &mut front, &mut back).await.is_pending());
        assert_eq!(way.buf.capacity(), 0, "the buffer is given back once the socket is drained");
        let mut got = [0u8; 5];
        far.read_exact(&mut got).await.expect("relayed");
        assert_eq!(&got, b"hello");

        // A buffer grown by a bulk transfer is kept while its reader pauses.
        way.sizing = Sizing { len: 64 * 1024, small_reads: 0 };
        way.buf = vec![0; 64 * 1024];
        peer.write_all(b"again").await.expect("write");
        front.readable().await.expect("readable");
        assert!(poll_once(&mut way, &mut front, &mut back).await.is_pending());
        assert_eq!(way.buf.len(), 64 * 1024, "a large buffer is kept between reads");
        far.read_exact(&mut got).await.expect("relayed");
        assert_eq!(&got, b"again");

        // The EOF is passed on as a half-close, with the count of what was copied.
        peer.shutdown().await.expect("half-close");
        front.readable().await.expect("readable");
        assert_eq!(poll_once(&mut way, &mut front, &mut back).await.map(|r| r.ok()), Poll::Ready(Some(10)));
        assert_eq!(far.read(&mut got).await.expect("EOF"), 0);
    }

    #[tokio::test]
    async fn a_reader_that_cannot_tell_gives_its_buffer_back_too_once_drained() {
        let (mut near, mut front) = tokio::io::duplex(1024);
        let (mut back, mut far) = tokio::io::duplex(1024);
        let mut way = OneWay::new();
        assert!(poll_once(&mut way, &mut front, &mut back).await.is_pending());
        assert_eq!(way.buf.capacity(), 0, "lent for the read, given back when it found nothing");
        near.write_all(b"hi").await.expect("write");
        assert!(poll_once(&mut way, &mut front, &mut back).await.is_pending());
        assert_eq!(way.buf.capacity(), 0, "given back once drained");
        let mut got = [0u8; 2];
        far.read_exact(&mut got).await.expect("relayed");
        assert_eq!(&got, b"hi");
    }

    /// A connection that fails every read and accepts every write.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl ReadReady for Failing {}

    #[tokio::test]
    async fn an_error_in_one_direction_ends_both() {
        // The other direction is idle and open: only the error can end the copy.
        let (_open, mut idle) = tokio::io::duplex(1024);
        let result = bidirectional(&mut Failing, &mut idle).await;
        assert_eq!(result.map_err(|e| e.kind()).err(), Some(io::ErrorKind::ConnectionReset));
    }

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
