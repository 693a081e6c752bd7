//! The node's traffic redirection, owned by the proxy.
//!
//! The proxy (host network, NET_ADMIN) owns one nftables table, `table inet strait`, rendered from the set of
//! meshed pod addresses on its node ([`render`]) and replaced in one `nft -f -` transaction. In TPROXY mode it
//! also owns one policy-routing rule and route per address family, which deliver marked packets locally.
//!
//! Nothing is removed when the proxy exits: pods keep being captured while it restarts, so their traffic fails
//! closed instead of leaving the mesh. [`remove`] exists for uninstalling and for tests.
//!
//! Everything here runs external programs and blocks: call it from `spawn_blocking` or a dedicated thread.

mod nft;
mod routing;

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use nft::{render, TABLE};

pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
pub const DEFAULT_INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const DEFAULT_INBOUND_TUNNEL_PORT: u16 = 15008;
/// The SO_MARK on the proxy's own sockets; the rules never capture packets carrying it.
pub const DEFAULT_PROXY_MARK: u32 = 0x539;
pub const DEFAULT_TPROXY_MARK: u32 = 0x111;
pub const DEFAULT_TPROXY_TABLE: u32 = 133;

/// How captured connections reach the proxy's listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// NAT to the listener's port on the incoming interface's address; the proxy reads SO_ORIGINAL_DST. Needs
    /// an address on the node side of each pod's interface.
    Redirect,
    /// TPROXY to listeners with IP_TRANSPARENT; the accepted socket's local address is the original
    /// destination. Needs policy routing ([`install_policy_routing`]).
    #[default]
    Tproxy,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Redirect => "redirect",
            Mode::Tproxy => "tproxy",
        })
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "redirect" => Ok(Mode::Redirect),
            "tproxy" => Ok(Mode::Tproxy),
            _ => Err(format!("unknown redirection mode {s:?} (expected redirect or tproxy)")),
        }
    }
}

/// Everything the rules depend on; equal specs render equal rulesets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectSpec {
    pub mode: Mode,
    /// Meshed pods on this node, IPv4 and IPv6.
    pub local_pods: BTreeSet<IpAddr>,
    pub outbound_port: u16,
    pub inbound_plaintext_port: u16,
    pub inbound_tunnel_port: u16,
    pub proxy_mark: u32,
    /// Put on TPROXY'd packets, and selects [`RedirectSpec::tproxy_table`] in policy routing.
    pub tproxy_mark: u32,
    pub tproxy_table: u32,
}

impl Default for RedirectSpec {
    fn default() -> Self {
        RedirectSpec {
            mode: Mode::default(),
            local_pods: BTreeSet::new(),
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_plaintext_port: DEFAULT_INBOUND_PLAINTEXT_PORT,
            inbound_tunnel_port: DEFAULT_INBOUND_TUNNEL_PORT,
            proxy_mark: DEFAULT_PROXY_MARK,
            tproxy_mark: DEFAULT_TPROXY_MARK,
            tproxy_table: DEFAULT_TPROXY_TABLE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("{program} not found: install the {package} package")]
    NotFound { program: &'static str, package: &'static str },
    #[error("{command} is not permitted: the proxy needs CAP_NET_ADMIN in the node's network namespace ({stderr})")]
    PermissionDenied { command: String, stderr: String },
    #[error("network namespace {netns:?} cannot be entered: {stderr}")]
    Netns { netns: String, stderr: String },
    #[error("nft rejected the ruleset: {stderr}")]
    NftRejected { stderr: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("could not run {command}: {source}")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
}

/// Where the commands run: the proxy's own network namespace, or a named one (`ip netns exec`), which is how
/// tests and the end-to-end harness give each node its own rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runner {
    netns: Option<String>,
}

/// The outcome of a command that could be started.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Runner {
    /// Runs commands in the current network namespace.
    pub fn host() -> Self {
        Runner { netns: None }
    }

