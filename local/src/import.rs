//! `strait import FILE|DIR|-`: Istio resources (VirtualService, DestinationRule, AuthorizationPolicy;
//! PeerAuthentication and ServiceEntry are checked and read as they are) and Gateway API routes attached to
//! Services (HTTPRoute, GRPCRoute) converted to Strait's kinds on stdout, with every field that was dropped or changed
//! and why on stderr. Exits 1 when the output would behave differently from the input, unless
//! `--accept-changes`.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use strait_control::istio::{self, Converted, Outcome};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Files or directories of YAML (every `.yaml`/`.yml` inside, sorted), or `-` for stdin.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print the converted resources and exit 0 even when some field was dropped or changed (the notes on
    /// stderr still say which), leaving out resources that cannot be converted at all.
    #[arg(long)]
    accept_changes: bool,
    /// The trust domain principals are checked against.
    #[arg(long, default_value_t = strait_api::default_trust_domain())]
    trust_domain: String,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let mut converted = Vec::new();
    for path in &args.paths {
        for (name, text) in read(path)? {
            let found = istio::convert_all(&text, &args.trust_domain)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("reading {name}"))?;
            converted.extend(found);
            let routes = strait_control::gateway::import::convert_all(&text, &args.trust_domain)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("reading {name}"))?;
            converted.extend(routes);
        }
    }
    if converted.is_empty() {
        bail!(
            "no Istio or Gateway API resources found (VirtualService, DestinationRule, ServiceEntry, AuthorizationPolicy, \
             PeerAuthentication, HTTPRoute, GRPCRoute)"
        );
    }
    let changed = converted.iter().filter(|c| c.changes_behaviour()).count();
    // Nothing on stdout unless it is meant to be used: `strait import x | kubectl apply -f -` must not apply
    // a conversion that changes behaviour just because the shell ignores the exit status of a pipe's head.
    if changed == 0 || args.accept_changes {
        print!("{}", render(&converted, args.accept_changes)?);
    }
    for c in &converted {
        for note in &c.notes {
            eprintln!("{}: {note}", c.origin);
        }
        if let Outcome::Refused(reason) = &c.outcome {
            eprintln!("{}: not converted: {reason}", c.origin);
        }
    }
    if changed > 0 && !args.accept_changes {
        bail!(
            "{changed} of {} resource(s) would behave differently in Strait (see above); \
             review the notes and re-run with --accept-changes to use the output",
            converted.len()
        );
    }
    Ok(())
}

/// The YAML stream for stdout: one document per converted resource, each after a comment naming its origin.
fn render(converted: &[Converted], accept_changes: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    for c in converted {
        match &c.outcome {
            Outcome::Resource { document, .. } => {
                out.push_str(&format!("---\n# from {}\n", c.origin));
                out.push_str(&serde_yaml::to_string(document).context("rendering YAML")?);
            }
            Outcome::Direct { .. } => {
                out.push_str(&format!(
                    "---\n# from {}: Strait has no kind of its own for it and reads the Istio resource as it is:\n\
                     # apply it unchanged (strait-control --istio-resources, or a local mesh's directory)\n",
                    c.origin
                ));
            }
            Outcome::Refused(reason) if accept_changes => {
                out.push_str(&format!("---\n# from {}: left out: {reason}\n", c.origin));
            }
            Outcome::Refused(_) => {}
        }
    }
    Ok(out)
}

/// `(name for messages, text)` of each input.
fn read(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading stdin")?;
        return Ok(vec![("stdin".into(), text)]);
    }
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        return files.iter().map(|f| read_file(f)).collect();
    }
    Ok(vec![read_file(path)?])
}

fn read_file(path: &Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path.display().to_string(), text))
}
