//! The state: the [`State`] trait (action cache, refs, runs, the daemon's
//! queue) and its SQLite implementation, [`SqliteState`], which also
//! holds the local source-digest memo, with versioned migrations applied
//! at open. PostgreSQL's is in `store::pg`.
//!
//! One connection sits behind a mutex: SQLite serialises writers anyway,
//! and every statement here is short. WAL lets other processes (a second
//! `sluice`, the daemon) read while one writes.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::queue::{Enqueued, Job, JobState, NewJob, OutboxItem};
use crate::plan::digest::Digest;

/// Migrations in order; migration `i` takes the schema from version `i`
/// to `i + 1` (`PRAGMA user_version`). Append only: never edit one that
/// has shipped, since databases already past it will not run it again.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/0001_init.sql")),
    (
        "0002_daemon",
        include_str!("../../migrations/0002_daemon.sql"),
    ),
    (
        "0003_run_refs",
        include_str!("../../migrations/0003_run_refs.sql"),
    ),
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How much of the database a run's cache-read connection maps.
const CACHE_READ_MMAP: i64 = 1 << 30;

/// How long a statement waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A cached result of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub output: Digest,
    pub rows: u64,
    pub columns: Vec<String>,
    pub log: Option<Digest>,
    pub duration_ms: u64,
}

/// The blobs one cache entry names, for `fsck`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheBlobs {
    /// As stored.
    pub task_key: String,
    /// `None`: the stored text is not a digest.
    pub output: Option<Digest>,
    /// `Some(None)`: a log is named but the text is not a digest.
    pub log: Option<Option<Digest>>,
}

/// One recorded run of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: i64,
    pub pipeline: String,
    pub manifest: Digest,
    pub commit: Option<String>,
    /// The branch or ref that was run, when known.
    pub git_ref: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub failed: bool,
}

/// What identifies one version of a source file for the memo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStat {
    pub path: PathBuf,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub inode: u64,
}

/// The state that runs and the daemon share: the action cache, refs,
/// runs, and the daemon's deliveries, jobs, outbox and comment ids. Two
/// implementations: [`SqliteState`], one file in the state directory (the
/// default), and [`super::pg::PgState`], a team's PostgreSQL. Everything
/// holds it as `Arc<dyn State>`. The source-digest memo is not here: it
/// describes this machine's files, so it stays in the local
/// [`SqliteState`] of each worker.
pub trait State: Send + Sync + std::fmt::Debug {
    /// The schema version recorded in the database.
    fn schema_version(&self) -> anyhow::Result<u32>;

    // -- action cache

    /// Looks up a task.
    fn cache_get(&self, task_key: &Digest) -> anyhow::Result<Option<CacheEntry>>;
    /// Looks up several tasks, in order. A backend across the network
    /// answers them in one round trip (PostgreSQL).
    fn cache_get_many(&self, task_keys: &[Digest]) -> anyhow::Result<Vec<Option<CacheEntry>>> {
        task_keys.iter().map(|k| self.cache_get(k)).collect()
    }
    /// Whether [`Self::cache_get_many`] saves round trips, so that a run
    /// should look up a wave of ready nodes at once.
    fn batches_lookups(&self) -> bool {
        false
    }
    /// Inserts or replaces the entry for `task_key`.
    fn cache_put(&self, task_key: &Digest, entry: &CacheEntry) -> anyhow::Result<()>;
    /// Holds one read snapshot for a run's lookups while the guard lives,
    /// where the backend gains from it (SQLite); a no-op elsewhere.
    fn begin_cache_reads(&self) -> CacheReadGuard<'_> {
        CacheReadGuard::inactive()
    }
    /// Drops every cache entry whose output is `output` (a blob found
    /// damaged), so the next run recomputes those nodes.
    fn cache_forget_output(&self, output: &Digest) -> anyhow::Result<usize>;
    /// Every cache entry's task key, output and log blob, as stored (a
    /// field that does not parse as a digest is `None`).
    fn cache_blobs(&self) -> anyhow::Result<Vec<CacheBlobs>>;
    /// Drops the entry stored under this task key (as stored, parsed or not).
    fn cache_forget_task(&self, task_key: &str) -> anyhow::Result<usize>;

    // -- refs

    fn ref_get(&self, name: &str) -> anyhow::Result<Option<Digest>>;
    /// Every ref, by name; a value that does not parse is `None`.
    fn ref_list(&self) -> anyhow::Result<Vec<(String, Option<Digest>)>>;
    fn ref_delete(&self, name: &str) -> anyhow::Result<()>;
    /// Points `name` at `manifest` unconditionally.
    fn ref_set(&self, name: &str, manifest: &Digest) -> anyhow::Result<()>;
    /// Points `name` at `new` only if it currently points at `expected`
    /// (`None`: only if it does not exist), atomically against every other
    /// process. Returns whether it moved.
    fn ref_compare_and_set(
        &self,
        name: &str,
        expected: Option<&Digest>,
        new: &Digest,
    ) -> anyhow::Result<bool>;

    // -- runs

    /// Records a run and returns its id.
    fn record_run(
        &self,
        pipeline: &str,
        manifest: &Digest,
        commit: Option<&str>,
        git_ref: Option<&str>,
        failed: bool,
    ) -> anyhow::Result<i64>;
    /// The newest run of `pipeline`.
    fn last_run(&self, pipeline: &str) -> anyhow::Result<Option<RunRecord>>;
    /// Every recorded run, oldest first.
    fn runs(&self) -> anyhow::Result<Vec<RunRecord>>;
    /// Deletes the run records with these ids (`sluice gc` collects their
    /// manifests); returns how many were deleted.
    fn runs_forget(&self, ids: &[i64]) -> anyhow::Result<usize>;

    // -- the daemon's queue (see `store::queue`)

    /// Stores a job, unless `delivery` (its forge's delivery id) was seen
    /// before. Older jobs of the same lane are superseded in the same
    /// transaction.
    fn enqueue(&self, job: &NewJob, delivery: Option<(&str, &str)>) -> anyhow::Result<Enqueued> {
        self.enqueue_many(&[(job, delivery)])?
            .pop()
            .context("cannot store the job")
    }
    /// [`Self::enqueue`] for several deliveries in one transaction (group
    /// commit). All are stored, or none.
    fn enqueue_many(
        &self,
        batch: &[(&NewJob, Option<(&str, &str)>)],
    ) -> anyhow::Result<Vec<Enqueued>>;
    /// Takes the oldest queued job whose lane has nothing running, and
    /// marks it running.
    fn claim_job(&self) -> anyhow::Result<Option<Job>>;
    /// Ends a running job.
    fn finish_job(
        &self,
        id: i64,
        state: JobState,
        outcome: Option<&str>,
        report: Option<&Digest>,
    ) -> anyhow::Result<()>;
    /// Puts a running job back in the queue (shutdown, or a crash found at
    /// start when `id` is `None`: every running job). Returns how many.
    fn requeue_running(&self, id: Option<i64>) -> anyhow::Result<usize>;
    fn job(&self, id: i64) -> anyhow::Result<Option<Job>>;
    fn job_by_run_id(&self, run_id: &str) -> anyhow::Result<Option<Job>>;
    /// How many jobs are in each state.
    fn job_counts(&self) -> anyhow::Result<Vec<(JobState, u64)>>;
    /// Queues a forge call, due now.
    fn outbox_push(
        &self,
        repo: &str,
        job_id: i64,
        kind: &str,
        payload: &str,
    ) -> anyhow::Result<i64>;
    /// The next call that is due: the oldest pending one of its repository
    /// (calls of one repository go in order, so a failing one holds back
    /// those behind it), due at or before `now_ms`.
    fn outbox_next(&self, now_ms: i64) -> anyhow::Result<Option<OutboxItem>>;
    /// When the earliest pending call is due, if any.
    fn outbox_next_due(&self) -> anyhow::Result<Option<i64>>;
    fn outbox_done(&self, id: i64) -> anyhow::Result<()>;
    /// Tries `id` again at `next_at_ms`.
    fn outbox_retry(&self, id: i64, next_at_ms: i64, error: &str) -> anyhow::Result<()>;
    /// Gives up on `id`.
    fn outbox_drop(&self, id: i64, error: &str) -> anyhow::Result<()>;
    fn outbox_pending(&self) -> anyhow::Result<u64>;
    fn comment_id(&self, repo: &str, pr: u64) -> anyhow::Result<Option<u64>>;
    fn set_comment_id(&self, repo: &str, pr: u64, id: u64) -> anyhow::Result<()>;
    /// Every job that has a stored report, oldest first (`sluice gc`).
    fn jobs_with_reports(&self) -> anyhow::Result<Vec<Job>>;
    /// Forgets the reports of these jobs (`sluice gc` collects their
    /// blobs): their run pages then say the job's state only.
    fn jobs_forget_reports(&self, ids: &[i64]) -> anyhow::Result<usize>;

    /// A handle with a connection of its own, for a thread whose writes
    /// someone is waiting on (the daemon's deliveries), when sharing this
    /// one would make it wait behind other threads. `None`: share this one
    /// (a backend with a pool of connections).
    fn own_connection(&self) -> Option<anyhow::Result<std::sync::Arc<dyn State>>> {
        None
    }
}

