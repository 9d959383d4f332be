//! The view a node resolves in: a narrow read-only file-system trait, the
//! built-in layer of actions, an overlay of the two, and an in-memory
//! implementation for tests.
//!
//! Implementations that touch the disk or git live outside this pure layer
//! (`crate::worktree`, `crate::git`); this module only defines the contract.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use unicode_normalization::UnicodeNormalization;

use super::attributes::{self, Rule};
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
    /// True when the last component of `path` is itself a symlink (not
    /// followed), so that glob expansion can refuse to walk through it.
    fn is_symlink(&self, _path: &RepoPath) -> bool {
        false
    }
}

/// Why a git submodule (a gitlink) cannot be read, in every VFS alike: on
/// disk it is an empty or foreign directory, in git objects a commit id.
pub const SUBMODULE_REASON: &str = "a git submodule (gitlink): its files are not part of this repository's commit, so a checkout and git objects disagree on them; copy the files in instead of using a submodule";

/// Why a symlink whose target ends in `/` but names a file is refused: a
/// checkout cannot follow it (the kernel says ENOTDIR).
pub fn trailing_slash_reason(target: &str) -> String {
    format!(
        "symlink to {target} ends in `/` but names a file, which a checkout cannot follow; drop the trailing `/`"
    )
}

/// Why a symlink that loops (or chains more than 40 links) is refused.
pub fn loop_reason(target: &str) -> String {
    format!("symlink to {target} loops (too many levels of symlinks)")
}

/// Why a path below the symlink `prefix` (to `target`) that leaves the
/// repository is refused.
pub fn escape_on_way_reason(prefix: &RepoPath, target: &str) -> String {
    format!("`{prefix}` is a symlink to {target}, which leaves the repository")
}

/// Why a path below the symlink `prefix` (to `target`) that loops is
/// refused.
pub fn unresolvable_on_way_reason(prefix: &RepoPath, target: &str) -> String {
    format!("`{prefix}` is a symlink to {target} that cannot be resolved")
}

/// Why a tree entry that no checkout can hold (`.git`, `.`, `..`, an empty
/// name, a name with `/` or NUL) is refused.
pub fn impossible_entry_reason(name: &str) -> String {
    format!(
        "the commit's tree has an entry named {name:?}, which git never writes into a checkout (the tree was built by hand); remove the entry"
    )
}

/// True for a tree entry name no checkout can hold.
pub fn is_impossible_name(name: &str) -> bool {
    name.is_empty()
        || name == "."
        || name == ".."
        || name.eq_ignore_ascii_case(".git")
        || name.contains(['/', '\0'])
}

