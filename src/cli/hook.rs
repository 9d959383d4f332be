//! `sluice hook`: server-side git hooks for a plain git server.
//!
//! - `install --git-dir DIR` writes thin `pre-receive` and `post-receive`
//!   scripts calling this binary; a hook already there is kept and chained,
//!   and `uninstall` puts it back.
//! - `pre-receive` checks every pipeline at each pushed branch commit,
//!   reading the push's quarantined objects straight from the object
//!   database (no checkout), and refuses the push with `path:line:
//!   message` lines.
//! - `post-receive` tells the daemon (`git config sluice.server`) about the
//!   pushed branches; a daemon that is down costs a warning, never the push.

use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::engine::{Settings, Source, Workspace};

#[derive(Debug, Args)]
pub struct HookArgs {
    #[command(subcommand)]
    pub command: HookCommand,
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Install pre-receive and post-receive into a bare repository. Hooks
    /// already there keep running (before sluice's); installing twice
    /// changes nothing.
    ///
    /// Then tell post-receive where the daemon is:
    ///   git --git-dir DIR config sluice.server https://sluice.example.org
    ///   git --git-dir DIR config sluice.secretFile /etc/sluice/hook-secret
    ///   git --git-dir DIR config sluice.repo pipelines
    Install(InstallArgs),
    /// Remove sluice's hooks and restore the ones they replaced.
    Uninstall(InstallArgs),
    /// Run as the pre-receive hook: `<old> <new> <ref>` lines on stdin.
    PreReceive(PreReceiveArgs),
    /// Run as the post-receive hook: `<old> <new> <ref>` lines on stdin.
    PostReceive,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The bare repository (the one pushed to).
    #[arg(long, value_name = "DIR")]
    pub git_dir: PathBuf,
    /// The sluice binary the hooks call. Default: this one.
    #[arg(long, value_name = "PATH")]
    pub sluice: Option<PathBuf>,
}

/// Where git says the push's objects are (set by git for the hook).
#[derive(Debug, Args)]
pub struct PreReceiveArgs {
    #[arg(long, env = "GIT_DIR", default_value = ".", hide = true)]
    pub git_dir: PathBuf,
    /// The quarantine holding the pushed objects.
    #[arg(long, env = "GIT_OBJECT_DIRECTORY", hide = true)]
    pub object_directory: Option<PathBuf>,
    /// The repository's own object store(s), `:`-separated.
    #[arg(long, env = "GIT_ALTERNATE_OBJECT_DIRECTORIES", hide = true)]
    pub alternate_object_directories: Option<String>,
}

const HOOKS: [&str; 2] = ["pre-receive", "post-receive"];
/// The first lines of every hook sluice writes; how it knows its own.
const MARK: &str = "# sluice-hook v1";
/// Where a hook that was already there is kept, beside sluice's.
const CHAINED: &str = "sluice-chained";

pub fn run(global: &GlobalArgs, args: &HookArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        HookCommand::Install(a) => install(a),
        HookCommand::Uninstall(a) => uninstall(a),
        HookCommand::PreReceive(a) => pre_receive(global, a),
        HookCommand::PostReceive => post_receive(),
    }
}

fn hooks_dir(git_dir: &Path) -> anyhow::Result<PathBuf> {
    if !git_dir.join("objects").is_dir() || !git_dir.join("HEAD").is_file() {
        bail!(
            "{} is not a git directory (a bare repository, or a work tree's .git)",
            git_dir.display()
        );
    }
    let dir = git_dir.join("hooks");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The script of one hook: it hands its stdin to the chained hook (if any,
/// and stops when that one refuses) and then to sluice.
fn script(name: &str, sluice: &Path) -> anyhow::Result<String> {
    let bin = sluice
        .to_str()
        .context("the sluice binary's path is not UTF-8")?;
    let quoted = format!("'{}'", bin.replace('\'', r"'\''"));
    let chained_fails = if name == "pre-receive" {
        "exit $?"
    } else {
        // post-receive cannot undo a push: run sluice's part anyway.
        ":"
    };
    Ok(format!(
        "#!/bin/sh\n{MARK}: written by `sluice hook install`; `sluice hook uninstall` restores\n\
         # the hook that was here before (kept as {name}.{CHAINED}).\n\
         input=$(mktemp) || exit 1\n\
         trap 'rm -f \"$input\"' EXIT\n\
         cat > \"$input\"\n\
         if [ -x \"$0.{CHAINED}\" ]; then\n\
         \x20 \"$0.{CHAINED}\" \"$@\" < \"$input\" || {chained_fails}\n\
         fi\n\
         {quoted} hook {name} < \"$input\"\n"
    ))
}

fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|t| t.lines().nth(1).is_some_and(|l| l.starts_with(MARK)))
}

