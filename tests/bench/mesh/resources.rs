//! Memory and size: each proxy's peak RSS after the load figures, its RSS with many idle connections open
//! through it (per connection), and the binary as it would ship (stripped).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use strait_tests::mesh;

use crate::load::IdleConnections;
use crate::procs::{anonymous_kib, memory_kib, stripped_size};
use crate::{Bench, Path, Settings, ECHO_PORT};

impl Bench {
    pub fn resources(&self, s: &Settings) -> Result<()> {
        println!("\n== 7. Resources ==");
        let mut peaks = Vec::new();
        let mut seen = Vec::new();
        for path in self.paths_with_processes(s) {
            // L4 and L7 are the same two Strait processes.
            if seen.contains(&self.pair_pids(path)) {
                continue;
            }
            seen.push(self.pair_pids(path));
            let mib_of =
                |kib: Result<u64>| kib.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|_| "?".into());
            let pids = self.pair_pids(path);
            let peak: Vec<String> = pids.iter().map(|pid| mib_of(memory_kib(*pid).map(|(_, peak)| peak))).collect();
            let anonymous: Vec<String> = pids.iter().map(|pid| mib_of(anonymous_kib(*pid))).collect();
            // RSS counts the pages of the binary's code and shared libraries the process touched; the anonymous
            // part is what each proxy holds of its own.
            let cell = format!("{} (anonymous now: {})", peak.join(" / "), anonymous.join(" / "));
            println!("peak RSS so far, {}: {cell} MiB (client side / server side)", path.label());
            peaks.push((path, cell));
        }
        for (path, cell) in peaks {
            self.summary
                .borrow_mut()
                .note(&format!("peak RSS after the load, {} (MiB, client / server side)", path.label()), &cell);
        }
        // Idle connections: through the L4 tunnel (each one a stream of the tunnel and a connection to the pod),
        // to the L7 port (held by the client side only until a request comes), and to HAProxy's front (same).
        // The L7 figure goes before the L4 one: freed memory stays with the process (the allocator keeps it), so a
        // smaller figure measured after a larger one on the same processes would read as zero.
        let idle: [(Path, SocketAddr); 3] = [
            (Path::MeshL7, self.http_target(Path::MeshL7, false)),
            (Path::MeshL4, SocketAddr::new(self.b1(Path::MeshL4), ECHO_PORT)),
            (Path::Haproxy, self.http_target(Path::Haproxy, false)),
        ];
        // Long enough for both sides to accept, open their upstream streams, and later close them again.
        let settle = if s.smoke { Duration::from_millis(300) } else { Duration::from_secs(2) };
        for (path, target) in idle {
            if !self.paths_with_processes(s).contains(&path) {
                continue;
            }
            let count = if path == Path::Haproxy { s.idle.min(crate::haproxy::MAX_IDLE) } else { s.idle };
            let pids = self.pair_pids(path);
            let before = rss_kib(&pids);
            let open = IdleConnections::open(&self.a1(path), target, count)?;
            let after = settled_rss(&pids, settle);
            drop(open);
            let per_conn: Vec<String> = after
                .iter()
                .zip(&before)
                .map(|(a, b)| format!("{:.1}", a.saturating_sub(*b) as f64 / count as f64))
                .collect();
            let rss: Vec<String> = after.iter().map(|a| format!("{:.1}", *a as f64 / 1024.0)).collect();
            let cell = format!("{} MiB; {} KiB per connection", rss.join(" / "), per_conn.join(" / "));
            println!("{count} idle connections, {}: RSS {cell} (client / server side)", path.label());
            self.summary
                .borrow_mut()
                .note(&format!("RSS with {} idle connections, {} (client / server side)", s.idle, path.label()), &cell);
            std::thread::sleep(settle);
        }
        let proxy = mesh::workspace_binary("strait-proxy")?;
        let strait = stripped_size(&proxy)?;
        let unstripped = std::fs::metadata(&proxy)?.len();
        let mut cell = format!("{:.1} MiB stripped ({:.1} MiB with line tables)", mib(strait), mib(unstripped));
        if self.haproxy.is_some() {
            if let Some(haproxy) = which("haproxy") {
                let size = stripped_size(&haproxy)?;
                cell.push_str(&format!(
                    "; HAProxy {:.1} MiB stripped, plus the shared libraries it links (libssl, libcrypto, ...)",
                    mib(size)
                ));
            }
        }
        println!("binary: strait-proxy {cell}");
        self.summary.borrow_mut().note("binary size", &cell);
        Ok(())
    }

    /// The proxied paths this run measures.
    fn paths_with_processes(&self, s: &Settings) -> Vec<Path> {
        s.pick(&[Path::MeshL4, Path::MeshL7, Path::Haproxy], self.haproxy.is_some())
    }
}

/// Each process's RSS (KiB) once it has stopped growing: the holder's connections are established as soon as
/// the kernel accepts them, while a busy proxy may still be taking them off its backlog and opening their tunnel
/// streams; reading RSS after a fixed pause then counted only part of them, by how busy the machine was.
fn settled_rss(pids: &[u32], settle: Duration) -> Vec<u64> {
    /// Growth over one interval (KiB, all processes together) under which RSS counts as settled.
    const STILL_KIB: u64 = 64;
    const INTERVAL: Duration = Duration::from_millis(500);
    const LONGEST: Duration = Duration::from_secs(30);
    std::thread::sleep(settle);
    let started = std::time::Instant::now();
    let mut last = rss_kib(pids);
    while started.elapsed() < LONGEST {
        std::thread::sleep(INTERVAL);
        let now = rss_kib(pids);
        let grew: u64 = now.iter().zip(&last).map(|(n, l)| n.saturating_sub(*l)).sum();
        last = now;
        if grew < STILL_KIB {
            break;
        }
    }
    last
}

/// Each process's RSS (KiB); 0 for one that is gone.
fn rss_kib(pids: &[u32]) -> Vec<u64> {
    pids.iter().map(|p| memory_kib(*p).map(|m| m.0).unwrap_or(0)).collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}
