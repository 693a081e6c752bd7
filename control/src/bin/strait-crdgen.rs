//! `strait-crdgen`: prints the Strait CustomResourceDefinitions, generated from the Rust types
//! (`strait_api::crd::definitions`), or writes / checks one file per CRD in a directory.
//!
//! ```text
//! cargo run -p strait-control --bin strait-crdgen                           # all CRDs to stdout
//! cargo run -p strait-control --bin strait-crdgen -- --write deploy/crds    # regenerate deploy/crds/
//! cargo run -p strait-control --bin strait-crdgen -- --check deploy/crds    # exit 1 if out of date
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "strait-crdgen", about = "Generate the Strait CRDs (deploy/crds/) from the Rust types")]
struct Args {
    /// Write one `<plural>.strait.dev.yaml` per CRD into this directory.
    #[arg(long, conflicts_with = "check")]
    write: Option<PathBuf>,
    /// Compare the files in this directory with the generated CRDs; exit 1 when they differ.
    #[arg(long)]
    check: Option<PathBuf>,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let rendered = strait_api::crd::rendered();
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, yaml) in &rendered {
            let path = dir.join(name);
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    } else if let Some(dir) = &args.check {
        let mut stale = 0;
        for (name, yaml) in &rendered {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!("{} is out of date", path.display());
                stale += 1;
            }
        }
        if stale > 0 {
            eprintln!("regenerate with: {}", strait_api::crd::GENERATE_COMMAND);
            return Ok(ExitCode::FAILURE);
        }
    } else {
        for (_, yaml) in &rendered {
            print!("---\n{yaml}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
