//! `strait local` survives its parts: under a steady load of requests, each child is killed in turn (SIGKILL:
//! the control plane, the client-side proxy node-a, the server-side proxy node-b, the backend reviews-v1). The
//! supervisor restarts it; the test reports what the load saw. The control plane's absence costs nothing (the
//! proxies keep serving their configuration); a proxy's or a backend's costs only requests that were sent while
//! it was down, and every request after it is back succeeds.

mod common;
mod loopback;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopback::{http_get, request, Layout, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_children_are_restarted_and_the_mesh_keeps_serving() {
    let layout = Layout::new(0);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    layout.copy_config(&config, &[]);
    let mesh = Mesh::start(&layout, &config, &state);

    let load = Load::start(&layout, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut report = vec![format!("{:<11} {:>9} {:>7} {:>10}", "killed", "requests", "failed", "back in")];
    for victim in ["control", "node-a", "node-b", "reviews-v1"] {
        let pid = mesh.child_pid(victim).unwrap_or_else(|| panic!("no running child {victim}"));
        let before = load.seen();
        let killed = Instant::now();
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill").success());
        mesh.wait_event(&format!("{victim} restarted (restart #1)"), Duration::from_secs(20));
        // Back: a proxy is ready again, a backend listens again; the control plane has proxies to serve.
        let back_in = match victim {
            "node-a" => wait_ready(layout.admin(1)).await,
            "node-b" => wait_ready(layout.admin(2)).await,
            "reviews-v1" => wait_listening((layout.ip(2, 2), 9080).into()).await,
            _ => Instant::now(),
        }
        .saturating_duration_since(killed);
        let recovered = Instant::now();
        // Load keeps running for 2 s after the child is back: every one of those requests must succeed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let window: Vec<Outcome> = load.since(before);
        let failed: Vec<&Outcome> = window.iter().filter(|o| o.error.is_some()).collect();
        let after: Vec<&Outcome> = window.iter().filter(|o| o.started >= recovered).collect();
        report.push(format!(
            "{victim:<11} {:>9} {:>7} {:>8.0}ms",
            window.len(),
            failed.len(),
            back_in.as_secs_f64() * 1000.0
        ));
        assert!(after.len() > 20, "{victim}: the load stalled after the restart ({} requests)", after.len());
        let late: Vec<String> = failed
            .iter()
            .filter(|o| o.started >= recovered)
            .map(|o| format!("{:?} after the kill: {}", o.started - killed, o.error.as_deref().unwrap_or("")))
            .collect();
        assert!(late.is_empty(), "{victim}: requests failed after it was back:\n{}", late.join("\n"));
        if victim == "control" {
            let all: Vec<String> = failed.iter().map(|o| o.error.clone().unwrap_or_default()).collect();
            assert!(all.is_empty(), "requests failed while the control plane was away:\n{}", all.join("\n"));
        }
        // Requests that failed were sent while the child was down (or were on it when it died).
        for o in &failed {
            assert!(o.started < recovered, "{victim}: {o:?}");
            assert!(o.finished >= killed, "{victim}: a request failed before the kill: {o:?}");
        }
    }
    println!("{}", report.join("\n"));

    // The restarted control plane pushes again: an edit reaches the proxies.
    let route = config.join("reviews-route.yaml");
    let text = std::fs::read_to_string(&route).expect("route");
    std::fs::write(&route, text.replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 100")).expect("edit");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dump = http_get(layout.admin(1), "/config_dump").await.map(|(_, body)| body).unwrap_or_default();
        if dump.replace(' ', "").contains("\"weight\":100") {
            break;
        }
        assert!(Instant::now() < deadline, "an edit after the control plane's restart was not pushed:\n{dump}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.stop().await;

    // Every exit was logged with its status, and the child's own log keeps the story.
    let events = mesh.events();
    for victim in ["control", "node-a", "node-b", "reviews-v1"] {
        assert!(
            events.iter().any(|e| e.starts_with(&format!("strait local: {victim} exited (signal: 9 (SIGKILL))"))),
            "no exit logged for {victim}:\n{}",
            events.join("\n")
        );
    }
    let log = std::fs::read_to_string(state.join("logs/node-a.log")).expect("node-a log");
    assert!(log.contains("--- strait local: node-a restarted (restart #1)"), "node-a's log lacks the restart");
    mesh.stop_and_check(&layout, Path::new(&state));
}

async fn wait_ready(admin: SocketAddr) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, _)) = http_get(admin, "/ready").await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{admin} did not become ready again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_listening(addr: SocketAddr) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{addr} did not listen again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Clone, Debug)]
struct Outcome {
    started: Instant,
    finished: Instant,
    error: Option<String>,
}

/// `concurrency` loops sending GET / from the client's address, each on its own connection.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(layout: &Layout, concurrency: usize) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..concurrency)
            .map(|_| {
                let (outcomes, stop, layout) = (outcomes.clone(), stop.clone(), layout.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let started = Instant::now();
                        let error = match request(&layout, "GET", "/").await {
                            Ok((200, _)) => None,
                            Ok((status, body)) => Some(format!("{status}: {}", body.trim())),
                            Err(e) => Some(e.to_string()),
                        };
                        let failed = error.is_some();
                        let outcome = Outcome { started, finished: Instant::now(), error };
                        outcomes.lock().expect("outcomes").push(outcome);
                        if failed {
                            // A refused connection fails at once; don't spin.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        Load { outcomes, stop, tasks }
    }

    fn seen(&self) -> usize {
        self.outcomes.lock().expect("outcomes").len()
    }

    fn since(&self, from: usize) -> Vec<Outcome> {
        self.outcomes.lock().expect("outcomes")[from..].to_vec()
    }

    async fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
