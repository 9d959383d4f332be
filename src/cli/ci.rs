//! `sluice ci`: run inside a CI job (GitHub Actions, GitLab CI) and report
//! like the daemon: a `pending` status per pipeline, the run (promoting
//! production on a push to the production branch), the final statuses, and
//! on a pull or merge request the one comment, edited in place.
//!
//! Everything the job needs comes from the variables the CI system sets,
//! read here through clap's `env` attributes (the environment is read in
//! `src/cli/` only, through clap). The commit is read from git objects
//! (`--at` semantics), so a checkout of another commit (GitHub's merge
//! commit) cannot change what runs. What leaves the machine: statuses, the
//! comment and the job log (this command's output), all rendered from the
//! [`RunReport`] by [`crate::report`], never a command's own output.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::GlobalArgs;
use super::progress::Progress;
use super::workspace::{load, report_diagnostics};
use crate::engine::run::{RunError, RunRequest};
use crate::engine::{Outcome, RunReport};
use crate::exec::CancelToken;
use crate::forge::{CommitStatus, Forge, ForgeError, ForgeKind, StatusState};
use crate::report::{CommentOptions, MARKER};
use crate::server::config::Secret;

/// Exit code when SIGINT or SIGTERM stopped the run (as `sluice run`).
const EXIT_CANCELLED: u8 = 130;
/// Exit code of a problem running sluice or reaching the forge.
const EXIT_ERROR: u8 = 2;
/// Tries of one forge call before it counts as failed.
const MAX_ATTEMPTS: u32 = 5;
/// The most one job waits between forge retries, all calls together: a
/// forge outage must not hold a CI runner for long.
const RETRY_BUDGET: Duration = Duration::from_secs(60);
/// The comment's size limit, under GitHub's 65,536 (GitLab allows more).
const COMMENT_MAX_CHARS: usize = 64_000;
/// The longest status description sent (GitHub refuses more than 140).
const DESCRIPTION_MAX_CHARS: usize = 139;
/// GitHub events that run a branch head and may promote production.
const GITHUB_BRANCH_EVENTS: [&str; 3] = ["push", "schedule", "workflow_dispatch"];
/// GitLab pipeline sources that run a branch head and may promote.
const GITLAB_BRANCH_SOURCES: [&str; 3] = ["push", "schedule", "web"];

#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct CiArgs {
    /// The CI system. Default: GitHub Actions when GITHUB_ACTIONS=true,
    /// GitLab CI when GITLAB_CI=true.
    #[arg(long, value_enum)]
    pub provider: Option<Provider>,
    /// The page statuses and the comment link to. Default: the CI job's
    /// page ($GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID,
    /// or $CI_JOB_URL).
    #[arg(long, value_name = "URL")]
    pub run_url: Option<String>,
    /// Worker threads. Default: the number of cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = super::run::parse_jobs)]
    pub jobs: Option<usize>,
    /// Also run pull requests from forks. Off by default, as in the
    /// daemon: their code would run next to the data root.
    #[arg(long)]
    pub allow_forks: bool,
    /// GitHub: the API token (`statuses: write`, `pull-requests: write`).
    /// Pass it as the variable (`GITHUB_TOKEN: ${{ github.token }}`), not
    /// as an argument other processes can see.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "GITHUB_TOKEN",
        hide_env_values = true,
        value_parser = secret
    )]
    pub github_token: Option<Secret>,
    /// GitLab: a project or group access token with the `api` scope
    /// (CI_JOB_TOKEN cannot set statuses). Kept in a masked CI/CD variable;
    /// a variable of another name is mapped to this one in the job's
    /// `variables:` (`SLUICE_GITLAB_TOKEN: $MY_TOKEN`), so there is no
    /// `--token-env`: the environment is read only through these arguments.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SLUICE_GITLAB_TOKEN",
        hide_env_values = true,
        value_parser = secret
    )]
    pub gitlab_token: Option<Secret>,
    // Boxed: the variables would make this the largest subcommand by far.
    #[command(flatten)]
    pub github: Box<GithubEnv>,
    #[command(flatten)]
    pub gitlab: Box<GitlabEnv>,
}