/// The state database.
pub struct SqliteState {
    conn: Mutex<Connection>,
    /// A read-only connection holding one read transaction while runs
    /// look up the cache (see [`SqliteState::begin_cache_reads`]).
    cache_reads: Mutex<Option<CacheReads>>,
    path: Option<PathBuf>,
    /// Where the production refs are mirrored as files (`<dir>/refs`,
    /// beside the database), so that they survive the database's loss.
    refs_dir: Option<PathBuf>,
}

/// The read-only connection of [`SqliteState::begin_cache_reads`].
struct CacheReads {
    users: usize,
    conn: Connection,
}

/// Ends a run's share of the cache-read snapshot when dropped.
#[must_use]
pub struct CacheReadGuard<'a> {
    db: Option<&'a SqliteState>,
    active: bool,
}

impl CacheReadGuard<'_> {
    /// A guard that holds nothing (backends without a snapshot).
    pub fn inactive() -> Self {
        CacheReadGuard {
            db: None,
            active: false,
        }
    }
}

impl Drop for CacheReadGuard<'_> {
    fn drop(&mut self) {
        let Some(db) = self.db.filter(|_| self.active) else {
            return;
        };
        let mut reads = db
            .cache_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = reads.as_mut() {
            r.users = r.users.saturating_sub(1);
            if r.users == 0 {
                *reads = None;
            }
        }
    }
}

/// Starts the snapshot of a read transaction (SQLite takes it at the
/// first read, not at `BEGIN`).
fn snapshot(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT 1 FROM action_cache LIMIT 1", [], |_| Ok(()))
        .optional()
        .map(|_| ())
}

type CacheRow = (String, i64, String, Option<String>, i64);

fn cache_row(conn: &Connection, key: &str) -> anyhow::Result<Option<CacheRow>> {
    // Prepared once per connection: a no-op run looks up every node.
    conn.prepare_cached(
        "SELECT output, rows, columns, log, duration_ms FROM action_cache WHERE task_key = ?1",
    )
    .context("cannot read the action cache")?
    .query_row([key], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .optional()
    .context("cannot read the action cache")
}

fn cache_entry(task_key: &Digest, row: CacheRow) -> anyhow::Result<CacheEntry> {
    let (output, rows, columns, log, duration_ms) = row;
    let bad = || format!("corrupt action-cache entry for task {task_key}");
    Ok(CacheEntry {
        output: output.parse().with_context(bad)?,
        rows: u64::try_from(rows).with_context(bad)?,
        columns: serde_json::from_str(&columns).with_context(bad)?,
        log: log.map(|l| l.parse()).transpose().with_context(bad)?,
        duration_ms: u64::try_from(duration_ms).with_context(bad)?,
    })
}

/// The columns [`run_row`] reads, in its order.
const RUN_COLUMNS: &str = "id, pipeline, manifest, commit_id, git_ref, created_at, failed";

type RunRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    bool,
);

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn run_record(row: RunRow) -> anyhow::Result<RunRecord> {
    let (id, pipeline, manifest, commit, git_ref, created_at, failed) = row;
    Ok(RunRecord {
        id,
        manifest: manifest
            .parse()
            .with_context(|| format!("run {id} of {pipeline} is corrupt"))?,
        pipeline,
        commit,
        git_ref,
        created_at,
        failed,
    })
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The prefix of the refs mirrored as files.
const PRODUCTION_PREFIX: &str = "production/";

/// What to tell an operator whose state database is damaged.
pub const REPAIR_HINT: &str = "run `sluice fsck --repair`, which moves the damaged file aside and \
     rebuilds the production refs from the ref files and the manifest chain";

/// Why an existing state database file cannot be opened as it is, if it
/// cannot: empty (and not a brand-new store) or not SQLite.
pub fn damaged_db_reason(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some("is not a regular file".into());
    }
    if meta.len() == 0 {
        // A crash between creating the file and writing its header leaves
        // it empty too; only a store that never held anything is new.
        let dir = path.parent().unwrap_or(Path::new("."));
        let used = !ref_files(&dir.join("refs")).is_empty()
            || std::fs::read_dir(dir.join("blobs/sha256"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
        return used.then(|| "is empty (0 bytes)".into());
    }
    let mut header = [0u8; 16];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Ok(()) if &header == SQLITE_HEADER => None,
        Ok(()) => Some("is not a SQLite database".into()),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

/// Whether an error from SQLite means the file itself is damaged.
fn is_damage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    })
}

