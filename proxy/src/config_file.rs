//! Configuration from a YAML file (before or without a control plane): read at start, then re-read when it
//! changes. A file that does not parse or validate is reported and the last good configuration stays.

use std::path::PathBuf;
use std::time::Duration;

use strait_api::MeshConfig;
use tracing::{info, warn};

use crate::state::StateStore;

/// Loads the file once; the error says which field is wrong.
pub fn load(path: &std::path::Path, state: &StateStore) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    apply(&text, path, state, 1).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn apply(text: &str, path: &std::path::Path, state: &StateStore, generation: u64) -> Result<(), String> {
    let config = MeshConfig::from_yaml(text).map_err(|e| e.to_string())?;
    let version = format!("file:{}#{generation}", path.display());
    state.apply(config, version.clone()).map_err(|e| e.to_string())?;
    info!(%version, "configuration loaded");
    Ok(())
}

/// Polls the file and applies each new content; runs forever.
pub async fn watch(path: PathBuf, state: StateStore) {
    let mut last = std::fs::read(&path).ok();
    let mut generation = 1;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(current) = std::fs::read(&path) else { continue };
        if last.as_ref() == Some(&current) {
            continue;
        }
        last = Some(current.clone());
        generation += 1;
        let text = String::from_utf8_lossy(&current);
        if let Err(e) = apply(&text, &path, &state, generation) {
            warn!(file = %path.display(), error = %e, "configuration rejected; keeping the last good one");
        }
    }
}