const AFTER_HELP: &str = "\
GitHub Actions: reads GITHUB_ACTIONS, GITHUB_EVENT_NAME, GITHUB_EVENT_PATH, GITHUB_REPOSITORY, \
GITHUB_SHA, GITHUB_REF (GITHUB_REF_NAME), GITHUB_API_URL, GITHUB_SERVER_URL, GITHUB_RUN_ID and \
GITHUB_TOKEN. A pull_request event runs the PR's head (from the event file), not the merge commit \
in GITHUB_SHA.

GitLab CI: reads GITLAB_CI, CI_PROJECT_PATH (or CI_PROJECT_ID), CI_COMMIT_SHA \
(CI_MERGE_REQUEST_SOURCE_BRANCH_SHA in merged-results pipelines), CI_COMMIT_BRANCH, \
CI_MERGE_REQUEST_IID, CI_MERGE_REQUEST_SOURCE_BRANCH_NAME, CI_PIPELINE_SOURCE, CI_API_V4_URL, \
CI_JOB_URL and SLUICE_GITLAB_TOKEN.

Production is promoted on a push (or scheduled run) of the production branch named in sluice.toml. \
Share the state directory (SLUICE_STATE_DIR) between jobs with the CI cache; see ci/ in the \
sluice repository for templates. Exit 0: every pipeline succeeded; 1: a node failed or the \
pipelines do not check; 2: sluice or the forge failed; 130: interrupted.";

/// The CI systems `sluice ci` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    Github,
    Gitlab,
}

/// What GitHub Actions sets; `hide`: they are not options to type.
#[derive(Debug, Args)]
pub struct GithubEnv {
    #[arg(long = "github-actions", env = "GITHUB_ACTIONS", hide = true)]
    actions: Option<String>,
    #[arg(long = "github-event-name", env = "GITHUB_EVENT_NAME", hide = true)]
    event_name: Option<String>,
    #[arg(long = "github-event-path", env = "GITHUB_EVENT_PATH", hide = true)]
    event_path: Option<String>,
    #[arg(long = "github-repository", env = "GITHUB_REPOSITORY", hide = true)]
    repository: Option<String>,
    #[arg(long = "github-sha", env = "GITHUB_SHA", hide = true)]
    sha: Option<String>,
    #[arg(long = "github-ref", env = "GITHUB_REF", hide = true)]
    git_ref: Option<String>,
    #[arg(long = "github-ref-name", env = "GITHUB_REF_NAME", hide = true)]
    ref_name: Option<String>,
    #[arg(long = "github-api-url", env = "GITHUB_API_URL", hide = true)]
    api_url: Option<String>,
    #[arg(long = "github-server-url", env = "GITHUB_SERVER_URL", hide = true)]
    server_url: Option<String>,
    #[arg(long = "github-run-id", env = "GITHUB_RUN_ID", hide = true)]
    run_id: Option<String>,
}

/// What GitLab CI sets.
#[derive(Debug, Args)]
pub struct GitlabEnv {
    #[arg(long = "gitlab-ci", env = "GITLAB_CI", hide = true)]
    gitlab_ci: Option<String>,
    /// `CI=true`: some CI system, for the message when none is recognised.
    #[arg(long = "ci-flag", env = "CI", hide = true)]
    ci: Option<String>,
    #[arg(long = "ci-project-id", env = "CI_PROJECT_ID", hide = true)]
    project_id: Option<String>,
    #[arg(long = "ci-project-path", env = "CI_PROJECT_PATH", hide = true)]
    project_path: Option<String>,
    #[arg(long = "ci-commit-sha", env = "CI_COMMIT_SHA", hide = true)]
    commit_sha: Option<String>,
    #[arg(long = "ci-commit-branch", env = "CI_COMMIT_BRANCH", hide = true)]
    commit_branch: Option<String>,
    #[arg(
        long = "ci-merge-request-iid",
        env = "CI_MERGE_REQUEST_IID",
        hide = true
    )]
    mr_iid: Option<String>,
    #[arg(
        long = "ci-merge-request-source-branch-name",
        env = "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
        hide = true
    )]
    mr_source_branch: Option<String>,
    #[arg(
        long = "ci-merge-request-source-branch-sha",
        env = "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA",
        hide = true
    )]
    mr_source_sha: Option<String>,
    #[arg(long = "ci-pipeline-source", env = "CI_PIPELINE_SOURCE", hide = true)]
    pipeline_source: Option<String>,
    #[arg(long = "ci-api-v4-url", env = "CI_API_V4_URL", hide = true)]
    api_v4_url: Option<String>,
    #[arg(long = "ci-job-url", env = "CI_JOB_URL", hide = true)]
    job_url: Option<String>,
}

