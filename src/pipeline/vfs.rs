//! The view a node resolves in: a narrow read-only file-system trait, the
//! built-in layer of actions, an overlay of the two, and an in-memory
//! implementation for tests.
//!
//! Implementations that touch the disk or git live outside this pure layer
//! (`crate::worktree`, `crate::git`); this module only defines the contract.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::path::RepoPath;

/// What a directory entry is, after following symlinks that stay inside the
/// repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// Something that cannot be read as part of the repository: a symlink
    /// leaving the tree, a dangling link, a submodule, a device. The string
    /// says which, for the diagnostic.
    Unusable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VfsError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Io(String),
}

/// Read-only access to one version of a repository tree.
pub trait Vfs {
    /// The kind of the entry at `path`, or `NotFound`.
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError>;
    /// The entries of a directory, sorted by name.
    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError>;
    /// The bytes of a file.
    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError>;
}

/// The built-in layer: the actions every repository can include.
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    ("action/sql/sqlite", "-- @engine sqlite\n"),
    ("action/python", "# @command python3 {script}\n"),
    ("action/bash", "# @command bash {script}\n"),
    ("action/r", "# @command Rscript {script}\n"),
];

/// A tree held in memory: the built-in layer, and the fake file system of
/// the unit tests.
#[derive(Debug, Default, Clone)]
pub struct MemVfs {
    files: BTreeMap<RepoPath, Arc<[u8]>>,
    /// Paths that exist but cannot be used (a symlink out of the tree).
    unusable: BTreeMap<RepoPath, String>,
}

impl MemVfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in action layer.
    pub fn builtin() -> Self {
        let mut vfs = MemVfs::new();
        for (path, text) in BUILTIN_FILES {
            vfs.insert(path, text.as_bytes());
        }
        vfs
    }

    /// Adds a file; `path` must be a valid repo path.
    pub fn insert(&mut self, path: &str, bytes: impl Into<Vec<u8>>) -> &mut Self {
        let p = RepoPath::parse(path).expect("test paths are valid");
        self.files.insert(p, Arc::from(bytes.into()));
        self
    }

    /// Marks `path` as an entry that cannot be used (e.g. an escaping symlink).
    pub fn insert_unusable(&mut self, path: &str, why: &str) -> &mut Self {
        let p = RepoPath::parse(path).expect("test paths are valid");
        self.unusable.insert(p, why.to_string());
        self
    }

    fn is_dir(&self, path: &RepoPath) -> bool {
        if path.is_root() {
            return true;
        }
        let prefix = format!("{}/", path.as_str());
        self.files
            .keys()
            .chain(self.unusable.keys())
            .any(|p| p.as_str().starts_with(&prefix))
    }
}

impl Vfs for MemVfs {
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        if self.files.contains_key(path) {
            Ok(EntryKind::File)
        } else if let Some(why) = self.unusable.get(path) {
            Ok(EntryKind::Unusable(why.clone()))
        } else if self.is_dir(path) {
            Ok(EntryKind::Dir)
        } else {
            Err(VfsError::NotFound)
        }
    }

    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        if !self.is_dir(path) {
            return Err(VfsError::NotFound);
        }
        let prefix = if path.is_root() {
            String::new()
        } else {
            format!("{}/", path.as_str())
        };
        let mut out: BTreeMap<String, EntryKind> = BTreeMap::new();
        let all = self
            .files
            .keys()
            .map(|p| (p, None))
            .chain(self.unusable.iter().map(|(p, w)| (p, Some(w))));
        for (p, unusable) in all {
            let Some(rest) = p.as_str().strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((dir, _)) => {
                    out.insert(dir.to_string(), EntryKind::Dir);
                }
                None => {
                    let kind = match unusable {
                        Some(why) => EntryKind::Unusable(why.clone()),
                        None => EntryKind::File,
                    };
                    out.insert(rest.to_string(), kind);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(name, kind)| DirEntry { name, kind })
            .collect())
    }

    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        if let Some(why) = self.unusable.get(path) {
            return Err(VfsError::Unusable(why.clone()));
        }
        self.files.get(path).cloned().ok_or(VfsError::NotFound)
    }
}

/// The repository layered over the built-in actions: the repository wins,
/// so a repo may add actions under `action/`, and the built-ins fill in
/// whatever it does not define.
pub struct Layered<'a> {
    repo: &'a dyn Vfs,
    builtin: MemVfs,
}

impl<'a> Layered<'a> {
    pub fn new(repo: &'a dyn Vfs) -> Self {
        Layered {
            repo,
            builtin: MemVfs::builtin(),
        }
    }

    /// True when `path` is served by the built-in layer.
    pub fn is_builtin(&self, path: &RepoPath) -> bool {
        matches!(self.repo.kind(path), Err(VfsError::NotFound)) && self.builtin.kind(path).is_ok()
    }
}

impl Vfs for Layered<'_> {
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        match self.repo.kind(path) {
            Err(VfsError::NotFound) => self.builtin.kind(path),
            other => other,
        }
    }

    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        match self.repo.read_dir(path) {
            Err(VfsError::NotFound) => self.builtin.read_dir(path),
            other => other,
        }
    }

    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        match self.repo.read_file(path) {
            Err(VfsError::NotFound) => self.builtin.read_file(path),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_vfs_lists_dirs_and_files() {
        let mut v = MemVfs::new();
        v.insert("a/x.sql", "1")
            .insert("a/b/y.sql", "2")
            .insert("ab.sql", "3");
        let p = RepoPath::parse("a").unwrap();
        assert_eq!(v.kind(&p), Ok(EntryKind::Dir));
        let names: Vec<_> = v
            .read_dir(&p)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["b", "x.sql"]);
        assert_eq!(
            v.kind(&RepoPath::parse("a/x.sql").unwrap()),
            Ok(EntryKind::File)
        );
        assert_eq!(
            v.kind(&RepoPath::parse("zz").unwrap()),
            Err(VfsError::NotFound)
        );
    }

    #[test]
    fn layered_prefers_repo_and_falls_back_to_builtin() {
        let mut repo = MemVfs::new();
        repo.insert("action/julia", "# @command julia {script}\n");
        let l = Layered::new(&repo);
        let sqlite = RepoPath::parse("action/sql/sqlite").unwrap();
        assert_eq!(l.kind(&sqlite), Ok(EntryKind::File));
        assert!(l.is_builtin(&sqlite));
        let julia = RepoPath::parse("action/julia").unwrap();
        assert!(!l.is_builtin(&julia));
        assert!(l.read_file(&julia).is_ok());
    }
}
