//! A cluster of Linux network namespaces: an underlay, nodes and pods.
//!
//! ```text
//!                underlay netns: bridge br0 (172.30.0.254/24)
//!               /  n0                              \  n1
//!     node-a: eth0 172.30.0.1                node-b: eth0 172.30.0.2
//!     p0 / p1 hold 10.1.0.1 (the pods' gateway)   p0 / p1 hold 10.2.0.1
//!        |     |                                     |     |
//!       a1    a2  (eth0 10.1.0.2, 10.1.0.3)         b1    b2  (eth0 10.2.0.2, 10.2.0.3)
//! ```
//!
//! Node `i` (0-based) has underlay address 172.30.0.(i+1)/24 and pod CIDR 10.(i+1).0.0/24; its pod `j` is
//! 10.(i+1).0.(j+2)/32 with a default route via the node (10.(i+1).0.1, an address every pod-facing veth of
//! the node holds). Nodes route other nodes' pod CIDRs via those nodes' underlay addresses. Service VIPs
//! (10.96.0.0/12) get no route at all: pods send them to their node, where the proxy's rules capture them.
//! Namespaces are isolated, so every cluster uses the same addresses; only namespace names are unique.
//!
//! IPv6 mirrors it (dual stack): node `i` is fd00:ffff::(i+1)/64 on the underlay (bridge fd00:ffff::fe),
//! its pods are fd00:(i+1)::(j+2)/128 (hex groups) with gateway fd00:(i+1)::1, pod CIDR fd00:(i+1)::/64.
//! Duplicate address detection is off, so addresses are usable as soon as the cluster is built.
//!
//! Every veth is created straight into its two namespaces (`ip link add ... netns A type veth peer ...
//! netns B`), so interface names only need to be unique per namespace and nothing touches the host's
//! namespace.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use anyhow::{bail, Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::exec;

/// Prefix of every namespace this harness creates: `st<pid>-<counter>-<name>`.
pub const NETNS_PREFIX: &str = "st";

/// The interface on a node that faces the underlay.
pub const NODE_UPLINK: &str = "eth0";
/// The interface inside a pod.
pub const POD_IFACE: &str = "eth0";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Tags of clusters alive in this process, which [`sweep_stale`] must not touch.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SWEEP_ONCE: Once = Once::new();

fn process_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Best-effort removal of namespaces left by a crashed earlier process that had this process's pid (the
/// tag includes the pid), skipping clusters alive in this process. Processes still running in them are
/// killed. Never touches other processes' namespaces. Runs automatically before the first cluster.
pub fn sweep_stale() {
    sweep_stale_with(NETNS_PREFIX);
}

fn sweep_stale_with(prefix: &str) {
    let prefix = process_prefix(prefix);
    let live: Vec<String> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let stale: Vec<String> = list_netns()
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix) && !live.iter().any(|tag| ns.starts_with(tag.as_str())))
        .collect();
    remove_namespaces(&stale);
}

/// Names from `ip netns list` (empty if it fails).
pub fn list_netns() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Lines look like "name (id: 3)" or just "name".
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Removes the namespaces named `<prefix><pid>-...` whose owner, process `<pid>`, no longer exists: what a
/// killed (SIGKILL) or crashed earlier program left behind, since only a clean exit runs `Drop`. Processes
/// still running in them are killed. Returns the names removed.
///
/// For a program with its own [`ClusterBuilder::prefix`] (the harness's parallel test processes use
/// [`NETNS_PREFIX`] and sweep only their own pid's leftovers, see [`sweep_stale`]).
pub fn sweep_dead_owners(prefix: &str) -> Vec<String> {
    let me = std::process::id();
    let stale: Vec<String> = list_netns()
        .into_iter()
        .filter(|ns| {
            let Some(rest) = ns.strip_prefix(prefix) else { return false };
            let Some((pid, _)) = rest.split_once('-') else { return false };
            let Ok(pid) = pid.parse::<u32>() else { return false };
            pid != me && !exec::process_exists(pid)
        })
        .collect();
    remove_namespaces(&stale);
    stale
}

/// Kills every process in the namespaces, then deletes them (which also removes their veths).
fn remove_namespaces(namespaces: &[String]) {
    if namespaces.is_empty() {
        return;
    }
    for ns in namespaces {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    exec::signal(pid, libc::SIGKILL);
                }
            }
        }
    }
    let script: String = namespaces.iter().map(|ns| format!("netns del {ns}\n")).collect();
    // -force: keep deleting after one failure; this is cleanup, so errors are reported, not raised.
    if let Err(e) = ip_batch(&[], &script, true) {
        eprintln!("strait-netns: cleanup of {namespaces:?} incomplete: {e:#}");
    }
}

