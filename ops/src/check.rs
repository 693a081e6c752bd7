//! `strait check`: preflight and health, one line per check with a mark and, when it fails, a hint. The exit
//! status says whether everything passed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use strait_api::status::{MeshStatus, Sync};

use crate::output::{self, Format};
use crate::status::ControlArg;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub control: ControlArg,
    /// A certificate expiring within this many minutes fails the check (workload certificates live 24 h and
    /// are renewed at half their lifetime, so one this close to expiry was not renewed).
    #[arg(long, default_value_t = 60)]
    pub cert_margin_minutes: u64,
    /// Also check this machine as a node: the kernel features the proxy needs and the proxy's nftables rules
    /// (needs root and `nft`).
    #[arg(long)]
    pub node: bool,
    /// With --node: the network namespace the node's proxy runs in (`strait local --netns` names them
    /// `sl<pid>-0-<node>`), instead of this one.
    #[arg(long, requires = "node")]
    pub netns: Option<String>,
    /// Check the CRDs installed in the cluster of this kubeconfig (`--kube` uses KUBECONFIG or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Check the CRDs in the cluster the default kubeconfig (KUBECONFIG, ~/.kube/config, in-cluster) names.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub kube: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not checked here, with the reason in `detail`.
    Skip,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    pub(crate) fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Pass, detail: detail.into(), hint: None }
    }
    pub(crate) fn fail(name: impl Into<String>, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Fail, detail: detail.into(), hint: Some(hint.into()) }
    }
    pub(crate) fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), outcome: Outcome::Skip, detail: detail.into(), hint: None }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub passed: bool,
    pub checks: Vec<Check>,
}

pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let report = check(&args).await;
    match output::structured(args.output, &report)? {
        Some(text) => print!("{text}"),
        None => print!("{}", render(&report)),
    }
    Ok(report.passed)
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let mark = match c.outcome {
            Outcome::Pass => "[ok]  ",
            Outcome::Fail => "[FAIL]",
            Outcome::Skip => "[skip]",
        };
        out.push_str(&format!("{mark} {}: {}\n", c.name, c.detail));
        if let Some(hint) = &c.hint {
            out.push_str(&format!("       hint: {hint}\n"));
        }
    }
    out.push_str(if report.passed { "all checks passed\n" } else { "some checks FAILED\n" });
    out
}

pub async fn check(args: &CheckArgs) -> Report {
    let control = &args.control.control;
    let mut checks = Vec::new();
    match control.get("/ready").await {
        Ok((status, body)) if status.is_success() => {
            checks.push(Check::pass("control plane ready", String::from_utf8_lossy(&body).trim().to_string()))
        }
        Ok((status, body)) => checks.push(Check::fail(
            "control plane ready",
            format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            "it has not built a configuration yet: see its log for discovery errors",
        )),
        Err(e) => checks.push(Check::fail(
            "control plane ready",
            format!("{e:#}"),
            format!(
                "is the control plane running with its monitoring port at {control}? Pass --control; in a cluster \
                 `kubectl -n strait-system port-forward deploy/strait-control 15014`"
            ),
        )),
    }
    match crate::status::fetch(control).await {
        Ok(status) => {
            checks.push(admission(&status));
            checks.extend(proxies(&status));
            checks.extend(certificates(&status, Duration::from_secs(args.cert_margin_minutes * 60)).await);
        }
        Err(e) => checks.push(Check::fail(
            "node proxies",
            format!("cannot read the proxies' status: {e:#}"),
            "the control plane's /debug/proxies must be reachable",
        )),
    }
    if args.node {
        checks.extend(crate::node::checks(args.netns.as_deref()));
    } else {
        checks.push(Check::skip(
            "node: kernel features and nftables rules",
            "not asked (run `strait check --node [--netns NS]` as root on a node)",
        ));
    }
    if args.kube || args.kubeconfig.is_some() {
        checks.extend(crate::crds::checks(args.kubeconfig.as_deref()).await);
    } else {
        checks.push(Check::skip("CRDs", "no cluster given (--kubeconfig PATH or --kube)"));
    }
    let passed = checks.iter().all(|c| c.outcome != Outcome::Fail);
    Report { passed, checks }
}

