//! Command actions (`action/python`, `action/bash`, `action/r`, and any
//! repo-defined `action/...` with a `@command` template): the body is
//! written to a script in a fresh temp directory and the template run with
//! a minimal environment. The process group is killed on timeout.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// The default `@timeout`: one hour.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// How often a running command checks whether its run was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// How much of a command's output is kept in its log.
pub const LOG_CAP: u64 = 1 << 20;

/// What a command needs.
#[derive(Debug)]
pub struct CommandSpec<'a> {
    /// The `@command` template, e.g. `python3 {script}`.
    pub template: &'a str,
    /// The node body, written to the script file.
    pub body: &'a str,
    /// Extension of the script file (the node file's), e.g. `py`.
    pub extension: Option<&'a str>,
    /// The repository path of the file the body came from: the script is
    /// written there, under the temp dir, and named by that relative path,
    /// so a traceback says `shared/ehr/WeightSummary.py, line 8`.
    pub script_path: Option<&'a str>,
    /// `(name, path)` for each input table.
    pub inputs: Vec<(String, PathBuf)>,
    pub params: BTreeMap<String, String>,
    /// `PATH` for the command: the one variable passed through.
    pub path_env: &'a std::ffi::OsStr,
    pub timeout: Duration,
    /// Checked while the command runs: when set, its group is killed.
    pub cancel: &'a super::CancelToken,
    /// Where its temp dir goes (`<state>/tmp`); `None`: the system's.
    pub temp_root: Option<&'a Path>,
    /// The largest `$SLUICE_OUTPUT` it may write, in bytes.
    pub max_output: u64,
    /// Run it through the Landlock launcher; `None`: unconfined.
    pub sandbox: Option<SandboxSpec<'a>>,
}

/// How to confine a command (see [`super::sandbox`]).
#[derive(Debug, Clone)]
pub struct SandboxSpec<'a> {
    /// The sluice binary, started as `sluice __sandbox-exec`.
    pub launcher: &'a Path,
    /// Places that must stay unreadable even through `PATH` (the data
    /// root, the state dir): only the inputs inside them are handed in.
    pub private: Vec<PathBuf>,
    /// Refuse to run when the kernel does not enforce the rules.
    pub required: bool,
}

/// What came of a command; the temp directory lives as long as this.
#[derive(Debug)]
pub struct CommandOutcome {
    pub dir: tempfile::TempDir,
    /// `SLUICE_OUTPUT`, to be read and canonicalised by the caller.
    pub output: PathBuf,
    /// stdout and stderr, interleaved, capped at [`LOG_CAP`].
    pub log: Vec<u8>,
    /// `Err` says why the command failed (exit status, timeout).
    pub result: Result<(), String>,
}

/// `SLUICE_INPUT_<Name>`: the name with every character outside
/// `[A-Za-z0-9_]` replaced by `_`.
pub fn env_name(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{clean}")
}

/// Splits the template on whitespace and puts the script path in place of
/// `{script}`. No shell is involved.
fn argv(template: &str, script: &Path) -> Result<Vec<String>, String> {
    let script = script.to_string_lossy();
    let args: Vec<String> = template
        .split_whitespace()
        .map(|a| a.replace("{script}", &script))
        .collect();
    if args.is_empty() {
        return Err("the @command template is empty".into());
    }
    Ok(args)
}