/// The file mirroring a production ref: `<refs>/production/<pipeline>`,
/// with `/` in the pipeline written `%2F` (and `%` as `%25`) so that every
/// ref is one file and no pipeline's file is another's directory.
pub fn ref_file_path(refs_dir: &Path, name: &str) -> Option<PathBuf> {
    let pipeline = name.strip_prefix(PRODUCTION_PREFIX)?;
    if pipeline.is_empty() {
        return None;
    }
    let encoded = pipeline.replace('%', "%25").replace('/', "%2F");
    Some(refs_dir.join("production").join(encoded))
}

/// The production refs mirrored under `refs_dir`: name -> what the file
/// holds (a digest, or the reason it cannot be read). Temp files of an
/// interrupted write are not refs.
pub fn ref_files(refs_dir: &Path) -> std::collections::BTreeMap<String, Result<Digest, String>> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(refs_dir.join("production")) else {
        return out;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(encoded) = file_name.to_str() else {
            continue;
        };
        if encoded.starts_with('.') {
            continue;
        }
        let pipeline = encoded.replace("%2F", "/").replace("%25", "%");
        let value = std::fs::read_to_string(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|t| {
                t.trim()
                    .parse::<Digest>()
                    .map_err(|_| format!("does not hold a digest: {:?}", t.trim()))
            });
        out.insert(format!("{PRODUCTION_PREFIX}{pipeline}"), value);
    }
    out
}

/// Temp files of interrupted ref-file writes.
pub fn ref_temp_files(refs_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(refs_dir.join("production")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(".tmp"))
        })
        .map(|e| e.path())
        .collect()
}

/// Removes the temp files of ref-file writes that a crash interrupted
/// (untouched for a minute: a live write takes milliseconds, under the
/// database's write lock).
fn remove_stale_ref_temps(refs_dir: &Path) {
    let now = SystemTime::now();
    for path in ref_temp_files(refs_dir) {
        let stale = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| {
                now.duration_since(t)
                    .is_ok_and(|age| age > Duration::from_secs(60))
            });
        if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes a ref file atomically: a temp file, fsynced, renamed over the
/// old one, and the directory synced, so the file always holds a whole
/// digest, old or new.
pub fn write_ref_file(refs_dir: &Path, name: &str, manifest: &Digest) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Some(path) = ref_file_path(refs_dir, name) else {
        return Ok(());
    };
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| refs_dir.to_path_buf());
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    writeln!(tmp, "{manifest}")
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write the ref file of {name}"))?;
    tmp.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

