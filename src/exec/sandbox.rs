//! Landlock confinement of command actions (see `docs/sandbox.md`).
//!
//! The crate forbids `unsafe`, and with it `CommandExt::pre_exec`, the
//! usual place to restrict a child between `fork` and `exec`. Instead,
//! sluice starts itself as a tiny launcher, `sluice __sandbox-exec`, which
//! (1) asks the kernel to kill it when sluice dies (`PR_SET_PDEATHSIG`),
//! (2) restricts itself with Landlock, and (3) `exec`s the node's program,
//! which keeps both. Every step is a safe call.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

/// The hidden subcommand that runs [`launcher_main`].
pub const SUBCOMMAND: &str = "__sandbox-exec";

/// What the probe prints first when Landlock confined it.
const PROBE_OK: &str = "sluice-sandbox: enforced";

/// The newest ABI this code asks for; older kernels get what they have
/// (best effort), and the probe says how much that is.
const WANTED_ABI: ABI = ABI::V6;

/// System paths every interpreter needs, read-only. Missing ones are
/// skipped.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/proc",
    "/sys/devices/system/cpu",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];

/// Read-write device files.
const SYSTEM_WRITE: &[&str] = &["/dev/null"];

/// Whether command actions run confined, as the probe found at the first
/// command node of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The launcher works and Landlock confined it (`detail` says how far).
    Enforced { launcher: PathBuf, detail: String },
    /// No sandbox: why.
    Unavailable(String),
}

/// Probes once per process: starts `<this binary> __sandbox-exec --probe`,
/// which restricts itself and says whether the kernel enforced it. When it
/// is unavailable, says so once on stderr.
pub fn availability() -> &'static Availability {
    static PROBED: OnceLock<Availability> = OnceLock::new();
    PROBED.get_or_init(|| {
        let a = probe();
        if let Availability::Unavailable(why) = &a {
            eprintln!("sluice: command actions run without a sandbox: {why}");
        }
        a
    })
}

fn probe() -> Availability {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Availability::Unavailable(format!("cannot find sluice's binary: {e}")),
    };
    let child = Command::new(&exe)
        .args([SUBCOMMAND, "--probe"])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Availability::Unavailable(format!("cannot start the launcher: {e}")),
    };
    use wait_timeout::ChildExt;
    match child.wait_timeout(Duration::from_secs(10)) {
        Ok(Some(_)) => {}
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Availability::Unavailable("the launcher did not answer".into());
        }
    }
    let mut out = String::new();
    if let Some(s) = child.stdout.take() {
        let _ = s.take(4096).read_to_string(&mut out);
    }
    let first = out.lines().next().unwrap_or("").trim().to_string();
    match first.strip_prefix(PROBE_OK) {
        Some(detail) => Availability::Enforced {
            launcher: exe,
            detail: detail.trim().to_string(),
        },
        None if first.starts_with("sluice-sandbox:") => Availability::Unavailable(
            first
                .trim_start_matches("sluice-sandbox:")
                .trim()
                .to_string(),
        ),
        None => Availability::Unavailable(
            "this binary has no sandbox launcher (`sluice __sandbox-exec`)".into(),
        ),
    }
}

/// What one node may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Read (and execute) only: inputs, sources, interpreter prefixes.
    pub read: Vec<PathBuf>,
    /// Read and write: the node's own temp dir.
    pub write: Vec<PathBuf>,
}

impl Rules {
    /// The rules of a node: its inputs read-only, its directory writable,
    /// plus the system paths and the directories of `PATH` (and their
    /// parents, the interpreter's prefix such as `/opt/venv`), except any
    /// that holds one of `private` (the data root, the state dir).
    pub fn for_node(
        inputs: &[PathBuf],
        dir: &Path,
        path_env: &OsStr,
        private: &[PathBuf],
    ) -> Rules {
        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        let private: Vec<PathBuf> = private
            .iter()
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone()))
            .collect();
        for entry in std::env::split_paths(path_env) {
            if !entry.is_absolute() {
                continue;
            }
            let entry = entry.canonicalize().unwrap_or(entry);
            for p in [Some(entry.as_path()), entry.parent()]
                .into_iter()
                .flatten()
            {
                let holds_private = private.iter().any(|q| q.starts_with(p));
                if p != Path::new("/") && !holds_private && !read.iter().any(|r| r == p) {
                    read.push(p.to_path_buf());
                }
            }
        }
        read.extend(inputs.iter().cloned());
        let mut write: Vec<PathBuf> = SYSTEM_WRITE.iter().map(PathBuf::from).collect();
        write.push(dir.to_path_buf());
        Rules { read, write }
    }
}

