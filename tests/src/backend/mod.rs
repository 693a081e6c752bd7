//! The test backend: one binary (`strait-testbackend`), many behaviours. Servers and one-shot clients
//! live here as library code; the binary is a thin command line over them, run inside pod namespaces.
//! This module also has the harness side: starting a server in a pod and waiting for it, and running a
//! client in a pod and parsing what it printed.

pub mod client;
pub mod grpc;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::exec::{self, ChildGuard};

pub const BIN_NAME: &str = "strait-testbackend";

/// Where the `strait-testbackend` binary is: `$STRAIT_TESTBACKEND` if set, else next to the running test
/// executable's directory (cargo puts test executables in `target/<profile>/deps/` and binaries in
/// `target/<profile>/`, and builds this crate's binaries before running its integration tests).
pub fn testbackend_path() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("STRAIT_TESTBACKEND") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding the current executable")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(BIN_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().filter(|p| p.file_name().is_some_and(|n| n != "target"));
    }
    bail!(
        "cannot find {BIN_NAME} near {}; build it (`cargo test -p strait-tests` does) or set STRAIT_TESTBACKEND",
        exe.display()
    )
}

/// A backend server running in a namespace, stopped when dropped.
pub struct Server {
    pub child: ChildGuard,
    /// The address it listens on, as it reported in its `ready` line.
    pub addr: SocketAddr,
}

/// Starts `strait-testbackend <args>` in `netns` and waits (10 s at most) for its `ready <addr>` line.
pub fn start_in<S: AsRef<str>>(netns: &str, args: &[S]) -> Result<Server> {
    let mut cmd = Command::new(testbackend_path()?);
    cmd.args(args.iter().map(|a| a.as_ref()));
    let child = exec::spawn_in(netns, cmd)?;
    let addr = child.wait_ready(Duration::from_secs(10))?;
    let addr = addr.parse().with_context(|| format!("{} reported a bad address {addr:?}", child.describe()))?;
    Ok(Server { child, addr })
}

/// `tcp-echo --listen <addr>` in `netns`.
pub fn tcp_echo(netns: &str, listen: SocketAddr) -> Result<Server> {
    start_in(netns, &["tcp-echo", "--listen", &listen.to_string()])
}

/// `tcp-sink --listen <addr>` in `netns`.
pub fn tcp_sink(netns: &str, listen: SocketAddr) -> Result<Server> {
    start_in(netns, &["tcp-sink", "--listen", &listen.to_string()])
}

/// `http --listen <addr> --name <name> --version <version>` in `netns`.
pub fn http(netns: &str, listen: SocketAddr, name: &str, version: &str) -> Result<Server> {
    start_in(netns, &["http", "--listen", &listen.to_string(), "--name", name, "--version", version])
}

/// `http --listen <addr> --name <name> --version <version> <extra...>` in `netns`, e.g. with
/// `["--fail-percent", "50"]` or `["--hang"]`.
pub fn http_with(netns: &str, listen: SocketAddr, name: &str, version: &str, extra: &[&str]) -> Result<Server> {
    let listen = listen.to_string();
    let mut args = vec!["http", "--listen", &listen, "--name", name, "--version", version];
    args.extend_from_slice(extra);
    start_in(netns, &args)
}

/// Sends `<method> /control/<what>` to an `http` backend from `netns` (use the backend's own pod namespace
/// so the request never passes a proxy) and returns the backend's JSON answer, e.g.
/// `control(b1_netns, addr, "POST", "fail-percent/0")` or `control(.., "GET", "stats")`.
pub fn control(netns: &str, addr: SocketAddr, method: &str, what: &str) -> Result<serde_json::Value> {
    let result = single(http_get(netns, &HttpGet::new(format!("http://{addr}/control/{what}")).method(method))?)?;
    if result.status != Some(200) {
        bail!("{method} /control/{what} on {addr}: {result:?}");
    }
    Ok(result.body)
}

/// What `tcp-send` prints: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpSendReport {
    /// Bytes written (marker plus filler).
    pub sent: u64,
    pub sent_sha256: String,
    /// Bytes read back until the peer closed its write side.
    pub received: u64,
    pub received_sha256: String,
    /// What came back, lossily decoded, cut at 64 KiB (a sink's reply is a short JSON line).
    pub reply: String,
    /// True if exactly what was sent came back (an echo server's answer).
    pub echoed: bool,
}

impl TcpSendReport {
    /// The reply of a `tcp-sink`: `{"bytes":N,"sha256":"..."}`.
    pub fn sink_reply(&self) -> Result<SinkReply> {
        serde_json::from_str(self.reply.trim()).with_context(|| format!("not a sink reply: {:?}", self.reply))
    }
}

/// What `tcp-sink` answers after reading to EOF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkReply {
    pub bytes: u64,
    pub sha256: String,
}

/// Runs `tcp-send --connect <addr> --bytes <bytes> --marker <marker>` in `netns`: it writes the marker,
/// then `bytes` filler bytes, half-closes, and reads until EOF. Fails if the client fails (connection
/// refused or reset, timeout) with its stderr; use [`exec::output_in`] to inspect a failure instead.
pub fn tcp_send(netns: &str, addr: SocketAddr, bytes: u64, marker: &str) -> Result<TcpSendReport> {
    let bin = testbackend_path()?;
    let bin = bin.to_string_lossy();
    let args = [&*bin, "tcp-send", "--connect", &addr.to_string(), "--bytes", &bytes.to_string(), "--marker", marker];
    let out = exec::run_in(netns, &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("parsing tcp-send output {text:?}"))
}

