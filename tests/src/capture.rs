//! Packet capture with tcpdump inside a namespace, e.g. on a node's uplink, so a test can assert that a
//! plaintext marker never crossed the node-to-node link (or, in the harness self-test, that it did).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::exec::{self, ChildGuard};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running tcpdump; [`Capture::stop`] returns what it saw. Dropping it without `stop` kills tcpdump and
/// removes its file.
pub struct Capture {
    child: Option<ChildGuard>,
    file: PathBuf,
}

/// The result of a capture: the raw pcap file.
pub struct Captured {
    pub pcap: Vec<u8>,
}

impl Captured {
    /// Whether `needle` occurs anywhere in the captured bytes (headers and payloads alike). A marker
    /// written in one small write travels in one segment, so a plain search finds it.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.pcap.windows(needle.len()).any(|w| w == needle)
    }

    /// Number of packet records in the pcap (classic pcap format, as tcpdump -w writes).
    pub fn packet_count(&self) -> usize {
        const GLOBAL_HEADER: usize = 24;
        const RECORD_HEADER: usize = 16;
        let mut at = GLOBAL_HEADER;
        let mut n = 0;
        // incl_len sits at offset 8 of each record header; the file's byte order is the host's, since
        // tcpdump wrote it on this machine.
        while at + RECORD_HEADER <= self.pcap.len() {
            let len_bytes: [u8; 4] = self.pcap[at + 8..at + 12].try_into().expect("4 bytes");
            at += RECORD_HEADER + u32::from_ne_bytes(len_bytes) as usize;
            n += 1;
        }
        n
    }
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` in `netns` (e.g. `"tcp"`) and returns once it is listening.
    pub fn start(netns: &str, iface: &str, filter: &str) -> Result<Capture> {
        let file = std::env::temp_dir().join(format!(
            "strait-capture-{}-{}.pcap",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new("tcpdump");
        // -U: write each packet as it arrives; --immediate-mode: no kernel-side batching; -Z root: do not
        // drop privileges, or tcpdump could not write the file it opens; -n: no DNS.
        cmd.args(["-i", iface, "-n", "-U", "--immediate-mode", "-Z", "root", "-w"]).arg(&file);
        cmd.args(filter.split_whitespace());
        let mut child = exec::spawn_in(netns, cmd)?;
        // tcpdump says "listening on <iface>" on stderr once the capture socket is attached.
        let started = std::time::Instant::now();
        while !child.stderr().contains("listening on") {
            // `exited`, not `try_wait`: the error should carry what tcpdump said last (no such interface...).
            if let Some(status) = child.exited()? {
                anyhow::bail!("{} exited ({status}): {}", child.describe(), child.stderr());
            }
            // Generous: on a machine busy with parallel netns tests tcpdump has taken over 10 s to attach.
            if started.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("{} did not start listening within 30s; stderr:\n{}", child.describe(), child.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Capture { child: Some(child), file })
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns the capture.
    pub fn stop(mut self) -> Result<Captured> {
        // Packets sent just before the stop may still be on their way through the veth.
        std::thread::sleep(Duration::from_millis(100));
        if let Some(mut child) = self.child.take() {
            exec::signal(child.id(), libc::SIGINT);
            child.terminate(Duration::from_secs(5))?;
        }
        let pcap = std::fs::read(&self.file).with_context(|| format!("reading capture {}", self.file.display()))?;
        Ok(Captured { pcap })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.child.take();
        let _ = std::fs::remove_file(&self.file);
    }
}
