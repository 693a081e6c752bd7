//! `example-client`: calls the example's services and prints what happened as one line of JSON. Run it as a
//! workload of the local mesh (`strait local exec --as client -- example-client unary --name you`): it finds
//! the services in `$STRAIT_SERVICE_GREETER` and `$STRAIT_SERVICE_ECHO`, which `exec` points at forwarders
//! connecting from that workload's address. Exits non-zero when a call did not succeed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use strait_example_grpc::{frame, unframe, HelloReply, HelloRequest, SAY_HELLO, SAY_HELLOS};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand, Debug)]
enum Call {
    /// `SayHello`, `--count` times on one connection: counts of statuses, versions and callers.
    Unary {
        #[arg(long, env = "STRAIT_SERVICE_GREETER")]
        target: String,
        #[arg(long, default_value = "world")]
        name: String,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Ask the server to fail every other call with UNAVAILABLE (`x-example-fail: unavailable`).
        #[arg(long)]
        fail_unavailable: bool,
    },
    /// `SayHellos`: the replies, then the status and trailers.
    Stream {
        #[arg(long, env = "STRAIT_SERVICE_GREETER")]
        target: String,
        #[arg(long, default_value = "world")]
        name: String,
        #[arg(long, default_value_t = 3)]
        count: u32,
    },
    /// A WebSocket session: the greeting, then a text and a binary message echoed.
    Ws {
        #[arg(long, env = "STRAIT_SERVICE_ECHO")]
        target: String,
        #[arg(long, default_value = "hello")]
        text: String,
        /// Size of the binary message, in bytes.
        #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
        binary: u32,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let (out, ok) = match tokio::time::timeout(Duration::from_secs(60), run(Cli::parse().call)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => (json!({"error": format!("{e:#}")}), false),
        Err(_) => (json!({"error": "no result within 60 s"}), false),
    };
    println!("{out}");
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn run(call: Call) -> anyhow::Result<(Value, bool)> {
    match call {
        Call::Unary { target, name, count, fail_unavailable } => {
            let mut sender = connect(&target).await?;
            let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
            let mut versions: BTreeMap<String, u32> = BTreeMap::new();
            let mut callers: BTreeMap<String, u32> = BTreeMap::new();
            let mut messages: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..count {
                let request = HelloRequest { name: name.clone(), count: 0 };
                let answer = grpc_call(&mut sender, &target, SAY_HELLO, &request, fail_unavailable).await?;
                *statuses.entry(answer.status_text()).or_default() += 1;
                if !answer.message.is_empty() {
                    *messages.entry(answer.message.clone()).or_default() += 1;
                }
                for reply in &answer.replies {
                    *versions.entry(reply.version.clone()).or_default() += 1;
                    *callers.entry(reply.caller.clone()).or_default() += 1;
                }
            }
            let ok = statuses.get("0") == Some(&count);
            let out = json!({"calls": count, "statuses": statuses, "versions": versions, "callers": callers,
                             "messages": messages});
            Ok((out, ok))
        }
        Call::Stream { target, name, count } => {
            let mut sender = connect(&target).await?;
            let answer = grpc_call(&mut sender, &target, SAY_HELLOS, &HelloRequest { name, count }, false).await?;
            let replies: Vec<&str> = answer.replies.iter().map(|r| r.message.as_str()).collect();
            let ok = answer.status == Some(0);
            let out = json!({"replies": replies, "status": answer.status, "message": answer.message,
                             "http": answer.http, "trailers": answer.trailers});
            Ok((out, ok))
        }
        Call::Ws { target, text, binary } => ws(&target, text, binary as usize).await,
    }
}

type Sender = hyper::client::conn::http2::SendRequest<
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

async fn connect(target: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

#[derive(Default)]
struct Answer {
    http: u16,
    status: Option<u32>,
    message: String,
    replies: Vec<HelloReply>,
    trailers: BTreeMap<String, String>,
}

impl Answer {
    fn status_text(&self) -> String {
        match self.status {
            Some(code) => code.to_string(),
            None => format!("http {}", self.http),
        }
    }

    fn read_status(&mut self, map: &http::HeaderMap) {
        if let Some(code) = map.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            self.status = Some(code);
        }
        if let Some(message) = map.get("grpc-message").and_then(|v| v.to_str().ok()) {
            self.message = message.to_string();
        }
    }
}

/// One call with one request message. The request body has no announced length, as gRPC libraries send it.
async fn grpc_call(
    sender: &mut Sender,
    target: &str,
    path: &str,
    request: &HelloRequest,
    fail_unavailable: bool,
) -> anyhow::Result<Answer> {
    let frames = vec![Ok(Frame::data(frame(&request.encode())))];
    let mut builder = http::Request::post(format!("http://{target}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if fail_unavailable {
        builder = builder.header("x-example-fail", "unavailable");
    }
    let request = builder.body(StreamBody::new(futures_util::stream::iter(frames)))?;
    sender.ready().await.context("the connection closed")?;
    let response = sender.send_request(request).await.context("sending the call")?;
    let mut answer = Answer { http: response.status().as_u16(), ..Answer::default() };
    let grpc = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    if answer.http != 200 || !grpc {
        // Not a gRPC answer (an HTTP error from something on the way): gRPC clients map the HTTP status.
        return Ok(answer);
    }
    answer.read_status(response.headers());
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the response")?;
        match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                for message in unframe(&mut buf)? {
                    answer.replies.push(HelloReply::decode(&message)?);
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    answer.read_status(&trailers);
                    for (name, value) in &trailers {
                        answer.trailers.insert(name.to_string(), value.to_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
    }
    Ok(answer)
}

async fn ws(target: &str, text: String, binary: usize) -> anyhow::Result<(Value, bool)> {
    let url = format!("ws://{target}/echo");
    let stream = tokio::net::TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
    let (mut ws, response) = match tokio_tungstenite::client_async(url.as_str(), stream).await {
        Ok(connected) => connected,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return Ok((json!({"refused": response.status().as_u16()}), false));
        }
        Err(e) => return Err(e).context("WebSocket handshake"),
    };
    let greeting = match ws.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(text.as_str()).unwrap_or(Value::Null),
        other => bail!("expected the greeting, got {other:?}"),
    };
    ws.send(Message::text(text.clone())).await?;
    let text_ok = matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.as_str() == text);
    let payload: Vec<u8> = (0..binary).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(payload.clone())).await?;
    let binary_ok = matches!(ws.next().await, Some(Ok(Message::Binary(b))) if b[..] == payload[..]);
    ws.close(None).await?;
    let out = json!({"http": response.status().as_u16(), "greeting": greeting, "text_echoed": text_ok,
                     "binary_echoed": binary_ok, "binary_bytes": binary});
    Ok((out, text_ok && binary_ok))
}