/// The launcher's arguments (after the binary): run `argv` confined by
/// `rules`, dying with the process `parent`.
pub fn launcher_args(parent: u32, rules: &Rules, required: bool, argv: &[String]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        SUBCOMMAND.into(),
        "--parent".into(),
        parent.to_string().into(),
    ];
    if required {
        a.push("--required".into());
    }
    for p in &rules.read {
        a.push("--ro".into());
        a.push(p.into());
    }
    for p in &rules.write {
        a.push("--rw".into());
        a.push(p.into());
    }
    a.push("--".into());
    a.extend(argv.iter().map(OsString::from));
    a
}

/// The parsed launcher arguments.
#[derive(Debug, Default, PartialEq, Eq)]
struct LaunchArgs {
    probe: bool,
    parent: Option<i32>,
    required: bool,
    rules: Rules,
    argv: Vec<OsString>,
}

fn parse_args(args: &[OsString]) -> Result<LaunchArgs, String> {
    let mut out = LaunchArgs::default();
    let mut it = args.iter();
    // The subcommand itself may or may not be passed along.
    while let Some(a) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{what} needs a value"))
        };
        match a.to_str() {
            Some(SUBCOMMAND) => {}
            Some("--probe") => out.probe = true,
            Some("--required") => out.required = true,
            Some("--parent") => {
                let v = value("--parent")?;
                out.parent = Some(
                    v.to_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or("--parent needs a process id")?,
                );
            }
            Some("--ro") => out.rules.read.push(value("--ro")?.into()),
            Some("--rw") => out.rules.write.push(value("--rw")?.into()),
            Some("--") => {
                out.argv = it.cloned().collect();
                break;
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if !out.probe && out.argv.is_empty() {
        return Err("nothing to run after `--`".into());
    }
    Ok(out)
}

/// Restricts this process (and what it later starts) to `rules`: files
/// outside them, TCP bind and connect, signals to and abstract sockets of
/// processes outside the sandbox are denied.
fn restrict(rules: &Rules) -> Result<RulesetStatus, String> {
    let abi = WANTED_ABI;
    let err = |e: landlock::RulesetError| e.to_string();
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(&rules.read, AccessFs::from_read(abi)))
        .map_err(err)?
        .add_rules(path_beneath_rules(&rules.write, AccessFs::from_all(abi)))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    Ok(status.ruleset)
}

fn describe(status: RulesetStatus) -> &'static str {
    match status {
        RulesetStatus::FullyEnforced => "fully",
        RulesetStatus::PartiallyEnforced => {
            "partially (an older kernel: some rules are not enforced)"
        }
        RulesetStatus::NotEnforced => "not at all",
    }
}

