//! The working tree on disk as a read-only [`Vfs`], refusing symlinks that
//! lead out of the repository and submodules, as the git VFS does.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::pipeline::path::RepoPath;
use crate::pipeline::vfs::{
    DirEntry, EntryKind, SUBMODULE_REASON, Vfs, VfsError, escape_on_way_reason, loop_reason,
    trailing_slash_reason, unresolvable_on_way_reason,
};

/// A directory on disk (the repository root) served as a [`Vfs`].
///
/// Every path is resolved to its canonical form and must stay below the
/// canonical root, so a symlink anywhere on the way (the entry itself or a
/// directory above it) cannot expose files outside the repository.
#[derive(Debug, Clone)]
pub struct WorktreeVfs {
    root: PathBuf,
    /// The submodules (gitlinks) of the index, as paths below `root`: an
    /// uninitialised one is a plain empty directory on disk. Read on first
    /// need.
    gitlinks: OnceLock<HashSet<PathBuf>>,
}

/// Whether the path given to [`WorktreeVfs::climbs_out`] is the one asked
/// about, or a directory above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Itself,
    Below,
}

/// Where a repo path lands on disk once every symlink has been followed.
enum Located {
    File(PathBuf),
    Dir(PathBuf),
    Unusable(String),
}

impl WorktreeVfs {
    /// Serves the tree below `root`, which is canonicalised once here so that
    /// the containment checks compare like with like.
    pub fn new(root: &Path) -> io::Result<Self> {
        let root = fs::canonicalize(root)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(WorktreeVfs {
            root,
            gitlinks: OnceLock::new(),
        })
    }

    /// True when the directory `real` (canonical, below the root) is a
    /// submodule: a directory holding its own `.git` (a checked-out
    /// submodule, or a repository nested inside), or an empty one that the
    /// index says is a gitlink (a submodule not checked out). The index is
    /// read only when an empty directory is met, which git itself never
    /// leaves behind otherwise.
    fn is_submodule(&self, real: &Path) -> bool {
        if real == self.root {
            return false;
        }
        if fs::symlink_metadata(real.join(".git")).is_ok() {
            return true;
        }
        let empty = fs::read_dir(real).is_ok_and(|mut it| it.next().is_none());
        if !empty {
            return false;
        }
        let gitlinks = self.gitlinks.get_or_init(|| index_gitlinks(&self.root));
        real.strip_prefix(&self.root)
            .is_ok_and(|rel| gitlinks.contains(rel))
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn disk_path(&self, path: &RepoPath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    fn io_error(disk: &Path, err: &io::Error) -> VfsError {
        VfsError::Io(format!("{}: {err}", disk.display()))
    }

    /// True for `.git` or anything below it. Git's own directory is not part
    /// of the tree, and hiding it also keeps a symlink from reaching into it.
    fn is_git_dir(&self, real: &Path) -> bool {
        real.strip_prefix(&self.root)
            .ok()
            .and_then(|rel| rel.components().next())
            .is_some_and(|first| first.as_os_str() == ".git")
    }

    /// Resolves `path` on disk, following symlinks only while they stay
    /// inside the root.
    fn locate(&self, path: &RepoPath) -> Result<Located, VfsError> {
        if path.components().next() == Some(".git") {
            return Err(VfsError::NotFound);
        }
        let disk = self.disk_path(path);
        let real = match fs::canonicalize(&disk) {
            Ok(real) => real,
            Err(err) => return self.unresolvable(path, &disk, &err),
        };
        if !real.starts_with(&self.root) {
            return Ok(Located::Unusable(self.escape_reason(path, &real)));
        }
        // A link on the way was followed: refuse it, as git objects do, if
        // its target climbs above the root even to come back in (a checkout
        // elsewhere, under another directory name, would not come back).
        if real != disk
            && let Some(why) = self.climbs_out(path, Asked::Itself)
        {
            return Ok(Located::Unusable(why));
        }
        if self.is_git_dir(&real) {
            return Ok(Located::Unusable(format!(
                "`{path}` is a symlink into .git, which is not part of the repository"
            )));
        }
        let meta = fs::metadata(&real).map_err(|err| Self::io_error(&real, &err))?;
        let file_type = meta.file_type();
        Ok(if file_type.is_dir() {
            if self.is_submodule(&real) {
                Located::Unusable(SUBMODULE_REASON.to_string())
            } else {
                Located::Dir(real)
            }
        } else if file_type.is_file() {
            Located::File(real)
        } else {
            Located::Unusable(special_file_reason(&disk))
        })
    }

    /// Explains why `disk` could not be canonicalised: it is missing, a
    /// symlink on the way dangles or loops, or the disk failed.
    fn unresolvable(
        &self,
        path: &RepoPath,
        disk: &Path,
        err: &io::Error,
    ) -> Result<Located, VfsError> {
        let missing = matches!(
            err.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        );
        // `symlink_metadata` does not follow the last component, so it tells a
        // dangling or looping link apart from a path that is simply absent.
        match fs::symlink_metadata(disk) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = link_text(disk);
                let not_dir = err.kind() == io::ErrorKind::NotADirectory;
                // Linux's ELOOP: the link loops or chains too many links.
                let looped = err.raw_os_error() == Some(40);
                let climbs = || {
                    self.real_components(&path.parent())
                        .is_some_and(|from| self.target_climbs_out(from, &target, &mut 0))
                };
                Ok(Located::Unusable(if not_dir && target.ends_with('/') {
                    trailing_slash_reason(&target)
                } else if looped {
                    loop_reason(&target)
                } else if missing && climbs() {
                    format!("symlink to {target} leaves the repository")
                } else if missing {
                    format!("dangling symlink to {target}")
                } else {
                    format!("symlink to {target} cannot be resolved: {err}")
                }))
            }
            // Below a submodule or a link out of the repository, as git
            // objects say, rather than "not found".
            Err(_) if missing => match self.refusal_on_way(path) {
                Some(why) => Ok(Located::Unusable(why)),
                None => Err(VfsError::NotFound),
            },
            // The last component is not a link, yet the path cannot be
            // resolved: a link higher up loops, or the disk refused us.
            _ => match self.first_symlink_on_way(path) {
                Some(reason) => Ok(Located::Unusable(reason)),
                None => Err(Self::io_error(disk, err)),
            },
        }
    }

