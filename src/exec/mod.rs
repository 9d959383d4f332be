//! Runs nodes: the built-in SQLite action in-process, command actions in
//! a private temp dir under Landlock (`sandbox`), on a worker pool in
//! topological order, with the content-addressed cache in front
//! (DESIGN §2–3).

pub mod checks;
pub mod command;
pub mod lint;
pub mod sandbox;
pub mod sqlite;
pub mod table;
pub mod task;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pipeline::directive::Assert;
use crate::pipeline::graph::{Action, Graph, Node, NodeId};
use crate::plan::digest::Digest;
use crate::plan::hash::{self, NodeHashes};
pub use crate::plan::manifest::{FailureKind, Status};
use crate::store::Stores;
use crate::store::state::CacheEntry;

/// The outcome of one node.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub status: Status,
    pub task_key: Option<Digest>,
    pub output: Option<Digest>,
    pub rows: Option<u64>,
    pub columns: Vec<String>,
    pub log: Option<Digest>,
    pub duration: Duration,
    pub error: Option<String>,
    /// For a failed node: the analyst's doing, or the machinery's.
    pub failure: Option<FailureKind>,
    /// What the task key was made of, by part, for `sluice why`.
    pub inputs: Vec<(String, Digest)>,
}

impl NodeResult {
    fn skipped(reason: String) -> Self {
        NodeResult {
            status: Status::Skipped,
            task_key: None,
            output: None,
            rows: None,
            columns: Vec::new(),
            log: None,
            duration: Duration::ZERO,
            error: Some(reason),
            failure: None,
            inputs: Vec::new(),
        }
    }

    fn failed(kind: FailureKind, error: String) -> Self {
        NodeResult {
            status: Status::Failed,
            failure: Some(kind),
            ..NodeResult::skipped(error)
        }
    }
}

/// Asks a running run to stop: no further node starts, and running
/// command actions are killed (their process groups and temp dirs go).
/// Cloned handles share one flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The flag itself, for signal handlers that set it.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }
}

/// The error a node is skipped with when its run was cancelled.
pub const CANCELLED: &str = "the run was cancelled before this node finished";

/// Knobs for a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    /// Where `data://` sources live.
    pub data_root: Option<PathBuf>,
    /// `PATH` for command actions.
    pub path_env: std::ffi::OsString,
    /// The digest each source had when the plan hashed it; a source that
    /// no longer matches fails its node instead of being cached under a
    /// key that does not describe it.
    pub source_digests: HashMap<crate::pipeline::RepoPath, Digest>,
    /// Set to stop the run early.
    pub cancel: CancelToken,
}

/// The default `[limits] max_output_mb`: 10,240 MB of canonical CSV.
pub const DEFAULT_MAX_OUTPUT_MB: u64 = 10_240;

/// What `sluice.toml` sets for execution: limits and the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// The `@timeout` of a node that sets none (SQL and commands alike).
    pub default_timeout: Duration,
    /// The largest table a node may write, in bytes of canonical CSV.
    pub max_output_bytes: u64,
    /// Command actions run only under Landlock; where it is unavailable
    /// they fail instead of running unconfined.
    pub sandbox_required: bool,
    /// Where command nodes get their temp dirs; `None`: `<state>/tmp`
    /// beside the state database, or the system's for in-memory stores.
    pub temp_root: Option<PathBuf>,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            default_timeout: command::DEFAULT_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_MB * 1_000_000,
            sandbox_required: false,
            temp_root: None,
        }
    }
}

impl ExecSettings {
    /// The settings of a repository's `sluice.toml` (defaults without one).
    pub fn for_repo(config: Option<&crate::config::RepoConfig>) -> Self {
        let mut s = ExecSettings::default();
        if let Some(c) = config {
            if let Some(t) = c.limits.timeout_secs {
                s.default_timeout = Duration::from_secs(t);
            }
            if let Some(mb) = c.limits.max_output_mb {
                s.max_output_bytes = mb.saturating_mul(1_000_000);
            }
            s.sandbox_required = c.sandbox_required;
        }
        s
    }
}

/// Told about each node as it finishes (progress, logs).
pub trait Observer: Sync {
    fn finished(&self, node: &Node, result: &NodeResult, done: usize, total: usize);
}

