//! The daemon's state and its background work: the job workers, which
//! fetch a mirror, read the pushed commit from git objects, run it through
//! [`engine::run`](crate::engine::run) and queue the reports; and the outbox,
//! which delivers statuses and comments to the forge in order, retrying
//! with backoff.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::config::{ForgeKind, RepoConfig, Secrets, ServerConfig};
use super::cron::{Cron, Minute};
use super::metrics::{ForgeCall, Metrics};
use super::mirror::Mirrors;
use crate::engine::run::{RunError, RunRequest};
use crate::engine::{Outcome, RunReport, Settings};
use crate::exec::CancelToken;
use crate::exec::task::TaskQueue;
#[cfg(feature = "team")]
use crate::exec::task::WorkerEnv;
use crate::forge::{CommitStatus, Forge, StatusState};
use crate::plan::digest::Digest;
use crate::store::PgConnect;
use crate::store::Stores;
use crate::store::blob::BlobStore;
#[cfg(feature = "team")]
use crate::store::pg::PgState;
#[cfg(feature = "team")]
use crate::store::pg::tasks::{Claimed, PgTasks};
use crate::store::queue::{Enqueued, Job, JobKind, JobState, NewJob, OutboxItem, now_ms};
use crate::store::state::{SqliteState, State};

/// How often the outbox tries a failing call before giving up: with the
/// backoff below, about three hours of forge outage.
const MAX_ATTEMPTS: u32 = 25;
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Makes the forge client of a repository (the real ones in `serve`, a
/// fake in tests); `None` for a repository with no forge API.
pub type ForgeFactory = dyn Fn(&RepoConfig, &Secrets) -> Option<Arc<dyn Forge>>;

/// One configured repository with what serving it takes.
pub struct Repo {
    pub config: RepoConfig,
    pub secrets: Secrets,
    pub forge: Option<Arc<dyn Forge>>,
    /// Its own cache, refs and runs (pipeline names of two repositories
    /// may be equal); blobs are shared.
    pub state: Arc<dyn State>,
    /// Its local database (`state_dir/repos/<id>/state.db`): the source
    /// memo, and the state itself unless it is on PostgreSQL.
    pub memo: Arc<SqliteState>,
    /// Parsed manifests, kept from job to job.
    pub manifests: Arc<crate::store::ManifestCache>,
    /// The last job's plan, from which the next one is made incrementally.
    pub plan_memo: crate::engine::memo::PlanMemo,
}

/// The nice value of job workers (0 is normal, 19 the lowest).
const WORKER_NICE: i32 = 10;

impl Repo {
    /// The repository's key in jobs and the outbox: `github:acme/p`.
    pub fn key(&self) -> String {
        repo_key(&self.config)
    }
}

pub fn repo_key(c: &RepoConfig) -> String {
    format!("{}:{}", c.forge.as_str(), c.name)
}

/// A wake-up call between threads, with a timeout so that nothing can
/// sleep through a lost notification for long.
#[derive(Debug, Default)]
struct Bell {
    rung: Mutex<u64>,
    cv: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let guard = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = *guard;
        let _ = self
            .cv
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Everything the daemon's threads share.
pub struct App {
    pub cfg: ServerConfig,
    pub repos: Vec<Repo>,
    /// Jobs, deliveries and the outbox.
    pub db: Arc<dyn State>,
    pub blobs: Arc<dyn BlobStore>,
    pub metrics: Metrics,
    mirrors: Mirrors,
    path_env: OsString,
    running: Mutex<HashMap<i64, CancelToken>>,
    pub shutdown: CancelToken,
    jobs_bell: Bell,
    outbox_bell: Bell,
    /// The group-commit thread that stores deliveries' jobs (started at
    /// the first delivery).
    enqueuer: OnceLock<std::sync::mpsc::Sender<EnqueueRequest>>,
    /// The queue and its jobs on PostgreSQL: jobs' leases are renewed
    /// through it.
    #[cfg(feature = "team")]
    pg_db: Option<Arc<PgState>>,
    /// The shared node-task queue (state on PostgreSQL): runs send their
    /// cache misses there, and task threads compute them.
    #[cfg(feature = "team")]
    pg_tasks: Option<Arc<PgTasks>>,
    /// The same queue as the scheduler sees it.
    tasks: Option<Arc<dyn TaskQueue>>,
    /// The task threads' own source memo (`state_dir/worker/state.db`).
    #[cfg(feature = "team")]
    worker_memo: OnceLock<Arc<SqliteState>>,
}

/// One delivery's job for the group-commit thread, and where its answer
/// goes.
type EnqueueRequest = (
    NewJob,
    Option<(String, String)>,
    tokio::sync::oneshot::Sender<Result<Enqueued, String>>,
);

/// Deliveries stored in one transaction at most.
const ENQUEUE_BATCH: usize = 256;

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("state_dir", &self.cfg.state_dir)
            .field("repos", &self.repos.len())
            .finish_non_exhaustive()
    }
}

/// A forge call waiting in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Call {
    Status {
        sha: String,
        status: CommitStatus,
    },
    Comment {
        pr: u64,
        sha: String,
        body: String,
    },
    /// A git note on the commit (repositories with `forge = "git"`).
    Note {
        sha: String,
        text: String,
    },
}