/// Removes a ref file, if there is one.
pub fn remove_ref_file(refs_dir: &Path, name: &str) -> anyhow::Result<()> {
    let Some(path) = ref_file_path(refs_dir, name) else {
        return Ok(());
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

impl std::fmt::Debug for SqliteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteState")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteState {
    /// Opens (creating it and its directory if needed) the database at
    /// `path` and brings its schema up to date.
    ///
    /// An existing file that is empty or not a database is refused, never
    /// silently replaced by a new one: that would lose the production
    /// refs. `sluice fsck --repair` moves it aside and rebuilds them.
    pub fn open(path: &Path) -> anyhow::Result<SqliteState> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf);
        if let Some(dir) = &dir
            && let Some(warning) = super::secure_dir(dir)?
        {
            super::warn(&warning);
        }
        if let Some(reason) = damaged_db_reason(path) {
            bail!(
                "the state database {} {reason}; it was not replaced, so that nothing more is \
                 lost: {REPAIR_HINT}",
                path.display()
            );
        }
        let opened = (|| -> anyhow::Result<SqliteState> {
            let conn = Connection::open(path)
                .with_context(|| format!("cannot open the state database {}", path.display()))?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let mode = switch_to_wal(&conn)
                .with_context(|| format!("state database {}", path.display()))?;
            if !mode.eq_ignore_ascii_case("wal") {
                bail!(
                    "the state database {} cannot use WAL (journal mode is `{mode}`); \
                     is the state directory on a network file system? Use a local --state-dir",
                    path.display()
                );
            }
            let mut db = Self::init(conn, Some(path.to_path_buf()))?;
            db.refs_dir = dir.as_ref().map(|d| d.join("refs"));
            if let Some(refs) = &db.refs_dir {
                remove_stale_ref_temps(refs);
            }
            Ok(db)
        })();
        opened.map_err(|e| {
            if is_damage(&e) {
                e.context(format!(
                    "the state database {} is damaged: {REPAIR_HINT}",
                    path.display()
                ))
            } else {
                e
            }
        })
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> anyhow::Result<SqliteState> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> anyhow::Result<SqliteState> {
        // NORMAL is durable across application crashes in WAL mode; a
        // power cut may roll back the last few commits, which leaves the
        // database consistent, only slightly older (lost cache entries are
        // recomputed), and saves an fsync per commit.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let shown = path
            .as_deref()
            .map_or_else(|| "(in memory)".to_string(), |p| p.display().to_string());
        migrate(&mut conn).with_context(|| format!("state database {shown}"))?;
        Ok(SqliteState {
            conn: Mutex::new(conn),
            cache_reads: Mutex::new(None),
            path,
            refs_dir: None,
        })
    }

    /// Runs `sql` once per id (its `?1`) in one write transaction; the
    /// rows it changed in all.
    pub(super) fn execute_each(&self, sql: &str, ids: &[i64], what: &str) -> anyhow::Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(sql).context(what.to_string())?;
            for id in ids {
                n += stmt.execute([id]).context(what.to_string())?;
            }
        }
        tx.commit().context(what.to_string())?;
        Ok(n)
    }

    /// Retries a locked database every 200 µs instead of SQLite's default
    /// back-off (1, 2, 5, 10 … ms sleeps), for a connection whose writes
    /// someone is waiting on: the daemon's deliveries.
    pub fn eager_busy_wait(&self) -> anyhow::Result<()> {
        fn retry(count: i32) -> bool {
            // Up to BUSY_TIMEOUT in all, as the default handler.
            let limit = BUSY_TIMEOUT.as_micros() / 200;
            if u128::try_from(count).unwrap_or(u128::MAX) >= limit {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
            true
        }
        self.conn().busy_handler(Some(retry))?;
        Ok(())
    }

    /// Where the production refs are mirrored as files, if anywhere.
    pub fn refs_dir(&self) -> Option<&Path> {
        self.refs_dir.as_deref()
    }

    /// `PRAGMA integrity_check`: empty when the database is sound, else
    /// SQLite's description of each problem.
    pub fn integrity_check(&self) -> anyhow::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()
            .context("cannot check the state database")?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }

    /// The file, or `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A statement that panicked cannot leave a half-done write behind
    /// (SQLite rolls back an unfinished transaction), so a lock poisoned
    /// by a panicking thread is safe to reuse.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the ref's file while the caller holds the write lock, so
    /// files are written in the order the database moves (a file is never
    /// overwritten by a slower process's older value).
    fn mirror_ref(&self, name: &str, manifest: &Digest) -> anyhow::Result<()> {
        match &self.refs_dir {
            Some(dir) => write_ref_file(dir, name, manifest),
            None => Ok(()),
        }
    }

    // -- source memo --------------------------------------------------------

    /// The memoised digest of a source, only if its size, mtime and inode
    /// all still match. Paths that are not UTF-8 are never memoised (a
    /// lossy conversion could make two paths share a row).
    pub fn memo_get(&self, stat: &SourceStat) -> anyhow::Result<Option<Digest>> {
        let Some(path) = stat.path.to_str() else {
            return Ok(None);
        };
        let size = sql_int(stat.size, "file size")?;
        let text: Option<String> = self
            .conn()
            .prepare_cached(
                "SELECT digest FROM source_memo
                 WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3 AND inode = ?4",
            )
            .context("cannot read the source-digest memo")?
            .query_row(
                params![path, size, stat.mtime_ns, inode_to_sql(stat.inode)],
                |r| r.get(0),
            )
            .optional()
            .context("cannot read the source-digest memo")?;
        // A row that does not parse is treated as a miss: the source is
        // re-hashed and the row overwritten, which repairs it.
        Ok(text.and_then(|t| t.parse().ok()))
    }

    /// Remembers `digest` for this version of the source (replacing any
    /// older version's row for the same path).
    pub fn memo_put(&self, stat: &SourceStat, digest: &Digest) -> anyhow::Result<()> {
        let Some(path) = stat.path.to_str() else {
            return Ok(());
        };
        let size = sql_int(stat.size, "file size")?;
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO source_memo (path, size, mtime_ns, inode, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    path,
                    size,
                    stat.mtime_ns,
                    inode_to_sql(stat.inode),
                    digest.to_string()
                ],
            )
            .context("cannot write the source-digest memo")?;
        Ok(())
    }
}

impl State for SqliteState {
    /// The schema version recorded in the database.
    fn schema_version(&self) -> anyhow::Result<u32> {
        Ok(user_version(&self.conn())?)
    }

    // -- action cache -------------------------------------------------------

    /// Looks up a task. While a run holds [`Self::begin_cache_reads`], a
    /// hit is read from its snapshot; a miss is looked up again in the
    /// present (another run, or this one, may have computed it since).
    fn cache_get(&self, task_key: &Digest) -> anyhow::Result<Option<CacheEntry>> {
        let key = task_key.to_string();
        {
            let reads = self
                .cache_reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = reads.as_ref()
                && let Ok(Some(row)) = cache_row(&r.conn, &key)
            {
                return cache_entry(task_key, row).map(Some);
            }
        }
        match cache_row(&self.conn(), &key)? {
            Some(row) => cache_entry(task_key, row).map(Some),
            None => Ok(None),
        }
    }

