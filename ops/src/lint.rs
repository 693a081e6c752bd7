//! `strait lint DIR`: problems in a directory of manifests before they are applied: objects admission would
//! reject, a configuration the proxies would refuse, rules shadowed by an earlier catch-all rule, hosts that name
//! no Service, subsets no DestinationPolicy defines, and resources that compete for the same host. The exit
//! status says whether it found any.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use strait_api::{MeshConfig, ServiceRef};
use strait_proxy::explain::Explainer;

use crate::output::{self, Format};

#[derive(clap::Args, Debug)]
pub struct LintArgs {
    /// The manifests: the resources you would `kubectl apply`, plus `kind: Mesh` files (as deploy/local/).
    pub dir: PathBuf,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// `rejected`, `refused`, `shadowed`, `unknown-host`, `unknown-subset`, `conflict`.
    pub kind: String,
    pub message: String,
}

pub async fn run(args: LintArgs) -> anyhow::Result<bool> {
    let findings = lint(&args.dir)?;
    match output::structured(args.output, &findings)? {
        Some(text) => print!("{text}"),
        None => {
            for f in &findings {
                println!("{}: {}", f.kind, f.message);
            }
            println!("{} problem(s) in {}", findings.len(), args.dir.display());
        }
    }
    Ok(findings.is_empty())
}

pub fn lint(dir: &std::path::Path) -> anyhow::Result<Vec<Finding>> {
    let (config, problems) = crate::manifests::load(dir)?;
    let mut findings: Vec<Finding> =
        problems.into_iter().map(|message| Finding { kind: "rejected".into(), message }).collect();
    findings.extend(hosts_and_subsets(&config));
    match Explainer::new(config, "") {
        Err(e) => findings.push(Finding { kind: "refused".into(), message: format!("the proxies would NACK it: {e}") }),
        Ok(explainer) => {
            for service in explainer.services() {
                let catch_all = service.routes.iter().position(|r| r.matches_everything);
                if let Some(first) = catch_all {
                    for shadowed in &service.routes[first + 1..] {
                        findings.push(Finding {
                            kind: "shadowed".into(),
                            message: format!(
                                "service {}: rule {} is never reached: rule {} before it matches every request",
                                service.service, shadowed.name, service.routes[first].name
                            ),
                        });
                    }
                }
            }
        }
    }
    Ok(findings)
}

/// Hosts and subsets the proxies cannot resolve, and resources competing for one host.
fn hosts_and_subsets(config: &MeshConfig) -> Vec<Finding> {
    let mut findings = Vec::new();
    let service_exists =
        |r: &ServiceRef| config.services.iter().any(|s| s.name == r.name && s.namespace == r.namespace);
    let mut routes_by_host: BTreeMap<ServiceRef, Vec<String>> = BTreeMap::new();
    for route in &config.traffic_routes {
        let id = format!("{}/{}", route.namespace, route.name);
        for host in &route.spec.hosts {
            match ServiceRef::parse(host, &route.namespace) {
                Some(r) if service_exists(&r) => routes_by_host.entry(r).or_default().push(id.clone()),
                _ => findings.push(Finding {
                    kind: "unknown-host".into(),
                    message: format!("TrafficRoute {id}: hosts: {host} names no Service"),
                }),
            }
        }
        for (i, rule) in route.spec.http.iter().enumerate() {
            for (j, d) in rule.route.iter().enumerate() {
                let field = format!("TrafficRoute {id}: http[{i}].route[{j}].destination");
                let Some(r) = ServiceRef::parse(&d.destination.host, &route.namespace).filter(|r| service_exists(r))
                else {
                    findings.push(Finding {
                        kind: "unknown-host".into(),
                        message: format!("{field}.host: {} names no Service", d.destination.host),
                    });
                    continue;
                };
                if let Some(subset) = &d.destination.subset {
                    let defined = config.destination_policies.iter().any(|p| {
                        p.namespace == r.namespace
                            && ServiceRef::parse(&p.spec.host, &p.namespace).as_ref() == Some(&r)
                            && p.spec.subsets.iter().any(|s| &s.name == subset)
                    });
                    if !defined {
                        findings.push(Finding {
                            kind: "unknown-subset".into(),
                            message: format!(
                                "{field}.subset: no DestinationPolicy for {} defines subset {subset}",
                                d.destination.host
                            ),
                        });
                    }
                }
            }
        }
    }
    for (host, routes) in routes_by_host.iter().filter(|(_, r)| r.len() > 1) {
        findings.push(Finding {
            kind: "conflict".into(),
            message: format!(
                "{}/{} is named by {} TrafficRoutes ({}): their rules are tried in that order",
                host.namespace,
                host.name,
                routes.len(),
                routes.join(", ")
            ),
        });
    }
    let mut policies_by_host: BTreeMap<ServiceRef, Vec<String>> = BTreeMap::new();
    for p in &config.destination_policies {
        match ServiceRef::parse(&p.spec.host, &p.namespace).filter(|r| service_exists(r)) {
            Some(r) => policies_by_host.entry(r).or_default().push(format!("{}/{}", p.namespace, p.name)),
            None => findings.push(Finding {
                kind: "unknown-host".into(),
                message: format!(
                    "DestinationPolicy {}/{}: host: {} names no Service",
                    p.namespace, p.name, p.spec.host
                ),
            }),
        }
    }
    for (host, policies) in policies_by_host.iter().filter(|(_, p)| p.len() > 1) {
        findings.push(Finding {
            kind: "conflict".into(),
            message: format!(
                "{}/{} has {} DestinationPolicies ({}): only the first applies",
                host.namespace,
                host.name,
                policies.len(),
                policies.join(", ")
            ),
        });
    }
    findings
}