/// Runs `ip <global_args> -batch -` with `script` on stdin.
fn ip_batch(global_args: &[&str], script: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(global_args);
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting `ip -batch`")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).context("writing to `ip -batch`")?;
    }
    let out = child.wait_with_output().context("waiting for `ip -batch`")?;
    if !out.status.success() {
        bail!(
            "`ip {} -batch -` failed ({}): {}\nscript:\n{script}",
            global_args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A node: a namespace that routes for its pods, and where a node proxy runs.
#[derive(Debug, Clone)]
pub struct Node {
    name: String,
    netns: String,
    index: usize,
    pods: Vec<String>,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn netns_name(&self) -> &str {
        &self.netns
    }
    /// 0-based position in the builder.
    pub fn index(&self) -> usize {
        self.index
    }
    /// Underlay address: 172.30.0.(index+1).
    pub fn ip(&self) -> Ipv4Addr {
        node_ip(self.index)
    }
    /// 10.(index+1).0.0/24.
    pub fn pod_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, node_octet(self.index), 0, 0), 24).expect("prefix 24 is valid")
    }
    /// The address pods use as their gateway: 10.(index+1).0.1, held by every pod-facing veth of the node.
    pub fn pod_gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, node_octet(self.index), 0, 1)
    }
    /// Underlay IPv6 address: fd00:ffff::(index+1).
    pub fn ip6(&self) -> Ipv6Addr {
        node_ip6(self.index)
    }
    /// fd00:(index+1)::/64.
    pub fn pod_cidr6(&self) -> Ipv6Net {
        Ipv6Net::new(Ipv6Addr::new(0xfd00, node_group(self.index), 0, 0, 0, 0, 0, 0), 64).expect("prefix 64 is valid")
    }
    /// fd00:(index+1)::1, the pods' IPv6 gateway.
    pub fn pod_gateway6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, node_group(self.index), 0, 0, 0, 0, 0, 1)
    }
    /// The MAC address of its uplink: 02:00:ac:1e:00:(index+1), fixed so captures are easy to read.
    pub fn mac(&self) -> String {
        format!("02:00:ac:1e:00:{:02x}", node_octet(self.index))
    }
    /// The node's interface towards the underlay (capture here to see node-to-node traffic).
    pub fn uplink(&self) -> &'static str {
        NODE_UPLINK
    }
    /// Names of the pods on this node.
    pub fn pods(&self) -> &[String] {
        &self.pods
    }
}

/// A pod: a namespace with one interface, `eth0`, linked to its node.
#[derive(Debug, Clone)]
pub struct Pod {
    name: String,
    netns: String,
    node: String,
    node_index: usize,
    index: usize,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn netns_name(&self) -> &str {
        &self.netns
    }
    /// Name of the node it runs on.
    pub fn node(&self) -> &str {
        &self.node
    }
    /// 10.(node+1).0.(index+2).
    pub fn ip(&self) -> Ipv4Addr {
        pod_ip(self.node_index, self.index)
    }
    /// fd00:(node+1)::(index+2).
    pub fn ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, node_group(self.node_index), 0, 0, 0, 0, 0, pod_group(self.index))
    }
    /// 0-based position among its node's pods.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The node-side end of its veth pair (`p<index>` in the node's namespace): the interface where its
    /// traffic enters the node.
    pub fn host_veth(&self) -> String {
        format!("p{}", self.index)
    }
}

fn node_octet(index: usize) -> u8 {
    u8::try_from(index + 1).expect("checked by the builder")
}

fn node_group(index: usize) -> u16 {
    u16::from(node_octet(index))
}

fn pod_group(index: usize) -> u16 {
    u16::try_from(index + 2).expect("checked by the builder")
}

fn node_ip6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, node_group(index))
}

fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, node_octet(index))
}

fn pod_ip(node: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, node_octet(node), 0, u8::try_from(pod + 2).expect("checked by the builder"))
}

/// The underlay bridge's own address, for infrastructure processes (a control plane, a fake Kubernetes
/// API server) that run in the underlay namespace and must be reachable from every node.
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
/// The underlay bridge's IPv6 address.
pub const UNDERLAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 0xfe);

/// Describes a cluster; [`ClusterBuilder::build`] creates it.
#[derive(Default)]
pub struct ClusterBuilder {
    nodes: Vec<(String, Vec<String>)>,
    prefix: Option<String>,
}

