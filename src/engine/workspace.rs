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
use crate::store::Stores;
use crate::store::state::StateDb;
use crate::worktree::WorktreeVfs;

/// Where sluice reads and writes besides the repository itself.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Over `[data] root` of sluice.toml (`--data`, the daemon's
    /// `data_root`). Made absolute by [`Workspace::open`].
    pub data_root: Option<PathBuf>,
    /// Over `<repo>/.sluice`.
    pub state_dir: Option<PathBuf>,
    /// `PATH` for command actions (and the probe of their versions).
    pub path_env: OsString,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_root: None,
            state_dir: None,
            path_env: DEFAULT_PATH.into(),
        }
    }
}

/// The `PATH` command actions get when the caller has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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
    settings: Settings,
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
        let (vfs, commit): (Box<dyn Vfs>, Option<String>) = match source {
            Source::Commit(rev) => {
                let g = GitVfs::open(root, rev)?;
                let id = g.commit_id();
                (Box::new(g), Some(id))
            }
            Source::Bare(rev) => {
                let g = GitVfs::open_bare(root, rev, &RepoPath::root())?;
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
        Workspace::from_vfs(root, vfs, commit, settings)
    }

    /// Resolves the repository that `vfs` serves. `root` is where a
    /// relative `[data] root` and the default state directory sit.
    pub fn from_vfs(
        root: &Path,
        vfs: Box<dyn Vfs>,
        commit: Option<String>,
        settings: Settings,
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
            path_env: settings.path_env,
        };
        let mut ws = Workspace {
            root: root.to_path_buf(),
            vfs,
            commit,
            config: None,
            graph: Graph::default(),
            diagnostics: Vec::new(),
            settings,
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
        let (pipelines, problems) = pipeline::find_pipelines(ws.vfs.as_ref(), &cfg.pipelines);
        for p in problems {
            ws.diag(&cfg_path, 1, p);
        }
        let (graph, diags) = pipeline::compile(ws.vfs.as_ref(), &pipelines);
        ws.graph = graph;
        ws.diagnostics.extend(diags);
        ws.config = Some(cfg);
        Ok(ws)
    }

    fn diag(&mut self, path: &RepoPath, line: u32, message: String) {
        self.diagnostics.push(Diagnostic {
            path: path.clone(),
            line,
            message,
        });
    }

    /// The data root on disk: `--data` / `SLUICE_DATA_ROOT`, else
    /// `[data] root` relative to the repository.
    pub fn data_root(&self) -> Option<PathBuf> {
        if let Some(d) = &self.settings.data_root {
            return Some(d.clone());
        }
        let rel = self.config.as_ref()?.data_root.as_ref()?;
        Some(self.root.join(rel))
    }

    /// The state directory: `--state-dir` / `SLUICE_STATE_DIR`, else
    /// `<repo>/.sluice`.
    pub fn state_dir(&self) -> PathBuf {
        crate::store::state_dir(&self.root, self.settings.state_dir.as_deref())
    }

    /// Opens the stores, creating them on first use.
    pub fn open_stores(&self) -> anyhow::Result<Stores> {
        let dir = self.state_dir();
        Stores::open(&dir).with_context(|| format!("cannot open the state in {}", dir.display()))
    }

    /// Opens the stores only if they exist (read-only commands should not
    /// create them).
    pub fn existing_stores(&self) -> anyhow::Result<Option<Stores>> {
        if self.state_dir().join("state.db").exists() {
            self.open_stores().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Hashes every node; sources are read from the data root (through
    /// the memo when a state database is given), and a missing source
    /// becomes a diagnostic at its `@source` line.
    pub fn hashes(&mut self, memo: Option<&StateDb>) -> (Vec<Option<NodeHashes>>, HashContext) {
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
            let v = crate::exec::command::interpreter_version(p, &self.settings.path_env);
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
        for (o, m) in problems {
            self.diag(&o.file, o.line, m);
        }
        self.diagnostics.sort();
        self.diagnostics.dedup();
        (hash::definition_hashes(&self.graph, &ctx), ctx)
    }

    /// `PATH` for command actions.
    pub fn path_env(&self) -> &std::ffi::OsStr {
        &self.settings.path_env
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
