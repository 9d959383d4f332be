//! Bare mirrors of the configured repositories under `state_dir/mirrors`,
//! fetched with the `git` program before each job. The URL comes from the
//! server config, never from a payload; the commit is then read from git
//! objects with no checkout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

use crate::plan::digest::Digest;

/// The mirrors of one daemon. Fetches of one repository are serialised;
/// different repositories fetch side by side.
#[derive(Debug)]
pub struct Mirrors {
    dir: PathBuf,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(state_dir: &Path) -> Mirrors {
        Mirrors {
            dir: state_dir.join("mirrors"),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Where the mirror of `name` lives: named by a hash, so no repository
    /// name can shape a path.
    pub fn path(&self, forge: &str, name: &str) -> PathBuf {
        let id = Digest::of(format!("{forge}\n{name}").as_bytes()).hex();
        self.dir.join(format!("{}.git", &id[..32]))
    }

    /// The lock serialising git commands on the mirror at `path`.
    fn lock_for(&self, path: &Path) -> Arc<Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(path.to_path_buf()).or_default())
    }

    /// Brings the mirror of `name` up to date with `clone_url` (cloning it
    /// the first time) and returns its path.
    pub fn fetch(&self, forge: &str, name: &str, clone_url: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(forge, name);
        let lock = self.lock_for(&path);
        let _held = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if path.join("HEAD").is_file() {
            git(&["fetch", "--prune", "--quiet", "origin"], Some(&path))
                .with_context(|| format!("cannot fetch {name}"))?;
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // Clone beside the final place and rename: a kill mid-clone leaves
        // a temp dir, never a half mirror where a whole one is expected.
        let tmp = tempfile::Builder::new()
            .prefix(".clone-")
            .tempdir_in(&self.dir)
            .with_context(|| format!("cannot create a temp dir in {}", self.dir.display()))?;
        let into = tmp.path().join("m.git");
        let into_s = into
            .to_str()
            .context("the state directory's path is not UTF-8")?;
        git(
            &["clone", "--mirror", "--quiet", "--", clone_url, into_s],
            None,
        )
        .with_context(|| format!("cannot clone {name}"))?;
        std::fs::rename(&into, &path)
            .with_context(|| format!("cannot move the mirror to {}", path.display()))?;
        Ok(path)
    }
}

impl Mirrors {
    /// Writes `text` as the `refs/notes/sluice` note of `sha` (replacing an
    /// older one) and pushes the notes ref back to `clone_url`, where
    /// analysts fetch it. For `forge = "git"` repositories.
    pub fn write_note(
        &self,
        forge: &str,
        name: &str,
        clone_url: &str,
        sha: &str,
        text: &str,
    ) -> anyhow::Result<()> {
        let path = self.fetch(forge, name, clone_url)?;
        let lock = self.lock_for(&path);
        let _held = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = tempfile::NamedTempFile::new().context("cannot write the note")?;
        std::fs::write(file.path(), text).context("cannot write the note")?;
        let note = file
            .path()
            .to_str()
            .context("the temp dir's path is not UTF-8")?;
        let identity = [
            "-c",
            "user.name=sluice",
            "-c",
            "user.email=sluice@localhost",
        ];
        let mut add: Vec<&str> = identity.to_vec();
        add.extend(["notes", "--ref=sluice", "add", "-f", "-F", note, sha]);
        git(&add, Some(&path)).with_context(|| format!("cannot write the note on {sha}"))?;
        // To the URL, not the mirror's remote: a mirror's remote pushes
        // every ref.
        git(
            &[
                "push",
                "--quiet",
                clone_url,
                "refs/notes/sluice:refs/notes/sluice",
            ],
            Some(&path),
        )
        .with_context(|| format!("cannot push the notes to {name}"))?;
        Ok(())
    }
}

/// Variables git sets for hooks (and a caller may have set) that would
/// point a git command at another repository or object store.
const GIT_LOCATION_VARS: [&str; 9] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
    "GIT_NAMESPACE",
    "GIT_COMMON_DIR",
    "GIT_CEILING_DIRECTORIES",
];

/// Runs git on the mirror. The daemon's own `HOME` and `SSH_AUTH_SOCK` are
/// kept (an SSH `clone_url` needs the deploy key); variables that would
/// point git at another repository are dropped, and git never prompts for
/// credentials.
fn git(args: &[&str], dir: Option<&Path>) -> anyhow::Result<()> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    for v in GIT_LOCATION_VARS {
        cmd.env_remove(v);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = cmd.output().context("cannot run git")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        bail!("git {} failed: {first}", args[0]);
    }
    Ok(())
}