/// Runs one command action to completion or timeout.
pub fn run(spec: &CommandSpec) -> std::io::Result<CommandOutcome> {
    use std::os::unix::fs::PermissionsExt;
    become_subreaper();
    // Private to this user: the script, its inputs' paths, its output and
    // its log may all hold PHI. The pid in the name lets a later run sweep
    // it when this process dies without removing it.
    let mut builder = tempfile::Builder::new();
    let prefix = format!("{TEMP_PREFIX}{}-", std::process::id());
    builder
        .prefix(&prefix)
        .permissions(std::fs::Permissions::from_mode(0o700));
    let dir = match spec.temp_root {
        Some(root) => {
            private_dir(root)?;
            builder.tempdir_in(root)?
        }
        None => builder.tempdir()?,
    };
    let fallback = match spec.extension {
        Some(ext) => format!("node.{ext}"),
        None => "node".to_string(),
    };
    // A relative name (the command runs in the temp dir) that is the
    // repository path; never one of the names sluice itself uses there.
    let name = spec
        .script_path
        .filter(|p| {
            let first = p.split('/').next().unwrap_or("");
            p.contains('/')
                && !p.starts_with('/')
                && !p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                && !["output.csv", "log.txt"].contains(&first)
        })
        .map_or(fallback, str::to_string);
    let script = dir.path().join(&name);
    if let Some(parent) = script.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&script, spec.body)?;
    let output = dir.path().join("output.csv");
    let log_path = dir.path().join("log.txt");
    let args = match argv(spec.template, Path::new(&name)) {
        Ok(a) => a,
        Err(e) => {
            return Ok(CommandOutcome {
                dir,
                output,
                log: Vec::new(),
                result: Err(e),
            });
        }
    };

    let log = File::create(&log_path)?;
    let mut cmd = match &spec.sandbox {
        Some(sb) => {
            let inputs: Vec<PathBuf> = spec.inputs.iter().map(|(_, p)| p.clone()).collect();
            let rules =
                super::sandbox::Rules::for_node(&inputs, dir.path(), spec.path_env, &sb.private);
            let mut c = Command::new(sb.launcher);
            c.args(super::sandbox::launcher_args(
                std::process::id(),
                &rules,
                sb.required,
                &args,
            ));
            c
        }
        None => {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        }
    };
    cmd.current_dir(dir.path())
        .env_clear()
        .env("PATH", spec.path_env)
        .env("LANG", "C.UTF-8")
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("SLUICE_OUTPUT", &output)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so a timeout kills everything it started.
        .process_group(0);
    for (name, path) in &spec.inputs {
        cmd.env(env_name("SLUICE_INPUT_", name), path);
    }
    for (k, v) in &spec.params {
        cmd.env(env_name("SLUICE_PARAM_", k), v);
    }
    let token = output.as_os_str().to_os_string();
    // Registered under the lock, so `kill_leftovers` never takes it for an
    // orphan of another node.
    let spawned_child = {
        let mut ours = lock(spawned());
        let c = cmd.spawn();
        if let Ok(c) = &c {
            ours.insert(c.id() as i32);
        }
        c
    };
    let result = match spawned_child {
        Err(e) => Err(format!("cannot start `{}`: {e}", args[0])),
        Ok(mut child) => {
            let pid = child.id() as i32;
            let waited = watch(&mut child, spec, &output);
            // Whatever it left running goes too: its process group, every
            // process below it (even one that left the group with
            // `setsid`), and whatever was re-parented to sluice from it.
            kill_leftovers(pid, &token);
            let waited = match waited {
                Ok(w) => w,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    lock(spawned()).remove(&pid);
                    return Err(e);
                }
            };
            let status = child.wait();
            lock(spawned()).remove(&pid);
            let status = status?;
            match waited {
                Watched::Exited => {
                    if status.success() {
                        Ok(())
                    } else {
                        Err(match status.code() {
                            Some(125) if spec.sandbox.is_some() => {
                                "the sandbox launcher refused to run it (see the log)".to_string()
                            }
                            Some(c) => format!("`{}` exited with status {c}", args[0]),
                            None => format!("`{}` was killed by a signal", args[0]),
                        })
                    }
                }
                Watched::TimedOut => Err(format!(
                    "timed out after {}s (@timeout, or [limits] timeout in sluice.toml)",
                    spec.timeout.as_secs()
                )),
                Watched::Cancelled => Err(super::CANCELLED.into()),
                Watched::TooLarge(n) => Err(output_too_large(n)),
            }
        }
    };
    // The temp dir's path says nothing to the analyst: a traceback names
    // `clinics/a/Weight.py`, the file in the repository (interpreters
    // such as Python make the script's path absolute).
    let log = strip_prefix_everywhere(read_capped(&log_path)?, dir.path());
    Ok(CommandOutcome {
        dir,
        output,
        log,
        result,
    })
}

/// How a watched command ended.
enum Watched {
    Exited,
    TimedOut,
    Cancelled,
    /// Its output grew past the cap (this many bytes).
    TooLarge(u64),
}

