//! The admin endpoint (readiness, liveness, configuration and certificate dumps, log level) and the metrics
//! endpoint, each on its own port. They run on their own small runtime thread so a slow scrape never competes
//! with traffic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_certs::CertStore;
use tokio::net::TcpListener;
use tracing::warn;

use crate::metrics::Metrics;
use crate::state::StateStore;

/// Changes the log filter at run time (`POST /logging?level=debug`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub struct Admin {
    pub state: StateStore,
    pub certs: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    pub log_control: Option<LogControl>,
    /// The metrics port answers `/metrics` only: it is usually reachable from outside the node.
    pub metrics_only: bool,
}

type Body = Full<Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

impl Admin {
    /// Ready once a configuration is loaded and every local workload has a valid certificate.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.state.loaded() {
            return Err("no configuration received yet".into());
        }
        let state = self.state.current();
        let now = std::time::SystemTime::now();
        let held: Vec<_> = self.certs.certs().into_iter().filter(|c| !c.is_expired(now)).collect();
        let missing: Vec<String> = state
            .local_workloads()
            .filter_map(|w| w.identity.as_ref())
            .filter(|id| !held.iter().any(|c| c.identity() == *id))
            .map(|id| id.to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("waiting for certificates: {}", missing.join(", ")))
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_string();
        if self.metrics_only && path != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "text/plain", "only /metrics is served on this port\n");
        }
        match (request.method().clone(), path.as_str()) {
            (Method::GET, "/ready") | (Method::GET, "/healthz/ready") => match self.readiness() {
                Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n"),
                Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
            },
            (Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
            (Method::GET, "/config_dump") => {
                let state = self.state.current();
                let dump = serde_json::json!({
                    "node": state.node,
                    "version": state.version,
                    "config": &*state.config,
                });
                reply(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&dump).unwrap_or_default())
            }
            (Method::GET, "/certs") => {
                let certs: Vec<_> = self
                    .certs
                    .certs()
                    .iter()
                    .map(|c| {
                        let expiry = c
                            .not_after()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or_default();
                        serde_json::json!({
                            "identity": c.identity().to_string(),
                            "serial": c.serial(),
                            "notAfterUnix": expiry,
                        })
                    })
                    .collect();
                reply(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&certs).unwrap_or_default())
            }
            (Method::POST, "/logging") => {
                let level = request
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")))
                    .map(str::to_string);
                let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let level = level.unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                match &self.log_control {
                    Some(control) => match control(&level) {
                        Ok(()) => reply(StatusCode::OK, "text/plain", format!("log level set to {level}\n")),
                        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                    },
                    None => reply(StatusCode::NOT_IMPLEMENTED, "text/plain", "log level is fixed\n"),
                }
            }
            (Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.encode()),
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "unknown admin path\n"),
        }
    }
}

/// Serves `admin` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::inbound::accept_error(&e).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
                warn!(error = %e, "admin connection error");
            }
        });
    }
}

/// Binds the admin and metrics ports and serves them on a dedicated thread with its own runtime.
pub fn spawn(admin: Admin, admin_addr: SocketAddr, metrics_addr: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let admin_listener = std::net::TcpListener::bind(admin_addr)
        .with_context(|| format!("binding the admin port {admin_addr} (is another proxy running?)"))?;
    let metrics_listener = std::net::TcpListener::bind(metrics_addr)
        .with_context(|| format!("binding the metrics port {metrics_addr}"))?;
    admin_listener.set_nonblocking(true)?;
    metrics_listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("strait-admin".into()).spawn(move || {
        runtime.block_on(async move {
            let (Ok(a), Ok(m)) = (TcpListener::from_std(admin_listener), TcpListener::from_std(metrics_listener))
            else {
                warn!("admin listeners could not join the admin runtime");
                return;
            };
            tokio::join!(serve(a, admin.clone()), serve(m, Admin { metrics_only: true, ..admin }));
        })
    })?;
    Ok(())
}
