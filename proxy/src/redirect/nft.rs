//! Rendering of the `table inet strait` ruleset: a pure function of the [`RedirectSpec`].

use std::fmt::Write;
use std::net::IpAddr;

use super::{Mode, RedirectSpec};

/// The one table the proxy owns, in the node's network namespace.
pub const TABLE: &str = "inet strait";

/// Transaction that deletes the table whether or not it exists: nft rejects deleting a missing table, but
/// declaring it first (a no-op when it exists) makes the delete always valid.
pub(super) fn render_delete() -> String {
    format!("table {TABLE} {{}}\ndelete table {TABLE}\n")
}

/// The whole ruleset as one `nft -f` transaction that replaces the table atomically: packets see either the
/// old rules or the new ones, never none.
pub fn render(spec: &RedirectSpec) -> String {
    let (pods4, pods6): (Vec<IpAddr>, Vec<IpAddr>) =
        spec.local_pods.iter().map(|ip| ip.to_canonical()).partition(IpAddr::is_ipv4);
    let mut out = render_delete();
    out.push_str(&format!("table {TABLE} {{\n"));
    render_set(&mut out, "pods4", "ipv4_addr", &pods4);
    render_set(&mut out, "pods6", "ipv6_addr", &pods6);
    out.push_str("\tchain prerouting {\n");
    match spec.mode {
        Mode::Tproxy => render_tproxy(&mut out, spec),
        Mode::Redirect => render_redirect(&mut out, spec),
    }
    out.push_str("\t}\n}\n");
    out
}

