//! Nodes computed by other processes: the work queue at node granularity.
//!
//! When [`Stores::tasks`] holds a queue (a daemon on PostgreSQL), the
//! scheduler keeps its dependency book-keeping but sends each cache miss to
//! the queue as a task, keyed by its task key, and collects the results in
//! one query for all of the run's outstanding tasks whenever a completion
//! wakes it ([`TaskQueue::done_waiter`]; polling when it cannot). A
//! task carries everything a worker needs without the repository: the
//! resolved node ([`TaskNode`]), its inputs' digests, the digests its
//! sources had when the run hashed them, and the repository's limits. A
//! worker ([`work`]) computes it with the same code as a local run, stores
//! the table in the shared blob store and answers a [`TaskResult`]; the
//! scheduler writes the cache entry into its repository's state.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    CANCELLED, CancelToken, ExecSettings, FailureKind, NodeResult, RunOptions, Schedule, Status,
};
use crate::pipeline::RepoPath;
use crate::pipeline::directive::{Assert, CmpOp};
use crate::pipeline::graph::{Action, Node, NodeId, Origin, ParamValue, ResolvedAction, SourceRef};
use crate::plan::digest::Digest;
use crate::plan::hash::NodeHashes;
use crate::store::Stores;

/// The version of [`TaskSpec`] and [`TaskResult`]: a worker refuses a
/// task of another version instead of computing it wrong.
pub const TASK_FORMAT: u32 = 1;

/// A shared queue of node tasks, as the scheduler sees it.
pub trait TaskQueue: Send + Sync {
    /// Queues each `(task key, spec)` unless a task of that key is queued,
    /// running or done already (then it is waited for); a task that ended
    /// in failure is queued again.
    fn submit(&self, tasks: &[(Digest, String)]) -> anyhow::Result<()>;
    /// The results of those of `keys` that are done: `(key, result JSON)`.
    fn done(&self, keys: &[Digest]) -> anyhow::Result<Vec<(Digest, String)>>;
    /// Queues a done task again (its table went missing from the store).
    fn requeue(&self, key: &Digest) -> anyhow::Result<()>;
    /// Something to wait on until a task completes, when the queue can
    /// say so; `None`: the scheduler polls.
    fn done_waiter(&self) -> Option<Box<dyn DoneWaiter>> {
        None
    }
}

/// Waits for completed tasks (PostgreSQL's `LISTEN`).
pub trait DoneWaiter: Send {
    /// Returns when a task may have completed (true) or after `timeout`.
    fn wait(&mut self, timeout: std::time::Duration) -> bool;
}

/// A node as a worker needs it: what `compute` reads of a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNode {
    pub name: String,
    pub dir: String,
    pub file: String,
    pub action: TaskAction,
    pub action_defined_in: String,
    pub body: String,
    pub body_from: String,
    pub body_lines: Vec<u32>,
    pub params: BTreeMap<String, String>,
    /// `(data-root-relative path, table)`.
    pub sources: Vec<(String, String)>,
    pub key: Option<(Vec<String>, TaskOrigin)>,
    pub asserts: Vec<(TaskAssert, TaskOrigin)>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskAction {
    Engine(String),
    Command(String),
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOrigin {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskAssert {
    NotNull(String),
    Unique(String),
    /// The comparison as written (`>=`), and the count.
    Rows(String, u64),
    Sql(String),
}

/// Everything a worker needs to compute one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub format: u32,
    pub task_key: Digest,
    pub node: TaskNode,
    pub local: Digest,
    pub definition: Digest,
    /// Each input table's name in the node and its output digest.
    pub inputs: Vec<(String, Digest)>,
    /// The digest each of the node's sources had when the run hashed it;
    /// a worker whose copy differs fails the task.
    pub source_digests: Vec<(String, Digest)>,
    pub default_timeout_ms: u64,
    pub max_output_bytes: u64,
    pub sandbox_required: bool,
}

/// A worker's answer: the node's outcome, without the cache entry (the
/// scheduler writes it into its repository's state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub format: u32,
    pub ok: bool,
    pub output: Option<Digest>,
    pub rows: Option<u64>,
    pub columns: Vec<String>,
    pub log: Option<Digest>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
    /// The table a node whose data tests failed left, with its counts.
    pub failed_checks: Option<(Digest, u64, Vec<String>)>,
    /// The error does not name the node's file yet (a failure around the
    /// node): the scheduler puts it in front.
    #[serde(default)]
    pub unlocated: bool,
}

