//! The benchmark's own load generators (threads of this process, sockets in the client pod's namespace):
//! a bulk writer, a connection loop, keep-alive HTTP/1.1 and HTTP/2 clients, and idle connections.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_tests::exec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stats::{micros, RunStats};
use crate::ECHO_BYTES;

/// Runs a current-thread tokio runtime on a thread inside `netns` until `make()` completes; sockets it creates
/// live in that namespace.
pub fn block_on_in<T, F, Fut>(netns: &str, make: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    exec::in_netns(netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(make()).map_err(std::io::Error::other)
    })
}

/// Writes `bytes` to the sink at `target` from `netns`, half-closes, waits for the count; returns the time from
/// before the connect to the answer.
pub fn bulk_send(netns: &str, target: SocketAddr, bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = exec::connect_from(netns, target)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).context("writing to the sink")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).context("reading the sink's count")?;
    let elapsed = start.elapsed();
    if u64::from_be_bytes(count) != bytes {
        bail!("the sink at {target} counted {} bytes, {bytes} were sent", u64::from_be_bytes(count));
    }
    Ok(elapsed)
}

/// `concurrency` clients in `netns`, each looping connect / write 1 KiB / read 1 KiB / read EOF / close for
/// `window`.
pub fn connection_run(netns: &str, target: SocketAddr, concurrency: usize, window: Duration) -> Result<RunStats> {
    block_on_in(netns, move || async move {
        let warmup = Duration::from_millis(200);
        let start = Instant::now();
        let measure_from = start + warmup;
        let deadline = measure_from + window;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            tasks.spawn(async move {
                let mut stats = RunStats::default();
                let payload = [0xa5u8; ECHO_BYTES];
                let mut buf = [0u8; ECHO_BYTES];
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    let result = async {
                        let mut s = tokio::net::TcpStream::connect(target).await?;
                        s.set_nodelay(true)?;
                        s.write_all(&payload).await?;
                        s.read_exact(&mut buf).await?;
                        let mut end = [0u8; 1];
                        if s.read(&mut end).await? != 0 {
                            return Err(std::io::Error::other("echo sent more than it got"));
                        }
                        Ok::<_, std::io::Error>(())
                    };
                    let ok = tokio::time::timeout(Duration::from_secs(5), result).await.is_ok_and(|r| r.is_ok());
                    if t0 >= measure_from {
                        if ok {
                            stats.latencies.push(micros(t0.elapsed()));
                        } else {
                            stats.errors += 1;
                        }
                    }
                }
                stats
            });
        }
        let mut total = RunStats::default();
        while let Some(stats) = tasks.join_next().await {
            total.merge(stats?);
        }
        total.elapsed = window;
        Ok(total)
    })
}

#[derive(Clone, Copy)]
pub enum HttpMode {
    H1 { connections: usize },
    H2 { streams: usize },
}

/// Keep-alive GETs to `target` from `netns` for `window` (after a warm-up that opens the connections).
pub fn http_run(netns: &str, target: SocketAddr, mode: HttpMode, window: Duration) -> Result<RunStats> {
    block_on_in(netns, move || async move {
        let warmup = Duration::from_millis(300);
        let measure_from = Instant::now() + warmup;
        let deadline = measure_from + window;
        let authority = target.to_string();
        let mut tasks = tokio::task::JoinSet::new();
        match mode {
            HttpMode::H1 { connections } => {
                for _ in 0..connections {
                    let stream = tokio::net::TcpStream::connect(target).await?;
                    stream.set_nodelay(true)?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
                    tokio::spawn(conn);
                    let authority = authority.clone();
                    tasks.spawn(async move {
                        let mut stats = RunStats::default();
                        loop {
                            let t0 = Instant::now();
                            if t0 >= deadline {
                                break;
                            }
                            let ok = async {
                                sender.ready().await?;
                                let response = sender.send_request(get("/", &authority)?).await?;
                                let ok = response.status().is_success();
                                response.into_body().collect().await?;
                                anyhow::Ok(ok)
                            }
                            .await
                            .unwrap_or(false);
                            record(&mut stats, t0, measure_from, ok);
                            if sender.is_closed() {
                                break;
                            }
                        }
                        stats
                    });
                }
            }
            HttpMode::H2 { streams } => {
                let stream = tokio::net::TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await?;
                tokio::spawn(conn);
                for _ in 0..streams {
                    let mut sender = sender.clone();
                    let authority = authority.clone();
                    tasks.spawn(async move {
                        let mut stats = RunStats::default();
                        loop {
                            let t0 = Instant::now();
                            if t0 >= deadline {
                                break;
                            }
                            let ok = async {
                                sender.ready().await?;
                                let response =
                                    sender.send_request(get(&format!("http://{authority}/"), &authority)?).await?;
                                let ok = response.status().is_success();
                                response.into_body().collect().await?;
                                anyhow::Ok(ok)
                            }
                            .await
                            .unwrap_or(false);
                            record(&mut stats, t0, measure_from, ok);
                            if sender.is_closed() {
                                break;
                            }
                        }
                        stats
                    });
                }
            }
        }
        let mut total = RunStats::default();
        while let Some(stats) = tasks.join_next().await {
            total.merge(stats?);
        }
        total.elapsed = window;
        Ok(total)
    })
}

/// A GET of `uri` (origin form for HTTP/1.1, absolute for HTTP/2) with the Host header.
pub fn get(uri: &str, authority: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::builder().uri(uri).header(http::header::HOST, authority).body(Empty::new())?)
}

pub fn record(stats: &mut RunStats, t0: Instant, measure_from: Instant, ok: bool) {
    if t0 < measure_from {
        return;
    }
    if ok {
        stats.latencies.push(micros(t0.elapsed()));
    } else {
        stats.errors += 1;
    }
}

/// `count` idle connections to `target` from `netns`, held by a child process (this benchmark run again with
/// [`HOLD_IDLE_ARG`]), so that they and the servers' ends do not share one descriptor limit. Dropping it closes
/// them.
pub struct IdleConnections(std::process::Child);

/// The argument that makes the benchmark binary hold idle connections instead of benchmarking.
pub const HOLD_IDLE_ARG: &str = "--hold-idle";

impl IdleConnections {
    pub fn open(netns: &str, target: SocketAddr, count: usize) -> Result<IdleConnections> {
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .args([HOLD_IDLE_ARG, netns, &target.to_string(), &count.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the idle-connection holder")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("the holder's stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        let held = IdleConnections(child);
        if line.trim() != "open" {
            bail!("the idle-connection holder did not open {count} connections to {target}: {}", line.trim());
        }
        Ok(held)
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The holder's side (`<exe> --hold-idle <netns> <target> <count>`): opens the connections, says `open` (or
/// why not) on stdout, and keeps them until killed or stdin closes.
pub fn hold_idle(args: &[String]) -> Result<()> {
    let [netns, target, count] = args else { bail!("{HOLD_IDLE_ARG} <netns> <target> <count>") };
    let target: SocketAddr = target.parse()?;
    let count: usize = count.parse()?;
    crate::procs::raise_descriptor_limit();
    let opened = exec::in_netns(netns, move || {
        let mut open = Vec::with_capacity(count);
        for i in 0..count {
            let stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
                .map_err(|e| std::io::Error::other(format!("connection {i} of {count} to {target}: {e}")))?;
            open.push(stream);
        }
        Ok(open)
    });
    match &opened {
        Ok(_) => println!("open"),
        Err(e) => println!("{e:#}"),
    }
    std::io::stdout().flush()?;
    // Until the parent closes our stdin (or kills us).
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(opened);
    Ok(())
}