fn render_set(out: &mut String, name: &str, kind: &str, addresses: &[IpAddr]) {
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {kind}");
    if !addresses.is_empty() {
        let list: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n");
}

/// One capture: packets whose source or destination is a local pod (and, optionally, whose destination port
/// is given) go to a listener.
struct Capture {
    direction: &'static str,
    dport: Option<u16>,
    to_port: u16,
    comment: &'static str,
}

impl Capture {
    /// The match for one address family. TPROXY and REDIRECT need the transport protocol pinned; a
    /// `tcp dport` match already does that.
    fn selector(&self, family: &str, set_suffix: &str) -> String {
        let direction = self.direction;
        match self.dport {
            Some(port) => format!("{family} {direction} @pods{set_suffix} tcp dport {port}"),
            None => format!("meta l4proto tcp {family} {direction} @pods{set_suffix}"),
        }
    }
}

/// The captures in their order: outbound first, so that a pod calling another pod on the same node is handled
/// as the caller's outbound traffic; then the tunnel port, then everything else to a pod.
fn captures(spec: &RedirectSpec) -> [Capture; 3] {
    [
        Capture { direction: "saddr", dport: None, to_port: spec.outbound_port, comment: "outbound from local pods" },
        Capture {
            direction: "daddr",
            dport: Some(spec.inbound_tunnel_port),
            to_port: spec.inbound_tunnel_port,
            comment: "mesh tunnel to local pods",
        },
        Capture {
            direction: "daddr",
            dport: None,
            to_port: spec.inbound_plaintext_port,
            comment: "plaintext to local pods",
        },
    ]
}

const FAMILIES: [(&str, &str); 2] = [("ip", "4"), ("ip6", "6")];

fn render_tproxy(out: &mut String, spec: &RedirectSpec) {
    let mark = spec.tproxy_mark;
    // Mangle, before any NAT. kube-proxy's DNAT (at dstnat) still rewrites a Service address afterwards, so
    // the listener's accepted socket names the endpoint; the Service address is the conntrack original
    // destination (SO_ORIGINAL_DST), as in REDIRECT mode.
    out.push_str("\t\ttype filter hook prerouting priority mangle; policy accept;\n");
    let _ = writeln!(out, "\t\tmeta mark {:#x} accept comment \"the proxy's own traffic\"", spec.proxy_mark);
    // Later packets of connections the proxy already holds (including replies to its transparent sockets that
    // use the caller's address) belong to those sockets, not to a listener. A bare SYN never does: it opens a
    // new connection, and `socket transparent` also matches a TIME_WAIT socket of an earlier connection with
    // the same addresses and ports, which would swallow the SYN (the client retransmits it 8-12 ms later: the
    // fixed p99 of fresh connections).
    let _ = writeln!(
        out,
        "\t\tmeta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set {mark:#x} accept comment \"the proxy's transparent sockets\""
    );
    for capture in captures(spec) {
        for (family, n) in FAMILIES {
            let _ = writeln!(
                out,
                "\t\t{} tproxy {family} to :{} meta mark set {mark:#x} accept comment \"{}\"",
                capture.selector(family, n),
                capture.to_port,
                capture.comment,
            );
        }
    }
    // nft's tproxy falls through when no socket listens (proxy down or restarting): without these rules the
    // packet would be routed on to the pod, failing open. Drop instead, so a pod is never reached around the
    // proxy. Replies to the proxy's own connections to pods (which tproxy hands back with no verdict, their
    // sockets not being transparent) are the reply direction of their conntrack entry and pass.
    let _ = writeln!(
        out,
        "\t\tmeta l4proto tcp ct direction reply accept comment \"replies to the proxy's own connections\""
    );
    for (family, n) in FAMILIES {
        for direction in ["saddr", "daddr"] {
            let _ = writeln!(
                out,
                "		meta l4proto tcp {family} {direction} @pods{n} drop comment \"fail closed while the proxy is down\""
            );
        }
    }
}

fn render_redirect(out: &mut String, spec: &RedirectSpec) {
    // Before kube-proxy's DNAT (priority dstnat): a connection's first NAT decision is its only one, so running
    // later would let Service traffic bypass the proxy; running first keeps the Service address as the
    // original destination the proxy reads back with SO_ORIGINAL_DST.
    out.push_str("\t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n");
    let _ = writeln!(out, "\t\tmeta mark {:#x} accept comment \"the proxy's own traffic\"", spec.proxy_mark);
    for capture in captures(spec) {
        for (family, n) in FAMILIES {
            let _ = writeln!(
                out,
                "\t\t{} redirect to :{} comment \"{}\"",
                capture.selector(family, n),
                capture.to_port,
                capture.comment
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn spec(mode: Mode, pods: &[&str]) -> RedirectSpec {
        RedirectSpec { mode, local_pods: pods.iter().map(|p| p.parse().unwrap()).collect(), ..RedirectSpec::default() }
    }

    const HEADER: &str = "table inet strait {}\ndelete table inet strait\ntable inet strait {\n";

    const TPROXY_CHAIN: &str = r#"	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta mark 0x539 accept comment "the proxy's own traffic"
		meta l4proto tcp tcp flags & (syn | ack) != syn socket transparent 1 meta mark set 0x111 accept comment "the proxy's transparent sockets"
		meta l4proto tcp ip saddr @pods4 tproxy ip to :15001 meta mark set 0x111 accept comment "outbound from local pods"
		meta l4proto tcp ip6 saddr @pods6 tproxy ip6 to :15001 meta mark set 0x111 accept comment "outbound from local pods"
		ip daddr @pods4 tcp dport 15008 tproxy ip to :15008 meta mark set 0x111 accept comment "mesh tunnel to local pods"
		ip6 daddr @pods6 tcp dport 15008 tproxy ip6 to :15008 meta mark set 0x111 accept comment "mesh tunnel to local pods"
		meta l4proto tcp ip daddr @pods4 tproxy ip to :15006 meta mark set 0x111 accept comment "plaintext to local pods"
		meta l4proto tcp ip6 daddr @pods6 tproxy ip6 to :15006 meta mark set 0x111 accept comment "plaintext to local pods"
		meta l4proto tcp ct direction reply accept comment "replies to the proxy's own connections"
		meta l4proto tcp ip saddr @pods4 drop comment "fail closed while the proxy is down"
		meta l4proto tcp ip daddr @pods4 drop comment "fail closed while the proxy is down"
		meta l4proto tcp ip6 saddr @pods6 drop comment "fail closed while the proxy is down"
		meta l4proto tcp ip6 daddr @pods6 drop comment "fail closed while the proxy is down"
	}
}
"#;

    const REDIRECT_CHAIN: &str = r#"	chain prerouting {
		type nat hook prerouting priority dstnat - 10; policy accept;
		meta mark 0x539 accept comment "the proxy's own traffic"
		meta l4proto tcp ip saddr @pods4 redirect to :15001 comment "outbound from local pods"
		meta l4proto tcp ip6 saddr @pods6 redirect to :15001 comment "outbound from local pods"
		ip daddr @pods4 tcp dport 15008 redirect to :15008 comment "mesh tunnel to local pods"
		ip6 daddr @pods6 tcp dport 15008 redirect to :15008 comment "mesh tunnel to local pods"
		meta l4proto tcp ip daddr @pods4 redirect to :15006 comment "plaintext to local pods"
		meta l4proto tcp ip6 daddr @pods6 redirect to :15006 comment "plaintext to local pods"
	}
}
"#;

    const SETS_V4: &str =
        "\tset pods4 {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.1.2 }\n\t}\n\tset pods6 {\n\t\ttype ipv6_addr\n\t}\n";

    #[test]
    fn tproxy_one_v4_pod() {
        assert_eq!(render(&spec(Mode::Tproxy, &["10.0.1.2"])), format!("{HEADER}{SETS_V4}{TPROXY_CHAIN}"));
    }

    #[test]
    fn redirect_one_v4_pod() {
        assert_eq!(render(&spec(Mode::Redirect, &["10.0.1.2"])), format!("{HEADER}{SETS_V4}{REDIRECT_CHAIN}"));
    }

    #[test]
    fn dual_stack_pods_are_sorted_into_both_sets() {
        let text = render(&spec(Mode::Tproxy, &["fd00::2", "10.0.1.3", "10.0.1.2", "fd00::10", "::ffff:10.0.1.4"]));
        let sets = "\tset pods4 {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.1.2, 10.0.1.3, 10.0.1.4 }\n\t}\n\
                    \tset pods6 {\n\t\ttype ipv6_addr\n\t\telements = { fd00::2, fd00::10 }\n\t}\n";
        assert_eq!(text, format!("{HEADER}{sets}{TPROXY_CHAIN}"));
    }

    #[test]
    fn no_pods_still_renders_valid_empty_sets() {
        let sets = "\tset pods4 {\n\t\ttype ipv4_addr\n\t}\n\tset pods6 {\n\t\ttype ipv6_addr\n\t}\n";
        assert_eq!(render(&spec(Mode::Redirect, &[])), format!("{HEADER}{sets}{REDIRECT_CHAIN}"));
        assert_eq!(render(&spec(Mode::Tproxy, &[])), format!("{HEADER}{sets}{TPROXY_CHAIN}"));
    }

    #[test]
    fn ports_and_marks_come_from_the_spec() {
        let spec = RedirectSpec {
            mode: Mode::Tproxy,
            local_pods: BTreeSet::new(),
            outbound_port: 25001,
            inbound_plaintext_port: 25006,
            inbound_tunnel_port: 25008,
            proxy_mark: 0x10,
            tproxy_mark: 0x20,
            tproxy_table: 7,
        };
        let text = render(&spec);
        assert!(text.contains("meta mark 0x10 accept"), "{text}");
        assert!(text.contains("ip saddr @pods4 tproxy ip to :25001 meta mark set 0x20 accept"), "{text}");
        assert!(text.contains("ip daddr @pods4 tcp dport 25008 tproxy ip to :25008"), "{text}");
        assert!(text.contains("ip6 daddr @pods6 tproxy ip6 to :25006"), "{text}");
        assert!(!text.contains("0x111") && !text.contains("1500"), "{text}");
    }

    #[test]
    fn delete_is_valid_whether_or_not_the_table_exists() {
        assert_eq!(render_delete(), "table inet strait {}\ndelete table inet strait\n");
    }
}