    /// Opens one read transaction for the cache lookups of a run, until
    /// the guard is dropped: a no-op run looks up every node, and one
    /// snapshot spares each lookup its own transaction and WAL locks.
    /// Runs that overlap share it (the newest refreshes it). A database
    /// that cannot open a second connection (in memory) goes on without.
    fn begin_cache_reads(&self) -> CacheReadGuard<'_> {
        let mut reads = self
            .cache_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let fresh = match reads.take() {
            Some(mut r) => {
                // A fresh snapshot for the newcomer.
                let restarted =
                    r.conn.execute_batch("COMMIT; BEGIN").is_ok() && snapshot(&r.conn).is_ok();
                r.users += 1;
                restarted.then_some(r)
            }
            None => self.path.as_deref().and_then(|path| {
                let conn = Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .ok()?;
                conn.busy_timeout(BUSY_TIMEOUT).ok()?;
                // A run reads every node's entry: map the file rather than
                // read a page per lookup (SQLite's own cache is 2 MB).
                conn.pragma_update(None, "mmap_size", CACHE_READ_MMAP)
                    .ok()?;
                conn.execute_batch("BEGIN").ok()?;
                snapshot(&conn).ok()?;
                Some(CacheReads { users: 1, conn })
            }),
        };
        let active = fresh.is_some();
        *reads = fresh;
        CacheReadGuard {
            db: Some(self),
            active,
        }
    }

    /// Drops every cache entry whose output is `output` (a blob found
    /// damaged), so the next run recomputes those nodes.
    fn cache_forget_output(&self, output: &Digest) -> anyhow::Result<usize> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM action_cache WHERE output = ?1",
                [output.to_string()],
            )
            .context("cannot update the action cache")?;
        // A snapshot taken before must not serve the dropped entries.
        if let Some(r) = self
            .cache_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = r.conn.execute_batch("COMMIT; BEGIN");
            let _ = snapshot(&r.conn);
        }
        Ok(n)
    }

    /// Every cache entry's task key, output and log blob, as stored (a
    /// field that does not parse as a digest is `None`).
    fn cache_blobs(&self) -> anyhow::Result<Vec<CacheBlobs>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT task_key, output, log FROM action_cache ORDER BY task_key")
            .context("cannot read the action cache")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .context("cannot read the action cache")?;
        let mut out = Vec::new();
        for row in rows {
            let (task_key, output, log) = row.context("cannot read the action cache")?;
            out.push(CacheBlobs {
                output: output.parse().ok(),
                log: log.map(|l| l.parse().ok()),
                task_key,
            });
        }
        Ok(out)
    }

    /// Drops the entry stored under this task key (as stored, parsed or not).
    fn cache_forget_task(&self, task_key: &str) -> anyhow::Result<usize> {
        self.conn()
            .execute("DELETE FROM action_cache WHERE task_key = ?1", [task_key])
            .context("cannot update the action cache")
    }

    /// Inserts or replaces the entry for `task_key`.
    fn cache_put(&self, task_key: &Digest, entry: &CacheEntry) -> anyhow::Result<()> {
        let columns = serde_json::to_string(&entry.columns)?;
        let rows = sql_int(entry.rows, "row count")?;
        let duration_ms = sql_int(entry.duration_ms, "duration")?;
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO action_cache
                 (task_key, output, rows, columns, log, duration_ms, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    task_key.to_string(),
                    entry.output.to_string(),
                    rows,
                    columns,
                    entry.log.map(|l| l.to_string()),
                    duration_ms,
                    now_rfc3339(),
                ],
            )
            .context("cannot write the action cache")?;
        Ok(())
    }

    // -- refs ---------------------------------------------------------------

    fn ref_get(&self, name: &str) -> anyhow::Result<Option<Digest>> {
        let text: Option<String> = self
            .conn()
            .query_row("SELECT manifest FROM refs WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .with_context(|| format!("cannot read ref {name}"))?;
        text.map(|t| t.parse().with_context(|| format!("ref {name} is corrupt")))
            .transpose()
    }

    /// Every ref, by name; a value that does not parse is `None`.
    fn ref_list(&self) -> anyhow::Result<Vec<(String, Option<Digest>)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, manifest FROM refs ORDER BY name")
            .context("cannot read the refs")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .context("cannot read the refs")?;
        let mut out = Vec::new();
        for row in rows {
            let (name, manifest) = row.context("cannot read the refs")?;
            out.push((name, manifest.parse().ok()));
        }
        Ok(out)
    }

    /// Deletes a ref (and its file).
    fn ref_delete(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM refs WHERE name = ?1", [name])
            .with_context(|| format!("cannot delete ref {name}"))?;
        if let Some(dir) = &self.refs_dir {
            remove_ref_file(dir, name)?;
        }
        tx.commit()
            .with_context(|| format!("cannot delete ref {name}"))?;
        Ok(())
    }

    /// Points `name` at `manifest` unconditionally.
    fn ref_set(&self, name: &str, manifest: &Digest) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO refs (name, manifest, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE
             SET manifest = excluded.manifest, updated_at = excluded.updated_at",
            params![name, manifest.to_string(), now_rfc3339()],
        )
        .with_context(|| format!("cannot set ref {name}"))?;
        self.mirror_ref(name, manifest)?;
        tx.commit()
            .with_context(|| format!("cannot set ref {name}"))?;
        Ok(())
    }

    /// Points `name` at `new` only if it currently points at `expected`
    /// (`None`: only if it does not exist). Returns whether it moved. Each
    /// branch is a single statement, which SQLite runs atomically even
    /// against other processes, so two promotions cannot both win.
    fn ref_compare_and_set(
        &self,
        name: &str,
        expected: Option<&Digest>,
        new: &Digest,
    ) -> anyhow::Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = match expected {
            None => tx.execute(
                "INSERT INTO refs (name, manifest, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![name, new.to_string(), now_rfc3339()],
            ),
            Some(old) => tx.execute(
                "UPDATE refs SET manifest = ?2, updated_at = ?3
                 WHERE name = ?1 AND manifest = ?4",
                params![name, new.to_string(), now_rfc3339(), old.to_string()],
            ),
        }
        .with_context(|| format!("cannot update ref {name}"))?;
        if changed == 1 {
            self.mirror_ref(name, new)?;
        }
        tx.commit()
            .with_context(|| format!("cannot update ref {name}"))?;
        Ok(changed == 1)
    }

    // -- runs ---------------------------------------------------------------

    /// Records a run and returns its id.
    fn record_run(
        &self,
        pipeline: &str,
        manifest: &Digest,
        commit: Option<&str>,
        git_ref: Option<&str>,
        failed: bool,
    ) -> anyhow::Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (pipeline, manifest, commit_id, git_ref, created_at, failed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                pipeline,
                manifest.to_string(),
                commit,
                git_ref,
                now_rfc3339(),
                failed
            ],
        )
        .with_context(|| format!("cannot record a run of {pipeline}"))?;
        Ok(conn.last_insert_rowid())
    }

    /// The newest run of `pipeline`.
    fn last_run(&self, pipeline: &str) -> anyhow::Result<Option<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = ?1 ORDER BY id DESC LIMIT 1"
            ))
            .with_context(|| format!("cannot read the runs of {pipeline}"))?;
        let row = stmt
            .query_row([pipeline], run_row)
            .optional()
            .with_context(|| format!("cannot read the runs of {pipeline}"))?;
        row.map(run_record).transpose()
    }

    /// Every recorded run, oldest first.
    fn runs(&self) -> anyhow::Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id"))
            .context("cannot read the runs")?;
        let rows = stmt
            .query_map([], run_row)
            .context("cannot read the runs")?
            .collect::<Result<Vec<_>, _>>()
            .context("cannot read the runs")?;
        rows.into_iter().map(run_record).collect()
    }

    // -- the daemon's queue: in `store::queue`

    fn enqueue_many(
        &self,
        batch: &[(&NewJob, Option<(&str, &str)>)],
    ) -> anyhow::Result<Vec<Enqueued>> {
        SqliteState::enqueue_many(self, batch)
    }

    fn claim_job(&self) -> anyhow::Result<Option<Job>> {
        SqliteState::claim_job(self)
    }

    fn finish_job(
        &self,
        id: i64,
        state: JobState,
        outcome: Option<&str>,
        report: Option<&Digest>,
    ) -> anyhow::Result<()> {
        SqliteState::finish_job(self, id, state, outcome, report)
    }

    fn requeue_running(&self, id: Option<i64>) -> anyhow::Result<usize> {
        SqliteState::requeue_running(self, id)
    }

    fn job(&self, id: i64) -> anyhow::Result<Option<Job>> {
        SqliteState::job(self, id)
    }

    fn job_by_run_id(&self, run_id: &str) -> anyhow::Result<Option<Job>> {
        SqliteState::job_by_run_id(self, run_id)
    }

    fn jobs_with_reports(&self) -> anyhow::Result<Vec<Job>> {
        SqliteState::jobs_with_reports(self)
    }

    fn jobs_forget_reports(&self, ids: &[i64]) -> anyhow::Result<usize> {
        SqliteState::jobs_forget_reports(self, ids)
    }

    fn runs_forget(&self, ids: &[i64]) -> anyhow::Result<usize> {
        self.execute_each("DELETE FROM runs WHERE id = ?1", ids, "cannot delete runs")
    }

    fn job_counts(&self) -> anyhow::Result<Vec<(JobState, u64)>> {
        SqliteState::job_counts(self)
    }

    fn outbox_push(
        &self,
        repo: &str,
        job_id: i64,
        kind: &str,
        payload: &str,
    ) -> anyhow::Result<i64> {
        SqliteState::outbox_push(self, repo, job_id, kind, payload)
    }

    fn outbox_next(&self, now_ms: i64) -> anyhow::Result<Option<OutboxItem>> {
        SqliteState::outbox_next(self, now_ms)
    }

    fn outbox_next_due(&self) -> anyhow::Result<Option<i64>> {
        SqliteState::outbox_next_due(self)
    }

    fn outbox_done(&self, id: i64) -> anyhow::Result<()> {
        SqliteState::outbox_done(self, id)
    }

    fn outbox_retry(&self, id: i64, next_at_ms: i64, error: &str) -> anyhow::Result<()> {
        SqliteState::outbox_retry(self, id, next_at_ms, error)
    }

    fn outbox_drop(&self, id: i64, error: &str) -> anyhow::Result<()> {
        SqliteState::outbox_drop(self, id, error)
    }

    fn outbox_pending(&self) -> anyhow::Result<u64> {
        SqliteState::outbox_pending(self)
    }

    fn comment_id(&self, repo: &str, pr: u64) -> anyhow::Result<Option<u64>> {
        SqliteState::comment_id(self, repo, pr)
    }

    fn set_comment_id(&self, repo: &str, pr: u64, id: u64) -> anyhow::Result<()> {
        SqliteState::set_comment_id(self, repo, pr, id)
    }

    /// Its own connection to the same file, retrying a busy database
    /// eagerly; `None` in memory.
    fn own_connection(&self) -> Option<anyhow::Result<std::sync::Arc<dyn State>>> {
        let path = self.path.as_deref()?;
        Some(SqliteState::open(path).map(|own| {
            if let Err(e) = own.eager_busy_wait() {
                tracing::debug!("cannot set the connection's busy handler: {e}");
            }
            std::sync::Arc::new(own) as std::sync::Arc<dyn State>
        }))
    }
}

