//! One commit of a git repository, read straight from the object database
//! (no checkout) and served as a read-only [`Vfs`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use gix::ObjectId;
use gix::objs::tree::EntryKind as GitKind;

use crate::pipeline::path::RepoPath;
use crate::pipeline::resolve::incremental::{EntryType, TreeChange};
use crate::pipeline::vfs::{
    DirEntry, EntryKind, SUBMODULE_REASON, Vfs, VfsError, escape_on_way_reason,
    impossible_entry_reason, is_impossible_name, loop_reason, trailing_slash_reason,
    unresolvable_on_way_reason,
};

/// How many symlinks one lookup may follow, as in Linux's `MAXSYMLINKS`;
/// past it we assume a loop.
const MAX_SYMLINK_DEPTH: u32 = 40;

/// A commit's tree, seen from a directory inside it (the prefix), as a
/// [`Vfs`].
///
/// Decoded trees are cached by object id, so each directory is decoded once
/// however many files are read from it; identical subtrees share an entry.
/// `gix::Repository` is not `Sync`, and neither is this type.
pub struct GitVfs {
    repo: gix::Repository,
    /// Object stores read after the repository's own: a push's quarantine
    /// (`GIT_OBJECT_DIRECTORY`) and its alternates, which gix does not take
    /// from the environment.
    extra_objects: Vec<gix::odb::Handle>,
    commit: ObjectId,
    /// The tree at `prefix` in the commit: what `RepoPath::root()` means.
    root_tree: ObjectId,
    prefix: RepoPath,
    trees: RefCell<HashMap<ObjectId, Rc<Listing>>>,
    /// Git's warning when the revision's name matched several refs.
    ambiguity: Option<String>,
    /// How many symlinks were followed (the incremental plan cannot trace
    /// reads through them).
    links_followed: Rc<Cell<u64>>,
}

/// One decoded tree, keyed by entry name so that lookups are logarithmic and
/// iteration is already in the name order `read_dir` promises (git's own
/// order sorts a directory `a` as `a/`, which differs).
type Listing = BTreeMap<String, TreeEntry>;

#[derive(Debug, Clone, Copy)]
struct TreeEntry {
    mode: Mode,
    id: ObjectId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tree,
    Blob,
    Link,
    Submodule,
    /// The name in the tree is not UTF-8; it is listed under a lossy name
    /// that could never be looked up again.
    BadName,
    /// A name no checkout can hold (`.git`, `..`, empty, with a `/`): a
    /// hand-built tree.
    Impossible,
}

/// Why a walk along a path stopped short.
enum Miss {
    NotFound,
    /// `..` above the served root.
    Escapes,
    /// A trailing `/` (or a component below) on something not a directory.
    NotDir,
    Io(VfsError),
}

impl From<VfsError> for Miss {
    fn from(e: VfsError) -> Miss {
        match e {
            VfsError::NotFound => Miss::NotFound,
            other => Miss::Io(other),
        }
    }
}

/// What a path resolves to after following symlinks.
enum Node {
    /// A directory: its tree and its symlink-free path in the prefix view,
    /// which relative links below it are resolved against.
    Dir {
        id: ObjectId,
        path: RepoPath,
    },
    File(ObjectId),
    Unusable(String),
}

impl GitVfs {
    /// Opens the repository containing `sluice_root` (a work tree, a
    /// subdirectory of one, or a bare repository) and serves commit `rev`
    /// from the directory where `sluice_root` sits in the work tree.
    pub fn open(sluice_root: &Path, rev: &str) -> anyhow::Result<GitVfs> {
        let root = std::fs::canonicalize(sluice_root)
            .with_context(|| format!("cannot open {}", sluice_root.display()))?;
        let repo = gix::discover(&root).map_err(|e| {
            with_cause(
                e,
                format!("{} is not inside a git repository", root.display()),
            )
        })?;
        let prefix = match repo.workdir() {
            Some(workdir) => {
                let workdir = std::fs::canonicalize(workdir)
                    .with_context(|| format!("cannot open the work tree {}", workdir.display()))?;
                prefix_below(&workdir, &root)?
            }
            // A bare repository has no work tree to be inside of, so the
            // whole commit is served.
            None => RepoPath::root(),
        };
        GitVfs::from_repository(repo, rev, &prefix)
    }

    /// Opens the git directory `git_dir` as is, without searching upwards
    /// (typically a bare mirror), and serves commit `rev` from `prefix`.
    pub fn open_bare(git_dir: &Path, rev: &str, prefix: &RepoPath) -> anyhow::Result<GitVfs> {
        let repo = gix::open(git_dir)
            .map_err(|e| with_cause(e, format!("{} is not a git repository", git_dir.display())))?;
        GitVfs::from_repository(repo, rev, prefix)
    }

    /// Serves commit `rev` of an already opened repository from `prefix`.
    pub fn from_repository(
        repo: gix::Repository,
        rev: &str,
        prefix: &RepoPath,
    ) -> anyhow::Result<GitVfs> {
        let location = repo
            .workdir()
            .unwrap_or_else(|| repo.git_dir())
            .display()
            .to_string();
        // A name that is both a tag and a branch (say) is read as git reads
        // it, with git's warning kept for the caller to show.
        let (spec, ambiguity) = match ambiguous_name(&repo, rev) {
            Some((chosen, all)) => {
                let name = leading_name(rev);
                let spec = format!("{chosen}{}", &rev[name.len()..]);
                let warning = format!(
                    "warning: refname '{name}' is ambiguous ({}); reading {chosen}, as git does",
                    all.join(", ")
                );
                (spec, Some(warning))
            }
            None => (rev.to_string(), None),
        };
        let (commit, top_tree) = {
            let id = repo.rev_parse_single(spec.as_str()).map_err(|e| {
                // A shallow clone lacks the history `main~3` may need; gix
                // only says the commit "has 0 ancestors".
                let shallow = if repo.is_shallow().unwrap_or(false) {
                    " (this clone is shallow: fetch more history with `git fetch --deepen N` or `git fetch --unshallow`)"
                } else {
                    ""
                };
                with_cause(
                    e,
                    format!("cannot resolve revision `{rev}` in {location}{shallow}"),
                )
            })?;
            let commit = id
                .object()
                .and_then(|object| object.peel_to_commit())
                .map_err(|e| {
                    with_cause(e, format!("revision `{rev}` in {location} is not a commit"))
                })?;
            let tree = commit.tree_id().map_err(|e| {
                with_cause(e, format!("cannot read commit {} in {location}", commit.id))
            })?;
            (commit.id, tree.detach())
        };
        GitVfs::at_commit(repo, Vec::new(), commit, top_tree, prefix, ambiguity, rev)
    }

