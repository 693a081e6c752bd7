//! What both local-mesh tests do with `strait local`'s output: read it line by line, and wait for the banner.

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The last line of the banner, printed once everything answers.
const BANNER_END: &str = "Ctrl-C stops everything";

/// The child's stdout as a stream of lines, read on a thread of its own.
pub fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Appends lines to `banner` until its last line; false if it did not come within two minutes (or the process
/// ended first).
pub fn read_banner(lines: &mpsc::Receiver<String>, banner: &mut String) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
                if line.starts_with(BANNER_END) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}
