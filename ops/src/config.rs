//! `strait config NODE [--workload POD]`: a node proxy's configuration as it runs it: the pushed configuration,
//! its compiled view (route rules in order, subsets with endpoints, settings) and the live per-destination state
//! (outlier-ejected endpoints, pool and retry budget), from the proxy's admin `/config_dump`.

use crate::http::Endpoint;
use crate::output::Format;
use crate::status::ControlArg;

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The node whose proxy to show.
    pub node: String,
    /// Only what concerns this workload (namespace/name or name): itself, its certificate, the policies that
    /// select it.
    #[arg(long)]
    pub workload: Option<String>,
    /// The proxy's admin address, when the control plane does not know a reachable one (in a cluster:
    /// `kubectl -n strait-system port-forward pod/<strait-proxy pod on NODE> 15000`, then `--admin
    /// 127.0.0.1:15000`).
    #[arg(long)]
    pub admin: Option<Endpoint>,
    #[command(flatten)]
    pub control: ControlArg,
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: Format,
}

pub async fn fetch_dump(admin: &Endpoint) -> anyhow::Result<serde_json::Value> {
    admin.get_json("/config_dump").await
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<bool> {
    let admin = match &args.admin {
        Some(admin) => admin.clone(),
        None => {
            let status = crate::status::fetch(&args.control.control).await?;
            let proxy = status.proxies.iter().find(|p| p.node == args.node).ok_or_else(|| {
                let known: Vec<&str> = status.proxies.iter().map(|p| p.node.as_str()).collect();
                anyhow::anyhow!(
                    "the control plane knows no proxy on node {:?} (known: {})",
                    args.node,
                    known.join(", ")
                )
            })?;
            let admin = proxy
                .admin_address
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("the proxy on {} reported no admin address: pass --admin", args.node))?;
            admin.parse().map_err(|e: String| anyhow::anyhow!(e))?
        }
    };
    let mut dump = fetch_dump(&admin).await?;
    anyhow::ensure!(
        dump["node"].as_str() == Some(args.node.as_str()),
        "{admin} serves node {}, not {}",
        dump["node"],
        args.node
    );
    if let Some(workload) = &args.workload {
        dump = for_workload(dump, workload)?;
    }
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&dump)? + "\n",
        Format::Yaml | Format::Table => serde_yaml::to_string(&dump)?,
    };
    print!("{text}");
    Ok(true)
}

/// The dump narrowed to one workload: the workload, the certificate of its identity, the authorization
/// policies of its namespace and the root namespace whose selector matches it; services, compiled routes and
/// destination state stay (they are what it calls).
fn for_workload(mut dump: serde_json::Value, wanted: &str) -> anyhow::Result<serde_json::Value> {
    let workloads = dump["config"]["workloads"].as_array().cloned().unwrap_or_default();
    let matches = |w: &serde_json::Value| {
        let (name, namespace) = (w["name"].as_str().unwrap_or(""), w["namespace"].as_str().unwrap_or(""));
        name == wanted || format!("{namespace}/{name}") == wanted
    };
    let workload = workloads
        .into_iter()
        .find(matches)
        .ok_or_else(|| anyhow::anyhow!("no workload {wanted} in this proxy's configuration"))?;
    let namespace = workload["namespace"].as_str().unwrap_or("").to_string();
    let labels = workload["labels"].as_object().cloned().unwrap_or_default();
    let identity = format!(
        "spiffe://{}/ns/{namespace}/sa/{}",
        dump["config"]["trustDomain"].as_str().unwrap_or("cluster.local"),
        workload["serviceAccount"].as_str().unwrap_or("default")
    );
    let selects = |p: &serde_json::Value| {
        let ns = p["namespace"].as_str().unwrap_or("");
        let in_scope = ns == namespace || ns == "strait-system";
        let selector = p["spec"]["selector"]["matchLabels"].as_object();
        in_scope && selector.is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let policies: Vec<serde_json::Value> = dump["config"]["authorizationPolicies"]
        .as_array()
        .map(|all| all.iter().filter(|p| selects(p)).cloned().collect())
        .unwrap_or_default();
    let certificates: Vec<serde_json::Value> = dump["certificates"]
        .as_array()
        .map(|all| all.iter().filter(|c| c["identity"].as_str() == Some(identity.as_str())).cloned().collect())
        .unwrap_or_default();
    if let Some(config) = dump["config"].as_object_mut() {
        config.insert("workloads".into(), serde_json::Value::Array(vec![workload]));
        config.insert("authorizationPolicies".into(), serde_json::Value::Array(policies));
    }
    dump["certificates"] = serde_json::Value::Array(certificates);
    Ok(dump)
}
