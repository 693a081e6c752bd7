//! OpenTelemetry trace export end to end: both node proxies export over OTLP/HTTP (protobuf) to a receiver
//! on their node's loopback (as a per-node collector agent would listen), which this test runs itself and
//! which decodes each `ExportTraceServiceRequest` with the OpenTelemetry protobuf messages. A request through
//! the mesh with a sampled `traceparent` yields the source proxy's hop span (child of the caller's span), one
//! try span under it per try (three for a request retried twice), and the destination proxy's hop span under
//! each try, carrying route, subset, status and both identities; the backend receives the destination span as
//! its parent. A request whose caller did not sample its trace exports nothing. Two nodes; the client is pod
//! a1 on node-a, the `reviews` backends b1 (v1) and b2 (v2) on node-b (see `strait_tests::mesh_http`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use strait_tests::backend::{self, HttpGet};
use strait_tests::mesh_http::{reviews_policy, traffic_route, HttpMesh};
use strait_tests::{listen_in_tokio, require_root};

const TD: &str = "spiffe://cluster.local/ns/shop/sa";
/// Where each node's receiver listens, in that node's namespace.
const COLLECTOR: &str = "127.0.0.1:4318";

/// One span as the receiver got it, with the node whose proxy sent it.
#[derive(Clone, Debug)]
struct Received {
    node: String,
    /// `service.name` and `k8s.node.name` of the resource the span came with.
    resource: BTreeMap<String, String>,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    status_code: i32,
}

fn text(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver: an HTTP/1.1 server on each node's `COLLECTOR` answering `POST /v1/traces`.
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start(runtime: &tokio::runtime::Runtime, mesh: &HttpMesh) -> Result<Collector> {
        let collector = Collector { spans: Arc::default(), requests: Arc::default() };
        for node in ["node-a", "node-b"] {
            let addr: SocketAddr = COLLECTOR.parse()?;
            let listener = {
                let _entered = runtime.enter();
                listen_in_tokio(mesh.mesh.cluster.node(node).netns_name(), addr)?
            };
            let (spans, requests) = (collector.spans.clone(), collector.requests.clone());
            runtime.spawn(serve(node.to_string(), listener, spans, requests));
        }
        Ok(collector)
    }

    fn spans(&self, trace_id: &str) -> Vec<Received> {
        self.spans.lock().map(|s| s.iter().filter(|s| s.trace_id == trace_id).cloned().collect()).unwrap_or_default()
    }

    /// Waits until `trace_id` has `count` spans (export is batched, within a second of the span's end).
    fn wait_for(&self, trace_id: &str, count: usize) -> Result<Vec<Received>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans(trace_id);
            if spans.len() >= count || Instant::now() > deadline {
                return Ok(spans);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn serve(
    node: String,
    listener: tokio::net::TcpListener,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (node, spans, requests) = (node.clone(), spans.clone(), requests.clone());
        let handler = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (node, spans, requests) = (node.clone(), spans.clone(), requests.clone());
            async move {
                let line = format!(
                    "{node}: {} {} {:?}",
                    request.method(),
                    request.uri().path(),
                    request.headers().get(http::header::CONTENT_TYPE)
                );
                let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let status = match ExportTraceServiceRequest::decode(body) {
                    Ok(export) => {
                        record(&node, export, &spans);
                        200
                    }
                    Err(_) => 400,
                };
                if let Ok(mut r) = requests.lock() {
                    r.push(format!("{line} -> {status}"));
                }
                let reply = Bytes::from(ExportTraceServiceResponse::default().encode_to_vec());
                http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(reply))
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, handler).await;
        });
    }
}

fn record(node: &str, export: ExportTraceServiceRequest, spans: &Mutex<Vec<Received>>) {
    let Ok(mut spans) = spans.lock() else { return };
    for resource_spans in export.resource_spans {
        let resource = text(resource_spans.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    node: node.to_string(),
                    resource: resource.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: text(&span.attributes),
                    status_code: span.status.as_ref().map(|s| s.code).unwrap_or_default(),
                });
            }
        }
    }
}

fn one<'a>(spans: &'a [Received], name: &str) -> Result<&'a Received> {
    let found: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
    ensure!(found.len() == 1, "expected one {name:?} span, got {}: {spans:#?}", found.len());
    Ok(found[0])
}

fn attr<'a>(span: &'a Received, key: &str) -> &'a str {
    span.attributes.get(key).map(String::as_str).unwrap_or("(missing)")
}

#[test]
fn spans_of_both_hops_and_each_try_reach_the_collector() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let args = ["--otlp-endpoint", "http://127.0.0.1:4318", "--trace-sampling", "1"];
    let mesh = HttpMesh::start_with_args(
        &[],
        &[],
        |config| {
            config.destination_policies.push(reviews_policy(""));
            config.traffic_routes.push(traffic_route(
                "reviews",
                "hosts: [reviews]\nhttp:\n- name: canary\n  route:\n  - destination: {host: reviews, subset: v1}\n  retries: {attempts: 2, retryOn: 5xx}\n",
            ));
        },
        None,
        args.iter().map(|a| a.to_string()).collect(),
    )?;
    let collector = Collector::start(&runtime, &mesh)?;
    let result = check(&mesh, &collector);
    if result.is_err() {
        let requests = collector.requests.lock().map(|r| r.join("\n")).unwrap_or_default();
        eprintln!("export requests received:\n{requests}\n{}", mesh.logs());
    }
    result
}

