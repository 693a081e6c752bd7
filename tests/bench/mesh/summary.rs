//! The run's closing summary: one markdown table with every figure side by side (direct, Strait L4, Strait L7,
//! HAProxy), ratios to direct and to HAProxy, and CPU per operation of each pair; then the resource notes.
//! tests/bench/RESULTS.md keeps these, with the run's date, commit, machine and load.

use std::collections::BTreeMap;

use crate::stats::Medians;
use crate::Path;

enum Row {
    /// Higher is better: rates (req/s, conn/s, Gbit/s).
    Rate(String, BTreeMap<Path, Medians>),
    /// Latency at a rate the load generator fixes (or a closed loop of one).
    Latency(String, BTreeMap<Path, Medians>),
    Note(String, String),
}

#[derive(Default)]
pub struct Summary {
    rows: Vec<Row>,
}

const COLUMNS: [Path; 4] = [Path::Direct, Path::MeshL4, Path::MeshL7, Path::Haproxy];

impl Summary {
    pub fn rate(&mut self, figure: &str, m: BTreeMap<Path, Medians>) {
        self.rows.push(Row::Rate(figure.into(), m));
    }

    pub fn latency(&mut self, figure: &str, m: BTreeMap<Path, Medians>) {
        self.rows.push(Row::Latency(figure.into(), m));
    }

    pub fn note(&mut self, what: &str, text: &str) {
        self.rows.push(Row::Note(what.into(), text.into()));
    }

    pub fn errors(&self) -> u64 {
        self.rows
            .iter()
            .map(|r| match r {
                Row::Rate(_, m) | Row::Latency(_, m) => m.values().map(|x| x.errors).sum(),
                Row::Note(..) => 0,
            })
            .sum()
    }

    pub fn print(&self, proxy: &std::path::Path, load_before: &str, load_after: &str) {
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into());
        let dirty = std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!("\n== Summary (markdown) ==\n");
        println!(
            "Run {date}, commit {commit}{}, {} cores, kernel {}, load average {load_before} before / {load_after} after; proxy {}\n",
            if dirty { " (with uncommitted changes)" } else { "" },
            crate::procs::num_cpus(),
            crate::procs::kernel(),
            proxy.display()
        );
        println!("| figure | direct | Strait L4 | Strait L7 | HAProxy pair | Strait L7 / direct | Strait L7 / HAProxy | CPU per op, pair: L4 / L7 / HAProxy |");
        println!("|---|---|---|---|---|---|---|---|");
        for row in &self.rows {
            match row {
                Row::Rate(figure, m) => println!("{}", rate_row(figure, m)),
                Row::Latency(figure, m) => println!("{}", latency_row(figure, m)),
                Row::Note(..) => {}
            }
        }
        println!();
        for row in &self.rows {
            if let Row::Note(what, text) = row {
                println!("- {what}: {text}");
            }
        }
    }
}

fn cell(m: &BTreeMap<Path, Medians>, p: Path, f: impl Fn(&Medians) -> String) -> String {
    m.get(&p).map(f).unwrap_or_else(|| "-".into())
}

fn ratio(m: &BTreeMap<Path, Medians>, a: Path, b: Path) -> String {
    match (m.get(&a), m.get(&b)) {
        (Some(x), Some(y)) => format!("{:.2}x", x.rate / y.rate),
        _ => "-".into(),
    }
}

fn cpu(m: &BTreeMap<Path, Medians>) -> String {
    [Path::MeshL4, Path::MeshL7, Path::Haproxy]
        .iter()
        .map(|p| cell(m, *p, |x| if x.cpu_pair > 0.0 { format!("{:.1}", x.cpu_pair) } else { "-".into() }))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn rate_row(figure: &str, m: &BTreeMap<Path, Medians>) -> String {
    let cells: Vec<String> = COLUMNS
        .iter()
        .map(|p| cell(m, *p, |x| if x.rate >= 100.0 { format!("{:.0}", x.rate) } else { format!("{:.2}", x.rate) }))
        .collect();
    format!(
        "| {figure} | {} | {} | {} | {} |",
        cells.join(" | "),
        ratio(m, Path::MeshL7, Path::Direct),
        ratio(m, Path::MeshL7, Path::Haproxy),
        cpu(m)
    )
}

fn latency_row(figure: &str, m: &BTreeMap<Path, Medians>) -> String {
    let direct = m.get(&Path::Direct);
    let cells: Vec<String> = COLUMNS
        .iter()
        .map(|p| {
            cell(m, *p, |x| {
                let added = match direct {
                    Some(d) if *p != Path::Direct => format!(" (+{:.0} p99)", x.p99 - d.p99),
                    _ => String::new(),
                };
                format!("{:.0} / {:.0} / {:.0} µs{added}", x.p50, x.p99, x.p999)
            })
        })
        .collect();
    let added = |p: Path| match (m.get(&p), direct) {
        (Some(x), Some(d)) => format!("{:+.0} µs", x.p99 - d.p99),
        _ => "-".into(),
    };
    format!(
        "| {figure}, p50 / p99 / p99.9 | {} | added p99 {} | L7 {} vs HAProxy {} | {} |",
        cells.join(" | "),
        added(Path::MeshL7),
        added(Path::MeshL7),
        added(Path::Haproxy),
        cpu(m)
    )
}
