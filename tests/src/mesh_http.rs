//! The HTTP flavour of the mesh fixture: the `reviews` service (two versions) and a gRPC service on top of
//! [`crate::mesh::default_config`], `http` backends in pods b1 and b2, and builders for the L7 resources
//! (TrafficRoute, DestinationPolicy, AuthorizationPolicy) from the YAML users write.
//!
//! ```text
//! a1 (node-a) --> reviews 10.96.0.20:80 (port name `http`, targetPort 8080)
//!                   b1 (node-b) labels app=reviews, version=v1   backend name reviews-b1, version v1
//!                   b2 (node-b) labels app=reviews, version=v2   backend name reviews-b2, version v2
//!             --> echo-grpc 10.96.0.21:50051 (appProtocol grpc, targetPort 8080) -> b1 only
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use strait_api::{
    AuthorizationPolicySpec, DestinationPolicySpec, Endpoint, MeshConfig, Named, Service, ServicePort, TrafficRouteSpec,
};

use crate::backend::{self, HttpGet, HttpResult, HttpSummary, Server};
use crate::mesh::{self, Capture, Mesh, NAMESPACE};
use crate::netns::Cluster;

pub const REVIEWS_VIP: &str = "10.96.0.20";
pub const REVIEWS_PORT: u16 = 80;
pub const GRPC_VIP: &str = "10.96.0.21";
pub const GRPC_PORT: u16 = 50051;
/// Where the `http` backends listen in b1 and b2 (the services' targetPort).
pub const BACKEND_PORT: u16 = 8080;
/// The client pod.
pub const CLIENT: &str = "a1";

/// Two nodes: a1, a2 on node-a; b1, b2 on node-b.
pub fn cluster() -> Result<Cluster> {
    Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()
}

/// [`mesh::default_config`] plus: b1 and b2 labelled `app: reviews` and `version: v1` / `v2` (and
/// `pod: <name>`), the `reviews` HTTP service in front of both, and the `echo-grpc` service in front of b1.
pub fn config(cluster: &Cluster) -> MeshConfig {
    let mut config = mesh::default_config(cluster);
    for w in config.workloads.iter_mut() {
        let version = match w.name.as_str() {
            "b1" => "v1",
            "b2" => "v2",
            _ => continue,
        };
        w.labels = BTreeMap::from([
            ("app".to_string(), "reviews".to_string()),
            ("version".to_string(), version.to_string()),
            ("pod".to_string(), w.name.clone()),
        ]);
    }
    let endpoint = |pod: &str| Endpoint { address: IpAddr::V4(cluster.pod(pod).ip()), ready: true };
    config.services.push(Service {
        name: "reviews".into(),
        namespace: NAMESPACE.into(),
        addresses: vec![REVIEWS_VIP.parse().expect("a valid constant address")],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: REVIEWS_PORT,
            target_port: Some(BACKEND_PORT),
            app_protocol: None,
        }],
        endpoints: vec![endpoint("b1"), endpoint("b2")],
    });
    config.services.push(Service {
        name: "echo-grpc".into(),
        namespace: NAMESPACE.into(),
        addresses: vec![GRPC_VIP.parse().expect("a valid constant address")],
        ports: vec![ServicePort {
            name: Some("grpc-echo".into()),
            port: GRPC_PORT,
            target_port: Some(BACKEND_PORT),
            app_protocol: Some("grpc".into()),
        }],
        endpoints: vec![endpoint("b1")],
    });
    config
}

/// An HTTP service of [`NAMESPACE`] at `vip`, port 80, whose port declares `app_protocol` (`http`, `http2`,
/// ...), in front of the [`BACKEND_PORT`] of `pods` (workloads of `config`).
pub fn http_service(config: &MeshConfig, name: &str, vip: &str, app_protocol: &str, pods: &[&str]) -> Service {
    let address = |pod: &&str| {
        config.workloads.iter().find(|w| w.name == *pod).map(|w| w.address).unwrap_or_else(|| panic!("no pod {pod}"))
    };
    Service {
        name: name.into(),
        namespace: NAMESPACE.into(),
        addresses: vec![vip.parse().unwrap_or_else(|e| panic!("service {name}: address {vip:?}: {e}"))],
        ports: vec![ServicePort {
            name: Some("web".into()),
            port: 80,
            target_port: Some(BACKEND_PORT),
            app_protocol: Some(app_protocol.into()),
        }],
        endpoints: pods.iter().map(|pod| Endpoint { address: address(pod), ready: true }).collect(),
    }
}

/// A resource of [`NAMESPACE`] from the spec as users write it (YAML or flow-style YAML); panics with the
/// parse error on a typo, since the YAML is part of the test.
pub fn named<T: DeserializeOwned>(name: &str, yaml: &str) -> Named<T> {
    let spec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("resource {name}: {e}\n{yaml}"));
    Named { name: name.into(), namespace: NAMESPACE.into(), spec }
}

pub fn traffic_route(name: &str, yaml: &str) -> Named<TrafficRouteSpec> {
    named(name, yaml)
}

pub fn destination_policy(name: &str, yaml: &str) -> Named<DestinationPolicySpec> {
    named(name, yaml)
}

pub fn authorization_policy(name: &str, yaml: &str) -> Named<AuthorizationPolicySpec> {
    named(name, yaml)
}

