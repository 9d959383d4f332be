//! The built-in SQL action (`action/sql/sqlite`), run in-process: inputs are
//! loaded into an in-memory SQLite database with typed values (DESIGN §2),
//! the node's body runs, and the last statement's rows stream straight into
//! the canonical CSV writer.
//!
//! Decisions:
//! * Columns are declared without a type, so a value keeps the type it was
//!   typed with when read from CSV (no affinity turns `007` into 7).
//! * The body may hold several statements; SQLite itself splits them (a `;`
//!   in a string literal or a comment is not a separator). Each runs in
//!   turn; the last must return rows, and is the node's table.
//! * A BLOB in the result is an error (CSV cannot hold one; the reference
//!   implementation refuses them too): convert it with `hex()`.
//! * Text that is not valid UTF-8 in the result is an error too.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::plan::digest::Digest;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection, Statement, types};

pub use super::table::TableStats;
use super::table::{CanonicalCsvWriter, ReadMode, TableError, TableReader, ValueRef};

/// The SQLite library version, part of the built-in action's identity in
/// every cache key (DESIGN §2).
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}

/// Where an input table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputData<'a> {
    /// A CSV file from outside: a `@source data://x.csv` under the data
    /// root. Read like Python's text mode does (a leading byte order mark is
    /// dropped; `\r\n` or `\r` inside a quoted field becomes `\n`).
    Csv(&'a Path),
    /// The canonical CSV of an upstream node (a blob of the store): read
    /// byte for byte, so that a text value holding `\r` keeps it.
    Canonical(&'a Path),
    /// A [`InputData::Canonical`] blob whose bytes are checked against its
    /// digest in the same pass that loads them: a blob damaged on disk
    /// fails the node (see [`ExecError::corrupt_input`]).
    Blob(&'a Path, Digest),
    /// An SQLite database source (`@source data://x.sqlite` / `.db`),
    /// attached read-only as the schema named `table` (the file stem), so
    /// its tables are `x.name`.
    Attach(&'a Path),
}

/// One input of a SQL node: a table (or, for [`InputData::Attach`], a
/// schema) named `table`.
#[derive(Debug, Clone, Copy)]
pub struct SqlInput<'a> {
    pub table: &'a str,
    pub csv: InputData<'a>,
}

/// Why a SQL node failed. The message is ready to follow `path: `; it never
/// holds a cell value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    message: String,
    corrupt: Option<Digest>,
    /// The byte offset in the SQL text where the error is, when known.
    at: Option<usize>,
}

impl ExecError {
    pub fn new(message: impl Into<String>) -> Self {
        ExecError {
            message: message.into(),
            corrupt: None,
            at: None,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The byte offset in the SQL text (the body, or an assertion's query)
    /// where the error is, when SQLite said or the statement is known.
    pub fn offset(&self) -> Option<usize> {
        self.at
    }

    /// The same error, placed at `offset` unless it has a place already.
    fn at(mut self, offset: usize) -> Self {
        self.at.get_or_insert(offset);
        self
    }

    /// The input blob whose bytes did not match their digest, if that is
    /// why the node failed: the machinery's failure, not the analyst's.
    pub fn corrupt_input(&self) -> Option<Digest> {
        self.corrupt
    }

    /// The same error with `what: ` in front.
    fn context(self, what: &str) -> Self {
        ExecError {
            message: format!("{what}: {}", self.message),
            corrupt: self.corrupt,
            at: self.at,
        }
    }
}

/// What bounds a SQL node besides its body: a deadline (`@timeout`, or the
/// default) and the run's cancellation, both checked by SQLite's progress
/// handler every few thousand virtual-machine steps.
#[derive(Debug, Clone)]
pub struct SqlLimits {
    pub timeout: Duration,
    pub cancel: Option<super::CancelToken>,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: super::command::DEFAULT_TIMEOUT,
            cancel: None,
        }
    }
}

/// How many SQLite VM steps pass between two checks of the limits.
const PROGRESS_STEPS: std::ffi::c_int = 10_000;

const STOP_NONE: u8 = 0;
const STOP_TIMEOUT: u8 = 1;
const STOP_CANCEL: u8 = 2;

/// Installs the progress handler; the returned cell says why SQLite was
/// interrupted, if it was.
pub(super) fn install_limits(
    conn: &mut Connection,
    limits: &SqlLimits,
) -> Result<Arc<AtomicU8>, ExecError> {
    let why = Arc::new(AtomicU8::new(STOP_NONE));
    let deadline = Instant::now().checked_add(limits.timeout);
    let cancel = limits.cancel.clone();
    let flag = Arc::clone(&why);
    conn.progress_handler(
        PROGRESS_STEPS,
        Some(move || {
            if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                flag.store(STOP_CANCEL, Ordering::SeqCst);
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                flag.store(STOP_TIMEOUT, Ordering::SeqCst);
                return true;
            }
            false
        }),
    )?;
    Ok(why)
}

/// Replaces what SQLite says when the progress handler stopped it
/// ("interrupted") with the reason.
pub(super) fn explain_stop(e: ExecError, why: &AtomicU8, limits: &SqlLimits) -> ExecError {
    match why.load(Ordering::SeqCst) {
        STOP_TIMEOUT => ExecError::new(format!(
            "timed out after {}s (@timeout, or [limits] timeout in sluice.toml)",
            limits.timeout.as_secs()
        )),
        STOP_CANCEL => ExecError::new(super::CANCELLED),
        _ => e,
    }
}

impl From<rusqlite::Error> for ExecError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            // rusqlite's text would repeat the whole statement; the place
            // is kept as an offset for the caller to turn into line:column.
            rusqlite::Error::SqlInputError {
                msg, sql, offset, ..
            } => {
                let mut err = ExecError::new(format!("SQL error: {msg}"));
                // `sql` is what was prepared: the caller adds where it starts.
                err.at = usize::try_from(offset)
                    .ok()
                    .filter(|o| *o <= sql.len())
                    .map(|o| o + RELATIVE);
                err
            }
            // rusqlite shows SQLite's own message (`no such table: Foo`).
            e => ExecError::new(format!("SQL error: {e}")),
        }
    }
}

