//! Where sluice keeps what it computes: content-addressed blobs and the
//! state (SQLite in the state directory, `.sluice/` by default, or a
//! team's PostgreSQL), and the local source-digest memo. The shared
//! stores (`pg`, `s3`) are built only with the cargo feature `team`; see
//! [`shared`].

pub mod blob;
pub mod blob_cache;
pub mod fsck;
pub mod gc;
#[cfg(feature = "team")]
pub mod pg;
pub mod queue;
#[cfg(feature = "team")]
pub mod s3;
#[cfg(feature = "team")]
mod s3_http;
pub mod shared;
pub mod source;
pub mod state;

pub use shared::PgConnect;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::plan::digest::Digest;
use crate::plan::manifest::Manifest;

use anyhow::Context;

use blob::{BlobStore, LocalBlobStore, MemBlobStore};
use state::{SqliteState, State};

/// The state directory: the override (`--state-dir` / `SLUICE_STATE_DIR`,
/// resolved by the caller) or `<repo>/.sluice`.
pub fn state_dir(repo_root: &Path, env_override: Option<&Path>) -> PathBuf {
    match env_override {
        Some(dir) => dir.to_path_buf(),
        None => repo_root.join(".sluice"),
    }
}

/// Creates `dir` (and its missing parents) private to its owner, mode 0700,
/// or tightens it to 0700 when it exists with a looser mode: the state
/// holds PHI. Returns a warning when it had to tighten an existing one.
pub fn secure_dir(dir: &Path) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 == 0 {
                return Ok(None);
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
            Ok(Some(format!(
                "the state directory {} was mode {mode:04o}, readable by other local users; \
                 it is now 0700",
                dir.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // `mode` is filtered by the umask; make sure of the result.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// A warning about the stores, for whoever watches stderr (the terminal,
/// or the daemon's journal) and the daemon's log.
pub(crate) fn warn(message: &str) {
    eprintln!("sluice: warning: {message}");
}

/// Where the blobs live: `<state_dir>/blobs` (the default), or a bucket
/// with a local cache in `<state_dir>/blob-cache` (built with `team`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BlobLocation {
    #[default]
    Local,
    #[cfg(feature = "team")]
    S3(s3::S3Location),
}

impl BlobLocation {
    /// Parses a blob store URL; `setting` names where it was written, for
    /// the error (`--blobs / SLUICE_BLOBS`, `blobs`). Without the `team`
    /// feature there is no store a URL can name.
    pub fn parse(url: &str, setting: &str) -> anyhow::Result<BlobLocation> {
        #[cfg(feature = "team")]
        {
            s3::S3Location::parse(url.trim())
                .map(BlobLocation::S3)
                .map_err(|why| {
                    anyhow::anyhow!(
                        "{setting} `{url}`: {why}; write s3://BUCKET[/PREFIX] (credentials, \
                         region and endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
                         AWS_REGION and AWS_ENDPOINT_URL), or leave it unset for the local store"
                    )
                })
        }
        #[cfg(not(feature = "team"))]
        {
            anyhow::bail!("{setting} `{url}`: {}", shared::BUILT_WITHOUT)
        }
    }
}

/// The blob store to open, and the size of its local cache when remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobOptions {
    pub location: BlobLocation,
    pub cache_size: u64,
}

impl Default for BlobOptions {
    fn default() -> Self {
        BlobOptions {
            location: BlobLocation::Local,
            cache_size: blob_cache::DEFAULT_CACHE_SIZE,
        }
    }
}

impl BlobOptions {
    /// From the optional URL and cache size settings (flags, environment
    /// or config file); `names` are the settings' names, for errors.
    pub fn from_settings(
        url: Option<&str>,
        cache_size: Option<&str>,
        names: (&str, &str),
    ) -> anyhow::Result<BlobOptions> {
        let location = match url.filter(|u| !u.trim().is_empty()) {
            Some(u) => BlobLocation::parse(u, names.0)?,
            None => BlobLocation::Local,
        };
        let cache_size = match cache_size {
            Some(text) => {
                blob_cache::parse_size(text).map_err(|why| anyhow::anyhow!("{}: {why}", names.1))?
            }
            None => blob_cache::DEFAULT_CACHE_SIZE,
        };
        Ok(BlobOptions {
            location,
            cache_size,
        })
    }
}

/// Opens the blob store `options` name, for the state directory `dir`.
pub fn open_blobs(dir: &Path, options: &BlobOptions) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match &options.location {
        BlobLocation::Local => Arc::new(LocalBlobStore::open(&dir.join("blobs"))?),
        #[cfg(feature = "team")]
        BlobLocation::S3(location) => {
            let opts = s3::S3Options::new(&dir.join("blob-cache"), options.cache_size);
            Arc::new(
                s3::S3BlobStore::open(location.clone(), &opts)
                    .with_context(|| format!("cannot open the blob store {location}"))?,
            )
        }
    })
}