/// `sluice __sandbox-exec [--probe] [--parent PID] [--required]
/// [--ro PATH]... [--rw PATH]... -- PROGRAM ARGS...`: the launcher.
///
/// It restricts itself with Landlock, then runs the program as its child
/// and supervises it: it is the child subreaper of everything the program
/// starts, and when sluice dies (even by SIGKILL) the kernel sends it
/// SIGTERM (`PR_SET_PDEATHSIG`), on which it kills its process group and
/// every process below it, then exits. It exits with the program's status
/// (125 for its own errors, 127 when the program cannot be started).
pub fn launcher_main(args: &[OsString]) -> ! {
    fn fail(code: i32, msg: String) -> ! {
        eprintln!("sluice sandbox: {msg}");
        std::process::exit(code)
    }
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => fail(125, e),
    };
    if args.probe {
        match restrict(&Rules::default()) {
            Ok(RulesetStatus::NotEnforced) | Err(_) => {
                println!("sluice-sandbox: the kernel does not enforce Landlock here");
            }
            Ok(s) => println!("{PROBE_OK} {}", describe(s)),
        }
        std::process::exit(0);
    }
    use rustix::process::{Signal, getpid, getppid, set_child_subreaper};
    let orphaned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, std::sync::Arc::clone(&orphaned)) {
            fail(125, format!("cannot handle signals: {e}"));
        }
    }
    if let Some(parent) = args.parent {
        // Told when sluice dies, even by SIGKILL. Set before checking the
        // parent: if sluice died in between, we were already re-parented
        // and the check catches it.
        if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
            fail(125, format!("cannot set the parent-death signal: {e}"));
        }
        if getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
            fail(125, "sluice is gone".into());
        }
    }
    let _ = set_child_subreaper(Some(getpid()));
    match restrict(&args.rules) {
        Ok(RulesetStatus::NotEnforced) if args.required => fail(
            125,
            "the kernel does not enforce Landlock, and [sandbox] required = true".into(),
        ),
        Ok(_) => {}
        Err(e) if args.required => fail(125, format!("cannot apply the sandbox: {e}")),
        Err(e) => eprintln!("sluice sandbox: not applied: {e}"),
    }
    let Some((program, rest)) = args.argv.split_first() else {
        fail(125, "nothing to run".into());
    };
    let mut child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => fail(
            127,
            format!("cannot start {}: {e}", Path::new(program).display()),
        ),
    };
    use wait_timeout::ChildExt;
    let status = loop {
        match child.wait_timeout(Duration::from_millis(50)) {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if orphaned.load(std::sync::atomic::Ordering::SeqCst) {
            // sluice is gone (or asked us to stop): take everything down.
            super::command::kill_tree(child.id() as i32);
            let _ = child.wait();
            std::process::exit(143);
        }
    };
    // What the program left running in the background goes with it.
    super::command::kill_tree(child.id() as i32);
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => std::process::exit(code),
            (None, Some(sig)) => {
                // Die of the same signal, so sluice reports it as such.
                if let Some(sig) = Signal::from_named_raw(sig) {
                    let _ = rustix::process::kill_process(getpid(), sig);
                }
                std::process::exit(128 + sig)
            }
            (None, None) => std::process::exit(125),
        },
        None => std::process::exit(125),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let rules = Rules {
            read: vec!["/usr".into(), "/x y/in.csv".into()],
            write: vec!["/tmp/node".into()],
        };
        let argv = vec!["bash".to_string(), "--".to_string(), "s.sh".to_string()];
        let a = launcher_args(42, &rules, true, &argv);
        let parsed = parse_args(&a).unwrap();
        assert_eq!(parsed.parent, Some(42));
        assert!(parsed.required);
        assert_eq!(parsed.rules, rules);
        let want: Vec<OsString> = argv.iter().map(OsString::from).collect();
        assert_eq!(parsed.argv, want);
        assert!(parse_args(&["--bogus".into()]).is_err());
        assert!(parse_args(&["--ro".into()]).is_err());
        assert!(parse_args(&[]).is_err());
    }

    #[test]
    fn node_rules_keep_private_places_out() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("repo/data");
        std::fs::create_dir_all(&data).unwrap();
        let bin = tmp.path().join("repo/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = std::env::join_paths([bin.as_path(), Path::new("/usr/bin")]).unwrap();
        let rules = Rules::for_node(
            &[data.join("a.csv")],
            Path::new("/state/tmp/node-1"),
            &path,
            std::slice::from_ref(&data),
        );
        let bin = bin.canonicalize().unwrap();
        assert!(rules.read.contains(&bin), "{rules:?}");
        // The parent of repo/bin holds the data root: not readable.
        assert!(!rules.read.contains(&bin.parent().unwrap().to_path_buf()));
        assert!(rules.read.contains(&data.join("a.csv")));
        assert!(rules.write.contains(&PathBuf::from("/state/tmp/node-1")));
    }
}
