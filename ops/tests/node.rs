//! `strait check --node --netns NS`, as root against a real network namespace: the kernel accepts the proxy's
//! rules, and the proxy's table is found once it is installed (by the proxy's own `Runner`).

use std::process::Command;

use strait_netns::Tool;
use strait_ops::check::Outcome;
use strait_proxy::redirect::{Mode, RedirectSpec, Runner};

/// A network namespace for this test, deleted when dropped (also on panic).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn node_checks_find_the_proxys_rules_in_a_namespace() {
    if !strait_netns::require_root_and(&[Tool::IP, Tool::NFT]) {
        return;
    }
    let netns = Netns(format!("strait-ops-{}", std::process::id()));
    let added = Command::new("ip").args(["netns", "add", &netns.0]).status().expect("run ip");
    assert!(added.success(), "ip netns add {}", netns.0);

    let checks = strait_ops::node::checks(Some(&netns.0));
    let kernel = checks.iter().find(|c| c.name.starts_with("node: kernel features")).expect("the kernel check");
    assert_eq!(kernel.outcome, Outcome::Pass, "{kernel:?}");
    let rules = checks.iter().find(|c| c.name.starts_with("node: nftables rules")).expect("the rules check");
    assert_eq!((rules.outcome.clone(), rules.detail.as_str()), (Outcome::Fail, "no table inet strait"), "{rules:?}");
    assert!(rules.hint.as_deref().unwrap_or("").contains("--redirect"), "{rules:?}");

    let spec = RedirectSpec {
        mode: Mode::Redirect,
        local_pods: ["10.0.1.2".parse().expect("an address")].into(),
        ..RedirectSpec::default()
    };
    Runner::in_netns(&netns.0).apply(&spec).expect("install the proxy's rules");
    let checks = strait_ops::node::checks(Some(&netns.0));
    let rules = checks.iter().find(|c| c.name.starts_with("node: nftables rules")).expect("the rules check");
    assert_eq!(rules.outcome, Outcome::Pass, "{rules:?}");
}