    /// Names the symlink that takes `path` outside the root. Only called on
    /// the rare refusal path, so walking the components again is cheap enough.
    fn escape_reason(&self, path: &RepoPath, real: &Path) -> String {
        let mut prefix = RepoPath::root();
        for name in path.components() {
            prefix = prefix.child(name);
            let disk = self.disk_path(&prefix);
            let is_link = fs::symlink_metadata(&disk).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            let escapes = !fs::canonicalize(&disk).is_ok_and(|r| r.starts_with(&self.root));
            if escapes {
                let target = link_text(&disk);
                return if prefix == *path {
                    format!("symlink to {target} leaves the repository")
                } else {
                    escape_on_way_reason(&prefix, &target)
                };
            }
        }
        format!(
            "`{path}` resolves to {}, outside the repository",
            real.display()
        )
    }

    /// The first symlink on `path` (as named) whose target, walked one
    /// component at a time from where the link really is, climbs above the
    /// root: the refusal, worded as git objects word it.
    fn climbs_out(&self, path: &RepoPath, asked: Asked) -> Option<String> {
        let mut prefix = RepoPath::root();
        let mut names = path.components().peekable();
        while let Some(name) = names.next() {
            let parent = prefix.clone();
            prefix = prefix.child(name);
            let disk = self.disk_path(&prefix);
            let is_link = fs::symlink_metadata(&disk).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            let from = self.real_components(&parent)?;
            let target = link_text(&disk);
            if self.target_climbs_out(from, &target, &mut 0) {
                return Some(if names.peek().is_none() && asked == Asked::Itself {
                    format!("symlink to {target} leaves the repository")
                } else {
                    escape_on_way_reason(&prefix, &target)
                });
            }
        }
        None
    }