/// Waits for the command, its deadline, the run's cancellation or its
/// output passing the cap, whichever comes first; kills its group on all
/// but the first.
fn watch(
    child: &mut std::process::Child,
    spec: &CommandSpec,
    output: &Path,
) -> std::io::Result<Watched> {
    let pgid = rustix::process::Pid::from_raw(child.id() as i32);
    let kill = || {
        if let Some(p) = pgid {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    };
    let deadline = std::time::Instant::now() + spec.timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            kill();
            return Ok(Watched::TimedOut);
        }
        if child.wait_timeout(left.min(CANCEL_POLL))?.is_some() {
            return Ok(Watched::Exited);
        }
        if spec.cancel.is_cancelled() {
            kill();
            return Ok(Watched::Cancelled);
        }
        let size = std::fs::metadata(output).map_or(0, |m| m.len());
        if size > spec.max_output {
            kill();
            return Ok(Watched::TooLarge(size));
        }
    }
}

/// The error of a node whose table passed `[limits] max_output_mb`.
pub fn output_too_large(bytes: u64) -> String {
    format!(
        "the table grew past the output limit ({} MB written; raise [limits] max_output_mb in \
         sluice.toml if it is meant to be this large)",
        bytes / 1_000_000
    )
}

/// The name prefix of node temp dirs: `node-<pid>-<random>`.
const TEMP_PREFIX: &str = "node-";

/// Creates `dir` if needed and makes it private (0700).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes the node temp dirs under `root` left by sluice processes that
/// are gone (killed before they could remove them): they may hold PHI.
/// Returns how many went.
pub fn sweep_stale_temp_dirs(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The command processes this process started and has not yet waited
/// for: every other child of ours is an orphan re-parented to us.
fn spawned() -> &'static std::sync::Mutex<std::collections::HashSet<i32>> {
    static SPAWNED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<i32>>> =
        std::sync::OnceLock::new();
    SPAWNED.get_or_init(Default::default)
}

/// Makes this process the child subreaper of what it starts: a node's
/// grandchild whose parent exits (a double fork, `setsid ... &`) is
/// re-parented to sluice rather than to init, so it can still be found
/// and killed.
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    });
}

/// One line of `/proc/<pid>/stat`: (pid, ppid, state).
fn proc_table() -> Vec<(i32, i32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = after.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let Some(ppid) = f.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        out.push((pid, ppid, state));
    }
    out
}

/// Whether `/proc/<pid>/environ` holds `token` (the node's output path).
fn environ_has(pid: i32, token: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let t = token.as_bytes();
    !t.is_empty() && env.windows(t.len()).any(|w| w == t)
}

/// Adds to `doomed` every process of `table` (pid, ppid, state) below one
/// already in it.
fn add_descendants(table: &[(i32, i32, char)], doomed: &mut Vec<i32>) {
    let mut i = 0;
    while i < doomed.len() {
        let p = doomed[i];
        for &(pid, ppid, _) in table {
            if ppid == p && !doomed.contains(&pid) {
                doomed.push(pid);
            }
        }
        i += 1;
    }
}

