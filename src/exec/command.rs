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
    /// `(name, path)` for each input table.
    pub inputs: Vec<(String, PathBuf)>,
    pub params: BTreeMap<String, String>,
    /// `PATH` for the command: the one variable passed through.
    pub path_env: &'a std::ffi::OsStr,
    pub timeout: Duration,
    /// Checked while the command runs: when set, its group is killed.
    pub cancel: &'a super::CancelToken,
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
    // Private to this user: the script, its inputs' paths, its output and
    // its log may all hold PHI.
    let dir = tempfile::Builder::new()
        .prefix("sluice-node-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()?;
    let script = dir.path().join(match spec.extension {
        Some(ext) => format!("node.{ext}"),
        None => "node".to_string(),
    });
    std::fs::write(&script, spec.body)?;
    let output = dir.path().join("output.csv");
    let log_path = dir.path().join("log.txt");
    let args = match argv(spec.template, &script) {
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
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .current_dir(dir.path())
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
    let result = match cmd.spawn() {
        Err(e) => Err(format!("cannot start `{}`: {e}", args[0])),
        Ok(mut child) => {
            let pgid = rustix::process::Pid::from_raw(child.id() as i32);
            // Whatever it left running in its group goes too; the group may
            // already be gone, which is fine.
            let kill = || {
                if let Some(p) = pgid {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
            };
            let deadline = std::time::Instant::now() + spec.timeout;
            let waited = loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break None;
                }
                if let Some(status) = child.wait_timeout(left.min(CANCEL_POLL))? {
                    break Some(status);
                }
                if spec.cancel.is_cancelled() {
                    kill();
                    child.wait()?;
                    let log = read_capped(&log_path)?;
                    return Ok(CommandOutcome {
                        dir,
                        output,
                        log,
                        result: Err(super::CANCELLED.into()),
                    });
                }
            };
            match waited {
                Some(status) => {
                    kill();
                    if status.success() {
                        Ok(())
                    } else {
                        Err(match status.code() {
                            Some(c) => format!("`{}` exited with status {c}", args[0]),
                            None => format!("`{}` was killed by a signal", args[0]),
                        })
                    }
                }
                None => {
                    kill();
                    child.wait()?;
                    Err(format!(
                        "timed out after {}s (@timeout)",
                        spec.timeout.as_secs()
                    ))
                }
            }
        }
    };
    let log = read_capped(&log_path)?;
    Ok(CommandOutcome {
        dir,
        output,
        log,
        result,
    })
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
            inputs: vec![("lab-map.v2".into(), PathBuf::from("/x/in.csv"))],
            params: [("clinic".to_string(), "a".to_string())].into(),
            path_env: std::ffi::OsStr::new("/usr/local/bin:/usr/bin:/bin"),
            timeout: Duration::from_secs(10),
            cancel: Box::leak(Box::new(crate::exec::CancelToken::new())),
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
