//! Operator CLI for the Strait mesh CA.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use strait_certs::{write_private_file, Identity, MeshCa, DEFAULT_WORKLOAD_TTL};

#[derive(Parser, Debug)]
#[command(name = "strait-certs", about = "Manage the Strait mesh certificate authority")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new root CA (ca.pem, ca-key.pem) in a directory.
    CreateCa {
        /// Directory to write ca.pem and ca-key.pem (mode 0600) into.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain, e.g. cluster.local.
        #[arg(long)]
        trust_domain: String,
        /// Overwrite an existing CA in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Issue a workload certificate (cert.pem, key.pem, ca.pem).
    Issue {
        /// Directory holding ca.pem and ca-key.pem.
        #[arg(long)]
        ca_dir: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        identity: String,
        /// Directory to write cert.pem, key.pem (mode 0600) and ca.pem into.
        #[arg(long)]
        out_dir: PathBuf,
        /// Lifetime: a number with unit s, m, h or d (e.g. 90m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; use e.g. 30s, 90m, 24h or 7d"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("{s:?} does not start with a number; use e.g. 30s, 90m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => return Err(format!("unknown unit {other:?} in {s:?}; use s, m, h or d")),
    };
    let total = n.checked_mul(secs).ok_or_else(|| format!("{s:?} is too long"))?;
    if total == 0 {
        return Err("the lifetime must be positive".to_string());
    }
    Ok(Duration::from_secs(total))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::CreateCa { dir, trust_domain, force } => {
            if !force && dir.join(strait_certs::CA_KEY_FILE).exists() {
                bail!(
                    "{} already holds a CA; pass --force to replace it (existing workload certificates will stop being trusted)",
                    dir.display()
                );
            }
            let ca = MeshCa::generate(&trust_domain)?;
            ca.save(&dir)?;
            println!("created CA for trust domain {trust_domain} in {}", dir.display());
        }
        Command::Issue { ca_dir, identity, out_dir, ttl } => {
            let identity: Identity = identity.parse()?;
            let ca = MeshCa::load(&ca_dir).with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
            let cert = ca.issue(&identity, ttl)?;
            std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
            let write = |name: &str, contents: &str| {
                let p = out_dir.join(name);
                std::fs::write(&p, contents).with_context(|| format!("writing {}", p.display()))
            };
            write("cert.pem", &cert.chain_pem())?;
            write("ca.pem", ca.root_pem())?;
            let key_path = out_dir.join("key.pem");
            write_private_file(&key_path, cert.key_pem().as_bytes())
                .with_context(|| format!("writing {}", key_path.display()))?;
            let ttl_note = if ttl == DEFAULT_WORKLOAD_TTL { " (default)" } else { "" };
            println!(
                "issued {identity} (serial {}, valid for {}s{ttl_note}) into {}",
                cert.serial(),
                ttl.as_secs(),
                out_dir.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604800)));
        assert!(parse_ttl("24").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("5w").is_err());
    }
}