/// `wanted` and everything it depends on, in the graph's topological
/// order: a node never runs without its inputs.
pub fn closure(graph: &Graph, wanted: &[NodeId]) -> Vec<NodeId> {
    let mut keep = vec![false; graph.nodes.len()];
    let mut stack: Vec<NodeId> = wanted.to_vec();
    while let Some(id) = stack.pop() {
        if id >= keep.len() || keep[id] {
            continue;
        }
        keep[id] = true;
        stack.extend(graph.nodes[id].deps.iter().filter_map(|d| d.node));
    }
    graph.order.iter().copied().filter(|&id| keep[id]).collect()
}

/// Runs `wanted` and whatever it depends on (added when missing) and
/// returns a result for each.
pub fn execute(
    graph: &Graph,
    wanted: &[NodeId],
    hashes: &[Option<NodeHashes>],
    stores: &Stores,
    opts: &RunOptions,
    observer: &dyn Observer,
) -> HashMap<NodeId, NodeResult> {
    execute_with(
        graph,
        wanted,
        hashes,
        stores,
        opts,
        &ExecSettings::default(),
        observer,
    )
}

/// [`execute`] with a repository's limits and sandbox settings.
pub fn execute_with(
    graph: &Graph,
    wanted: &[NodeId],
    hashes: &[Option<NodeHashes>],
    stores: &Stores,
    opts: &RunOptions,
    settings: &ExecSettings,
    observer: &dyn Observer,
) -> HashMap<NodeId, NodeResult> {
    let mut settings = settings.clone();
    if settings.temp_root.is_none() {
        settings.temp_root = stores
            .memo
            .path()
            .and_then(Path::parent)
            .map(|state| state.join("tmp"));
    }
    if let Some(root) = &settings.temp_root {
        // Temp dirs of sluice processes killed before they could clean up.
        command::sweep_stale_temp_dirs(root);
    }
    let settings = &settings;
    let wanted = closure(graph, wanted);
    let mut sched = Schedule::new(graph, &wanted, observer);
    if let Some(queue) = &stores.tasks {
        // Cache misses go to the shared queue; other processes compute.
        task::execute_queued(&mut sched, hashes, stores, opts, settings, queue.as_ref());
        return sched.results;
    }
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    // A backend across the network answers a wave of ready nodes' cache
    // lookups in one query instead of one round trip each.
    let batch_lookups = stores.state.batches_lookups();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<(NodeId, NodeResult)>();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    // The lock is held only to take one job.
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((id, inputs, prefetched)) = job else {
                        return;
                    };
                    let node = &graph.nodes[id];
                    let result = match hashes[id] {
                        // A bug in one node's execution must not hang the
                        // run: a panic becomes that node's failure.
                        Some(h) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_node(node, &h, inputs, prefetched, stores, opts, settings)
                        }))
                        .unwrap_or_else(|_| {
                            NodeResult::failed(
                                FailureKind::Infra,
                                format!(
                                    "{}: internal error while running this node (a bug in sluice)",
                                    node.file
                                ),
                            )
                        }),
                        None => NodeResult::skipped("its definition hash is unknown".into()),
                    };
                    if done_tx.send((id, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);

        let mut in_flight = 0usize;
        loop {
            let wave = sched.take_wave(&opts.cancel);
            let mut prefetched = prefetch(batch_lookups, &wave, hashes, stores);
            for (id, inputs) in wave {
                let found = prefetched.remove(&id);
                if job_tx.send((id, inputs, found)).is_err() {
                    break;
                }
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let Ok((id, r)) = done_rx.recv() else { break };
            in_flight -= 1;
            sched.finish(id, r);
            // Whatever else finished meanwhile, so that its dependents
            // join the same wave.
            while let Ok((id, r)) = done_rx.try_recv() {
                in_flight -= 1;
                sched.finish(id, r);
            }
        }
        drop(job_tx);
    });
    sched.results
}

/// The scheduler's book-keeping: which nodes wait on how many inputs,
/// which are ready, and what finished.
pub(crate) struct Schedule<'a> {
    graph: &'a Graph,
    observer: &'a dyn Observer,
    pending: HashMap<NodeId, usize>,
    dependents: HashMap<NodeId, Vec<NodeId>>,
    ready: Vec<NodeId>,
    results: HashMap<NodeId, NodeResult>,
    total: usize,
}

