//! The last response of an HTTP/1.1 connection that closes after it (the client sent `Connection: close`, as
//! health checkers and one-shot clients such as `curl` do) leaves in the same TCP segment as the connection's
//! FIN. Without this the response goes out at once (TCP_NODELAY) and the FIN, a moment later when the server
//! shuts the connection down, in a segment of its own: one more packet through the node's capture rules and the
//! pod's veth, and one more for the client's kernel to acknowledge, on every such connection.
//!
//! Once the service says the response is the last, the socket is corked (TCP_CORK) before it is written: the
//! kernel holds a partial segment back until the shutdown that follows, and then sends it with the FIN set (Linux
//! tacks the FIN on the last unsent segment). Full segments of a larger response leave as they are written; the
//! service marks only responses whose body is small and of known length (`MAX_CORKED_BODY`), so no stream of
//! chunks waits for the cork's 200 ms bound.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest response body (its declared length) held back to share the FIN's segment.
pub const MAX_CORKED_BODY: u64 = 16 * 1024;

/// Set by the service when the response it returns is the connection's last.
#[derive(Clone, Debug, Default)]
pub struct LastResponse(Arc<AtomicBool>);

impl LastResponse {
    pub fn mark(&self) {
        // The service and the connection's IO are polled by the same task: no ordering to establish.
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A client's TCP connection that corks itself before the first write after [`LastResponse::mark`].
#[derive(Debug)]
pub struct CorkOnClose {
    tcp: TcpStream,
    last: LastResponse,
    corked: bool,
}

impl CorkOnClose {
    pub fn new(tcp: TcpStream) -> (CorkOnClose, LastResponse) {
        let last = LastResponse::default();
        (CorkOnClose { tcp, last: last.clone(), corked: false }, last)
    }

    fn cork_if_last(&mut self) {
        if !self.corked && self.last.is_marked() {
            self.corked = true;
            // Best effort: should it fail, the FIN leaves in a segment of its own, as without the cork.
            if let Err(e) = SockRef::from(&self.tcp).set_tcp_cork(true) {
                tracing::debug!(error = %e, "could not cork a closing connection");
            }
        }
    }
}

impl AsyncRead for CorkOnClose {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for CorkOnClose {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.cork_if_last();
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.cork_if_last();
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    /// The FIN goes out with whatever the cork holds.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Does the server close the connection after answering `request`? HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 unless `Connection: keep-alive` (RFC 9112 9.3), as hyper decides it.
pub fn request_closes<B>(request: &http::Request<B>) -> bool {
    let has = |token: &str| {
        request
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|value| value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    match request.version() {
        http::Version::HTTP_11 => has("close"),
        http::Version::HTTP_10 | http::Version::HTTP_09 => !has("keep-alive"),
        _ => false,
    }
}

/// Is `response`, sent as a connection's last, small enough to wait for the FIN? Never a 101 (the connection
/// becomes the upgraded stream) or a body of unknown length (a stream whose chunks must not wait).
pub fn corkable<B: hyper::body::Body>(response: &http::Response<B>) -> bool {
    response.status() != http::StatusCode::SWITCHING_PROTOCOLS
        && response.body().size_hint().exact().is_some_and(|len| len <= MAX_CORKED_BODY)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn request(version: http::Version, connection: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().version(version).uri("/");
        if let Some(value) = connection {
            request = request.header(http::header::CONNECTION, value);
        }
        request.body(()).expect("a request")
    }

    #[test]
    fn which_requests_close_their_connection() {
        use http::Version;
        assert!(request_closes(&request(Version::HTTP_11, Some("close"))));
        assert!(request_closes(&request(Version::HTTP_11, Some("te, Close"))));
        assert!(!request_closes(&request(Version::HTTP_11, None)));
        assert!(!request_closes(&request(Version::HTTP_11, Some("keep-alive"))));
        assert!(!request_closes(&request(Version::HTTP_11, Some("closed"))));
        assert!(request_closes(&request(Version::HTTP_10, None)));
        assert!(!request_closes(&request(Version::HTTP_10, Some("Keep-Alive"))));
        assert!(!request_closes(&request(Version::HTTP_2, Some("close"))));
    }

    #[test]
    fn which_responses_wait_for_the_fin() {
        let full = |len: usize| http::Response::new(Full::new(Bytes::from(vec![b'x'; len])));
        assert!(corkable(&full(14)));
        assert!(corkable(&full(MAX_CORKED_BODY as usize)));
        assert!(!corkable(&full(MAX_CORKED_BODY as usize + 1)), "a large body is not held back");
        let mut upgrade = full(0);
        *upgrade.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        assert!(!corkable(&upgrade), "a 101's connection becomes the upgraded stream");
        let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
            Bytes::from_static(b"chunk"),
        ))]);
        let streamed = http::Response::new(StreamBody::new(chunks).boxed_unsync());
        assert!(!corkable(&streamed), "a body of unknown length is not held back");
    }

    /// The cork is set by the first write after the mark, not before; what was written arrives whole with the
    /// FIN once the connection is shut down.
    #[tokio::test]
    async fn corks_after_the_mark_and_the_shutdown_sends_everything() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut io, last) = CorkOnClose::new(tcp);

        io.write_all(b"first ").await.expect("write");
        assert!(!SockRef::from(&io.tcp).tcp_cork().expect("option"), "corked before the last response");
        let mut first = [0u8; 6];
        client.read_exact(&mut first).await.expect("the first write is sent at once");

        last.mark();
        io.write_all(b"last").await.expect("write");
        assert!(SockRef::from(&io.tcp).tcp_cork().expect("option"), "the last response is not corked");
        io.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("the rest, then the FIN");
        assert_eq!(rest, b"last");
    }
}
