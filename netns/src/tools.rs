//! The programs that namespace tests, the benchmark and `strait local --netns` run (`ip`, `nft`, ...), found
//! up front so that a machine without them says which package to install, in one line, before anything
//! starts, instead of a proxy failing deep inside a test.
//!
//! A program is looked up on `PATH` the way `execvp(3)` finds it (the first executable regular file of that
//! name), without running it: running `nft --version` would itself need the program, and a check that spawns
//! processes is slower and can fail for reasons other than a missing package.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A program run by the harness or `strait local --netns`, and the Debian/Ubuntu package that ships it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

impl Tool {
    /// `ip netns`, veths, addresses, routes: every [`crate::Cluster`] and `ip netns exec`.
    pub const IP: Tool = Tool { program: "ip", package: "iproute2" };
    /// Forwarding and the other per-namespace settings of a [`crate::Cluster`].
    pub const SYSCTL: Tool = Tool { program: "sysctl", package: "procps" };
    /// The node proxy's capture rules (`strait-proxy --redirect ...`).
    pub const NFT: Tool = Tool { program: "nft", package: "nftables" };
    /// Packet captures in the end-to-end tests (`strait_tests::Capture`).
    pub const TCPDUMP: Tool = Tool { program: "tcpdump", package: "tcpdump" };
}

impl fmt::Display for Tool {
    /// "nftables (nft)"; just "tcpdump" where the package and the program share a name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.program == self.package {
            f.write_str(self.package)
        } else {
            write!(f, "{} ({})", self.package, self.program)
        }
    }
}

/// What a [`crate::Cluster`] runs: enough for a test that only builds namespaces.
pub const CLUSTER_TOOLS: &[Tool] = &[Tool::IP, Tool::SYSCTL];

/// The first executable regular file named `program` in the directories of `path` (a `PATH`-style list).
/// Empty entries are skipped: for `execvp` they mean the current directory, which no package installs into,
/// and counting it would make the answer depend on where a test happens to run.
pub fn find_program(program: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    // `metadata` follows symlinks, as exec does (Debian's /usr/sbin/ip may be a link, say).
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tools of `tools` that are not on `path`, in the order given.
pub fn missing_from(tools: &[Tool], path: &OsStr) -> Vec<Tool> {
    tools.iter().copied().filter(|tool| find_program(tool.program, path).is_none()).collect()
}

/// The tools of `tools` that are not on this process's `PATH` (which child processes inherit). Without a
/// `PATH`, glibc's `execvp` searches "/bin:/usr/bin", so that is searched here too.
pub fn missing_tools(tools: &[Tool]) -> Vec<Tool> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    missing_from(tools, &path)
}

/// Why a root-only test, the benchmark or `strait local --netns` cannot run on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmet {
    /// Not running as root. Tools are not looked up then: an unprivileged `PATH` often lacks /usr/sbin, where
    /// `ip` and `nft` live, so the answer would be wrong for the root run that matters.
    NotRoot,
    /// Root, but these tools are not on `PATH`.
    Missing(Vec<Tool>),
}

impl fmt::Display for Unmet {
    /// "needs root", or "needs the packages nftables (nft), tcpdump: apt-get install -y nftables tcpdump": one
    /// line, so a skipped test's output says what to do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::NotRoot => f.write_str("needs root"),
            Unmet::Missing(tools) => {
                let named: Vec<String> = tools.iter().map(Tool::to_string).collect();
                let packages: Vec<&str> = tools.iter().map(|t| t.package).collect();
                let noun = if tools.len() == 1 { "package" } else { "packages" };
                write!(f, "needs the {noun} {}: apt-get install -y {}", named.join(", "), packages.join(" "))
            }
        }
    }
}

impl std::error::Error for Unmet {}

/// `Ok` when running as root with every tool of `tools` on `PATH`; spawns no process.
pub fn check_root_and(tools: &[Tool]) -> Result<(), Unmet> {
    if !crate::is_root() {
        return Err(Unmet::NotRoot);
    }
    let missing = missing_tools(tools);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unmet::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::fs;

    use super::*;

    /// A file `name` in `dir` with mode `mode`.
    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").expect("write a file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn path_of(dirs: &[&Path]) -> OsString {
        std::env::join_paths(dirs).expect("no ':' in temporary directory names")
    }

    #[test]
    fn a_program_is_found_only_as_an_executable_file_on_the_path() {
        let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        file(a.path(), "nft", 0o644);
        let in_b = file(b.path(), "nft", 0o755);
        fs::create_dir(a.path().join("ip")).expect("mkdir");
        let path = path_of(&[a.path(), b.path()]);

        // Not executable in a, executable in b: b's, as exec would run it.
        assert_eq!(find_program("nft", &path), Some(in_b.clone()));
        // A directory is no program.
        assert_eq!(find_program("ip", &path), None);
        assert_eq!(find_program("tcpdump", &path), None);
        // The first directory wins.
        let in_a = file(a.path(), "tcpdump", 0o700);
        file(b.path(), "tcpdump", 0o755);
        assert_eq!(find_program("tcpdump", &path), Some(in_a));
        // A symlink counts as its target.
        std::os::unix::fs::symlink(&in_b, a.path().join("sysctl")).expect("symlink");
        assert!(find_program("sysctl", &path).is_some());
        std::os::unix::fs::symlink(a.path().join("gone"), a.path().join("dangling")).expect("symlink");
        assert_eq!(find_program("dangling", &path), None);
    }

    #[test]
    fn empty_path_entries_are_not_the_current_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        file(dir.path(), "nft", 0o755);
        // Relative to the test's working directory, which has no `nft`; an empty entry must not find one
        // there even if it had.
        assert_eq!(find_program("nft", OsStr::new("")), None);
        assert_eq!(find_program("nft", OsStr::new("::")), None);
        let path = format!(":{}:", dir.path().display());
        assert!(find_program("nft", OsStr::new(&path)).is_some());
    }

    #[test]
    fn missing_tools_are_those_not_found_in_the_order_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        file(dir.path(), "ip", 0o755);
        file(dir.path(), "sysctl", 0o755);
        let path = path_of(&[dir.path()]);
        let all = [Tool::IP, Tool::NFT, Tool::SYSCTL, Tool::TCPDUMP];
        assert_eq!(missing_from(&all, &path), [Tool::NFT, Tool::TCPDUMP]);
        assert_eq!(missing_from(CLUSTER_TOOLS, &path), []);
        assert_eq!(missing_from(&all, OsStr::new("")), all);
    }

    #[test]
    fn the_message_names_each_package_and_its_program_and_the_install_command() {
        assert_eq!(Unmet::NotRoot.to_string(), "needs root");
        assert_eq!(
            Unmet::Missing(vec![Tool::NFT]).to_string(),
            "needs the package nftables (nft): apt-get install -y nftables"
        );
        assert_eq!(
            Unmet::Missing(vec![Tool::IP, Tool::TCPDUMP]).to_string(),
            "needs the packages iproute2 (ip), tcpdump: apt-get install -y iproute2 tcpdump"
        );
    }
}