fn origin_of(o: &Origin) -> TaskOrigin {
    TaskOrigin {
        file: o.file.to_string(),
        line: o.line,
        column: o.column,
    }
}

fn path(text: &str) -> Result<RepoPath, String> {
    RepoPath::parse(text).map_err(|e| format!("the task names the path `{text}`: {e}"))
}

impl TaskOrigin {
    fn to_origin(&self) -> Result<Origin, String> {
        Ok(Origin {
            file: path(&self.file)?,
            line: self.line,
            column: self.column,
        })
    }
}

fn cmp_op(text: &str) -> Option<CmpOp> {
    [
        CmpOp::Gt,
        CmpOp::Ge,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Eq,
        CmpOp::Ne,
    ]
    .into_iter()
    .find(|op| op.as_str() == text)
}

impl TaskNode {
    pub fn from_node(node: &Node) -> TaskNode {
        TaskNode {
            name: node.name.clone(),
            dir: node.dir.to_string(),
            file: node.file.to_string(),
            action: match &node.action.action {
                Action::Engine(e) => TaskAction::Engine(e.clone()),
                Action::Command(c) => TaskAction::Command(c.clone()),
                Action::Static => TaskAction::Static,
            },
            action_defined_in: node.action.defined_in.to_string(),
            body: node.body.to_string(),
            body_from: node.body_from.to_string(),
            body_lines: node.body_lines.to_vec(),
            params: node
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
            sources: node
                .sources
                .iter()
                .map(|s| (s.path.to_string(), s.table.clone()))
                .collect(),
            key: node.key.as_ref().map(|(k, o)| (k.clone(), origin_of(o))),
            asserts: node
                .asserts
                .iter()
                .map(|(a, o)| {
                    let a = match a {
                        Assert::NotNull(c) => TaskAssert::NotNull(c.clone()),
                        Assert::Unique(c) => TaskAssert::Unique(c.clone()),
                        Assert::Rows { op, value } => {
                            TaskAssert::Rows(op.as_str().to_string(), *value)
                        }
                        Assert::Sql(q) => TaskAssert::Sql(q.clone()),
                    };
                    (a, origin_of(o))
                })
                .collect(),
            timeout_secs: node.timeout.as_ref().map(|(s, _)| *s),
        }
    }

    /// The node again. Where templates placed values in the body is not
    /// carried: an error's column on such a line counts in the text after
    /// templates.
    pub fn to_node(&self) -> Result<Node, String> {
        let file = path(&self.file)?;
        let body_from = path(&self.body_from)?;
        let here = Origin {
            file: body_from.clone(),
            line: 0,
            column: 0,
        };
        let mut asserts = Vec::with_capacity(self.asserts.len());
        for (a, o) in &self.asserts {
            let a = match a {
                TaskAssert::NotNull(c) => Assert::NotNull(c.clone()),
                TaskAssert::Unique(c) => Assert::Unique(c.clone()),
                TaskAssert::Rows(op, value) => Assert::Rows {
                    op: cmp_op(op).ok_or_else(|| format!("the task has a test `rows {op}`"))?,
                    value: *value,
                },
                TaskAssert::Sql(q) => Assert::Sql(q.clone()),
            };
            asserts.push((a, o.to_origin()?));
        }
        let mut sources = Vec::with_capacity(self.sources.len());
        for (p, table) in &self.sources {
            sources.push(SourceRef {
                path: path(p)?,
                table: table.clone(),
                origin: here.clone(),
            });
        }
        Ok(Node {
            id: 0,
            dir: path(&self.dir)?,
            name: self.name.clone(),
            file,
            via: Vec::new(),
            overrides: None,
            includes: Vec::new(),
            action: ResolvedAction {
                action: match &self.action {
                    TaskAction::Engine(e) => Action::Engine(e.clone()),
                    TaskAction::Command(c) => Action::Command(c.clone()),
                    TaskAction::Static => Action::Static,
                },
                defined_in: path(&self.action_defined_in)?,
                by_extension: false,
            },
            body: self.body.as_str().into(),
            body_from,
            body_lines: self.body_lines.as_slice().into(),
            body_map: Default::default(),
            params: self
                .params
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        ParamValue {
                            value: v.clone(),
                            origin: here.clone(),
                        },
                    )
                })
                .collect(),
            deps: Vec::new(),
            sources,
            key: match &self.key {
                Some((k, o)) => Some((k.clone(), o.to_origin()?)),
                None => None,
            },
            asserts,
            assert_maps: BTreeMap::new(),
            timeout: self.timeout_secs.map(|s| (s, here.clone())),
        })
    }
}