impl<'a> Schedule<'a> {
    fn new(graph: &'a Graph, wanted: &[NodeId], observer: &'a dyn Observer) -> Self {
        let mut pending: HashMap<NodeId, usize> = HashMap::new();
        let mut dependents: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for &id in wanted {
            let deps: Vec<NodeId> = graph.nodes[id].deps.iter().filter_map(|d| d.node).collect();
            pending.insert(id, deps.len());
            for d in deps {
                dependents.entry(d).or_default().push(id);
            }
        }
        // Popped from the back: reversed so nodes start in graph order.
        let mut ready: Vec<NodeId> = wanted
            .iter()
            .copied()
            .filter(|id| pending[id] == 0)
            .collect();
        ready.reverse();
        Schedule {
            graph,
            observer,
            pending,
            dependents,
            ready,
            results: HashMap::new(),
            total: wanted.len(),
        }
    }

    /// Takes the ready nodes: each with its inputs' tables and outputs,
    /// or finished at once as skipped (below a failure, or cancelled).
    fn take_wave(&mut self, cancel: &CancelToken) -> Vec<(NodeId, Vec<(String, Digest)>)> {
        let mut wave: Vec<(NodeId, Vec<(String, Digest)>)> = Vec::new();
        while let Some(id) = self.ready.pop() {
            if cancel.is_cancelled() {
                self.finish(id, NodeResult::skipped(CANCELLED.into()));
                continue;
            }
            let node = &self.graph.nodes[id];
            // A node below a failure is skipped without running.
            let bad = node
                .deps
                .iter()
                .filter_map(|d| d.node)
                .find(|d| self.results.get(d).is_none_or(|r| !r.status.ok()));
            if let Some(b) = bad {
                let r = NodeResult::skipped(format!(
                    "upstream {} did not succeed",
                    self.graph.nodes[b].name
                ));
                self.finish(id, r);
                continue;
            }
            let inputs: Vec<(String, Digest)> = node
                .deps
                .iter()
                .filter_map(|d| {
                    let out = self.results.get(&d.node?)?.output?;
                    Some((d.table().to_string(), out))
                })
                .collect();
            wave.push((id, inputs));
        }
        wave
    }

    /// Records a result and readies the dependents it was the last input of.
    fn finish(&mut self, id: NodeId, result: NodeResult) {
        self.observer.finished(
            &self.graph.nodes[id],
            &result,
            self.results.len() + 1,
            self.total,
        );
        self.results.insert(id, result);
        for d in self.dependents.get(&id).into_iter().flatten() {
            if let Some(p) = self.pending.get_mut(d) {
                *p -= 1;
                if *p == 0 {
                    self.ready.push(*d);
                }
            }
        }
    }
}

/// A node for a worker: its id, its inputs' tables and outputs, and its
/// cache entry when the scheduler looked it up already.
type Job = (NodeId, Vec<(String, Digest)>, Option<Option<CacheEntry>>);

/// The task key of a node with these inputs.
pub(crate) fn task_key(hashes: &NodeHashes, inputs: &[(String, Digest)]) -> Digest {
    let mut keyed: Vec<(&str, Digest)> = inputs.iter().map(|(t, d)| (t.as_str(), *d)).collect();
    hash::combine("task", &hashes.local, &mut keyed)
}

/// The cache entries of a wave of ready nodes, looked up in one query
/// when `batch` (and there is more than one); a failed lookup leaves each
/// node to look itself up (and report the error).
fn prefetch(
    batch: bool,
    wave: &[(NodeId, Vec<(String, Digest)>)],
    hashes: &[Option<NodeHashes>],
    stores: &Stores,
) -> HashMap<NodeId, Option<CacheEntry>> {
    if !batch || wave.len() < 2 {
        return HashMap::new();
    }
    let keyed: Vec<(NodeId, Digest)> = wave
        .iter()
        .filter_map(|(id, inputs)| Some((*id, task_key(hashes.get(*id)?.as_ref()?, inputs))))
        .collect();
    let keys: Vec<Digest> = keyed.iter().map(|(_, k)| *k).collect();
    match stores.state.cache_get_many(&keys) {
        Ok(found) if found.len() == keyed.len() => {
            keyed.into_iter().map(|(id, _)| id).zip(found).collect()
        }
        _ => HashMap::new(),
    }
}