/// The `reviews` DestinationPolicy with subsets v1 and v2, plus `extra` top-level spec lines (e.g.
/// `"outlierDetection: {consecutive5xxErrors: 3}"`).
pub fn reviews_policy(extra: &str) -> Named<DestinationPolicySpec> {
    let yaml = format!(
        "host: reviews\nsubsets:\n- {{name: v1, labels: {{version: v1}}}}\n- {{name: v2, labels: {{version: v2}}}}\n{extra}\n"
    );
    destination_policy("reviews", &yaml)
}

/// A running HTTP mesh: the `http` backends first (dropped before the mesh and its cluster).
pub struct HttpMesh {
    /// `reviews-b1`, version v1, in pod b1.
    pub b1: Server,
    /// `reviews-b2`, version v2, in pod b2.
    pub b2: Server,
    pub mesh: Mesh,
}

impl HttpMesh {
    /// Builds the cluster, starts b1 and b2 with extra `http` flags (`["--fail-percent", "50"]`, `["--hang"]`),
    /// lets `configure` add routes and policies to [`config`], and starts the proxies (TPROXY).
    pub fn start(b1_flags: &[&str], b2_flags: &[&str], configure: impl FnOnce(&mut MeshConfig)) -> Result<HttpMesh> {
        Self::start_with_grace(b1_flags, b2_flags, configure, None)
    }

    /// [`HttpMesh::start`] with the proxies' `--drain-grace`.
    pub fn start_with_grace(
        b1_flags: &[&str],
        b2_flags: &[&str],
        configure: impl FnOnce(&mut MeshConfig),
        drain_grace: Option<std::time::Duration>,
    ) -> Result<HttpMesh> {
        Self::start_with_args(b1_flags, b2_flags, configure, drain_grace, Vec::new())
    }

    /// [`HttpMesh::start_with_grace`] with more flags for both proxies (see [`Mesh::proxy_args`]).
    pub fn start_with_args(
        b1_flags: &[&str],
        b2_flags: &[&str],
        configure: impl FnOnce(&mut MeshConfig),
        drain_grace: Option<std::time::Duration>,
        proxy_args: Vec<String>,
    ) -> Result<HttpMesh> {
        let cluster = cluster()?;
        let mut config = config(&cluster);
        configure(&mut config);
        let listen = |pod: &str| SocketAddr::new(cluster.pod(pod).ip().into(), BACKEND_PORT);
        let b1 = backend::http_with(cluster.pod("b1").netns_name(), listen("b1"), "reviews-b1", "v1", b1_flags)?;
        let b2 = backend::http_with(cluster.pod("b2").netns_name(), listen("b2"), "reviews-b2", "v2", b2_flags)?;
        let mesh = Mesh::start_with_args(cluster, &config, Capture::Tproxy, drain_grace, proxy_args)?;
        Ok(HttpMesh { b1, b2, mesh })
    }

    /// The client pod's namespace.
    pub fn client(&self) -> &str {
        self.mesh.cluster.pod(CLIENT).netns_name()
    }

    /// `http://10.96.0.20<path>` (the `reviews` service on port 80).
    pub fn reviews_url(path: &str) -> String {
        format!("http://{REVIEWS_VIP}{path}")
    }

    pub fn reviews_addr() -> SocketAddr {
        SocketAddr::new(REVIEWS_VIP.parse().expect("constant"), REVIEWS_PORT)
    }

    pub fn grpc_addr() -> SocketAddr {
        SocketAddr::new(GRPC_VIP.parse().expect("constant"), GRPC_PORT)
    }

    /// Runs `http-get` in the client pod; one result per request.
    pub fn get(&self, opts: &HttpGet) -> Result<Vec<HttpResult>> {
        backend::http_get(self.client(), opts)
    }

    /// Runs `http-get --summary` in the client pod.
    pub fn summary(&self, opts: &HttpGet) -> Result<HttpSummary> {
        backend::http_summary(self.client(), opts)
    }

    fn backend(&self, pod: &str) -> &Server {
        match pod {
            "b1" => &self.b1,
            "b2" => &self.b2,
            _ => panic!("no backend in pod {pod}"),
        }
    }

    /// `<method> /control/<what>` on the backend of `pod` ("b1" or "b2"), sent from inside that pod so no
    /// proxy is involved.
    pub fn control(&self, pod: &str, method: &str, what: &str) -> Result<serde_json::Value> {
        let addr = self.backend(pod).addr;
        backend::control(self.mesh.cluster.pod(pod).netns_name(), addr, method, what)
            .with_context(|| format!("controlling the backend in {pod}"))
    }

    /// Requests the backend of `pod` has seen (control requests excluded).
    pub fn backend_requests(&self, pod: &str) -> Result<u64> {
        let stats = self.control(pod, "GET", "stats")?;
        stats["requests"].as_u64().with_context(|| format!("no request count in {stats}"))
    }

    /// A counter of the backend of `pod` from its stats (`connections`, `max_in_flight`, see the `http`
    /// backend).
    pub fn backend_stat(&self, pod: &str, key: &str) -> Result<u64> {
        let stats = self.control(pod, "GET", "stats")?;
        stats[key].as_u64().with_context(|| format!("no {key} in {stats}"))
    }

    /// Both proxies' logs, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "--- node-a proxy log ---\n{}\n--- node-b proxy log ---\n{}",
            tail(&self.mesh.proxy_logs("node-a"), 60),
            tail(&self.mesh.proxy_logs("node-b"), 60)
        )
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