/// Like [`tcp_send`], but a failing client (refused, reset, timed out: what a denying policy causes) is
/// `Ok(Err(stderr))` rather than an error, so a test can assert on it.
pub fn try_tcp_send(
    netns: &str,
    addr: SocketAddr,
    bytes: u64,
    marker: &str,
) -> Result<std::result::Result<TcpSendReport, String>> {
    let bin = testbackend_path()?;
    let bin = bin.to_string_lossy();
    let args = [&*bin, "tcp-send", "--connect", &addr.to_string(), "--bytes", &bytes.to_string(), "--marker", marker];
    let out = exec::output_in(netns, &args, exec::DEFAULT_RUN_TIMEOUT)?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Ok(serde_json::from_str(text.trim()).with_context(|| format!("parsing tcp-send output {text:?}"))?))
}

/// One request's outcome as `http-get` prints it (one JSON line per request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpResult {
    /// None if the request failed before a response (refused, reset, timeout): see `error`.
    pub status: Option<u16>,
    /// The response body: parsed JSON if it was JSON (the `http` backend's answer), else a string cut at
    /// 4 KiB.
    pub body: serde_json::Value,
    pub body_len: u64,
    /// Response headers (lower-case names; repeated headers joined with ", ").
    pub headers: BTreeMap<String, String>,
    pub error: Option<String>,
    pub elapsed_ms: f64,
}

impl HttpResult {
    /// The answering backend's `name`, if the body is the `http` backend's JSON.
    pub fn name(&self) -> Option<&str> {
        self.body.get("name")?.as_str()
    }
    /// The answering backend's `version`.
    pub fn version(&self) -> Option<&str> {
        self.body.get("version")?.as_str()
    }
    /// A request header as the backend received it (lower-case name), e.g. `x-forwarded-client-cert`.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        self.body.get("headers")?.get(name)?.as_str()
    }
}

/// Options of `http-get`.
#[derive(Debug, Clone, Default)]
pub struct HttpGet {
    pub url: String,
    /// Requests to send, one after another (default 1).
    pub count: u32,
    pub headers: Vec<(String, String)>,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// A new connection per request instead of keep-alive.
    pub fresh_connections: bool,
    pub method: Option<String>,
    pub body: Option<String>,
    /// Per-request timeout (default 10 s in the client).
    pub timeout: Option<Duration>,
    /// Requests in flight at once (default 1: one after another).
    pub concurrency: u32,
}

impl HttpGet {
    pub fn new(url: impl Into<String>) -> Self {
        HttpGet { url: url.into(), count: 1, ..Default::default() }
    }
    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }
    pub fn fresh_connections(mut self) -> Self {
        self.fresh_connections = true;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_owned());
        self
    }
    pub fn body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self
    }
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// The command line arguments after the binary's name.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["http-get".to_owned(), "--url".to_owned(), self.url.clone()];
        args.extend(["--count".to_owned(), self.count.max(1).to_string()]);
        for (k, v) in &self.headers {
            args.extend(["--header".to_owned(), format!("{k}:{v}")]);
        }
        if self.http2 {
            args.push("--http2".to_owned());
        }
        if self.fresh_connections {
            args.push("--fresh".to_owned());
        }
        if let Some(m) = &self.method {
            args.extend(["--method".to_owned(), m.clone()]);
        }
        if let Some(b) = &self.body {
            args.extend(["--data".to_owned(), b.clone()]);
        }
        if let Some(t) = self.timeout {
            args.extend(["--timeout-ms".to_owned(), t.as_millis().to_string()]);
        }
        if self.concurrency > 1 {
            args.extend(["--concurrency".to_owned(), self.concurrency.to_string()]);
        }
        args
    }
}

/// Runs `http-get` in `netns` and returns one result per request. Request failures are results (with
/// `error` set), not errors; an error means the client itself could not run.
pub fn http_get(netns: &str, opts: &HttpGet) -> Result<Vec<HttpResult>> {
    let bin = testbackend_path()?;
    let mut args = vec![bin.to_string_lossy().into_owned()];
    args.extend(opts.to_args());
    let out = exec::run_in(netns, &args)?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing http-get line {l:?}")))
        .collect()
}

/// Runs `http-get --summary` in `netns`: only the counts come back, which keeps thousands of requests cheap.
pub fn http_summary(netns: &str, opts: &HttpGet) -> Result<HttpSummary> {
    let bin = testbackend_path()?;
    let mut args = vec![bin.to_string_lossy().into_owned()];
    args.extend(opts.to_args());
    args.push("--summary".to_owned());
    let out = exec::output_in(netns, &args, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!("http-get --summary failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("parsing http-get summary {text:?}"))
}

/// Counts of results by status, by backend name and by backend version ("error" for failed requests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSummary {
    pub total: u64,
    pub errors: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_name: BTreeMap<String, u64>,
    pub by_version: BTreeMap<String, u64>,
}

impl HttpSummary {
    pub fn of(results: &[HttpResult]) -> Self {
        let mut s = HttpSummary::default();
        for r in results {
            s.total += 1;
            let status = match r.status {
                Some(code) => code.to_string(),
                None => {
                    s.errors += 1;
                    "error".to_owned()
                }
            };
            *s.by_status.entry(status).or_default() += 1;
            if let Some(name) = r.name() {
                *s.by_name.entry(name.to_owned()).or_default() += 1;
            }
            if let Some(version) = r.version() {
                *s.by_version.entry(version.to_owned()).or_default() += 1;
            }
        }
        s
    }
}

/// Exactly one result, or an error saying how many there were.
pub fn single(results: Vec<HttpResult>) -> Result<HttpResult> {
    let n = results.len();
    let mut it = results.into_iter();
    match (it.next(), it.next()) {
        (Some(r), None) => Ok(r),
        _ => Err(anyhow!("expected one http-get result, got {n}")),
    }
}