    /// Serves commit `commit` (full hex) of the bare repository `git_dir`
    /// during a push: the commit and the objects it needs may still sit in
    /// the quarantine `objects` (git's `GIT_OBJECT_DIRECTORY`) or in
    /// `alternates`, read after the repository's own store. Nothing is
    /// written anywhere.
    pub fn open_push(git_dir: &Path, commit: &str, objects: &[PathBuf]) -> anyhow::Result<GitVfs> {
        let repo = gix::open(git_dir)
            .map_err(|e| with_cause(e, format!("{} is not a git repository", git_dir.display())))?;
        let hash = repo.object_hash();
        let mut extra = Vec::new();
        for dir in objects {
            if dir.is_dir() {
                let odb = gix::odb::at(dir, hash)
                    .with_context(|| format!("cannot open the object store {}", dir.display()))?;
                extra.push(odb);
            }
        }
        let id = ObjectId::from_hex(commit.as_bytes())
            .with_context(|| format!("`{commit}` is not a full commit id"))?;
        let mut vfs = GitVfs::bare_view(repo, extra, id);
        let (kind, data) = vfs
            .object(id)
            .map_err(|e| anyhow!("cannot read commit {commit}: {e}"))?;
        if kind != gix::object::Kind::Commit {
            bail!("{commit} is a {kind}, not a commit");
        }
        let tree = gix::objs::CommitRef::from_bytes(&data, hash)
            .map_err(|e| anyhow!("cannot decode commit {commit}: {e}"))?
            .tree();
        vfs.root_tree = tree;
        Ok(vfs)
    }

    fn bare_view(repo: gix::Repository, extra: Vec<gix::odb::Handle>, commit: ObjectId) -> GitVfs {
        GitVfs {
            repo,
            extra_objects: extra,
            commit,
            root_tree: commit,
            prefix: RepoPath::root(),
            trees: RefCell::new(HashMap::new()),
            ambiguity: None,
            links_followed: Rc::default(),
        }
    }

    fn at_commit(
        repo: gix::Repository,
        extra: Vec<gix::odb::Handle>,
        commit: ObjectId,
        top_tree: ObjectId,
        prefix: &RepoPath,
        ambiguity: Option<String>,
        rev: &str,
    ) -> anyhow::Result<GitVfs> {
        let location = repo
            .workdir()
            .unwrap_or_else(|| repo.git_dir())
            .display()
            .to_string();
        let mut vfs = GitVfs::bare_view(repo, extra, commit);
        vfs.root_tree = top_tree;
        vfs.ambiguity = ambiguity;
        // Walk down to the prefix without following symlinks: it names a real
        // directory of the work tree, so it must be a real tree in the commit.
        let mut tree = top_tree;
        for name in prefix.components() {
            let listing = vfs
                .listing(tree)
                .map_err(|e| anyhow!("cannot read commit {commit} in {location}: {e}"))?;
            match listing.get(name) {
                Some(entry) if entry.mode == Mode::Tree => tree = entry.id,
                _ => bail!(
                    "`{prefix}` is not a directory in revision `{rev}` (commit {commit}) of {location}"
                ),
            }
        }
        vfs.root_tree = tree;
        vfs.prefix = prefix.clone();
        Ok(vfs)
    }

    /// The full hex id of the commit being served.
    pub fn commit_id(&self) -> String {
        self.commit.to_string()
    }

    /// Git's warning when the revision named several refs (`main` both a
    /// branch and a tag): `warning: refname 'main' is ambiguous …`. Like
    /// git, the first of `refs/NAME`, `refs/tags/NAME`, `refs/heads/NAME`,
    /// `refs/remotes/NAME`, `refs/remotes/NAME/HEAD` was read. This layer
    /// does not print: the front end shows the warning.
    pub fn ambiguity(&self) -> Option<String> {
        self.ambiguity.clone()
    }

    /// The tree served as the root.
    pub fn root_tree(&self) -> ObjectId {
        self.root_tree
    }

    /// Counts the symlinks this view follows from now on (it is shared, so
    /// it can be read after the view is boxed).
    pub fn link_counter(&self) -> Rc<Cell<u64>> {
        Rc::clone(&self.links_followed)
    }

    /// The entries that differ between the tree `old` (another commit's
    /// root tree, in the same repository) and the served root, found by
    /// walking both and skipping identical subtrees by id. A directory
    /// whose entries differ is not listed itself; an added or deleted
    /// directory is listed, not what it holds.
    pub fn changes_since(&self, old: ObjectId) -> Result<Vec<TreeChange>, VfsError> {
        let mut out = Vec::new();
        if old != self.root_tree {
            self.diff_trees(old, self.root_tree, &RepoPath::root(), &mut out)?;
        }
        Ok(out)
    }