/// Offsets from [`From<rusqlite::Error>`] are relative to the statement
/// prepared, marked by a bias until [`place_in`] knows where it starts.
pub(crate) const RELATIVE: usize = usize::MAX / 2;

/// Turns an offset relative to a statement starting at `start` into one in
/// the whole text; a known absolute offset is kept.
fn place_in(mut e: ExecError, start: usize) -> ExecError {
    e.at = match e.at {
        Some(o) if o >= RELATIVE => Some(start + (o - RELATIVE)),
        Some(o) => Some(o),
        None => Some(start),
    };
    e
}

/// The 0-based line and 1-based column (in characters) of byte `offset`
/// of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Splits SQL at the `;` that end statements, skipping those in string
/// literals, quoted names and comments (a trigger's `BEGIN ... END` is not
/// understood: its statements are parsed one by one, which at worst
/// reports a syntax error SQLite would report too). Returns each
/// statement with its byte offset; blank remainders are dropped.
fn split_statements(sql: &str) -> Vec<(usize, &str)> {
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    let bytes = sql.as_bytes();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                bounds.push((start, i + 1));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < sql.len() {
        bounds.push((start, sql.len()));
    }
    bounds
        .into_iter()
        .filter_map(|(a, b)| sql.get(a..b).map(|t| (a, t)))
        .filter(|(_, t)| !t.trim().is_empty())
        .collect()
}

/// A syntax error in `sql`, found by SQLite's own parser without any data:
/// each statement (split where SQLite says a statement is complete) is
/// prepared on an empty database. Errors about names (`no such table`),
/// which only data would settle, are not reported. Returns the byte offset
/// and the message.
pub fn syntax_error(sql: &str) -> Option<(usize, String)> {
    let conn = Connection::open_in_memory().ok()?;
    for (at, text) in split_statements(sql) {
        let e = match conn.prepare(text) {
            Ok(_) => continue,
            Err(e) => e,
        };
        let (offset, msg) = match &e {
            rusqlite::Error::SqlInputError { msg, offset, .. } => {
                (usize::try_from(*offset).unwrap_or(0), msg.clone())
            }
            rusqlite::Error::SqliteFailure(_, Some(msg)) => {
                (text.len() - text.trim_start().len(), msg.clone())
            }
            _ => continue,
        };
        let syntax = ["syntax error", "incomplete input", "unrecognized token"]
            .iter()
            .any(|s| msg.contains(s));
        if syntax {
            return Some((at + offset.min(text.len()), format!("SQL error: {msg}")));
        }
    }
    None
}

impl From<TableError> for ExecError {
    fn from(e: TableError) -> Self {
        ExecError::new(e.to_string())
    }
}

