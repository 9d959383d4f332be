//! Temporary stub (replaced by the gix-backed reader).
use std::path::Path;
use std::sync::Arc;

use crate::pipeline::path::RepoPath;
use crate::pipeline::vfs::{DirEntry, EntryKind, Vfs, VfsError};

pub struct GitVfs;

impl GitVfs {
    pub fn open(_root: &Path, _rev: &str) -> anyhow::Result<GitVfs> {
        anyhow::bail!("not yet")
    }
    pub fn commit_id(&self) -> String {
        String::new()
    }
}

impl Vfs for GitVfs {
    fn kind(&self, _: &RepoPath) -> Result<EntryKind, VfsError> {
        Err(VfsError::NotFound)
    }
    fn read_dir(&self, _: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        Err(VfsError::NotFound)
    }
    fn read_file(&self, _: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        Err(VfsError::NotFound)
    }
}
