//! `strait local exec --as WORKLOAD -- COMMAND...`: runs a user's own caller as a workload of the running local
//! mesh, so that authorization by identity applies to it as it would to a pod.
//!
//! On loopback the mesh knows a caller by its source address: the command gets forwarders that connect from
//! the workload's address, named in its environment as Kubernetes names services (see [`crate::forward`]), and
//! `STRAIT_SOURCE_ADDR` for a client that binds its source address itself. With `--netns` the command runs
//! inside the workload's pod namespace (`ip netns exec`), where its address is the pod's, and the variables
//! name the service addresses. The exit status is the command's.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use clap::Args;
use strait_control::model::Workload;

use crate::launch::LocalArgs;
use crate::plan::{Base, Plan};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The workload to run as: its name, or `namespace/name` when the name is ambiguous. On loopback it must
    /// be on the node that serves the service addresses (the clients' node of the Mesh file).
    #[arg(long = "as", value_name = "WORKLOAD")]
    workload: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Where `strait local --netns` writes which pod namespace each workload has, for `exec`.
pub fn pods_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("netns").join("pods.json")
}

pub fn run(local: &LocalArgs, args: ExecArgs) -> anyhow::Result<()> {
    let trust_domain = strait_api::default_trust_domain();
    let base = if local.netns { Base([127, 0]) } else { local.base_ip };
    let plan = Plan::read(&local.config_dir, base, &trust_domain)?;
    let mut workload = find(&plan.workloads, &args.workload)?.clone();
    let identity = format!("spiffe://{trust_domain}/ns/{}/sa/{}", workload.namespace, workload.service_account);
    // A workload with `external: true` is one you start, possibly this way: it gets its ports too.
    let mut listen = plan.listen_of(&workload);
    let (program, rest) = args.command.split_first().context("no command given")?;

    if local.netns {
        let pods = std::fs::read_to_string(pods_file(&local.state_dir)).with_context(|| {
            format!(
                "reading {}: is `strait local --netns` running with --state-dir {}?",
                pods_file(&local.state_dir).display(),
                local.state_dir.display()
            )
        })?;
        let pods: PodsFile = serde_json::from_str(&pods).context("reading the pods file")?;
        let key = format!("{}/{}", workload.namespace, workload.name);
        let pod = pods.pods.iter().find(|p| p.workload == key).with_context(|| format!("no pod for {key}"))?;
        anyhow::ensure!(
            std::path::Path::new("/run/netns").join(&pod.netns).exists(),
            "the pod namespace {} of {key} does not exist: is `strait local --netns` still running?",
            pod.netns
        );
        // The pod's address, not the Mesh file's loopback one.
        let address = pod.address.parse().with_context(|| format!("the pods file: address {:?}", pod.address))?;
        workload.address = address;
        for addr in &mut listen {
            addr.set_ip(address);
        }
        let mut env = crate::plan::workload_env(&workload, &listen, &identity);
        env.extend(
            pods.service_env
                .iter()
                .filter(|(ns, _, _)| *ns == workload.namespace)
                .map(|(_, k, v)| (k.clone(), v.clone())),
        );
        let mut command = Command::new(program);
        command.args(rest).envs(env);
        let mut command = strait_netns::exec::command_in(&pod.netns, &command);
        die_with_parent(&mut command);
        return exit_with(command.status().with_context(|| format!("running {program} in {}", pod.netns))?);
    }

    let serving = plan.service_node().map(|n| n.name.clone()).unwrap_or_default();
    anyhow::ensure!(
        workload.node == serving,
        "--as {}: the workload is on {}, but on loopback only workloads on {serving} (the node whose proxy serves the \
         service addresses) can call services; pick one of: {}",
        args.workload,
        workload.node,
        plan.workloads.iter().filter(|w| w.node == serving).map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let mut env = crate::plan::workload_env(&workload, &listen, &identity);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status = runtime.block_on(async {
        env.extend(crate::forward::start(workload.address, &plan.services, &workload.namespace).await?);
        let mut std_command = Command::new(program);
        std_command.args(rest).envs(env);
        die_with_parent(&mut std_command);
        let mut command = tokio::process::Command::from(std_command);
        let mut child = command.spawn().with_context(|| format!("starting {program}"))?;
        child.wait().await.with_context(|| format!("waiting for {program}"))
    })?;
    // The forwarders end with the runtime.
    runtime.shutdown_background();
    exit_with(status)
}

/// The command gets SIGTERM if `exec` itself is killed: it works through `exec`'s forwarders (or, in a pod,
/// should not outlive the one who started it).
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is. (A race with our own
    // death before prctl only leaves the command running, as a plain child would be.)
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Exits with the command's status (128 + the signal, as a shell does, when a signal ended it).
fn exit_with(status: std::process::ExitStatus) -> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    std::process::exit(code)
}

fn find<'a>(workloads: &'a [Workload], wanted: &str) -> anyhow::Result<&'a Workload> {
    let matches: Vec<&Workload> = match wanted.split_once('/') {
        Some((ns, name)) => workloads.iter().filter(|w| w.namespace == ns && w.name == name).collect(),
        None => workloads.iter().filter(|w| w.name == wanted).collect(),
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => {
            let known: Vec<String> = workloads.iter().map(|w| format!("{}/{}", w.namespace, w.name)).collect();
            anyhow::bail!("--as {wanted}: no such workload in the Mesh file; it has {}", known.join(", "))
        }
        _ => anyhow::bail!("--as {wanted}: several namespaces have a workload of that name; say namespace/name"),
    }
}

/// What `strait local --netns` tells `exec`: each workload's pod namespace and address, and the services'
/// variables per namespace.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default)]
pub struct PodsFile {
    pub pods: Vec<PodEntry>,
    /// (namespace, variable, value)
    pub service_env: Vec<(String, String, String)>,
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct PodEntry {
    /// `namespace/name`
    pub workload: String,
    pub netns: String,
    pub address: String,
}

impl PodsFile {
    /// The service variables of every namespace in `plan` (its service addresses are the cluster's VIPs).
    pub fn service_env(plan: &Plan) -> Vec<(String, String, String)> {
        let namespaces: std::collections::BTreeSet<&str> =
            plan.workloads.iter().map(|w| w.namespace.as_str()).collect();
        namespaces
            .into_iter()
            .flat_map(|ns| {
                crate::forward::direct_env(&plan.services, ns).into_iter().map(move |(k, v)| (ns.to_string(), k, v))
            })
            .collect()
    }
}