fn install(a: &InstallArgs) -> anyhow::Result<ExitCode> {
    let dir = hooks_dir(&a.git_dir)?;
    let sluice = match &a.sluice {
        Some(p) => std::path::absolute(p)?,
        None => std::env::current_exe().context("cannot find this sluice binary")?,
    };
    for name in HOOKS {
        let path = dir.join(name);
        let text = script(name, &sluice)?;
        if is_ours(&path) && std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            println!("{name}: already installed");
            continue;
        }
        let chained = dir.join(format!("{name}.{CHAINED}"));
        if path.exists() && !is_ours(&path) {
            if chained.exists() {
                bail!(
                    "{} exists, and so does {}: move one of them away first",
                    path.display(),
                    chained.display()
                );
            }
            std::fs::rename(&path, &chained)
                .with_context(|| format!("cannot keep {}", path.display()))?;
            println!("{name}: the hook already there is kept and runs first ({name}.{CHAINED})");
        }
        // Written beside and renamed: a push never sees half a hook.
        let tmp = dir.join(format!(".{name}.sluice-tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot install {}", path.display()))?;
        println!("{name}: installed");
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(a: &InstallArgs) -> anyhow::Result<ExitCode> {
    let dir = hooks_dir(&a.git_dir)?;
    for name in HOOKS {
        let path = dir.join(name);
        let chained = dir.join(format!("{name}.{CHAINED}"));
        if !is_ours(&path) {
            println!("{name}: not sluice's; left alone");
            continue;
        }
        if chained.exists() {
            std::fs::rename(&chained, &path)
                .with_context(|| format!("cannot restore {}", path.display()))?;
            println!("{name}: restored the hook that was there before");
        } else {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            println!("{name}: removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `<old> <new> <ref>` lines.
fn ref_updates() -> anyhow::Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read the ref updates on stdin")?;
        let mut f = line.split_whitespace();
        let (Some(old), Some(new), Some(r)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        out.push((old.to_string(), new.to_string(), r.to_string()));
    }
    Ok(out)
}

fn is_deleted(sha: &str) -> bool {
    sha.bytes().all(|b| b == b'0')
}

/// The push's objects, seen without a checkout: a scratch git directory
/// whose object store is the quarantine (`GIT_OBJECT_DIRECTORY`) with the
/// repository's own store (`GIT_ALTERNATE_OBJECT_DIRECTORIES`) as
/// alternates. gix does not read those variables itself; nothing is
/// written into the repository.
struct PushView {
    dir: tempfile::TempDir,
}

impl PushView {
    fn new(
        git_dir: &Path,
        objects: Option<PathBuf>,
        alternates: Option<String>,
    ) -> anyhow::Result<PushView> {
        let dir = tempfile::Builder::new().prefix("sluice-push-").tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("objects/info"))?;
        std::fs::create_dir_all(root.join("refs/heads"))?;
        std::fs::write(root.join("HEAD"), "ref: refs/heads/main\n")?;
        std::fs::write(
            root.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        )?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { git_dir.join(p) };
        let mut stores = Vec::new();
        if let Some(o) = objects {
            stores.push(abs(o));
        }
        for a in alternates
            .iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
        {
            stores.push(abs(PathBuf::from(a)));
        }
        // Outside a push (a test, a manual run) the repository's own store.
        stores.push(git_dir.join("objects"));
        let mut text = String::new();
        for s in stores {
            let s = s.canonicalize().unwrap_or(s);
            let s = s
                .to_str()
                .context("an object directory's path is not UTF-8")?;
            text.push_str(s);
            text.push('\n');
        }
        std::fs::write(root.join("objects/info/alternates"), text)?;
        Ok(PushView { dir })
    }
}

fn pre_receive(global: &GlobalArgs, a: &PreReceiveArgs) -> anyhow::Result<ExitCode> {
    let updates = ref_updates()?;
    // A hook runs with GIT_DIR set (`.` in a bare repository).
    let git_dir = std::path::absolute(&a.git_dir)?;
    let view = PushView::new(
        &git_dir,
        a.object_directory.clone(),
        a.alternate_object_directories.clone(),
    )?;
    let mut refused = false;
    for (_, new, git_ref) in updates {
        // Deleting a branch and pushing tags are not checked.
        if is_deleted(&new) || !git_ref.starts_with("refs/heads/") {
            continue;
        }
        let settings = Settings {
            data_root: None,
            state_dir: None,
            path_env: global.path_env.clone(),
        };
        let ws = match Workspace::open(view.dir.path(), &Source::Bare(new.clone()), settings) {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("sluice: cannot read {git_ref} at {}: {e:#}", short(&new));
                refused = true;
                continue;
            }
        };
        // A commit with no sluice.toml is not a pipelines repository.
        if ws.config.is_none()
            && ws.diagnostics.iter().any(|d| {
                d.path.as_str() == crate::config::FILE_NAME && d.message.starts_with("cannot read")
            })
        {
            continue;
        }
        if !ws.diagnostics.is_empty() {
            refused = true;
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "sluice: push of {git_ref} refused: the pipelines at {} do not check",
                short(&new)
            );
            for d in &ws.diagnostics {
                let _ = writeln!(err, "{d}");
            }
        }
    }
    Ok(if refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// `git config --get KEY` in the repository the hook runs in.
fn git_config(key: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["config", "--get", key])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

fn post_receive() -> anyhow::Result<ExitCode> {
    let updates: Vec<serde_json::Value> = ref_updates()?
        .into_iter()
        .filter(|(_, _, r)| r.starts_with("refs/heads/"))
        .map(|(old, new, r)| serde_json::json!({ "old": old, "new": new, "ref": r }))
        .collect();
    if updates.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // The push is in: nothing below may fail it, only warn.
    let (Some(server), Some(secret_file), Some(repo)) = (
        git_config("sluice.server"),
        git_config("sluice.secretFile"),
        git_config("sluice.repo"),
    ) else {
        eprintln!(
            "sluice: not reported to the daemon: set sluice.server, sluice.secretFile and sluice.repo (git config)"
        );
        return Ok(ExitCode::SUCCESS);
    };
    let secret = match std::fs::read_to_string(&secret_file) {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            eprintln!(
                "sluice: not reported to the daemon: cannot read sluice.secretFile {secret_file}: {e}"
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let http = crate::forge::http::Http::new(
        &server,
        secret.clone(),
        vec![("Authorization", format!("Bearer {secret}"))],
    );
    let body = serde_json::json!({ "repo": repo, "updates": updates });
    match http.write(crate::forge::http::Write::Post, "/hooks/git", &body) {
        Ok(reply) => {
            let runs: Vec<String> = reply
                .json::<serde_json::Value>()
                .ok()
                .and_then(|v| {
                    v["runs"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_default();
            for r in runs {
                eprintln!(
                    "sluice: running; report at {}/runs/{r}",
                    server.trim_end_matches('/')
                );
            }
        }
        Err(e) => {
            let why = match e.status() {
                Some(401) => "it refused the secret in sluice.secretFile".to_string(),
                Some(s) => format!("it answered HTTP {s}"),
                None => e.to_string(),
            };
            eprintln!(
                "sluice: the daemon at {server} did not take the push ({why}); the push is accepted, but nothing ran"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