    /// The components of where `dir` really is below the root.
    fn real_components(&self, dir: &RepoPath) -> Option<Vec<String>> {
        let real = fs::canonicalize(self.disk_path(dir)).ok()?;
        let rel = real.strip_prefix(&self.root).ok()?;
        rel.components()
            .map(|c| c.as_os_str().to_str().map(str::to_string))
            .collect()
    }

    /// True when `target`, walked from the directory `from` (real
    /// components below the root), passes above the root. Links met on the
    /// way are walked the same way; a loop or a missing entry ends the walk
    /// (other checks name those).
    fn target_climbs_out(&self, from: Vec<String>, target: &str, depth: &mut u32) -> bool {
        if target.starts_with('/') {
            return true;
        }
        let mut here = from;
        for name in target.split('/') {
            match name {
                "" | "." => {}
                ".." => {
                    if here.pop().is_none() {
                        return true;
                    }
                }
                _ => {
                    here.push(name.to_string());
                    let disk = self.root.join(here.join("/"));
                    let Ok(meta) = fs::symlink_metadata(&disk) else {
                        return false;
                    };
                    if !meta.file_type().is_symlink() {
                        continue;
                    }
                    *depth += 1;
                    if *depth > 40 {
                        return false;
                    }
                    here.pop();
                    if self.target_climbs_out(here.clone(), &link_text(&disk), depth) {
                        return true;
                    }
                    let Some(real) = fs::canonicalize(&disk)
                        .ok()
                        .and_then(|r| r.strip_prefix(&self.root).ok().map(Path::to_path_buf))
                    else {
                        return false;
                    };
                    let Some(comps) = real
                        .components()
                        .map(|c| c.as_os_str().to_str().map(str::to_string))
                        .collect::<Option<Vec<String>>>()
                    else {
                        return false;
                    };
                    here = comps;
                }
            }
        }
        false
    }

    /// For a missing `path`, a directory above it that is a submodule or a
    /// symlink leaving the repository: the reason git objects give.
    fn refusal_on_way(&self, path: &RepoPath) -> Option<String> {
        if let Some(why) = self.climbs_out(&path.parent(), Asked::Below) {
            return Some(why);
        }
        let mut prefix = RepoPath::root();
        let mut names = path.components().peekable();
        while let Some(name) = names.next() {
            if names.peek().is_none() {
                break;
            }
            prefix = prefix.child(name);
            let disk = self.disk_path(&prefix);
            let real = fs::canonicalize(&disk).ok()?;
            if !real.starts_with(&self.root) {
                return Some(escape_on_way_reason(&prefix, &link_text(&disk)));
            }
            if real.is_dir() && self.is_submodule(&real) {
                return Some(SUBMODULE_REASON.to_string());
            }
        }
        None
    }

    /// For an unresolvable path, the first symlink on it, if any, as the
    /// reason it cannot be used.
    fn first_symlink_on_way(&self, path: &RepoPath) -> Option<String> {
        let mut prefix = RepoPath::root();
        for name in path.components() {
            prefix = prefix.child(name);
            let disk = self.disk_path(&prefix);
            if fs::symlink_metadata(&disk).is_ok_and(|m| m.file_type().is_symlink()) {
                return Some(unresolvable_on_way_reason(&prefix, &link_text(&disk)));
            }
        }
        None
    }
}

/// The gitlinks of the index of the repository holding `root`, relative
/// to `root`; none when it is not in a git work tree.
fn index_gitlinks(root: &Path) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let Ok(repo) = gix::discover(root) else {
        return out;
    };
    let Some(workdir) = repo.workdir().and_then(|w| fs::canonicalize(w).ok()) else {
        return out;
    };
    let Ok(index) = repo.index_or_empty() else {
        return out;
    };
    for entry in index.entries() {
        if entry.mode != gix::index::entry::Mode::COMMIT {
            continue;
        }
        let Ok(path) = std::str::from_utf8(entry.path(&index)) else {
            continue;
        };
        if let Ok(rel) = workdir.join(path).strip_prefix(root) {
            out.insert(rel.to_path_buf());
        }
    }
    out
}

