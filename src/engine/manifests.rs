//! Manifests in the stores: the production ref of each pipeline, the last
//! run, reading and parsing the blobs.

use std::sync::Arc;

use anyhow::Context;

use crate::pipeline::RepoPath;
use crate::plan::digest::Digest;
use crate::plan::manifest::Manifest;
use crate::store::Stores;

/// The ref naming a pipeline's production manifest.
pub fn production_ref(pipeline: &RepoPath) -> String {
    format!("production/{pipeline}")
}

/// Reads and parses a manifest blob (once per process: see
/// [`crate::store::ManifestCache`]).
pub fn load_manifest(stores: &Stores, digest: &Digest) -> anyhow::Result<Arc<Manifest>> {
    if let Some(m) = stores.manifests.get(digest) {
        return Ok(m);
    }
    let bytes = stores
        .blobs
        .get(digest)
        .with_context(|| format!("cannot read manifest {digest}"))?;
    let m: Arc<Manifest> = Arc::new(
        serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest {digest} is not valid"))?,
    );
    stores.manifests.insert(*digest, Arc::clone(&m));
    Ok(m)
}

/// The production manifest of a pipeline, if one was promoted and can be
/// read (see [`production`] for why it may not be).
pub fn production_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
) -> anyhow::Result<Option<(Digest, Arc<Manifest>)>> {
    Ok(production(stores, pipeline)?.manifest)
}

/// The manifest of the last recorded run of a pipeline.
pub fn last_run_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
) -> anyhow::Result<Option<(Digest, Arc<Manifest>)>> {
    match stores.state.last_run(pipeline.as_str())? {
        Some(run) => Ok(Some((run.manifest, load_manifest(stores, &run.manifest)?))),
        None => Ok(None),
    }
}

/// A pipeline's production as far as it can be read.
#[derive(Debug, Clone, Default)]
pub struct Production {
    /// What `production/<pipeline>` names, readable or not: a promotion
    /// moves the ref from this value.
    pub head: Option<Digest>,
    /// The manifest it names, when it could be read.
    pub manifest: Option<(Digest, Arc<Manifest>)>,
    /// Why the manifest could not be read: the caller goes on as if the
    /// pipeline had no production, and shows this.
    pub warning: Option<String>,
}

/// The production of a pipeline, tolerating a missing or damaged manifest
/// blob: one lost blob must not block every command. A damaged state
/// database is still an error.
pub fn production(stores: &Stores, pipeline: &RepoPath) -> anyhow::Result<Production> {
    let name = production_ref(pipeline);
    let Some(head) = stores.state.ref_get(&name)? else {
        return Ok(Production::default());
    };
    match load_manifest(stores, &head) {
        Ok(m) => Ok(Production {
            head: Some(head),
            manifest: Some((head, m)),
            warning: None,
        }),
        Err(e) => Ok(Production {
            head: Some(head),
            manifest: None,
            warning: Some(format!(
                "{name} names manifest {head}, which cannot be read ({e:#}); going on as if \
                 {pipeline} had no production (a `run --promote` starts a new one). Run \
                 `sluice fsck --repair` to rebuild the ref from the manifest chain"
            )),
        }),
    }
}
