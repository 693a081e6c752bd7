//! A directory of manifests read exactly as the control plane's file provider reads it, admitted and
//! translated into the configuration the proxies would be pushed (`why --from`, `lint`).

use std::path::Path;

use anyhow::Context as _;
use strait_api::MeshConfig;

/// The configuration the proxies would get, and every problem admission found (rejected objects keep out).
pub fn load(dir: &Path) -> anyhow::Result<(MeshConfig, Vec<String>)> {
    let files = strait_control::files::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let discovered = strait_control::files::parse_files(&files);
    let trust_domain = strait_api::default_trust_domain();
    let admitted = strait_control::admit::Admission::new(trust_domain.clone()).admit(&discovered);
    let config = strait_control::translate::translate(&admitted.snapshot, &trust_domain);
    Ok((config, admitted.problems))
}