impl App {
    /// Opens the stores under `state_dir` (the queue and the state on
    /// PostgreSQL when `shared` is given) and makes each repository's
    /// forge client.
    pub fn open(
        cfg: ServerConfig,
        secrets: Vec<Secrets>,
        path_env: OsString,
        forges: &ForgeFactory,
        shared: Option<&PgConnect>,
    ) -> anyhow::Result<App> {
        let dir = cfg.state_dir.clone();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // On PostgreSQL, the queue has its schema and each repository
        // its own, as each has its own file here.
        #[cfg(feature = "team")]
        let pg_db = match shared {
            Some(connect) => {
                let pg = Arc::new(PgState::open(connect, crate::store::pg::DAEMON_SCHEMA)?);
                pg.set_job_lease(cfg.task_lease);
                Some(pg)
            }
            None => None,
        };
        #[cfg(feature = "team")]
        let db: Arc<dyn State> = match &pg_db {
            Some(pg) => Arc::clone(pg) as Arc<dyn State>,
            None => Arc::new(SqliteState::open(&dir.join("daemon.db"))?),
        };
        #[cfg(not(feature = "team"))]
        let db: Arc<dyn State> = Arc::new(SqliteState::open(&dir.join("daemon.db"))?);
        #[cfg(feature = "team")]
        let pg_tasks = pg_db
            .as_ref()
            .map(|pg| Arc::new(PgTasks::new(Arc::clone(pg), cfg.task_lease)));
        #[cfg(feature = "team")]
        let tasks = pg_tasks
            .as_ref()
            .map(|t| Arc::clone(t) as Arc<dyn TaskQueue>);
        #[cfg(not(feature = "team"))]
        let tasks = None;
        let blobs = crate::store::open_blobs(&dir, &cfg.blobs)?;
        let mut repos = Vec::new();
        for (config, secrets) in cfg.repos.iter().cloned().zip(secrets) {
            let id = Digest::of(repo_key(&config).as_bytes()).hex();
            let memo = Arc::new(SqliteState::open(
                &dir.join("repos").join(&id[..32]).join("state.db"),
            )?);
            let state: Arc<dyn State> = match shared {
                Some(connect) => crate::store::shared::open_state(
                    connect,
                    &crate::store::shared::repo_schema(&id[..32]),
                )?,
                None => Arc::clone(&memo) as Arc<dyn State>,
            };
            let forge = forges(&config, &secrets);
            repos.push(Repo {
                config,
                secrets,
                forge,
                state,
                memo,
                manifests: Arc::default(),
                plan_memo: Default::default(),
            });
        }
        Ok(App {
            mirrors: Mirrors::new(&dir),
            cfg,
            repos,
            db,
            blobs,
            metrics: Metrics::default(),
            path_env,
            running: Mutex::new(HashMap::new()),
            enqueuer: OnceLock::new(),
            #[cfg(feature = "team")]
            pg_db,
            #[cfg(feature = "team")]
            pg_tasks,
            tasks,
            #[cfg(feature = "team")]
            worker_memo: OnceLock::new(),
            shutdown: CancelToken::new(),
            jobs_bell: Bell::default(),
            outbox_bell: Bell::default(),
        })
    }