/// `"name"` with `"` doubled: any text is a valid SQLite identifier this way.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `body` over `inputs` and writes the last statement's rows to `out`
/// as canonical CSV.
pub fn run_sql(
    body: &str,
    inputs: &[SqlInput<'_>],
    out: &mut dyn Write,
    limits: &SqlLimits,
) -> Result<TableStats, ExecError> {
    let mut conn = open_memory()?;
    let why = install_limits(&mut conn, limits)?;
    run_sql_on(conn, body, inputs, out).map_err(|e| explain_stop(e, &why, limits))
}

fn run_sql_on(
    mut conn: Connection,
    body: &str,
    inputs: &[SqlInput<'_>],
    out: &mut dyn Write,
) -> Result<TableStats, ExecError> {
    // ATTACH cannot run inside a transaction: attach first.
    for input in inputs {
        if let InputData::Attach(path) = input.csv {
            attach(&conn, input.table, path)
                .map_err(|e| e.context(&format!("source {}", input.table)))?;
        }
    }
    // One transaction for all the loading: SQLite then writes each page
    // once instead of committing after every row.
    conn.execute_batch("BEGIN")?;
    for input in inputs {
        let loaded = match input.csv {
            InputData::Csv(p) => load_file(&conn, input.table, p, ReadMode::External),
            InputData::Canonical(p) => load_file(&conn, input.table, p, ReadMode::Exact),
            InputData::Blob(p, digest) => load_blob(&conn, input.table, p, &digest),
            InputData::Attach(_) => continue,
        };
        loaded.map_err(|e| e.context(&format!("input {}", input.table)))?;
    }
    conn.execute_batch("COMMIT")?;
    let denied = confine(&mut conn)?;
    run_body(&conn, body, out).map_err(|e| match lock(&denied).take() {
        Some(what) => ExecError::new(format!(
            "{what} is not allowed in a node: a node may read its inputs and build \
             tables in memory, but not attach files or change SQLite's settings \
             (read-only PRAGMAs such as table_info(T) are allowed)"
        )),
        None => e,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// PRAGMAs that only read, with any argument (a table or index name, or a
/// row limit): they cannot change anything.
const PRAGMAS_WITH_ARGUMENT: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// PRAGMAs that only read when given no value (`PRAGMA encoding`, not
/// `PRAGMA encoding = 'UTF-16'`).
const PRAGMAS_WITHOUT_VALUE: &[&str] = &[
    "table_list",
    "function_list",
    "pragma_list",
    "collation_list",
    "database_list",
    "module_list",
    "compile_options",
    "encoding",
    "user_version",
    "schema_version",
    "application_id",
    "page_count",
    "page_size",
    "freelist_count",
    "data_version",
];

/// Whether a node may run `PRAGMA name` (`= value` or `(value)`). Every
/// PRAGMA that sets something is refused: some (`hard_heap_limit`,
/// `soft_heap_limit`, `temp_store_directory`) are process-wide and would
/// reach every other node of every run.
pub fn pragma_allowed(name: &str, value: Option<&str>) -> bool {
    let name = name.to_ascii_lowercase();
    PRAGMAS_WITH_ARGUMENT.contains(&name.as_str())
        || (value.is_none() && PRAGMAS_WITHOUT_VALUE.contains(&name.as_str()))
}

/// From here on the body runs: it may read its inputs and build tables in
/// memory, but not reach other files or change the process. ATTACH (also
/// what `VACUUM INTO` does underneath) and DETACH are denied, so no file
/// outside the data root is read and no PHI is copied out; so is every
/// PRAGMA but the read-only ones ([`pragma_allowed`]). The returned cell
/// names what was denied, for the error message.
pub(crate) fn confine(conn: &mut Connection) -> Result<Arc<Mutex<Option<String>>>, ExecError> {
    use rusqlite::hooks::{AuthAction, Authorization};
    let denied = Arc::new(Mutex::new(None::<String>));
    let record = Arc::clone(&denied);
    conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
        let what = match ctx.action {
            AuthAction::Attach { .. } => Some("ATTACH".to_string()),
            AuthAction::Detach { .. } => Some("DETACH".to_string()),
            AuthAction::Pragma {
                pragma_name,
                pragma_value,
            } if !pragma_allowed(pragma_name, pragma_value) => {
                Some(format!("PRAGMA {}", pragma_name.to_ascii_lowercase()))
            }
            _ => None,
        };
        match what {
            Some(w) => {
                let mut slot = lock(&record);
                if slot.is_none() {
                    *slot = Some(w);
                }
                Authorization::Deny
            }
            None => Authorization::Allow,
        }
    }))?;
    Ok(denied)
}

/// An in-memory database for one bulk load and one query.
pub(crate) fn open_memory() -> Result<Connection, ExecError> {
    let conn = Connection::open_in_memory()?;
    // Let large sorts (GROUP BY, ORDER BY, DISTINCT) use helper threads;
    // the result does not depend on it. Measured on the 1M-row benchmark
    // (see `bench_vs_sqlite3_shell`): the defaults for `temp_store` and
    // `cache_size` are kept on purpose: `temp_store = MEMORY` or a large
    // cache made the GROUP BY 40-70% slower, as SQLite's sorter then sorts
    // one big in-memory list instead of merging cache-sized runs.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    conn.execute_batch(&format!("PRAGMA threads = {threads};"))?;
    Ok(conn)
}

/// Loads a CSV file as table `table`; returns the columns and row count.
pub(crate) fn load_file(
    conn: &Connection,
    table: &str,
    path: &Path,
    mode: ReadMode,
) -> Result<TableStats, ExecError> {
    let file = File::open(path)
        .map_err(|e| ExecError::new(format!("cannot open {}: {e}", path.display())))?;
    load_csv(
        conn,
        table,
        BufReader::with_capacity(256 * 1024, file),
        mode,
    )
}

/// Loads CSV from `input` as table `table`. Columns have no declared type,
/// so each value keeps the type the typing rules gave it.
///
/// Reading and typing run on a second thread, handing over chunks of typed
/// rows, while this thread inserts them: SQLite's inserts are the larger
/// cost, and the parsing then hides behind them.
pub(crate) fn load_csv<R: BufRead + Send>(
    conn: &Connection,
    table: &str,
    input: R,
    mode: ReadMode,
) -> Result<TableStats, ExecError> {
    load_csv_returning(conn, table, input, mode).map(|(stats, _)| stats)
}

/// Loads an upstream blob, hashing its bytes in the same pass, and fails
/// when they do not match `digest`. A parse error in a damaged blob is
/// reported as the damage, not as the parse error.
fn load_blob(
    conn: &Connection,
    table: &str,
    path: &Path,
    digest: &Digest,
) -> Result<TableStats, ExecError> {
    let corrupt = || ExecError {
        at: None,
        message: format!(
            "blob {digest} at {} is corrupt (its bytes no longer match their digest); \
             it will be recomputed on the next run",
            path.display()
        ),
        corrupt: Some(*digest),
    };
    let file = File::open(path)
        .map_err(|e| ExecError::new(format!("cannot open {}: {e}", path.display())))?;
    let input = HashingReader {
        inner: BufReader::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
    };
    match load_csv_returning(conn, table, input, ReadMode::Exact) {
        Ok((stats, rest)) => {
            let actual = match rest {
                Some(mut rest) => {
                    // Normally nothing is left; hash whatever is.
                    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| {
                        ExecError::new(format!("cannot read {}: {e}", path.display()))
                    })?;
                    Digest(rest.hasher.finalize().into())
                }
                None => rehash(path)?,
            };
            if actual != *digest {
                return Err(corrupt());
            }
            Ok(stats)
        }
        Err(e) => {
            if rehash(path)? != *digest {
                return Err(corrupt());
            }
            Err(e)
        }
    }
}

fn rehash(path: &Path) -> Result<Digest, ExecError> {
    File::open(path)
        .and_then(crate::store::blob::digest_reader)
        .map(|(d, _)| d)
        .map_err(|e| ExecError::new(format!("cannot read {}: {e}", path.display())))
}

/// A `BufRead` that hashes every byte its consumer takes.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: BufRead> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for HashingReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // The buffer is still filled: this returns it without reading.
        if let Ok(buf) = self.inner.fill_buf() {
            self.hasher.update(&buf[..amt.min(buf.len())]);
        }
        self.inner.consume(amt);
    }
}

