//! Opening the repository a command names: `--repo` or the nearest
//! directory holding sluice.toml, the working tree or `--at REV`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::GlobalArgs;
use crate::config;
use crate::engine::workspace::{Settings, Source, Workspace};

/// Opens and resolves the repository the global arguments name.
pub fn load(global: &GlobalArgs) -> anyhow::Result<Workspace> {
    let root = find_root(global.repo.as_deref(), global.at.is_some())?;
    let source = match &global.at {
        Some(rev) => Source::Commit(rev.clone()),
        None => Source::Worktree,
    };
    let state = match &global.state {
        Some(url) => Some(
            crate::store::shared::parse_state(url, &super::pg_credentials()).context("--state")?,
        ),
        None => None,
    };
    let settings = Settings {
        data_root: global.data.clone(),
        state_dir: global.state_dir.clone(),
        blobs: crate::store::BlobOptions::from_settings(
            global.blobs.as_deref(),
            global.blob_cache_size.as_deref(),
            (
                "--blobs / SLUICE_BLOBS",
                "--blob-cache-size / SLUICE_BLOB_CACHE_SIZE",
            ),
        )?,
        state,
        path_env: global.path_env.clone(),
    };
    let ws = Workspace::open(&root, &source, settings)?;
    for w in &ws.warnings {
        let _ = writeln!(std::io::stderr().lock(), "{w}");
    }
    Ok(ws)
}

/// Prints the diagnostics to stderr with a count; true when there were any.
pub fn report_diagnostics(ws: &Workspace) -> bool {
    let mut err = std::io::stderr().lock();
    for d in &ws.diagnostics {
        // A failed write to stderr leaves nothing better to do.
        let _ = writeln!(err, "{d}");
    }
    if !ws.diagnostics.is_empty() {
        let n = ws.diagnostics.len();
        let _ = writeln!(
            err,
            "sluice: {n} problem{} found",
            if n == 1 { "" } else { "s" }
        );
    }
    !ws.diagnostics.is_empty()
}

/// `--repo`, else the nearest directory at or above the current one that
/// holds sluice.toml (with `--at`, the nearest git work tree will do too,
/// since sluice.toml is read from the commit).
fn find_root(repo: Option<&Path>, at_commit: bool) -> anyhow::Result<PathBuf> {
    if let Some(r) = repo {
        if !r.is_dir() {
            bail!("--repo {}: not a directory", r.display());
        }
        // The same exit (an error, not a problem in the repository) as
        // when the nearest sluice.toml is looked for and not found.
        if !at_commit && !r.join(config::FILE_NAME).is_file() {
            bail!(
                "no sluice.toml in {}; pass the directory holding it as --repo DIR, or create sluice.toml:\n{}",
                r.display(),
                config::EXAMPLE
            );
        }
        // Absolute, so that paths handed to command actions (which run in
        // their own directory) still resolve.
        return r
            .canonicalize()
            .with_context(|| format!("--repo {}", r.display()));
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    for dir in cwd.ancestors() {
        // With `--at`, a work tree or a bare repository (`HEAD` and `objects/`).
        let is_git = dir.join(".git").exists()
            || (dir.join("HEAD").is_file() && dir.join("objects").is_dir());
        if dir.join(config::FILE_NAME).is_file() || (at_commit && is_git) {
            return Ok(dir.to_path_buf());
        }
    }
    bail!(
        "no sluice.toml in {} or any parent directory; run sluice inside a pipelines repository, pass --repo DIR, or create sluice.toml:\n{}",
        cwd.display(),
        config::EXAMPLE
    )
}
