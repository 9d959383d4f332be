//! `sluice gc [--keep-runs N] [--grace DURATION] [--dry-run]`: delete the
//! blobs nothing needs any more, from a repository's state directory or
//! (`--server-config`) from the daemon's shared blob store. The decision
//! and its crash-safe application are in `store::gc`; this file finds the
//! stores, prints progress and the result. It prints counts, sizes and
//! digests: never a cell value.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::GlobalArgs;
use crate::server::config;
use crate::store::PgConnect;
use crate::store::blob::BlobStore;
use crate::store::gc::{self, Applied, Kept, Policy, Step, Tally};
use crate::store::state::{SqliteState, State};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep the last N runs of each branch of each pipeline (their
    /// manifests and every table and log they name), and the daemon's
    /// last N run pages of each branch or pull request. Production is
    /// always kept.
    #[arg(long, value_name = "N", default_value_t = gc::DEFAULT_KEEP_RUNS)]
    pub keep_runs: usize,
    /// Keep every blob stored less than this long ago, reachable or not,
    /// so that a run in progress never loses what it has written but not
    /// yet recorded. A whole number and a unit: 0s, 90m, 24h, 7d, 2w.
    /// `0s` is safe only while no other sluice uses the store.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = gc::parse_duration)]
    pub grace: Duration,
    /// Print what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Collect the daemon's store instead of a repository's: read the
    /// server configuration (as `sluice serve --config` does) and keep
    /// what any of its repositories needs.
    #[arg(long, value_name = "FILE")]
    pub server_config: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The result, as `--json` prints it (see docs/json.md).
#[derive(Debug, Serialize)]
struct GcReport {
    state_dir: PathBuf,
    dry_run: bool,
    keep_runs: usize,
    grace: String,
    examined: Tally,
    kept: Kept,
    /// Deleted, or with `--dry-run` what would be.
    deleted: Tally,
    dropped: Dropped,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Dropped {
    cache_entries: usize,
    runs: usize,
    reports: usize,
}

pub fn run(global: &GlobalArgs, args: &GcArgs) -> anyhow::Result<ExitCode> {
    let policy = Policy {
        keep_runs: args.keep_runs,
        grace: args.grace,
    };
    let (dir, blobs, states) = match &args.server_config {
        Some(path) => open_daemon(path)?,
        None => {
            let ws = super::workspace::load(global)?;
            let dir = ws.checked_state_dir()?;
            if !dir.join("state.db").is_file() {
                eprintln!(
                    "sluice gc: nothing to collect: no state in {} yet",
                    dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let stores = ws.open_stores()?;
            let states = match ws.shared_state() {
                // A team's blobs: kept if any schema of the database
                // (every checkout's, the daemon's) needs them.
                Some(connect) => shared_states(connect)?,
                None => vec![(dir.join("state.db").display().to_string(), stores.state)],
            };
            (dir.clone(), stores.blobs, states)
        }
    };
    let _lock = lock(&dir)?;
    if args.grace < Duration::from_secs(60 * 60) && !args.dry_run {
        eprintln!(
            "sluice: warning: a grace of {} is safe only while nothing else uses this store \
             (no run, no daemon): a run in progress may lose a table it wrote but has not \
             recorded yet (see docs/gc.md)",
            gc::format_duration(args.grace)
        );
    }
    let named: Vec<(String, &dyn State)> = states
        .iter()
        .map(|(name, db)| (name.clone(), &**db as &dyn State))
        .collect();
    let mut progress = Progress::new();
    let mut warnings = Vec::new();
    let now = SystemTime::now();
    // Listing a large store takes a while before any count is known:
    // say what is happening if it does.
    let (listed, waiting) = std::sync::mpsc::channel::<()>();
    let (_, plan) = std::thread::scope(|scope| {
        let shown = dir.display().to_string();
        scope.spawn(move || {
            if waiting.recv_timeout(Progress::AFTER)
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                eprintln!("sluice gc: listing the blobs in {shown}…");
            }
        });
        let mut first = Some(listed);
        gc::gather(
            &*blobs,
            &named,
            &policy,
            now,
            &mut |s| {
                // The first step is the end of the listing.
                drop(first.take());
                progress.step(s);
            },
            &mut warnings,
        )
    })?;
    let (deleted, dropped) = if args.dry_run {
        let dropped = Dropped {
            cache_entries: plan.cache_drops.iter().map(Vec::len).sum(),
            runs: plan.run_drops.iter().map(Vec::len).sum(),
            reports: plan.report_drops.iter().map(Vec::len).sum(),
        };
        (plan.deleted(), dropped)
    } else {
        let Applied {
            cache_entries,
            runs,
            reports,
            deleted,
            stored_again,
        } = gc::apply(
            &plan,
            &*blobs,
            &named,
            &mut |s| progress.step(s),
            &mut warnings,
        )?;
        if stored_again > 0 {
            warnings.push(format!(
                "{stored_again} blob(s) were stored again by a run while gc worked, and kept"
            ));
        }
        let dropped = Dropped {
            cache_entries,
            runs,
            reports,
        };
        (deleted, dropped)
    };
    progress.done();
    let report = GcReport {
        state_dir: dir,
        dry_run: args.dry_run,
        keep_runs: args.keep_runs,
        grace: gc::format_duration(args.grace),
        examined: plan.examined,
        kept: plan.kept,
        deleted,
        dropped,
        warnings,
    };
    {
        let mut err = std::io::stderr().lock();
        for w in &report.warnings {
            let _ = writeln!(err, "sluice: warning: {w}");
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_report(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Each state database gc reads, by the name its messages give it.
type States = Vec<(String, std::sync::Arc<dyn State>)>;

type Opened = (PathBuf, std::sync::Arc<dyn BlobStore>, States);

/// Every sluice schema of a shared PostgreSQL.
fn shared_states(connect: &PgConnect) -> anyhow::Result<States> {
    crate::store::shared::all_states(connect)
}

/// The daemon's stores: the shared blob store under `state_dir/blobs`,
/// `daemon.db` (the jobs and their reports) and every repository's
/// `repos/<id>/state.db`, including repositories no longer configured
/// (their production may still be wanted back).
fn open_daemon(path: &Path) -> anyhow::Result<Opened> {
    let cfg = config::load(path)?;
    let dir = cfg.state_dir.clone();
    let blobs = crate::store::open_blobs(&dir, &cfg.blobs)?;
    if let Some(url) = &cfg.state {
        let connect = crate::store::shared::parse_state(url, &super::pg_credentials())
            .map_err(|e| anyhow::anyhow!("{}: state: {e:#}", path.display()))?;
        return Ok((dir, blobs, shared_states(&connect)?));
    }
    if matches!(cfg.blobs.location, crate::store::BlobLocation::Local)
        && !dir.join("blobs").is_dir()
    {
        bail!(
            "{}: state_dir {} holds no blob store yet; has `sluice serve --config {}` run?",
            path.display(),
            dir.display(),
            path.display()
        );
    }
    let mut dbs = Vec::new();
    let daemon = dir.join("daemon.db");
    if daemon.is_file() {
        dbs.push(daemon);
    }
    let repos = dir.join("repos");
    if repos.is_dir() {
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(&repos).with_context(|| format!("cannot list {}", repos.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", repos.display()))?;
            let db = entry.path().join("state.db");
            if db.is_file() {
                found.push(db);
            }
        }
        found.sort();
        dbs.extend(found);
    }
    let states = dbs
        .into_iter()
        .map(|p| {
            let db = SqliteState::open(&p)?;
            Ok((
                p.display().to_string(),
                std::sync::Arc::new(db) as std::sync::Arc<dyn State>,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((dir, blobs, states))
}

/// One gc at a time per state directory: a second one waits for nothing
/// and says so.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("gc.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `sluice gc` is collecting {} (it holds {}); let it finish",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

fn write_report(out: &mut impl Write, r: &GcReport) -> std::io::Result<()> {
    let t = |t: &Tally| {
        format!(
            "{} blob{} ({})",
            t.blobs,
            plural(t.blobs),
            gc::human_bytes(t.bytes)
        )
    };
    writeln!(out, "state directory {}", r.state_dir.display())?;
    writeln!(out, "  examined {}", t(&r.examined))?;
    writeln!(out, "  kept {} reachable", t(&r.kept.reachable))?;
    writeln!(out, "  kept {} younger than {}", t(&r.kept.young), r.grace)?;
    if r.kept.cache_logs.blobs > 0 {
        writeln!(
            out,
            "  kept {} logs of kept cache entries",
            t(&r.kept.cache_logs)
        )?;
    }
    let d = &r.dropped;
    let rows = format!(
        "{} cache entr{}, {} run record{}, {} run page report{}",
        d.cache_entries,
        if d.cache_entries == 1 { "y" } else { "ies" },
        d.runs,
        plural(d.runs as u64),
        d.reports,
        plural(d.reports as u64)
    );
    if r.dry_run {
        writeln!(
            out,
            "  would delete {} blob{}, freeing {}; would drop {rows}",
            r.deleted.blobs,
            plural(r.deleted.blobs),
            gc::human_bytes(r.deleted.bytes)
        )?;
        writeln!(out, "  dry run: nothing was changed")
    } else {
        writeln!(
            out,
            "  deleted {} blob{}, freed {}; dropped {rows}",
            r.deleted.blobs,
            plural(r.deleted.blobs),
            gc::human_bytes(r.deleted.bytes)
        )
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A progress line on stderr, once the work has taken more than a moment.
struct Progress {
    start: Instant,
    last: Option<Instant>,
    tty: bool,
    listed: u64,
    shown: bool,
}

impl Progress {
    const AFTER: Duration = Duration::from_secs(1);

    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            listed: 0,
            shown: false,
        }
    }

    fn step(&mut self, step: Step) {
        let text = match step {
            Step::Listed { blobs } => {
                self.listed = blobs;
                format!("{blobs} blobs examined")
            }
            Step::Reading { done, total } => {
                format!(
                    "{} blobs examined; read {done}/{total} manifests and reports",
                    self.listed
                )
            }
            Step::Deleting { done, total } => format!("deleted {done}/{total} blobs"),
        };
        let now = Instant::now();
        if now.duration_since(self.start) < Self::AFTER {
            return;
        }
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|l| now.duration_since(l) < every) {
            return;
        }
        self.last = Some(now);
        self.shown = true;
        let mut err = std::io::stderr().lock();
        // Best effort: a closed stderr must not fail the collection.
        if self.tty {
            let _ = write!(err, "\r\x1b[2Ksluice gc: {text}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "sluice gc: {text}");
        }
    }

    fn done(&self) {
        if self.shown && self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}
