//! The steady load, from the client pods' namespaces (sockets made there, driven by this process's runtime):
//! - keep-alive HTTP/1.1 to `reviews` from c1, paced to a target rate over a fixed set of connections; each
//!   answer's `x-backend-version` feeds the split check;
//! - new connections to `ratings` (L7) and to `echo-tcp` (L4) from c2, each at a target rate;
//! - long-lived streams to `streams` (HTTP/1.1 upgrade, then echo), pinged every second, from both clients.
//!
//! Every outcome is counted; a failure is counted by its cause (status code, or the client-side error class).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{watch, Semaphore};

use super::topology::{ECHO_TCP, RATINGS, REVIEWS, STREAMS};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream's echo may take before the stream counts as broken.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One kind of traffic's counters.
#[derive(Default)]
pub struct Counter {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    /// Not sent because the client already had as many in flight as it allows (the machine is saturated).
    pub skipped: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    /// The first failures, with when they happened, to line them up with the churn events.
    first: Mutex<Vec<(Duration, String)>>,
}

impl Counter {
    fn fail(&self, at: Duration, cause: String) {
        *lock(&self.failures).entry(cause.clone()).or_default() += 1;
        let mut first = lock(&self.first);
        if first.len() < 50 {
            first.push((at, cause));
        }
    }

    pub fn failed(&self) -> u64 {
        lock(&self.failures).values().sum()
    }

    pub fn failures(&self) -> BTreeMap<String, u64> {
        lock(&self.failures).clone()
    }

    pub fn first_failures(&self) -> Vec<(Duration, String)> {
        lock(&self.first).clone()
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The observed `reviews` split while one weight was in force everywhere.
#[derive(Clone, Copy, Debug)]
pub struct SplitWindow {
    pub v1_weight: u32,
    pub v1: u64,
    pub v2: u64,
}

/// Answers are counted into the open window only; a weight change closes it before the files change and
/// opens the next once every proxy has the new weights, so no window mixes two weights.
#[derive(Default)]
pub struct Split {
    open: Mutex<Option<(u64, SplitWindow)>>,
    epoch: AtomicU64,
    closed: Mutex<Vec<SplitWindow>>,
}

impl Split {
    /// The window a request sent now would count in.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn record(&self, epoch: u64, version: &str) {
        let mut open = lock(&self.open);
        if let Some((e, w)) = open.as_mut() {
            if *e == epoch {
                match version {
                    "v1" => w.v1 += 1,
                    "v2" => w.v2 += 1,
                    _ => {}
                }
            }
        }
    }

    pub fn close(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some((_, w)) = lock(&self.open).take() {
            lock(&self.closed).push(w);
        }
    }

    pub fn open(&self, v1_weight: u32) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.open) = Some((epoch, SplitWindow { v1_weight, v1: 0, v2: 0 }));
    }

    pub fn windows(&self) -> Vec<SplitWindow> {
        lock(&self.closed).clone()
    }
}

/// A long-lived stream that broke.
#[derive(Clone, Debug)]
pub struct Break {
    pub client: String,
    pub opened: Duration,
    pub at: Duration,
    pub cause: String,
}

#[derive(Default)]
pub struct Load {
    pub keepalive: Counter,
    pub l7_new: Counter,
    pub l4_new: Counter,
    pub stream_opens: Counter,
    pub stream_pings: AtomicU64,
    pub breaks: Mutex<Vec<Break>>,
    pub split: Split,
}

