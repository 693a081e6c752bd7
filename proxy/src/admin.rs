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
use tracing::{debug, warn};

use crate::drain::Drain;
use crate::state::StateStore;
use crate::telemetry::logging::LogControl;
use crate::telemetry::metrics::Metrics;

#[derive(Clone)]
pub struct Admin {
    pub state: StateStore,
    pub certs: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    pub log_control: Option<LogControl>,
    /// The metrics port answers `/metrics` only: it is usually reachable from outside the node.
    pub metrics_only: bool,
    /// The configuration version the proxy has fully put in place (rules, listeners, certificates).
    pub synced: Option<Arc<std::sync::Mutex<String>>>,
    /// The process's drain: readiness turns false when it starts, and `POST /drain` starts it.
    pub drain: Option<Drain>,
    /// Set by `POST /superseded`, which a replacement proxy sends when it starts on this node (see
    /// [`announce_replacement`]): readiness answers for the newest proxy only.
    pub superseded: Arc<std::sync::atomic::AtomicBool>,
    /// The running proxy's shared state, for the live destination state in `/config_dump` (`None` in tests
    /// of the admin server alone).
    pub(crate) context: Option<Arc<crate::context::ProxyContext>>,
}

/// Whole answers, and the tap's stream.
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The process id of the proxy that answered, on every admin and metrics response.
pub const PID_HEADER: &str = "x-strait-pid";

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

impl Admin {
    /// Ready once a configuration is loaded and every local workload has a valid certificate.
    pub fn readiness(&self) -> Result<(), String> {
        if self.drain.as_ref().is_some_and(Drain::is_draining) {
            return Err("draining".into());
        }
        if self.superseded.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("superseded by a newer proxy on this node (still serving until told to drain)".into());
        }
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
        if !missing.is_empty() {
            return Err(format!("waiting for certificates: {}", missing.join(", ")));
        }
        if let Some(synced) = &self.synced {
            let synced = synced.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if synced != state.version {
                return Err(format!("configuration {} not yet in place (rules and listeners)", state.version));
            }
        }
        Ok(())
    }

    /// The configuration as installed, for `/config_dump`. It holds no secret by construction: the mesh
    /// configuration carries none (no keys, no tokens), and certificates are summarised by [`Admin::certs_dump`]
    /// without their keys.
    pub fn config_dump(&self) -> serde_json::Value {
        let state = self.state.current();
        let destinations = self.context.as_ref().map(|c| c.http.backends.dump()).unwrap_or_default();
        let tcp_destinations = self.context.as_ref().map(|c| c.tcp_backends.dump()).unwrap_or_default();
        serde_json::json!({
            "node": state.node,
            "version": state.version,
            "config": &*state.config,
            // What the proxy compiled from it: route rules in the order they are tried, subsets with endpoints.
            "compiled": crate::explain::services(&state),
            // Live state of the destinations it has sent to: outlier ejections, pool, retry budget.
            "destinations": destinations,
            // TCP service ports: the balancer and the endpoints' outlier ejection.
            "tcpDestinations": tcp_destinations,
            "certificates": self.certs_dump(),
        })
    }

    /// Identity, serial and expiry of each certificate held, for `/certs`; never a private key.
    pub fn certs_dump(&self) -> serde_json::Value {
        let now = std::time::SystemTime::now();
        let certs: Vec<_> = self
            .certs
            .certs()
            .iter()
            .map(|c| {
                let expiry =
                    c.not_after().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
                let remaining = c.not_after().duration_since(now).map(|d| d.as_secs()).unwrap_or_default();
                serde_json::json!({
                    "identity": c.identity().to_string(),
                    "serial": c.serial(),
                    "notAfterUnix": expiry,
                    "expiresInSeconds": remaining,
                    "expired": c.is_expired(now),
                })
            })
            .collect();
        serde_json::Value::Array(certs)
    }

    /// `peer_is_local`: whether the request came over loopback; only such a request may drain the proxy, whatever
    /// address the admin port was bound to.
    async fn handle(&self, request: Request<Incoming>, peer_is_local: bool) -> Response<Body> {
        let path = request.uri().path().to_string();
        debug!(method = %request.method(), %path, metrics_port = self.metrics_only, "admin request");
        if self.metrics_only && path != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "text/plain", "only /metrics is served on this port\n");
        }
        match (request.method().clone(), path.as_str()) {
            (Method::GET, "/ready") | (Method::GET, "/healthz/ready") => match self.readiness() {
                Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n"),
                Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
            },
            (Method::GET, "/live") => reply(StatusCode::OK, "text/plain", "live\n"),
            (Method::POST, "/superseded") if peer_is_local => {
                if !self.superseded.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!("a replacement proxy started on this node: no longer answering ready");
                }
                reply(StatusCode::OK, "text/plain", "superseded\n")
            }
            // `/quitquitquit` is the name Envoy and Istio's agents answer to; both drain, neither exits at once.
            (Method::POST, "/drain") | (Method::POST, "/quitquitquit") => match (&self.drain, peer_is_local) {
                (_, false) => reply(StatusCode::FORBIDDEN, "text/plain", "drain is accepted from localhost only\n"),
                (None, true) => reply(StatusCode::NOT_IMPLEMENTED, "text/plain", "this server cannot drain\n"),
                (Some(drain), true) => {
                    if drain.start() {
                        tracing::info!("drain requested on the admin port");
                    }
                    reply(StatusCode::OK, "text/plain", "draining\n")
                }
            },
            (Method::GET, "/config_dump") => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&self.config_dump()).unwrap_or_default(),
            ),
            // Request paths and identities: for operators on the node (or through a port-forward) only.
            (Method::GET, "/tap") if !peer_is_local => {
                reply(StatusCode::FORBIDDEN, "text/plain", "tap is served to localhost only\n")
            }
            (Method::GET, "/tap") => match crate::tap::Filter::parse(request.uri().query()) {
                Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                Ok(filter) => match crate::tap::open(filter) {
                    Ok(body) => {
                        let mut response = Response::new(body.boxed());
                        response
                            .headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
                        response
                    }
                    Err(crate::tap::TapError::Busy) => reply(
                        StatusCode::TOO_MANY_REQUESTS,
                        "text/plain",
                        format!("{} taps are open already\n", crate::tap::MAX_TAPS),
                    ),
                },
            },
            (Method::GET, "/certs") => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&self.certs_dump()).unwrap_or_default(),
            ),
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
            (Method::GET, "/metrics") => {
                self.metrics.refresh_certificates(&self.certs);
                reply(StatusCode::OK, "text/plain; version=0.0.4", self.metrics.encode())
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "unknown admin path\n"),
        }
    }
}

