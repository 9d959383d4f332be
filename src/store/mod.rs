//! Where sluice keeps what it computes: content-addressed blobs and the
//! SQLite state database, in one state directory (`.sluice/` by default).

pub mod blob;
pub mod queue;
pub mod source;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use blob::{BlobStore, LocalBlobStore, MemBlobStore};
use state::StateDb;

/// The state directory: the override (`--state-dir` / `SLUICE_STATE_DIR`,
/// resolved by the caller) or `<repo>/.sluice`.
pub fn state_dir(repo_root: &Path, env_override: Option<&Path>) -> PathBuf {
    match env_override {
        Some(dir) => dir.to_path_buf(),
        None => repo_root.join(".sluice"),
    }
}

/// The blob store and the state database, shared by the workers of a run.
#[derive(Clone)]
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub state: Arc<StateDb>,
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
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // The default state dir sits inside the analyst's repository and
        // holds PHI: a `git add .` must never pick it up.
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "# sluice state: never commit (may hold PHI)\n*\n")
                .with_context(|| format!("cannot write {}", ignore.display()))?;
        }
        let blobs = LocalBlobStore::open(&dir.join("blobs"))?;
        let state = StateDb::open(&dir.join("state.db"))?;
        Ok(Stores {
            blobs: Arc::new(blobs),
            state: Arc::new(state),
        })
    }

    /// In-memory stores, for tests.
    pub fn in_memory() -> anyhow::Result<Stores> {
        Ok(Stores {
            blobs: Arc::new(MemBlobStore::new()),
            state: Arc::new(StateDb::open_in_memory()?),
        })
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
