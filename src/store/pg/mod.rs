//! The state on PostgreSQL, for a team whose machines share one cache:
//! [`PgState`] implements [`State`] over the synchronous `postgres` client
//! with a small pool of connections, in one schema per user of the
//! database (the CLI's `sluice`, the daemon's queue, each served
//! repository). Migrations (`migrations/pg/`) are applied at open under an
//! advisory lock, so two processes opening at once apply each one once.
//!
//! The password never sits in the URL: a URL that carries one is refused,
//! and it comes from `PGPASSWORD` or a `.pgpass` file, which the front end
//! reads and hands over as [`Credentials`]. A host other than this machine
//! needs `sslmode=require`; the server's certificate is then verified
//! (rustls, against the system's roots and Mozilla's). Errors name the
//! table or the operation and PostgreSQL's message, never its `DETAIL`
//! (which may quote a row).

mod queue;
pub mod tasks;
#[cfg(test)]
pub mod testing;

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use postgres::config::{Host, SslMode};
use postgres::{Client, Statement};

use super::queue::{Enqueued, Job, JobState, NewJob, OutboxItem};
use super::state::{CacheBlobs, CacheEntry, RunRecord, State, now_rfc3339};
use crate::plan::digest::Digest;

/// Migrations in order, recorded in `schema_migrations`. Append only.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../../migrations/pg/0001_init.sql"),
    ),
    (
        "0002_tasks",
        include_str!("../../../migrations/pg/0002_tasks.sql"),
    ),
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Idle connections kept for reuse; more are opened while many threads
/// are busy at once, and closed when they come back to a full pool.
const MAX_IDLE: usize = 8;

/// A pooled connection idle longer than this is checked before use.
const IDLE_CHECK: Duration = Duration::from_secs(30);
/// How long that check, or the one after a failed call, may take.
const VALID_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection attempt may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub use super::shared::{
    CLI_SCHEMA, Credentials, DAEMON_SCHEMA, DEFAULT_LEASE, Password, repo_schema,
};

/// A checked connection target: a `postgresql://` URL without a password,
/// the password from [`Credentials`], and the TLS rule applied.
#[derive(Clone)]
pub struct PgConnect {
    config: postgres::Config,
    /// The URL as given (it holds no password), for messages.
    shown: String,
}

impl std::fmt::Debug for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `url` names PostgreSQL (the only shared state there is).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgresql://") || url.starts_with("postgres://")
}

impl PgConnect {
    /// Checks `url` (`postgresql://[user@]host[:port]/database[?sslmode=…]`)
    /// and takes the password from `creds`.
    pub fn parse(url: &str, creds: &Credentials) -> anyhow::Result<PgConnect> {
        if !is_postgres_url(url) {
            bail!(
                "the state URL must start with postgresql:// (e.g. \
                 postgresql://sluice@db.example.org/sluice?sslmode=require)"
            );
        }
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| anyhow!("the state URL is not a PostgreSQL URL: {e}"))?;
        if config.get_password().is_some() {
            // Not echoed: the URL is what holds the password.
            bail!(
                "the state URL carries a password; sluice takes it only from PGPASSWORD or a \
                 .pgpass file, so that it never sits in a config file, a shell history or the \
                 process list: remove `:password` from the URL"
            );
        }
        if config.get_hosts().is_empty() {
            bail!("the state URL {url} names no host: write postgresql://USER@HOST/DATABASE");
        }
        let remote = remote_host(&config);
        if let Some(host) = remote
            && config.get_ssl_mode() != SslMode::Require
        {
            bail!(
                "the state URL {url} names {host}, not this machine, without TLS: add \
                 `?sslmode=require` (the server's certificate is then verified)"
            );
        }
        if let Some(pw) = &creds.password {
            config.password(pw.expose().as_bytes());
        } else if let Some(file) = &creds.pgpass
            && let Some(pw) = pgpass_lookup(file, &config)?
        {
            config.password(pw.as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("sluice");
        Ok(PgConnect {
            config,
            shown: url.to_string(),
        })
    }

    fn connect(&self) -> anyhow::Result<Client> {
        // TLS when asked for (and it is, for any other machine); on this
        // machine without it, none: a local server's certificate is
        // often self-signed (Debian's), and `prefer` would then fail
        // verification instead of falling back.
        let result = if self.config.get_ssl_mode() == SslMode::Require {
            self.config.connect(tls_connector()?)
        } else {
            self.config.connect(postgres::NoTls)
        };
        result.map_err(|e| pg_error(&e, &format!("cannot connect to {}", self.shown)))
    }
}

/// The first host that is not this machine, if any.
fn remote_host(config: &postgres::Config) -> Option<String> {
    let local = |h: &Host| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    if let Some(ip) = config.get_hostaddrs().iter().find(|ip| !ip.is_loopback()) {
        return Some(ip.to_string());
    }
    config
        .get_hosts()
        .iter()
        .find(|h| !local(h))
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
}

/// rustls with the ring provider, trusting the system's roots and
/// Mozilla's.
fn tls_connector() -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The password of the first `.pgpass` line matching the connection
/// (`host:port:database:user:password`, `*` matching anything, `\:` and
/// `\\` escaped), as libpq reads it. A file readable by group or others
/// is refused, as libpq ignores it.
fn pgpass_lookup(
    file: &std::path::Path,
    config: &postgres::Config,
) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "the password file {} is readable by other users: run chmod 0600 on it",
            file.display()
        );
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().map(str::to_string).unwrap_or_default();
    let db = config
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_string);
    Ok(pgpass_match(&text, [&host, &port, &db, &user]))
}