/// The task of a node with these inputs.
pub fn spec_for(
    node: &Node,
    hashes: &NodeHashes,
    inputs: &[(String, Digest)],
    opts: &RunOptions,
    settings: &ExecSettings,
) -> TaskSpec {
    TaskSpec {
        format: TASK_FORMAT,
        task_key: super::task_key(hashes, inputs),
        node: TaskNode::from_node(node),
        local: hashes.local,
        definition: hashes.definition,
        inputs: inputs.to_vec(),
        source_digests: node
            .sources
            .iter()
            .filter_map(|s| Some((s.path.to_string(), *opts.source_digests.get(&s.path)?)))
            .collect(),
        default_timeout_ms: settings.default_timeout.as_millis().min(u64::MAX as u128) as u64,
        max_output_bytes: settings.max_output_bytes,
        sandbox_required: settings.sandbox_required,
    }
}

/// What a worker brings of its own: the same `data_root` path as every
/// other worker's, `PATH`, and where node temp dirs go.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub data_root: Option<PathBuf>,
    pub path_env: std::ffi::OsString,
    pub temp_root: Option<PathBuf>,
}

impl TaskResult {
    /// A failure that happened around the node, not in it.
    pub fn failure(kind: FailureKind, error: String) -> TaskResult {
        failed(kind, error)
    }
}

fn failed(kind: FailureKind, error: String) -> TaskResult {
    TaskResult {
        format: TASK_FORMAT,
        ok: false,
        output: None,
        rows: None,
        columns: Vec::new(),
        log: None,
        duration_ms: 0,
        error: Some(error),
        failure: Some(kind),
        failed_checks: None,
        unlocated: true,
    }
}

