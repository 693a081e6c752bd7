//! strait-scale: the control plane at scale (issue 17). `cargo run --release -p strait-tests --bin strait-scale`
//! (full size: 500 simulated node proxies, 1,000 services, 2,000 pods, 200 routes) or `-- --smoke` (small, under
//! a minute, CI). Needs the strait-control binary built beside it. Prints a table (and writes it to `--out`);
//! exits 1 when a change was not ACKed by every proxy that should have received it.

use clap::Parser as _;
use strait_tests::scale::{run, Options};

fn main() -> std::process::ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strait-scale: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(run(&options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("strait-scale: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let table = report.markdown();
    println!("{table}");
    if let Some(out) = &options.out {
        let text = format!(
            "# Control plane at scale (issue 17)\n\n`strait-scale {}` on {} (UTC); the machine's 2 cores were shared with \
             other work during the run, so CPU and latency figures are upper bounds.\n\n{table}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" "),
            k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M"),
        );
        if let Err(e) = std::fs::write(out, text) {
            eprintln!("strait-scale: writing {}: {e}", out.display());
            return std::process::ExitCode::from(2);
        }
    }
    if report.misses.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("strait-scale: {} miss(es), see the table", report.misses.len());
        std::process::ExitCode::FAILURE
    }
}