/// The password of the first line of a `.pgpass` text matching `want`
/// (host, port, database, user).
fn pgpass_match(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        let matches = fields
            .iter()
            .zip(want)
            .all(|(have, want)| have == "*" || have == want);
        if matches {
            return fields.pop();
        }
    }
    None
}

/// An error of PostgreSQL or the connection, without the `DETAIL` of a
/// server error (it may quote a row's values).
fn pg_error(e: &postgres::Error, what: &str) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => anyhow!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
        // The cause of a connection or TLS failure ("invalid peer
        // certificate: UnknownIssuer") is the useful part.
        None => match std::error::Error::source(e) {
            Some(cause) => anyhow!("{what}: {e}: {cause}"),
            None => anyhow!("{what}: {e}"),
        },
    }
}

/// [`pg_error`] as a method, for bodies that return anyhow errors.
trait PgResult<T> {
    fn pg(self, what: &str) -> anyhow::Result<T>;
}

impl<T> PgResult<T> for Result<T, postgres::Error> {
    fn pg(self, what: &str) -> anyhow::Result<T> {
        self.map_err(|e| pg_error(&e, what))
    }
}

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// When it went back to the pool.
    idle_since: std::time::Instant,
}

impl Conn {
    /// `sql`, prepared once per connection: a no-op run looks up every
    /// node, and preparing costs a round trip.
    fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// The state in one schema of a PostgreSQL database.
pub struct PgState {
    connect: PgConnect,
    schema: String,
    idle: Mutex<Vec<Conn>>,
    /// Queries of the action cache sent (one per lookup, one per batch).
    cache_queries: std::sync::atomic::AtomicU64,
    /// Who this process is in `claimed_by` (host, pid and a random part).
    owner: String,
    /// The lease a claimed job gets, in milliseconds (renewed by its
    /// daemon's heartbeat).
    job_lease_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("url", &self.connect.shown)
            .field("schema", &self.schema)
            .finish()
    }
}

/// Runs `f` where the synchronous client may block: the client runs a
/// tokio runtime of its own, which panics inside another runtime's
/// thread (an async handler of the daemon), so there `f` runs on a
/// thread of its own.
fn outside_runtime<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(anyhow!("a PostgreSQL call panicked")))
    })
}

/// This process's name in `claimed_by` and `completed_by`: the host, the
/// process id and a random part (a pid is reused after a restart).
pub fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{tag}", std::process::id())
}

/// A stable advisory-lock key for `what`.
fn lock_key(what: &str) -> i64 {
    let d = Digest::of(what.as_bytes());
    let hex = d.hex();
    // 16 hex digits are 8 bytes; the digest's hex is 64 digits.
    u64::from_str_radix(hex.get(..16).unwrap_or("0"), 16).map_or(0, |n| n as i64)
}

/// Every schema of this database that sluice made (the CLI's, the
/// daemon's queue, each served repository's), for `sluice gc`: blobs a
/// team shares are kept if any of them needs one.
pub fn sluice_schemas(connect: &PgConnect) -> anyhow::Result<Vec<String>> {
    outside_runtime(|| {
        let mut client = connect.connect()?;
        let rows = client
            .query(
                "SELECT nspname::text FROM pg_namespace
                 WHERE nspname = $1 OR nspname LIKE 'sluice\\_%' ORDER BY 1",
                &[&CLI_SCHEMA],
            )
            .map_err(|e| pg_error(&e, "cannot list the schemas"))?;
        rows.iter()
            .map(|r| r.try_get::<_, String>(0).context("cannot list the schemas"))
            .collect()
    })
}

