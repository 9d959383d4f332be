//! The HTTP side: [`router`] (handlers kept thin, testable without a
//! socket) and [`serve`], which binds, starts the workers and the outbox,
//! and shuts down gracefully on SIGTERM or Ctrl-C.
//!
//! A delivery is authenticated on its raw bytes before anything parses it;
//! its job is committed to the database before the answer goes out.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::app::{App, is_run_id, new_run_id};
use super::config::ForgeKind;
use super::metrics::Delivery;
use super::webhook::{self, Event, PrAction};
use crate::forge::StatusState;
use crate::store::queue::{Enqueued, JobKind, NewJob};

/// GitHub and GitLab send at most 25 MB.
const BODY_LIMIT: usize = 25 * 1024 * 1024;

/// The daemon's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/gitea", post(gitea))
        .route("/hooks/gitlab", post(gitlab))
        .route("/hooks/git", post(git_hook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/runs/{id}", get(run_page))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn unauthorized(app: &App, forge: &str) -> Response {
    app.metrics.delivery(Delivery::Unauthorized);
    tracing::warn!(forge, "delivery refused: bad or missing signature");
    text(StatusCode::UNAUTHORIZED, "bad or missing signature\n")
}

fn bad_request(app: &App, forge: &str, why: String) -> Response {
    app.metrics.delivery(Delivery::BadRequest);
    tracing::warn!(forge, "delivery refused: {why}");
    text(StatusCode::BAD_REQUEST, format!("{why}\n"))
}

async fn github(State(app): State<Arc<App>>, h: HeaderMap, body: Bytes) -> Response {
    let sig = header_str(&h, "x-hub-signature-256");
    let matched: Vec<usize> = app
        .repos_of(ForgeKind::Github)
        .filter(|(_, r)| webhook::verify_hub_signature(r.secrets.secret.expose(), &body, sig))
        .map(|(i, _)| i)
        .collect();
    if matched.is_empty() {
        return unauthorized(&app, "github");
    }
    let Some(event) = header_str(&h, "x-github-event") else {
        return bad_request(&app, "github", "no X-GitHub-Event header".into());
    };
    match webhook::parse_github(event, &body) {
        Ok(ev) => accept(app, ForgeKind::Github, &matched, ev, &h, event).await,
        Err(e) => bad_request(&app, "github", e.to_string()),
    }
}

async fn gitea(State(app): State<Arc<App>>, h: HeaderMap, body: Bytes) -> Response {
    let hub = header_str(&h, "x-hub-signature-256");
    let bare = header_str(&h, "x-gitea-signature");
    let matched: Vec<usize> = app
        .repos_of(ForgeKind::Gitea)
        .filter(|(_, r)| {
            let s = r.secrets.secret.expose();
            webhook::verify_hub_signature(s, &body, hub)
                || webhook::verify_gitea_signature(s, &body, bare)
        })
        .map(|(i, _)| i)
        .collect();
    if matched.is_empty() {
        return unauthorized(&app, "gitea");
    }
    let Some(event) = header_str(&h, "x-gitea-event").or_else(|| header_str(&h, "x-github-event"))
    else {
        return bad_request(&app, "gitea", "no X-Gitea-Event header".into());
    };
    match webhook::parse_gitea(event, &body) {
        Ok(ev) => accept(app, ForgeKind::Gitea, &matched, ev, &h, event).await,
        Err(e) => bad_request(&app, "gitea", e.to_string()),
    }
}

async fn gitlab(State(app): State<Arc<App>>, h: HeaderMap, body: Bytes) -> Response {
    let token = header_str(&h, "x-gitlab-token");
    let matched: Vec<usize> = app
        .repos_of(ForgeKind::Gitlab)
        .filter(|(_, r)| webhook::verify_token(r.secrets.secret.expose(), token))
        .map(|(i, _)| i)
        .collect();
    if matched.is_empty() {
        return unauthorized(&app, "gitlab");
    }
    let Some(event) = header_str(&h, "x-gitlab-event") else {
        return bad_request(&app, "gitlab", "no X-Gitlab-Event header".into());
    };
    match webhook::parse_gitlab(event, &body) {
        Ok(ev) => accept(app, ForgeKind::Gitlab, &matched, ev, &h, event).await,
        Err(e) => bad_request(&app, "gitlab", e.to_string()),
    }
}

async fn git_hook(State(app): State<Arc<App>>, h: HeaderMap, body: Bytes) -> Response {
    let auth = header_str(&h, "authorization");
    let matched: Vec<usize> = app
        .repos_of(ForgeKind::Git)
        .filter(|(_, r)| webhook::verify_bearer(r.secrets.secret.expose(), auth))
        .map(|(i, _)| i)
        .collect();
    if matched.is_empty() {
        return unauthorized(&app, "git");
    }
    let update = match webhook::parse_git_hook(&body) {
        Ok(u) => u,
        Err(e) => return bad_request(&app, "git", e.to_string()),
    };
    let mut runs = Vec::new();
    for u in update.updates {
        let ev = Event::Push {
            repo: update.repo.clone(),
            branch: u.git_ref.strip_prefix("refs/heads/").map(str::to_string),
            deleted: u.new.bytes().all(|b| b == b'0'),
            git_ref: u.git_ref,
            before: u.old,
            after: u.new,
        };
        match enqueue_event(&app, ForgeKind::Git, &matched, ev, None).await {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => {}
            Err(r) => return r,
        }
    }
    app.metrics.delivery(Delivery::Accepted);
    json(StatusCode::ACCEPTED, &serde_json::json!({ "runs": runs }))
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
        .into_response()
}

/// Answers an authenticated, parsed delivery.
async fn accept(
    app: Arc<App>,
    forge: ForgeKind,
    matched: &[usize],
    ev: Event,
    h: &HeaderMap,
    event_name: &str,
) -> Response {
    let delivery = webhook::delivery_id(|name| header_str(h, name).map(str::to_string));
    match ev {
        Event::Ping => {
            app.metrics.delivery(Delivery::Ignored);
            text(StatusCode::OK, "pong\n")
        }
        Event::Ignored { reason } => {
            app.metrics.delivery(Delivery::Ignored);
            text(StatusCode::ACCEPTED, format!("ignored: {reason}\n"))
        }
        ev => {
            let d = delivery.map(|id| (id, event_name.to_string()));
            match enqueue_event(&app, forge, matched, ev, d).await {
                Ok(Some(run)) => {
                    app.metrics.delivery(Delivery::Accepted);
                    json(
                        StatusCode::ACCEPTED,
                        &serde_json::json!({ "run": run, "url": app.run_url(&run) }),
                    )
                }
                Ok(None) => text(StatusCode::ACCEPTED, "nothing to run\n"),
                Err(r) => r,
            }
        }
    }
}

/// Turns a push or PR event into a stored job. `Ok(None)`: nothing to run
/// (a deleted branch, a tag, a closed PR, a fork PR, a duplicate).
async fn enqueue_event(
    app: &Arc<App>,
    forge: ForgeKind,
    matched: &[usize],
    ev: Event,
    delivery: Option<(String, String)>,
) -> Result<Option<String>, Response> {
    let repo_name = match &ev {
        Event::Push { repo, .. } | Event::PullRequest { repo, .. } => repo.clone(),
        _ => return Ok(None),
    };
    let Some((idx, _)) = app.cfg.find_repo(forge, &repo_name) else {
        app.metrics.delivery(Delivery::UnknownRepo);
        tracing::warn!(
            forge = forge.as_str(),
            "delivery for a repository that is not configured"
        );
        return Err(text(StatusCode::NOT_FOUND, "unknown repository\n"));
    };
    if !matched.contains(&idx) {
        // Signed with another repository's secret.
        return Err(unauthorized(app, forge.as_str()));
    }
    let repo = &app.repos[idx];
    let run_id =
        new_run_id().map_err(|e| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))?;
    let job = match ev {
        Event::Push {
            git_ref,
            branch,
            after,
            deleted,
            ..
        } => {
            let Some(branch) = branch.filter(|_| !deleted) else {
                app.metrics.delivery(Delivery::Ignored);
                return Ok(None);
            };
            NewJob {
                repo: repo.key(),
                kind: JobKind::Push,
                lane: git_ref.clone(),
                git_ref,
                branch: Some(branch),
                sha: after,
                pr_number: None,
                run_id,
            }
        }
        Event::PullRequest {
            number,
            action,
            head_sha,
            from_fork,
            new_commits,
            ..
        } => {
            let acts = matches!(
                action,
                PrAction::Opened | PrAction::Synchronize | PrAction::Reopened
            ) && new_commits;
            if !acts {
                app.metrics.delivery(Delivery::Ignored);
                return Ok(None);
            }
            if from_fork && !repo.config.allow_forks {
                app.metrics.delivery(Delivery::Ignored);
                tracing::info!(
                    pr = number,
                    "pull request from a fork not run (allow_forks = false)"
                );
                return Ok(None);
            }
            let git_ref = match forge {
                ForgeKind::Gitlab => format!("refs/merge-requests/{number}/head"),
                _ => format!("refs/pull/{number}/head"),
            };
            NewJob {
                repo: repo.key(),
                kind: JobKind::PullRequest,
                lane: format!("pr/{number}"),
                git_ref,
                branch: None,
                sha: head_sha,
                pr_number: Some(number),
                run_id,
            }
        }
        _ => return Ok(None),
    };
    let enqueued = match app.enqueue(job.clone(), delivery).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot store a job: {e:#}");
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the job\n",
            ));
        }
    };
    match enqueued {
        Enqueued::Duplicate => {
            app.metrics.delivery(Delivery::Duplicate);
            Err(text(StatusCode::OK, "duplicate delivery\n"))
        }
        Enqueued::Queued {
            job: id,
            superseded,
            cancel,
        } => {
            tracing::info!(job = id, run = %job.run_id, repo = %job.repo, sha = %job.sha, "job queued");
            for old in superseded {
                app.queue_status(
                    &old.repo,
                    old.id,
                    &old.sha,
                    super::app::status(
                        StatusState::Cancelled,
                        "sluice".into(),
                        format!(
                            "superseded by a newer push ({})",
                            &job.sha[..7.min(job.sha.len())]
                        ),
                        Some(app.run_url(&old.run_id)),
                    ),
                );
            }
            for c in cancel {
                app.cancel_job(c);
            }
            app.wake_workers();
            Ok(Some(job.run_id))
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let app2 = Arc::clone(&app);
    match tokio::task::spawn_blocking(move || app2.metrics.render(&*app2.db)).await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            body,
        )
            .into_response(),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n"),
    }
}

