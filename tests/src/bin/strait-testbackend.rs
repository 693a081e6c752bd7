//! strait-testbackend: one binary, many behaviours, run inside pod namespaces by the end-to-end harness.
//! Servers print `ready <addr>` once listening; clients print JSON lines. See `strait_tests::backend`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use strait_tests::backend::{client, server, HttpSummary};

#[derive(Parser)]
#[command(name = "strait-testbackend", about = "Test servers and clients for Strait's end-to-end tests")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo bytes back; on EOF finish writing, then shut down the write side (half-close).
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Read to EOF, answer `{"bytes":N,"sha256":"..."}` and close.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// HTTP/1.1 + h2c server answering a JSON description of each request. Per request: /status/<code>,
    /// /delay/<ms>, /hang, /reset, /echo, /bytes/<n>, /upgrade (101, then echo); headers x-backend-status,
    /// x-backend-delay-ms, x-backend-fail-percent; gRPC echo service /strait.test.Echo/{Unary,Stream,Fail}.
    /// Instance-wide: --fail-percent, --hang, and POST /control/fail-percent/<n>, /control/hang/<0|1>,
    /// GET /control/stats.
    Http {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "v1")]
        version: String,
        /// Answer 503 this percentage of requests (`POST /control/fail-percent/<n>` changes it).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        fail_percent: u32,
        /// Never answer (`POST /control/hang/0` resumes).
        #[arg(long)]
        hang: bool,
        /// Wait this many milliseconds before every answer.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Speak only this HTTP version (`http1` or `http2`, h2c); both when absent.
        #[arg(long, value_enum)]
        only: Option<server::HttpOnly>,
    },
    /// Connect, send the marker then N filler bytes, half-close, read to EOF; print a JSON report.
    TcpSend {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 0)]
        bytes: u64,
        #[arg(long, default_value = "")]
        marker: String,
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Send HTTP requests one after another; print one JSON line per request (or one summary line).
    HttpGet {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// `name:value`, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// HTTP/2 with prior knowledge (h2c).
        #[arg(long)]
        http2: bool,
        /// A new connection per request.
        #[arg(long)]
        fresh: bool,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request body.
        #[arg(long)]
        data: Option<String>,
        /// Per-request timeout.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print only counts by status, backend name and version.
        #[arg(long)]
        summary: bool,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(cli.command))
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::TcpEcho { listen } => server::tcp_echo(listen).await,
        Cmd::TcpSink { listen } => server::tcp_sink(listen).await,
        Cmd::Http { listen, name, version, fail_percent, hang, delay_ms, only } => {
            server::http(listen, server::HttpConfig { name, version, fail_percent, hang, delay_ms, only }).await
        }
        Cmd::TcpSend { connect, bytes, marker, timeout_ms } => {
            let report = client::tcp_send(connect, bytes, &marker, Duration::from_millis(timeout_ms)).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::HttpGet { url, count, headers, http2, fresh, method, data, timeout_ms, summary, concurrency } => {
            let mut parsed = Vec::new();
            for h in headers {
                let Some((k, v)) = h.split_once(':') else { bail!("--header {h:?}: expected name:value") };
                parsed.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            let args = client::HttpGetArgs {
                url,
                count,
                headers: parsed,
                http2,
                fresh,
                method,
                data,
                timeout: Duration::from_millis(timeout_ms),
                concurrency,
            };
            let results = client::http_get(args, !summary).await?;
            if summary {
                println!("{}", serde_json::to_string(&HttpSummary::of(&results))?);
            }
            Ok(())
        }
    }
}