/// Connections the admin or metrics port serves at once.
const MAX_CONNECTIONS: usize = 64;

/// Serves `admin` on `listener` until the drain starts (or forever without one). A draining proxy stops answering
/// so that, when a replacement shares the port (SO_REUSEPORT), every probe and scrape reaches the replacement.
pub async fn serve(listener: TcpListener, admin: Admin) {
    let drain = admin.drain.clone().unwrap_or_default();
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            () = drain.started() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    crate::tcp::socket::accept_error(&e).await;
                    continue;
                }
            },
        };
        // The metrics port faces the node's network: a scraper needs a few connections, nobody needs many.
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            warn!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let admin = admin.clone();
        let peer_is_local = crate::tcp::socket::canonical_ip(peer.ip()).is_loopback();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move {
                    let mut response = admin.handle(request, peer_is_local).await;
                    // While a replacement shares the port, this says which of the two proxies answered.
                    response.headers_mut().insert(PID_HEADER, http::HeaderValue::from(std::process::id()));
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .max_buf_size(16 * 1024);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .max_concurrent_streams(16)
                .max_header_list_size(16 * 1024);
            if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
                warn!(error = %e, "admin connection error");
            }
        });
    }
}

/// Tells the proxy already serving `admin_addr` on this node, if any, that a replacement is starting.
///
/// Both share the admin port (SO_REUSEPORT) and the kubelet's readiness probe reaches either: were the old one to
/// answer ready for the new one, a rolling update could stop the old proxy before the new one is ready. So the
/// old one stops answering ready (it keeps serving traffic until SIGTERM), and a 200 on the port comes from the
/// newest proxy. Sent before this proxy binds the port, so only the old one can receive it.
pub fn announce_replacement(admin_addr: SocketAddr) {
    use std::io::{Read, Write};
    let ip = match admin_addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ip if ip.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let timeout = std::time::Duration::from_secs(1);
    let announce = || -> std::io::Result<bool> {
        let mut stream = std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, admin_addr.port()), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream
            .write_all(b"POST /superseded HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    match announce() {
        Ok(true) => {
            tracing::info!(%admin_addr, "a proxy is already serving on this node; it hands readiness over to this one")
        }
        Ok(false) => tracing::warn!(%admin_addr, "something else answers on the admin port"),
        // Nothing listening: the usual start.
        Err(_) => {}
    }
}

