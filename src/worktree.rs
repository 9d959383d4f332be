//! Temporary working-tree VFS (replaced by the real one).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pipeline::path::RepoPath;
use crate::pipeline::vfs::{DirEntry, EntryKind, Vfs, VfsError};

pub struct WorktreeVfs {
    root: PathBuf,
}

impl WorktreeVfs {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        Ok(WorktreeVfs {
            root: root.canonicalize()?,
        })
    }
    fn full(&self, p: &RepoPath) -> PathBuf {
        if p.is_root() {
            self.root.clone()
        } else {
            self.root.join(p.as_str())
        }
    }
}

fn err(e: std::io::Error) -> VfsError {
    if e.kind() == std::io::ErrorKind::NotFound {
        VfsError::NotFound
    } else {
        VfsError::Io(e.to_string())
    }
}

impl Vfs for WorktreeVfs {
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        let m = std::fs::metadata(self.full(path)).map_err(err)?;
        Ok(if m.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        })
    }
    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.full(path)).map_err(err)? {
            let e = e.map_err(err)?;
            let name = e.file_name().to_string_lossy().to_string();
            if path.is_root() && name == ".git" {
                continue;
            }
            let kind = self.kind(&path.child(&name))?;
            out.push(DirEntry { name, kind });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        Ok(Arc::from(std::fs::read(self.full(path)).map_err(err)?))
    }
}