impl ClusterBuilder {
    /// Names the namespaces `<prefix><pid>-<counter>-<name>` instead of [`NETNS_PREFIX`]`<pid>-...`, so a
    /// program can find (and [`sweep_dead_owners`]) its own. 1-8 lowercase ASCII letters.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// Adds a node with the given pods (in order: the first pod gets .2, the next .3, ...).
    pub fn node(mut self, name: &str, pods: &[&str]) -> Self {
        self.nodes.push((name.to_owned(), pods.iter().map(|p| (*p).to_owned()).collect()));
        self
    }

    /// Creates every namespace, link, address and route. On error, whatever was created is removed.
    pub fn build(self) -> Result<Cluster> {
        self.validate()?;
        let prefix = self.prefix.as_deref().unwrap_or(NETNS_PREFIX);
        if prefix == NETNS_PREFIX {
            SWEEP_ONCE.call_once(sweep_stale);
        } else {
            sweep_stale_with(prefix);
        }
        let tag = format!("{}{}-", process_prefix(prefix), COUNTER.fetch_add(1, Ordering::Relaxed));
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(tag.clone());
        let mut cluster =
            Cluster { tag: tag.clone(), underlay: format!("{tag}ul"), nodes: vec![], pods: vec![], created: vec![] };
        for (i, (name, pods)) in self.nodes.iter().enumerate() {
            cluster.nodes.push(Node {
                name: name.clone(),
                netns: format!("{tag}{name}"),
                index: i,
                pods: pods.clone(),
            });
            for (j, pod) in pods.iter().enumerate() {
                cluster.pods.push(Pod {
                    name: pod.clone(),
                    netns: format!("{tag}{pod}"),
                    node: name.clone(),
                    node_index: i,
                    index: j,
                });
            }
        }
        // If anything below fails, dropping `cluster` removes what was created.
        cluster.create().with_context(|| format!("building cluster {tag}"))?;
        Ok(cluster)
    }

    fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            bail!("a cluster needs at least one node");
        }
        if let Some(prefix) = &self.prefix {
            if prefix.is_empty() || prefix.len() > 8 || !prefix.chars().all(|c| c.is_ascii_lowercase()) {
                bail!("invalid namespace prefix {prefix:?}: use 1-8 lowercase ASCII letters");
            }
        }
        if self.nodes.len() > 250 {
            bail!("at most 250 nodes (node i gets 10.(i+1).0.0/24)");
        }
        let mut seen = HashSet::new();
        for (node, pods) in &self.nodes {
            if pods.len() > 250 {
                bail!("node {node}: at most 250 pods (pod j gets .(j+2))");
            }
            for name in std::iter::once(node).chain(pods) {
                let ok = !name.is_empty()
                    && name.len() <= 40
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && name != "ul";
                if !ok {
                    bail!("invalid node/pod name {name:?}: use 1-40 of [A-Za-z0-9_-], not \"ul\"");
                }
                if !seen.insert(name.as_str()) {
                    bail!("node and pod names must be unique in a cluster; {name:?} repeats");
                }
            }
        }
        Ok(())
    }
}

