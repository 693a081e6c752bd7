//! `strait status`: every node proxy as the control plane sees it (stream, versions, ACK/NACK, workloads,
//! certificate expiry), like `istioctl proxy-status`.

use strait_api::status::{MeshStatus, ProxyStatus, STATUS_PATH};

use crate::http::Endpoint;
use crate::output::{self, Format};

/// Where the control plane's monitoring port is.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArg {
    /// The control plane's monitoring address (host:port or http://host:port). The default is `strait local`'s.
    /// In a cluster: `kubectl -n strait-system port-forward deploy/strait-control 15014` and
    /// `--control 127.0.0.1:15014`.
    #[arg(long, env = "STRAIT_CONTROL", default_value = "127.0.0.2:15014")]
    pub control: Endpoint,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub control: ControlArg,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

pub async fn fetch(control: &Endpoint) -> anyhow::Result<MeshStatus> {
    control.get_json(STATUS_PATH).await.map_err(|e| {
        e.context(format!(
            "asking the control plane at {control} (is it running? `--control` or STRAIT_CONTROL names its monitoring \
             port; in a cluster, `kubectl -n strait-system port-forward deploy/strait-control 15014` first)"
        ))
    })
}

pub async fn run(args: StatusArgs) -> anyhow::Result<bool> {
    let status = fetch(&args.control.control).await?;
    match output::structured(args.output, &status)? {
        Some(text) => print!("{text}"),
        None => print!("{}", render(&status)),
    }
    Ok(true)
}

/// The table, then the NACK reasons and admission problems in full.
pub fn render(status: &MeshStatus) -> String {
    let rows: Vec<Vec<String>> = status.proxies.iter().map(|p| row(p, status.version)).collect();
    let mut out = format!("configuration version {}\n", status.version);
    out.push_str(&output::table(&["NODE", "SYNC", "ACKED", "CONNECTED", "WORKLOADS", "CERTIFICATES", "ADMIN"], &rows));
    for p in &status.proxies {
        if let (Some(version), Some(reason)) = (p.last_nacked, &p.nack_reason) {
            out.push_str(&format!("{} NACKed version {version}: {reason}\n", p.node));
        }
    }
    for problem in &status.problems {
        out.push_str(&format!("rejected: {problem}\n"));
    }
    out
}

fn row(p: &ProxyStatus, version: u64) -> Vec<String> {
    let dash = || "-".to_string();
    let connected = match (p.connected_since, p.disconnected_since) {
        (Some(since), _) => output::ago(since),
        (None, Some(gone)) => format!("no (gone {})", output::ago(gone)),
        (None, None) => "no".into(),
    };
    let workloads = match p.workloads.len() {
        0 => dash(),
        1..=2 => p.workloads.join(","),
        n => format!("{n} ({}, ...)", p.workloads[0]),
    };
    vec![
        p.node.clone(),
        p.sync(version).to_string(),
        p.last_acked.map_or_else(dash, |v| v.to_string()),
        connected,
        workloads,
        p.earliest_expiry().map_or_else(dash, |t| format!("{} expires {}", p.certificates.len(), output::until(t))),
        p.admin_address.clone().unwrap_or_else(dash),
    ]
}