    fn diff_trees(
        &self,
        old: ObjectId,
        new: ObjectId,
        dir: &RepoPath,
        out: &mut Vec<TreeChange>,
    ) -> Result<(), VfsError> {
        let (a, b) = (self.listing(old)?, self.listing(new)?);
        let kind = |e: &TreeEntry| match e.mode {
            Mode::Tree => EntryType::Dir,
            Mode::Blob => EntryType::File,
            Mode::Link => EntryType::Link,
            Mode::Submodule | Mode::BadName | Mode::Impossible => EntryType::Other,
        };
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let (x, y) = (a.get(name), b.get(name));
            match (x, y) {
                (Some(x), Some(y)) if x.mode == y.mode && x.id == y.id => {}
                (Some(x), Some(y)) if x.mode == Mode::Tree && y.mode == Mode::Tree => {
                    self.diff_trees(x.id, y.id, &dir.child(name), out)?;
                }
                _ => out.push(TreeChange {
                    path: dir.child(name),
                    old: x.map(kind),
                    new: y.map(kind),
                }),
            }
        }
        Ok(())
    }

    /// Where the served view sits inside the commit's tree.
    pub fn prefix(&self) -> &RepoPath {
        &self.prefix
    }

    /// True when the repository is a shallow clone.
    pub fn is_shallow(&self) -> bool {
        self.repo.is_shallow().unwrap_or(false)
    }

    /// The kind and bytes of object `id`, from the repository's store or,
    /// during a push, the quarantine.
    fn object(&self, id: ObjectId) -> Result<(gix::object::Kind, Vec<u8>), String> {
        match self.repo.try_find_object(id) {
            Ok(Some(mut o)) => return Ok((o.kind, std::mem::take(&mut o.data))),
            Ok(None) => {}
            Err(e) => return Err(chain(&e)),
        }
        for odb in &self.extra_objects {
            let mut buf = Vec::new();
            match gix::objs::Find::try_find(odb, &id, &mut buf) {
                Ok(Some(data)) => return Ok((data.kind, data.data.to_vec())),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("object {id} not found"))
    }

    /// The decoded tree `id`, from the cache when it was decoded before.
    fn listing(&self, id: ObjectId) -> Result<Rc<Listing>, VfsError> {
        if let Some(listing) = self.trees.borrow().get(&id) {
            return Ok(Rc::clone(listing));
        }
        let io = |e: String| VfsError::Io(format!("cannot read git tree {id}: {e}"));
        let (kind, data) = self.object(id).map_err(io)?;
        if kind != gix::object::Kind::Tree {
            return Err(io(format!("it is a {kind}")));
        }
        let mut listing = Listing::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&data, self.repo.object_hash()) {
            let entry = entry.map_err(|e| io(e.to_string()))?;
            let (name, bad_name) = match std::str::from_utf8(entry.filename) {
                Ok(name) => (name.to_string(), false),
                Err(_) => (String::from_utf8_lossy(entry.filename).into_owned(), true),
            };
            let mode = match entry.mode.kind() {
                _ if bad_name => Mode::BadName,
                _ if is_impossible_name(&name) => Mode::Impossible,
                GitKind::Tree => Mode::Tree,
                GitKind::Blob | GitKind::BlobExecutable => Mode::Blob,
                GitKind::Link => Mode::Link,
                GitKind::Commit => Mode::Submodule,
            };
            let id = entry.oid.to_owned();
            listing.insert(name, TreeEntry { mode, id });
        }
        let listing = Rc::new(listing);
        self.trees.borrow_mut().insert(id, Rc::clone(&listing));
        Ok(listing)
    }

    fn read_blob(&self, id: ObjectId, what: &dyn fmt::Display) -> Result<Vec<u8>, VfsError> {
        let io = |e: String| VfsError::Io(format!("cannot read {what} (blob {id}): {e}"));
        let (kind, data) = self.object(id).map_err(io)?;
        if kind != gix::object::Kind::Blob {
            return Err(io(format!("it is a {kind}")));
        }
        Ok(data)
    }

    /// The tree of `dir`, a path free of symlinks in the served view.
    fn tree_at(&self, dir: &RepoPath) -> Result<ObjectId, Miss> {
        let mut id = self.root_tree;
        for name in dir.components() {
            let listing = self.listing(id)?;
            match listing.get(name) {
                Some(e) if e.mode == Mode::Tree => id = e.id,
                _ => return Err(Miss::NotFound),
            }
        }
        Ok(id)
    }

    /// Resolves `path`, following symlinks; `depth` counts the links followed
    /// so far in this lookup.
    ///
    /// A refusal is worded as the working tree words it for the same path,
    /// naming the link as it stands on the path asked for.
    fn resolve(&self, path: &RepoPath, depth: &mut u32) -> Result<Node, VfsError> {
        let mut id = self.root_tree;
        let mut dir = RepoPath::root();
        let mut names = path.components().peekable();
        while let Some(name) = names.next() {
            let last = names.peek().is_none();
            let listing = self.listing(id)?;
            let entry = listing.get(name).ok_or(VfsError::NotFound)?;
            let node = self.entry_node(id, &dir, name, entry, depth)?;
            let node = match node {
                Node::Unusable(why) if entry.mode == Mode::Link => {
                    let target = self.link_target(entry.id, &dir.child(name))?;
                    if last {
                        Node::Unusable(final_link_reason(&why, &target))
                    } else if why.starts_with("dangling symlink") {
                        return Err(VfsError::NotFound);
                    } else if why.ends_with("leaves the repository") {
                        Node::Unusable(escape_on_way_reason(&dir.child(name), &target))
                    } else {
                        Node::Unusable(unresolvable_on_way_reason(&dir.child(name), &target))
                    }
                }
                other => other,
            };
            match node {
                Node::Dir { id: next, path } => {
                    id = next;
                    dir = path;
                }
                Node::File(_) if !last => return Err(VfsError::NotFound),
                other => return Ok(other),
            }
        }
        Ok(Node::Dir { id, path: dir })
    }

    /// The text of the symlink blob `id` at `link`, for messages.
    fn link_target(&self, id: ObjectId, link: &RepoPath) -> Result<String, VfsError> {
        let bytes = self.read_blob(id, &format_args!("symlink `{link}`"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Walks `names` from the directory `dir` (tree `id`), one component at
    /// a time as the kernel does: a symlink is followed where it stands, and
    /// `..` climbs from where the walk really is, not from the path as
    /// written. `want_dir` is a trailing `/`: the end must be a directory.
    fn walk(
        &self,
        id: ObjectId,
        dir: RepoPath,
        names: &[&str],
        want_dir: bool,
        depth: &mut u32,
    ) -> Result<Node, Miss> {
        let mut here = Node::Dir { id, path: dir };
        for name in names {
            // Only a directory goes on; anything else returned below.
            let Node::Dir { id, path } = here else {
                return Err(Miss::NotDir);
            };
            here = match *name {
                "" | "." => Node::Dir { id, path },
                ".." => {
                    if path.is_root() {
                        return Err(Miss::Escapes);
                    }
                    let parent = path.parent();
                    Node::Dir {
                        id: self.tree_at(&parent)?,
                        path: parent,
                    }
                }
                _ => {
                    let listing = self.listing(id)?;
                    let entry = listing.get(*name).ok_or(Miss::NotFound)?;
                    let node = self.entry_node(id, &path, name, entry, depth)?;
                    if let Node::Unusable(_) = node {
                        return Ok(node);
                    }
                    node
                }
            };
        }
        if want_dir && !matches!(here, Node::Dir { .. }) {
            return Err(Miss::NotDir);
        }
        Ok(here)
    }

    /// What the entry `name` of directory `dir` (tree `dir_id`) is,
    /// following it if it is a symlink.
    fn entry_node(
        &self,
        dir_id: ObjectId,
        dir: &RepoPath,
        name: &str,
        entry: &TreeEntry,
        depth: &mut u32,
    ) -> Result<Node, VfsError> {
        Ok(match entry.mode {
            Mode::Tree => Node::Dir {
                id: entry.id,
                path: dir.child(name),
            },
            Mode::Blob => Node::File(entry.id),
            Mode::Submodule => Node::Unusable(SUBMODULE_REASON.to_string()),
            Mode::BadName => Node::Unusable("file name is not valid UTF-8".to_string()),
            Mode::Impossible => Node::Unusable(impossible_entry_reason(name)),
            Mode::Link => self.follow_link(dir_id, dir, name, entry.id, depth)?,
        })
    }

    /// Follows the symlink `name` in `dir`. Its target is walked from `dir`
    /// component by component, as a checkout's kernel would, and refused if
    /// it leaves the served view.
    fn follow_link(
        &self,
        dir_id: ObjectId,
        dir: &RepoPath,
        name: &str,
        blob: ObjectId,
        depth: &mut u32,
    ) -> Result<Node, VfsError> {
        let link = dir.child(name);
        self.links_followed.set(self.links_followed.get() + 1);
        *depth += 1;
        if *depth > MAX_SYMLINK_DEPTH {
            return Ok(Node::Unusable(format!(
                "too many levels of symlinks at `{link}`"
            )));
        }
        let bytes = self.read_blob(blob, &format_args!("symlink `{link}`"))?;
        let Ok(target) = String::from_utf8(bytes) else {
            return Ok(Node::Unusable(
                "symlink target is not valid UTF-8".to_string(),
            ));
        };
        // An absolute target points into the machine, never into the tree.
        if target.starts_with('/') {
            return Ok(Node::Unusable(format!(
                "symlink to {target} leaves the repository"
            )));
        }
        if target.is_empty() || target.contains(['\\', '\0']) {
            return Ok(Node::Unusable(format!("dangling symlink to {target}")));
        }
        let names: Vec<&str> = target.split('/').collect();
        let want_dir = target.ends_with('/');
        match self.walk(dir_id, dir.clone(), &names, want_dir, depth) {
            Ok(node) => Ok(node),
            Err(Miss::NotFound) => Ok(Node::Unusable(format!("dangling symlink to {target}"))),
            Err(Miss::Escapes) => Ok(Node::Unusable(format!(
                "symlink to {target} leaves the repository"
            ))),
            Err(Miss::NotDir) if want_dir => Ok(Node::Unusable(trailing_slash_reason(&target))),
            Err(Miss::NotDir) => Ok(Node::Unusable(format!("dangling symlink to {target}"))),
            Err(Miss::Io(e)) => Err(e),
        }
    }

    #[cfg(test)]
    fn cached_trees(&self) -> usize {
        self.trees.borrow().len()
    }
}

/// Why the symlink to `target`, the last component of a path, cannot be
/// used, given why its walk stopped (`why` may name a link further on):
/// worded for the link itself, as the working tree words it.
fn final_link_reason(why: &str, target: &str) -> String {
    if why.ends_with("leaves the repository") {
        format!("symlink to {target} leaves the repository")
    } else if why.starts_with("dangling symlink") {
        format!("dangling symlink to {target}")
    } else if why.starts_with("too many levels") {
        loop_reason(target)
    } else {
        why.to_string()
    }
}

/// Wraps a gix error under our own message, keeping it as the cause so that
/// `{:#}` prints the whole chain. (`gix::Error`'s own alternate `Display`
/// prints a multi-line debug dump, so it is never formatted directly.)
fn with_cause(err: gix::Error, context: String) -> anyhow::Error {
    anyhow::Error::new(err).context(context)
}

/// A gix error and its causes on one line, for `VfsError::Io` messages.
fn chain(err: &gix::Error) -> String {
    let mut out = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(e) = cause {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cause = e.source();
    }
    out
}

/// The path of `root` below the canonical work tree `workdir`, as a repo
/// path into the commit's tree.
fn prefix_below(workdir: &Path, root: &Path) -> anyhow::Result<RepoPath> {
    let Ok(rel) = root.strip_prefix(workdir) else {
        bail!(
            "{} is not inside the work tree {}",
            root.display(),
            workdir.display()
        );
    };
    let mut prefix = RepoPath::root();
    for component in rel.components() {
        let Component::Normal(name) = component else {
            bail!("unexpected path component in {}", rel.display());
        };
        let Some(name) = name.to_str() else {
            bail!("{} is not valid UTF-8", root.display());
        };
        if prefix.is_root() && name == ".git" {
            bail!("{} is inside the .git directory", root.display());
        }
        prefix = prefix.child(name);
    }
    Ok(prefix)
}

impl fmt::Debug for GitVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitVfs")
            .field("git_dir", &self.repo.git_dir())
            .field("commit", &self.commit)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Vfs for GitVfs {
    fn kind(&self, path: &RepoPath) -> Result<EntryKind, VfsError> {
        Ok(match self.resolve(path, &mut 0)? {
            Node::Dir { .. } => EntryKind::Dir,
            Node::File(_) => EntryKind::File,
            Node::Unusable(why) => EntryKind::Unusable(why),
        })
    }

    fn read_dir(&self, path: &RepoPath) -> Result<Vec<DirEntry>, VfsError> {
        let (id, dir) = match self.resolve(path, &mut 0)? {
            Node::Dir { id, path } => (id, path),
            Node::File(_) => return Err(VfsError::NotFound),
            Node::Unusable(why) => return Err(VfsError::Unusable(why)),
        };
        let listing = self.listing(id)?;
        let mut out = Vec::with_capacity(listing.len());
        for (name, entry) in listing.iter() {
            let kind = match self.entry_node(id, &dir, name, entry, &mut 0)? {
                Node::Dir { .. } => EntryKind::Dir,
                Node::File(_) => EntryKind::File,
                Node::Unusable(why) if entry.mode == Mode::Link => {
                    let target = self.link_target(entry.id, &dir.child(name))?;
                    EntryKind::Unusable(final_link_reason(&why, &target))
                }
                Node::Unusable(why) => EntryKind::Unusable(why),
            };
            out.push(DirEntry {
                name: name.clone(),
                kind,
            });
        }
        Ok(out)
    }

    fn read_file(&self, path: &RepoPath) -> Result<Arc<[u8]>, VfsError> {
        match self.resolve(path, &mut 0)? {
            Node::File(id) => Ok(Arc::from(self.read_blob(id, &format_args!("`{path}`"))?)),
            Node::Dir { .. } => Err(VfsError::Io(format!("`{path}` is a directory"))),
            Node::Unusable(why) => Err(VfsError::Unusable(why)),
        }
    }

    fn is_symlink(&self, path: &RepoPath) -> bool {
        let Ok(Node::Dir { id, .. }) = self.resolve(&path.parent(), &mut 0) else {
            return false;
        };
        self.listing(id).is_ok_and(|l| {
            l.get(path.file_name())
                .is_some_and(|e| e.mode == Mode::Link)
        })
    }
}

/// The ref name a revision starts with: `main` in `main~2` or `main^{tree}`.
fn leading_name(rev: &str) -> &str {
    let end = rev
        .char_indices()
        .find(|&(i, c)| matches!(c, '~' | '^' | ':') || rev[i..].starts_with("@{"))
        .map_or(rev.len(), |(i, _)| i);
    &rev[..end]
}

/// The exact ref `full` (no search through `refs/tags/`, `refs/heads/` …),
/// peeled to the object it names.
fn find_exact(repo: &gix::Repository, full: &str) -> Option<ObjectId> {
    let mut r = repo.try_find_reference(full).ok()??;
    if r.name().as_bstr() != full {
        return None;
    }
    r.peel_to_id().ok().map(gix::Id::detach)
}

/// When the name `rev` starts with matches more than one ref in git's
/// order, the one git reads and all that matched.
fn ambiguous_name(repo: &gix::Repository, rev: &str) -> Option<(String, Vec<String>)> {
    let name = leading_name(rev);
    let is_hex = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if name.is_empty() || name.starts_with("refs/") || name == "HEAD" || name == "@" || is_hex {
        return None;
    }
    let found: Vec<String> = [
        format!("refs/{name}"),
        format!("refs/tags/{name}"),
        format!("refs/heads/{name}"),
        format!("refs/remotes/{name}"),
        format!("refs/remotes/{name}/HEAD"),
    ]
    .into_iter()
    .filter(|full| find_exact(repo, full).is_some())
    .collect();
    if found.len() < 2 {
        return None;
    }
    Some((found[0].clone(), found))
}

/// The commit at the tip of branch `name`: `refs/heads/<name>` only, never
/// a tag or remote ref of the same name (promotion must not be fooled by
/// a tag `main`). `None` when `repo_dir` is not in a repository or the
/// branch does not exist or is not a commit.
pub fn resolve_branch(repo_dir: &Path, name: &str) -> Option<String> {
    let repo = gix::discover(repo_dir).ok()?;
    let id = find_exact(&repo, &format!("refs/heads/{name}"))?;
    let commit = repo.find_object(id).ok()?.peel_to_commit().ok()?;
    Some(commit.id.to_string())
}

/// The branch checked out in the work tree containing `dir` (`main`, not
/// `refs/heads/main`); `None` when `dir` is not in a git repository or
/// HEAD is detached.
pub fn current_branch(dir: &Path) -> Option<String> {
    let repo = gix::discover(dir).ok()?;
    let name = repo.head_name().ok()??;
    Some(name.shorten().to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::process::Command;

    fn p(s: &str) -> RepoPath {
        if s.is_empty() {
            RepoPath::root()
        } else {
            RepoPath::parse(s).unwrap()
        }
    }

    /// Runs git in `dir` with a fixed identity and no user or system
    /// configuration, so the machine's settings cannot change the result.
    /// Variables that point git at another repository (set when the tests run
    /// from a git hook) are dropped for the same reason.
    pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_COMMON_DIR",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn commit_all(root: &Path, message: &str) {
        git(root, &["add", "-A"]);
        git(root, &["commit", "-q", "-m", message]);
    }

    fn names(v: &GitVfs, dir: &str) -> Vec<String> {
        v.read_dir(&p(dir))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    }

    fn text(v: &GitVfs, path: &str) -> String {
        String::from_utf8(v.read_file(&p(path)).unwrap().to_vec()).unwrap()
    }

    /// A repository with two commits and uncommitted changes on top, inside a
    /// scratch directory so that `..` from the work tree stays in it.
    fn two_commits() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q"]);
        write(&root, "sluice.toml", "version = 1\n");
        write(&root, "src/a.sql", "select 1;\n");
        write(&root, "src/old.sql", "old\n");
        commit_all(&root, "first");
        git(&root, &["tag", "v1"]);
        write(&root, "sluice.toml", "version = 2\n");
        write(&root, "src/b/c.sql", "select 3;\n");
        fs::remove_file(root.join("src/old.sql")).unwrap();
        commit_all(&root, "second");
        // The working tree differs from both commits.
        write(&root, "sluice.toml", "version = 3 (dirty)\n");
        write(&root, "src/untracked.sql", "new\n");
        (tmp, root)
    }

    #[test]
    fn reads_head_not_the_working_tree() {
        let (_tmp, root) = two_commits();
        let v = GitVfs::open(&root, "HEAD").unwrap();
        assert_eq!(v.commit_id(), git(&root, &["rev-parse", "HEAD"]));
        assert_eq!(v.commit_id().len(), 40);
        assert_eq!(text(&v, "sluice.toml"), "version = 2\n");
        assert_eq!(names(&v, ""), vec!["sluice.toml", "src"]);
        assert_eq!(names(&v, "src"), vec!["a.sql", "b"]);
        assert_eq!(v.kind(&p("")), Ok(EntryKind::Dir));
        assert_eq!(v.kind(&p("src/b")), Ok(EntryKind::Dir));
        assert_eq!(v.kind(&p("src/b/c.sql")), Ok(EntryKind::File));
        assert_eq!(text(&v, "src/b/c.sql"), "select 3;\n");
        assert_eq!(v.kind(&p("src/untracked.sql")), Err(VfsError::NotFound));
        assert_eq!(v.read_file(&p("src/old.sql")), Err(VfsError::NotFound));
        assert_eq!(v.read_dir(&p("nope")), Err(VfsError::NotFound));
        assert_eq!(v.read_dir(&p("sluice.toml")), Err(VfsError::NotFound));
        assert_eq!(v.kind(&p("sluice.toml/x")), Err(VfsError::NotFound));
        assert!(matches!(v.read_file(&p("src")), Err(VfsError::Io(_))));
        // .git is not part of a commit's tree.
        assert_eq!(v.kind(&p(".git")), Err(VfsError::NotFound));
    }

    #[test]
    fn reads_older_revisions_by_any_spec() {
        let (_tmp, root) = two_commits();
        let first = git(&root, &["rev-parse", "HEAD~1"]);
        for rev in [
            "HEAD~1",
            "HEAD^",
            "v1",
            "main~1",
            first.as_str(),
            &first[..8],
        ] {
            let v = GitVfs::open(&root, rev).unwrap();
            assert_eq!(v.commit_id(), first, "rev {rev}");
            assert_eq!(text(&v, "sluice.toml"), "version = 1\n");
            assert_eq!(names(&v, "src"), vec!["a.sql", "old.sql"]);
            assert_eq!(v.kind(&p("src/b")), Err(VfsError::NotFound));
        }
        let v = GitVfs::open(&root, "main").unwrap();
        assert_eq!(text(&v, "sluice.toml"), "version = 2\n");
    }

    #[test]
    fn annotated_tags_peel_to_their_commit() {
        let (_tmp, root) = two_commits();
        git(&root, &["tag", "-a", "-m", "release", "r1", "HEAD~1"]);
        let v = GitVfs::open(&root, "r1").unwrap();
        assert_eq!(v.commit_id(), git(&root, &["rev-parse", "HEAD~1"]));
    }

    #[test]
    fn a_name_both_branch_and_tag_reads_the_tag_with_a_warning() {
        let (_tmp, root) = two_commits();
        // `v1` is a tag on the first commit; a branch `v1` on the second.
        git(&root, &["branch", "v1", "main"]);
        let first = git(&root, &["rev-parse", "main~1"]);
        let second = git(&root, &["rev-parse", "main"]);
        assert_eq!(git(&root, &["rev-parse", "v1"]), first, "git reads the tag");
        let v = GitVfs::open(&root, "v1").unwrap();
        assert_eq!(v.commit_id(), first);
        assert_eq!(
            v.ambiguity().as_deref(),
            Some(
                "warning: refname 'v1' is ambiguous (refs/tags/v1, refs/heads/v1); reading refs/tags/v1, as git does"
            )
        );
        let v = GitVfs::open(&root, "v1^{commit}").unwrap();
        assert_eq!(v.commit_id(), first);
        assert!(v.ambiguity().is_some());
        for rev in ["main", "HEAD", "refs/heads/v1", &second[..]] {
            let v = GitVfs::open(&root, rev).unwrap();
            assert!(v.ambiguity().is_none(), "{rev}");
        }
        assert_eq!(resolve_branch(&root, "v1"), Some(second.clone()));
        assert_eq!(resolve_branch(&root, "main"), Some(second));
        // A tag alone is not a branch.
        git(&root, &["tag", "only-tag", "main~1"]);
        assert_eq!(resolve_branch(&root, "only-tag"), None);
        assert_eq!(resolve_branch(&root, "heads/main"), None);
        assert_eq!(leading_name("main~2"), "main");
        assert_eq!(leading_name("main@{1}"), "main");
        assert_eq!(leading_name("a/b^{tree}"), "a/b");
    }

    #[test]
    fn clear_errors() {
        let (tmp, root) = two_commits();
        let err = format!("{:#}", GitVfs::open(&root, "nope").unwrap_err());
        assert!(
            err.starts_with("cannot resolve revision `nope` in"),
            "{err}"
        );
        // gix's reason follows on the same line.
        assert!(err.contains("nope\": ") && !err.contains('\n'), "{err}");
        let tree_rev = "HEAD^{tree}";
        let err = format!("{:#}", GitVfs::open(&root, tree_rev).unwrap_err());
        assert!(err.contains("is not a commit"), "{err}");
        let plain = tmp.path().join("plain");
        fs::create_dir_all(&plain).unwrap();
        let err = format!("{:#}", GitVfs::open(&plain, "HEAD").unwrap_err());
        assert!(err.contains("is not inside a git repository"), "{err}");
        let err = format!(
            "{:#}",
            GitVfs::open(&tmp.path().join("gone"), "HEAD").unwrap_err()
        );
        assert!(err.contains("cannot open"), "{err}");
        let err = format!(
            "{:#}",
            GitVfs::open(&root.join(".git"), "HEAD").unwrap_err()
        );
        assert!(err.contains(".git"), "{err}");
    }

    #[test]
    fn serves_a_subdirectory_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("big");
        fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q"]);
        write(&root, "README", "top\n");
        write(&root, "examples/oncology/sluice.toml", "name = 'onc'\n");
        write(&root, "examples/oncology/src/p.sql", "select 1;\n");
        write(&root, "examples/other/sluice.toml", "name = 'other'\n");
        commit_all(&root, "first");
        write(&root, "examples/oncology/sluice.toml", "name = 'onc2'\n");
        commit_all(&root, "second");

        let sub = root.join("examples/oncology");
        let v = GitVfs::open(&sub, "HEAD").unwrap();
        assert_eq!(v.prefix().as_str(), "examples/oncology");
        assert_eq!(names(&v, ""), vec!["sluice.toml", "src"]);
        assert_eq!(text(&v, "sluice.toml"), "name = 'onc2'\n");
        assert_eq!(text(&v, "src/p.sql"), "select 1;\n");
        assert_eq!(v.kind(&p("README")), Err(VfsError::NotFound));
        let old = GitVfs::open(&sub, "HEAD~1").unwrap();
        assert_eq!(text(&old, "sluice.toml"), "name = 'onc'\n");

        // A directory that did not exist yet at the revision is an error.
        write(&root, "examples/later/sluice.toml", "x\n");
        commit_all(&root, "third");
        let err = GitVfs::open(&root.join("examples/later"), "HEAD~1").unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("`examples/later` is not a directory in revision `HEAD~1`"),
            "{err}"
        );
    }

    #[test]
    fn symlinks_inside_are_followed_and_escapes_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q"]);
        let proj = root.join("proj");
        write(&proj, "sluice.toml", "x\n");
        write(&proj, "common/v.sql", "select 'v';\n");
        write(&proj, "clinics/a/keep", "");
        write(&root, "outside.txt", "outside the prefix\n");
        symlink("../../common/v.sql", proj.join("clinics/a/v.sql")).unwrap();
        symlink("../../common", proj.join("clinics/a/shared")).unwrap();
        symlink("clinics/a/shared", proj.join("chain")).unwrap();
        symlink("../../etc", proj.join("clinics/escape")).unwrap();
        symlink("/etc/passwd", proj.join("passwd")).unwrap();
        symlink("../outside.txt", proj.join("up.txt")).unwrap();
        symlink("missing.sql", proj.join("dangling.sql")).unwrap();
        symlink("loop2", proj.join("loop1")).unwrap();
        symlink("loop1", proj.join("loop2")).unwrap();
        commit_all(&root, "links");

        let v = GitVfs::open(&proj, "HEAD").unwrap();
        assert_eq!(v.kind(&p("clinics/a/v.sql")), Ok(EntryKind::File));
        assert_eq!(text(&v, "clinics/a/v.sql"), "select 'v';\n");
        assert_eq!(v.kind(&p("clinics/a/shared")), Ok(EntryKind::Dir));
        assert_eq!(names(&v, "clinics/a/shared"), vec!["v.sql"]);
        assert_eq!(text(&v, "clinics/a/shared/v.sql"), "select 'v';\n");
        // A link to a link to a directory, then a file below it.
        assert_eq!(text(&v, "chain/v.sql"), "select 'v';\n");
        let listing = v.read_dir(&p("clinics/a")).unwrap();
        let kinds: Vec<_> = listing
            .iter()
            .map(|e| (e.name.as_str(), e.kind.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("keep", EntryKind::File),
                ("shared", EntryKind::Dir),
                ("v.sql", EntryKind::File)
            ]
        );

        let leaves = |t: &str| EntryKind::Unusable(format!("symlink to {t} leaves the repository"));
        assert_eq!(v.kind(&p("clinics/escape")), Ok(leaves("../../etc")));
        assert_eq!(
            v.read_file(&p("clinics/escape/passwd")),
            Err(VfsError::Unusable(
                "`clinics/escape` is a symlink to ../../etc, which leaves the repository"
                    .to_string()
            ))
        );
        assert_eq!(v.kind(&p("passwd")), Ok(leaves("/etc/passwd")));
        // Inside the git repository but outside the prefix view: refused.
        assert_eq!(v.kind(&p("up.txt")), Ok(leaves("../outside.txt")));
        assert!(matches!(
            v.read_file(&p("up.txt")),
            Err(VfsError::Unusable(_))
        ));
        assert_eq!(
            v.kind(&p("dangling.sql")),
            Ok(EntryKind::Unusable(
                "dangling symlink to missing.sql".to_string()
            ))
        );
        assert!(
            matches!(v.kind(&p("loop1")), Ok(EntryKind::Unusable(w)) if w.contains("too many"))
        );
        assert!(matches!(
            v.read_dir(&p("loop2")),
            Err(VfsError::Unusable(_))
        ));

        let root_listing = v.read_dir(&p("")).unwrap();
        for entry in &root_listing {
            let usable = matches!(entry.kind, EntryKind::File | EntryKind::Dir);
            let expect =
                ["chain", "clinics", "common", "sluice.toml"].contains(&entry.name.as_str());
            assert_eq!(usable, expect, "{entry:?}");
        }

        // Seen from the repository root, the same `up.txt` stays inside.
        let whole = GitVfs::open(&root, "HEAD").unwrap();
        assert_eq!(text(&whole, "proj/up.txt"), "outside the prefix\n");
    }

    #[test]
    fn dot_dot_in_a_link_climbs_from_where_the_walk_really_is() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q"]);
        write(&root, "deep/a/t.sql", "deep\n");
        write(&root, "deep/a/b/keep", "");
        write(&root, "c/x/t.sql", "lexical\n");
        write(&root, "c/x/Labs.sql", "labs\n");
        symlink("../../deep/a/b", root.join("c/x/sub")).unwrap();
        symlink("sub/../t.sql", root.join("c/x/N.sql")).unwrap();
        symlink("Labs.sql/", root.join("c/x/slash.sql")).unwrap();
        symlink("sub/../../../..", root.join("c/x/up")).unwrap();
        commit_all(&root, "links");
        let v = GitVfs::open(&root, "HEAD").unwrap();
        // As on disk: `sub` is deep/a/b, so `sub/..` is deep/a.
        assert_eq!(
            text(&v, "c/x/N.sql"),
            fs::read_to_string(root.join("c/x/N.sql")).unwrap()
        );
        assert_eq!(text(&v, "c/x/N.sql"), "deep\n");
        assert_eq!(
            v.kind(&p("c/x/slash.sql")),
            Ok(EntryKind::Unusable(trailing_slash_reason("Labs.sql/")))
        );
        assert!(
            fs::read(root.join("c/x/slash.sql")).is_err(),
            "a checkout cannot follow it"
        );
        assert_eq!(
            v.kind(&p("c/x/up")),
            Ok(EntryKind::Unusable(
                "symlink to sub/../../../.. leaves the repository".to_string()
            ))
        );
        assert!(v.is_symlink(&p("c/x/sub")));
        assert!(!v.is_symlink(&p("c/x")));
    }

    #[test]
    fn executables_are_files_and_submodules_unusable() {
        let (_tmp, root) = two_commits();
        write(&root, "run.sh", "#!/bin/sh\n");
        git(&root, &["add", "run.sh"]);
        git(&root, &["update-index", "--chmod=+x", "run.sh"]);
        let head = git(&root, &["rev-parse", "HEAD"]);
        let gitlink = format!("160000,{head},vendor/sub");
        git(&root, &["update-index", "--add", "--cacheinfo", &gitlink]);
        git(&root, &["commit", "-q", "-m", "exec and submodule"]);

        let v = GitVfs::open(&root, "HEAD").unwrap();
        assert_eq!(v.kind(&p("run.sh")), Ok(EntryKind::File));
        assert_eq!(text(&v, "run.sh"), "#!/bin/sh\n");
        let sub = EntryKind::Unusable(SUBMODULE_REASON.to_string());
        assert_eq!(v.kind(&p("vendor/sub")), Ok(sub.clone()));
        assert_eq!(v.read_dir(&p("vendor")).unwrap()[0].kind, sub);
        assert!(matches!(
            v.read_file(&p("vendor/sub")),
            Err(VfsError::Unusable(_))
        ));
        assert!(matches!(
            v.read_file(&p("vendor/sub/x")),
            Err(VfsError::Unusable(_))
        ));
    }

    #[test]
    fn opens_bare_repositories() {
        let (tmp, root) = two_commits();
        let bare = tmp.path().join("mirror.git");
        let (src, dst) = (root.to_str().unwrap(), bare.to_str().unwrap());
        git(tmp.path(), &["clone", "-q", "--bare", src, dst]);
        let v = GitVfs::open(&bare, "main").unwrap();
        assert_eq!(text(&v, "sluice.toml"), "version = 2\n");
        let v = GitVfs::open_bare(&bare, "HEAD~1", &p("src")).unwrap();
        assert_eq!(names(&v, ""), vec!["a.sql", "old.sql"]);
        assert_eq!(v.commit_id(), git(&root, &["rev-parse", "HEAD~1"]));
        let err = GitVfs::open_bare(&tmp.path().join("nope.git"), "HEAD", &p("")).unwrap_err();
        assert!(format!("{err:#}").contains("is not a git repository"));
    }

    #[test]
    fn decodes_each_tree_once_in_a_packed_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        fs::create_dir_all(&root).unwrap();
        git(&root, &["init", "-q"]);
        for d in 0..10 {
            for f in 0..20 {
                write(
                    &root,
                    &format!("d{d}/sub/f{f}.sql"),
                    &format!("select {d}, {f};\n"),
                );
            }
        }
        commit_all(&root, "many");
        git(&root, &["gc", "-q"]);

        let v = GitVfs::open(&root, "HEAD").unwrap();
        let mut files = 0;
        for d in v.read_dir(&p("")).unwrap() {
            for f in v.read_dir(&p(&format!("{}/sub", d.name))).unwrap() {
                let path = format!("{}/sub/{}", d.name, f.name);
                assert_eq!(v.kind(&p(&path)), Ok(EntryKind::File));
                assert!(text(&v, &path).starts_with("select"));
                files += 1;
            }
        }
        assert_eq!(files, 200);
        // The root, ten `dN` and ten `dN/sub` trees.
        assert_eq!(v.cached_trees(), 21);
    }
}
