//! What `strait local` runs, read from the same configuration directory the control plane serves: one node
//! proxy per node the workloads name, one demo backend per workload a service selects, and every address each
//! of them will bind (checked up front, so a taken port is reported before anything starts).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context as _;
use strait_control::files::FileContents;
use strait_control::model::{Object, Service, Workload};

use crate::launch_spec::Launch;

/// Every configuration file of `config_dir`, as the control plane's file provider reads them.
pub fn read_config_dir(config_dir: &Path) -> anyhow::Result<FileContents> {
    strait_control::files::read_dir(config_dir)
        .with_context(|| format!("reading the configuration directory {}", config_dir.display()))
}

/// The `127.A.B` layout of the addresses `strait local` picks itself (the rest come from the files).
#[derive(Clone, Copy, Debug)]
pub struct Base(pub [u8; 2]);

impl std::str::FromStr for Base {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not two address octets like 127.0");
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let a: u8 = a.parse().map_err(|_| bad())?;
        let b: u8 = b.parse().map_err(|_| bad())?;
        if a != 127 {
            return Err(format!("{s:?}: the local mesh runs on loopback, so the first octet must be 127"));
        }
        Ok(Base([a, b]))
    }
}

impl Base {
    pub(crate) fn ip(self, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.0[0], self.0[1], c, d)
    }
}

pub struct Plan {
    pub control: SocketAddr,
    /// The control plane's monitoring port (/metrics, /ready, /debug/proxies for `strait status`).
    pub monitoring: SocketAddr,
    pub nodes: Vec<NodePlan>,
    /// Demo backends: for the workloads a service selects that say neither `run` nor `external`.
    pub backends: Vec<Backend>,
    /// Workloads with `run:`, started by `strait local`.
    pub runs: Vec<RunPlan>,
    /// Workloads with `external: true`, started by the user.
    pub externals: Vec<ExternalPlan>,
    /// Workloads no service selects: the callers.
    pub clients: Vec<Workload>,
    pub services: Vec<Service>,
    /// The file holding the TrafficRoute (to tell users which file to edit), if any.
    pub route_file: Option<String>,
    /// Problems the control plane will also report; shown as warnings.
    pub rejected: Vec<String>,
    pub workloads: Vec<Workload>,
}

pub struct NodePlan {
    pub name: String,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    /// This node's proxy listens on the service addresses (the node of the clients).
    pub bind_services: bool,
}

pub struct Backend {
    pub workload: Workload,
    pub listen: SocketAddr,
    pub version: String,
    pub identity: String,
}

impl Plan {
    /// Where the workload's own process is to listen (its `run:` or `external` ports), if it has one.
    pub fn listen_of(&self, w: &Workload) -> Vec<SocketAddr> {
        let same = |o: &Workload| o.namespace == w.namespace && o.name == w.name;
        let runs = self.runs.iter().filter(|r| same(&r.workload)).flat_map(|r| r.listen.iter());
        let externals = self.externals.iter().filter(|e| same(&e.workload)).flat_map(|e| e.listen.iter());
        runs.chain(externals).copied().collect()
    }

    /// The child-process name of a demo backend: its workload's, with the port when that workload serves
    /// several ports (one process each).
    pub fn backend_name(&self, backend: &Backend) -> String {
        if self.backends.iter().filter(|o| o.workload.name == backend.workload.name).count() > 1 {
            format!("{}-{}", backend.workload.name, backend.listen.port())
        } else {
            backend.workload.name.clone()
        }
    }
}

impl Backend {
    /// `strait demo-backend ...` arguments for this backend.
    pub fn args(&self) -> Vec<String> {
        vec![
            "demo-backend".into(),
            "--listen".into(),
            self.listen.to_string(),
            "--version".into(),
            self.version.clone(),
            "--identity".into(),
            self.identity.clone(),
            "--name".into(),
            self.workload.name.clone(),
        ]
    }
}