async fn run_page(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let (run_id, as_json) = match id.strip_suffix(".json") {
        Some(r) => (r.to_string(), true),
        None => (id, false),
    };
    if !is_run_id(&run_id) {
        return text(StatusCode::NOT_FOUND, "no such run\n");
    }
    let app2 = Arc::clone(&app);
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let Some(job) = app2.db.job_by_run_id(&run_id)? else {
            return Ok(None);
        };
        let report = app2.report(&job)?;
        Ok(Some((job, report)))
    })
    .await;
    let (job, report) = match found {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return text(StatusCode::NOT_FOUND, "no such run\n"),
        Ok(Err(e)) => {
            tracing::error!("cannot read a run: {e:#}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the run\n");
        }
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the run\n"),
    };
    let Some(report) = report else {
        let state = job.state.as_str();
        if as_json {
            return json(
                StatusCode::OK,
                &serde_json::json!({ "state": state, "commit": job.sha }),
            );
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!(
                "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5><title>sluice run</title><p>This run is {state}.</p>"
            ),
        )
            .into_response();
    };
    if as_json {
        return match serde_json::to_value(&report) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the run\n"),
        };
    }
    let show_logs = app.cfg.run_page_logs;
    let html = crate::report::run_page(&report, &|n| {
        if !show_logs {
            return None;
        }
        n.log.as_ref().and_then(|d| app.log(d))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// Runs the daemon until SIGTERM or Ctrl-C: `workers` job threads, one
/// outbox thread, and the HTTP server. Jobs left running by a crash are
/// queued again first.
pub fn serve(app: App) -> anyhow::Result<()> {
    let app = Arc::new(app);
    let requeued = app.db.requeue_running(None)?;
    if requeued > 0 {
        tracing::info!(
            jobs = requeued,
            "resuming jobs interrupted by the last stop"
        );
    }
    let mut threads = Vec::new();
    for i in 0..app.cfg.workers {
        let a = Arc::clone(&app);
        threads.push(
            std::thread::Builder::new()
                .name(format!("sluice-worker-{i}"))
                .spawn(move || a.worker_loop())?,
        );
    }
    // On PostgreSQL a full daemon also computes node tasks, its own runs'
    // and any other daemon's (`task_threads`, by default one per worker).
    if app.has_task_queue() && app.cfg.task_threads == 0 {
        tracing::info!(
            "task_threads = 0: this daemon only dispatches; its jobs' nodes wait for other \
             daemons or `sluice serve --worker-only` processes on the same queue"
        );
    }
    if app.has_task_queue() {
        for i in 0..app.cfg.task_threads {
            let a = Arc::clone(&app);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sluice-task-{i}"))
                    .spawn(move || a.task_loop())?,
            );
        }
    }
    {
        let a = Arc::clone(&app);
        threads.push(
            std::thread::Builder::new()
                .name("sluice-outbox".into())
                .spawn(move || a.outbox_loop())?,
        );
        let a = Arc::clone(&app);
        threads.push(
            std::thread::Builder::new()
                .name("sluice-schedule".into())
                .spawn(move || a.schedule_loop())?,
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(app.cfg.listen).await?;
        let addr = listener.local_addr()?;
        // On stdout, so a supervisor (or a test) can learn a port chosen
        // by the system.
        println!("sluice serve: listening on http://{addr}");
        tracing::info!(%addr, "listening");
        axum::serve(listener, router(Arc::clone(&app)))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    });
    tracing::info!("shutting down: running jobs are stopped and queued again");
    app.begin_shutdown();
    for t in threads {
        let _ = t.join();
    }
    served
}

/// `sluice serve --worker-only`: `workers` task threads computing node
/// tasks from the shared queue, no HTTP listener, no jobs; until SIGTERM
/// or Ctrl-C, when running tasks are stopped and given back to the queue.
pub fn serve_workers(app: App) -> anyhow::Result<()> {
    if !app.has_task_queue() {
        anyhow::bail!(
            "--worker-only computes node tasks from the shared queue, which lives on \
             PostgreSQL: set state = \"postgresql://…\" in the server config"
        );
    }
    let app = Arc::new(app);
    let mut threads = Vec::new();
    for i in 0..app.cfg.workers {
        let a = Arc::clone(&app);
        threads.push(
            std::thread::Builder::new()
                .name(format!("sluice-task-{i}"))
                .spawn(move || a.task_loop())?,
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "sluice serve: worker-only, {} task thread(s)",
        app.cfg.workers
    );
    tracing::info!(
        threads = app.cfg.workers,
        "worker-only: computing node tasks"
    );
    rt.block_on(shutdown_signal());
    tracing::info!("shutting down: running tasks are stopped and given back to the queue");
    app.begin_shutdown();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