/// A running cluster. Dropping it kills every process in its namespaces and deletes them, also on panic.
pub struct Cluster {
    tag: String,
    underlay: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// Namespaces actually created, the ones `Drop` removes.
    created: Vec<String>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The prefix of all of this cluster's namespace names, e.g. `st4242-0-`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The namespace holding the bridge that links the nodes (address [`UNDERLAY_IP`]).
    pub fn underlay_netns(&self) -> &str {
        &self.underlay
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The node called `name`; panics naming the known nodes if there is none (a bug in the test).
    pub fn node(&self, name: &str) -> &Node {
        self.try_node(name).unwrap_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            panic!("no node {name:?} in cluster {}; nodes: {known:?}", self.tag)
        })
    }

    pub fn try_node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod called `name`; panics naming the known pods if there is none (a bug in the test).
    pub fn pod(&self, name: &str) -> &Pod {
        self.try_pod(name).unwrap_or_else(|| {
            let known: Vec<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
            panic!("no pod {name:?} in cluster {}; pods: {known:?}", self.tag)
        })
    }

    pub fn try_pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &Pod) -> &Node {
        self.node(&pod.node)
    }

    /// Every namespace of this cluster.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    fn create(&mut self) -> Result<()> {
        let ul = self.underlay.clone();
        let mut all = vec![ul.clone()];
        all.extend(self.nodes.iter().map(|n| n.netns.clone()));
        all.extend(self.pods.iter().map(|p| p.netns.clone()));

        // 1. Namespaces, one at a time so `created` is exact if one fails.
        for ns in &all {
            ip_batch(&[], &format!("netns add {ns}\n"), false)?;
            self.created.push(ns.clone());
        }

        // 2. Sysctls, before any interface exists: interfaces take their per-interface values from
        //    `default`, and rp_filter's effective value is the max of `all` and the interface's.
        for ns in &all {
            // No duplicate address detection: addresses (link-local ones too) work at once, not ~1 s later.
            let mut keys = vec![
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            if self.nodes.iter().any(|n| &n.netns == ns) {
                keys.extend([
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.route_localnet=1",
                    "net.ipv4.conf.default.route_localnet=1",
                    "net.ipv6.conf.all.forwarding=1",
                ]);
            }
            exec::run_in(ns, &[&["sysctl", "-qw"][..], &keys].concat())?;
        }
        // A bridge hands frames to iptables when br_netfilter is loaded (it is per namespace); that breaks
        // TPROXY and conntrack on the nodes. `-e`: the key exists only if the module is loaded.
        exec::run_in(&ul, &["sysctl", "-e", "-qw", "net.bridge.bridge-nf-call-iptables=0"])?;

        // 3. Links, each created directly into its two namespaces.
        let mut links = String::new();
        for node in &self.nodes {
            let _ = writeln!(
                links,
                "link add name {NODE_UPLINK} netns {} address {} type veth peer name n{} netns {ul}",
                node.netns,
                node.mac(),
                node.index
            );
        }
        for pod in &self.pods {
            let node = &self.nodes[pod.node_index];
            let _ = writeln!(
                links,
                "link add name {POD_IFACE} netns {} type veth peer name {} netns {}",
                pod.netns,
                pod.host_veth(),
                node.netns
            );
        }
        ip_batch(&[], &links, false)?;

        // 4. Addresses and routes, one batch per namespace.
        let mut script = format!(
            "link set lo up\nlink add br0 type bridge mcast_snooping 0\naddr add {UNDERLAY_IP}/24 dev br0\n\
             addr add {UNDERLAY_IP6}/64 dev br0 nodad\n"
        );
        for node in &self.nodes {
            let _ = writeln!(script, "link set n{} master br0\nlink set n{} up", node.index, node.index);
        }
        script.push_str("link set br0 up\n");
        ip_batch(&["-n", &ul], &script, false)?;

        for node in &self.nodes {
            let mut s = format!(
                "link set lo up\naddr add {}/24 dev {NODE_UPLINK}\naddr add {}/64 dev {NODE_UPLINK} nodad\n\
                 link set {NODE_UPLINK} up\n",
                node.ip(),
                node.ip6()
            );
            for pod in self.pods.iter().filter(|p| p.node_index == node.index) {
                let veth = pod.host_veth();
                let _ = writeln!(s, "addr add {}/32 dev {veth}", node.pod_gateway());
                let _ = writeln!(s, "link set {veth} up");
                let _ = writeln!(s, "addr add {}/128 dev {veth} nodad", node.pod_gateway6());
                let _ = writeln!(s, "route add {}/32 dev {veth} src {}", pod.ip(), node.pod_gateway());
                let _ = writeln!(s, "route add {}/128 dev {veth}", pod.ip6());
            }
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let _ = writeln!(s, "route add {} via {}", other.pod_cidr(), other.ip());
                let _ = writeln!(s, "route add {} via {}", other.pod_cidr6(), other.ip6());
                // A permanent neighbour entry: without it the first packet a node forwards to another node
                // over IPv6 waited ~1 s for neighbour discovery (seen here), which skews latency-sensitive
                // tests.
                let _ = writeln!(s, "neigh add {} lladdr {} dev {NODE_UPLINK} nud permanent", other.ip6(), other.mac());
            }
            ip_batch(&["-n", &node.netns], &s, false)?;
        }

        for pod in &self.pods {
            let node = &self.nodes[pod.node_index];
            let (gw, gw6) = (node.pod_gateway(), node.pod_gateway6());
            let s = format!(
                "link set lo up\naddr add {}/32 dev {POD_IFACE}\naddr add {}/128 dev {POD_IFACE} nodad\n\
                 link set {POD_IFACE} up\n\
                 route add {gw}/32 dev {POD_IFACE} scope link\nroute add default via {gw} dev {POD_IFACE}\n\
                 route add {gw6}/128 dev {POD_IFACE}\nroute add default via {gw6} dev {POD_IFACE}\n",
                pod.ip(),
                pod.ip6()
            );
            ip_batch(&["-n", &pod.netns], &s, false)?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        remove_namespaces(&self.created);
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|t| t != &self.tag);
    }
}
