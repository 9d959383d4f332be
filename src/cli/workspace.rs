//! Loading a repository for a command: find the root, choose the working
//! tree or a commit, read `sluice.toml`, resolve the pipelines.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::config::{self, RepoConfig};
use crate::git::GitVfs;
use crate::pipeline::diag::Diagnostic;
use crate::pipeline::{self, Graph, RepoPath, Vfs};
use crate::plan::digest::Digest;
use crate::plan::hash::{self, HashContext, NodeHashes};
use crate::plan::manifest::Manifest;
use crate::store::Stores;
use crate::store::state::StateDb;
use crate::worktree::WorktreeVfs;

/// A resolved repository and what was wrong with it.
pub struct Workspace {
    pub root: PathBuf,
    pub vfs: Box<dyn Vfs>,
    /// The commit read, when `--at` was given.
    pub commit: Option<String>,
    pub config: Option<RepoConfig>,
    pub graph: Graph,
    pub diagnostics: Vec<Diagnostic>,
    data_override: Option<PathBuf>,
    state_override: Option<PathBuf>,
    /// `PATH` for command actions (and the probe of their versions).
    path_env: std::ffi::OsString,
}

impl Workspace {
    pub fn load(global: &GlobalArgs) -> anyhow::Result<Workspace> {
        let root = find_root(global.repo.as_deref(), global.at.is_some())?;
        let (vfs, commit): (Box<dyn Vfs>, Option<String>) = match &global.at {
            Some(rev) => {
                let g = GitVfs::open(&root, rev)?;
                let id = g.commit_id();
                (Box::new(g), Some(id))
            }
            None => (
                Box::new(
                    WorktreeVfs::new(&root)
                        .with_context(|| format!("cannot open {}", root.display()))?,
                ),
                None,
            ),
        };
        let mut ws = Workspace {
            root,
            vfs,
            commit,
            config: None,
            graph: Graph::default(),
            diagnostics: Vec::new(),
            path_env: global.path_env.clone(),
            data_override: global
                .data
                .as_deref()
                .map(std::path::absolute)
                .transpose()?,
            state_override: global
                .state_dir
                .as_deref()
                .map(std::path::absolute)
                .transpose()?,
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

    /// Prints the diagnostics to stderr with a count; true when there were any.
    pub fn report_diagnostics(&self) -> bool {
        let mut err = std::io::stderr().lock();
        for d in &self.diagnostics {
            // A failed write to stderr leaves nothing better to do.
            let _ = writeln!(err, "{d}");
        }
        if !self.diagnostics.is_empty() {
            let n = self.diagnostics.len();
            let _ = writeln!(
                err,
                "sluice: {n} problem{} found",
                if n == 1 { "" } else { "s" }
            );
        }
        !self.diagnostics.is_empty()
    }

    /// The data root on disk: `--data` / `SLUICE_DATA_ROOT`, else
    /// `[data] root` relative to the repository.
    pub fn data_root(&self) -> Option<PathBuf> {
        if let Some(d) = &self.data_override {
            return Some(d.clone());
        }
        let rel = self.config.as_ref()?.data_root.as_ref()?;
        Some(self.root.join(rel))
    }

    /// The state directory: `--state-dir` / `SLUICE_STATE_DIR`, else
    /// `<repo>/.sluice`.
    pub fn state_dir(&self) -> PathBuf {
        crate::store::state_dir(&self.root, self.state_override.as_deref())
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
            let v = crate::exec::command::interpreter_version(p, &self.path_env);
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

/// `--repo`, else the nearest directory at or above the current one that
/// holds sluice.toml (with `--at`, the nearest git work tree will do too,
/// since sluice.toml is read from the commit).
fn find_root(repo: Option<&Path>, at_commit: bool) -> anyhow::Result<PathBuf> {
    if let Some(r) = repo {
        if !r.is_dir() {
            bail!("--repo {}: not a directory", r.display());
        }
        // Absolute, so that paths handed to command actions (which run in
        // their own directory) still resolve.
        return r
            .canonicalize()
            .with_context(|| format!("--repo {}", r.display()));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    for dir in cwd.ancestors() {
        if dir.join(config::FILE_NAME).is_file() || (at_commit && dir.join(".git").exists()) {
            return Ok(dir.to_path_buf());
        }
    }
    bail!(
        "no sluice.toml in {} or any parent directory; run sluice inside a pipelines repository, pass --repo DIR, or create sluice.toml:\n{}",
        cwd.display(),
        config::EXAMPLE
    )
}

/// The ref naming a pipeline's production manifest.
pub fn production_ref(pipeline: &RepoPath) -> String {
    format!("production/{pipeline}")
}

/// Reads and parses a manifest blob.
pub fn load_manifest(stores: &Stores, digest: &Digest) -> anyhow::Result<Manifest> {
    let bytes = stores
        .blobs
        .get(digest)
        .with_context(|| format!("cannot read manifest {digest}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("manifest {digest} is not valid"))
}

/// The production manifest of a pipeline, if one was promoted.
pub fn production_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
) -> anyhow::Result<Option<(Digest, Manifest)>> {
    match stores.state.ref_get(&production_ref(pipeline))? {
        Some(d) => Ok(Some((d, load_manifest(stores, &d)?))),
        None => Ok(None),
    }
}

/// The manifest of the last recorded run of a pipeline.
pub fn last_run_manifest(
    stores: &Stores,
    pipeline: &RepoPath,
) -> anyhow::Result<Option<(Digest, Manifest)>> {
    match stores.state.last_run(pipeline.as_str())? {
        Some(run) => Ok(Some((run.manifest, load_manifest(stores, &run.manifest)?))),
        None => Ok(None),
    }
}