/// A workload whose process `strait local` starts (`run:`).
pub struct RunPlan {
    pub workload: Workload,
    pub argv: Vec<String>,
    /// Where it is to listen: one address per target port of the services selecting it (none for a client).
    pub listen: Vec<SocketAddr>,
    pub identity: String,
}

/// A workload the user starts (`external: true`).
pub struct ExternalPlan {
    pub workload: Workload,
    pub listen: Vec<SocketAddr>,
}

/// What a workload's process finds in its environment, besides the services' addresses
/// ([`crate::forward`]): who it is, where to listen, which source address is its identity.
pub fn workload_env(workload: &Workload, listen: &[SocketAddr], identity: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("STRAIT_WORKLOAD".to_string(), workload.name.clone()),
        ("STRAIT_NAMESPACE".to_string(), workload.namespace.clone()),
        ("STRAIT_IDENTITY".to_string(), identity.to_string()),
        ("STRAIT_ADDRESS".to_string(), workload.address.to_string()),
        // The address to bind outgoing connections to so that the mesh knows the caller (loopback mode).
        ("STRAIT_SOURCE_ADDR".to_string(), workload.address.to_string()),
    ];
    if let Some(first) = listen.first() {
        env.push(("STRAIT_LISTEN".to_string(), first.to_string()));
        env.push(("STRAIT_PORT".to_string(), first.port().to_string()));
        let all: Vec<String> = listen.iter().map(ToString::to_string).collect();
        env.push(("STRAIT_LISTEN_ALL".to_string(), all.join(",")));
    }
    if let Some(version) = workload.labels.get("version") {
        env.push(("STRAIT_VERSION".to_string(), version.clone()));
    }
    env
}

fn identity(trust_domain: &str, w: &Workload) -> String {
    format!("spiffe://{trust_domain}/ns/{}/sa/{}", w.namespace, w.service_account)
}

/// An address something will bind, and what.
pub struct Binding {
    pub addr: SocketAddr,
    pub what: String,
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.what)
    }
}

impl Plan {
    pub fn read(config_dir: &Path, base: Base, trust_domain: &str) -> anyhow::Result<Plan> {
        let files = read_config_dir(config_dir)?;
        Plan::from_files(&files, config_dir, base, trust_domain)
    }