/// The text of a symlink, for messages.
fn link_text(disk: &Path) -> String {
    fs::read_link(disk)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|err| format!("<unreadable: {err}>"))
}

fn special_file_reason(disk: &Path) -> String {
    use std::os::unix::fs::FileTypeExt;
    let what = match fs::metadata(disk).map(|m| m.file_type()) {
        Ok(t) if t.is_socket() => "a socket",
        Ok(t) if t.is_fifo() => "a named pipe",
        Ok(t) if t.is_block_device() || t.is_char_device() => "a device",
        _ => "not a regular file or directory",
    };
    format!("{} is {what}", disk.display())
}

impl Vfs for WorktreeVfs {
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        Ok(match self.locate(path)? {
            Located::File(_) => EntryKind::File,
            Located::Dir(_) => EntryKind::Dir,
            Located::Unusable(why) => EntryKind::Unusable(why),
        })
    }

    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        let real = match self.locate(path)? {
            Located::Dir(real) => real,
            Located::File(_) => return Err(VfsError::NotFound),
            Located::Unusable(why) => return Err(VfsError::Unusable(why)),
        };
        // A symlink to the root (`self -> .`) lists the root too, so the
        // `.git` check looks at where we ended up, not at the path asked for.
        let at_root = real == self.root;
        let iter = fs::read_dir(&real).map_err(|err| Self::io_error(&real, &err))?;
        let mut out = Vec::new();
        for entry in iter {
            let entry = entry.map_err(|err| Self::io_error(&real, &err))?;
            let os_name = entry.file_name();
            if at_root && os_name == ".git" {
                continue;
            }
            let Some(name) = os_name.to_str().map(str::to_string) else {
                // A RepoPath is UTF-8, so such an entry could never be read
                // back; list it as unusable so the diagnostic can name it.
                out.push(DirEntry {
                    name: os_name.to_string_lossy().into_owned(),
                    kind: EntryKind::Unusable("file name is not valid UTF-8".to_string()),
                });
                continue;
            };
            let file_type = entry
                .file_type()
                .map_err(|err| Self::io_error(&entry.path(), &err))?;
            // `real` is canonical and inside the root, so plain files and
            // directories in it are too; only symlinks need resolving.
            let kind = if file_type.is_dir() {
                if self.is_submodule(&real.join(&name)) {
                    EntryKind::Unusable(SUBMODULE_REASON.to_string())
                } else {
                    EntryKind::Dir
                }
            } else if file_type.is_file() {
                EntryKind::File
            } else if file_type.is_symlink() {
                match self.kind(&path.child(&name)) {
                    Ok(kind) => kind,
                    // The entry vanished between listing and resolving it.
                    Err(VfsError::NotFound) => continue,
                    Err(err) => return Err(err),
                }
            } else {
                EntryKind::Unusable(special_file_reason(&entry.path()))
            };
            out.push(DirEntry { name, kind });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        match self.locate(path)? {
            Located::File(real) => fs::read(&real)
                .map(Arc::from)
                .map_err(|err| Self::io_error(&real, &err)),
            Located::Dir(_) => Err(VfsError::Io(format!("`{path}` is a directory"))),
            Located::Unusable(why) => Err(VfsError::Unusable(why)),
        }
    }

    fn is_symlink(&self, path: &RepoPath) -> bool {
        !path.is_root()
            && fs::symlink_metadata(self.disk_path(path)).is_ok_and(|m| m.file_type().is_symlink())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn p(s: &str) -> RepoPath {
        if s.is_empty() {
            RepoPath::root()
        } else {
            RepoPath::parse(s).unwrap()
        }
    }

    fn names(v: &WorktreeVfs, dir: &str) -> Vec<String> {
        v.read_dir(&p(dir))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A repo root inside a scratch directory, so that `..` from the root
    /// still lands somewhere we control.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        write(&root, "sluice.toml", "name = 'x'\n");
        write(&root, "src/a.sql", "select 1;\n");
        write(&root, "src/deep/b.sql", "select 2;\n");
        write(&root, ".hidden", "dot\n");
        write(tmp.path(), "outside/secret.txt", "secret\n");
        (tmp, root)
    }

    #[test]
    fn reads_files_and_sorted_dirs() {
        let (_tmp, root) = setup();
        write(&root, "src/0first.sql", "");
        let v = WorktreeVfs::new(&root).unwrap();
        assert_eq!(v.kind(&p("")), Ok(EntryKind::Dir));
        assert_eq!(v.kind(&p("src")), Ok(EntryKind::Dir));
        assert_eq!(v.kind(&p("src/a.sql")), Ok(EntryKind::File));
        assert_eq!(names(&v, "src"), vec!["0first.sql", "a.sql", "deep"]);
        assert_eq!(&*v.read_file(&p("src/deep/b.sql")).unwrap(), b"select 2;\n");
        // Dot-files other than .git are listed: the caller decides.
        assert_eq!(names(&v, ""), vec![".hidden", "sluice.toml", "src"]);
    }

    #[test]
    fn missing_paths_are_not_found() {
        let (_tmp, root) = setup();
        let v = WorktreeVfs::new(&root).unwrap();
        assert_eq!(v.kind(&p("nope")), Err(VfsError::NotFound));
        assert_eq!(v.kind(&p("sluice.toml/below")), Err(VfsError::NotFound));
        assert_eq!(v.read_file(&p("src/nope.sql")), Err(VfsError::NotFound));
        assert_eq!(v.read_dir(&p("nope")), Err(VfsError::NotFound));
        assert_eq!(v.read_dir(&p("sluice.toml")), Err(VfsError::NotFound));
        assert!(matches!(v.read_file(&p("src")), Err(VfsError::Io(_))));
    }

    #[test]
    fn hides_dot_git_of_a_real_repository() {
        let (_tmp, root) = setup();
        // GIT_DIR is dropped in case the tests run from a git hook, where it
        // would point `git init` at the enclosing repository.
        let status = Command::new("git")
            .args(["-c", "init.defaultBranch=main", "init", "-q"])
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(status.success());
        let v = WorktreeVfs::new(&root).unwrap();
        assert_eq!(names(&v, ""), vec![".hidden", "sluice.toml", "src"]);
        assert_eq!(v.kind(&p(".git")), Err(VfsError::NotFound));
        assert_eq!(v.read_file(&p(".git/HEAD")), Err(VfsError::NotFound));
        // A link into .git is refused rather than exposing git's internals.
        symlink(".git/HEAD", root.join("head")).unwrap();
        assert!(matches!(v.kind(&p("head")), Ok(EntryKind::Unusable(_))));
    }

    #[test]
    fn follows_symlinks_that_stay_inside() {
        let (_tmp, root) = setup();
        symlink("src/a.sql", root.join("alias.sql")).unwrap();
        symlink("deep", root.join("src/d")).unwrap();
        symlink("../sluice.toml", root.join("src/up.toml")).unwrap();
        let v = WorktreeVfs::new(&root).unwrap();
        assert_eq!(v.kind(&p("alias.sql")), Ok(EntryKind::File));
        assert_eq!(&*v.read_file(&p("alias.sql")).unwrap(), b"select 1;\n");
        assert_eq!(v.kind(&p("src/d")), Ok(EntryKind::Dir));
        assert_eq!(names(&v, "src/d"), vec!["b.sql"]);
        assert_eq!(&*v.read_file(&p("src/d/b.sql")).unwrap(), b"select 2;\n");
        assert_eq!(&*v.read_file(&p("src/up.toml")).unwrap(), b"name = 'x'\n");
        let listing = v.read_dir(&p("src")).unwrap();
        let d = listing.iter().find(|e| e.name == "d").unwrap();
        assert_eq!(d.kind, EntryKind::Dir);
    }

    #[test]
    fn refuses_symlinks_leaving_the_root() {
        let (_tmp, root) = setup();
        symlink("/etc", root.join("etc")).unwrap();
        symlink("../outside/secret.txt", root.join("secret.txt")).unwrap();
        symlink("../../outside", root.join("src/out")).unwrap();
        let v = WorktreeVfs::new(&root).unwrap();

        let why = "symlink to /etc leaves the repository".to_string();
        assert_eq!(v.kind(&p("etc")), Ok(EntryKind::Unusable(why.clone())));
        assert_eq!(v.read_dir(&p("etc")), Err(VfsError::Unusable(why)));
        let listing = v.read_dir(&p("")).unwrap();
        let etc = listing.iter().find(|e| e.name == "etc").unwrap();
        assert!(matches!(&etc.kind, EntryKind::Unusable(w) if w.contains("/etc")));

        assert!(matches!(
            v.read_file(&p("secret.txt")),
            Err(VfsError::Unusable(w)) if w == "symlink to ../outside/secret.txt leaves the repository"
        ));
        // An escaping directory on the way is refused too, even though the
        // file below it exists.
        assert!(matches!(
            v.read_file(&p("src/out/secret.txt")),
            Err(VfsError::Unusable(w)) if w.contains("`src/out`")
        ));
        assert!(matches!(
            v.read_file(&p("etc/passwd")),
            Err(VfsError::Unusable(_))
        ));
    }

    #[test]
    fn dangling_and_looping_symlinks_are_unusable() {
        let (_tmp, root) = setup();
        symlink("nowhere.sql", root.join("dangling.sql")).unwrap();
        symlink("loop_b", root.join("loop_a")).unwrap();
        symlink("loop_a", root.join("loop_b")).unwrap();
        let v = WorktreeVfs::new(&root).unwrap();
        assert_eq!(
            v.kind(&p("dangling.sql")),
            Ok(EntryKind::Unusable(
                "dangling symlink to nowhere.sql".to_string()
            ))
        );
        assert!(matches!(
            v.read_file(&p("dangling.sql")),
            Err(VfsError::Unusable(_))
        ));
        assert!(matches!(v.kind(&p("loop_a")), Ok(EntryKind::Unusable(_))));
        let listing = v.read_dir(&p("")).unwrap();
        assert!(
            listing
                .iter()
                .filter(|e| e.name.starts_with("loop") || e.name == "dangling.sql")
                .all(|e| matches!(e.kind, EntryKind::Unusable(_)))
        );
    }

    #[test]
    fn fifo_is_unusable() {
        let (_tmp, root) = setup();
        let status = Command::new("mkfifo")
            .arg(root.join("pipe"))
            .status()
            .unwrap();
        assert!(status.success());
        let v = WorktreeVfs::new(&root).unwrap();
        assert!(
            matches!(v.kind(&p("pipe")), Ok(EntryKind::Unusable(w)) if w.contains("named pipe"))
        );
        assert!(matches!(
            v.read_file(&p("pipe")),
            Err(VfsError::Unusable(_))
        ));
        let listing = v.read_dir(&p("")).unwrap();
        let pipe = listing.iter().find(|e| e.name == "pipe").unwrap();
        assert!(matches!(pipe.kind, EntryKind::Unusable(_)));
    }

    #[test]
    fn root_given_through_a_symlink_is_canonicalised() {
        let (tmp, root) = setup();
        let via = tmp.path().join("via");
        symlink(&root, &via).unwrap();
        let v = WorktreeVfs::new(&via).unwrap();
        assert_eq!(v.root(), fs::canonicalize(&root).unwrap());
        assert_eq!(&*v.read_file(&p("src/a.sql")).unwrap(), b"select 1;\n");
        assert!(WorktreeVfs::new(&root.join("sluice.toml")).is_err());
        assert!(WorktreeVfs::new(&root.join("nope")).is_err());
    }
}