fn check(mesh: &HttpMesh, collector: &Collector) -> Result<()> {
    // A request that succeeds at once: the caller's span -> source hop -> one try -> destination hop.
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let get = HttpGet::new(HttpMesh::reviews_url("/traced")).header("traceparent", &format!("00-{trace}-{caller}-01"));
    let r = backend::single(mesh.get(&get)?)?;
    ensure!(r.status == Some(200), "{r:?}");
    let spans = collector.wait_for(trace, 3)?;
    ensure!(spans.len() == 3, "three spans for one try: {spans:#?}");
    let source = one(&spans, "strait source")?;
    let attempt = one(&spans, "strait try")?;
    let destination = one(&spans, "strait destination")?;
    assert_eq!(
        (source.node.as_str(), attempt.node.as_str(), destination.node.as_str()),
        ("node-a", "node-a", "node-b")
    );
    assert_eq!(source.parent_span_id, caller, "the source hop is the caller's child: {source:#?}");
    assert_eq!(attempt.parent_span_id, source.span_id, "the try is the source hop's child");
    assert_eq!(destination.parent_span_id, attempt.span_id, "the destination hop is the try's child");
    let seen = r.request_header("traceparent").context("no traceparent at the backend")?;
    assert_eq!(seen, format!("00-{trace}-{}-01", destination.span_id), "the backend's parent is the destination hop");
    assert_eq!(
        (source.kind, attempt.kind, destination.kind),
        (SpanKind::Server as i32, SpanKind::Client as i32, SpanKind::Server as i32)
    );
    for (key, value) in [
        ("strait.route", "canary"),
        ("strait.subset", "v1"),
        ("http.response.status_code", "200"),
        ("strait.source.identity", &format!("{TD}/sa-a1")),
        ("strait.destination.identity", &format!("{TD}/sa-b1")),
        ("strait.destination.service", "reviews.shop.svc.cluster.local"),
        ("strait.reporter", "source"),
        ("strait.retries", "0"),
    ] {
        assert_eq!(attr(source, key), value, "source span {key}: {source:#?}");
    }
    for (key, value) in [
        ("strait.source.identity", format!("{TD}/sa-a1")),
        ("strait.destination.identity", format!("{TD}/sa-b1")),
        ("strait.reporter", "destination".into()),
        ("http.response.status_code", "200".into()),
        ("url.path", "/traced".into()),
    ] {
        assert_eq!(attr(destination, key), value, "destination span {key}: {destination:#?}");
    }
    assert_eq!(source.resource.get("service.name").map(String::as_str), Some("strait-proxy"));
    assert_eq!(source.resource.get("k8s.node.name").map(String::as_str), Some("node-a"));
    assert_eq!(destination.resource.get("k8s.node.name").map(String::as_str), Some("node-b"));

    // A request retried twice (v1 answers 503 to /status/503): three tries under the hop, each with its own
    // destination hop; the source hop ends in error.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let get = HttpGet::new(HttpMesh::reviews_url("/status/503"))
        .header("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"));
    let r = backend::single(mesh.get(&get)?)?;
    ensure!(r.status == Some(503), "{r:?}");
    let spans = collector.wait_for(trace, 7)?;
    ensure!(spans.len() == 7, "1 hop + 3 tries + 3 destination hops: {spans:#?}");
    let source = one(&spans, "strait source")?;
    assert_eq!(attr(source, "strait.retries"), "2", "{source:#?}");
    assert_eq!(attr(source, "http.response.status_code"), "503");
    assert_eq!(source.status_code, 2, "an error status (STATUS_CODE_ERROR): {source:#?}");
    let tries: Vec<&Received> = spans.iter().filter(|s| s.name == "strait try").collect();
    ensure!(tries.len() == 3, "{spans:#?}");
    let mut resends: Vec<&str> = tries.iter().map(|t| attr(t, "http.request.resend_count")).collect();
    resends.sort();
    assert_eq!(resends, ["0", "1", "2"]);
    for attempt in &tries {
        assert_eq!(attempt.parent_span_id, source.span_id, "every try is the hop's child: {attempt:#?}");
        let children: Vec<&Received> =
            spans.iter().filter(|s| s.name == "strait destination" && s.parent_span_id == attempt.span_id).collect();
        assert_eq!(children.len(), 1, "one destination hop per try: {spans:#?}");
        assert_eq!(attr(children[0], "http.response.status_code"), "503");
    }

    // The caller did not sample this trace: the proxies follow its decision and export nothing for it.
    let unsampled = "11111111111111111111111111111111";
    let get = HttpGet::new(HttpMesh::reviews_url("/quiet"))
        .header("traceparent", &format!("00-{unsampled}-2222222222222222-00"));
    let r = backend::single(mesh.get(&get)?)?;
    ensure!(r.status == Some(200), "{r:?}");
    let seen = r.request_header("traceparent").context("no traceparent at the backend")?;
    ensure!(seen.starts_with(&format!("00-{unsampled}-")) && seen.ends_with("-00"), "unsampled passed on: {seen}");
    // A sampled request after it, exported, shows the export ran past the unsampled one.
    let after = "33333333333333333333333333333333";
    let get =
        HttpGet::new(HttpMesh::reviews_url("/after")).header("traceparent", &format!("00-{after}-4444444444444444-01"));
    ensure!(backend::single(mesh.get(&get)?)?.status == Some(200));
    ensure!(collector.wait_for(after, 3)?.len() == 3, "the later sampled request is exported");
    assert!(collector.spans(unsampled).is_empty(), "nothing of the unsampled trace: {:#?}", collector.spans(unsampled));

    let exported = mesh.mesh.metric("node-a", "strait_trace_spans_total", &[("result", "exported")])?;
    assert!(exported >= 8.0, "node-a counts what it exported: {exported}");
    let dropped = mesh.mesh.metric("node-a", "strait_trace_spans_total", &[("result", "dropped")])?;
    assert_eq!(dropped, 0.0, "nothing dropped at this rate");
    Ok(())
}
