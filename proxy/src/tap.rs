//! `GET /tap` on the admin port: a live, sampled, bounded stream of the requests this proxy serves, one JSON
//! line each (`strait tap`).
//!
//! The hub is per process, like the log writer: requests are recorded where their response ends
//! (`http::observe`), far from any handle on the proxy, and a process is one proxy. Publishing costs one atomic
//! load while nobody taps. Each tap gets a bounded queue: a reader too slow for the traffic loses events, and
//! is told how many (`{"dropped": n}`), rather than slowing requests or growing memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// Events queued per tap before the slowest reader starts losing them.
const QUEUE: usize = 1024;
/// Taps open at once, on one proxy.
pub const MAX_TAPS: usize = 4;
/// A tap ends after this long at most (`seconds` asks for less).
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// A tap ends after this many events at most (`limit` asks for fewer).
pub const MAX_EVENTS: u64 = 100_000;
/// Longer paths are cut here (the event is for eyes; the access log has the whole path).
const MAX_PATH: usize = 512;

/// One request, as the tap shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TapEvent {
    /// `source` (the caller's node proxy) or `destination`.
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_identity: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_identity: String,
    /// The `version` label of the destination workload (the subset, for subsets by version).
    pub destination_version: String,
    pub destination_service: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration_ms: u64,
    /// The TrafficRoute rule (source side), `-` on the destination side.
    pub route: String,
    /// The DestinationPolicy subset the rule sent the request to (source side); `-` without one, and on the
    /// destination side.
    pub subset: String,
    pub upstream: String,
    pub flags: &'static str,
    pub retries: u64,
}

fn hub() -> &'static broadcast::Sender<Arc<TapEvent>> {
    static HUB: OnceLock<broadcast::Sender<Arc<TapEvent>>> = OnceLock::new();
    HUB.get_or_init(|| broadcast::channel(QUEUE).0)
}

/// Whether anyone taps now: the HTTP paths keep what only an event needs (the path) while someone does.
pub fn active() -> bool {
    hub().receiver_count() > 0
}

/// Records a request if anyone taps; `event` is only built then.
pub fn publish(event: impl FnOnce() -> TapEvent) {
    let hub = hub();
    if hub.receiver_count() > 0 {
        let mut event = event();
        if event.path.len() > MAX_PATH {
            let mut cut = MAX_PATH;
            while !event.path.is_char_boundary(cut) {
                cut -= 1;
            }
            event.path.truncate(cut);
        }
        let _ = hub.send(Arc::new(event));
    }
}

/// What one tap wants, from the query string.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// Source or destination namespace.
    pub namespace: Option<String>,
    /// Destination service: its name, or its hostname (`name.namespace...`).
    pub to: Option<String>,
    /// Path prefix.
    pub path: Option<String>,
    /// The share of matching requests shown, in (0, 1].
    pub sample: f64,
    pub limit: u64,
    pub duration: Duration,
}

impl Filter {
    /// Parses `namespace=&to=&path=&sample=&limit=&seconds=`; an unknown or bad parameter is refused, named.
    pub fn parse(query: Option<&str>) -> Result<Filter, String> {
        let mut filter =
            Filter { namespace: None, to: None, path: None, sample: 1.0, limit: MAX_EVENTS, duration: MAX_DURATION };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| format!("{key}: bad percent-encoding"))?;
            if value.len() > 256 {
                return Err(format!("{key}: longer than 256 bytes"));
            }
            match key {
                "namespace" => filter.namespace = Some(value),
                "to" => filter.to = Some(value),
                "path" => filter.path = Some(value),
                "sample" => {
                    filter.sample = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0 && *s <= 1.0)
                        .ok_or("sample: a fraction in (0, 1]")?
                }
                "limit" => {
                    filter.limit = value
                        .parse::<u64>()
                        .ok()
                        .filter(|l| (1..=MAX_EVENTS).contains(l))
                        .ok_or(format!("limit: 1 to {MAX_EVENTS}"))?
                }
                "seconds" => {
                    let seconds = value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=MAX_DURATION.as_secs()).contains(s))
                        .ok_or(format!("seconds: 1 to {}", MAX_DURATION.as_secs()))?;
                    filter.duration = Duration::from_secs(seconds);
                }
                other => {
                    return Err(format!("unknown parameter {other:?} (namespace, to, path, sample, limit, seconds)"))
                }
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, e: &TapEvent) -> bool {
        self.namespace.as_ref().is_none_or(|ns| &e.source_namespace == ns || &e.destination_namespace == ns)
            && self.to.as_ref().is_none_or(|to| {
                &e.destination_service == to || e.destination_service.split('.').next() == Some(to.as_str())
            })
            && self.path.as_ref().is_none_or(|p| e.path.starts_with(p.as_str()))
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, PartialEq, Eq)]
pub enum TapError {
    /// [`MAX_TAPS`] are open.
    Busy,
}

