//! A repository opened for work: from a working tree, a commit of a work
//! tree's repository, or a commit of a bare mirror; `sluice.toml` read,
//! the pipelines resolved, every problem collected as a diagnostic.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{self, RepoConfig};
use crate::git::GitVfs;
use crate::pipeline::diag::Diagnostic;
use crate::pipeline::{self, Graph, RepoPath, Vfs};
use crate::plan::hash::{self, HashContext, NodeHashes};
use crate::store::state::SqliteState;
use crate::store::{BlobOptions, Stores};
use crate::worktree::WorktreeVfs;

/// Where sluice reads and writes besides the repository itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Over `[data] root` of sluice.toml (`--data`, the daemon's
    /// `data_root`). Made absolute by [`Workspace::open`].
    pub data_root: Option<PathBuf>,
    /// Over `<repo>/.sluice`.
    pub state_dir: Option<PathBuf>,
    /// Where the blobs live (`--blobs`): the state directory, or a bucket.
    pub blobs: BlobOptions,
    /// The state on PostgreSQL (`--state URL`) instead of the state
    /// directory's database, which then holds only the source memo.
    pub state: Option<crate::store::PgConnect>,
    /// `PATH` for command actions (and the probe of their versions).
    pub path_env: OsString,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_root: None,
            state_dir: None,
            blobs: BlobOptions::default(),
            state: None,
            path_env: DEFAULT_PATH.into(),
        }
    }
}

/// The `PATH` command actions get when the caller has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Resolves the pipeline directories of a checkout view into a graph.
pub(crate) type Resolver<'a> = dyn FnMut(&dyn Vfs, &[RepoPath]) -> (Graph, Vec<Diagnostic>) + 'a;

/// Which view of the repository to read.
#[derive(Debug, Clone)]
pub enum Source {
    /// The files on disk under the root.
    Worktree,
    /// A revision of the git repository holding the root (a work tree or
    /// a subdirectory of one), read from git objects.
    Commit(String),
    /// A revision of the bare repository at the root (a daemon's mirror),
    /// the whole commit served.
    Bare(String),
}

/// A resolved repository and what was wrong with it.
pub struct Workspace {
    pub root: PathBuf,
    pub vfs: Box<dyn Vfs>,
    /// The commit read, when `--at` was given.
    pub commit: Option<String>,
    pub config: Option<RepoConfig>,
    pub graph: Graph,
    pub diagnostics: Vec<Diagnostic>,
    /// Warnings for the user that are not problems in the repository (a
    /// revision name that is both a branch and a tag, as git warns). The
    /// engine does not print: the front end shows them on stderr.
    pub warnings: Vec<String>,
    settings: Settings,
    /// `[data] root` of sluice.toml, canonical and checked to stay inside
    /// the repository; `None` when unset or refused (with a diagnostic).
    repo_data_root: Option<PathBuf>,
    /// True when `[data] root` was refused: no second diagnostic per source.
    data_root_refused: bool,
    /// The hashes, once computed: a second [`Workspace::hashes`] gives them
    /// again (the daemon times its plan before the run).
    pub(crate) hashed: Option<(Vec<Option<NodeHashes>>, HashContext)>,
    /// The daemon's incremental plan: what this workspace carries from the
    /// last plan to the next (see [`super::memo::PlanMemo`]).
    pub(crate) carried: Option<Box<super::memo::Carried>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("root", &self.root)
            .field("commit", &self.commit)
            .field("nodes", &self.graph.nodes.len())
            .field("diagnostics", &self.diagnostics.len())
            .finish_non_exhaustive()
    }
}

impl Workspace {
    /// Opens the repository at `root` (see [`Source`]) and resolves it.
    /// An `Err` is a problem reaching the repository; a problem in it is a
    /// diagnostic.
    pub fn open(root: &Path, source: &Source, settings: Settings) -> anyhow::Result<Workspace> {
        let mut warnings = Vec::new();
        let (vfs, commit): (Box<dyn Vfs>, Option<String>) = match source {
            Source::Commit(rev) => {
                let g = GitVfs::open(root, rev)?;
                warnings.extend(g.ambiguity());
                let id = g.commit_id();
                (Box::new(g), Some(id))
            }
            Source::Bare(rev) => {
                let g = GitVfs::open_bare(root, rev, &RepoPath::root())?;
                warnings.extend(g.ambiguity());
                let id = g.commit_id();
                (Box::new(g), Some(id))
            }
            Source::Worktree => (
                Box::new(
                    WorktreeVfs::new(root)
                        .with_context(|| format!("cannot open {}", root.display()))?,
                ),
                None,
            ),
        };
        let mut ws = Workspace::from_vfs(root, vfs, commit, settings)?;
        ws.warnings.extend(warnings);
        Ok(ws)
    }