fn secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s.to_string()))
}

/// A variable's value, `None` when unset or empty (CI systems set some
/// variables empty rather than not at all).
fn value(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Collects the names of required variables that are missing.
#[derive(Default)]
struct Needs(Vec<&'static str>);

impl Needs {
    fn get(&mut self, v: &Option<String>, name: &'static str) -> String {
        match value(v) {
            Some(s) => s.to_string(),
            None => {
                self.0.push(name);
                String::new()
            }
        }
    }

    /// The token, once every variable is there; otherwise one error
    /// naming all that are missing (with `hint` when the token is one).
    fn finish<T: Clone>(
        mut self,
        system: &str,
        token: &Option<T>,
        token_name: &'static str,
        hint: &str,
    ) -> anyhow::Result<T> {
        let Some(token) = token else {
            self.0.push(token_name);
            return Err(missing(system, &self.0, hint));
        };
        if !self.0.is_empty() {
            return Err(missing(system, &self.0, ""));
        }
        Ok(token.clone())
    }
}

/// What this CI job is about, from the variables.
#[derive(Debug)]
struct Job {
    kind: ForgeKind,
    /// `GitHub Actions` or `GitLab CI`, for messages.
    system: &'static str,
    api_url: String,
    token: Secret,
    /// `owner/name`, or GitLab's `path_with_namespace` (or project id).
    repo: String,
    /// The commit to run and to put the statuses on.
    sha: String,
    /// The branch, when the commit is a branch head.
    branch: Option<String>,
    /// The PR or MR number.
    change: Option<u64>,
    /// A push (or scheduled run) of a branch: production may move.
    branch_event: bool,
    run_url: Option<String>,
}

/// The parts of a GitHub `pull_request` event `sluice ci` reads.
#[derive(Deserialize)]
struct PrEvent {
    number: u64,
    pull_request: PullRequest,
}

#[derive(Deserialize)]
struct PullRequest {
    head: PrHead,
}

#[derive(Deserialize)]
struct PrHead {
    sha: String,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    /// `null` when the fork was deleted.
    #[serde(default)]
    repo: Option<PrRepo>,
}

#[derive(Deserialize)]
struct PrRepo {
    full_name: String,
}

fn detect(args: &CiArgs) -> anyhow::Result<Provider> {
    if let Some(p) = args.provider {
        return Ok(p);
    }
    let yes = |v: &Option<String>| value(v).is_some_and(|s| s.eq_ignore_ascii_case("true"));
    if yes(&args.github.actions) {
        return Ok(Provider::Github);
    }
    if yes(&args.gitlab.gitlab_ci) {
        return Ok(Provider::Gitlab);
    }
    let generic = if yes(&args.gitlab.ci) {
        " (CI=true is set, but neither of these)"
    } else {
        ""
    };
    bail!(
        "sluice ci: cannot tell which CI system this is: expected GITHUB_ACTIONS=true (GitHub Actions) or GITLAB_CI=true (GitLab CI){generic}; or pass --provider github|gitlab"
    )
}

fn missing(system: &str, names: &[&str], hint: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "sluice ci ({system}): missing environment variable{} {}{hint}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    )
}

fn check_sha(sha: &str, var: &str) -> anyhow::Result<()> {
    if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        bail!(
            "sluice ci: {var} is not a full commit sha: {:?}",
            crate::forge::truncate_chars(sha, 80)
        )
    }
}

fn github_job(args: &CiArgs) -> anyhow::Result<Job> {
    const SYSTEM: &str = "GitHub Actions";
    let env = &args.github;
    let mut needs = Needs::default();
    let event = needs.get(&env.event_name, "GITHUB_EVENT_NAME");
    let repo = needs.get(&env.repository, "GITHUB_REPOSITORY");
    let is_pr = event == "pull_request" || event == "pull_request_target";
    let event_path = if is_pr {
        needs.get(&env.event_path, "GITHUB_EVENT_PATH")
    } else {
        String::new()
    };
    let github_sha = if is_pr {
        String::new()
    } else {
        needs.get(&env.sha, "GITHUB_SHA")
    };
    let token = needs.finish(
        SYSTEM,
        &args.github_token,
        "GITHUB_TOKEN",
        "; GitHub Actions sets all but GITHUB_TOKEN, which the step passes in its env: `GITHUB_TOKEN: ${{ github.token }}`",
    )?;
    let api_url = value(&env.api_url)
        .unwrap_or("https://api.github.com")
        .to_string();
    let run_url = match (value(&env.server_url), value(&env.run_id)) {
        (Some(server), Some(id)) => Some(format!(
            "{}/{repo}/actions/runs/{id}",
            server.trim_end_matches('/')
        )),
        _ => None,
    };
    let (sha, branch, change) = if is_pr {
        let bytes = std::fs::read(&event_path)
            .with_context(|| format!("sluice ci: cannot read GITHUB_EVENT_PATH {event_path}"))?;
        let ev: PrEvent = serde_json::from_slice(&bytes).with_context(|| {
            format!("sluice ci: GITHUB_EVENT_PATH {event_path} is not a {event} event")
        })?;
        let head_repo = ev.pull_request.head.repo.as_ref().map(|r| &r.full_name);
        if !args.allow_forks && head_repo.is_none_or(|h| !h.eq_ignore_ascii_case(&repo)) {
            bail!(
                "sluice ci: pull request #{} comes from a fork ({}); its code would run next to the data root, so it is not run (pass --allow-forks to run it anyway)",
                ev.number,
                head_repo.map_or("deleted", String::as_str)
            );
        }
        check_sha(
            &ev.pull_request.head.sha,
            "pull_request.head.sha of the event",
        )?;
        (
            ev.pull_request.head.sha,
            ev.pull_request.head.git_ref.filter(|r| !r.is_empty()),
            Some(ev.number),
        )
    } else {
        check_sha(&github_sha, "GITHUB_SHA")?;
        let branch = match value(&env.git_ref) {
            Some(r) => r.strip_prefix("refs/heads/").map(str::to_string),
            None => value(&env.ref_name).map(str::to_string),
        };
        (github_sha, branch, None)
    };
    Ok(Job {
        kind: ForgeKind::Github,
        system: SYSTEM,
        api_url,
        token,
        repo,
        sha,
        branch,
        change,
        branch_event: GITHUB_BRANCH_EVENTS.contains(&event.as_str()),
        run_url: args.run_url.clone().or(run_url),
    })
}

fn gitlab_job(args: &CiArgs) -> anyhow::Result<Job> {
    const SYSTEM: &str = "GitLab CI";
    let env = &args.gitlab;
    let mut needs = Needs::default();
    // The client takes `path_with_namespace`; the numeric id works too.
    let repo = match value(&env.project_path).or(value(&env.project_id)) {
        Some(p) => p.to_string(),
        None => {
            needs.0.push("CI_PROJECT_PATH");
            String::new()
        }
    };
    // In a merged-results pipeline CI_COMMIT_SHA is the merge commit; the
    // MR's head is this one (empty in other pipelines).
    let sha = match value(&env.mr_source_sha) {
        Some(s) => s.to_string(),
        None => needs.get(&env.commit_sha, "CI_COMMIT_SHA"),
    };
    let api_url = needs.get(&env.api_v4_url, "CI_API_V4_URL");
    let token = needs.finish(
        SYSTEM,
        &args.gitlab_token,
        "SLUICE_GITLAB_TOKEN",
        "; GitLab CI sets all but SLUICE_GITLAB_TOKEN, a project access token with the api scope kept in a masked CI/CD variable",
    )?;
    check_sha(&sha, "CI_COMMIT_SHA")?;
    let change = match value(&env.mr_iid) {
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            anyhow::anyhow!("sluice ci: CI_MERGE_REQUEST_IID is not a number: {s:?}")
        })?),
        None => None,
    };
    let branch = value(&env.commit_branch)
        .or(value(&env.mr_source_branch))
        .map(str::to_string);
    let branch_event = change.is_none()
        && value(&env.commit_branch).is_some()
        && value(&env.pipeline_source).is_some_and(|s| GITLAB_BRANCH_SOURCES.contains(&s));
    Ok(Job {
        kind: ForgeKind::Gitlab,
        system: SYSTEM,
        api_url,
        token,
        repo,
        sha,
        branch,
        change,
        branch_event,
        run_url: args
            .run_url
            .clone()
            .or_else(|| value(&env.job_url).map(str::to_string)),
    })
}

