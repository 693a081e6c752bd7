//! `example-ws-echo`: a WebSocket echo server. It greets each connection with one text message naming itself
//! and the caller's identity (from the `x-forwarded-client-cert` header of the upgrade request, which the
//! destination proxy adds), then sends back every text and binary message as it came (up to 1 MiB each).
//!
//! Listens on `--listen`, else `$STRAIT_LISTEN`.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, env = "STRAIT_LISTEN")]
    listen: SocketAddr,
    #[arg(long, env = "STRAIT_WORKLOAD", default_value = "ws-echo")]
    name: String,
}

/// The largest message echoed; a larger one closes the connection.
const MAX_MESSAGE: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("ws-echo listening on {}", args.listen);
    loop {
        let (stream, peer) = listener.accept().await.context("accepting")?;
        let name = args.name.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, name).await {
                eprintln!("{peer}: {e:#}");
            }
        });
    }
}

async fn serve(stream: tokio::net::TcpStream, name: String) -> anyhow::Result<()> {
    let mut caller = String::from("unknown");
    // The callback's signature is tungstenite's (its error is a whole HTTP response).
    #[allow(clippy::result_large_err)]
    let remember = |request: &Request, response: Response| {
        let xfcc = request.headers().get("x-forwarded-client-cert").and_then(|v| v.to_str().ok());
        caller = strait_example_grpc::caller(xfcc);
        Ok(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let mut ws = tokio_tungstenite::accept_hdr_async_with_config(stream, remember, Some(config))
        .await
        .context("WebSocket handshake")?;
    let greeting = serde_json::json!({"server": name, "caller": caller}).to_string();
    ws.send(Message::text(greeting)).await?;
    while let Some(message) = ws.next().await {
        match message? {
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}
