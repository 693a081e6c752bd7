//! The control plane's monitoring port (15014, as istiod's): `/metrics` for Prometheus, `/ready` once a
//! configuration has been built from discovery, `/live`. Plain HTTP: it carries no secrets and the kubelet
//! probes it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::stats::Stats;

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn handle(stats: &Stats, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus::TextEncoder::new().encode_utf8(&stats.registry().gather(), &mut text) {
                Ok(()) => respond(StatusCode::OK, text),
                Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}\n")),
            }
        }
        "/live" => respond(StatusCode::OK, "live\n".into()),
        "/ready" if stats.is_draining() => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n".into()),
        strait_api::status::STATUS_PATH => proxy_status(stats),
        "/ready" if stats.version() > 0 => respond(StatusCode::OK, format!("ready: version {}\n", stats.version())),
        "/ready" => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready: no configuration built yet\n".into()),
        _ => respond(StatusCode::NOT_FOUND, "unknown path: /metrics, /ready, /live, /debug/proxies\n".into()),
    }
}

/// `GET /debug/proxies`: every node proxy's stream, versions, ACK/NACK, workloads and certificate expiry, as JSON
/// (`strait status`, `strait check`). Read-only; it holds no secret (see `strait_api::status`).
fn proxy_status(stats: &Stats) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(&stats.mesh_status()) {
        Ok(json) => {
            let mut response = respond(StatusCode::OK, json);
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the status: {e}\n")),
    }
}

/// Serves the monitoring endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handle(&stats, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LineKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut text = String::new();
        tcp.read_to_string(&mut text).await.expect("read");
        text
    }

    #[tokio::test]
    async fn serves_metrics_readiness_and_liveness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, Arc::new(Stats::new())));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        let ready = get(addr, "/ready").await;
        assert!(ready.starts_with("HTTP/1.1 503") && ready.contains("no configuration"), "{ready}");
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn serves_each_proxys_status_as_json() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(Stats::new());
        let config: strait_api::MeshConfig = serde_yaml::from_str(
            "workloads:\n- {name: a1, namespace: shop, node: node-a, address: 10.1.0.2}\n\
             - {name: b1, namespace: shop, node: node-b, address: 10.2.0.2}\n",
        )
        .expect("config");
        let view: Vec<Arc<strait_api::delta::Resource>> =
            strait_api::delta::resources(&config).into_iter().map(Arc::new).collect();
        let pushed = |node: &str| stats.pushed(node, 7, LineKind::Full, 100, "cluster.local", &view);
        stats.set_version(7);
        stats.stream_opened("node-a");
        stats.reported_admin("node-a", "127.0.1.1:15000".parse().expect("addr"));
        pushed("node-a");
        stats.nacked("node-a", 7, "workloads[1]: bad");
        stats.stream_opened("node-b");
        pushed("node-b");
        stats.acked("node-b", 7);
        stats.stream_closed("node-b");
        let text = get(addr_after_spawn(listener, addr, stats), strait_api::status::STATUS_PATH).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = text.split_once("\r\n\r\n").expect("a body").1;
        let status: strait_api::status::MeshStatus = serde_json::from_str(body).expect("MeshStatus JSON");
        assert_eq!(status.version, 7);
        let a = &status.proxies[0];
        assert_eq!((a.node.as_str(), a.sync(7)), ("node-a", strait_api::status::Sync::Nacked));
        assert_eq!(a.nack_reason.as_deref(), Some("workloads[1]: bad"));
        assert_eq!(a.admin_address.as_deref(), Some("127.0.1.1:15000"));
        assert_eq!(a.workloads, vec!["shop/a1".to_string()]);
        assert!(a.connected_since.is_some() && a.disconnected_since.is_none());
        let b = &status.proxies[1];
        assert_eq!(b.sync(7), strait_api::status::Sync::Disconnected);
        assert!(b.connected_since.is_none() && b.disconnected_since.is_some());
    }

    #[tokio::test]
    async fn says_whether_this_replica_leads_once_there_is_an_election() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(Stats::new());
        let addr = addr_after_spawn(listener, addr, stats.clone());
        let body = |text: String| text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        let single: strait_api::status::MeshStatus =
            serde_json::from_str(&body(get(addr, strait_api::status::STATUS_PATH).await)).expect("JSON");
        assert_eq!(single.leader, None, "a single replica has no election");
        assert!(!get(addr, "/metrics").await.contains("strait_control_leader"));

        stats.set_leader(Some(false));
        assert!(get(addr, "/metrics").await.contains("strait_control_leader 0"));
        stats.set_leader(Some(true));
        assert!(get(addr, "/metrics").await.contains("strait_control_leader 1"));
        let leading: strait_api::status::MeshStatus =
            serde_json::from_str(&body(get(addr, strait_api::status::STATUS_PATH).await)).expect("JSON");
        assert_eq!(leading.leader, Some(true));
    }

    fn addr_after_spawn(listener: TcpListener, addr: std::net::SocketAddr, stats: Arc<Stats>) -> std::net::SocketAddr {
        tokio::spawn(serve(listener, stats));
        addr
    }
}