impl PgState {
    /// Connects, creates `schema` if needed and brings it up to date.
    pub fn open(connect: &PgConnect, schema: &str) -> anyhow::Result<PgState> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit();
        if !valid {
            bail!("{schema:?} is not a schema name sluice uses");
        }
        let state = PgState {
            connect: connect.clone(),
            schema: schema.to_string(),
            idle: Mutex::new(Vec::new()),
            cache_queries: std::sync::atomic::AtomicU64::new(0),
            owner: owner_id(),
            job_lease_ms: std::sync::atomic::AtomicU64::new(DEFAULT_LEASE.as_millis() as u64),
        };
        state
            .migrate()
            .with_context(|| format!("state database {} (schema {schema})", connect.shown))?;
        Ok(state)
    }

    /// This process's name in the `claimed_by` of jobs and tasks.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Sets the lease of the jobs this state claims from now on.
    pub fn set_job_lease(&self, lease: Duration) {
        self.job_lease_ms.store(
            lease.as_millis().max(1) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn job_lease_ms(&self) -> i64 {
        self.job_lease_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(i64::MAX as u64) as i64
    }

    /// Renews the lease of job `id`, claimed by this process; false when
    /// it lost it (another daemon took the job after it expired).
    pub fn renew_job_lease(&self, id: i64) -> anyhow::Result<bool> {
        queue::renew_job_lease(self, id)
    }

    /// How many queries of the action cache this state has sent.
    pub fn cache_queries(&self) -> u64 {
        self.cache_queries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_cache_query(&self) {
        self.cache_queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The URL (without password) and schema, for messages.
    pub fn describe(&self) -> String {
        format!("{} (schema {})", self.connect.shown, self.schema)
    }

    fn take(&self) -> anyhow::Result<Conn> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(mut c) = pooled
            && !c.client.is_closed()
        {
            // One that sat idle a while may have been closed by the
            // server (a restart, a failover): checked before use, so a
            // lost connection costs a reconnect, not a failed call.
            if c.idle_since.elapsed() < IDLE_CHECK || c.client.is_valid(VALID_TIMEOUT).is_ok() {
                return Ok(c);
            }
        }
        let mut client = self.connect.connect()?;
        // The schema name was checked to be [a-z0-9_]: no quoting needed
        // beyond the double quotes.
        client
            .batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .map_err(|e| pg_error(&e, "cannot select the schema"))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            idle_since: std::time::Instant::now(),
        })
    }

    /// Returns a connection to the pool, unless it is closed, or a call
    /// on it failed and it no longer answers.
    fn give_back(&self, mut c: Conn, failed: bool) {
        if c.client.is_closed() || (failed && c.client.is_valid(VALID_TIMEOUT).is_err()) {
            return;
        }
        c.idle_since = std::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    /// Runs `f` on a pooled connection; `what` names the operation in an
    /// error.
    fn with<T: Send>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error> + Send,
    ) -> anyhow::Result<T> {
        outside_runtime(|| {
            let mut c = self.take()?;
            let result = f(&mut c);
            self.give_back(c, result.is_err());
            result.map_err(|e| pg_error(&e, what))
        })
    }

    /// Like [`Self::with`], for a body whose own checks return anyhow
    /// errors.
    fn with_anyhow<T: Send>(
        &self,
        f: impl FnOnce(&mut Conn) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        outside_runtime(|| {
            let mut c = self.take()?;
            let result = f(&mut c);
            self.give_back(c, result.is_err());
            result
        })
    }

    fn migrate(&self) -> anyhow::Result<()> {
        let schema = self.schema.clone();
        self.with_anyhow(|c| {
            let err = |what: &'static str| move |e: postgres::Error| pg_error(&e, what);
            let mut tx = c.client.transaction().map_err(err("cannot migrate"))?;
            // One process migrates a schema at a time; the others wait
            // here, then find it done.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&format!("sluice migrate {schema}"))],
            )
            .map_err(err("cannot take the migration lock"))?;
            // Created only when missing: CREATE SCHEMA checks the right to
            // create in the database even when the schema exists, and a
            // role may have been given its schema without that right.
            let exists = tx
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
                .map_err(err("cannot read the schemas"))?
                .is_some();
            if !exists {
                tx.batch_execute(&format!("CREATE SCHEMA \"{schema}\""))
                    .map_err(err("cannot create the schema"))?;
            }
            tx.batch_execute(&format!(
                "SET LOCAL search_path TO \"{schema}\";
                 CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    INTEGER PRIMARY KEY,
                     name       TEXT NOT NULL,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );"
            ))
            .map_err(err("cannot create the schema"))?;
            let version: i32 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
                .map_err(err("cannot read schema_migrations"))?
                .get(0);
            let version = u32::try_from(version).unwrap_or(0);
            if version > SCHEMA_VERSION {
                bail!(
                    "its schema version is {version}, newer than this sluice knows \
                     ({SCHEMA_VERSION}); it was written by a newer sluice. Upgrade sluice"
                );
            }
            for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                tx.batch_execute(sql)
                    .map_err(|e| pg_error(&e, &format!("migration {name} failed")))?;
                let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[&v, name],
                )
                .map_err(err("cannot record a migration"))?;
            }
            tx.commit().map_err(err("cannot commit the migrations"))?;
            Ok(())
        })
    }
}

/// The entry in `r`'s columns from `at` on: output, rows, columns, log,
/// duration_ms.
fn cache_entry(task_key: &Digest, r: &postgres::Row, at: usize) -> anyhow::Result<CacheEntry> {
    let bad = || format!("corrupt action-cache entry for task {task_key}");
    let output: String = r.try_get(at).with_context(bad)?;
    let rows: i64 = r.try_get(at + 1).with_context(bad)?;
    let columns: String = r.try_get(at + 2).with_context(bad)?;
    let log: Option<String> = r.try_get(at + 3).with_context(bad)?;
    let duration_ms: i64 = r.try_get(at + 4).with_context(bad)?;
    Ok(CacheEntry {
        output: output.parse().with_context(bad)?,
        rows: u64::try_from(rows).with_context(bad)?,
        columns: serde_json::from_str(&columns).with_context(bad)?,
        log: log.map(|l| l.parse()).transpose().with_context(bad)?,
        duration_ms: u64::try_from(duration_ms).with_context(bad)?,
    })
}

const RUN_COLUMNS_SQL: &str = "id, pipeline, manifest, commit_id, git_ref, created_at, failed";

fn run_record(r: &postgres::Row) -> anyhow::Result<RunRecord> {
    let id: i64 = r.try_get(0)?;
    let pipeline: String = r.try_get(1)?;
    let manifest: String = r.try_get(2)?;
    Ok(RunRecord {
        id,
        manifest: manifest
            .parse()
            .with_context(|| format!("run {id} of {pipeline} is corrupt"))?,
        pipeline,
        commit: r.try_get(3)?,
        git_ref: r.try_get(4)?,
        created_at: r.try_get(5)?,
        failed: r.try_get(6)?,
    })
}

fn to_i64(value: u64, what: &str) -> anyhow::Result<i64> {
    i64::try_from(value).with_context(|| format!("{what} {value} is too large to store"))
}