/// SQLite integers are i64; counts beyond i64::MAX cannot occur in
/// practice, but are an error rather than a silently wrapped number.
fn sql_int(value: u64, what: &str) -> anyhow::Result<i64> {
    i64::try_from(value).with_context(|| format!("{what} {value} is too large to store"))
}

/// SQLite integers are i64; inode numbers are u64 and may use the top bit
/// (overlayfs, NFS), so they are stored bit for bit, which stays one-to-one.
fn inode_to_sql(inode: u64) -> i64 {
    i64::from_ne_bytes(inode.to_ne_bytes())
}

/// Sets `journal_mode=WAL` and returns the mode in effect. On a fresh
/// file this writes the header, and when several processes open the same
/// new database at once SQLite may answer BUSY without calling the busy
/// handler (it refuses to wait where waiting could deadlock), so the
/// switch is retried here for up to the busy timeout.
fn switch_to_wal(conn: &Connection) -> anyhow::Result<String> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result.context("cannot switch the database to WAL"),
        }
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies the migrations the database lacks, each in its own transaction
/// together with its `user_version` bump. The version is re-read inside
/// each write transaction, so two processes opening a fresh database at
/// once do not both run a migration.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = user_version(&tx)?;
        if version > SCHEMA_VERSION {
            bail!(
                "its schema version is {version}, newer than this sluice knows \
                 ({SCHEMA_VERSION}); it was written by a newer sluice. Upgrade sluice, \
                 or use another state directory (--state-dir)"
            );
        }
        let Some((name, sql)) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .with_context(|| format!("migration {name} failed"))?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()
            .with_context(|| format!("cannot commit migration {name}"))?;
    }
}

// -- time ---------------------------------------------------------------------

/// The current time as RFC 3339 UTC, e.g. `2024-02-29T13:05:09Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A time as RFC 3339 UTC with whole seconds (sub-second precision is
/// noise for run records and would only make rows harder to read).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Before 1970: round down to the whole second at or before `t`.
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(d.subsec_nanos() > 0)
        }
    };
    format_unix_seconds(secs)
}