/// The blob store and the state database, shared by the workers of a run.
#[derive(Clone)]
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    /// The action cache, refs and runs: `memo` itself, or PostgreSQL.
    pub state: Arc<dyn State>,
    /// The local state database in the state directory: the source-digest
    /// memo (this machine's files), whichever backend holds the state.
    pub memo: Arc<SqliteState>,
    /// Parsed manifests by digest: content-addressed, so never stale. A
    /// run reads every pipeline's production manifest, and the daemon
    /// reads the same ones push after push.
    pub manifests: Arc<ManifestCache>,
    /// The shared work queue (a daemon on PostgreSQL): cache misses become
    /// tasks that any worker computes; `None` runs them on this machine.
    pub tasks: Option<Arc<dyn crate::exec::task::TaskQueue>>,
}

/// Parsed manifests, by the digest of their bytes. Bounded: when full it
/// starts again empty, which costs one re-parse each.
#[derive(Debug, Default)]
pub struct ManifestCache {
    map: std::sync::Mutex<std::collections::HashMap<Digest, Arc<Manifest>>>,
}

impl ManifestCache {
    /// Manifests kept at most (a production manifest per pipeline, and
    /// the runs that will be promoted next).
    const CAPACITY: usize = 1024;

    pub fn get(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(digest).cloned()
    }

    pub fn insert(&self, digest: Digest, manifest: Arc<Manifest>) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(digest, manifest);
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Opens (creating on first use) the stores in `dir`: blobs under
    /// `dir/blobs`, the database at `dir/state.db`.
    pub fn open(dir: &Path) -> anyhow::Result<Stores> {
        Stores::open_with(dir, &BlobOptions::default(), None)
    }

    /// [`Stores::open`] with the blob store `blobs` names, and the state
    /// on PostgreSQL when `shared` is given (the local database then holds
    /// only the source memo).
    pub fn open_with(
        dir: &Path,
        blobs: &BlobOptions,
        shared: Option<&PgConnect>,
    ) -> anyhow::Result<Stores> {
        if let Some(warning) = secure_dir(dir)? {
            warn(&warning);
        }
        // The default state dir sits inside the analyst's repository and
        // holds PHI: a `git add .` must never pick it up.
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "# sluice state: never commit (may hold PHI)\n*\n")
                .with_context(|| format!("cannot write {}", ignore.display()))?;
        }
        let blobs = open_blobs(dir, blobs)?;
        let memo = Arc::new(SqliteState::open(&dir.join("state.db"))?);
        let state: Arc<dyn State> = match shared {
            Some(connect) => shared::open_state(connect, shared::CLI_SCHEMA)?,
            None => Arc::clone(&memo) as Arc<dyn State>,
        };
        Ok(Stores {
            blobs,
            state,
            memo,
            manifests: Arc::default(),
            tasks: None,
        })
    }

    /// In-memory stores, for tests.
    pub fn in_memory() -> anyhow::Result<Stores> {
        let memo = Arc::new(SqliteState::open_in_memory()?);
        Ok(Stores {
            blobs: Arc::new(MemBlobStore::new()),
            state: Arc::clone(&memo) as Arc<dyn State>,
            memo,
            manifests: Arc::default(),
            tasks: None,
        })
    }
}

/// The state backends, empty: the contract tests of `state` and `queue`
/// run on each (SQLite, and PostgreSQL in a build with `team`).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_backends() -> Vec<Arc<dyn State>> {
    #[cfg(feature = "team")]
    {
        pg::both_backends()
    }
    #[cfg(not(feature = "team"))]
    {
        vec![Arc::new(SqliteState::open_in_memory().unwrap())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_defaults_to_dot_sluice() {
        let repo = Path::new("/repo");
        assert_eq!(state_dir(repo, None), PathBuf::from("/repo/.sluice"));
        assert_eq!(
            state_dir(repo, Some(Path::new("/var/lib/sluice"))),
            PathBuf::from("/var/lib/sluice")
        );
    }

    #[test]
    fn open_lays_out_the_state_dir_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(".sluice");
        let digest = {
            let stores = Stores::open(&dir).unwrap();
            let d = stores.blobs.put(b"manifest").unwrap();
            stores.state.ref_set("production/p", &d).unwrap();
            d
        };
        assert!(dir.join("blobs/sha256").is_dir());
        assert!(dir.join("blobs/tmp").is_dir());
        assert!(dir.join("state.db").is_file());
        assert_eq!(
            std::fs::read_to_string(dir.join(".gitignore"))
                .unwrap()
                .lines()
                .last(),
            Some("*")
        );
        let stores = Stores::open(&dir).unwrap();
        assert_eq!(stores.state.ref_get("production/p").unwrap(), Some(digest));
        assert_eq!(stores.blobs.get(&digest).unwrap(), b"manifest");
    }

    #[test]
    fn in_memory_stores_work() {
        let stores = Stores::in_memory().unwrap();
        let d = stores.blobs.put(b"x").unwrap();
        assert!(stores.blobs.contains(&d));
        assert_eq!(stores.state.ref_get("r").unwrap(), None);
    }
}