/// [`load_csv`], handing back the input when it was read to its end.
fn load_csv_returning<R: BufRead + Send>(
    conn: &Connection,
    table: &str,
    input: R,
    mode: ReadMode,
) -> Result<(TableStats, Option<R>), ExecError> {
    let mut reader = TableReader::new(input, mode)?;
    let columns = reader.columns().to_vec();
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE {} ({})",
        quote_ident(table),
        cols.join(", ")
    ))?;
    let marks = vec!["?"; columns.len()].join(", ");
    let mut insert = conn.prepare(&format!(
        "INSERT INTO {} VALUES ({marks})",
        quote_ident(table)
    ))?;
    let width = columns.len();
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<Chunk, TableError>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
    let (rows, rest) = std::thread::scope(|scope| -> Result<(u64, Option<R>), ExecError> {
        let parser = scope.spawn(move || -> Option<R> {
            // Ends when the input ends, on a CSV error, or when the
            // receiver is gone (an insert failed).
            let mut chunk = Chunk::default();
            loop {
                let rec = match reader.next_row() {
                    Ok(Some(rec)) => rec,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        return None;
                    }
                };
                for v in rec.values() {
                    chunk.push(v);
                }
                chunk.rows += 1;
                if chunk.rows >= CHUNK_ROWS || chunk.text.len() >= CHUNK_TEXT {
                    let next = empty_rx.try_recv().unwrap_or_default();
                    if full_tx
                        .send(Ok(std::mem::replace(&mut chunk, next)))
                        .is_err()
                    {
                        return None;
                    }
                }
            }
            if chunk.rows > 0 {
                let _ = full_tx.send(Ok(chunk));
            }
            Some(reader.into_inner())
        });
        let mut rows = 0u64;
        for chunk in full_rx {
            let mut chunk = chunk?;
            for row in chunk.cells.chunks_exact(width) {
                for (i, cell) in row.iter().enumerate() {
                    let v = match *cell {
                        Cell::Null => types::ValueRef::Null,
                        Cell::Integer(n) => types::ValueRef::Integer(n),
                        Cell::Real(r) => types::ValueRef::Real(r),
                        Cell::Text(a, b) => types::ValueRef::Text(
                            chunk.text.as_bytes().get(a..b).unwrap_or_default(),
                        ),
                    };
                    insert.raw_bind_parameter(i + 1, types::ToSqlOutput::Borrowed(v))?;
                }
                insert.raw_execute()?;
                rows += 1;
            }
            chunk.clear();
            // The parser may be done already; then the chunk is just dropped.
            let _ = empty_tx.send(chunk);
        }
        let rest = parser.join().ok().flatten();
        Ok((rows, rest))
    })?;
    Ok((TableStats { rows, columns }, rest))
}

const CHUNK_ROWS: usize = 4096;
const CHUNK_TEXT: usize = 1 << 20;

/// Typed rows handed from the parsing thread to the inserting one: cells
/// row after row, text in one arena.
#[derive(Default)]
struct Chunk {
    text: String,
    cells: Vec<Cell>,
    rows: usize,
}

#[derive(Clone, Copy)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    /// A byte range of `Chunk::text`.
    Text(usize, usize),
}

impl Chunk {
    fn push(&mut self, v: ValueRef<'_>) {
        let cell = match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Integer(n),
            ValueRef::Real(r) => Cell::Real(r),
            ValueRef::Text(s) => {
                let a = self.text.len();
                self.text.push_str(s);
                Cell::Text(a, self.text.len())
            }
        };
        self.cells.push(cell);
    }

    fn clear(&mut self) {
        self.text.clear();
        self.cells.clear();
        self.rows = 0;
    }
}

/// Attaches an SQLite file read-only as schema `schema`.
fn attach(conn: &Connection, schema: &str, path: &Path) -> Result<(), ExecError> {
    // The file name is bound as a parameter, so no SQL quoting is needed;
    // only the URI needs escaping (`?`, `#`, `%` and the like in a path).
    // `immutable=1`: read only the (hashed) database file itself, never a
    // `-wal` beside it whose bytes are not part of the source digest.
    let uri = format!("{}?mode=ro&immutable=1", file_uri(path));
    conn.execute(
        &format!("ATTACH DATABASE ?1 AS {}", quote_ident(schema)),
        [uri],
    )?;
    // ATTACH opens lazily: read the schema now so that a file that is not a
    // database fails here, naming the source, not in the middle of the body.
    conn.query_row(
        &format!("SELECT count(*) FROM {}.sqlite_master", quote_ident(schema)),
        [],
        |_| Ok(()),
    )?;
    Ok(())
}

