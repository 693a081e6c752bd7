//! Applies the rules for real, each test in a fresh network namespace. These need root; they skip otherwise.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use strait_netns::Tool;

use super::*;

/// Skips the test (one line naming what is missing) unless running as root with the programs it runs on
/// `PATH`: `ip` for the namespace and, by default, `nft` for the rules. Fails instead under
/// STRAIT_REQUIRE_ROOT_TESTS, as every root-only test of the workspace does.
macro_rules! require_root {
    () => {
        require_root!(Tool::IP, Tool::NFT)
    };
    ($($tool:expr),+) => {
        if !strait_netns::require_root_and(&[$($tool),+]) {
            return;
        }
    };
}

/// A network namespace that exists for one test and is deleted when dropped, also on panic.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("strait-t-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        // Routes through lo are refused while it is down, as on no real node.
        run_ok(netns.runner().command("ip").args(["link", "set", "lo", "up"]));
        netns
    }

    fn runner(&self) -> Runner {
        Runner::in_netns(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        run_ok(self.runner().command("ip").args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("run command");
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spec(mode: Mode, pods: &[&str]) -> RedirectSpec {
    RedirectSpec { mode, local_pods: pods.iter().map(|p| p.parse().unwrap()).collect(), ..RedirectSpec::default() }
}

fn fwmark_rules(shown: &str) -> usize {
    shown.lines().filter(|l| l.contains("fwmark 0x111 lookup 133")).count()
}

#[test]
fn tproxy_rules_apply_replace_and_remove() {
    require_root!();
    let netns = Netns::new();
    let runner = netns.runner();
    assert_eq!(runner.list_table().unwrap(), None);

    runner.apply(&spec(Mode::Tproxy, &["10.0.1.2", "fd00::2"])).expect("apply");
    let listed = runner.list_table().unwrap().expect("table exists");
    for expected in [
        "elements = { 10.0.1.2 }",
        "elements = { fd00::2 }",
        "type filter hook prerouting priority mangle; policy accept;",
        "meta mark 0x00000539 accept",
        "tcp flags != syn / syn,ack socket transparent 1 meta mark set 0x00000111 accept",
        "meta l4proto tcp ip saddr @pods4 tproxy ip to :15001 meta mark set 0x00000111 accept",
        "meta l4proto tcp ip6 saddr @pods6 tproxy ip6 to :15001 meta mark set 0x00000111 accept",
        "ip daddr @pods4 tcp dport 15008 tproxy ip to :15008 meta mark set 0x00000111 accept",
        "meta l4proto tcp ip6 daddr @pods6 tproxy ip6 to :15006 meta mark set 0x00000111 accept",
    ] {
        assert!(listed.contains(expected), "missing {expected:?} in\n{listed}");
    }
    assert_eq!(fwmark_rules(&netns.ip(&["-4", "rule", "show"])), 1);
    assert_eq!(fwmark_rules(&netns.ip(&["-6", "rule", "show"])), 1);
    assert!(netns.ip(&["-4", "route", "show", "table", "133"]).contains("local default dev lo"));
    assert!(netns.ip(&["-6", "route", "show", "table", "133"]).contains("local default dev lo"));

    // Re-applying replaces the set's contents and adds no second routing rule.
    runner.apply(&spec(Mode::Tproxy, &["10.0.1.3", "fd00::2"])).expect("re-apply");
    let listed = runner.list_table().unwrap().expect("table exists");
    assert!(listed.contains("elements = { 10.0.1.3 }") && !listed.contains("10.0.1.2"), "{listed}");
    assert_eq!(fwmark_rules(&netns.ip(&["-4", "rule", "show"])), 1);
    assert_eq!(fwmark_rules(&netns.ip(&["-6", "rule", "show"])), 1);

    runner.remove(&spec(Mode::Tproxy, &[])).expect("remove");
    assert_eq!(runner.list_table().unwrap(), None);
    assert_eq!(fwmark_rules(&netns.ip(&["-4", "rule", "show"])), 0);
    assert_eq!(fwmark_rules(&netns.ip(&["-6", "rule", "show"])), 0);
    assert!(netns.ip(&["-4", "route", "show", "table", "all"]).lines().all(|l| !l.contains("table 133")));
    runner.remove(&spec(Mode::Tproxy, &[])).expect("removing nothing succeeds");
}

#[test]
fn redirect_rules_apply_with_and_without_pods() {
    require_root!();
    let netns = Netns::new();
    let runner = netns.runner();
    runner.apply(&spec(Mode::Redirect, &[])).expect("apply with no pods");
    let listed = runner.list_table().unwrap().expect("table exists");
    assert!(listed.contains("type nat hook prerouting priority dstnat - 10; policy accept;"), "{listed}");
    assert!(!listed.contains("elements"), "{listed}");

    runner.apply(&spec(Mode::Redirect, &["10.0.1.2", "10.0.1.3"])).expect("apply");
    let listed = runner.list_table().unwrap().expect("table exists");
    for expected in [
        "elements = { 10.0.1.2, 10.0.1.3 }",
        "meta l4proto tcp ip saddr @pods4 redirect to :15001",
        "ip daddr @pods4 tcp dport 15008 redirect to :15008",
        "ip6 daddr @pods6 tcp dport 15008 redirect to :15008",
        "meta l4proto tcp ip daddr @pods4 redirect to :15006",
    ] {
        assert!(listed.contains(expected), "missing {expected:?} in\n{listed}");
    }
    // REDIRECT mode needs no policy routing.
    assert_eq!(fwmark_rules(&netns.ip(&["rule", "show"])), 0);

    // Switching mode replaces the chain wholesale.
    runner.apply(&spec(Mode::Tproxy, &["10.0.1.2"])).expect("switch to tproxy");
    let listed = runner.list_table().unwrap().expect("table exists");
    assert!(!listed.contains("redirect to") && listed.contains("tproxy ip to :15001"), "{listed}");
    runner.remove(&RedirectSpec::default()).expect("remove");
}

#[test]
fn reconciler_applies_only_changes() {
    require_root!();
    let netns = Netns::new();
    let mut reconciler = Reconciler::new(netns.runner());
    let one = spec(Mode::Tproxy, &["10.0.1.2"]);
    assert!(reconciler.reconcile(&one).unwrap());
    assert!(!reconciler.reconcile(&one).unwrap());
    assert_eq!(reconciler.applied(), Some(&one));

    // A change made behind the reconciler's back is not noticed until the spec changes.
    netns.runner().remove(&one).unwrap();
    assert!(!reconciler.reconcile(&one).unwrap());
    let two = spec(Mode::Tproxy, &["10.0.1.2", "10.0.1.3"]);
    assert!(reconciler.reconcile(&two).unwrap());
    assert!(netns.runner().list_table().unwrap().unwrap().contains("10.0.1.3"));
    netns.runner().remove(&two).unwrap();
}

#[test]
fn errors_say_what_to_do() {
    require_root!();
    let netns = Netns::new();
    let err = netns.runner().nft_apply("table inet strait { chain c { bogus } }\n").expect_err("invalid ruleset");
    let text = err.to_string();
    assert!(matches!(err, RedirectError::NftRejected { .. }), "{err:?}");
    assert!(text.starts_with("nft rejected the ruleset: ") && text.contains("bogus"), "{text}");

    let missing = Runner::in_netns("strait-t-does-not-exist");
    let err = missing.apply(&spec(Mode::Redirect, &[])).expect_err("no such namespace");
    assert!(matches!(err, RedirectError::Netns { .. }), "{err:?}");

    let mut reconciler = Reconciler::new(missing);
    assert!(reconciler.reconcile(&spec(Mode::Redirect, &[])).is_err());
    assert_eq!(reconciler.applied(), None, "a failed apply is retried");
}

#[test]
fn missing_programs_name_their_package() {
    require_root!(Tool::IP);
    let netns = Netns::new();
    let err = netns.runner().run("strait-no-such-program", &[], None).err().expect("not found");
    assert_eq!(err.to_string(), "strait-no-such-program not found: install the strait-no-such-program package");
    let err = Runner::host().run("strait-no-such-program", &[], None).err().expect("not found");
    assert!(matches!(err, RedirectError::NotFound { .. }), "{err:?}");
    assert_eq!(not_found("nft").to_string(), "nft not found: install the nftables package");
}

#[test]
fn modes_parse_and_print() {
    assert_eq!("TPROXY".parse::<Mode>(), Ok(Mode::Tproxy));
    assert_eq!("redirect".parse::<Mode>(), Ok(Mode::Redirect));
    assert!("nat".parse::<Mode>().is_err());
    assert_eq!(Mode::Tproxy.to_string(), "tproxy");
    let spec = RedirectSpec::default();
    assert_eq!((spec.outbound_port, spec.inbound_plaintext_port, spec.inbound_tunnel_port), (15001, 15006, 15008));
    assert_eq!((spec.proxy_mark, spec.tproxy_mark, spec.tproxy_table), (0x539, 0x111, 133));
}