/// Computes one task (its spec as JSON) into the blob store; `None` when
/// `cancel` stopped it (the task is to be released, not completed).
pub fn work(
    spec: &str,
    stores: &Stores,
    env: &WorkerEnv,
    cancel: &CancelToken,
) -> Option<TaskResult> {
    let start = Instant::now();
    let spec: TaskSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            return Some(failed(
                FailureKind::Infra,
                format!("this worker cannot read the task (a different sluice version?): {e}"),
            ));
        }
    };
    if spec.format != TASK_FORMAT {
        return Some(failed(
            FailureKind::Infra,
            format!(
                "the task is of format {}, this worker's sluice reads {TASK_FORMAT}: run the \
                 same sluice version on every worker",
                spec.format
            ),
        ));
    }
    let node = match spec.node.to_node() {
        Ok(n) => n,
        Err(e) => return Some(failed(FailureKind::Infra, e)),
    };
    let mut source_digests = HashMap::new();
    for (p, d) in &spec.source_digests {
        match RepoPath::parse(p) {
            Ok(rp) => {
                source_digests.insert(rp, *d);
            }
            Err(e) => return Some(failed(FailureKind::Infra, format!("data://{p}: {e}"))),
        }
    }
    // The same files on every worker, or the node is not what was hashed.
    if let Some(root) = &env.data_root {
        for s in &node.sources {
            let Some(expected) = source_digests.get(&s.path) else {
                continue;
            };
            let Ok(file) = super::resolve_source(root, &s.path) else {
                continue;
            };
            match crate::store::source::source_digest(&stores.memo, &file) {
                Ok(d) if d == *expected => {}
                Ok(_) => {
                    return Some(failed(
                        FailureKind::Infra,
                        format!(
                            "data://{} on this worker is not the file the run planned with; \
                             every worker must see the same data_root",
                            s.path
                        ),
                    ));
                }
                Err(e) => {
                    return Some(failed(
                        FailureKind::Infra,
                        format!("data://{}: {e}", s.path),
                    ));
                }
            }
        }
    }
    let opts = RunOptions {
        jobs: 1,
        data_root: env.data_root.clone(),
        path_env: env.path_env.clone(),
        source_digests,
        cancel: cancel.clone(),
    };
    let settings = ExecSettings {
        default_timeout: Duration::from_millis(spec.default_timeout_ms),
        max_output_bytes: spec.max_output_bytes,
        sandbox_required: spec.sandbox_required,
        temp_root: env.temp_root.clone(),
    };
    let hashes = NodeHashes {
        local: spec.local,
        definition: spec.definition,
    };
    let result = NodeResult {
        status: Status::Failed,
        task_key: Some(super::task_key(&hashes, &spec.inputs)),
        inputs: spec.inputs,
        error: None,
        ..NodeResult::skipped(String::new())
    };
    let (r, failed_checks) = super::compute_node(&node, result, start, stores, &opts, &settings);
    if cancel.is_cancelled() && r.status == Status::Skipped {
        return None;
    }
    Some(TaskResult {
        format: TASK_FORMAT,
        ok: r.status == Status::Computed,
        output: r.output,
        rows: r.rows,
        columns: r.columns,
        log: r.log,
        duration_ms: r.duration.as_millis().min(u64::MAX as u128) as u64,
        error: r.error,
        failure: r.failure,
        failed_checks: failed_checks.map(|(d, s)| (d, s.rows, s.columns)),
        unlocated: false,
    })
}

/// A node waiting on a task: its id, its inputs, since when.
type Waiting = (NodeId, Vec<(String, Digest)>, Instant);