/// Calls the forge, retrying what may succeed later, within one budget of
/// waiting for the whole job; counts the calls that failed for good.
struct Reporter<'a> {
    forge: &'a dyn Forge,
    repo: &'a str,
    sha: &'a str,
    target: Option<String>,
    budget: Duration,
    /// Once set (the job is being stopped), nothing is retried.
    cancel: CancelToken,
    failed: usize,
}

impl Reporter<'_> {
    fn call<T>(
        &mut self,
        what: &str,
        f: impl Fn(&dyn Forge) -> Result<T, ForgeError>,
    ) -> Option<T> {
        let forge = self.forge;
        let mut attempts = 0;
        loop {
            let e = match f(forge) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            attempts += 1;
            let wait = e.wait_before_retry(attempts - 1, Duration::MAX);
            if e.is_retryable()
                && attempts < MAX_ATTEMPTS
                && wait <= self.budget
                && !self.cancel.is_cancelled()
            {
                eprintln!(
                    "sluice ci: {what}: {e}; retrying in {} s",
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                self.budget -= wait;
                continue;
            }
            let tries = if attempts == 1 {
                String::new()
            } else {
                format!(" (after {attempts} tries)")
            };
            eprintln!("sluice ci: {what} failed{tries}: {e}");
            self.failed += 1;
            return None;
        }
    }

    fn status(&mut self, state: StatusState, context: String, description: &str) {
        let status = CommitStatus {
            state,
            context,
            description: crate::forge::truncate_chars(description, DESCRIPTION_MAX_CHARS)
                .to_string(),
            target_url: self.target.clone(),
        };
        let (repo, sha) = (self.repo, self.sha);
        self.call(&format!("status {}", status.context), |f| {
            f.set_status(repo, sha, &status)
        });
    }

    /// The one comment of PR/MR `number`, unless a newer commit is its
    /// head by now (that job's comment wins).
    fn comment(&mut self, number: u64, body: &str) {
        let (repo, sha) = (self.repo, self.sha);
        match self.forge.pr_head(repo, number) {
            Ok(head) if !head.eq_ignore_ascii_case(sha) => {
                eprintln!(
                    "sluice ci: #{number} has moved on to {}; its comment is left to that commit's job",
                    crate::report::short_sha(&head)
                );
                return;
            }
            Ok(_) => {}
            // The check only guards against overwriting a newer report.
            Err(e) => eprintln!("sluice ci: cannot read the head of #{number} ({e}); commenting"),
        }
        self.call(&format!("comment on #{number}"), |f| {
            f.upsert_comment(repo, number, MARKER, body, None)
        });
    }
}