/// Opens a tap: the lines arrive on the returned body until the filter's limit or duration, or the reader goes.
pub fn open(filter: Filter) -> Result<TapBody, TapError> {
    let hub = hub();
    if hub.receiver_count() >= MAX_TAPS {
        return Err(TapError::Busy);
    }
    let mut events = hub.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(filter.duration);
        tokio::pin!(deadline);
        let mut sent = 0;
        while sent < filter.limit {
            let next = tokio::select! {
                () = &mut deadline => break,
                () = tx.closed() => break,
                next = events.recv() => next,
            };
            let line = match next {
                Ok(event) => {
                    if !filter.matches(&event) || (filter.sample < 1.0 && rand::random::<f64>() >= filter.sample) {
                        continue;
                    }
                    sent += 1;
                    serde_json::to_vec(&*event).unwrap_or_default()
                }
                Err(broadcast::error::RecvError::Lagged(dropped)) => {
                    serde_json::to_vec(&serde_json::json!({ "dropped": dropped })).unwrap_or_default()
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            let mut line = line;
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                break;
            }
        }
    });
    Ok(TapBody(rx))
}

/// The tap's response body: each line is sent as soon as it is queued.
pub struct TapBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn event(path: &str, service: &str) -> TapEvent {
        TapEvent {
            reporter: "source",
            source_workload: "client".into(),
            source_namespace: "demo".into(),
            source_identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
            destination_workload: "reviews-v1".into(),
            destination_namespace: "demo".into(),
            destination_identity: "spiffe://cluster.local/ns/demo/sa/reviews".into(),
            destination_version: "v1".into(),
            destination_service: service.into(),
            method: "GET".into(),
            path: path.into(),
            status: 200,
            duration_ms: 1,
            route: "canary".into(),
            subset: "v1".into(),
            upstream: "127.0.2.2:9080".into(),
            flags: "-",
            retries: 0,
        }
    }

    #[test]
    fn filters_are_parsed_and_bounded() {
        let f = Filter::parse(Some("namespace=demo&to=reviews&path=%2Fapi&sample=0.5&limit=3&seconds=5")).expect("ok");
        assert_eq!((f.namespace.as_deref(), f.path.as_deref(), f.limit), (Some("demo"), Some("/api"), 3));
        assert!(f.matches(&event("/api/x", "reviews.demo.svc.cluster.local")));
        assert!(!f.matches(&event("/other", "reviews.demo.svc.cluster.local")));
        assert!(!f.matches(&event("/api/x", "ratings.demo.svc.cluster.local")));
        for bad in ["sample=0", "sample=2", "limit=0", "seconds=601", "bogus=1", "path=%zz"] {
            assert!(Filter::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    /// Everything about the hub in one test: it is per process, and tests run in parallel threads.
    #[tokio::test]
    async fn taps_see_matching_events_and_a_slow_reader_is_told_what_it_lost() {
        publish(|| panic!("nobody taps: the event is not even built"));
        let filter = Filter::parse(Some("path=/tapped-")).expect("a filter");
        let mut body = open(Filter { limit: 2, ..filter.clone() }).expect("a tap");
        publish(|| event("/other", "reviews.demo"));
        publish(|| event("/tapped-1", "reviews.demo"));
        publish(|| event("/tapped-2", "reviews.demo"));
        let mut lines = Vec::new();
        while let Some(frame) = body.frame().await {
            lines.push(String::from_utf8(frame.expect("a frame").into_data().expect("data").to_vec()).expect("UTF-8"));
        }
        assert_eq!(lines.len(), 2, "the limit ends the tap: {lines:?}");
        assert!(lines[0].contains("\"path\":\"/tapped-1\"") && lines[0].contains("\"route\":\"canary\""), "{lines:?}");
        assert!(lines[0].contains("\"subset\":\"v1\""), "{lines:?}");

        // A reader that does not read: the queue stays bounded, and the loss is reported.
        let mut slow = open(filter).expect("a tap");
        for i in 0..QUEUE * 3 {
            publish(|| event(&format!("/tapped-{i}"), "reviews.demo"));
            tokio::task::yield_now().await;
        }
        let mut dropped = 0;
        let mut events = 0;
        while dropped == 0 || events < 10 {
            let frame = tokio::time::timeout(Duration::from_secs(5), slow.frame()).await.expect("a line in time");
            let text = frame.expect("open").expect("a frame").into_data().expect("data");
            let line: serde_json::Value = serde_json::from_slice(&text).expect("JSON");
            match line["dropped"].as_u64() {
                Some(n) => dropped += n,
                None => events += 1,
            }
        }
        assert!(dropped > 0);
    }
}
