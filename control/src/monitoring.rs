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
        "/ready" if stats.version() > 0 => respond(StatusCode::OK, format!("ready: version {}\n", stats.version())),
        "/ready" => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready: no configuration built yet\n".into()),
        _ => respond(StatusCode::NOT_FOUND, "unknown path: /metrics, /ready, /live\n".into()),
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
}