/// A `file:` URI for `path`: every byte but unreserved characters and `/`
/// is percent-encoded. An absolute path gets an empty authority
/// (`file:///abs`), so that a path starting with `//` is not a host.
pub fn file_uri(path: &Path) -> String {
    #[cfg(unix)]
    let bytes: Vec<u8> = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes: Vec<u8> = path.to_string_lossy().replace('\\', "/").into_bytes();
    let mut uri = String::from(if bytes.first() == Some(&b'/') {
        "file://"
    } else {
        "file:"
    });
    for b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// Runs every statement of `body`; the last one's rows are the table.
fn run_body(conn: &Connection, body: &str, out: &mut dyn Write) -> Result<TableStats, ExecError> {
    // Each statement is prepared only after the one before it ran, since it
    // may use a table that one creates. The one exception: a statement that
    // returns rows is run only once we know whether it is the last (its rows
    // are the output) — so the next one is prepared first. Statements that
    // return rows do not create tables, so this is safe.
    let mut batch = Batch::new(conn, body);
    let mut cursor = 0usize;
    let mut current = next_statement(&mut batch, body, &mut cursor)?;
    if current.is_none() {
        return Err(ExecError::new("the SQL body holds no statement"));
    }
    while let Some((mut stmt, start)) = current {
        if stmt.column_count() == 0 {
            stmt.raw_execute().map_err(|e| place_in(e.into(), start))?;
            drop(stmt);
            current = next_statement(&mut batch, body, &mut cursor)?;
            if current.is_none() {
                return Err(ExecError::new(
                    "the last statement must be a SELECT: it returns no rows to make the table of",
                )
                .at(start));
            }
        } else {
            let next = next_statement(&mut batch, body, &mut cursor)?;
            if next.is_none() {
                return write_result(stmt, out).map_err(|e| place_in(e, start));
            }
            let mut rows = stmt.raw_query();
            while rows
                .next()
                .map_err(|e| place_in(e.into(), start))?
                .is_some()
            {}
            current = next;
        }
    }
    Err(ExecError::new("the SQL body holds no statement"))
}

/// The next statement of a body and the byte offset it starts at; an error
/// carries the offset of its place in the body.
fn next_statement<'c>(
    batch: &mut Batch<'c, '_>,
    body: &str,
    cursor: &mut usize,
) -> Result<Option<(Statement<'c>, usize)>, ExecError> {
    let rest = body.get(*cursor..).unwrap_or("");
    let skipped = *cursor + (rest.len() - rest.trim_start().len());
    match batch.next() {
        Ok(None) => Ok(None),
        Ok(Some(stmt)) => {
            // No parameters are bound: the expanded text is the statement's
            // own text, found at or after the cursor.
            let start = stmt
                .expanded_sql()
                .and_then(|text| {
                    rest.find(text.as_str()).map(|i| {
                        *cursor += i + text.len();
                        *cursor - text.len()
                    })
                })
                .unwrap_or(skipped);
            Ok(Some((stmt, start)))
        }
        Err(e) => {
            let tail_start = match &e {
                rusqlite::Error::SqlInputError { sql, .. } => body.len().saturating_sub(sql.len()),
                _ => skipped,
            };
            let e: ExecError = e.into();
            if e.at.is_none()
                && let Some(at) = name_in(body, tail_start, e.message())
            {
                return Err(e.at(at));
            }
            Err(place_in(e, tail_start))
        }
    }
}

/// Where the name an error is about (`no such table: Labz`) first stands
/// as a whole word at or after `from`: SQLite gives no offset for these.
pub(crate) fn name_in(body: &str, from: usize, message: &str) -> Option<usize> {
    let name = ["no such table: ", "no such column: ", "no such function: "]
        .iter()
        .find_map(|p| message.split_once(p).map(|(_, n)| n.trim()))?;
    // `main.T` or `t.col`: the last part is what is written unqualified too.
    let word = name.rsplit('.').next().filter(|w| !w.is_empty())?;
    let rest = body.get(from..)?;
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    rest.match_indices(word).find_map(|(i, _)| {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        (!before.is_some_and(is_ident) && !after.is_some_and(is_ident)).then_some(from + i)
    })
}