/// Runs one node, or takes it from the cache (`prefetched`: the entry
/// the scheduler already looked up, if it did).
fn run_node(
    node: &Node,
    hashes: &NodeHashes,
    inputs: Vec<(String, Digest)>,
    prefetched: Option<Option<CacheEntry>>,
    stores: &Stores,
    opts: &RunOptions,
    settings: &ExecSettings,
) -> NodeResult {
    let start = Instant::now();
    let task_key = task_key(hashes, &inputs);
    let mut result = NodeResult {
        status: Status::Failed,
        task_key: Some(task_key),
        output: None,
        rows: None,
        columns: Vec::new(),
        log: None,
        duration: Duration::ZERO,
        error: None,
        failure: None,
        inputs,
    };
    let found = match prefetched {
        Some(entry) => Ok(entry),
        None => stores.state.cache_get(&task_key),
    };
    match found {
        // A hit costs a lookup and a stat; the bytes are verified when a
        // node reads them (hashed while a SQL node loads them, or before a
        // command gets their path).
        Ok(Some(entry)) if stores.blobs.contains(&entry.output) => {
            result.status = Status::Cached;
            result.output = Some(entry.output);
            result.rows = Some(entry.rows);
            result.columns = entry.columns;
            result.log = entry.log;
            result.duration = start.elapsed();
            return result;
        }
        Ok(_) => {}
        Err(e) => {
            result.error = Some(format!("{}: cannot read the cache: {e:#}", node.file));
            result.failure = Some(FailureKind::Infra);
            return result;
        }
    }
    let (mut result, failed_checks) = compute_node(node, result, start, stores, opts, settings);
    record(stores, &node.file, &mut result, failed_checks);
    result
}

/// The table a node whose data tests failed left, with its counts.
pub(crate) type FailedChecks = Option<(Digest, sqlite::TableStats)>;

/// Computes a node (`result` carries its task key and inputs) into the
/// blob store, without writing the cache: the status, output, counts, log
/// and error of `result` are filled in, and the table of failed data
/// tests returned beside it.
pub(crate) fn compute_node(
    node: &Node,
    mut result: NodeResult,
    start: Instant,
    stores: &Stores,
    opts: &RunOptions,
    settings: &ExecSettings,
) -> (NodeResult, FailedChecks) {
    let computed = compute(node, &result.inputs, stores, opts, settings);
    result.duration = start.elapsed();
    if opts.cancel.is_cancelled() && computed.table.is_err() {
        // Killed by the cancellation, not by its own fault.
        result.status = Status::Skipped;
        result.error = Some(CANCELLED.into());
        return (result, None);
    }
    result.log = computed.log;
    match computed.table {
        Ok((output, stats)) => {
            result.status = Status::Computed;
            result.output = Some(output);
            result.rows = Some(stats.rows);
            result.columns = stats.columns;
        }
        Err((kind, e)) => {
            // A located error (`path:line:column: ...`) names its own file.
            result.error = Some(match e.strip_prefix(LOCATED) {
                Some(located) => located.to_string(),
                None => format!("{}: {e}", node.file),
            });
            result.failure = Some(kind);
        }
    }
    (result, computed.failed_checks)
}

/// Writes the cache entries of a computed node: its table under its task
/// key, or the table its failed data tests left (best effort: only `cat`
/// and `test` read it). A cache that cannot be written fails the node.
pub(crate) fn record(
    stores: &Stores,
    file: &crate::pipeline::RepoPath,
    result: &mut NodeResult,
    failed_checks: FailedChecks,
) {
    let Some(task_key) = result.task_key else {
        return;
    };
    if let Some((output, stats)) = failed_checks {
        let _ = stores.state.cache_put(
            &failed_checks_key(&task_key),
            &CacheEntry {
                output,
                rows: stats.rows,
                columns: stats.columns,
                log: result.log,
                duration_ms: result.duration.as_millis() as u64,
            },
        );
    }
    if result.status != Status::Computed {
        return;
    }
    let Some(output) = result.output else {
        return;
    };
    let entry = CacheEntry {
        output,
        rows: result.rows.unwrap_or(0),
        columns: result.columns.clone(),
        log: result.log,
        duration_ms: result.duration.as_millis() as u64,
    };
    if let Err(e) = stores.state.cache_put(&task_key, &entry) {
        result.status = Status::Failed;
        result.error = Some(format!("{file}: cannot write the cache: {e:#}"));
        result.failure = Some(FailureKind::Infra);
    }
}

