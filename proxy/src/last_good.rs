//! The last configuration the proxy applied from the control plane, kept on disk so that a proxy restarted
//! while the control plane is unreachable serves it instead of nothing. Starting empty would reconcile the
//! node's redirection rules to no pods and let their traffic leave in plaintext: the one way a restart could
//! fail open. The file is owner-only (it names every workload and policy of the node) and replaced atomically.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use strait_api::MeshConfig;

#[derive(Debug, thiserror::Error)]
pub enum LastGoodError {
    #[error("writing the last good configuration to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("reading the last good configuration from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the last good configuration in {path} is not valid (ignored): {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Replaces `path` with `config`: written to a temporary file beside it (mode 0600), synced, then renamed, so a
/// crash leaves the old file or the new one, never half of one.
pub fn save(path: &Path, config: &MeshConfig) -> Result<(), LastGoodError> {
    let error = |source| LastGoodError::Write { path: path.to_path_buf(), source };
    let text = serde_json::to_vec(config).map_err(|e| error(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(error)?;
    file.write_all(&text).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// The configuration saved at `path`; `None` when there is none yet.
pub fn load(path: &Path) -> Result<Option<MeshConfig>, LastGoodError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LastGoodError::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_slice(&text).map(Some).map_err(|source| LastGoodError::Parse { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_saved_configuration_loads_back_and_only_its_owner_can_read_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("last-good.json");
        assert!(load(&path).expect("no file is not an error").is_none());
        let config: MeshConfig = serde_yaml::from_str(
            "services: [{name: reviews, namespace: shop, addresses: [10.96.0.10], ports: [{port: 9080}]}]",
        )
        .expect("test configuration");
        save(&path, &config).expect("saves");
        assert_eq!(load(&path).expect("loads"), Some(config.clone()));
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        save(&path, &MeshConfig::default()).expect("replaces");
        assert_eq!(load(&path).expect("loads"), Some(MeshConfig::default()));
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("last-good.json");
        std::fs::write(&path, b"{\"services\": [").expect("write");
        let error = load(&path).expect_err("half a file is refused").to_string();
        assert!(error.contains("last-good.json") && error.contains("not valid"), "{error}");
    }
}
