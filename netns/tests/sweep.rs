//! Namespaces with a program's own prefix: the cluster's names use it, and those of an owner that is gone are
//! swept, while a live owner's are kept.

use strait_netns::cluster::{list_netns, sweep_dead_owners};
use strait_netns::{require_root, Cluster};

#[test]
fn own_prefix_names_the_namespaces_and_dead_owners_namespaces_are_swept() {
    if !require_root() {
        return;
    }
    // No process can have this pid (above any pid_max), so its namespace is a dead owner's.
    let dead = "sxtest999999999-0-node";
    let status = std::process::Command::new("ip").args(["netns", "add", dead]).status().expect("run ip netns add");
    assert!(status.success(), "ip netns add {dead}: {status}");
    let cluster = Cluster::builder().prefix("sxtest").node("node", &["pod"]).build().expect("a cluster");
    assert!(cluster.tag().starts_with(&format!("sxtest{}-", std::process::id())), "{}", cluster.tag());
    let removed = sweep_dead_owners("sxtest");
    assert_eq!(removed, [dead.to_string()]);
    let names = list_netns();
    assert!(!names.contains(&dead.to_string()), "{names:?}");
    assert!(cluster.namespaces().iter().all(|ns| names.contains(ns)), "the live cluster's namespaces stay");
    let created = cluster.namespaces().to_vec();
    drop(cluster);
    let names = list_netns();
    assert!(created.iter().all(|ns| !names.contains(ns)), "dropped cluster left {names:?}");

    assert!(Cluster::builder().prefix("Bad-1").node("n", &[]).build().is_err(), "prefixes are lowercase letters");
}