/// Kills what a node left: its process group, every descendant of `root`,
/// and the orphans re-parented to sluice that carry the node's
/// environment (`token`). Then reaps those that became our zombies (by
/// pid: a child some other code waits for is never taken from it).
fn kill_leftovers(root: i32, token: &std::ffi::OsStr) {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, kill_process_group, waitpid};
    let me = std::process::id() as i32;
    let mut killed: Vec<i32> = Vec::new();
    // A few rounds: killing a parent re-parents its children to us.
    for _ in 0..3 {
        let table = proc_table();
        let mut doomed = vec![root];
        let ours = lock(spawned()).clone();
        for &(pid, ppid, state) in &table {
            if ppid == me && !ours.contains(&pid) && state != 'Z' && environ_has(pid, token) {
                doomed.push(pid);
            }
        }
        add_descendants(&table, &mut doomed);
        if let Some(p) = Pid::from_raw(root) {
            let _ = kill_process_group(p, Signal::KILL);
        }
        let mut any = false;
        for &pid in &doomed[1..] {
            if let Some(p) = Pid::from_raw(pid)
                && kill_process(p, Signal::KILL).is_ok()
            {
                any = true;
                if !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Those re-parented to us are our zombies now; the others are reaped
    // by their own parents (or init).
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while !killed.is_empty() && std::time::Instant::now() < deadline {
        let table = proc_table();
        killed.retain(|&pid| {
            match table.iter().find(|&&(p, _, _)| p == pid) {
                None => false,
                Some(&(_, ppid, state)) if ppid == me && state == 'Z' => {
                    let _ = waitpid(Pid::from_raw(pid), WaitOptions::NOHANG);
                    false
                }
                // Alive still, or a zombie of a parent that is dying too.
                Some(&(_, ppid, _)) => ppid == me || ppid != 1,
            }
        });
        if !killed.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// For the sandbox launcher: kills `root`, everything below it, and every
/// other child of this process (orphans of the program re-parented to the
/// launcher, its subreaper), then reaps them.
pub(crate) fn kill_tree(root: i32) {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let me = std::process::id() as i32;
    for _ in 0..5 {
        let table = proc_table();
        let mut doomed = vec![root];
        doomed.extend(
            table
                .iter()
                .filter(|&&(pid, ppid, _)| ppid == me && pid != root)
                .map(|&(pid, _, _)| pid),
        );
        add_descendants(&table, &mut doomed);
        let mut any = false;
        for &(pid, _, state) in &table {
            if pid != me
                && state != 'Z'
                && doomed.contains(&pid)
                && let Some(p) = Pid::from_raw(pid)
            {
                any |= kill_process(p, Signal::KILL).is_ok();
            }
        }
        while let Ok(Some(_)) = waitpid(None, WaitOptions::NOHANG) {}
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The program a command template runs (its first word).
pub fn program(template: &str) -> Option<&str> {
    template.split_whitespace().next()
}

/// What `PROGRAM --version` prints first, with the same `PATH` the actions
/// get: part of a command action's identity, so upgrading the interpreter
/// is a change and never serves a table computed by the old one.
pub fn interpreter_version(program: &str, path_env: &std::ffi::OsStr) -> String {
    let child = Command::new(program)
        .arg("--version")
        .env_clear()
        .env("PATH", path_env)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return "unavailable".into();
    };
    match child.wait_timeout(Duration::from_secs(10)) {
        Ok(Some(_)) => {}
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return "unavailable".into();
        }
    }
    let mut text = String::new();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut buf = String::new();
        let _ = stream.take(64 * 1024).read_to_string(&mut buf);
        text.push_str(&buf);
    }
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// `log` without every occurrence of `dir/` (as given and canonical).
fn strip_prefix_everywhere(log: Vec<u8>, dir: &Path) -> Vec<u8> {
    let mut prefixes = vec![dir.to_path_buf()];
    if let Ok(real) = dir.canonicalize()
        && real != dir
    {
        prefixes.push(real);
    }
    let mut log = log;
    for p in prefixes {
        let mut needle = p.as_os_str().as_encoded_bytes().to_vec();
        needle.push(b'/');
        if needle.len() < 2 {
            continue;
        }
        let mut out = Vec::with_capacity(log.len());
        let mut i = 0;
        while i < log.len() {
            if log[i..].starts_with(&needle) {
                i += needle.len();
            } else {
                out.push(log[i]);
                i += 1;
            }
        }
        log = out;
    }
    log
}

/// The log, or its first and last halves of [`LOG_CAP`] when longer: the
/// head says what ran, the tail usually says why it failed.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut log = Vec::new();
    if len <= LOG_CAP {
        f.read_to_end(&mut log)?;
        return Ok(log);
    }
    let half = LOG_CAP / 2;
    (&mut f).take(half).read_to_end(&mut log)?;
    log.extend_from_slice(
        format!("\n[... {} bytes left out by sluice ...]\n", len - 2 * half).as_bytes(),
    );
    f.seek(SeekFrom::Start(len - half))?;
    f.read_to_end(&mut log)?;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(body: &'a str) -> CommandSpec<'a> {
        CommandSpec {
            template: "bash {script}",
            body,
            extension: Some("sh"),
            script_path: None,
            inputs: vec![("lab-map.v2".into(), PathBuf::from("/x/in.csv"))],
            params: [("clinic".to_string(), "a".to_string())].into(),
            path_env: std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin"),
            timeout: Duration::from_secs(10),
            cancel: Box::leak(Box::new(crate::exec::CancelToken::new())),
            temp_root: None,
            max_output: u64::MAX,
            sandbox: None,
        }
    }

    #[test]
    fn cancel_kills_the_process_group_and_removes_the_temp_dir() {
        let token = crate::exec::CancelToken::new();
        let pidfile = tempfile::NamedTempFile::new().unwrap();
        let body = format!("sleep 30 & echo $! > {}; wait", pidfile.path().display());
        let mut s = spec(&body);
        let t = token.clone();
        s.cancel = &token;
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            t.cancel();
        });
        let start = std::time::Instant::now();
        let out = run(&s).unwrap();
        canceller.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(out.result, Err(crate::exec::CANCELLED.to_string()));
        let dir = out.dir.path().to_path_buf();
        drop(out);
        assert!(!dir.exists(), "the temp dir must go with the outcome");
        let pid: i32 = std::fs::read_to_string(pidfile.path())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep was in the node's group: it is gone (or a
        // zombie about to be reaped by init).
        std::thread::sleep(Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "the node's child survived: {stat}"
        );
    }

    #[test]
    fn runs_with_a_minimal_environment() {
        let out = run(&spec(
            "echo \"$SLUICE_INPUT_lab_map_v2 $SLUICE_PARAM_clinic $LANG\"; [ -z \"$CARGO\" ] && echo clean; echo a > \"$SLUICE_OUTPUT\"",
        ))
        .unwrap();
        assert_eq!(out.result, Ok(()));
        let log = String::from_utf8(out.log.clone()).unwrap();
        assert!(log.contains("/x/in.csv a C.UTF-8"), "{log}");
        assert!(
            log.contains("clean"),
            "the parent's environment must not leak: {log}"
        );
        assert_eq!(std::fs::read_to_string(&out.output).unwrap(), "a\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.dir.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "the node's directory is private");
    }

    #[test]
    fn temp_dirs_go_under_the_root_and_stale_ones_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp");
        let mut s = spec("echo a > \"$SLUICE_OUTPUT\"");
        s.temp_root = Some(&tmp);
        let out = run(&s).unwrap();
        assert!(out.dir.path().starts_with(&tmp));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&tmp).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // pid 999999999 is above the kernel's pid_max: never alive.
        let dead = tmp.join("node-999999999-abc");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        let other = tmp.join("unrelated");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(sweep_stale_temp_dirs(&tmp), 1);
        assert!(!dead.exists());
        assert!(other.exists());
        assert!(out.dir.path().exists(), "a live process's dir stays");
    }

    #[test]
    fn a_grandchild_that_left_the_group_is_killed_at_timeout() {
        let marker = format!("33.{}", std::process::id());
        let body = format!("setsid sleep {marker} &\nsleep 30\n");
        let mut s = spec(&body);
        s.timeout = Duration::from_millis(300);
        let out = run(&s).unwrap();
        assert!(out.result.unwrap_err().contains("timed out"));
        std::thread::sleep(Duration::from_millis(100));
        let alive: Vec<i32> = proc_table()
            .into_iter()
            .filter(|&(pid, _, state)| {
                state != 'Z'
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            })
            .map(|(pid, _, _)| pid)
            .collect();
        for &p in &alive {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(p).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        assert!(
            alive.is_empty(),
            "the setsid grandchild survived: {alive:?}"
        );
    }

    #[test]
    fn interpreter_versions_are_read() {
        let path = std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin");
        assert!(interpreter_version("bash", path).contains("bash"));
        assert_eq!(
            interpreter_version("no-such-interpreter-xyz", path),
            "unavailable"
        );
        assert_eq!(program("python3 {script}"), Some("python3"));
    }

    #[test]
    fn long_logs_keep_head_and_tail() {
        let out = run(&spec(
            "yes line | head -c 3000000; echo; echo the real error >&2; exit 1",
        ))
        .unwrap();
        let log = String::from_utf8_lossy(&out.log);
        assert!(log.starts_with("line\n"));
        assert!(log.contains("bytes left out by sluice"));
        assert!(
            log.trim_end().ends_with("the real error"),
            "{}",
            &log[log.len() - 100..]
        );
        assert!(out.log.len() < (LOG_CAP + 200) as usize);
    }

    #[test]
    fn failure_and_timeout() {
        let out = run(&spec("echo oops >&2; exit 3")).unwrap();
        assert_eq!(out.result, Err("`bash` exited with status 3".into()));
        assert_eq!(out.log, b"oops\n");
        let mut s = spec("sleep 30 & sleep 30");
        s.timeout = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let out = run(&s).unwrap();
        assert!(out.result.unwrap_err().contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(5));
        let mut s = spec("true");
        s.template = "no-such-interpreter-xyz {script}";
        assert!(
            run(&s)
                .unwrap()
                .result
                .unwrap_err()
                .contains("cannot start")
        );
    }
}
