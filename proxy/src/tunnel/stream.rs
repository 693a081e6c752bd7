//! An HTTP/2 stream as a byte stream, so a CONNECT tunnel can be copied like any socket.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One CONNECT stream: reads DATA frames from `recv`, writes them to `send`. Shutting down the write side ends
/// the stream (END_STREAM), which is how half-close crosses the tunnel.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    write_closed: bool,
    /// End the stream (rather than let h2 reset it) when dropped unshut; see [`H2Stream::ends_on_drop`].
    end_on_drop: bool,
    // Whatever must live exactly as long as the stream (e.g. the pool's stream count).
    _guard: Option<Box<dyn Send + Sync>>,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream { send, recv, pending: Bytes::new(), write_closed: false, end_on_drop: false, _guard: None }
    }

    /// For a stream served as HTTP: hyper drops its connection without shutting it down after answering a
    /// request that asked for an upgrade it did not get (a denied WebSocket handshake, say); ending the stream
    /// then lets the answer reach the peer instead of being discarded with the reset h2 sends for an abandoned
    /// stream. Byte tunnels keep the reset, so a failed copy still looks like a reset to the far end.
    pub fn ends_on_drop(mut self) -> Self {
        self.end_on_drop = true;
        self
    }

    pub fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(guard);
        self
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    // A reset from the peer is what a TCP reset would have been without the tunnel.
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                // Give the window back only as the application consumes, so a slow reader slows the sender.
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        let available = loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "tunnel stream closed"))),
            }
        };
        let n = available.min(buf.len());
        self.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if self.end_on_drop && !self.write_closed {
            self.write_closed = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }
}