/// Marks an error message that starts with its own `path:line:column`.
const LOCATED: &str = "\u{1}located:";

/// `(Some(N), rest)` for a CSV reader's `line N: rest`.
fn split_line(message: &str) -> (Option<u64>, &str) {
    message
        .strip_prefix("line ")
        .and_then(|r| r.split_once(": "))
        .and_then(|(n, rest)| n.parse::<u64>().ok().map(|n| (Some(n), rest)))
        .unwrap_or((None, message))
}

/// A problem reading a `@source` CSV, named by its `data://` path and
/// line (`input patients: line 3: ...` says neither), with the fix for
/// an encoding that is not UTF-8.
fn locate_source_error(message: &str, node: &Node) -> Option<String> {
    node.sources.iter().find_map(|s| {
        let rest = message.strip_prefix(&format!("input {}: ", s.table))?;
        let (line, detail) = split_line(rest);
        let mut out = match line {
            Some(n) => format!("data://{}:{n}: {detail}", s.path),
            None => format!("data://{}: {detail}", s.path),
        };
        if detail.contains("not valid UTF-8") {
            out.push_str(&format!(
                "; convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 {0} > {0}.utf8` (then replace it)",
                s.path.file_name()
            ));
        }
        Some(out)
    })
}

/// `path:line:column` of byte `offset` of a node's body, in the file the
/// body came from.
fn body_location(node: &Node, offset: usize) -> String {
    let (line, column) = node.body_position(offset);
    format!("{}:{line}:{column}", node.body_from)
}

/// The failures of a node's data tests, each `@assert sql:` that could
/// not run placed at its line and column.
fn describe_failures(node: &Node, fails: &[checks::Failure]) -> String {
    let parts: Vec<String> = fails
        .iter()
        .map(|f| {
            let at = f.assert.and_then(|i| Some((i, node.asserts.get(i)?)));
            match (at, f.query_offset) {
                (Some((i, (Assert::Sql(q), origin))), Some(offset)) => {
                    let (line, column) = node.assert_position(i, q, offset);
                    let column = if line == 0 {
                        origin.column.max(1) as usize + column - 1
                    } else {
                        column
                    };
                    format!(
                        "{}:{}:{column}: {}",
                        origin.file,
                        origin.line as usize + line,
                        f.message
                    )
                }
                _ => f.message.clone(),
            }
        })
        .collect();
    parts.join("; ")
}

struct Computed {
    table: Result<(Digest, sqlite::TableStats), (FailureKind, String)>,
    log: Option<Digest>,
    /// The table of a node whose data tests failed: kept (not as the
    /// node's output) so that `sluice cat` and `sluice test` can show it.
    failed_checks: Option<(Digest, sqlite::TableStats)>,
}

/// The cache key under which the table of a node whose data tests failed
/// is kept, by the task key the node ran under. It is never a node's
/// output: nothing downstream reads it.
pub fn failed_checks_key(task_key: &Digest) -> Digest {
    hash::combine("failed-checks", task_key, &mut [])
}