impl State for PgState {
    fn schema_version(&self) -> anyhow::Result<u32> {
        let v: i32 = self
            .with("cannot read schema_migrations", |c| {
                c.client.query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
            })?
            .get(0);
        Ok(u32::try_from(v).unwrap_or(0))
    }

    fn cache_get(&self, task_key: &Digest) -> anyhow::Result<Option<CacheEntry>> {
        let key = task_key.to_string();
        self.count_cache_query();
        let row = self.with("cannot read the action cache", |c| {
            let st = c.prepared(
                "SELECT output, rows, columns, log, duration_ms FROM action_cache
                 WHERE task_key = $1",
            )?;
            c.client.query_opt(&st, &[&key])
        })?;
        row.map(|r| cache_entry(task_key, &r, 0)).transpose()
    }

    fn batches_lookups(&self) -> bool {
        true
    }

    /// One query for all: one round trip instead of one per key.
    fn cache_get_many(&self, keys: &[Digest]) -> anyhow::Result<Vec<Option<CacheEntry>>> {
        let texts: Vec<String> = keys.iter().map(Digest::to_string).collect();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.count_cache_query();
        let rows = self.with("cannot read the action cache", |c| {
            let st = c.prepared(
                "SELECT task_key, output, rows, columns, log, duration_ms FROM action_cache
                 WHERE task_key = ANY($1)",
            )?;
            c.client.query(&st, &[&texts])
        })?;
        let mut found: HashMap<String, CacheEntry> = HashMap::with_capacity(rows.len());
        for r in rows {
            let key: String = r.get(0);
            let Ok(digest) = key.parse::<Digest>() else {
                continue;
            };
            let entry = cache_entry(&digest, &r, 1)?;
            found.insert(key, entry);
        }
        Ok(texts.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn cache_put(&self, task_key: &Digest, entry: &CacheEntry) -> anyhow::Result<()> {
        let columns = serde_json::to_string(&entry.columns)?;
        let rows = to_i64(entry.rows, "row count")?;
        let duration_ms = to_i64(entry.duration_ms, "duration")?;
        let key = task_key.to_string();
        let output = entry.output.to_string();
        let log = entry.log.map(|l| l.to_string());
        let now = now_rfc3339();
        self.with("cannot write the action cache", |c| {
            let st = c.prepared(
                "INSERT INTO action_cache
                 (task_key, output, rows, columns, log, duration_ms, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (task_key) DO UPDATE SET output = excluded.output,
                 rows = excluded.rows, columns = excluded.columns, log = excluded.log,
                 duration_ms = excluded.duration_ms, created_at = excluded.created_at",
            )?;
            c.client.execute(
                &st,
                &[&key, &output, &rows, &columns, &log, &duration_ms, &now],
            )
        })?;
        Ok(())
    }

    fn cache_forget_output(&self, output: &Digest) -> anyhow::Result<usize> {
        let output = output.to_string();
        let n = self.with("cannot update the action cache", |c| {
            c.client
                .execute("DELETE FROM action_cache WHERE output = $1", &[&output])
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn cache_blobs(&self) -> anyhow::Result<Vec<CacheBlobs>> {
        let rows = self.with("cannot read the action cache", |c| {
            c.client.query(
                "SELECT task_key, output, log FROM action_cache ORDER BY task_key",
                &[],
            )
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let task_key: String = r.try_get(0)?;
            let output: String = r.try_get(1)?;
            let log: Option<String> = r.try_get(2)?;
            out.push(CacheBlobs {
                output: output.parse().ok(),
                log: log.map(|l| l.parse().ok()),
                task_key,
            });
        }
        Ok(out)
    }

    fn cache_forget_task(&self, task_key: &str) -> anyhow::Result<usize> {
        let n = self.with("cannot update the action cache", |c| {
            c.client
                .execute("DELETE FROM action_cache WHERE task_key = $1", &[&task_key])
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn ref_get(&self, name: &str) -> anyhow::Result<Option<Digest>> {
        let row = self.with(&format!("cannot read ref {name}"), |c| {
            let st = c.prepared("SELECT manifest FROM refs WHERE name = $1")?;
            c.client.query_opt(&st, &[&name])
        })?;
        row.map(|r| {
            let text: String = r.try_get(0)?;
            text.parse()
                .with_context(|| format!("ref {name} is corrupt"))
        })
        .transpose()
    }

    fn ref_list(&self) -> anyhow::Result<Vec<(String, Option<Digest>)>> {
        let rows = self.with("cannot read the refs", |c| {
            c.client
                .query("SELECT name, manifest FROM refs ORDER BY name", &[])
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get(0)?;
            let manifest: String = r.try_get(1)?;
            out.push((name, manifest.parse().ok()));
        }
        Ok(out)
    }

    fn ref_delete(&self, name: &str) -> anyhow::Result<()> {
        self.with(&format!("cannot delete ref {name}"), |c| {
            c.client
                .execute("DELETE FROM refs WHERE name = $1", &[&name])
        })?;
        Ok(())
    }

    fn ref_set(&self, name: &str, manifest: &Digest) -> anyhow::Result<()> {
        let manifest = manifest.to_string();
        let now = now_rfc3339();
        self.with(&format!("cannot set ref {name}"), |c| {
            c.client.execute(
                "INSERT INTO refs (name, manifest, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE
                 SET manifest = excluded.manifest, updated_at = excluded.updated_at",
                &[&name, &manifest, &now],
            )
        })?;
        Ok(())
    }

    /// One statement in one transaction: `INSERT … ON CONFLICT DO NOTHING`
    /// when absent is expected, else `UPDATE … WHERE manifest = expected`,
    /// which PostgreSQL re-checks on the row's newest version after
    /// waiting for a concurrent writer's lock, so of two racing
    /// promotions exactly one moves the ref.
    fn ref_compare_and_set(
        &self,
        name: &str,
        expected: Option<&Digest>,
        new: &Digest,
    ) -> anyhow::Result<bool> {
        let new = new.to_string();
        let expected = expected.map(Digest::to_string);
        let now = now_rfc3339();
        let changed = self.with(&format!("cannot update ref {name}"), |c| {
            let mut tx = c.client.transaction()?;
            let n = match &expected {
                None => tx.execute(
                    "INSERT INTO refs (name, manifest, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &new, &now],
                )?,
                Some(old) => tx.execute(
                    "UPDATE refs SET manifest = $2, updated_at = $3
                     WHERE name = $1 AND manifest = $4",
                    &[&name, &new, &now, old],
                )?,
            };
            tx.commit()?;
            Ok(n)
        })?;
        Ok(changed == 1)
    }

    fn record_run(
        &self,
        pipeline: &str,
        manifest: &Digest,
        commit: Option<&str>,
        git_ref: Option<&str>,
        failed: bool,
    ) -> anyhow::Result<i64> {
        let manifest = manifest.to_string();
        let now = now_rfc3339();
        let row = self.with(&format!("cannot record a run of {pipeline}"), |c| {
            c.client.query_one(
                "INSERT INTO runs (pipeline, manifest, commit_id, git_ref, created_at, failed)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&pipeline, &manifest, &commit, &git_ref, &now, &failed],
            )
        })?;
        Ok(row.try_get(0)?)
    }

    fn last_run(&self, pipeline: &str) -> anyhow::Result<Option<RunRecord>> {
        let row = self.with(&format!("cannot read the runs of {pipeline}"), |c| {
            let st = c.prepared(
                "SELECT id, pipeline, manifest, commit_id, git_ref, created_at, failed
                 FROM runs WHERE pipeline = $1 ORDER BY id DESC LIMIT 1",
            )?;
            c.client.query_opt(&st, &[&pipeline])
        })?;
        row.as_ref().map(run_record).transpose()
    }

    fn runs(&self) -> anyhow::Result<Vec<RunRecord>> {
        let rows = self.with("cannot read the runs", |c| {
            c.client.query(
                &format!("SELECT {RUN_COLUMNS_SQL} FROM runs ORDER BY id"),
                &[],
            )
        })?;
        rows.iter().map(run_record).collect()
    }

    fn enqueue_many(
        &self,
        batch: &[(&NewJob, Option<(&str, &str)>)],
    ) -> anyhow::Result<Vec<Enqueued>> {
        queue::enqueue_many(self, batch)
    }

    fn claim_job(&self) -> anyhow::Result<Option<Job>> {
        queue::claim_job(self)
    }

    fn finish_job(
        &self,
        id: i64,
        state: JobState,
        outcome: Option<&str>,
        report: Option<&Digest>,
    ) -> anyhow::Result<()> {
        queue::finish_job(self, id, state, outcome, report)
    }

    fn requeue_running(&self, id: Option<i64>) -> anyhow::Result<usize> {
        queue::requeue_running(self, id)
    }

    fn job(&self, id: i64) -> anyhow::Result<Option<Job>> {
        queue::job(self, "id", &id)
    }

    fn job_by_run_id(&self, run_id: &str) -> anyhow::Result<Option<Job>> {
        queue::job(self, "run_id", &run_id)
    }

    fn jobs_with_reports(&self) -> anyhow::Result<Vec<Job>> {
        queue::jobs_with_reports(self)
    }

    fn jobs_forget_reports(&self, ids: &[i64]) -> anyhow::Result<usize> {
        let n = self.with("cannot update the jobs", |c| {
            c.client
                .execute("UPDATE jobs SET report = NULL WHERE id = ANY($1)", &[&ids])
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn runs_forget(&self, ids: &[i64]) -> anyhow::Result<usize> {
        let n = self.with("cannot delete runs", |c| {
            c.client
                .execute("DELETE FROM runs WHERE id = ANY($1)", &[&ids])
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn job_counts(&self) -> anyhow::Result<Vec<(JobState, u64)>> {
        queue::job_counts(self)
    }

    fn outbox_push(
        &self,
        repo: &str,
        job_id: i64,
        kind: &str,
        payload: &str,
    ) -> anyhow::Result<i64> {
        queue::outbox_push(self, repo, job_id, kind, payload)
    }

    fn outbox_next(&self, now_ms: i64) -> anyhow::Result<Option<OutboxItem>> {
        queue::outbox_next(self, now_ms)
    }

    fn outbox_next_due(&self) -> anyhow::Result<Option<i64>> {
        queue::outbox_next_due(self)
    }

    fn outbox_done(&self, id: i64) -> anyhow::Result<()> {
        queue::outbox_update(
            self,
            "UPDATE outbox SET state = 'done', attempts = attempts + 1, last_error = NULL
             WHERE id = $1",
            &[&id],
        )
    }

    fn outbox_retry(&self, id: i64, next_at_ms: i64, error: &str) -> anyhow::Result<()> {
        queue::outbox_update(
            self,
            "UPDATE outbox SET attempts = attempts + 1, next_at_ms = $2, last_error = $3
             WHERE id = $1",
            &[&id, &next_at_ms, &error],
        )
    }

    fn outbox_drop(&self, id: i64, error: &str) -> anyhow::Result<()> {
        queue::outbox_update(
            self,
            "UPDATE outbox SET state = 'dropped', attempts = attempts + 1, last_error = $2
             WHERE id = $1",
            &[&id, &error],
        )
    }

    fn outbox_pending(&self) -> anyhow::Result<u64> {
        queue::outbox_pending(self)
    }

    fn comment_id(&self, repo: &str, pr: u64) -> anyhow::Result<Option<u64>> {
        queue::comment_id(self, repo, pr)
    }

    fn set_comment_id(&self, repo: &str, pr: u64, id: u64) -> anyhow::Result<()> {
        queue::set_comment_id(self, repo, pr, id)
    }
}

/// A [`PgState`] on a fresh database of the test cluster.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_state() -> PgState {
    PgState::open(&test_connect(), CLI_SCHEMA).unwrap()
}

/// A connection to a fresh database of the test cluster.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_connect() -> PgConnect {
    let db = testing::cluster().fresh_db();
    let creds = Credentials {
        password: Some(Password::new(testing::PASSWORD.into())),
        pgpass: None,
    };
    PgConnect::parse(&db.url, &creds).unwrap()
}

/// Both backends, empty: the contract tests of `state` and `queue` run
/// on each.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn both_backends() -> Vec<std::sync::Arc<dyn State>> {
    vec![
        std::sync::Arc::new(super::state::SqliteState::open_in_memory().unwrap()),
        std::sync::Arc::new(test_state()),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn racing_compare_and_sets_let_exactly_one_win() {
        // Two states with their own connections, as two machines.
        let connect = test_connect();
        let a = PgState::open(&connect, CLI_SCHEMA).unwrap();
        let b = PgState::open(&connect, CLI_SCHEMA).unwrap();
        for round in 0..40 {
            let name = format!("production/p{round}");
            let base = (round % 2 == 1).then(|| d("base"));
            if let Some(base) = &base {
                a.ref_set(&name, base).unwrap();
            }
            let barrier = std::sync::Barrier::new(2);
            let wins: Vec<bool> = std::thread::scope(|s| {
                let handles: Vec<_> = [(&a, "a"), (&b, "b")]
                    .into_iter()
                    .map(|(db, who)| {
                        let (name, base, barrier) = (&name, &base, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            db.ref_compare_and_set(name, base.as_ref(), &d(who))
                                .unwrap()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(
                wins.iter().filter(|w| **w).count(),
                1,
                "round {round}: {wins:?}"
            );
            let winner = if wins[0] { "a" } else { "b" };
            assert_eq!(a.ref_get(&name).unwrap(), Some(d(winner)));
        }
    }

    #[test]
    fn two_states_write_and_queue_concurrently() {
        let connect = test_connect();
        let dbs = [
            PgState::open(&connect, CLI_SCHEMA).unwrap(),
            PgState::open(&connect, CLI_SCHEMA).unwrap(),
        ];
        std::thread::scope(|s| {
            for (n, db) in dbs.iter().enumerate() {
                s.spawn(move || {
                    for i in 0..30 {
                        db.record_run("p", &d(&i.to_string()), None, None, false)
                            .unwrap();
                        let job = NewJob {
                            repo: "r".into(),
                            kind: crate::store::queue::JobKind::Push,
                            lane: "refs/heads/main".into(),
                            git_ref: "refs/heads/main".into(),
                            branch: None,
                            sha: format!("{n}-{i}"),
                            pr_number: None,
                            run_id: format!("run-{n}-{i}"),
                        };
                        db.enqueue(&job, Some((&format!("d{n}-{i}"), "push")))
                            .unwrap();
                    }
                });
            }
        });
        let runs = dbs[0].runs().unwrap();
        assert_eq!(runs.len(), 60);
        assert_eq!(
            runs.last().map(|r| r.id),
            dbs[1].last_run("p").unwrap().map(|r| r.id)
        );
        // One lane: every job but the newest was superseded by a newer one.
        let counts = dbs[1].job_counts().unwrap();
        assert!(counts.contains(&(JobState::Queued, 1)), "{counts:?}");
        assert!(counts.contains(&(JobState::Superseded, 59)), "{counts:?}");
        let claimed = dbs[0].claim_job().unwrap().unwrap();
        assert_eq!(dbs[1].claim_job().unwrap(), None, "one job per lane runs");
        assert_eq!(claimed.state, JobState::Running);
    }

    #[test]
    fn jobs_are_held_by_leases() {
        use crate::store::queue::{JobKind, NewJob};
        let connect = test_connect();
        let one = PgState::open(&connect, DAEMON_SCHEMA).unwrap();
        let two = PgState::open(&connect, DAEMON_SCHEMA).unwrap();
        one.set_job_lease(Duration::from_millis(400));
        let job = |sha: &str, lane: &str| NewJob {
            repo: "git:p".into(),
            kind: JobKind::Push,
            lane: lane.into(),
            git_ref: lane.into(),
            branch: None,
            sha: sha.into(),
            pr_number: None,
            run_id: format!("r_{sha}"),
        };
        one.enqueue(&job("a", "refs/heads/x"), None).unwrap();
        let held = one.claim_job().unwrap().unwrap();
        // A live lease: another daemon starting up leaves it alone.
        assert_eq!(two.requeue_running(None).unwrap(), 0);
        assert_eq!(two.claim_job().unwrap(), None);
        assert!(one.renew_job_lease(held.id).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        // Expired (its daemon died): the other takes it over, and the
        // first can neither renew it nor write its end.
        let taken = two.claim_job().unwrap().unwrap();
        assert_eq!(taken.id, held.id);
        assert!(!one.renew_job_lease(held.id).unwrap());
        assert!(
            one.finish_job(held.id, JobState::Done, Some("success"), None)
                .is_err()
        );
        assert_eq!(one.requeue_running(Some(held.id)).unwrap(), 0);
        two.finish_job(taken.id, JobState::Done, Some("success"), None)
            .unwrap();
        assert_eq!(two.job(held.id).unwrap().unwrap().state, JobState::Done);
    }

    #[test]
    fn concurrent_first_opens_migrate_once() {
        let connect = test_connect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| PgState::open(&connect, "sluice_race")))
                .collect();
            for h in handles {
                let db = h.join().unwrap().unwrap();
                assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            }
        });
        let db = PgState::open(&connect, "sluice_race").unwrap();
        let rows = db
            .with("test", |c| {
                c.client.query(
                    "SELECT version FROM schema_migrations ORDER BY version",
                    &[],
                )
            })
            .unwrap();
        let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION as i32).collect::<Vec<_>>());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let connect = test_connect();
        let db = PgState::open(&connect, CLI_SCHEMA).unwrap();
        db.with("test", |c| {
            c.client.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, 'future')",
                &[&(SCHEMA_VERSION as i32 + 1)],
            )
        })
        .unwrap();
        let err = format!("{:#}", PgState::open(&connect, CLI_SCHEMA).unwrap_err());
        assert!(err.contains("newer"), "{err}");
        assert!(err.contains("schema sluice"), "{err}");
    }

    #[test]
    fn schemas_keep_repositories_apart() {
        let connect = test_connect();
        let one = PgState::open(&connect, &repo_schema("aa")).unwrap();
        let two = PgState::open(&connect, &repo_schema("bb")).unwrap();
        one.ref_set("production/p", &d("m1")).unwrap();
        one.record_run("p", &d("m1"), None, None, false).unwrap();
        assert_eq!(two.ref_get("production/p").unwrap(), None);
        assert!(two.runs().unwrap().is_empty());
        assert_eq!(one.runs().unwrap().len(), 1);
        assert!(PgState::open(&connect, "Bad-Name").is_err());
        assert!(PgState::open(&connect, "x; DROP").is_err());
    }

    #[test]
    fn calls_from_inside_a_tokio_runtime_do_not_panic() {
        let db = std::sync::Arc::new(test_state());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let db2 = std::sync::Arc::clone(&db);
        let got = rt.block_on(async move {
            // As an axum handler of the daemon would call it.
            db2.ref_set("production/p", &d("m")).unwrap();
            db2.ref_get("production/p").unwrap()
        });
        assert_eq!(got, Some(d("m")));
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            current.block_on(async { db.ref_get("production/p").unwrap() }),
            Some(d("m"))
        );
    }

    #[test]
    fn errors_leave_out_the_rows_postgresql_quotes() {
        let db = test_state();
        db.ref_set("production/secret-name", &d("m")).unwrap();
        let err = db
            .with("cannot insert", |c| {
                c.client.execute(
                    "INSERT INTO refs (name, manifest, updated_at) VALUES ($1, 'x', 'y')",
                    &[&"production/secret-name"],
                )
            })
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("cannot insert"), "{text}");
        assert!(text.contains("23505"), "{text}");
        assert!(!text.contains("secret-name"), "{text}");
    }

    #[test]
    fn sslmode_require_verifies_the_server_certificate() {
        let cluster = testing::cluster();
        assert!(
            cluster.ca_cert().is_some(),
            "the test cluster has TLS (openssl made its certificates)"
        );
        let db = cluster.fresh_db();
        let creds = Credentials {
            password: Some(Password::new(testing::PASSWORD.into())),
            pgpass: None,
        };
        // Signed by a CA no root store here trusts: refused.
        let url = format!(
            "postgresql://sluice@localhost:{}/{}?sslmode=require",
            cluster.port, db.name
        );
        let err = format!(
            "{:#}",
            PgState::open(&PgConnect::parse(&url, &creds).unwrap(), CLI_SCHEMA).unwrap_err()
        );
        assert!(err.contains("cannot connect"), "{err}");
        assert!(
            err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
            "{err}"
        );
        // Without sslmode on this machine: no TLS, though the server offers it.
        let plain = db.url.clone();
        PgState::open(&PgConnect::parse(&plain, &creds).unwrap(), CLI_SCHEMA).unwrap();
    }

    #[test]
    fn a_role_given_its_schema_needs_no_right_to_create_schemas() {
        let cluster = testing::cluster();
        let db = cluster.fresh_db();
        let role = format!("limited_{}", db.name);
        cluster.query(
            &db.name,
            &format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'limited-pw'; \
                 CREATE SCHEMA sluice AUTHORIZATION {role}; SELECT 1"
            ),
        );
        let creds = Credentials {
            password: Some(Password::new("limited-pw".into())),
            pgpass: None,
        };
        let url = db.url.replace("sluice@", &format!("{role}@"));
        let connect = PgConnect::parse(&url, &creds).unwrap();
        let state = PgState::open(&connect, CLI_SCHEMA).unwrap();
        state.ref_set("production/p", &d("m")).unwrap();
        let err = format!("{:#}", PgState::open(&connect, DAEMON_SCHEMA).unwrap_err());
        assert!(err.contains("cannot create the schema"), "{err}");
        assert!(err.contains("42501"), "permission denied: {err}");
        assert!(!err.contains("limited-pw"), "{err}");
    }

    #[test]
    fn a_lost_connection_is_replaced() {
        let db = test_state();
        db.ref_set("r", &d("m")).unwrap();
        // Kill the pooled connection from the server's side.
        db.with("test", |c| {
            c.client
                .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
        })
        .unwrap_err();
        assert_eq!(db.ref_get("r").unwrap(), Some(d("m")));
    }

    #[test]
    fn pgpass_lines_match_as_libpq_reads_them() {
        let text = "# comment\n\
                    db.example.org:5432:sluice:ann:first\n\
                    *:*:sluice:bob:pa\\:ss\\\\word\n\
                    localhost:*:*:*:local\n";
        let m = |h, p, d, u| pgpass_match(text, [h, p, d, u]);
        assert_eq!(
            m("db.example.org", "5432", "sluice", "ann").as_deref(),
            Some("first")
        );
        assert_eq!(m("db.example.org", "5433", "sluice", "ann"), None);
        assert_eq!(
            m("other", "1", "sluice", "bob").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(m("localhost", "5432", "x", "y").as_deref(), Some("local"));
        assert_eq!(m("elsewhere", "5432", "x", "y"), None);
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_echoing_it() {
        let err = PgConnect::parse(
            "postgresql://ann:hunter2@127.0.0.1/sluice",
            &Credentials::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("carries a password"), "{err}");
        assert!(
            err.contains("PGPASSWORD") && err.contains(".pgpass"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_remote_host_needs_tls() {
        let creds = Credentials::default();
        let err = PgConnect::parse("postgresql://ann@db.example.org/sluice", &creds)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=require"), "{err}");
        PgConnect::parse(
            "postgresql://ann@db.example.org/sluice?sslmode=require",
            &creds,
        )
        .unwrap();
        for local in [
            "postgresql://ann@localhost/s",
            "postgresql://ann@127.0.0.1:5433/s",
            "postgresql://ann@[::1]/s",
            "postgresql://ann@%2Ftmp%2Fsock/s",
        ] {
            PgConnect::parse(local, &creds).unwrap();
        }
        let err = PgConnect::parse("mysql://x/y", &creds)
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgresql://"), "{err}");
    }

    #[test]
    fn the_password_comes_from_the_credentials_and_is_never_printed() {
        let creds = Credentials {
            password: Some(Password::new("s3cret".into())),
            pgpass: None,
        };
        let c = PgConnect::parse("postgresql://ann@127.0.0.1/s", &creds).unwrap();
        assert_eq!(c.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{c:?} {c} {creds:?}").contains("s3cret"));
    }

    #[test]
    fn a_pgpass_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pgpass");
        std::fs::write(&file, "*:*:*:ann:fromfile\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let creds = Credentials {
            password: None,
            pgpass: Some(file.clone()),
        };
        let err = PgConnect::parse("postgresql://ann@127.0.0.1/s", &creds)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 0600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = PgConnect::parse("postgresql://ann@127.0.0.1/s", &creds).unwrap();
        assert_eq!(c.config.get_password(), Some(&b"fromfile"[..]));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod timing {
    use super::*;
    use crate::store::state::SqliteState;

    fn entry(i: u32) -> CacheEntry {
        CacheEntry {
            output: Digest::of(format!("out{i}").as_bytes()),
            rows: u64::from(i),
            columns: vec!["id".into(), "value".into()],
            log: None,
            duration_ms: 1,
        }
    }

    fn lookups(db: &dyn State, keys: &[Digest]) -> std::time::Duration {
        let t = std::time::Instant::now();
        for k in keys {
            assert!(db.cache_get(k).unwrap().is_some());
        }
        t.elapsed()
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --features team --lib cache_get_timing -- --ignored --nocapture"]
    fn cache_get_timing() {
        const N: u32 = 10_000;
        let keys: Vec<Digest> = (0..N).map(|i| Digest::of(&i.to_be_bytes())).collect();
        let tmp = tempfile::tempdir().unwrap();
        let sqlite = SqliteState::open(&tmp.path().join("state.db")).unwrap();
        let pg = test_state();
        for (i, k) in keys.iter().enumerate() {
            sqlite.cache_put(k, &entry(i as u32)).unwrap();
        }
        let t = std::time::Instant::now();
        for (i, k) in keys.iter().enumerate() {
            pg.cache_put(k, &entry(i as u32)).unwrap();
        }
        eprintln!("PostgreSQL: {N} cache_put: {:?}", t.elapsed());
        let s = lookups(&sqlite, &keys);
        let _reads = sqlite.begin_cache_reads();
        let s_snap = lookups(&sqlite, &keys);
        let p = lookups(&pg, &keys);
        let t = std::time::Instant::now();
        for chunk in keys.chunks(500) {
            assert!(
                pg.cache_get_many(chunk)
                    .unwrap()
                    .iter()
                    .all(Option::is_some)
            );
        }
        let p_many = t.elapsed();
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / f64::from(N);
        eprintln!("SQLite cache_get: {:.1} µs per lookup", per(s));
        eprintln!(
            "SQLite cache_get (run snapshot): {:.1} µs per lookup",
            per(s_snap)
        );
        eprintln!("PostgreSQL cache_get: {:.1} µs per lookup", per(p));
        eprintln!(
            "PostgreSQL cache_get_many (500 a query): {:.1} µs per key",
            per(p_many)
        );
    }
}
