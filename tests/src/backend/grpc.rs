//! Just enough gRPC for end-to-end tests, without protobuf or a gRPC library: the wire framing (a 1-byte
//! compression flag, a 4-byte big-endian length, the message), an echo service on the `http` backend, and a
//! test-side client over HTTP/2 with prior knowledge that reads messages and trailers as they arrive.
//!
//! Service `strait.test.Echo` (messages are opaque bytes):
//! - `Unary`: echoes the one request message;
//! - `Stream`: echoes each request message as soon as it is complete (bidirectional streaming);
//! - `Fail`: a trailers-only response with `grpc-status: 13`.
//!
//! Unary and Stream end with trailers `grpc-status: 0`, `grpc-message: ok`, `x-echo-count: <messages>`. Every
//! response's headers say who answered (`x-backend-name`, `x-backend-version`) and carry each request
//! metadata entry named `x-*` back as `x-echo-<name>`, so a test sees what a proxy added on the way.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::{bail, Context as _, Result};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::mpsc;

use super::server::BoxBody;

pub const SERVICE: &str = "/strait.test.Echo";
pub const UNARY: &str = "/strait.test.Echo/Unary";
pub const STREAM: &str = "/strait.test.Echo/Stream";
pub const FAIL: &str = "/strait.test.Echo/Fail";

/// One length-prefixed gRPC message (uncompressed).
pub fn encode(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// Takes every complete message off the front of `buf`, leaving a partial one in place.
pub fn decode(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut messages = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        messages.push(buf.split_to(len).freeze());
    }
    messages
}

/// A body fed frame by frame through a channel (data frames, then optionally trailers); it ends when the
/// sender is dropped. Used for streamed gRPC responses and for the client's streamed requests.
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl ChannelBody {
    pub fn new(capacity: usize) -> (mpsc::Sender<Frame<Bytes>>, ChannelBody) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

fn trailers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.insert(*name, value);
        }
    }
    map
}

/// True if the `http` backend should answer this request as the gRPC echo service.
pub fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
        && req.uri().path().starts_with(SERVICE)
}

fn grpc_response(body: BoxBody) -> Response<BoxBody> {
    let mut response = Response::new(body);
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The echo service, answering as backend `name` / `version`. Messages are echoed while the request still
/// streams in, so a client can talk to `Stream` in ping-pong fashion.
pub fn serve(req: Request<Incoming>, name: &str, version: &str) -> Response<BoxBody> {
    let mut response = answer(req);
    let headers = response.headers_mut();
    for (key, value) in [("x-backend-name", name), ("x-backend-version", version)] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(key, value);
        }
    }
    response
}

/// `x-echo-<name>: <value>` for each request header `x-<...>` (not already an echo).
fn echoed(request: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in request {
        let name = name.as_str();
        if name.starts_with("x-") && !name.starts_with("x-echo-") {
            if let Ok(echo) = http::header::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes()) {
                out.append(echo, value.clone());
            }
        }
    }
    out
}