/// Computes a node's table into the blob store and checks it.
fn compute(
    node: &Node,
    inputs: &[(String, Digest)],
    stores: &Stores,
    opts: &RunOptions,
    settings: &ExecSettings,
) -> Computed {
    let mut log = None;
    let user = |e: String| (FailureKind::User, e);
    let infra = |e: String| (FailureKind::Infra, e);
    // Never serve a damaged blob again: the nodes that produced it
    // recompute (and so repair it) on the next run.
    let damaged = |table: &str, digest: &Digest, e: String| {
        let _ = stores.state.cache_forget_output(digest);
        infra(format!(
            "input {table}: {e}; it will be recomputed on the next run"
        ))
    };
    let timeout = node
        .timeout
        .as_ref()
        .map(|(s, _)| Duration::from_secs(*s))
        .unwrap_or(settings.default_timeout);
    let mut failed_checks = None;
    let table = (|| -> Result<(Digest, sqlite::TableStats), (FailureKind, String)> {
        let mut source_paths: Vec<(String, PathBuf)> = Vec::new();
        for s in &node.sources {
            let root = opts.data_root.as_ref().ok_or_else(|| {
                user("no data root for @source; set [data] root, SLUICE_DATA_ROOT or --data".into())
            })?;
            let path = resolve_source(root, &s.path).map_err(user)?;
            check_source(stores, opts, &s.path, &path).map_err(user)?;
            source_paths.push((s.table.clone(), path));
        }
        let writer = stores.blobs.writer().map_err(|e| infra(e.to_string()))?;
        let mut writer = CappedWriter {
            inner: writer,
            written: 0,
            cap: settings.max_output_bytes,
            over: false,
        };
        let too_large =
            |w: &CappedWriter| w.over.then(|| user(command::output_too_large(w.written)));
        let stats = match &node.action.action {
            Action::Engine(_) => {
                // Upstream tables are canonical CSV, read byte for byte and
                // hashed in the same pass; sources are external CSV (or
                // SQLite files to attach).
                let mut input_paths: Vec<(&str, PathBuf, Option<Digest>)> = Vec::new();
                for (table, digest) in inputs {
                    match stores.blobs.local_path(digest) {
                        Some(p) => input_paths.push((table, p, Some(*digest))),
                        None => {
                            let p = stores
                                .blobs
                                .open_verified(digest)
                                .map_err(|e| damaged(table, digest, e.to_string()))?;
                            input_paths.push((table, p, None));
                        }
                    }
                }
                let mut sql_inputs = Vec::new();
                for (table, path, digest) in &input_paths {
                    sql_inputs.push(sqlite::SqlInput {
                        table,
                        csv: match digest {
                            Some(d) => sqlite::InputData::Blob(path, *d),
                            None => sqlite::InputData::Canonical(path),
                        },
                    });
                }
                for (table, path) in &source_paths {
                    let data = if is_sqlite_file(path) {
                        sqlite::InputData::Attach(path)
                    } else {
                        sqlite::InputData::Csv(path)
                    };
                    sql_inputs.push(sqlite::SqlInput { table, csv: data });
                }
                let limits = sqlite::SqlLimits {
                    timeout,
                    cancel: Some(opts.cancel.clone()),
                };
                let ran = sqlite::run_sql(&node.body, &sql_inputs, &mut writer, &limits);
                if let Some(e) = too_large(&writer) {
                    return Err(e);
                }
                ran.map_err(|e| match e.corrupt_input() {
                    Some(d) => {
                        let _ = stores.state.cache_forget_output(&d);
                        infra(e.message().to_string())
                    }
                    None if let Some(m) = locate_source_error(e.message(), node) => user(m),
                    // SQLite may quote a cell value in its message.
                    None => match e.offset() {
                        Some(at) => user(format!(
                            "{LOCATED}{}: {}",
                            body_location(node, at),
                            redact(e.message(), &node.body)
                        )),
                        None => user(redact(e.message(), &node.body)),
                    },
                })?
            }
            Action::Command(template) => {
                // A command gets paths: each blob is verified (streamed
                // through SHA-256) before it is handed over.
                let mut all: Vec<(String, PathBuf)> = Vec::new();
                for (table, digest) in inputs {
                    let p = stores
                        .blobs
                        .open_verified(digest)
                        .map_err(|e| damaged(table, digest, e.to_string()))?;
                    all.push((table.clone(), p));
                }
                all.extend(source_paths.iter().cloned());
                let sandbox = match sandbox::availability() {
                    sandbox::Availability::Enforced { launcher, .. } => {
                        Some(command::SandboxSpec {
                            launcher,
                            private: opts
                                .data_root
                                .iter()
                                .cloned()
                                .chain(
                                    settings
                                        .temp_root
                                        .iter()
                                        .filter_map(|t| t.parent().map(Path::to_path_buf)),
                                )
                                .collect(),
                            required: settings.sandbox_required,
                        })
                    }
                    sandbox::Availability::Unavailable(why) if settings.sandbox_required => {
                        return Err(infra(format!(
                            "[sandbox] required = true, but command actions cannot be \
                             sandboxed here: {why}"
                        )));
                    }
                    sandbox::Availability::Unavailable(_) => None,
                };
                // Directive lines blanked, not removed: an interpreter's
                // line numbers are the file's.
                let script =
                    crate::pipeline::directive::with_file_lines(&node.body, &node.body_lines);
                let script_path = node.body_from.to_string();
                let spec = command::CommandSpec {
                    template,
                    body: &script,
                    extension: node.file.extension(),
                    script_path: Some(&script_path),
                    inputs: all,
                    params: node
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect(),
                    path_env: &opts.path_env,
                    timeout,
                    cancel: &opts.cancel,
                    temp_root: settings.temp_root.as_deref(),
                    max_output: settings.max_output_bytes,
                    sandbox,
                };
                let out = command::run(&spec)
                    .map_err(|e| infra(format!("cannot run the command: {e}")))?;
                if !out.log.is_empty() {
                    log = stores.blobs.put(&out.log).ok();
                }
                out.result.map_err(user)?;
                let file = std::fs::File::open(&out.output).map_err(|_| {
                    user("the command succeeded but wrote no table to $SLUICE_OUTPUT".into())
                })?;
                let done = table::canonicalize(std::io::BufReader::new(file), &mut writer);
                if let Some(e) = too_large(&writer) {
                    return Err(e);
                }
                done.map_err(|e| user(format!("output is not valid CSV: {e}")))?
            }
            Action::Static => {
                let done = table::canonicalize(node.body.as_bytes(), &mut writer);
                if let Some(e) = too_large(&writer) {
                    return Err(e);
                }
                done.map_err(|e| match split_line(&e.to_string()) {
                    (Some(line), detail) => user(format!(
                        "{LOCATED}{}:{line}: not valid CSV: {detail}",
                        node.file
                    )),
                    (None, detail) => user(format!("not valid CSV: {detail}")),
                })?
            }
        };
        writer.flush().map_err(|e| infra(e.to_string()))?;
        // And unchanged while the node read them.
        for (s, (_, path)) in node.sources.iter().zip(&source_paths) {
            check_source(stores, opts, &s.path, path).map_err(user)?;
        }
        let digest = writer.inner.finish().map_err(|e| infra(e.to_string()))?;
        let key = node.key.as_ref().map(|(k, _)| k.as_slice());
        let asserts: Vec<_> = node.asserts.iter().map(|(a, _)| a.clone()).collect();
        if key.is_some() || !asserts.is_empty() {
            // The writer hashed these bytes a moment ago: read the file
            // as it is rather than hash it a second time.
            let path = match stores.blobs.local_path(&digest) {
                Some(p) => p,
                None => stores
                    .blobs
                    .open_verified(&digest)
                    .map_err(|e| infra(e.to_string()))?,
            };
            let limits = sqlite::SqlLimits {
                timeout,
                cancel: Some(opts.cancel.clone()),
            };
            let own_text = format!("{}\n{:?}", node.body, asserts);
            checks::check_table(&path, &node.name, key, &asserts, &limits, Some(&own_text))
                .map_err(|fails| {
                    failed_checks = Some((digest, stats.clone()));
                    // Assertions are SQL too: keep only what the node itself says.
                    let own = format!("{}\n{:?}", node.body, asserts);
                    user(redact(
                        &format!("data test failed: {}", describe_failures(node, &fails)),
                        &own,
                    ))
                })?;
        }
        Ok((digest, stats))
    })();
    Computed {
        table,
        log,
        failed_checks,
    }
}