fn format_unix_seconds(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to the
/// proleptic Gregorian (year, month, day). Eras are 400-year cycles, which
/// makes the leap-year rules fall out of plain integer arithmetic.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // shift the epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is in [1, 31] and m in [1, 12] by construction, so the casts are exact.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn migrations_apply_once_and_reopening_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.db");
        {
            let db = SqliteState::open(&path).unwrap();
            assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            db.ref_set("production/p", &d("m1")).unwrap();
        }
        let db = SqliteState::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(db.ref_get("production/p").unwrap(), Some(d("m1")));

        let raw = Connection::open(&path).unwrap();
        let mode: String = raw
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(user_version(&raw).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteState::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = format!("{:#}", SqliteState::open(&path).unwrap_err());
        assert!(err.contains("newer"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn concurrent_first_opens_migrate_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SqliteState::open(&path)))
                .collect();
            for h in handles {
                let db = h.join().unwrap().unwrap();
                assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            }
        });
    }

    #[test]
    fn two_connections_write_concurrently() {
        // As two processes would: separate connections to one file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let dbs = [
            SqliteState::open(&path).unwrap(),
            SqliteState::open(&path).unwrap(),
        ];
        std::thread::scope(|s| {
            for db in &dbs {
                s.spawn(move || {
                    for i in 0..50 {
                        db.record_run("p", &d(&i.to_string()), None, None, false)
                            .unwrap();
                        db.ref_set("r", &d(&i.to_string())).unwrap();
                    }
                });
            }
        });
        assert_eq!(dbs[0].last_run("p").unwrap().unwrap().id, 100);
    }

    #[test]
    fn cache_round_trips_and_replaces() {
        for db in crate::store::test_backends() {
            let db = &*db;
            let key = d("task");
            assert_eq!(db.cache_get(&key).unwrap(), None);
            let mut entry = CacheEntry {
                output: d("out"),
                rows: 42,
                columns: vec!["patient_id".into(), "npi, \"quoted\"".into()],
                log: None,
                duration_ms: 7,
            };
            db.cache_put(&key, &entry).unwrap();
            assert_eq!(db.cache_get(&key).unwrap(), Some(entry.clone()));
            entry.log = Some(d("log"));
            entry.rows = 0;
            entry.columns.clear();
            db.cache_put(&key, &entry).unwrap();
            assert_eq!(db.cache_get(&key).unwrap(), Some(entry));
            assert_eq!(db.cache_get(&d("other")).unwrap(), None);
        }
    }

    #[test]
    fn cache_get_many_answers_in_order() {
        for db in crate::store::test_backends() {
            let entry = |n: u64| CacheEntry {
                output: d(&format!("out{n}")),
                rows: n,
                columns: vec!["id".into()],
                log: None,
                duration_ms: 0,
            };
            db.cache_put(&d("a"), &entry(1)).unwrap();
            db.cache_put(&d("c"), &entry(3)).unwrap();
            let got = db
                .cache_get_many(&[d("c"), d("b"), d("a"), d("c")])
                .unwrap();
            assert_eq!(
                got,
                vec![Some(entry(3)), None, Some(entry(1)), Some(entry(3))]
            );
            assert!(db.cache_get_many(&[]).unwrap().is_empty());
        }
    }

    #[test]
    fn cache_reads_share_one_snapshot_and_still_see_new_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let db = SqliteState::open(&tmp.path().join("state.db")).unwrap();
        let entry = |out: &str| CacheEntry {
            output: d(out),
            rows: 1,
            columns: vec!["id".into()],
            log: None,
            duration_ms: 0,
        };
        db.cache_put(&d("a"), &entry("a-out")).unwrap();
        let guard = db.begin_cache_reads();
        assert!(guard.active, "a file database gets a read connection");
        assert_eq!(db.cache_get(&d("a")).unwrap(), Some(entry("a-out")));
        // Written after the snapshot: a miss there, found in the present.
        db.cache_put(&d("b"), &entry("b-out")).unwrap();
        assert_eq!(db.cache_get(&d("b")).unwrap(), Some(entry("b-out")));
        // Dropped entries are not served from the snapshot.
        db.cache_forget_output(&d("a-out")).unwrap();
        assert_eq!(db.cache_get(&d("a")).unwrap(), None);
        {
            let second = db.begin_cache_reads();
            assert!(second.active);
        }
        assert!(
            db.cache_reads.lock().unwrap().is_some(),
            "the first run still reads"
        );
        drop(guard);
        assert!(db.cache_reads.lock().unwrap().is_none());
        assert!(
            !SqliteState::open_in_memory()
                .unwrap()
                .begin_cache_reads()
                .active
        );
    }

    #[test]
    fn refs_and_compare_and_set() {
        for db in crate::store::test_backends() {
            let db = &*db;
            let r = "production/clinics";
            assert_eq!(db.ref_get(r).unwrap(), None);

            // Absent: only `expected = None` wins.
            assert!(!db.ref_compare_and_set(r, Some(&d("x")), &d("m1")).unwrap());
            assert_eq!(db.ref_get(r).unwrap(), None);
            assert!(db.ref_compare_and_set(r, None, &d("m1")).unwrap());
            assert_eq!(db.ref_get(r).unwrap(), Some(d("m1")));

            // Present: `None` and a stale expectation both lose.
            assert!(!db.ref_compare_and_set(r, None, &d("m2")).unwrap());
            assert!(!db.ref_compare_and_set(r, Some(&d("x")), &d("m2")).unwrap());
            assert_eq!(db.ref_get(r).unwrap(), Some(d("m1")));
            assert!(db.ref_compare_and_set(r, Some(&d("m1")), &d("m2")).unwrap());
            assert_eq!(db.ref_get(r).unwrap(), Some(d("m2")));

            db.ref_set(r, &d("m3")).unwrap();
            assert_eq!(db.ref_get(r).unwrap(), Some(d("m3")));
            assert_eq!(db.ref_get("production/other").unwrap(), None);
        }
    }

    #[test]
    fn production_refs_are_mirrored_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteState::open(&dir.path().join("state.db")).unwrap();
        let refs = dir.path().join("refs");
        let r = "production/clinics/a";
        assert!(db.ref_compare_and_set(r, None, &d("m1")).unwrap());
        let file = refs.join("production/clinics%2Fa");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("{}\n", d("m1"))
        );
        // A lost race leaves the file alone; a won one moves it.
        assert!(!db.ref_compare_and_set(r, Some(&d("x")), &d("m2")).unwrap());
        assert!(db.ref_compare_and_set(r, Some(&d("m1")), &d("m2")).unwrap());
        db.ref_set("production/b%c", &d("m3")).unwrap();
        db.ref_set("other", &d("m4")).unwrap();
        let files = ref_files(&refs);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(files[r], Ok(d("m2")));
        assert_eq!(files["production/b%c"], Ok(d("m3")));
        assert!(ref_temp_files(&refs).is_empty());
        db.ref_delete(r).unwrap();
        assert!(!file.exists());
        assert_eq!(db.ref_get(r).unwrap(), None);
        assert_eq!(db.ref_list().unwrap().len(), 2);
    }

    #[test]
    fn an_empty_or_foreign_database_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A brand-new store's empty file (a crash before the header) is fine.
        std::fs::write(&path, b"").unwrap();
        drop(SqliteState::open(&path).unwrap());
        let db = SqliteState::open(&path).unwrap();
        db.ref_set("production/p", &d("m1")).unwrap();
        drop(db);

        std::fs::write(&path, b"").unwrap();
        let err = format!("{:#}", SqliteState::open(&path).unwrap_err());
        assert!(err.contains("is empty"), "{err}");
        assert!(err.contains("sluice fsck --repair"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = format!("{:#}", SqliteState::open(&path).unwrap_err());
        assert!(err.contains("not a SQLite database"), "{err}");
        assert!(err.contains("sluice fsck --repair"), "{err}");
    }

    #[test]
    fn cache_blobs_lists_and_forgets_entries() {
        for db in crate::store::test_backends() {
            let db = &*db;
            let entry = CacheEntry {
                output: d("out"),
                rows: 1,
                columns: vec![],
                log: Some(d("log")),
                duration_ms: 1,
            };
            db.cache_put(&d("k"), &entry).unwrap();
            let all = db.cache_blobs().unwrap();
            assert_eq!(
                all,
                vec![CacheBlobs {
                    task_key: d("k").to_string(),
                    output: Some(d("out")),
                    log: Some(Some(d("log"))),
                }]
            );
            assert_eq!(db.cache_forget_task(&d("k").to_string()).unwrap(), 1);
            assert!(db.cache_blobs().unwrap().is_empty());
        }
    }

    #[test]
    fn a_sound_database_passes_the_integrity_check() {
        let db = SqliteState::open_in_memory().unwrap();
        db.cache_put(
            &d("k"),
            &CacheEntry {
                output: d("out"),
                rows: 1,
                columns: vec![],
                log: None,
                duration_ms: 1,
            },
        )
        .unwrap();
        assert!(db.integrity_check().unwrap().is_empty());
    }

    #[test]
    fn runs_round_trip_and_last_is_newest() {
        for db in crate::store::test_backends() {
            let db = &*db;
            assert_eq!(db.last_run("p").unwrap(), None);
            let a = db
                .record_run("p", &d("m1"), Some("abc123"), Some("main"), false)
                .unwrap();
            let q = db.record_run("q", &d("mq"), None, None, false).unwrap();
            let b = db.record_run("p", &d("m2"), None, None, true).unwrap();
            assert!(a < q && q < b);
            let last = db.last_run("p").unwrap().unwrap();
            assert_eq!(last.id, b);
            assert_eq!(last.pipeline, "p");
            assert_eq!(last.manifest, d("m2"));
            assert_eq!(last.commit, None);
            assert!(last.failed);
            assert_eq!(last.created_at.len(), "2024-01-01T00:00:00Z".len());
            let q_run = db.last_run("q").unwrap().unwrap();
            assert_eq!(
                (q_run.id, q_run.manifest, q_run.failed),
                (q, d("mq"), false)
            );
            let all = db.runs().unwrap();
            assert_eq!(
                all.iter().map(|r| r.id).collect::<Vec<_>>(),
                vec![a, q, b],
                "runs lists every run, oldest first"
            );
            assert_eq!(all[0].git_ref.as_deref(), Some("main"));
            assert_eq!(all[0].commit.as_deref(), Some("abc123"));
        }
    }

    #[test]
    fn memo_hits_only_when_size_mtime_and_inode_match() {
        let db = SqliteState::open_in_memory().unwrap();
        let stat = SourceStat {
            path: PathBuf::from("/data/clinic_a/patients.csv"),
            size: 1 << 40,
            mtime_ns: 1_700_000_000_123_456_789,
            inode: u64::MAX - 3, // top bit set, as overlayfs inodes may be
        };
        assert_eq!(db.memo_get(&stat).unwrap(), None);
        db.memo_put(&stat, &d("v1")).unwrap();
        assert_eq!(db.memo_get(&stat).unwrap(), Some(d("v1")));

        let mut s = stat.clone();
        s.size += 1;
        assert_eq!(db.memo_get(&s).unwrap(), None);
        let mut s = stat.clone();
        s.mtime_ns += 1;
        assert_eq!(db.memo_get(&s).unwrap(), None);
        let mut s = stat.clone();
        s.inode = 5;
        assert_eq!(db.memo_get(&s).unwrap(), None);
        let mut s = stat.clone();
        s.path = PathBuf::from("/data/clinic_b/patients.csv");
        assert_eq!(db.memo_get(&s).unwrap(), None);

        // A new version of the file replaces the old row.
        let mut newer = stat.clone();
        newer.mtime_ns += 10;
        db.memo_put(&newer, &d("v2")).unwrap();
        assert_eq!(db.memo_get(&newer).unwrap(), Some(d("v2")));
        assert_eq!(db.memo_get(&stat).unwrap(), None);
    }

    #[test]
    fn non_utf8_paths_are_not_memoised() {
        use std::os::unix::ffi::OsStrExt;
        let db = SqliteState::open_in_memory().unwrap();
        let stat = SourceStat {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(b"/data/\xff.csv")),
            size: 1,
            mtime_ns: 1,
            inode: 1,
        };
        db.memo_put(&stat, &d("v")).unwrap();
        assert_eq!(db.memo_get(&stat).unwrap(), None);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |secs: i64| {
            if secs >= 0 {
                rfc3339(UNIX_EPOCH + Duration::from_secs(secs as u64))
            } else {
                rfc3339(UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()))
            }
        };
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(
            at(1_709_164_800 + 13 * 3600 + 5 * 60 + 9),
            "2024-02-29T13:05:09Z"
        );
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z"); // 2100 is not leap
        assert_eq!(at(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(at(-1), "1969-12-31T23:59:59Z");
        assert_eq!(at(-2_208_988_800), "1900-01-01T00:00:00Z");
        // Sub-second times round down, before the epoch too.
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1500)),
            "1970-01-01T00:00:01Z"
        );
    }

    #[test]
    fn civil_from_days_agrees_with_counting_days() {
        // Walk 1600-03-01 .. 2400 day by day with the textbook leap rule.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut y, mut m, mut day) = (1600i64, 3u32, 1u32);
        let mut n = -135_080; // 1600-03-01 relative to 1970-01-01
        assert_eq!(civil_from_days(n), (1600, 3, 1));
        while y < 2400 {
            assert_eq!(civil_from_days(n), (y, m, day), "day {n}");
            n += 1;
            day += 1;
            if day > month_len(y, m) {
                day = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn state_db_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SqliteState>();
    }
}
