//! `strait why SRC DST`: the decision the mesh would take for a request, and why, computed by the proxy's own
//! compiled configuration (`strait_proxy::explain`), from a running proxy's configuration or a directory of
//! manifests (`--from DIR`, so it runs in CI before a change is applied).

use std::path::PathBuf;

use strait_api::MeshConfig;
use strait_proxy::explain::{Explainer, Explanation, Query};

use crate::output::{self, Format};
use crate::status::ControlArg;

#[derive(clap::Args, Debug)]
pub struct WhyArgs {
    /// The calling workload: namespace/name, name, or its address.
    pub source: String,
    /// The service: name (in the source's namespace), name.namespace, or a service address ip:port.
    pub destination: String,
    /// The service port (default: its first).
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// A request header, `name=value`; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Explain from this directory of manifests (as `strait local` and the file provider read them) instead of
    /// the running mesh.
    #[arg(long)]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub control: ControlArg,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected name=value"))?;
    Ok((name.trim().to_ascii_lowercase(), value.to_string()))
}

pub async fn run(args: WhyArgs) -> anyhow::Result<bool> {
    let query = Query {
        source: args.source.clone(),
        destination: args.destination.clone(),
        port: args.port,
        method: args.method.clone(),
        path: args.path.clone(),
        headers: args.headers.clone(),
    };
    let (config, node) = match &args.from {
        Some(dir) => {
            let (config, problems) = crate::manifests::load(dir)?;
            for problem in &problems {
                eprintln!("warning: rejected, left out: {problem}");
            }
            (config, String::new())
        }
        None => live_config(&args.control, &args.source).await?,
    };
    let explanation = Explainer::new(config, &node)?.explain(&query)?;
    match output::structured(args.output, &explanation)? {
        Some(text) => print!("{text}"),
        None => print!("{}", render(&explanation)),
    }
    Ok(true)
}

/// The mesh as the proxies run it, seen from the source's node: that proxy's `/config_dump` (its routes, services
/// and endpoints decide where a request goes), completed from every other connected proxy's with what the
/// control plane only sends where it is enforced (each node gets the AuthorizationPolicies of its own workloads,
/// and the full labels of its own workloads only; see control/PROTOCOL.md): so the authorization verdict is the
/// destination proxy's.
async fn live_config(control: &ControlArg, source: &str) -> anyhow::Result<(MeshConfig, String)> {
    let status = crate::status::fetch(&control.control).await?;
    let admins: Vec<(String, crate::http::Endpoint)> = status
        .proxies
        .iter()
        .filter(|p| p.connected_streams > 0)
        .filter_map(|p| Some((p.node.clone(), p.admin_address.as_deref()?.parse().ok()?)))
        .collect();
    anyhow::ensure!(!admins.is_empty(), "no connected node proxy reported an admin address; use --from DIR");
    let mut dumps: Vec<(String, MeshConfig)> = Vec::new();
    let mut last_error = None;
    for (node, admin) in &admins {
        match crate::config::fetch_dump(admin).await {
            Ok(dump) => dumps.push((node.clone(), serde_json::from_value(dump["config"].clone())?)),
            Err(e) => last_error = Some(e),
        }
    }
    let is_source = |w: &strait_api::Workload| {
        w.address.to_string() == source || w.name == source || format!("{}/{}", w.namespace, w.name) == source
    };
    // The source's own node, when a configuration says which it is; else the first proxy that answered.
    let source_node = dumps.iter().find_map(|(_, c)| c.workloads.iter().find(|w| is_source(w)).map(|w| w.node.clone()));
    let base = match &source_node {
        Some(node) => dumps.iter().position(|(n, _)| n == node).unwrap_or(0),
        None => 0,
    };
    if dumps.is_empty() {
        return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no proxy answered")));
    }
    let (base_node, mut config) = dumps.swap_remove(base);
    for (node, other) in dumps {
        for workload in other.workloads.into_iter().filter(|w| w.node == node) {
            match config.workloads.iter_mut().find(|w| w.namespace == workload.namespace && w.name == workload.name) {
                Some(held) => *held = workload,
                None => config.workloads.push(workload),
            }
        }
        for policy in other.authorization_policies {
            if !config.authorization_policies.iter().any(|p| p.namespace == policy.namespace && p.name == policy.name) {
                config.authorization_policies.push(policy);
            }
        }
    }
    Ok((config, source_node.unwrap_or(base_node)))
}

pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let identity = |i: &Option<String>| i.clone().unwrap_or_else(|| "(not meshed: plaintext)".into());
    out.push_str(&format!(
        "source:       {} on {} ({}), identity {}\n",
        e.source.workload,
        e.source.node,
        e.source.address,
        identity(&e.source.identity)
    ));
    out.push_str(&format!("request:      {} {} to {} port {} ({})\n", e.method, e.path, e.service, e.port, e.layer));
    if let Some(rejected) = &e.rejected {
        out.push_str(&format!("refused:      {rejected}\n"));
    }
    match &e.route {
        Some(r) => {
            out.push_str(&format!("route rule:   {} ({}), {}\n", r.name, r.matched, r.action));
            out.push_str(&format!("timeout:      {}\n", r.timeout.as_deref().unwrap_or("none")));
            out.push_str(&format!("retries:      {}\n", r.retries.as_deref().unwrap_or("none")));
        }
        None if e.layer == "http" => out.push_str("route rule:   none matched: the whole service, all endpoints\n"),
        None => out.push_str("route rule:   none (TrafficRoutes apply to HTTP ports only)\n"),
    }
    for d in &e.destinations {
        let subset = d.subset.as_deref().map(|s| format!(" subset {s}")).unwrap_or_default();
        out.push_str(&format!("destination:  {}{subset}, {}% of requests\n", d.host, d.weight_percent));
        if let Some(problem) = &d.problem {
            out.push_str(&format!("              {problem}\n"));
        }
        for ep in &d.endpoints {
            out.push_str(&format!(
                "  endpoint    {} {} on {}, identity {}: {} by {} ({})\n",
                ep.address,
                ep.workload.as_deref().unwrap_or("?"),
                ep.node.as_deref().unwrap_or("?"),
                identity(&ep.identity),
                ep.authorization.decision,
                ep.authorization.policy,
                ep.authorization.reason
            ));
        }
    }
    let s = &e.settings;
    out.push_str(&format!(
        "settings:     destinationPolicy {}, loadBalancer {}, retryBudget {}\n",
        s.destination_policy.as_deref().unwrap_or("none"),
        s.load_balancer,
        s.retry_budget
    ));
    out.push_str(&format!("verdict:      {}\n", e.verdict));
    out
}