/// The blob writer, counting bytes as the canonical writer writes them,
/// refusing to grow past the output limit.
struct CappedWriter {
    inner: Box<dyn crate::store::blob::BlobWriter>,
    written: u64,
    cap: u64,
    over: bool,
}

impl Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.cap {
            self.over = true;
            self.written = self.written.saturating_add(buf.len() as u64);
            return Err(std::io::Error::other(
                "the table is larger than the output limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Error text that may leave this machine (reports, manifests, comments)
/// keeps a quoted fragment only when the node's own text (`own`) holds it:
/// SQLite quotes cell values in some messages (`bad JSON path: '...'`),
/// and those are PHI. Every other fragment in '…' or "…" becomes '…'.
pub fn redact(message: &str, own: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['\'', '"']) {
        let quote = if rest[i..].starts_with('"') {
            '"'
        } else {
            '\''
        };
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (fragment, tail, closed) = match after.find(quote) {
            Some(j) => (&after[..j], &after[j + 1..], true),
            None => (after, "", false),
        };
        out.push(quote);
        if fragment.is_empty() || own.contains(fragment) {
            out.push_str(fragment);
            if closed {
                out.push(quote);
            }
        } else {
            out.push('…');
            out.push(quote);
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Whether `text` names `column` the way `engine::diff::Vocabulary::names` would, for
/// one text, without building a vocabulary: as a whole word, or verbatim
/// for a name with other characters.
pub fn mentions(text: &str, column: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    if column.is_empty() {
        return false;
    }
    if !column.chars().all(word) {
        return text.contains(column);
    }
    text.match_indices(column).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + column.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// The entry that stands for `n` column names the data chose.
pub fn data_named(n: usize) -> String {
    if n == 1 {
        "(1 column named by the data)".to_string()
    } else {
        format!("({n} columns named by the data)")
    }
}

/// Fails when a source's bytes are no longer those the plan hashed (a
/// stat-keyed memo hit when nothing changed, so this costs a `stat`).
fn check_source(
    stores: &Stores,
    opts: &RunOptions,
    rel: &crate::pipeline::RepoPath,
    path: &Path,
) -> Result<(), String> {
    let Some(expected) = opts.source_digests.get(rel) else {
        return Ok(());
    };
    let now = crate::store::source::source_digest(&stores.memo, path)
        .map_err(|e| format!("data://{rel}: {e}"))?;
    if now != *expected {
        return Err(format!(
            "data://{rel} changed while sluice was running; run again to use the new data"
        ));
    }
    Ok(())
}

/// The file of a `data://` source: under the data root, after following
/// symlinks. A source whose real path leaves the data root is refused.
pub fn resolve_source(root: &Path, rel: &crate::pipeline::RepoPath) -> Result<PathBuf, String> {
    let canon_root = root
        .canonicalize()
        .map_err(|e| format!("data root {}: {e}", root.display()))?;
    let path = canon_root.join(rel.as_str());
    let real = path
        .canonicalize()
        .map_err(|e| format!("data://{rel}: {e} under data root {}", root.display()))?;
    if !real.starts_with(&canon_root) {
        return Err(format!(
            "data://{rel} leads outside the data root {}",
            root.display()
        ));
    }
    Ok(real)
}

fn is_sqlite_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("sqlite" | "sqlite3" | "db")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_the_nodes_own_fragments() {
        let body = "SELECT json_extract('{}', 'own path') FROM \"T\"";
        assert_eq!(
            redact("SQL error: bad JSON path: 'MRN-123'", body),
            "SQL error: bad JSON path: '…'"
        );
        assert_eq!(
            redact("bad JSON path: 'own path' near \"T\"", body),
            "bad JSON path: 'own path' near \"T\""
        );
        assert_eq!(redact("unclosed 'MRN-9", body), "unclosed '…'");
        assert_eq!(redact("empty '' stays", body), "empty '' stays");
        assert_eq!(redact("no quotes: 12", body), "no quotes: 12");
    }

    #[test]
    fn settings_follow_the_repository_config() {
        let cfg = crate::config::parse(
            "[project]\npipelines = [\"c/*\"]\n[limits]\ntimeout = \"2m\"\nmax_output_mb = 3\n[sandbox]\nrequired = true\n",
        )
        .unwrap();
        let s = ExecSettings::for_repo(Some(&cfg));
        assert_eq!(s.default_timeout, Duration::from_secs(120));
        assert_eq!(s.max_output_bytes, 3_000_000);
        assert!(s.sandbox_required);
        assert_eq!(ExecSettings::for_repo(None), ExecSettings::default());
    }
}
