//! strait-soak: the mesh under steady load while everything around it changes (issue 19). Root; builds a
//! namespace cluster and runs the binaries of its own build profile (debug in CI, `--release` for the 10-minute
//! run). `--duration 60s` for CI, 10 minutes by default.
//! Exits 1 when a target is missed; the report goes to stdout and to `--out` (tests/bench/SOAK.md).

use clap::Parser as _;
use strait_tests::soak::{run, Options};

fn main() -> std::process::ExitCode {
    let options = Options::parse();
    match run(options) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("strait-soak: a target was missed (see the report above)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("strait-soak: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