fn admission(status: &MeshStatus) -> Check {
    match status.problems.len() {
        0 => Check::pass("configuration accepted", "every resource was admitted"),
        n => Check::fail(
            "configuration accepted",
            format!("{n} resource(s) rejected; first: {}", status.problems[0]),
            "fix the named field; the rejected resource keeps its last good version meanwhile (`strait lint DIR` \
             checks manifests before they are applied)",
        ),
    }
}

fn proxies(status: &MeshStatus) -> Vec<Check> {
    if status.proxies.is_empty() {
        return vec![Check::fail(
            "node proxies",
            "no node proxy has connected to the control plane",
            "start the node proxies (cluster: `kubectl -n strait-system get ds strait-proxy`); each needs the \
             control plane address, its token and the root certificate",
        )];
    }
    status
        .proxies
        .iter()
        .map(|p| {
            let name = format!("node proxy {}", p.node);
            match p.sync(status.version) {
                Sync::Synced => Check::pass(name, format!("connected, ACKed version {}", status.version)),
                Sync::Disconnected => Check::fail(
                    name,
                    match p.disconnected_since {
                        Some(t) => format!("not connected (stream closed {})", output::ago(t)),
                        None => "not connected".to_string(),
                    },
                    format!(
                        "is the proxy on {0} running? `strait local`: see its log (.strait-local/logs/{0}.log); in a \
                         cluster: `kubectl -n strait-system get pods -l app=strait-proxy --field-selector \
                         spec.nodeName={0}` and its logs",
                        p.node
                    ),
                ),
                Sync::Nacked => Check::fail(
                    name,
                    format!("refused version {}: {}", status.version, p.nack_reason.as_deref().unwrap_or("?")),
                    "it keeps serving its last good configuration; fix the resource named in the reason",
                ),
                Sync::Stale | Sync::NotSent => Check::fail(
                    name,
                    format!(
                        "has not ACKed version {} (last ACKed {})",
                        status.version,
                        p.last_acked.map_or("none".to_string(), |v| v.to_string())
                    ),
                    "a push is in flight or the proxy is stuck applying it; run the check again, then see its log",
                ),
            }
        })
        .collect()
}

/// Each proxy's certificates, from its admin port when it reported one (what it holds), else what the control
/// plane signed for it.
async fn certificates(status: &MeshStatus, margin: Duration) -> Vec<Check> {
    let now = output::now_unix();
    let mut checks = Vec::new();
    for p in status.proxies.iter().filter(|p| p.connected_streams > 0) {
        let name = format!("certificates of {}", p.node);
        let held = match p.admin_address.as_deref().and_then(|a| a.parse::<crate::http::Endpoint>().ok()) {
            Some(admin) => admin.get_json::<Vec<serde_json::Value>>("/certs").await.ok().map(|certs| {
                certs
                    .iter()
                    .map(|c| {
                        (c["identity"].as_str().unwrap_or("?").to_string(), c["notAfterUnix"].as_u64().unwrap_or(0))
                    })
                    .collect::<Vec<_>>()
            }),
            None => None,
        };
        let (source, certs) = match held {
            Some(certs) => ("held by the proxy", certs),
            None => (
                "signed by the control plane",
                p.certificates.iter().map(|c| (c.identity.clone(), c.not_after_unix)).collect(),
            ),
        };
        if certs.is_empty() {
            if p.workloads.is_empty() {
                checks.push(Check::pass(name, "no meshed workloads on this node"));
            } else {
                checks.push(Check::fail(
                    name,
                    format!("no certificate for its {} workload(s)", p.workloads.len()),
                    "the proxy asks for them when configuration arrives; see its log for signing errors",
                ));
            }
            continue;
        }
        let Some((identity, earliest)) = certs.iter().min_by_key(|(_, t)| *t) else { continue };
        if *earliest <= now + margin.as_secs() {
            checks.push(Check::fail(
                name,
                format!("{identity} {} ({source})", output::until(*earliest)),
                "certificates renew at half their lifetime: a certificate this close to expiry was not renewed; \
                 check that the proxy reaches the control plane and its log for signing errors",
            ));
        } else {
            checks.push(Check::pass(
                name,
                format!("{} valid, earliest expires {} ({source})", certs.len(), output::until(*earliest)),
            ));
        }
    }
    checks
}
