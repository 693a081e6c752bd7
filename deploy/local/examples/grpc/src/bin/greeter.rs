//! `example-greeter`: the gRPC service `strait.example.Greeter` (greeter.proto) over HTTP/2 without TLS, as a
//! workload of the local mesh runs it: the mesh's proxies do mTLS, the service speaks plain gRPC.
//!
//! - `SayHello`: one reply naming the server's version and the caller's identity (from the
//!   `x-forwarded-client-cert` header the destination proxy adds). An empty name fails with INVALID_ARGUMENT.
//!   A call carrying the metadata `x-example-fail: unavailable` fails with UNAVAILABLE every other time (per
//!   server process): what a retry policy with `retryOn: unavailable` hides.
//! - `SayHellos`: `count` replies streamed, then the status in trailers; more than 10 asked for ends, after the
//!   10th reply, with RESOURCE_EXHAUSTED and the trailer `x-example-sent: 10`.
//!
//! Listens on `--listen`, else `$STRAIT_LISTEN` (which `strait local` sets for a `run:` workload).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt as _, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_example_grpc::{code, frame, unframe, HelloReply, HelloRequest, MAX_HELLOS, MAX_MESSAGE};

#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "STRAIT_LISTEN")]
    listen: SocketAddr,
    /// The version reported in every reply.
    #[arg(long = "app-version", env = "STRAIT_VERSION", default_value = "v1")]
    version: String,
}

struct Server {
    version: String,
    /// Calls that asked to be failed, so far: every other one fails.
    flaky: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("greeter {} listening on {}", args.version, args.listen);
    let server = Arc::new(Server { version: args.version, flaky: AtomicU64::new(0) });
    loop {
        let (stream, peer) = listener.accept().await.context("accepting")?;
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let caller =
            strait_example_grpc::caller(req.headers().get("x-forwarded-client-cert").and_then(|v| v.to_str().ok()));
        let fail = req.headers().get("x-example-fail").is_some_and(|v| v == "unavailable");
        let request = match read_request(req).await {
            Ok(request) => request,
            Err((status, message)) => return trailers_only(status, &message),
        };
        eprintln!("{path} name={:?} count={} caller={caller}", request.name, request.count);
        match path.as_str() {
            strait_example_grpc::SAY_HELLO => {
                if fail && self.flaky.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                    return trailers_only(code::UNAVAILABLE, "failing every other call, as asked");
                }
                if request.name.is_empty() {
                    return trailers_only(code::INVALID_ARGUMENT, "name is required");
                }
                let reply =
                    HelloReply { message: format!("Hello, {}", request.name), version: self.version.clone(), caller };
                respond(vec![reply], code::OK, "", 1)
            }
            strait_example_grpc::SAY_HELLOS => {
                let sent = request.count.min(MAX_HELLOS);
                let replies = (1..=sent)
                    .map(|i| HelloReply {
                        message: format!("Hello #{i}, {}", request.name),
                        version: self.version.clone(),
                        caller: caller.clone(),
                    })
                    .collect();
                if request.count > MAX_HELLOS {
                    respond(replies, code::RESOURCE_EXHAUSTED, "at most 10 greetings per call", sent)
                } else {
                    respond(replies, code::OK, "", sent)
                }
            }
            _ => trailers_only(code::UNIMPLEMENTED, "unknown method"),
        }
    }
}

/// The one request message of a call.
async fn read_request(req: Request<Incoming>) -> Result<HelloRequest, (u32, String)> {
    let body = Limited::new(req.into_body(), MAX_MESSAGE + 5)
        .collect()
        .await
        .map_err(|e| (code::RESOURCE_EXHAUSTED, format!("reading the request: {e}")))?
        .to_bytes();
    let mut buf = BytesMut::from(&body[..]);
    let messages = unframe(&mut buf).map_err(|e| (code::INTERNAL, e.to_string()))?;
    match messages.as_slice() {
        [one] if buf.is_empty() => HelloRequest::decode(one).map_err(|e| (code::INTERNAL, e.to_string())),
        _ => Err((code::INTERNAL, format!("expected one request message, got {}", messages.len()))),
    }
}

fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A call failed before any reply: the status in the response headers, which end the stream.
fn trailers_only(status: u32, message: &str) -> Response<Body> {
    let mut response = grpc_response(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
    response.headers_mut().insert("grpc-status", HeaderValue::from(status));
    if let Ok(message) = HeaderValue::from_str(message) {
        response.headers_mut().insert("grpc-message", message);
    }
    response
}

/// Replies, then trailers with `status`.
fn respond(replies: Vec<HelloReply>, status: u32, message: &str, sent: u32) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(message) = HeaderValue::from_str(message) {
        if !message.is_empty() {
            trailers.insert("grpc-message", message);
        }
    }
    trailers.insert("x-example-sent", HeaderValue::from(sent));
    let frames = replies
        .iter()
        .map(|r| Ok(Frame::data(frame(&r.encode()))))
        .chain(std::iter::once(Ok(Frame::trailers(trailers))))
        .collect::<Vec<Result<Frame<Bytes>, Infallible>>>();
    grpc_response(StreamBody::new(futures_util::stream::iter(frames)).boxed())
}