/// The key under which names collide on case-insensitive, normalising
/// file systems (macOS, Windows): NFC, then lower case.
fn folded(name: &str) -> String {
    if name.is_ascii() {
        return name.to_ascii_lowercase();
    }
    name.nfc().collect::<String>().to_lowercase()
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

/// A VFS seen as every checkout of it would agree: the rules that do not
/// depend on where the tree comes from (a directory on disk or git
/// objects), applied on top of either, so that both refuse the same files
/// with the same message.
///
/// - Names that collide on macOS and Windows (case, or NFC against NFD)
///   are all unusable: a checkout there keeps only one of them.
/// - A file that `.gitattributes` (`working-tree-encoding`, `ident`,
///   `filter`) would rewrite on checkout cannot be read; the message names
///   the line. A file that is a Git LFS pointer cannot be read either.
pub struct CheckoutView {
    inner: Box<dyn Vfs>,
    /// The parsed `.gitattributes` of each directory asked about.
    attributes: RefCell<HashMap<RepoPath, Rc<Vec<Rule>>>>,
    /// Per directory, the non-empty `.gitattributes` files that apply to
    /// its files (its own and its ancestors'), shallowest first.
    applying: RefCell<HashMap<RepoPath, Rc<AttributeFiles>>>,
}

type AttributeFiles = Vec<(RepoPath, Rc<Vec<Rule>>)>;

impl CheckoutView {
    pub fn new(inner: Box<dyn Vfs>) -> Self {
        CheckoutView {
            inner,
            attributes: RefCell::new(HashMap::new()),
            applying: RefCell::new(HashMap::new()),
        }
    }

    /// The rules of `dir/.gitattributes` (none when it is absent or cannot
    /// be read).
    fn rules(&self, dir: &RepoPath) -> Rc<Vec<Rule>> {
        if let Some(r) = self.attributes.borrow().get(dir) {
            return Rc::clone(r);
        }
        let file = dir.child(".gitattributes");
        let rules = match self.inner.read_file(&file) {
            Ok(bytes) => attributes::parse(&String::from_utf8_lossy(&bytes)),
            Err(_) => Vec::new(),
        };
        let rules = Rc::new(rules);
        self.attributes
            .borrow_mut()
            .insert(dir.clone(), Rc::clone(&rules));
        rules
    }

    /// The `.gitattributes` files that apply to the files of `dir`.
    fn applying(&self, dir: &RepoPath) -> Rc<AttributeFiles> {
        if let Some(a) = self.applying.borrow().get(dir) {
            return Rc::clone(a);
        }
        let mut files = if dir.is_root() {
            Vec::new()
        } else {
            (*self.applying(&dir.parent())).clone()
        };
        let own = self.rules(dir);
        if !own.is_empty() {
            files.push((dir.clone(), own));
        }
        let files = Rc::new(files);
        self.applying
            .borrow_mut()
            .insert(dir.clone(), Rc::clone(&files));
        files
    }

    /// Why a checkout would not hold the committed bytes of `path`.
    fn transformed(&self, path: &RepoPath) -> Option<String> {
        let applying = self.applying(&path.parent());
        if applying.is_empty() {
            return None;
        }
        let files: Vec<(RepoPath, &[Rule])> = applying
            .iter()
            .map(|(d, r)| (d.clone(), r.as_slice()))
            .collect();
        attributes::transforming(path, &files)
    }
}

impl Vfs for CheckoutView {
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        self.inner.kind(path)
    }

    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        let mut entries = self.inner.read_dir(path)?;
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_key.entry(folded(&e.name)).or_default().push(i);
        }
        for same in by_key.values().filter(|v| v.len() > 1) {
            let names: Vec<String> = same
                .iter()
                .map(|&i| format!("`{}`", entries[i].name))
                .collect();
            let why = format!(
                "{} are one name on macOS and Windows (case or Unicode normalisation), where a checkout keeps only one of them; rename all but one",
                names.join(" and ")
            );
            for &i in same {
                entries[i].kind = EntryKind::Unusable(why.clone());
            }
        }
        Ok(entries)
    }

    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        let bytes = self.inner.read_file(path)?;
        if let Some(why) = self.transformed(path) {
            return Err(VfsError::Unusable(why));
        }
        if attributes::is_lfs_pointer(&bytes) {
            return Err(VfsError::Unusable(
                attributes::LFS_POINTER_REASON.to_string(),
            ));
        }
        Ok(bytes)
    }

    fn is_symlink(&self, path: &RepoPath) -> bool {
        self.inner.is_symlink(path)
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

    fn is_symlink(&self, path: &RepoPath) -> bool {
        self.repo.is_symlink(path)
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

    fn checkout(files: &[(&str, &str)]) -> CheckoutView {
        let mut v = MemVfs::new();
        for (path, text) in files {
            v.insert(path, *text);
        }
        CheckoutView::new(Box::new(v))
    }

    #[test]
    fn checkout_view_refuses_names_one_on_macos_and_windows() {
        let v = checkout(&[
            ("a/Patient.sql", "1"),
            ("a/patient.sql", "2"),
            ("a/Caf\u{e9}.sql", "3"),
            ("a/Cafe\u{301}.sql", "4"),
            ("a/Other.sql", "5"),
        ]);
        let listing = v.read_dir(&RepoPath::parse("a").unwrap()).unwrap();
        let unusable: Vec<&str> = listing
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Unusable(_)))
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(unusable.len(), 4, "{listing:?}");
        assert!(!unusable.contains(&"Other.sql"));
        let patient = listing.iter().find(|e| e.name == "patient.sql").unwrap();
        assert!(
            matches!(&patient.kind, EntryKind::Unusable(w) if w.starts_with("`Patient.sql` and `patient.sql` are one name")),
            "{patient:?}"
        );
    }

    #[test]
    fn checkout_view_refuses_rewritten_files_and_lfs_pointers() {
        let v = checkout(&[
            (".gitattributes", "*.sql text eol=crlf\n"),
            ("a/.gitattributes", "X.sql ident\n"),
            ("a/X.sql", "SELECT 1;\n"),
            ("a/Y.sql", "SELECT 2;\n"),
            (
                "a/P.sql",
                "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
            ),
        ]);
        let read = |p: &str| v.read_file(&RepoPath::parse(p).unwrap());
        assert!(
            matches!(read("a/X.sql"), Err(VfsError::Unusable(w)) if w.starts_with("a/.gitattributes:1 (`X.sql ident`)"))
        );
        assert_eq!(&*read("a/Y.sql").unwrap(), b"SELECT 2;\n");
        assert!(
            matches!(read("a/P.sql"), Err(VfsError::Unusable(w)) if w.contains("Git LFS pointer"))
        );
        // The kind is unchanged: the refusal comes when the file is read.
        assert_eq!(
            v.kind(&RepoPath::parse("a/X.sql").unwrap()),
            Ok(EntryKind::File)
        );
    }

    #[test]
    fn impossible_names() {
        for name in ["", ".", "..", ".git", ".GIT", "a/b", "a\0b"] {
            assert!(is_impossible_name(name), "{name:?}");
        }
        for name in [".gitattributes", "git", "..a", ".gitx"] {
            assert!(!is_impossible_name(name), "{name:?}");
        }
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