/// The scheduler's loop with a queue: cache hits are answered here, every
/// miss becomes a task, and results are collected as they are done.
pub(crate) fn execute_queued(
    sched: &mut Schedule<'_>,
    hashes: &[Option<NodeHashes>],
    stores: &Stores,
    opts: &RunOptions,
    settings: &ExecSettings,
    queue: &dyn TaskQueue,
) {
    let graph = sched.graph;
    let batch_lookups = stores.state.batches_lookups();
    // Task key -> the nodes waiting on it (two nodes of a run may share one).
    let mut outstanding: HashMap<Digest, Vec<Waiting>> = HashMap::new();
    let mut pause = Duration::from_millis(1);
    let mut requeued: HashMap<Digest, u32> = HashMap::new();
    // Listening before the first submit: no completion is missed.
    let mut waiter = queue.done_waiter();
    loop {
        let wave = sched.take_wave(&opts.cancel);
        let mut prefetched = super::prefetch(batch_lookups, &wave, hashes, stores);
        let mut submit: Vec<(Digest, String)> = Vec::new();
        for (id, inputs) in wave {
            let node = &graph.nodes[id];
            let Some(h) = hashes.get(id).copied().flatten() else {
                sched.finish(
                    id,
                    NodeResult::skipped("its definition hash is unknown".into()),
                );
                continue;
            };
            let key = super::task_key(&h, &inputs);
            let found = match prefetched.remove(&id) {
                Some(entry) => Ok(entry),
                None => stores.state.cache_get(&key),
            };
            match found {
                Ok(Some(entry)) if stores.blobs.contains(&entry.output) => {
                    sched.finish(
                        id,
                        NodeResult {
                            status: Status::Cached,
                            task_key: Some(key),
                            output: Some(entry.output),
                            rows: Some(entry.rows),
                            columns: entry.columns,
                            log: entry.log,
                            duration: Duration::ZERO,
                            error: None,
                            failure: None,
                            inputs,
                        },
                    );
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    sched.finish(
                        id,
                        NodeResult::failed(
                            FailureKind::Infra,
                            format!("{}: cannot read the cache: {e:#}", node.file),
                        ),
                    );
                    continue;
                }
            }
            let waiting = outstanding.entry(key).or_default();
            if waiting.is_empty() {
                let spec = spec_for(node, &h, &inputs, opts, settings);
                match serde_json::to_string(&spec) {
                    Ok(json) => submit.push((key, json)),
                    Err(e) => {
                        sched.finish(
                            id,
                            NodeResult::failed(
                                FailureKind::Infra,
                                format!("{}: cannot encode the task: {e}", node.file),
                            ),
                        );
                        continue;
                    }
                }
            }
            waiting.push((id, inputs, Instant::now()));
        }
        if !submit.is_empty()
            && let Err(e) = queue.submit(&submit)
        {
            for (key, _) in &submit {
                for (id, _, _) in outstanding.remove(key).unwrap_or_default() {
                    let file = &graph.nodes[id].file;
                    sched.finish(
                        id,
                        NodeResult::failed(
                            FailureKind::Infra,
                            format!("{file}: cannot queue the task: {e:#}"),
                        ),
                    );
                }
            }
        }
        if outstanding.is_empty() {
            if sched.ready.is_empty() {
                break;
            }
            continue;
        }
        if opts.cancel.is_cancelled() {
            // The tasks stay queued: a worker computes them for whoever
            // needs them next.
            for (_, waiting) in outstanding.drain() {
                for (id, _, _) in waiting {
                    sched.finish(id, NodeResult::skipped(CANCELLED.into()));
                }
            }
            continue;
        }
        let keys: Vec<Digest> = outstanding.keys().copied().collect();
        let done = match queue.done(&keys) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot read the task queue: {e:#}");
                Vec::new()
            }
        };
        if done.is_empty() {
            match &mut waiter {
                // Woken by a completion (anyone's: then one query tells
                // whether it was ours); the timeout is a safety net.
                Some(w) => {
                    w.wait(Duration::from_millis(250));
                }
                None => {
                    std::thread::sleep(pause);
                    // Workers have the queue's backlog meanwhile: a longer
                    // pause only delays dependents, and saves the cores
                    // they compute on.
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
            continue;
        }
        pause = Duration::from_millis(1);
        for (key, json) in done {
            let mut parsed: Result<TaskResult, _> = serde_json::from_str(&json);
            if let Ok(r) = &mut parsed
                && r.ok
                && !r.output.is_some_and(|d| stores.blobs.contains(&d))
            {
                // Done long ago, and its table is gone (gc): again, once.
                let n = requeued.entry(key).or_insert(0u32);
                *n += 1;
                if *n <= 1 && queue.requeue(&key).is_ok() {
                    continue;
                }
                *r = TaskResult::failure(
                    FailureKind::Infra,
                    "the table the worker stored is not in the blob store".into(),
                );
            }
            let Some(waiting) = outstanding.remove(&key) else {
                continue;
            };
            for (id, inputs, since) in waiting {
                let file = &graph.nodes[id].file;
                let mut result = match &parsed {
                    Ok(r) => NodeResult {
                        status: if r.ok {
                            Status::Computed
                        } else {
                            Status::Failed
                        },
                        task_key: Some(key),
                        output: r.output,
                        rows: r.rows,
                        columns: r.columns.clone(),
                        log: r.log,
                        duration: since.elapsed(),
                        error: match &r.error {
                            Some(e) if r.unlocated => Some(format!("{file}: {e}")),
                            e => e.clone(),
                        },
                        failure: r.failure,
                        inputs,
                    },
                    Err(e) => NodeResult {
                        task_key: Some(key),
                        inputs,
                        ..NodeResult::failed(
                            FailureKind::Infra,
                            format!("{file}: the worker's answer cannot be read: {e}"),
                        )
                    },
                };
                let failed_checks = parsed.as_ref().ok().and_then(|r| {
                    r.failed_checks
                        .clone()
                        .map(|(d, rows, columns)| (d, super::table::TableStats { rows, columns }))
                });
                super::record(stores, file, &mut result, failed_checks);
                sched.finish(id, result);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::{Settings, Workspace};
    use crate::pipeline::vfs::MemVfs;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A queue whose "worker" computes each task as it is submitted.
    struct MemQueue {
        worker: Stores,
        rows: Mutex<HashMap<Digest, String>>,
        computed: AtomicUsize,
    }

    impl TaskQueue for MemQueue {
        fn submit(&self, tasks: &[(Digest, String)]) -> anyhow::Result<()> {
            let env = WorkerEnv {
                data_root: None,
                path_env: "/usr/bin:/bin".into(),
                temp_root: None,
            };
            for (key, spec) in tasks {
                // As on PostgreSQL: a task that failed is run again.
                let failed = |j: &String| !serde_json::from_str::<TaskResult>(j).unwrap().ok;
                if self
                    .rows
                    .lock()
                    .unwrap()
                    .get(key)
                    .is_some_and(|j| !failed(j))
                {
                    continue;
                }
                let r = work(spec, &self.worker, &env, &CancelToken::new()).unwrap();
                self.computed.fetch_add(1, Ordering::SeqCst);
                let json = serde_json::to_string(&r).unwrap();
                self.rows.lock().unwrap().insert(*key, json);
            }
            Ok(())
        }

        fn done(&self, keys: &[Digest]) -> anyhow::Result<Vec<(Digest, String)>> {
            let rows = self.rows.lock().unwrap();
            Ok(keys
                .iter()
                .filter_map(|k| Some((*k, rows.get(k)?.clone())))
                .collect())
        }

        fn requeue(&self, key: &Digest) -> anyhow::Result<()> {
            self.rows.lock().unwrap().remove(key);
            Ok(())
        }
    }

    fn workspace() -> Workspace {
        let mut vfs = MemVfs::new();
        vfs.insert(
            "sluice.toml",
            "[project]\nproduction_branch = \"main\"\npipelines = [\"clinics/*\"]\n",
        );
        vfs.insert("clinics/a/T.csv", "id,v\n1,a\n2,b\n3,\n");
        vfs.insert(
            "clinics/a/U.sql",
            "-- @depend ./T\n-- @param N = 1\n-- @key id\n-- @assert rows >= 2\nSELECT id, v FROM T WHERE id >= {{N}};\n",
        );
        vfs.insert(
            "clinics/a/V.sql",
            "-- @depend ./U\nSELECT COUNT(*) AS n FROM U;\n",
        );
        vfs.insert(
            "clinics/a/W.sql",
            "-- @depend ./T\nSELEC nonsense FROM T;\n",
        );
        vfs.insert(
            "clinics/a/X.sql",
            "-- @depend ./T\n-- @assert rows > 5\nSELECT * FROM T;\n",
        );
        Workspace::from_vfs(
            std::path::Path::new("/nonexistent"),
            Box::new(vfs),
            Some("c0ffee".into()),
            Settings::default(),
        )
        .unwrap()
    }

    fn opts() -> RunOptions {
        RunOptions {
            jobs: 2,
            data_root: None,
            path_env: "/usr/bin:/bin".into(),
            source_digests: HashMap::new(),
            cancel: CancelToken::new(),
        }
    }

    #[test]
    fn a_node_survives_the_trip_through_a_task() {
        let ws = workspace();
        for node in &ws.graph.nodes {
            let t = TaskNode::from_node(node);
            let json = serde_json::to_string(&t).unwrap();
            let back: TaskNode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, t);
            let n = back.to_node().unwrap();
            assert_eq!(TaskNode::from_node(&n), t);
            assert_eq!(
                (&n.body, &n.file, &n.asserts),
                (&node.body, &node.file, &node.asserts)
            );
        }
    }

    #[test]
    fn a_worker_whose_source_differs_fails_the_task_as_infra() {
        let mut vfs = MemVfs::new();
        vfs.insert(
            "sluice.toml",
            "[project]\nproduction_branch = \"main\"\npipelines = [\"clinics/*\"]\n",
        );
        vfs.insert(
            "clinics/a/P.sql",
            "-- @source data://p.csv\nSELECT id FROM p;\n",
        );
        let ws = Workspace::from_vfs(
            std::path::Path::new("/nonexistent"),
            Box::new(vfs),
            None,
            Settings::default(),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("p.csv"), "id\n1\n").unwrap();
        let stores = Stores::in_memory().unwrap();
        let planned =
            crate::store::source::source_digest(&stores.memo, &data.path().join("p.csv")).unwrap();
        let p = ws.graph.nodes.iter().position(|n| n.name == "P").unwrap();
        let node = &ws.graph.nodes[p];
        let env = WorkerEnv {
            data_root: Some(data.path().to_path_buf()),
            path_env: "/usr/bin:/bin".into(),
            temp_root: None,
        };
        let spec_with = |digest: Digest| {
            let mut o = opts();
            o.source_digests
                .insert(node.sources[0].path.clone(), digest);
            let h = NodeHashes {
                local: Digest::of(b"local"),
                definition: Digest::of(b"definition"),
            };
            let spec = spec_for(node, &h, &[], &o, &ExecSettings::default());
            serde_json::to_string(&spec).unwrap()
        };
        let ok = work(&spec_with(planned), &stores, &env, &CancelToken::new()).unwrap();
        assert!(ok.ok, "{ok:?}");
        assert_eq!(ok.rows, Some(1));
        let other = Digest::of(b"the planner's copy");
        let bad = work(&spec_with(other), &stores, &env, &CancelToken::new()).unwrap();
        assert!(!bad.ok);
        assert_eq!(bad.failure, Some(FailureKind::Infra));
        assert!(bad.unlocated);
        assert!(bad.error.unwrap().contains("same data_root"));
    }

    #[test]
    fn queued_nodes_give_what_local_threads_give() {
        let mut ws = workspace();
        let (hashes, _) = ws.hashes(None);
        let all: Vec<NodeId> = (0..ws.graph.nodes.len()).collect();
        let quiet = crate::engine::run::Quiet;
        let local_stores = Stores::in_memory().unwrap();
        let local = super::super::execute(&ws.graph, &all, &hashes, &local_stores, &opts(), &quiet);

        let mut stores = Stores::in_memory().unwrap();
        let worker = Stores {
            state: Arc::new(crate::store::state::SqliteState::open_in_memory().unwrap()),
            ..stores.clone()
        };
        let queue = Arc::new(MemQueue {
            worker,
            rows: Mutex::default(),
            computed: AtomicUsize::new(0),
        });
        stores.tasks = Some(queue.clone());
        let queued = super::super::execute(&ws.graph, &all, &hashes, &stores, &opts(), &quiet);
        assert_eq!(queued.len(), local.len());
        for (id, l) in &local {
            let q = &queued[id];
            let name = &ws.graph.nodes[*id].name;
            assert_eq!(
                (
                    q.status, q.task_key, q.output, q.rows, &q.columns, &q.error, q.failure
                ),
                (
                    l.status, l.task_key, l.output, l.rows, &l.columns, &l.error, l.failure
                ),
                "{name}"
            );
        }
        let statuses: Vec<Status> = queued.values().map(|r| r.status).collect();
        assert!(statuses.contains(&Status::Computed) && statuses.contains(&Status::Failed));
        let computed = queue.computed.load(Ordering::SeqCst);
        assert_eq!(computed, 5);
        // The scheduler wrote the cache: a second run computes only what failed.
        let again = super::super::execute(&ws.graph, &all, &hashes, &stores, &opts(), &quiet);
        assert_eq!(queue.computed.load(Ordering::SeqCst), computed + 2);
        let x = ws.graph.nodes.iter().position(|n| n.name == "X").unwrap();
        let u = ws.graph.nodes.iter().position(|n| n.name == "U").unwrap();
        assert_eq!(again[&u].status, Status::Cached);
        // A failed task is submitted again, and a worker runs it again.
        assert_eq!(again[&x].status, Status::Failed);
        // The table of a failed data test is kept for `cat` and `test`.
        let key = again[&x].task_key.unwrap();
        assert!(
            stores
                .state
                .cache_get(&super::super::failed_checks_key(&key))
                .unwrap()
                .is_some()
        );
    }
}