    /// Resolves the repository that `vfs` serves. `root` is where a
    /// relative `[data] root` and the default state directory sit.
    pub fn from_vfs(
        root: &Path,
        vfs: Box<dyn Vfs>,
        commit: Option<String>,
        settings: Settings,
    ) -> anyhow::Result<Workspace> {
        Workspace::from_vfs_with(root, vfs, commit, settings, &mut |vfs, pipelines| {
            pipeline::compile(vfs, pipelines)
        })
    }

    /// [`Workspace::from_vfs`] with the pipelines resolved by `compile`
    /// (the daemon's incremental plan), given the checkout view and the
    /// pipeline directories.
    pub(crate) fn from_vfs_with(
        root: &Path,
        vfs: Box<dyn Vfs>,
        commit: Option<String>,
        settings: Settings,
        compile: &mut Resolver<'_>,
    ) -> anyhow::Result<Workspace> {
        let settings = Settings {
            data_root: settings
                .data_root
                .as_deref()
                .map(std::path::absolute)
                .transpose()?,
            state_dir: settings
                .state_dir
                .as_deref()
                .map(std::path::absolute)
                .transpose()?,
            blobs: settings.blobs,
            state: settings.state,
            path_env: settings.path_env,
        };
        let mut ws = Workspace {
            root: root.to_path_buf(),
            // What every checkout of the tree agrees on, whichever VFS reads it.
            vfs: Box::new(pipeline::vfs::CheckoutView::new(vfs)),
            commit,
            config: None,
            graph: Graph::default(),
            diagnostics: Vec::new(),
            warnings: Vec::new(),
            settings,
            repo_data_root: None,
            data_root_refused: false,
            hashed: None,
            carried: None,
        };
        let cfg_path = RepoPath::parse(config::FILE_NAME).expect("constant path is valid");
        let text = match ws.vfs.read_file(&cfg_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                ws.diag(
                    &cfg_path,
                    1,
                    format!(
                        "cannot read sluice.toml ({e}); a minimal one is:\n{}",
                        config::EXAMPLE
                    ),
                );
                return Ok(ws);
            }
        };
        let cfg = match config::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                ws.diag(&cfg_path, e.line, e.message);
                return Ok(ws);
            }
        };
        if ws.settings.data_root.is_none()
            && let Some(rel) = &cfg.data_root
        {
            match repo_data_root(&ws.root, rel) {
                Ok(dir) => ws.repo_data_root = Some(dir),
                Err(why) => {
                    ws.data_root_refused = true;
                    let line = line_of(&text, "root");
                    ws.diag(
                        &cfg_path,
                        line,
                        format!(
                            "[data] root `{rel}` {why}; it must be a real directory inside the repository (an administrator may point elsewhere with --data or the server's data_root)"
                        ),
                    );
                }
            }
        }
        let (pipelines, problems) = pipeline::find_pipelines(ws.vfs.as_ref(), &cfg.pipelines);
        for p in problems {
            ws.diag(&cfg_path, 1, p);
        }
        let (graph, diags) = compile(ws.vfs.as_ref(), &pipelines);
        ws.graph = graph;
        ws.diagnostics.extend(diags);
        ws.config = Some(cfg);
        Ok(ws)
    }

    fn diag(&mut self, path: &RepoPath, line: u32, message: String) {
        self.diagnostics.push(Diagnostic::new(path, line, message));
    }

    /// The data root on disk: `--data` / `SLUICE_DATA_ROOT` (or the
    /// daemon's `data_root`), trusted as given; else `[data] root` of
    /// sluice.toml, canonicalised when the workspace was opened and refused
    /// (`None`, with a diagnostic at sluice.toml) when a symlink takes it
    /// out of the repository or it holds the state or `.git`.
    pub fn data_root(&self) -> Option<PathBuf> {
        if let Some(d) = &self.settings.data_root {
            return Some(d.clone());
        }
        self.repo_data_root.clone()
    }

    /// The state directory: `--state-dir` / `SLUICE_STATE_DIR`, else
    /// `<repo>/.sluice`. Not checked: [`Workspace::open_stores`] and
    /// [`Workspace::existing_stores`] refuse one inside the repository that
    /// is, or sits below, a symlink.
    pub fn state_dir(&self) -> PathBuf {
        crate::store::state_dir(&self.root, self.settings.state_dir.as_deref())
    }

    /// The state directory, refused when it lies inside the repository and
    /// a symlink (one a branch could commit) would send the state, and so
    /// PHI, somewhere else. Anything that writes into the state directory
    /// goes through this (or [`Workspace::open_stores`]).
    pub fn checked_state_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self.state_dir();
        check_state_dir(&self.root, &dir)?;
        Ok(dir)
    }

    /// The team's PostgreSQL, when the state lives there (`--state`).
    pub fn shared_state(&self) -> Option<&crate::store::PgConnect> {
        self.settings.state.as_ref()
    }

    /// Opens the stores, creating them on first use.
    pub fn open_stores(&self) -> anyhow::Result<Stores> {
        let dir = self.checked_state_dir()?;
        Stores::open_with(&dir, &self.settings.blobs, self.settings.state.as_ref())
            .with_context(|| format!("cannot open the state in {}", dir.display()))
    }

    /// Opens the stores only if they exist (read-only commands should not
    /// create them).
    pub fn existing_stores(&self) -> anyhow::Result<Option<Stores>> {
        let dir = self.checked_state_dir()?;
        if dir.join("state.db").exists() || self.settings.state.is_some() {
            self.open_stores().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Hashes every node; sources are read from the data root (through
    /// the memo when a state database is given), and a missing source
    /// becomes a diagnostic at its `@source` line.
    pub fn hashes(&mut self, memo: Option<&SqliteState>) -> (Vec<Option<NodeHashes>>, HashContext) {
        if let Some(done) = &self.hashed {
            return done.clone();
        }
        let (ctx, problems) = self.hash_context(memo);
        for (o, m) in problems {
            self.diag(&o.file, o.line, m);
        }
        self.diagnostics.sort();
        self.diagnostics.dedup();
        let hashes = match self.carried.as_deref().and_then(|c| c.previous()) {
            Some(prev) => hash::definition_hashes_since(&self.graph, &ctx, &prev),
            None => hash::definition_hashes(&self.graph, &ctx),
        };
        self.hashed = Some((hashes.clone(), ctx.clone()));
        (hashes, ctx)
    }

    /// The engine versions, program identities and source digests, and the
    /// problems found reading sources (at their `@source` lines).
    fn hash_context(
        &self,
        memo: Option<&SqliteState>,
    ) -> (HashContext, Vec<(crate::pipeline::graph::Origin, String)>) {
        let mut ctx = HashContext::default();
        ctx.engine_versions.insert(
            "sqlite".into(),
            crate::exec::sqlite::sqlite_version().to_string(),
        );
        let mut programs: Vec<&str> = self
            .graph
            .nodes
            .iter()
            .filter_map(|n| match &n.action.action {
                crate::pipeline::graph::Action::Command(c) => crate::exec::command::program(c),
                _ => None,
            })
            .collect();
        programs.sort_unstable();
        programs.dedup();
        for p in programs {
            let v = self.program_identity(p);
            ctx.engine_versions.insert(format!("command:{p}"), v);
        }
        let data_root = self.data_root();
        let mut seen = HashSet::new();
        let mut problems = Vec::new();
        for node in &self.graph.nodes {
            for s in &node.sources {
                if !seen.insert(s.path.clone()) {
                    continue;
                }
                let Some(root) = &data_root else {
                    if self.data_root_refused {
                        // Said once, at sluice.toml.
                        continue;
                    }
                    problems.push((
                        s.origin.clone(),
                        format!(
                            "@source data://{}: no data root; set `[data] root` in sluice.toml",
                            s.path
                        ),
                    ));
                    continue;
                };
                let digest = crate::exec::resolve_source(root, &s.path).and_then(|path| {
                    let d = match memo {
                        Some(db) => crate::store::source::source_digest(db, &path)
                            .map_err(|e| e.to_string()),
                        None => std::fs::File::open(&path)
                            .and_then(crate::store::blob::digest_reader)
                            .map(|(d, _)| d)
                            .map_err(|e| e.to_string()),
                    };
                    d.map_err(|e| format!("data://{}: {e}", s.path))
                });
                match digest {
                    Ok(d) => {
                        ctx.sources.insert(s.path.clone(), d);
                    }
                    Err(e) => problems.push((s.origin.clone(), format!("@source {e}"))),
                }
            }
        }
        (ctx, problems)
    }

    /// What identifies the program of a command action in its nodes'
    /// hashes, found without running anything from the repository: only
    /// `run` executes code.
    ///
    /// - A path (`tools/clean.sh`, `./x`, `/opt/r/bin/Rscript`), or a bare
    ///   name that `PATH` resolves inside the repository: the SHA-256 of
    ///   the file's bytes read through the VFS (so editing it is a change),
    ///   or, for a path outside the repository, the path itself. Such a
    ///   program is never started here.
    /// - A bare name found on `PATH` outside the repository (`python3`,
    ///   `bash`, `Rscript`): the first line of `PROGRAM --version`. This
    ///   does start a process, but a system interpreter chosen by the
    ///   administrator's `PATH`, not repository code.
    fn program_identity(&self, program: &str) -> String {
        let canon_root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        if program.contains('/') {
            let in_repo = if program.starts_with('/') {
                // Followed on disk (a read, not a run): a link from
                // elsewhere into the repository is repository code too.
                let real =
                    std::fs::canonicalize(program).unwrap_or_else(|_| PathBuf::from(program));
                relative_inside(&canon_root, &real)
                    .or_else(|| relative_inside(&canon_root, Path::new(program)))
            } else {
                Some(program.to_string())
            };
            return match in_repo {
                Some(rel) => self.repo_file_identity(program, &rel),
                None => format!("path {program}"),
            };
        }
        match find_on_path(program, &self.settings.path_env) {
            None => "unavailable".into(),
            Some(found) => {
                let real = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
                match relative_inside(&canon_root, &real) {
                    Some(rel) => self.repo_file_identity(program, &rel),
                    None => crate::exec::command::interpreter_version(
                        &found.to_string_lossy(),
                        &self.settings.path_env,
                    ),
                }
            }
        }
    }

    /// A program inside the repository, by the digest of its bytes.
    fn repo_file_identity(&self, program: &str, rel: &str) -> String {
        let bytes = RepoPath::parse(rel)
            .map_err(|e| e.to_string())
            .and_then(|p| self.vfs.read_file(&p).map_err(|e| e.to_string()));
        match bytes {
            Ok(b) => format!("file {rel} {}", crate::plan::digest::Digest::of(&b)),
            Err(e) => format!("unavailable ({program}: {e})"),
        }
    }

    /// `PATH` for command actions.
    pub fn path_env(&self) -> &std::ffi::OsStr {
        &self.settings.path_env
    }

    /// Keeps only what `pipelines` need: the graph is resolved again from
    /// them alone, so a problem in another pipeline (a missing source, an
    /// undefined parameter) does not stop running these. `check` keeps
    /// the whole repository.
    pub fn narrow(&mut self, pipelines: &[RepoPath]) {
        if pipelines.is_empty() || pipelines == self.graph.pipelines.as_slice() {
            return;
        }
        let cfg_path = RepoPath::parse(config::FILE_NAME).expect("constant path is valid");
        self.diagnostics.retain(|d| d.path == cfg_path);
        let (graph, diags) = pipeline::compile(self.vfs.as_ref(), pipelines);
        self.hashed = None;
        self.carried = None;
        self.graph = graph;
        self.diagnostics.extend(diags);
    }

    /// Pipelines named on the command line, or all of them.
    pub fn select_pipelines(&self, names: &[String]) -> anyhow::Result<Vec<RepoPath>> {
        if names.is_empty() {
            return Ok(self.graph.pipelines.clone());
        }
        let mut out = Vec::new();
        for n in names {
            let p = RepoPath::parse(n).map_err(|e| anyhow::anyhow!("pipeline `{n}`: {e}"))?;
            if !self.graph.pipelines.contains(&p) {
                let known: Vec<String> =
                    self.graph.pipelines.iter().map(|p| p.to_string()).collect();
                bail!(
                    "no pipeline `{n}`; the pipelines are: {}",
                    if known.is_empty() {
                        "(none)".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
            out.push(p);
        }
        Ok(out)
    }
}

/// The 1-based line of sluice.toml where `key =` is set (the `[data]`
/// table's `root` for the data-root diagnostic), else 1.
fn line_of(text: &str, key: &str) -> u32 {
    let mut in_data = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_data = t.trim_start_matches('[').trim_end_matches(']').trim() == "data";
            continue;
        }
        if in_data && t.split('=').next().map(str::trim) == Some(key) {
            return u32::try_from(i + 1).unwrap_or(1);
        }
    }
    1
}

/// `[data] root` (already checked to be relative, without `..`) resolved
/// on disk below `root`: canonical, inside the repository, and neither
/// `.git` nor the default state directory nor a directory holding them.
/// `Err` says why not.
fn repo_data_root(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let canon_root = std::fs::canonicalize(root)
        .map_err(|e| format!("cannot be checked ({}: {e})", root.display()))?;
    let lexical = canon_root.join(rel);
    let real = match std::fs::canonicalize(&lexical) {
        Ok(real) => real,
        Err(_) => {
            // Missing (sources then fail as missing): but no link on the
            // way may be waiting to be completed somewhere else.
            if let Some(link) = first_symlink_below(&canon_root, &lexical) {
                return Err(format!(
                    "goes through the symlink {}, which cannot be resolved",
                    link.display()
                ));
            }
            return Ok(lexical);
        }
    };
    if !real.starts_with(&canon_root) {
        return Err(format!(
            "resolves to {}, outside the repository (a symlink leads out)",
            real.display()
        ));
    }
    for private in [".git", ".sluice"] {
        let p = canon_root.join(private);
        if p.starts_with(&real) || real.starts_with(&p) {
            return Err(format!("would expose {private}, which is not data"));
        }
    }
    Ok(real)
}

/// The first component of `path` below `root` (both absolute, `path`
/// lexically under `root`) that is a symlink.
fn first_symlink_below(root: &Path, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(root).ok()?;
    let mut here = root.to_path_buf();
    for c in rel.components() {
        here.push(c);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => return Some(here),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Refuses a state directory inside the repository (the default
/// `<repo>/.sluice`, or `--state-dir` pointing into it) that is a symlink,
/// sits below one, or holds one where the stores write: a branch could
/// commit such a link and send the state, and so PHI, to its target. A
/// state directory outside the repository is the administrator's and is
/// not checked.
fn check_state_dir(root: &Path, dir: &Path) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)?;
    // The root as given and canonical (a root reached through a symlink,
    // like `/tmp` on some systems, is matched either way).
    let mut bases = vec![std::path::absolute(root)?];
    bases.extend(std::fs::canonicalize(root).ok());
    let Some(base) = bases.into_iter().find(|b| dir.starts_with(b)) else {
        return Ok(());
    };
    let refuse = |link: &Path| -> anyhow::Error {
        let target = std::fs::read_link(link)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        anyhow::anyhow!(
            "refusing the state directory {}: {} is a symlink (to {target}); the state holds PHI and must stay in a real directory inside the repository: remove the link, or pass --state-dir",
            dir.display(),
            link.display()
        )
    };
    if let Some(link) = first_symlink_below(&base, &dir) {
        return Err(refuse(&link));
    }
    // What the stores create inside it: a committed `.sluice/blobs` link
    // would do the same as a `.sluice` link.
    let mut dirs = vec![(dir.clone(), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_symlink() {
                return Err(refuse(&e.path()));
            }
            // The state dir, `blobs`, `blobs/sha256`: the blob files in the
            // fan-out directories are not listed (they are many, renamed
            // into place and verified when read).
            if t.is_dir() && depth < 2 {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    Ok(())
}

/// The path of `real` below `root`, as a repo path string, when it lies
/// strictly below it.
fn relative_inside(root: &Path, real: &Path) -> Option<String> {
    let rel = real.strip_prefix(root).ok()?;
    let s = rel.to_str()?;
    if s.is_empty() {
        return None;
    }
    Some(s.to_string())
}

/// Where `PATH` (as command actions get it) finds `program`: the first
/// entry holding an executable file of that name. Relative entries are
/// taken from the current directory, as `execvp` does.
fn find_on_path(program: &str, path_env: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    for dir in std::env::split_paths(path_env) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = std::path::absolute(dir.join(program)).ok()?;
        if let Ok(m) = std::fs::metadata(&candidate)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Some(candidate);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn executable(root: &Path, rel: &str, text: &str) {
        write(root, rel, text);
        std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn no_program_inside_the_repository_is_run_to_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        let marker = tmp.path().join("ran");
        let evil = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
        write(&root, "sluice.toml", "[project]\npipelines = [\"p\"]\n");
        // A bare name that `PATH` finds in the repository, a relative path,
        // an absolute path into the repository, one outside, a system one.
        executable(&root, "bin/python3", &evil);
        executable(&root, "tools/x.sh", &evil);
        let abs = format!("{}/tools/x.sh", root.display());
        write(&root, "p/A.sh", "# @command python3 {script}\necho\n");
        write(&root, "p/B.sh", "# @command tools/x.sh {script}\necho\n");
        write(
            &root,
            "p/C.sh",
            &format!("# @command {abs} {{script}}\necho\n"),
        );
        write(
            &root,
            "p/D.sh",
            "# @command /opt/nowhere/R {script}\necho\n",
        );
        write(&root, "p/E.sh", "echo\n");
        let path_env = format!("{}/bin:/usr/bin:/bin", root.display());
        let settings = Settings {
            path_env: path_env.into(),
            ..Settings::default()
        };
        let mut ws = Workspace::open(&root, &Source::Worktree, settings).unwrap();
        assert!(ws.diagnostics.is_empty(), "{:?}", ws.diagnostics);
        let (_, ctx) = ws.hashes(None);
        assert!(!marker.exists(), "a repository program was run");
        let v = |p: &str| ctx.engine_versions[&format!("command:{p}")].clone();
        let digest = crate::plan::digest::Digest::of(evil.as_bytes());
        assert_eq!(v("python3"), format!("file bin/python3 {digest}"));
        assert_eq!(v("tools/x.sh"), format!("file tools/x.sh {digest}"));
        assert_eq!(v(&abs), format!("file tools/x.sh {digest}"));
        assert_eq!(v("/opt/nowhere/R"), "path /opt/nowhere/R");
        // A system interpreter still gives its version.
        assert!(v("bash").contains("bash"), "{}", v("bash"));
    }

    #[test]
    fn state_dir_inside_the_repository_must_be_real() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        let outside = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let dot = root.join(".sluice");
        // Missing, or a real directory: fine.
        check_state_dir(&root, &dot).unwrap();
        std::fs::create_dir_all(dot.join("blobs/sha256/ab")).unwrap();
        check_state_dir(&root, &dot).unwrap();
        // A link anywhere the stores write is refused.
        symlink(&outside, dot.join("blobs/sha256/cd")).unwrap();
        let e = check_state_dir(&root, &dot).unwrap_err().to_string();
        assert!(e.contains("sha256/cd is a symlink"), "{e}");
        std::fs::remove_file(dot.join("blobs/sha256/cd")).unwrap();
        symlink(&outside, dot.join("state.db")).unwrap();
        assert!(check_state_dir(&root, &dot).is_err());
        std::fs::remove_dir_all(&dot).unwrap();
        symlink(&outside, &dot).unwrap();
        let e = check_state_dir(&root, &dot).unwrap_err().to_string();
        assert!(e.contains(".sluice is a symlink"), "{e}");
        // A state dir below a linked directory of the repository.
        symlink(&outside, root.join("state")).unwrap();
        assert!(check_state_dir(&root, &root.join("state/s")).is_err());
        // Outside the repository it is the administrator's choice.
        check_state_dir(&root, &outside).unwrap();
        check_state_dir(&root, &tmp.path().join("link-ok")).unwrap();
    }

    #[test]
    fn repo_data_root_stays_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::create_dir_all(tmp.path().join("out")).unwrap();
        let canon = std::fs::canonicalize(&root).unwrap();
        assert_eq!(repo_data_root(&root, "data").unwrap(), canon.join("data"));
        symlink("data/sub", root.join("inner")).unwrap();
        assert_eq!(
            repo_data_root(&root, "inner").unwrap(),
            canon.join("data/sub")
        );
        // Missing: kept as is, the sources will say so.
        assert_eq!(repo_data_root(&root, "none").unwrap(), canon.join("none"));
        symlink("../out", root.join("link")).unwrap();
        let e = repo_data_root(&root, "link").unwrap_err();
        assert!(e.contains("outside the repository"), "{e}");
        symlink("../gone", root.join("dangling")).unwrap();
        assert!(repo_data_root(&root, "dangling/x").is_err());
        for exposing in [".", ".sluice", ".git/objects"] {
            std::fs::create_dir_all(root.join(".git/objects")).unwrap();
            std::fs::create_dir_all(root.join(".sluice")).unwrap();
            assert!(repo_data_root(&root, exposing).is_err(), "{exposing}");
        }
        assert_eq!(
            line_of("[project]\nroot = 1\n[data]\n\nroot = \"d\"\n", "root"),
            5
        );
        assert_eq!(line_of("", "root"), 1);
    }
}