    pub fn repo(&self, key: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.key() == key)
    }

    /// Indices of the repositories of one forge kind.
    pub fn repos_of(&self, kind: ForgeKind) -> impl Iterator<Item = (usize, &Repo)> {
        self.repos
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.config.forge == kind)
    }

    /// The run page of `run_id`.
    pub fn run_url(&self, run_id: &str) -> String {
        format!("{}/runs/{run_id}", self.cfg.public_url)
    }

    /// Tells the workers that a job is waiting.
    pub fn wake_workers(&self) {
        self.jobs_bell.ring();
    }

    /// Asks a running job to stop (a newer push superseded it).
    pub fn cancel_job(&self, id: i64) {
        if let Some(t) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            t.cancel();
        }
    }

    /// Stops taking jobs and cancels the running ones (they are queued
    /// again and resumed at the next start).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        for t in self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            t.cancel();
        }
        self.jobs_bell.ring();
        self.outbox_bell.ring();
    }

    /// Queues a status for `sha`.
    pub fn queue_status(&self, repo: &str, job_id: i64, sha: &str, status: CommitStatus) {
        let call = Call::Status {
            sha: sha.to_string(),
            status,
        };
        self.queue(repo, job_id, "status", &call);
    }

    fn queue(&self, repo: &str, job_id: i64, kind: &str, call: &Call) {
        let reachable = self.repo(repo).is_some_and(|r| match call {
            Call::Note { .. } => r.config.forge == ForgeKind::Git,
            _ => r.forge.is_some(),
        });
        if !reachable {
            return;
        }
        let payload = match serde_json::to_string(call) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(job = job_id, "cannot encode a forge call: {e}");
                return;
            }
        };
        if let Err(e) = self.db.outbox_push(repo, job_id, kind, &payload) {
            tracing::error!(job = job_id, "cannot queue a forge call: {e:#}");
        }
        self.outbox_bell.ring();
    }

    // -- deliveries -----------------------------------------------------------

    /// Stores a delivery's job; returns once it is committed. Concurrent
    /// deliveries share a transaction (group commit): a commit costs
    /// far more than the rows, and a burst of webhooks is answered in
    /// milliseconds instead of queueing one commit behind another.
    pub async fn enqueue(
        &self,
        job: NewJob,
        delivery: Option<(String, String)>,
    ) -> anyhow::Result<Enqueued> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let sender = self.enqueuer.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<EnqueueRequest>();
            // Its own connection to the database: a delivery never waits
            // behind a worker or the outbox holding the shared one, only
            // (briefly) for SQLite's write lock.
            let db = match self.db.own_connection() {
                Some(Ok(own)) => own,
                _ => Arc::clone(&self.db),
            };
            // The thread ends when the App (the only sender) is dropped.
            let spawned = std::thread::Builder::new()
                .name("sluice-enqueue".into())
                .spawn(move || group_commit(&*db, &rx));
            if let Err(e) = spawned {
                tracing::error!("cannot start the enqueue thread: {e}");
            }
            tx
        });
        sender
            .send((job, delivery, answer))
            .map_err(|_| anyhow::anyhow!("the enqueue thread is gone"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the enqueue thread is gone"))?
            .map_err(|e| anyhow::anyhow!(e))
    }

    // -- job workers ----------------------------------------------------------

    /// A worker thread: takes jobs until shutdown.
    pub fn worker_loop(self: &Arc<Self>) {
        // Below the webhook handlers: a delivery is answered in
        // milliseconds however busy the jobs keep the cores. Linux keeps
        // the nice value per thread; the run's threads and the processes
        // it starts (git, command nodes) inherit it.
        if let Err(e) = rustix::process::setpriority_process(None, WORKER_NICE) {
            tracing::debug!("cannot lower the worker's priority: {e}");
        }
        while !self.shutdown.is_cancelled() {
            match self.db.claim_job() {
                Ok(Some(job)) => self.run_job(job),
                Ok(None) => self.jobs_bell.wait(Duration::from_secs(1)),
                Err(e) => {
                    tracing::error!("cannot read the job queue: {e:#}");
                    self.jobs_bell.wait(Duration::from_secs(1));
                }
            }
        }
    }

    fn run_job(&self, job: Job) {
        let token = CancelToken::new();
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.id, token.clone());
        if self.shutdown.is_cancelled() {
            token.cancel();
        }
        tracing::info!(job = job.id, run = %job.run_id, repo = %job.repo, sha = %job.sha, "job started");
        #[cfg(feature = "team")]
        let outcome = match &self.pg_db {
            // On a shared queue the job is held by a lease: renewed while
            // it runs, so that another daemon takes it only if this one dies.
            Some(pg) => {
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let (token, job) = (&token, &job);
                std::thread::scope(|s| {
                    s.spawn(move || {
                        let every = self.cfg.task_lease / 3;
                        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                            stopped.recv_timeout(every)
                        {
                            match pg.renew_job_lease(job.id) {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::warn!(
                                        job = job.id,
                                        "the job's lease was lost (another daemon took it over); stopping"
                                    );
                                    token.cancel();
                                    return;
                                }
                                Err(e) => tracing::warn!(job = job.id, "cannot renew the job's lease: {e:#}"),
                            }
                        }
                    });
                    let outcome = self.execute(job, token);
                    drop(stop);
                    outcome
                })
            }
            None => self.execute(&job, &token),
        };
        #[cfg(not(feature = "team"))]
        let outcome = self.execute(&job, &token);
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job.id);
        let result = match outcome {
            Ok(Some(report)) => self.finish(&job, &token, report),
            Ok(None) => self
                .db
                .finish_job(job.id, JobState::Done, Some("error"), None),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(job = job.id, "cannot record the end of the job: {e:#}");
        }
    }

    /// Runs a job; `Ok(None)` when it ended before a report could be made
    /// (the statuses saying why are queued).
    fn execute(&self, job: &Job, cancel: &CancelToken) -> anyhow::Result<Option<RunReport>> {
        let Some(repo) = self.repo(&job.repo) else {
            tracing::warn!(job = job.id, "the job's repository is no longer configured");
            return Ok(None);
        };
        let key = repo.key();
        let target = Some(self.run_url(&job.run_id));
        let fail = |state: StatusState, description: String| {
            tracing::warn!(job = job.id, "{description}");
            self.queue_status(
                &key,
                job.id,
                &job.sha,
                status(
                    state,
                    "sluice".into(),
                    crate::forge::truncate_chars(&description, 139).to_string(),
                    target.clone(),
                ),
            );
        };
        let mirror = match self.mirrors.fetch(
            repo.config.forge.as_str(),
            &repo.config.name,
            &repo.config.clone_url,
        ) {
            Ok(m) => m,
            Err(e) => {
                fail(
                    StatusState::Error,
                    format!("cannot fetch the repository: {e:#}"),
                );
                return Ok(None);
            }
        };
        let settings = Settings {
            data_root: Some(self.cfg.data_root.clone()),
            state_dir: None,
            blobs: Default::default(),
            state: None,
            path_env: self.path_env.clone(),
        };
        let planning = std::time::Instant::now();
        let (mut ws, planned) = match repo.plan_memo.open(&mirror, &job.sha, settings) {
            Ok(opened) => opened,
            Err(e) => {
                fail(
                    StatusState::Error,
                    format!("cannot read commit {}: {e:#}", short(&job.sha)),
                );
                return Ok(None);
            }
        };
        let opened_in = planning.elapsed();
        let stores = Stores {
            blobs: Arc::clone(&self.blobs),
            state: Arc::clone(&repo.state),
            memo: Arc::clone(&repo.memo),
            manifests: Arc::clone(&repo.manifests),
            tasks: self.tasks.clone(),
        };
        let pipelines: Vec<String> = ws.graph.pipelines.iter().map(|p| p.to_string()).collect();
        if ws.diagnostics.is_empty() {
            for p in &pipelines {
                self.queue_status(
                    &key,
                    job.id,
                    &job.sha,
                    status(
                        StatusState::Pending,
                        crate::report::context(p),
                        crate::report::pending_description().to_string(),
                        target.clone(),
                    ),
                );
            }
        }
        // The plan (the graph and its hashes), timed apart from queueing
        // the statuses; the run below reuses the hashes.
        let mut plan_time = opened_in;
        if ws.diagnostics.is_empty() {
            let hashing = std::time::Instant::now();
            let _ = ws.hashes(Some(&stores.memo));
            plan_time += hashing.elapsed();
        }
        tracing::info!(
            job = job.id,
            plan_ms = format_args!("{:.1}", plan_time.as_secs_f64() * 1000.0),
            nodes = ws.graph.nodes.len(),
            "planned ({planned})"
        );
        let branch = job.branch.clone();
        let promote = job.kind != JobKind::PullRequest
            && branch.as_deref() == Some(repo.config.production_branch.as_str());
        let req = RunRequest {
            pipelines: Vec::new(),
            nodes: None,
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            promote,
            git_ref: Some(branch.unwrap_or_else(|| match job.pr_number {
                Some(n) => format!("pr/{n}"),
                None => job.git_ref.clone(),
            })),
            cancel: cancel.clone(),
            observer: &self.metrics,
        };
        let result = crate::engine::run::run(&mut ws, &stores, &req);
        repo.plan_memo.keep(ws);
        match result {
            Ok(mut report) => {
                report.run_id = Some(job.run_id.clone());
                Ok(Some(report))
            }
            Err(RunError::Invalid(diags)) => {
                fail(
                    StatusState::Failure,
                    crate::report::problems_description(&diags),
                );
                let report = RunReport {
                    run_id: Some(job.run_id.clone()),
                    commit: Some(job.sha.clone()),
                    git_ref: Some(job.git_ref.clone()),
                    started_at: crate::store::state::now_rfc3339(),
                    duration_ms: 0,
                    outcome: Outcome::Failure,
                    pipelines: Vec::new(),
                    problems: diags.iter().map(|d| d.to_string()).collect(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                };
                self.store_report(job, &report, JobState::Done)?;
                Ok(None)
            }
            Err(e) => {
                fail(StatusState::Error, format!("the run failed: {e:#}"));
                Ok(None)
            }
        }
    }

    fn store_report(&self, job: &Job, report: &RunReport, state: JobState) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(report).context("cannot encode the report")?;
        let digest = self.blobs.put(&bytes).context("cannot store the report")?;
        self.db
            .finish_job(job.id, state, Some(report.outcome.as_str()), Some(&digest))
    }

    /// Records a job's report and queues what the forge must be told.
    fn finish(&self, job: &Job, cancel: &CancelToken, report: RunReport) -> anyhow::Result<()> {
        if cancel.is_cancelled() {
            let superseded = self.db.job(job.id)?.and_then(|j| j.superseded_by);
            if superseded.is_none() {
                // Shutdown: run it again at the next start.
                tracing::info!(job = job.id, "job interrupted by shutdown; queued again");
                self.db.requeue_running(Some(job.id))?;
                return Ok(());
            }
            self.store_report(job, &report, JobState::Superseded)?;
            for p in &report.pipelines {
                self.queue_status(
                    &job.repo,
                    job.id,
                    &job.sha,
                    status(
                        StatusState::Cancelled,
                        crate::report::context(&p.pipeline),
                        "superseded by a newer push".into(),
                        Some(self.run_url(&job.run_id)),
                    ),
                );
            }
            tracing::info!(job = job.id, "job superseded");
            return Ok(());
        }
        self.store_report(job, &report, JobState::Done)?;
        let target = Some(self.run_url(&job.run_id));
        for p in &report.pipelines {
            let state = StatusState::from(p.outcome);
            self.queue_status(
                &job.repo,
                job.id,
                &job.sha,
                status(
                    state,
                    crate::report::context(&p.pipeline),
                    crate::report::status_description(p),
                    target.clone(),
                ),
            );
        }
        if self.repo(&job.repo).map(|r| r.config.forge) == Some(ForgeKind::Git) {
            let text = crate::report::plain_text(&report, target.as_deref());
            let call = Call::Note {
                sha: job.sha.clone(),
                text,
            };
            self.queue(&job.repo, job.id, "note", &call);
        }
        if let Some(pr) = job.pr_number {
            let max_chars = match self.repo(&job.repo).map(|r| r.config.forge) {
                Some(ForgeKind::Gitlab) => 1_000_000,
                _ => 65_536,
            };
            let body = crate::report::comment_markdown(
                &report,
                &crate::report::CommentOptions {
                    run_url: target.clone(),
                    max_chars: max_chars - 1_000,
                },
            );
            let call = Call::Comment {
                pr,
                sha: job.sha.clone(),
                body,
            };
            self.queue(&job.repo, job.id, "comment", &call);
        }
        tracing::info!(
            job = job.id,
            outcome = report.outcome.as_str(),
            "job finished"
        );
        Ok(())
    }

    /// The stored report of a run, if it finished.
    pub fn report(&self, job: &Job) -> anyhow::Result<Option<RunReport>> {
        let Some(d) = job.report else {
            return Ok(None);
        };
        let bytes = self.blobs.get(&d).context("cannot read the report")?;
        Ok(Some(
            serde_json::from_slice(&bytes).context("the stored report is not valid")?,
        ))
    }

    /// A command log, for the run page when the admin allows it.
    pub fn log(&self, digest: &Digest) -> Option<String> {
        let bytes = self.blobs.get(digest).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    // -- node tasks -----------------------------------------------------------

    /// Whether this daemon has a shared node-task queue (state on
    /// PostgreSQL).
    pub fn has_task_queue(&self) -> bool {
        #[cfg(feature = "team")]
        {
            self.pg_tasks.is_some()
        }
        #[cfg(not(feature = "team"))]
        {
            false
        }
    }

    /// A task thread: without the shared stores there is no queue.
    #[cfg(not(feature = "team"))]
    pub fn task_loop(self: &Arc<Self>) {}

    /// A task thread: claims node tasks from the shared queue and computes
    /// them until shutdown. Returns at once without a shared queue.
    #[cfg(feature = "team")]
    pub fn task_loop(self: &Arc<Self>) {
        let Some(queue) = self.pg_tasks.clone() else {
            return;
        };
        if let Err(e) = rustix::process::setpriority_process(None, WORKER_NICE) {
            tracing::debug!("cannot lower the task thread's priority: {e}");
        }
        let memo = match self.worker_memo.get() {
            Some(m) => Arc::clone(m),
            None => {
                let path = self.cfg.state_dir.join("worker").join("state.db");
                match SqliteState::open(&path) {
                    Ok(m) => Arc::clone(self.worker_memo.get_or_init(|| Arc::new(m))),
                    Err(e) => {
                        tracing::error!("cannot open {}: {e:#}", path.display());
                        return;
                    }
                }
            }
        };
        let stores = Stores {
            blobs: Arc::clone(&self.blobs),
            // Only to forget a damaged input's cache entries (none here):
            // the scheduler writes the cache of its own repository.
            state: Arc::clone(&self.db),
            memo,
            manifests: Arc::default(),
            tasks: None,
        };
        let env = WorkerEnv {
            data_root: Some(self.cfg.data_root.clone()),
            path_env: self.path_env.clone(),
            temp_root: Some(self.cfg.state_dir.join("tmp")),
        };
        let mut listener = None;
        let mut pruned = std::time::Instant::now();
        while !self.shutdown.is_cancelled() {
            let claimed = match queue.claim() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("cannot read the task queue: {e:#}");
                    self.jobs_bell.wait(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(task) = claimed else {
                let died = crate::exec::task::TaskResult::failure(
                    crate::exec::FailureKind::Infra,
                    format!(
                        "the workers computing this node died {} times (each lost its lease); \
                         see their logs",
                        crate::store::pg::tasks::MAX_ATTEMPTS
                    ),
                );
                if let Ok(json) = serde_json::to_string(&died)
                    && let Err(e) = queue.fail_abandoned(&json)
                {
                    tracing::warn!("cannot fail abandoned tasks: {e:#}");
                }
                // Done tasks are kept a day (a restarted daemon's job finds
                // them), then deleted by whichever idle worker comes first.
                if pruned.elapsed() > Duration::from_secs(600) {
                    pruned = std::time::Instant::now();
                    if let Err(e) = queue.prune_done(Duration::from_secs(24 * 3600)) {
                        tracing::warn!("cannot prune done tasks: {e:#}");
                    }
                }
                if listener.is_none() {
                    listener = queue
                        .listener()
                        .map_err(|e| tracing::warn!("cannot listen for tasks: {e:#}"))
                        .ok();
                }
                match &mut listener {
                    Some(l) => {
                        l.wait(Duration::from_millis(500));
                    }
                    None => self.jobs_bell.wait(Duration::from_millis(200)),
                }
                continue;
            };
            self.work_task(&queue, &task, &stores, &env);
        }
    }

    /// Computes one claimed task while a heartbeat renews its lease, and
    /// completes it (fenced by its attempt), or releases it at shutdown.
    #[cfg(feature = "team")]
    fn work_task(&self, queue: &PgTasks, task: &Claimed, stores: &Stores, env: &WorkerEnv) {
        tracing::debug!(task = task.id, attempt = task.attempt, "task claimed");
        let cancel = &CancelToken::new();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let outcome = std::thread::scope(|s| {
            s.spawn(move || {
                let every = queue.lease() / 3;
                let mut last = std::time::Instant::now();
                loop {
                    match stopped.recv_timeout(Duration::from_millis(100).min(every)) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if self.shutdown.is_cancelled() {
                        cancel.cancel();
                    }
                    if last.elapsed() < every {
                        continue;
                    }
                    last = std::time::Instant::now();
                    match queue.heartbeat(task) {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                task = task.id,
                                "the task's lease was lost; stopping it"
                            );
                            cancel.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(task = task.id, "cannot renew the task's lease: {e:#}")
                        }
                    }
                }
            });
            let worked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::exec::task::work(&task.spec, stores, env, cancel)
            }));
            drop(stop);
            worked
        });
        let result = match outcome {
            Ok(Some(r)) => r,
            Ok(None) => {
                match queue.release(task) {
                    Ok(_) => tracing::info!(task = task.id, "task released"),
                    Err(e) => tracing::warn!(task = task.id, "cannot release the task: {e:#}"),
                }
                return;
            }
            Err(_) => crate::exec::task::TaskResult::failure(
                crate::exec::FailureKind::Infra,
                "internal error while running this node (a bug in sluice)".into(),
            ),
        };
        let json = match serde_json::to_string(&result) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(task = task.id, "cannot encode a task's result: {e}");
                return;
            }
        };
        match queue.complete(task, result.ok, &json) {
            Ok(true) => tracing::debug!(task = task.id, ok = result.ok, "task done"),
            Ok(false) => tracing::warn!(
                task = task.id,
                "the task was taken over after its lease expired; this result is dropped"
            ),
            Err(e) => tracing::error!(task = task.id, "cannot complete the task: {e:#}"),
        }
    }

    // -- schedules ------------------------------------------------------------

    /// The scheduler thread: at each minute a repository's `schedule`
    /// matches, production is run again at the production branch's head
    /// (new source data is picked up). Returns at once when no repository
    /// has a schedule.
    pub fn schedule_loop(self: &Arc<Self>) {
        let crons: Vec<(usize, Cron)> = self
            .repos
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let expr = r.config.schedule.as_deref()?;
                match Cron::parse(expr) {
                    Ok(c) => Some((i, c)),
                    Err(e) => {
                        tracing::error!(repo = %r.key(), "schedule ignored: {e}");
                        None
                    }
                }
            })
            .collect();
        if crons.is_empty() {
            return;
        }
        let mut last_minute = None;
        while !self.shutdown.is_cancelled() {
            let now = now_ms() / 1000;
            let minute = now / 60;
            if last_minute != Some(minute) {
                last_minute = Some(minute);
                let t = Minute::of_unix(now);
                for (i, cron) in &crons {
                    if cron.matches(t)
                        && let Err(e) = self.fire_schedule(*i, minute)
                    {
                        tracing::error!(repo = %self.repos[*i].key(), "scheduled run not queued: {e:#}");
                    }
                }
            }
            // Wake a little after the next minute begins (or at shutdown).
            let to_next = 60 - now % 60;
            self.jobs_bell
                .wait(Duration::from_secs(to_next as u64 + 1).min(Duration::from_secs(30)));
        }
    }

    /// Queues a production run of repository `idx` at its production
    /// branch's head, once per `minute` (also across restarts).
    pub fn fire_schedule(&self, idx: usize, minute: i64) -> anyhow::Result<Option<i64>> {
        let repo = &self.repos[idx];
        let c = &repo.config;
        let mirror = self
            .mirrors
            .fetch(c.forge.as_str(), &c.name, &c.clone_url)?;
        let git_ref = format!("refs/heads/{}", c.production_branch);
        let sha =
            crate::git::GitVfs::open_bare(&mirror, &git_ref, &crate::pipeline::RepoPath::root())?
                .commit_id();
        let job = NewJob {
            repo: repo.key(),
            kind: JobKind::Schedule,
            lane: git_ref.clone(),
            git_ref,
            branch: Some(c.production_branch.clone()),
            sha,
            pr_number: None,
            run_id: new_run_id()?,
        };
        let id = match self
            .db
            .enqueue(&job, Some((&format!("schedule:{minute}"), "schedule")))?
        {
            Enqueued::Duplicate => None,
            Enqueued::Queued { job: id, .. } => {
                tracing::info!(job = id, repo = %job.repo, sha = %job.sha, "scheduled run queued");
                Some(id)
            }
        };
        self.wake_workers();
        Ok(id)
    }

    // -- outbox ---------------------------------------------------------------

    /// The outbox thread: delivers due calls until shutdown.
    pub fn outbox_loop(self: &Arc<Self>) {
        while !self.shutdown.is_cancelled() {
            match self.db.outbox_next(now_ms()) {
                Ok(Some(item)) => self.deliver(&item),
                Ok(None) => {
                    let wait = match self.db.outbox_next_due() {
                        Ok(Some(at)) => {
                            Duration::from_millis((at - now_ms()).clamp(10, 1_000) as u64)
                        }
                        _ => Duration::from_secs(1),
                    };
                    self.outbox_bell.wait(wait);
                }
                Err(e) => {
                    tracing::error!("cannot read the outbox: {e:#}");
                    self.outbox_bell.wait(Duration::from_secs(1));
                }
            }
        }
    }

    fn deliver(&self, item: &OutboxItem) {
        let call: Call = match serde_json::from_str(&item.payload) {
            Ok(c) => c,
            Err(_) => {
                let _ = self.db.outbox_drop(item.id, "unreadable outbox entry");
                return;
            }
        };
        if let Call::Note { sha, text } = &call {
            self.deliver_note(item, sha, text);
            return;
        }
        let repo = self.repo(&item.repo);
        let Some((repo, forge)) = repo.and_then(|r| Some((r, r.forge.as_ref()?))) else {
            let _ = self.db.outbox_drop(item.id, "the repository has no forge");
            return;
        };
        let name = &repo.config.name;
        let result = match &call {
            Call::Status { sha, status } => forge.set_status(name, sha, status).map(|_| None),
            Call::Note { .. } => Ok(None),
            Call::Comment { pr, sha, body } => match forge.pr_head(name, *pr) {
                Ok(head) if !head.eq_ignore_ascii_case(sha) => {
                    tracing::info!(
                        job = item.job_id,
                        pr,
                        "the PR head moved on; comment not posted"
                    );
                    let _ = self.db.outbox_drop(item.id, "the PR head moved on");
                    self.metrics.forge_call(ForgeCall::Ok);
                    return;
                }
                Ok(_) => {
                    let known = self.db.comment_id(&item.repo, *pr).ok().flatten();
                    forge
                        .upsert_comment(name, *pr, crate::report::MARKER, body, known)
                        .map(|id| Some((*pr, id)))
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(comment) => {
                if let Some((pr, id)) = comment
                    && let Err(e) = self.db.set_comment_id(&item.repo, pr, id)
                {
                    tracing::error!("cannot remember the comment id: {e:#}");
                }
                self.metrics.forge_call(ForgeCall::Ok);
                let _ = self.db.outbox_done(item.id);
            }
            Err(e) if e.is_retryable() && item.attempts + 1 < MAX_ATTEMPTS => {
                let wait = e.wait_before_retry(item.attempts, MAX_BACKOFF);
                tracing::warn!(
                    job = item.job_id,
                    attempt = item.attempts + 1,
                    "forge call failed ({e}); retrying in {} s",
                    wait.as_secs_f64()
                );
                self.metrics.forge_call(ForgeCall::Retried);
                let _ = self.db.outbox_retry(
                    item.id,
                    now_ms() + wait.as_millis() as i64,
                    &e.to_string(),
                );
            }
            Err(e) => {
                tracing::error!(job = item.job_id, "forge call dropped: {e}");
                self.metrics.forge_call(ForgeCall::Dropped);
                let _ = self.db.outbox_drop(item.id, &e.to_string());
            }
        }
    }
}

/// A commit status.
pub fn status(
    state: StatusState,
    context: String,
    description: String,
    target_url: Option<String>,
) -> CommitStatus {
    CommitStatus {
        state,
        context,
        description,
        target_url,
    }
}

impl App {
    /// Writes a git note; a failure (the git server unreachable, a race on
    /// the notes ref) is retried like a forge call.
    fn deliver_note(&self, item: &OutboxItem, sha: &str, text: &str) {
        let Some(repo) = self.repo(&item.repo) else {
            let _ = self
                .db
                .outbox_drop(item.id, "the repository is no longer configured");
            return;
        };
        let c = &repo.config;
        match self
            .mirrors
            .write_note(c.forge.as_str(), &c.name, &c.clone_url, sha, text)
        {
            Ok(()) => {
                self.metrics.forge_call(ForgeCall::Ok);
                let _ = self.db.outbox_done(item.id);
            }
            Err(e) if item.attempts + 1 < MAX_ATTEMPTS => {
                tracing::warn!(job = item.job_id, "git note not written ({e:#}); retrying");
                self.metrics.forge_call(ForgeCall::Retried);
                let wait = crate::forge::backoff(item.attempts, MAX_BACKOFF);
                let _ = self.db.outbox_retry(
                    item.id,
                    now_ms() + wait.as_millis() as i64,
                    &format!("{e:#}"),
                );
            }
            Err(e) => {
                tracing::error!(job = item.job_id, "git note dropped: {e:#}");
                self.metrics.forge_call(ForgeCall::Dropped);
                let _ = self.db.outbox_drop(item.id, &format!("{e:#}"));
            }
        }
    }
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// A fresh run id: 128 random bits, so run pages cannot be guessed.
pub fn new_run_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a run id: {e}"))?;
    let mut s = String::from("r_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// True for a string [`new_run_id`] could have made.
pub fn is_run_id(s: &str) -> bool {
    s.strip_prefix("r_")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The group-commit loop: waits for a delivery, takes every other one
/// already waiting, stores them in one transaction and answers each.
fn group_commit(db: &dyn State, rx: &std::sync::mpsc::Receiver<EnqueueRequest>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < ENQUEUE_BATCH
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        let items: Vec<(&NewJob, Option<(&str, &str)>)> = batch
            .iter()
            .map(|(job, d, _)| (job, d.as_ref().map(|(id, ev)| (id.as_str(), ev.as_str()))))
            .collect();
        match db.enqueue_many(&items) {
            Ok(done) => {
                for ((_, _, answer), e) in batch.into_iter().zip(done) {
                    let _ = answer.send(Ok(e));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for (_, _, answer) in batch {
                    let _ = answer.send(Err(msg.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::forge::{FakeCall, FakeForge, ForgeError};
    use std::process::Command;

    fn git(dir: &std::path::Path, args: &[&str]) {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=T",
                "-c",
                "user.email=t@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(dir)
            .env_remove("GIT_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An app serving one repository (pushed to a bare origin) with a fake
    /// forge.
    fn app(tmp: &std::path::Path, schedule: &str) -> (Arc<App>, Arc<FakeForge>) {
        let work = tmp.join("work");
        std::fs::create_dir_all(work.join("clinics/a")).unwrap();
        std::fs::write(
            work.join("sluice.toml"),
            "[project]\nproduction_branch = \"main\"\npipelines = [\"clinics/*\"]\n",
        )
        .unwrap();
        std::fs::write(work.join("clinics/a/T.csv"), "id\n1\n2\n").unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        let bare = tmp.join("origin.git");
        git(tmp, &["clone", "-q", "--bare", "work", "origin.git"]);
        std::fs::create_dir_all(tmp.join("data")).unwrap();
        let cfg = crate::server::config::parse(&format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://s.test\"\nstate_dir = \"{}\"\ndata_root = \"{}\"\nworkers = 1\n\
             [[repos]]\nforge = \"github\"\nname = \"acme/p\"\nclone_url = \"{}\"\napi_url = \"http://forge.test\"\n\
             production_branch = \"main\"\nsecret_env = \"S\"\ntoken_env = \"T\"\n{schedule}",
            tmp.join("state").display(),
            tmp.join("data").display(),
            bare.display()
        ))
        .unwrap();
        let secrets = crate::server::config::resolve_secrets(&cfg, &|_| Some("x".into())).unwrap();
        let fake = Arc::new(FakeForge::new());
        let f2 = Arc::clone(&fake);
        let factory =
            move |_: &RepoConfig, _: &Secrets| -> Option<Arc<dyn Forge>> { Some(f2.clone()) };
        let app = App::open(cfg, secrets, "/usr/bin:/bin".into(), &factory, None).unwrap();
        (Arc::new(app), fake)
    }

    /// Delivers every queued call, as if time had passed.
    fn drain(app: &App) {
        while let Some(item) = app.db.outbox_next(i64::MAX).unwrap() {
            app.deliver(&item);
        }
    }

    #[test]
    fn a_scheduled_run_fires_once_per_minute_and_promotes() {
        let tmp = tempfile::tempdir().unwrap();
        let (app, fake) = app(tmp.path(), "schedule = \"0 2 * * *\"\n");
        let id = app.fire_schedule(0, 29_000_000).unwrap();
        assert!(id.is_some());
        assert_eq!(
            app.fire_schedule(0, 29_000_000).unwrap(),
            None,
            "same minute: once"
        );
        let job = app.db.claim_job().unwrap().unwrap();
        assert_eq!(job.kind, JobKind::Schedule);
        app.run_job(job.clone());
        let job = app.db.job(job.id).unwrap().unwrap();
        assert_eq!(
            (job.state, job.outcome.as_deref()),
            (JobState::Done, Some("success"))
        );
        let report = app.report(&job).unwrap().unwrap();
        assert!(report.pipelines[0].promoted);
        drain(&app);
        let last = fake
            .last_status("acme/p", &job.sha, "sluice/clinics/a")
            .unwrap();
        assert_eq!(last.state, StatusState::Success);
    }

    #[test]
    fn the_outbox_retries_then_gives_up_on_a_lasting_refusal() {
        let tmp = tempfile::tempdir().unwrap();
        let (app, fake) = app(tmp.path(), "");
        let key = app.repos[0].key();
        fake.fail_next(1, ForgeError::http(502, "bad gateway"));
        app.queue_status(
            &key,
            1,
            "abc",
            status(StatusState::Pending, "sluice/x".into(), "d".into(), None),
        );
        let item = app.db.outbox_next(i64::MAX).unwrap().unwrap();
        app.deliver(&item);
        // Retried later, not dropped; delivered on the next try.
        assert_eq!(app.db.outbox_pending().unwrap(), 1);
        assert!(
            app.db.outbox_next(now_ms()).unwrap().is_none(),
            "waits its backoff"
        );
        drain(&app);
        assert_eq!(fake.calls().len(), 1);
        // A 422 (say, a description too long) is not retried.
        fake.fail_next(1, ForgeError::http(422, "validation failed"));
        app.queue_status(
            &key,
            1,
            "abc",
            status(StatusState::Success, "sluice/x".into(), "d".into(), None),
        );
        drain(&app);
        assert_eq!(app.db.outbox_pending().unwrap(), 0);
        assert_eq!(fake.calls().len(), 1);
    }

    #[test]
    fn a_comment_is_not_posted_when_the_head_moved_on() {
        let tmp = tempfile::tempdir().unwrap();
        let (app, fake) = app(tmp.path(), "");
        let key = app.repos[0].key();
        fake.set_pr_head("acme/p", 4, "newer");
        app.queue(
            &key,
            1,
            "comment",
            &Call::Comment {
                pr: 4,
                sha: "older".into(),
                body: "x".into(),
            },
        );
        drain(&app);
        assert!(fake.comments("acme/p", 4).is_empty());
        app.queue(
            &key,
            1,
            "comment",
            &Call::Comment {
                pr: 4,
                sha: "newer".into(),
                body: "one".into(),
            },
        );
        app.queue(
            &key,
            1,
            "comment",
            &Call::Comment {
                pr: 4,
                sha: "newer".into(),
                body: "two".into(),
            },
        );
        drain(&app);
        let comments = fake.comments("acme/p", 4);
        assert_eq!(comments.len(), 1);
        assert_eq!(comments[0].1, "two");
        assert!(
            fake.calls()
                .iter()
                .any(|c| matches!(c, FakeCall::Comment { .. }))
        );
    }

    #[test]
    fn rate_limits_and_retry_after_set_the_wait() {
        let e = ForgeError::Http {
            status: 403,
            retry_after: None,
            rate_limit_reset: Some((now_ms() / 1000) as u64 + 30),
            rate_limit_remaining: Some(0),
            message: String::new(),
        };
        let w = e.wait_before_retry(0, MAX_BACKOFF);
        assert!((29..=32).contains(&w.as_secs()), "{w:?}");
        let e = ForgeError::Http {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
            rate_limit_reset: None,
            rate_limit_remaining: None,
            message: String::new(),
        };
        assert_eq!(e.wait_before_retry(5, MAX_BACKOFF), Duration::from_secs(7));
        assert_eq!(
            ForgeError::Transport("x".into()).wait_before_retry(3, MAX_BACKOFF),
            Duration::from_secs(8)
        );
        assert_eq!(
            ForgeError::Transport("x".into()).wait_before_retry(30, MAX_BACKOFF),
            MAX_BACKOFF
        );
    }

    #[test]
    fn run_ids_are_random_and_checked() {
        let a = new_run_id().unwrap();
        assert!(is_run_id(&a));
        assert_ne!(a, new_run_id().unwrap());
        for bad in [
            "",
            "r_",
            "r_../../x",
            "r_0123456789abcdef0123456789abcdeg",
            "x_0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_run_id(bad), "{bad}");
        }
    }
}