    /// Runs commands in the network namespace `name` (as created by `ip netns add`).
    pub fn in_netns(name: impl Into<String>) -> Self {
        Runner { netns: Some(name.into()) }
    }

    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// A command for `program` that runs in this runner's namespace.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, program]);
                command
            }
        }
    }

    /// Replaces the table with the rendered `spec` in one transaction; in TPROXY mode installs policy routing
    /// first, so that marked packets are never routed without it.
    pub fn apply(&self, spec: &RedirectSpec) -> Result<(), RedirectError> {
        if spec.mode == Mode::Tproxy {
            self.install_policy_routing(spec)?;
        }
        self.nft_apply(&render(spec))
    }

    /// Deletes the table and the policy routing of `spec`'s mark and table. Removing what is absent succeeds.
    pub fn remove(&self, spec: &RedirectSpec) -> Result<(), RedirectError> {
        self.nft_apply(&nft::render_delete())?;
        self.remove_policy_routing(spec)
    }

    /// `nft list table inet strait`, or `None` when the table does not exist.
    pub fn list_table(&self) -> Result<Option<String>, RedirectError> {
        let out = self.run("nft", &["list", "table", "inet", "strait"], None)?;
        if out.success {
            Ok(Some(out.stdout))
        } else if out.stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(self.failure("nft list table inet strait", out.stderr))
        }
    }

    /// `ip rule add fwmark <tproxy_mark> lookup <tproxy_table>` and `ip route replace local default dev lo
    /// table <tproxy_table>`, for IPv4 and (when there are IPv6 pods) IPv6; a no-op when already in place.
    pub fn install_policy_routing(&self, spec: &RedirectSpec) -> Result<(), RedirectError> {
        routing::install(self, spec)
    }

    pub fn remove_policy_routing(&self, spec: &RedirectSpec) -> Result<(), RedirectError> {
        routing::remove(self, spec)
    }

    fn nft_apply(&self, ruleset: &str) -> Result<(), RedirectError> {
        let out = self.run("nft", &["-f", "-"], Some(ruleset))?;
        if out.success {
            return Ok(());
        }
        match self.failure("nft -f -", out.stderr) {
            RedirectError::Command { stderr, .. } => Err(RedirectError::NftRejected { stderr }),
            other => Err(other),
        }
    }

    fn run(&self, program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<Output, RedirectError> {
        let mut command = self.command(program);
        command.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let display = format!("{program} {}", args.join(" "));
        let mut child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound if self.netns.is_some() => {
                RedirectError::NotFound { program: "ip", package: "iproute2" }
            }
            io::ErrorKind::NotFound => not_found(program),
            _ => RedirectError::Io { command: display.clone(), source },
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means the program exited early; its status and stderr say why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let output = child.wait_with_output().map_err(|source| RedirectError::Io { command: display, source })?;
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        // `ip netns exec` reports a missing program itself, after the namespace was entered.
        if !output.status.success() && stderr.starts_with(&format!("exec of \"{program}\" failed")) {
            return Err(not_found(program));
        }
        Ok(Output {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        })
    }

    /// Names the cause an operator can act on, when stderr tells it.
    fn failure(&self, command: &str, stderr: String) -> RedirectError {
        if let Some(netns) = &self.netns {
            if stderr.starts_with("Cannot open network namespace")
                || stderr.starts_with("setting the network namespace")
            {
                return RedirectError::Netns { netns: netns.clone(), stderr };
            }
        }
        if stderr.contains("Operation not permitted") {
            return RedirectError::PermissionDenied { command: command.to_string(), stderr };
        }
        RedirectError::Command { command: command.to_string(), stderr }
    }
}

fn not_found(program: &'static str) -> RedirectError {
    let package = match program {
        "nft" => "nftables",
        "ip" => "iproute2",
        other => other,
    };
    RedirectError::NotFound { program, package }
}

/// [`Runner::apply`] in the proxy's own network namespace.
pub fn apply(spec: &RedirectSpec) -> Result<(), RedirectError> {
    Runner::host().apply(spec)
}

/// [`Runner::remove`] in the proxy's own network namespace.
pub fn remove(spec: &RedirectSpec) -> Result<(), RedirectError> {
    Runner::host().remove(spec)
}

/// [`Runner::install_policy_routing`] in the proxy's own network namespace.
pub fn install_policy_routing(spec: &RedirectSpec) -> Result<(), RedirectError> {
    Runner::host().install_policy_routing(spec)
}

/// Applies a spec only when it differs from the last one applied successfully. Starts empty, so the first
/// reconcile after a restart always rewrites the table (replacing whatever an earlier process left).
#[derive(Debug, Default)]
pub struct Reconciler {
    runner: Runner,
    applied: Option<RedirectSpec>,
}

impl Reconciler {
    pub fn new(runner: Runner) -> Self {
        Reconciler { runner, applied: None }
    }

    /// `Ok(true)` when the rules were rewritten, `Ok(false)` when `spec` was already in place. After an error
    /// the next call retries, whatever the spec.
    pub fn reconcile(&mut self, spec: &RedirectSpec) -> Result<bool, RedirectError> {
        if self.applied.as_ref() == Some(spec) {
            return Ok(false);
        }
        self.applied = None;
        self.runner.apply(spec)?;
        self.applied = Some(spec.clone());
        Ok(true)
    }

    pub fn applied(&self) -> Option<&RedirectSpec> {
        self.applied.as_ref()
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }
}

#[cfg(test)]
mod tests;
