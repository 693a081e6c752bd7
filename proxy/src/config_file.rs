//! Configuration from a YAML file (before or without a control plane): read at start, then re-read when it
//! changes. A file that does not parse or validate is reported and the last good configuration stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strait_api::MeshConfig;
use tracing::{info, warn};

use crate::state::StateStore;
use crate::telemetry::metrics::Metrics;

/// Loads the file once and returns what it read (for [`watch`]); the error says which field is wrong.
pub fn load(path: &std::path::Path, state: &StateStore, metrics: &Metrics) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let result = apply(&text, path, state, 1);
    metrics.config_update(&result);
    result.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(bytes)
}

fn apply(text: &str, path: &std::path::Path, state: &StateStore, generation: u64) -> Result<(), String> {
    let config = MeshConfig::from_yaml(text).map_err(|e| e.to_string())?;
    let version = format!("file:{}#{generation}", path.display());
    state.apply(config, version.clone()).map_err(|e| e.to_string())?;
    info!(%version, "configuration loaded");
    Ok(())
}

/// Polls the file and applies each new content; runs forever. `last` is what [`load`] already applied (`None`
/// when the file did not exist yet: the proxy then stays not ready until it appears).
pub async fn watch(path: PathBuf, state: StateStore, metrics: Arc<Metrics>, mut last: Option<Vec<u8>>) {
    let mut generation = u64::from(last.is_some());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(current) = std::fs::read(&path) else { continue };
        if last.as_ref() == Some(&current) {
            continue;
        }
        last = Some(current.clone());
        generation += 1;
        let text = String::from_utf8_lossy(&current);
        let result = apply(&text, &path, &state, generation);
        metrics.config_update(&result);
        if let Err(e) = result {
            warn!(file = %path.display(), error = %e, "configuration rejected; keeping the last good one");
        }
    }
}
