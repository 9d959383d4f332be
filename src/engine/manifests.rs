//! Manifests in the stores: the production ref of each pipeline, the last
//! run, reading and parsing the blobs.

use anyhow::Context;

use crate::pipeline::RepoPath;
use crate::plan::digest::Digest;
use crate::plan::manifest::Manifest;
use crate::store::Stores;

/// The ref naming a pipeline's production manifest.
pub fn production_ref(pipeline: &RepoPath) -> String {
    format!("production/{pipeline}")
}

/// Reads and parses a manifest blob.
pub fn load_manifest(stores: &Stores, digest: &Digest) -> anyhow::Result<Manifest> {
    let bytes = stores
        .blobs
        .get(digest)
        .with_context(|| format!("cannot read manifest {digest}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("manifest {digest} is not valid"))
}

/// The production manifest of a pipeline, if one was promoted.
pub fn production_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
) -> anyhow::Result<Option<(Digest, Manifest)>> {
    match stores.state.ref_get(&production_ref(pipeline))? {
        Some(d) => Ok(Some((d, load_manifest(stores, &d)?))),
        None => Ok(None),
    }
}

/// The manifest of the last recorded run of a pipeline.
pub fn last_run_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
) -> anyhow::Result<Option<(Digest, Manifest)>> {
    match stores.state.last_run(pipeline.as_str())? {
        Some(run) => Ok(Some((run.manifest, load_manifest(stores, &run.manifest)?))),
        None => Ok(None),
    }
}
