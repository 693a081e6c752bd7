//! `strait http-get` (hidden): a tiny HTTP/1.1 client for checks from inside a pod's namespace, where the
//! test harness's client is not at hand (`ip netns exec <pod> strait http-get --url http://10.96.0.10:8080/`).
//! Prints one JSON line per request: `{"status":200,"body":"..."}`, or `{"error":"..."}` when a request fails
//! (then the exit status is non-zero, after all requests).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

#[derive(Args, Debug)]
pub struct HttpGetArgs {
    /// `http://<ip>:<port>/<path>`: an IP address, since a pod has no name resolution.
    #[arg(long)]
    url: http::Uri,
    /// How many requests, one after another, each on its own connection.
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[arg(long, default_value = "GET")]
    method: http::Method,
    /// Timeout of each request, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

pub fn run(args: HttpGetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.url.scheme_str() == Some("http"), "--url {}: only http:// URLs", args.url);
    let authority = args.url.authority().with_context(|| format!("--url {}: no host", args.url))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr =
        host.parse().with_context(|| format!("--url {}: the host must be an IP address", args.url))?;
    let addr = SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let mut failed = 0;
    runtime.block_on(async {
        for _ in 0..args.count {
            let outcome = tokio::time::timeout(Duration::from_secs(args.timeout), request(&args, addr)).await;
            let line = match outcome {
                Ok(Ok((status, body))) => serde_json::json!({"status": status, "body": body}),
                Ok(Err(e)) => {
                    failed += 1;
                    serde_json::json!({"error": format!("{e:#}")})
                }
                Err(_) => {
                    failed += 1;
                    serde_json::json!({"error": format!("no answer within {} s", args.timeout)})
                }
            };
            println!("{line}");
        }
    });
    anyhow::ensure!(failed == 0, "{failed} of {} request(s) failed", args.count);
    Ok(())
}

async fn request(args: &HttpGetArgs, addr: SocketAddr) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP/1.1 handshake")?;
    tokio::spawn(connection);
    let path = args.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = http::Request::builder()
        .method(args.method.clone())
        .uri(path)
        .header(http::header::HOST, args.url.authority().map(|a| a.as_str()).unwrap_or_default())
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender.send_request(request).await.context("sending the request")?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.context("reading the response body")?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