/// Binds the admin and metrics ports and serves them on a dedicated thread with its own runtime.
pub fn spawn(admin: Admin, admin_addr: SocketAddr, metrics_addr: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // SO_REUSEPORT like the traffic listeners, so a replacement proxy can start beside this one.
    let admin_listener = crate::tcp::socket::bind_std(admin_addr, false)
        .with_context(|| format!("binding the admin port {admin_addr} (is a proxy of another user running?)"))?;
    let metrics_listener = crate::tcp::socket::bind_std(metrics_addr, false)
        .with_context(|| format!("binding the metrics port {metrics_addr}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use strait_api::{MeshConfig, Workload};
    use strait_certs::{Identity, MeshCa, TrustBundle};

    fn admin() -> (Admin, Identity) {
        let ca = MeshCa::generate("cluster.local").expect("a CA");
        let certs = Arc::new(CertStore::new(Arc::new(ca.clone()), TrustBundle::from_ca(&ca)));
        let identity = Identity::new("cluster.local", "shop", "sa-a1").expect("an identity");
        let admin = Admin {
            state: StateStore::new("node-a"),
            certs,
            metrics: Arc::new(Metrics::new()),
            log_control: None,
            metrics_only: false,
            synced: None,
            drain: Some(Drain::new()),
            superseded: Default::default(),
            context: None,
        };
        (admin, identity)
    }

    fn config() -> MeshConfig {
        MeshConfig {
            workloads: vec![Workload {
                name: "a1".into(),
                namespace: "shop".into(),
                service_account: "sa-a1".into(),
                node: "node-a".into(),
                address: "10.1.0.2".parse().expect("an address"),
                labels: Default::default(),
                meshed: true,
                tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
            }],
            ..MeshConfig::default()
        }
    }

    #[tokio::test]
    async fn ready_only_with_configuration_and_certificates() {
        let (admin, identity) = admin();
        assert!(admin.readiness().is_err_and(|e| e.contains("no configuration")));
        admin.state.apply(config(), "v1".into()).expect("a valid configuration");
        assert!(admin.readiness().is_err_and(|e| e.contains("waiting for certificates")));
        admin.certs.get_or_fetch(&identity).await.expect("a certificate");
        assert_eq!(admin.readiness(), Ok(()));
        // A proxy with a replacement on its node answers not ready, so the probe's 200 is the replacement's.
        admin.superseded.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(admin.readiness().is_err_and(|e| e.contains("superseded")));
        // A draining proxy is not ready, whatever else holds.
        admin.drain.as_ref().expect("a drain").start();
        assert_eq!(admin.readiness(), Err("draining".to_string()));
    }

    #[tokio::test]
    async fn dumps_never_hold_a_private_key() {
        let (admin, identity) = admin();
        admin.state.apply(config(), "v1".into()).expect("a valid configuration");
        let cert = admin.certs.get_or_fetch(&identity).await.expect("a certificate");
        let dump = serde_json::to_string(&admin.config_dump()).expect("json");
        let certs = serde_json::to_string(&admin.certs_dump()).expect("json");
        for text in [&dump, &certs] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(!text.contains("BEGIN"), "no PEM at all: {text}");
        }
        assert!(certs.contains(&identity.to_string()) && certs.contains(cert.serial()), "{certs}");
        assert!(dump.contains("\"version\":\"v1\""), "{dump}");

        // The metrics port exports the expiry, read from the store at scrape time.
        admin.metrics.refresh_certificates(&admin.certs);
        let expiry = cert.not_after().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
        let text = admin.metrics.encode();
        let line = format!("strait_certificate_expiry_timestamp_seconds{{identity=\"{identity}\"}} {expiry}");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }

    /// Idle connections to the metrics port (which faces the node's network) cannot pile up without bound.
    #[tokio::test]
    async fn the_metrics_port_serves_a_bounded_number_of_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (admin, _) = admin();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve(listener, Admin { metrics_only: true, ..admin }));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        // The listener has taken every idle connection once this one is answered or refused.
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read_to_end(&mut answer)).await;
        assert!(answer.is_empty(), "a connection beyond the limit was served");
        idle.clear();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut again = tokio::net::TcpStream::connect(addr).await.expect("connect");
        again.write_all(b"GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut answer = String::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), again.read_to_string(&mut answer)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "served again once connections closed: {answer}");
    }
}