/// Streams a query's rows into the canonical writer.
fn write_result(mut stmt: Statement<'_>, out: &mut dyn Write) -> Result<TableStats, ExecError> {
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let mut seen = HashSet::new();
    let mut dups: Vec<&str> = Vec::new();
    for n in &names {
        if !seen.insert(n.as_str()) && !dups.contains(&n.as_str()) {
            dups.push(n);
        }
    }
    if !dups.is_empty() {
        return Err(ExecError::new(format!(
            "duplicate column names in the result: {} (name each column with AS)",
            dups.join(", ")
        )));
    }
    let mut writer = CanonicalCsvWriter::new(out, &names)?;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next()? {
        for (i, name) in names.iter().enumerate() {
            let v = match row.get_ref(i)? {
                types::ValueRef::Null => ValueRef::Null,
                types::ValueRef::Integer(n) => ValueRef::Integer(n),
                types::ValueRef::Real(r) => ValueRef::Real(r),
                types::ValueRef::Text(b) => {
                    ValueRef::Text(std::str::from_utf8(b).map_err(|_| {
                        ExecError::new(format!(
                            "column {} holds text that is not valid UTF-8",
                            names[i]
                        ))
                    })?)
                }
                types::ValueRef::Blob(_) => {
                    return Err(ExecError::new(format!(
                        "column {name} holds a BLOB, which a CSV table cannot hold; \
                         convert it, e.g. with hex()"
                    )));
                }
            };
            writer.write_value(v)?;
        }
        writer.end_row()?;
    }
    let (_, stats) = writer.finish()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str, inputs: &[(&str, &str)]) -> Result<String, ExecError> {
        let dir = tempdir();
        let files: Vec<(String, std::path::PathBuf)> = inputs
            .iter()
            .map(|(t, csv)| {
                let p = dir.join(format!("{t}.csv"));
                std::fs::write(&p, csv).unwrap();
                (t.to_string(), p)
            })
            .collect();
        let sql_inputs: Vec<SqlInput<'_>> = files
            .iter()
            .map(|(t, p)| SqlInput {
                table: t,
                csv: InputData::Canonical(p),
            })
            .collect();
        let mut out = Vec::new();
        let stats = run_sql(body, &sql_inputs, &mut out, &SqlLimits::default())?;
        let text = String::from_utf8(out).unwrap();
        let mut back = TableReader::new(text.as_bytes(), ReadMode::Exact).unwrap();
        let mut rows = 0;
        while back.next_row().unwrap().is_some() {
            rows += 1;
        }
        assert_eq!(stats.rows, rows);
        Ok(text)
    }

    /// A fresh directory under the system temp dir, unique per call.
    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "sluice-sqlite-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn errors_carry_their_offset_in_the_body() {
        let body = "CREATE TABLE x AS SELECT 1 AS a;\nSELECT a\n  FORM x;\n";
        let e = run(body, &[]).unwrap_err();
        let at = e.offset().expect("placed");
        assert_eq!(line_column(body, at), (2, 8), "{}", e.message());
        assert!(!e.message().contains("at offset"), "{}", e.message());
        // A name error in the second statement is placed at its token.
        let body = "SELECT 1;\nSELECT nope FROM x_missing;\n";
        let e = run(body, &[]).unwrap_err();
        assert_eq!(
            line_column(body, e.offset().unwrap()).0,
            1,
            "{}",
            e.message()
        );
    }

    #[test]
    fn syntax_errors_are_found_without_data() {
        assert_eq!(
            syntax_error("SELECT * FROM Patient JOIN Labs USING (id);"),
            None
        );
        assert_eq!(
            syntax_error("CREATE TABLE t AS SELECT 1;\nSELECT ';' FROM t -- ;\n;"),
            None
        );
        let body = "SELECT 1;\n-- a ; in a comment\nSELECT a,\n  FROM t;\n";
        let (at, msg) = syntax_error(body).unwrap();
        assert_eq!(line_column(body, at), (3, 3), "{msg}");
        assert!(msg.contains("syntax error"), "{msg}");
        assert!(
            syntax_error("SELECT (1")
                .unwrap()
                .1
                .contains("incomplete input")
        );
    }

    #[test]
    fn the_body_cannot_reach_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.db");
        rusqlite::Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE s (x); INSERT INTO s VALUES (1);")
            .unwrap();
        let attach = format!("ATTACH '{}' AS o; SELECT * FROM o.s", other.display());
        assert!(run(&attach, &[]).is_err(), "ATTACH in a body is denied");
        let copy = dir.path().join("copy.db");
        let vacuum = format!("VACUUM INTO '{}'; SELECT 1 AS x", copy.display());
        assert!(
            run(&vacuum, &[("p", "id\n1\n")]).is_err(),
            "VACUUM INTO is denied"
        );
        assert!(!copy.exists(), "no copy of the inputs was written");
        assert_eq!(run("SELECT 1 AS x", &[]).unwrap(), "x\n1\n");
    }

    #[test]
    fn only_read_only_pragmas_run() {
        let e = run("PRAGMA hard_heap_limit=1; SELECT 1 AS x", &[]).unwrap_err();
        assert!(
            e.message()
                .starts_with("PRAGMA hard_heap_limit is not allowed"),
            "{e}"
        );
        // The table-valued form cannot set a value at all.
        assert!(run("SELECT * FROM pragma_hard_heap_limit(1)", &[]).is_err());
        for body in [
            "PRAGMA temp_store_directory = '/tmp'; SELECT 1 AS x",
            "PRAGMA encoding = 'UTF-16'; SELECT 1 AS x",
        ] {
            let e = run(body, &[]).unwrap_err();
            assert!(e.message().contains("is not allowed"), "{body}: {e}");
        }
        let out = run("PRAGMA table_info(p)", &[("p", "id,v\n1,2\n")]).unwrap();
        assert!(
            out.starts_with("cid,name,type,notnull,dflt_value,pk\n0,id,"),
            "{out}"
        );
        let out = run(
            "SELECT name FROM pragma_table_info('p') ORDER BY cid",
            &[("p", "id,v\n1,2\n")],
        )
        .unwrap();
        assert_eq!(out, "name\nid\nv\n");
        assert!(pragma_allowed("TABLE_INFO", Some("t")));
        assert!(pragma_allowed("encoding", None));
        assert!(!pragma_allowed("encoding", Some("UTF-16")));
        assert!(!pragma_allowed("soft_heap_limit", None));
    }

    #[test]
    fn limits_stop_an_endless_query() {
        let endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
                       SELECT count(*) AS c FROM r";
        let limits = SqlLimits {
            timeout: std::time::Duration::from_millis(200),
            cancel: None,
        };
        let start = Instant::now();
        let e = run_sql(endless, &[], &mut Vec::new(), &limits).unwrap_err();
        assert!(e.message().starts_with("timed out after"), "{e}");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let token = super::super::CancelToken::new();
        let limits = SqlLimits {
            timeout: std::time::Duration::from_secs(60),
            cancel: Some(token.clone()),
        };
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            token.cancel();
        });
        let e = run_sql(endless, &[], &mut Vec::new(), &limits).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.message(), super::super::CANCELLED);
    }

    #[test]
    fn a_damaged_blob_fails_its_load() {
        let dir = tempdir();
        let p = dir.join("blob.csv");
        std::fs::write(&p, "id\n1\n2\n").unwrap();
        let digest = Digest::of(b"id\n1\n2\n");
        let load = |path: &Path| {
            run_sql(
                "SELECT sum(id) AS s FROM t",
                &[SqlInput {
                    table: "t",
                    csv: InputData::Blob(path, digest),
                }],
                &mut Vec::new(),
                &SqlLimits::default(),
            )
        };
        assert!(load(&p).is_ok());
        // Same size, one digit changed; and one that no longer parses.
        for damaged in ["id\n1\n3\n", "id\n\"1\n2\n"] {
            std::fs::write(&p, damaged).unwrap();
            let e = load(&p).unwrap_err();
            assert_eq!(e.corrupt_input(), Some(digest), "{damaged:?}");
            assert!(e.message().contains("corrupt"), "{e}");
        }
    }

    #[test]
    fn version_is_known() {
        assert!(sqlite_version().starts_with("3."));
    }

    #[test]
    fn values_keep_their_types() {
        let csv = "id,mrn,score,note,empty\n1,007,2.5,\"\",\n-2,123,1e3,x,\n";
        let out = run(
            "SELECT id, mrn, typeof(mrn) AS t_mrn, score, typeof(score) AS t_score, \
             note, typeof(note) AS t_note, typeof(empty) AS t_empty, id * 2 AS twice FROM p",
            &[("p", csv)],
        )
        .unwrap();
        assert_eq!(
            out,
            "id,mrn,t_mrn,score,t_score,note,t_note,t_empty,twice\n\
             1,007,text,2.5,real,\"\",text,null,2\n\
             -2,123,integer,1000.0,real,x,text,null,-4\n"
        );
    }

    #[test]
    fn several_statements_the_last_a_select() {
        let out = run(
            "CREATE TABLE t AS SELECT id FROM p WHERE id > 1;\n\
             -- a comment; with a semicolon\n\
             INSERT INTO t VALUES (10);\n\
             SELECT 'a;b' AS s, count(*) AS n FROM t; -- trailing comment\n",
            &[("p", "id\n1\n2\n3\n")],
        )
        .unwrap();
        assert_eq!(out, "s,n\na;b,3\n");
        // A SELECT before the last one runs, and its rows are dropped.
        let out = run("SELECT 1 AS x; SELECT 2 AS y", &[]).unwrap();
        assert_eq!(out, "y\n2\n");
    }

    #[test]
    fn the_last_statement_must_return_rows() {
        let e = run("SELECT 1 AS x; CREATE TABLE z (a)", &[]).unwrap_err();
        assert!(
            e.message()
                .starts_with("the last statement must be a SELECT"),
            "{e}"
        );
        let e = run("  -- only a comment\n", &[]).unwrap_err();
        assert_eq!(e.message(), "the SQL body holds no statement");
    }

    #[test]
    fn sql_errors_are_reported() {
        let e = run("SELECT * FROM Foo", &[]).unwrap_err();
        assert_eq!(e.message(), "SQL error: no such table: Foo");
        let e = run("SELEC 1", &[]).unwrap_err();
        assert!(e.message().starts_with("SQL error:"), "{e}");
    }

    #[test]
    fn duplicate_output_columns_are_an_error() {
        let e = run(
            "SELECT a.id, b.id, a.v AS v, b.v AS v FROM p a JOIN p b USING (id)",
            &[("p", "id,v\n1,2\n")],
        )
        .unwrap_err();
        assert_eq!(
            e.message(),
            "duplicate column names in the result: id, v (name each column with AS)"
        );
    }

    #[test]
    fn blobs_and_bad_csv_are_errors() {
        let e = run("SELECT x'00ff' AS b", &[]).unwrap_err();
        assert!(e.message().contains("column b holds a BLOB"), "{e}");
        let e = run("SELECT 1 AS x", &[("p", "a,b\n1\n")]).unwrap_err();
        assert_eq!(
            e.message(),
            "input p: line 2: the row has 1 fields, the header has 2"
        );
        let e = run("SELECT 1e308 * 10 AS x", &[]).unwrap_err();
        assert!(e.message().contains("not finite"), "{e}");
    }

    #[test]
    fn identifiers_are_quoted() {
        let out = run(
            "SELECT \"we\"\"ird col\" AS c FROM \"odd\"\"name\"",
            &[("odd\"name", "\"we\"\"ird col\"\nv\n")],
        )
        .unwrap();
        assert_eq!(out, "c\nv\n");
    }

    #[test]
    fn output_is_canonical() {
        let out = run(
            "SELECT 3.0 AS r, 1e16 AS big, -0.0 AS z, 'a,b' AS t, '' AS e, NULL AS n, \
             char(13) || char(10) AS nl",
            &[],
        )
        .unwrap();
        assert_eq!(
            out,
            "r,big,z,t,e,n,nl\n3.0,1e+16,0.0,\"a,b\",\"\",,\"\r\n\"\n"
        );
    }

    #[test]
    fn csv_sources_are_read_as_external_text() {
        let dir = tempdir();
        let p = dir.join("src.csv");
        std::fs::write(&p, "\u{feff}id,note\r\n1,\"a\r\nb\"\r\n").unwrap();
        let mut out = Vec::new();
        run_sql(
            "SELECT id, note, length(note) AS len FROM src",
            &[SqlInput {
                table: "src",
                csv: InputData::Csv(&p),
            }],
            &mut out,
            &SqlLimits::default(),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,note,len\n1,\"a\nb\",3\n"
        );
    }

    #[test]
    fn attaches_an_sqlite_source_read_only() {
        let dir = tempdir().join("odd dir?#%");
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("ehr.sqlite");
        {
            let c = Connection::open(&db).unwrap();
            c.execute_batch(
                "CREATE TABLE patients (id INTEGER, mrn TEXT); \
                 INSERT INTO patients VALUES (1, '007'), (2, '42');",
            )
            .unwrap();
        }
        let csv = dir.join("visits.csv");
        std::fs::write(&csv, "patient_id,n\n1,3\n2,5\n").unwrap();
        let inputs = [
            SqlInput {
                table: "ehr",
                csv: InputData::Attach(&db),
            },
            SqlInput {
                table: "visits",
                csv: InputData::Csv(&csv),
            },
        ];
        let mut out = Vec::new();
        run_sql(
            "SELECT p.mrn, v.n FROM ehr.patients p JOIN visits v ON v.patient_id = p.id ORDER BY p.id",
            &inputs,
            &mut out, &SqlLimits::default(),
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "mrn,n\n007,3\n42,5\n");
        // Read-only: the source cannot be changed by a node.
        let mut out = Vec::new();
        let e = run_sql(
            "DELETE FROM ehr.patients; SELECT 1 AS x",
            &inputs,
            &mut out,
            &SqlLimits::default(),
        )
        .unwrap_err();
        assert!(e.message().contains("readonly"), "{e}");
        // A file that is not a database fails at attach time, naming the source.
        let bad = dir.join("bad.db");
        std::fs::File::create(&bad)
            .unwrap()
            .write_all(b"this is not a database, not at all, no............")
            .unwrap();
        let e = run_sql(
            "SELECT 1 AS x",
            &[SqlInput {
                table: "bad",
                csv: InputData::Attach(&bad),
            }],
            &mut Vec::new(),
            &SqlLimits::default(),
        )
        .unwrap_err();
        assert!(e.message().starts_with("source bad: SQL error:"), "{e}");
    }

    #[test]
    fn file_uris_escape_special_characters() {
        assert_eq!(
            file_uri(Path::new("/a b/c?d#e%f.db")),
            "file:///a%20b/c%3Fd%23e%25f.db"
        );
        assert_eq!(file_uri(Path::new("rel/x.db")), "file:rel/x.db");
        assert_eq!(file_uri(Path::new("//srv/x.db")), "file:////srv/x.db");
    }

    /// The benchmark of the brief: `.import` of a 1,000,000-row, 6-column CSV
    /// into the `sqlite3` shell, a GROUP BY, CSV output; against `run_sql`.
    /// Run with `cargo test --release -- --ignored --nocapture bench_vs_sqlite3_shell`.
    #[test]
    #[ignore]
    fn bench_vs_sqlite3_shell() {
        use std::time::Instant;
        let dir = tempdir();
        let csv = dir.join("t.csv");
        {
            let mut w = std::io::BufWriter::new(File::create(&csv).unwrap());
            writeln!(w, "id,patient,code,value,visit_date,flag").unwrap();
            // A small LCG keeps the data deterministic without a rand crate.
            let mut x: u64 = 42;
            for i in 0..1_000_000u64 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = (x >> 33) % 100_000;
                writeln!(
                    w,
                    "{i},P{:07},C{:03},{}.{:02},2024-{:02}-{:02},{}",
                    (x >> 20) % 50_000,
                    (x >> 40) % 500,
                    v / 100,
                    v % 100,
                    1 + (x >> 12) % 12,
                    1 + (x >> 8) % 28,
                    (x >> 5) % 2
                )
                .unwrap();
            }
        }
        let query = "SELECT code, count(*) AS n, avg(value) AS mean, sum(flag) AS flags, \
                     count(DISTINCT patient) AS patients FROM t GROUP BY code ORDER BY code";
        let mut best_ours = f64::MAX;
        let mut best_shell = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let mut out = std::io::BufWriter::new(File::create(dir.join("ours.csv")).unwrap());
            let stats = run_sql(
                query,
                &[SqlInput {
                    table: "t",
                    csv: InputData::Csv(&csv),
                }],
                &mut out,
                &SqlLimits::default(),
            )
            .unwrap();
            out.flush().unwrap();
            best_ours = best_ours.min(t.elapsed().as_secs_f64());
            assert_eq!(stats.rows, 500);

            let t = Instant::now();
            let shell = std::process::Command::new("sqlite3")
                .arg(":memory:")
                .args(["-cmd", ".mode csv", "-cmd", ".headers on"])
                .arg(format!(".import {} t", csv.display()))
                .arg(query)
                .stdout(File::create(dir.join("shell.csv")).unwrap())
                .status();
            let Ok(status) = shell else {
                eprintln!("no sqlite3 shell on PATH");
                return;
            };
            assert!(status.success());
            best_shell = best_shell.min(t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        run_sql(
            "SELECT 1 AS x",
            &[SqlInput {
                table: "t",
                csv: InputData::Csv(&csv),
            }],
            &mut Vec::new(),
            &SqlLimits::default(),
        )
        .unwrap();
        eprintln!("load only {:.3}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::process::Command::new("sqlite3")
            .arg(":memory:")
            .args(["-cmd", ".mode csv"])
            .arg(format!(".import {} t", csv.display()))
            .arg("select 1")
            .output()
            .unwrap();
        eprintln!("shell load only {:.3}s", t.elapsed().as_secs_f64());
        // An output-heavy query: half the table back out as CSV.
        let dump = "SELECT * FROM t WHERE flag = 1";
        let t = Instant::now();
        let mut out = std::io::BufWriter::new(File::create(dir.join("ours_dump.csv")).unwrap());
        let stats = run_sql(
            dump,
            &[SqlInput {
                table: "t",
                csv: InputData::Csv(&csv),
            }],
            &mut out,
            &SqlLimits::default(),
        )
        .unwrap();
        out.flush().unwrap();
        let ours_dump = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::process::Command::new("sqlite3")
            .arg(":memory:")
            .args(["-cmd", ".mode csv", "-cmd", ".headers on"])
            .arg(format!(".import {} t", csv.display()))
            .arg(dump)
            .stdout(File::create(dir.join("shell_dump.csv")).unwrap())
            .status()
            .unwrap();
        eprintln!(
            "dump of {} rows: run_sql {ours_dump:.3}s; sqlite3 shell {:.3}s",
            stats.rows,
            t.elapsed().as_secs_f64()
        );
        // Parsing alone, for reference.
        let t = Instant::now();
        let mut r = TableReader::new(
            BufReader::with_capacity(256 * 1024, File::open(&csv).unwrap()),
            ReadMode::External,
        )
        .unwrap();
        let mut n = 0u64;
        while let Some(rec) = r.next_row().unwrap() {
            n += rec
                .values()
                .filter(|v| !matches!(v, ValueRef::Null))
                .count() as u64;
        }
        let parse = t.elapsed().as_secs_f64();
        assert_eq!(n, 6_000_000);
        eprintln!(
            "1M rows x 6 cols: parse+type {parse:.3}s; run_sql {best_ours:.3}s; \
             sqlite3 shell {best_shell:.3}s (best of 3)"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
