//! The control plane under test: the real `strait-control --kubernetes` process pointed at the fake API server
//! through a kubeconfig, and what `/proc` and its monitoring port say about it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::report::Resources;
use crate::fake_kube::FakeKube;
use crate::loopback::{http_get, LoggedChild};
use crate::soak::procs::{ticks_per_second, usage, Usage};

pub struct Control {
    pub binary: PathBuf,
    pub listen: SocketAddr,
    pub monitoring: SocketAddr,
    kubeconfig: PathBuf,
    dir: PathBuf,
    pub process: Option<LoggedChild>,
    starts: usize,
}

impl Control {
    /// Loopback addresses of this run (127.100-149.250.1), apart from the tests'.
    pub fn new(binary: PathBuf, fake: &FakeKube, dir: &Path) -> Result<Control> {
        let ip = Ipv4Addr::new(127, 100 + (std::process::id() % 50) as u8, 250, 1);
        Ok(Control {
            binary,
            listen: SocketAddr::from((ip, 15012)),
            monitoring: SocketAddr::from((ip, 15014)),
            kubeconfig: fake.write_kubeconfig(dir)?,
            dir: dir.to_path_buf(),
            process: None,
            starts: 0,
        })
    }

    /// Starts a control-plane process and waits until it has built a configuration (`/ready`).
    pub async fn start(&mut self, patience: Duration) -> Result<()> {
        self.starts += 1;
        let args = [
            "--kubernetes".to_string(),
            format!("--listen={}", self.listen),
            format!("--monitoring={}", self.monitoring),
            format!("--pod-name=scale-{}", self.starts),
            // Proxies' tokens are all different and reviewed once each; nothing else differs from a default run.
            "--drain-grace=1s".to_string(),
        ];
        let kubeconfig = self.kubeconfig.to_string_lossy().to_string();
        let mut process = LoggedChild::spawn(
            &format!("strait-control-{}", self.starts),
            &self.binary,
            &args,
            &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "warn")],
            &self.dir,
        )?;
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = process.exited() {
                bail!("strait-control exited during start-up ({status}):\n{}", process.log_tail(20));
            }
            let monitoring = self.monitoring;
            let ready = tokio::task::spawn_blocking(move || http_get(monitoring, "/ready")).await?;
            if matches!(ready, Some((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                bail!("strait-control not ready within {patience:?}:\n{}", process.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.process = Some(process);
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        usage(self.process.as_ref()?.pid())
    }

    /// Proxies whose last pushed version the control plane has not seen ACKed, from `/debug/proxies`.
    pub async fn unacked(&self) -> Result<Vec<String>> {
        let monitoring = self.monitoring;
        let (status, body) = tokio::task::spawn_blocking(move || http_get(monitoring, "/debug/proxies"))
            .await?
            .context("the control plane's /debug/proxies")?;
        anyhow::ensure!(status == 200, "/debug/proxies answered {status}");
        let status: strait_api::status::MeshStatus = serde_json::from_str(&body).context("/debug/proxies JSON")?;
        Ok(status
            .proxies
            .into_iter()
            .filter(|p| p.connected_streams > 0 && p.last_pushed.is_some() && p.last_acked != p.last_pushed)
            .map(|p| format!("{} (pushed {:?}, ACKed {:?})", p.node, p.last_pushed, p.last_acked))
            .collect())
    }
}

/// Samples the control plane's usage every 100 ms while a phase runs, for its CPU and peak RSS.
pub struct Window {
    start: Instant,
    first: Usage,
    peak_rss_kib: u64,
}

impl Window {
    pub fn open(control: &Control) -> Option<Window> {
        let first = control.usage()?;
        Some(Window { start: Instant::now(), first, peak_rss_kib: first.rss_kib })
    }

    pub fn sample(&mut self, control: &Control) {
        if let Some(now) = control.usage() {
            self.peak_rss_kib = self.peak_rss_kib.max(now.rss_kib);
        }
    }

    pub fn close(mut self, control: &Control) -> Resources {
        self.sample(control);
        let last = control.usage().unwrap_or(self.first);
        let window = self.start.elapsed();
        let cpu = last.cpu_ticks.saturating_sub(self.first.cpu_ticks) as f64 / ticks_per_second();
        Resources { vcpu: cpu / window.as_secs_f64().max(1e-3), rss_mib: self.peak_rss_kib as f64 / 1024.0, window }
    }
}
