//! `strait check --node`: what this machine needs to run a capturing node proxy, and whether the proxy's rules
//! are in place. Root only: nftables cannot be read or tried otherwise.

use std::io::Write as _;
use std::process::{Command, Stdio};

use strait_proxy::redirect::Runner;

use crate::check::Check;

/// Everything the proxy's rules use (`proxy/src/redirect/nft.rs`): TPROXY with socket matching, and the NAT
/// redirect whose original destination the proxy reads with SO_ORIGINAL_DST (conntrack). `nft -c` asks the
/// kernel to validate it without changing anything.
const FEATURE_PROBE: &str = "table inet strait_check {
  chain probe_tproxy {
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp socket transparent 1 meta mark set 0x1 accept
    meta l4proto tcp ip daddr 10.0.0.1 tproxy ip to :15001 meta mark set 0x1 accept
  }
  chain probe_nat {
    type nat hook prerouting priority dstnat; policy accept;
    ct state new tcp dport 1 redirect to :15001
  }
}
";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

pub fn checks(netns: Option<&str>) -> Vec<Check> {
    if !is_root() {
        return vec![Check::fail(
            "node: privileges",
            "not root",
            "run `sudo strait check --node` (nftables can only be read and tried as root)",
        )];
    }
    if !on_path("nft") {
        return vec![Check::fail(
            "node: nft",
            "nft is not on PATH",
            "the proxy installs its rules with nft: apt-get install -y nftables",
        )];
    }
    vec![kernel_features(), rules(netns)]
}

fn kernel_features() -> Check {
    let name = "node: kernel features (TPROXY, socket match, NAT redirect, conntrack)";
    let probe = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?.write_all(FEATURE_PROBE.as_bytes())?;
        child.wait_with_output()
    };
    match probe() {
        Ok(out) if out.status.success() => Check::pass(name, "the kernel accepts every rule the proxy uses"),
        Ok(out) => Check::fail(
            name,
            format!("the kernel refused a probe rule: {}", String::from_utf8_lossy(&out.stderr).trim()),
            "load the modules: modprobe nft_tproxy nft_socket nf_tproxy_ipv4 nf_tproxy_ipv6 nft_redir nf_conntrack",
        ),
        Err(e) => Check::fail(name, format!("running nft: {e}"), "nft must be runnable by root"),
    }
}

fn rules(netns: Option<&str>) -> Check {
    let name = match netns {
        Some(ns) => format!("node: nftables rules in {ns}"),
        None => "node: nftables rules".to_string(),
    };
    let runner = netns.map_or_else(Runner::host, Runner::in_netns);
    match runner.list_table() {
        Ok(Some(table)) if table.contains("tproxy") || table.contains("redirect") => {
            let pods = table.matches("elements").count();
            Check::pass(name, format!("table inet strait captures traffic ({pods} pod address set(s) filled)"))
        }
        Ok(Some(_)) => Check::fail(
            name,
            "table inet strait holds no capture rule",
            "the proxy renders the table when configuration arrives; see its log for nft errors",
        ),
        Ok(None) => Check::fail(
            name,
            "no table inet strait",
            "is the node proxy running here with --redirect tproxy|redirect, and has it received configuration? \
             (an --mode explicit proxy, as `strait local` without --netns runs, installs no rules)",
        ),
        Err(e) => Check::fail(name, e.to_string(), "nft must be able to list the ruleset"),
    }
}