/// Drives `n` keep-alive connections from `netns` to `reviews` at `rate` requests/s in total until `stop`.
pub async fn keepalive(
    load: Arc<Load>,
    start: Instant,
    netns: String,
    rate: f64,
    connections: u32,
    stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs_f64(connections as f64 / rate.max(0.001));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (load, netns, mut stop) = (load.clone(), netns.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the connections' ticks over one interval.
            tokio::time::sleep(interval.mul_f64(i as f64 / connections as f64)).await;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sender = None;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => break,
                }
                if *stop.borrow() {
                    break;
                }
                if sender.is_none() {
                    match connect_http1(&netns, REVIEWS).await {
                        Ok(s) => sender = Some(s),
                        Err(cause) => {
                            load.keepalive.sent.fetch_add(1, Ordering::Relaxed);
                            load.keepalive.fail(start.elapsed(), cause);
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                load.keepalive.sent.fetch_add(1, Ordering::Relaxed);
                let epoch = load.split.epoch();
                match get(s, "reviews").await {
                    Ok(version) => {
                        load.keepalive.ok.fetch_add(1, Ordering::Relaxed);
                        load.split.record(epoch, &version);
                    }
                    Err((cause, broken)) => {
                        load.keepalive.fail(start.elapsed(), cause);
                        if broken {
                            sender = None;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect_http1(netns: &str, addr: SocketAddr) -> Result<Sender, String> {
    let connect = async {
        let stream = strait_netns::connect_from_async(netns, addr)
            .await
            .map_err(|e| format!("client: connect: {}", root(&e)))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("client: handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(sender)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, connect).await.unwrap_or_else(|_| Err("client: connect timed out".into()))
}

/// One GET on a kept-alive connection: the backend's version, or the failure's cause and whether the
/// connection is done for.
async fn get(sender: &mut Sender, host: &str) -> Result<String, (String, bool)> {
    let exchange = async {
        sender.ready().await.map_err(|e| (format!("client: connection closed: {}", hyper_cause(&e)), true))?;
        let request = http::Request::get("/")
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| (e.to_string(), false))?;
        let response =
            sender.send_request(request).await.map_err(|e| (format!("client: {}", hyper_cause(&e)), true))?;
        let status = response.status().as_u16();
        let version =
            response.headers().get("x-backend-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let flags = response.headers().get("x-strait-reason").and_then(|v| v.to_str().ok()).map(str::to_string);
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| (format!("client: reading the body: {}", hyper_cause(&e)), true))?;
        if status != 200 {
            return Err((format!("HTTP {status}{}", flags.map(|f| format!(" ({f})")).unwrap_or_default()), false));
        }
        Ok(version)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(("client: timed out (10 s)".into(), true)))
}

fn hyper_cause(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "connection closed before the response was complete".into()
    } else if e.is_canceled() {
        "request canceled (connection closed)".into()
    } else if e.is_closed() {
        "connection closed".into()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }
}

fn root(e: &anyhow::Error) -> String {
    e.root_cause().to_string()
}

/// Opens connections at `rate`/s from `netns`, each running `one` once, until `stop`; at most `max_in_flight`
/// at a time (beyond that the tick is counted as skipped: the client, not the mesh, is the limit).
async fn new_connections<F, Fut>(
    counter: impl Fn(&Load) -> &Counter + Send + Sync + Copy + 'static,
    load: Arc<Load>,
    start: Instant,
    rate: f64,
    max_in_flight: usize,
    mut stop: watch::Receiver<bool>,
    one: F,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counter(&load).skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        counter(&load).sent.fetch_add(1, Ordering::Relaxed);
        let (load, attempt) = (load.clone(), one());
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(())) => {
                    counter(&load).ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(cause)) => counter(&load).fail(start.elapsed(), cause),
                Err(_) => counter(&load).fail(start.elapsed(), "client: timed out (10 s)".into()),
            }
            drop(permit);
        });
    }
    // Let what is in flight finish, so every sent request has an outcome.
    let _ = permits.acquire_many(max_in_flight as u32).await;
}

pub async fn l7_new(load: Arc<Load>, start: Instant, netns: String, rate: f64, stop: watch::Receiver<bool>) {
    new_connections(
        |l| &l.l7_new,
        load,
        start,
        rate,
        256,
        stop,
        move || {
            let netns = netns.clone();
            async move {
                let mut sender = connect_http1(&netns, RATINGS).await?;
                get(&mut sender, "ratings").await.map(|_| ()).map_err(|(cause, _)| cause)
            }
        },
    )
    .await
}

pub async fn l4_new(load: Arc<Load>, start: Instant, netns: String, rate: f64, stop: watch::Receiver<bool>) {
    let sequence = Arc::new(AtomicU64::new(0));
    new_connections(
        |l| &l.l4_new,
        load,
        start,
        rate,
        256,
        stop,
        move || {
            let (netns, n) = (netns.clone(), sequence.fetch_add(1, Ordering::Relaxed));
            async move {
                let mut stream = strait_netns::connect_from_async(&netns, ECHO_TCP)
                    .await
                    .map_err(|e| format!("client: connect: {}", root(&e)))?;
                let message = format!("soak {n}\n");
                stream.write_all(message.as_bytes()).await.map_err(|e| format!("client: write: {e}"))?;
                stream.shutdown().await.map_err(|e| format!("client: half-close: {e}"))?;
                let mut back = Vec::new();
                (&mut stream)
                    .take(1024)
                    .read_to_end(&mut back)
                    .await
                    .map_err(|e| format!("client: read: {}", e.kind()))?;
                if back != message.as_bytes() {
                    return Err(format!("echo mismatch: {} of {} bytes came back", back.len(), message.len()));
                }
                Ok(())
            }
        },
    )
    .await
}

/// Keeps one long-lived stream from `netns` open until `stop`: opens it, pings every second, and when it
/// breaks records the break and opens another.
pub async fn stream(load: Arc<Load>, start: Instant, client: String, netns: String, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        load.stream_opens.sent.fetch_add(1, Ordering::Relaxed);
        let mut conn = match tokio::time::timeout(REQUEST_TIMEOUT, open_stream(&netns)).await {
            Ok(Ok(conn)) => {
                load.stream_opens.ok.fetch_add(1, Ordering::Relaxed);
                conn
            }
            Ok(Err(cause)) => {
                load.stream_opens.fail(start.elapsed(), cause);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => {
                load.stream_opens.fail(start.elapsed(), "client: opening timed out".into());
                continue;
            }
        };
        let opened = start.elapsed();
        let mut n = 0u64;
        let cause = loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            n += 1;
            match tokio::time::timeout(PING_TIMEOUT, ping(&mut conn, n)).await {
                Ok(Ok(())) => {
                    load.stream_pings.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(cause)) => break cause,
                Err(_) => break "no echo within 5 s".to_string(),
            }
        };
        lock(&load.breaks).push(Break { client: client.clone(), opened, at: start.elapsed(), cause });
    }
}

type StreamConn = BufReader<tokio::net::TcpStream>;

async fn open_stream(netns: &str) -> Result<StreamConn, String> {
    let stream =
        strait_netns::connect_from_async(netns, STREAMS).await.map_err(|e| format!("client: connect: {}", root(&e)))?;
    let mut conn = BufReader::new(stream);
    let request = "GET /upgrade HTTP/1.1\r\nhost: streams\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    conn.get_mut().write_all(request.as_bytes()).await.map_err(|e| format!("client: write: {e}"))?;
    let mut status = String::new();
    conn.read_line(&mut status).await.map_err(|e| format!("client: read: {e}"))?;
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line).await.map_err(|e| format!("client: read: {e}"))?;
        if n == 0 {
            return Err("closed during the upgrade".into());
        }
        if line == "\r\n" {
            break;
        }
    }
    if status.split(' ').nth(1) != Some("101") {
        return Err(format!("upgrade refused: {}", status.trim()));
    }
    let mut hello = String::new();
    conn.read_line(&mut hello).await.map_err(|e| format!("client: read: {e}"))?;
    if !hello.starts_with("HELLO ") {
        return Err(format!("no greeting after the upgrade: {hello:?}"));
    }
    Ok(conn)
}

async fn ping(conn: &mut StreamConn, n: u64) -> Result<(), String> {
    let message = format!("ping {n}\n");
    conn.get_mut().write_all(message.as_bytes()).await.map_err(|e| format!("write: {}", e.kind()))?;
    let mut back = String::new();
    let read = conn.read_line(&mut back).await.map_err(|e| format!("read: {}", e.kind()))?;
    if read == 0 {
        return Err("closed by the peer".into());
    }
    if back != message {
        return Err(format!("echo mismatch: {back:?}"));
    }
    Ok(())
}