pub fn run(global: &GlobalArgs, args: &CiArgs) -> anyhow::Result<ExitCode> {
    if global.at.is_some() {
        bail!("sluice ci runs the commit the CI variables name; --at is not used with it");
    }
    let job = match detect(args)? {
        Provider::Github => github_job(args)?,
        Provider::Gitlab => gitlab_job(args)?,
    };
    let token = String::from_utf8_lossy(job.token.expose()).into_owned();
    let forge = crate::forge::client(job.kind, &job.api_url, token);
    let what = match (job.change, &job.branch) {
        (Some(n), _) if job.kind == ForgeKind::Gitlab => format!("merge request !{n}"),
        (Some(n), _) => format!("pull request #{n}"),
        (None, Some(b)) => format!("branch {b}"),
        (None, None) => "a commit".to_string(),
    };
    eprintln!(
        "sluice ci: {}, {} of {}, commit {}",
        job.system,
        what,
        job.repo,
        crate::report::short_sha(&job.sha)
    );
    // Ctrl-C or the CI runner's SIGTERM stops the run: no node starts
    // after it, running commands lose their process groups, nothing is
    // promoted, and the statuses say so.
    let cancel = CancelToken::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, cancel.flag())
            .map_err(|e| anyhow::anyhow!("cannot handle signal {signal}: {e}"))?;
    }
    let mut reporter = Reporter {
        forge: forge.as_ref(),
        repo: &job.repo,
        sha: &job.sha,
        target: job.run_url.clone(),
        budget: RETRY_BUDGET,
        cancel: cancel.clone(),
        failed: 0,
    };

    // The commit from git objects, whatever is checked out.
    let mut at = global.clone();
    at.at = Some(job.sha.clone());
    let mut ws = match load(&at) {
        Ok(ws) => ws,
        Err(e) => {
            let short = crate::report::short_sha(&job.sha);
            reporter.status(
                StatusState::Error,
                "sluice".into(),
                &format!("cannot read commit {short}: {e:#}"),
            );
            return Err(e.context(format!(
                "sluice ci: cannot read commit {short} (is it fetched? a shallow checkout of another commit lacks it)"
            )));
        }
    };
    if !ws.diagnostics.is_empty() {
        report_diagnostics(&ws);
        reporter.status(
            StatusState::Failure,
            "sluice".into(),
            &crate::report::problems_description(&ws.diagnostics),
        );
        return Ok(exit(&reporter, ExitCode::FAILURE));
    }
    let pipelines: Vec<String> = ws.graph.pipelines.iter().map(|p| p.to_string()).collect();
    // Every pending status gets a final one, whatever happens below.
    let finish_all = |reporter: &mut Reporter, state: StatusState, description: &str| {
        for p in &pipelines {
            reporter.status(state, crate::report::context(p), description);
        }
    };

    for p in &pipelines {
        reporter.status(
            StatusState::Pending,
            crate::report::context(p),
            crate::report::pending_description(),
        );
    }
    let stores = match ws.open_stores() {
        Ok(s) => s,
        Err(e) => {
            finish_all(&mut reporter, StatusState::Error, "cannot open the state");
            return Err(e);
        }
    };
    let production = ws.config.as_ref().map(|c| c.production_branch.clone());
    let promote = job.branch_event && job.branch.is_some() && job.branch == production;
    let git_ref = job
        .branch
        .clone()
        .or_else(|| job.change.map(|n| format!("pr/{n}")));
    let progress = Progress::new();
    let req = RunRequest {
        pipelines: Vec::new(),
        nodes: None,
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        promote,
        git_ref,
        cancel: cancel.clone(),
        observer: &progress,
    };
    let result = crate::engine::run::run(&mut ws, &stores, &req);
    progress.done();
    let report = match result {
        Ok(r) => r,
        Err(RunError::Invalid(diags)) => {
            report_diagnostics(&ws);
            let description = crate::report::problems_description(&diags);
            finish_all(&mut reporter, StatusState::Failure, &description);
            reporter.status(StatusState::Failure, "sluice".into(), &description);
            return Ok(exit(&reporter, ExitCode::FAILURE));
        }
        Err(e) => {
            let e = anyhow::Error::from(e);
            finish_all(
                &mut reporter,
                StatusState::Error,
                &format!("the run failed: {e:#}"),
            );
            return Err(e.context("sluice ci: the run failed"));
        }
    };

    if cancel.is_cancelled() {
        // One try per call, no waiting: the job is being stopped.
        finish_all(
            &mut reporter,
            StatusState::Cancelled,
            "cancelled with the CI job",
        );
        eprintln!("sluice: interrupted; nothing was recorded or promoted");
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }
    for p in &report.pipelines {
        reporter.status(
            StatusState::from(p.outcome),
            crate::report::context(&p.pipeline),
            &crate::report::status_description(p),
        );
    }
    if let Some(n) = job.change {
        let body = crate::report::comment_markdown(
            &report,
            &CommentOptions {
                run_url: job.run_url.clone(),
                max_chars: COMMENT_MAX_CHARS,
            },
        );
        reporter.comment(n, &body);
    }
    print_summary(&report, job.run_url.as_deref())?;
    let code = if report.outcome == Outcome::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    Ok(exit(&reporter, code))
}

/// The report as plain text on stdout: names, counts and engine errors,
/// never a command's output (a CI log leaves the machine).
fn print_summary(report: &RunReport, run_url: Option<&str>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(crate::report::plain_text(report, run_url).as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `code`, or 2 when a forge call failed for good.
fn exit(reporter: &Reporter, code: ExitCode) -> ExitCode {
    if reporter.failed == 0 {
        return code;
    }
    eprintln!(
        "sluice ci: {} forge call{} failed; the statuses or the comment on the forge are incomplete",
        reporter.failed,
        if reporter.failed == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_ERROR)
}