    /// The plan for the configuration files `files` (of `config_dir`, named in messages).
    pub fn from_files(files: &FileContents, config_dir: &Path, base: Base, trust_domain: &str) -> anyhow::Result<Plan> {
        let discovered = strait_control::files::parse_files(files);
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        let mut route_file = None;
        for sourced in discovered.objects {
            match sourced.object {
                Object::Workload(w) => workloads.push(w),
                Object::Service(s) => services.push(s),
                Object::TrafficRoute(_) => {
                    route_file.get_or_insert(sourced.source);
                }
                _ => {}
            }
        }
        anyhow::ensure!(
            !workloads.is_empty(),
            "{} describes no workloads: it needs a `kind: Mesh` document listing them (see deploy/local/mesh.yaml)",
            config_dir.display()
        );
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        // Backends: every workload a service selects, on each of the services' target ports.
        let mut backend_ports: BTreeMap<usize, BTreeSet<u16>> = BTreeMap::new();
        for service in &services {
            for (i, w) in workloads.iter().enumerate() {
                let selected = if service.selector.is_empty() {
                    service.endpoints.iter().any(|e| e.address == w.address)
                } else {
                    w.namespace == service.namespace && service.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                };
                if selected {
                    backend_ports.entry(i).or_default().extend(service.ports.iter().map(|p| p.target()));
                }
            }
        }
        let launches = crate::launch_spec::read(files)?;
        let mut backends = Vec::new();
        let mut runs = Vec::new();
        let mut externals = Vec::new();
        let mut clients = Vec::new();
        for (i, w) in workloads.iter().enumerate() {
            let ports = backend_ports.get(&i);
            let listen: Vec<SocketAddr> =
                ports.into_iter().flatten().map(|port| SocketAddr::new(w.address, *port)).collect();
            let identity = identity(trust_domain, w);
            match launches.get(&(w.namespace.clone(), w.name.clone())) {
                Some(Launch::Run(argv)) => {
                    runs.push(RunPlan { workload: w.clone(), argv: argv.clone(), listen, identity });
                }
                Some(Launch::External) => {
                    anyhow::ensure!(
                        !listen.is_empty(),
                        "workload {}/{}: `external: true`, but no service selects it, so there is no port to wait                          for: leave `external` out (a caller needs nothing started; see `strait local exec --as`)",
                        w.namespace,
                        w.name
                    );
                    externals.push(ExternalPlan { workload: w.clone(), listen });
                }
                None => {
                    for addr in listen {
                        backends.push(Backend {
                            listen: addr,
                            version: w.labels.get("version").cloned().unwrap_or_else(|| "v1".to_string()),
                            identity: identity.clone(),
                            workload: w.clone(),
                        });
                    }
                }
            }
            if ports.is_none() {
                clients.push(w.clone());
            }
        }

        let node_names: BTreeSet<&str> = workloads.iter().map(|w| w.node.as_str()).collect();
        anyhow::ensure!(node_names.len() < 250, "too many nodes for the local layout ({})", node_names.len());
        // Clients reach services through their own node's proxy, which therefore binds the service addresses.
        // Only one proxy can bind them; with clients on several nodes, the first of those nodes does.
        let client_nodes: BTreeSet<&str> = clients.iter().map(|w| w.node.as_str()).collect();
        let service_node = client_nodes.iter().next().or(node_names.iter().next()).copied().unwrap_or_default();
        let nodes = node_names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let ip = base.ip(i as u8 + 1, 1);
                NodePlan {
                    name: name.to_string(),
                    admin: SocketAddr::from((ip, 15000)),
                    metrics: SocketAddr::from((ip, 15020)),
                    bind_services: *name == service_node,
                }
            })
            .collect();
        Ok(Plan {
            control: SocketAddr::from((base.ip(0, 2), 15012)),
            monitoring: SocketAddr::from((base.ip(0, 2), 15014)),
            nodes,
            backends,
            runs,
            externals,
            clients,
            services,
            route_file,
            rejected: discovered.rejected.iter().map(ToString::to_string).collect(),
            workloads,
        })
    }

    /// Every address the mesh's processes will listen on, in start order.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut out = vec![
            Binding { addr: self.control, what: "control plane".into() },
            Binding { addr: self.monitoring, what: "control plane monitoring".into() },
        ];
        for node in &self.nodes {
            out.push(Binding { addr: node.admin, what: format!("{} admin", node.name) });
            out.push(Binding { addr: node.metrics, what: format!("{} metrics", node.name) });
        }
        for w in self.workloads.iter().filter(|w| w.meshed != Some(false)) {
            out.push(Binding {
                addr: SocketAddr::new(w.address, w.tunnel_port),
                what: format!("tunnel of workload {}/{} on {}", w.namespace, w.name, w.node),
            });
        }
        for s in &self.services {
            for addr in &s.addresses {
                for port in &s.ports {
                    out.push(Binding {
                        addr: SocketAddr::new(*addr, port.port),
                        what: format!("service {}/{}", s.namespace, s.name),
                    });
                }
            }
        }
        for b in &self.backends {
            out.push(Binding {
                addr: b.listen,
                what: format!("demo backend {}/{}", b.workload.namespace, b.workload.name),
            });
        }
        // An external workload's ports are not checked: the user may have started it already.
        for r in &self.runs {
            for addr in &r.listen {
                out.push(Binding {
                    addr: *addr,
                    what: format!("workload {}/{} (run: {})", r.workload.namespace, r.workload.name, r.argv.join(" ")),
                });
            }
        }
        out
    }

    /// The node proxy that serves the service addresses.
    pub fn service_node(&self) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.bind_services)
    }
}