fn answer(req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    let echo = echoed(req.headers());
    if path != UNARY && path != STREAM {
        let (code, message) = if path == FAIL { ("13", "failed on purpose") } else { ("12", "unknown method") };
        // Trailers-only: the status travels in the response headers and the stream ends with them.
        let mut response = grpc_response(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
        response.headers_mut().insert("grpc-status", HeaderValue::from_static(code));
        response.headers_mut().insert("grpc-message", HeaderValue::from_static(message));
        response.headers_mut().extend(echo);
        return response;
    }
    let (tx, body) = ChannelBody::new(16);
    tokio::spawn(async move {
        let mut incoming = req.into_body();
        let mut buf = BytesMut::new();
        let mut count = 0u64;
        let mut status = ("0", "ok".to_owned());
        while let Some(frame) = incoming.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    status = ("13", format!("reading the request: {e}"));
                    break;
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            buf.extend_from_slice(&data);
            for message in decode(&mut buf) {
                count += 1;
                if tx.send(Frame::data(encode(&message))).await.is_err() {
                    return;
                }
            }
        }
        if !buf.is_empty() {
            status = ("13", format!("{} bytes of a truncated message", buf.len()));
        }
        let trailers = trailers(&[
            ("grpc-status", status.0.to_owned()),
            ("grpc-message", status.1),
            ("x-echo-count", count.to_string()),
        ]);
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let mut response = grpc_response(body.boxed());
    response.headers_mut().extend(echo);
    response
}

/// A gRPC call in progress on the client side: send messages, read echoes, then the trailers.
pub struct Call {
    tx: Option<mpsc::Sender<Frame<Bytes>>>,
    /// Response headers (for a trailers-only answer they hold `grpc-status`).
    pub headers: HeaderMap,
    pub status: http::StatusCode,
    body: Incoming,
    buf: BytesMut,
    pending: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

/// Starts a call on an HTTP/2 connection: the request headers and `first` (if any) are sent at once; the
/// request stream stays open until [`Call::close_send`].
pub async fn start_call(
    sender: &mut hyper::client::conn::http2::SendRequest<ChannelBody>,
    authority: &str,
    path: &str,
    first: Option<&[u8]>,
) -> Result<Call> {
    let (tx, body) = ChannelBody::new(16);
    if let Some(message) = first {
        tx.send(Frame::data(encode(message))).await.ok().context("request body closed")?;
    }
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body)?;
    sender.ready().await.context("HTTP/2 connection not ready")?;
    let response = sender.send_request(req).await.context("sending the gRPC request")?;
    let (parts, body) = response.into_parts();
    Ok(Call {
        tx: Some(tx),
        headers: parts.headers,
        status: parts.status,
        body,
        buf: BytesMut::new(),
        pending: VecDeque::new(),
        trailers: None,
    })
}

impl Call {
    pub async fn send(&mut self, message: &[u8]) -> Result<()> {
        let tx = self.tx.as_ref().context("request stream already closed")?;
        tx.send(Frame::data(encode(message))).await.ok().context("the request stream was closed by the peer")
    }

    /// Ends the request stream (END_STREAM).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next response message, or `None` once the response has ended (trailers are then in
    /// [`Call::trailers`]).
    pub async fn message(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(Some(message));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    let frame = frame.context("reading the response")?;
                    match frame.into_data() {
                        Ok(data) => {
                            self.buf.extend_from_slice(&data);
                            self.pending.extend(decode(&mut self.buf));
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                self.trailers = Some(t);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reads the rest of the response; returns the remaining messages. Trailers end up in `trailers()`.
    pub async fn finish(&mut self) -> Result<Vec<Bytes>> {
        self.close_send();
        let mut rest = Vec::new();
        while let Some(m) = self.message().await? {
            rest.push(m);
        }
        Ok(rest)
    }

    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// `grpc-status` from the trailers, or from the headers for a trailers-only response.
    pub fn grpc_status(&self) -> Option<String> {
        let from = |m: &HeaderMap| m.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.trailers().and_then(from).or_else(|| from(&self.headers))
    }
}

/// An HTTP/2 (prior knowledge) client connection on `io`, its connection task spawned.
pub async fn connect<I>(io: I) -> Result<hyper::client::conn::http2::SendRequest<ChannelBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(io))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("grpc client connection: {e}");
        }
    });
    Ok(sender)
}

/// Checks a message's bytes, for readable assertion failures.
pub fn expect_message(got: Option<Bytes>, want: &[u8]) -> Result<()> {
    match got {
        Some(m) if m.as_ref() == want => Ok(()),
        Some(m) => bail!("expected message {:?}, got {:?}", String::from_utf8_lossy(want), String::from_utf8_lossy(&m)),
        None => bail!("expected message {:?}, the response ended", String::from_utf8_lossy(want)),
    }
}
