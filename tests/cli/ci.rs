//! `sluice ci` end to end: the real binary in a simulated GitHub Actions or
//! GitLab CI job (the variables those systems set, an event file, a real
//! git repository checked out at GitHub's merge commit), reporting to the
//! recording fake forge.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::daemon::{fixture, pr_payload as pr_event};
use crate::fake_forge::{FakeForgeServer, Recorded, statuses};
use crate::util::{Repo, Run};

const TOKEN: &str = "ci-token-for-tests-5f1e";
const REPO: &str = "acme/pipelines";
const CONTEXTS: [&str; 2] = ["sluice/clinics/a", "sluice/clinics/b"];
const RUN_PAGE: &str = "https://github.example/acme/pipelines/actions/runs/4242";

/// A pipelines repository with two clinics on `main`, its data root, and
/// a directory for event files and the shared state.
struct Project {
    repo: Repo,
    data: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project::with_patients("id,name,clinic\n1,Ann,a\n2,Bob,a\n3,Cy,b\n4,Di,a\n")
    }

    fn with_patients(csv: &str) -> Project {
        let repo = Repo::new();
        repo.file(
            "clinics/a/Patients.sql",
            "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients WHERE clinic = 'a';\n",
        )
        .file(
            "clinics/a/Count.sql",
            "-- @depend ./Patients\nSELECT count(*) AS n FROM Patients;\n",
        )
        .file(
            "clinics/b/Patients.sql",
            "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients WHERE clinic = 'b';\n",
        );
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("patients.csv"), csv).unwrap();
        Project {
            repo,
            data,
            scratch: tempfile::tempdir().unwrap(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.scratch.path().join("state")
    }

    /// Commits everything on the current branch.
    fn commit(&self, message: &str) -> String {
        self.repo.commit_all(message)
    }

    /// GitHub's merge commit of `branch` into main (what `GITHUB_SHA` names
    /// on a pull_request event), left checked out as actions/checkout does.
    fn merge_commit(&self, branch: &str) -> String {
        self.repo.git(&["checkout", "-q", "-B", "ci-merge", "main"]);
        self.repo.git(&[
            "merge",
            "-q",
            "--no-ff",
            "--no-edit",
            "-m",
            "merge stand-in",
            branch,
        ]);
        self.repo.git(&["rev-parse", "HEAD"])
    }

    /// Writes an event file; returns its path.
    fn event(&self, name: &str, payload: &Value) -> String {
        let p = self.scratch.path().join(name);
        std::fs::write(&p, serde_json::to_vec(payload).unwrap()).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// `sluice ci` in the repository with only `vars` of the CI variables.
    fn ci(&self, vars: &[(&str, &str)], args: &[&str]) -> Run {
        Run::from(self.ci_command(vars, args).output().expect("sluice runs"))
    }

    fn ci_command(&self, vars: &[(&str, &str)], args: &[&str]) -> Command {
        let state = self.state_dir();
        let mut all: Vec<(&str, &str)> = vec![
            ("SLUICE_STATE_DIR", state.to_str().unwrap()),
            ("SLUICE_DATA_ROOT", self.data.path().to_str().unwrap()),
        ];
        all.extend_from_slice(vars);
        let owned: Vec<(String, String)> = all
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ci_command(self.repo.path(), &owned, args)
    }

    /// A GitHub Actions job on event `event` (file `payload`).
    fn github(&self, forge: &FakeForgeServer, event: &str, payload: &Value, sha: &str) -> Run {
        let mut cmd = self.github_command(forge, event, payload, sha);
        Run::from(cmd.output().expect("sluice runs"))
    }

    fn github_command(
        &self,
        forge: &FakeForgeServer,
        event: &str,
        payload: &Value,
        sha: &str,
    ) -> Command {
        let path = self.event(&format!("{event}.json"), payload);
        let git_ref = payload["ref"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("refs/pull/{}/merge", payload["number"]));
        self.ci_command(
            &[
                ("GITHUB_ACTIONS", "true"),
                ("CI", "true"),
                ("GITHUB_EVENT_NAME", event),
                ("GITHUB_EVENT_PATH", &path),
                ("GITHUB_REPOSITORY", REPO),
                ("GITHUB_SHA", sha),
                ("GITHUB_REF", &git_ref),
                ("GITHUB_API_URL", &forge.url()),
                ("GITHUB_SERVER_URL", "https://github.example"),
                ("GITHUB_RUN_ID", "4242"),
                ("GITHUB_TOKEN", TOKEN),
            ],
            &[],
        )
    }
}

/// `sluice ci` in `cwd` with exactly `vars` of the CI-related variables:
/// the machine's own CI environment (this test suite may run in GitHub
/// Actions or GitLab CI) and git's redirections are removed.
fn ci_command(cwd: &Path, vars: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("ci").args(args).current_dir(cwd);
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k == "CI"
            || ["GITHUB_", "GITLAB_", "CI_", "RUNNER_", "SLUICE_", "GIT_"]
                .iter()
                .any(|p| k.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// GitHub's push example, re-targeted at a push of `sha` to `branch`.
fn push_event(branch: &str, sha: &str) -> Value {
    let mut v = fixture("github/push.1.json");
    v["ref"] = format!("refs/heads/{branch}").into();
    v["after"] = sha.into();
    v["repository"]["full_name"] = REPO.into();
    v
}

/// (context, state, description, target_url) of each status sent for `sha`.
fn states(reqs: &[Recorded], sha: &str, context: &str) -> Vec<String> {
    statuses(reqs, sha)
        .into_iter()
        .filter(|(c, ..)| c == context)
        .map(|(_, s, ..)| s)
        .collect()
}

fn count(reqs: &[Recorded], method: &str, route_part: &str) -> usize {
    reqs.iter()
        .filter(|r| r.method == method && r.route().contains(route_part))
        .count()
}

#[track_caller]
fn no_token_printed(run: &Run) {
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token was printed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn github_actions_push_promotes_then_the_pull_request_gets_statuses_on_its_head_and_one_comment() {
    let p = Project::new();
    let forge = FakeForgeServer::start();
    let main_sha = p.commit("first");

    // A push to main: pending then success per pipeline, production promoted.
    let run = p.github(&forge, "push", &push_event("main", &main_sha), &main_sha);
    run.success()
        .stdout_has("promoted: production/clinics/a")
        .stdout_has("promoted: production/clinics/b");
    no_token_printed(&run);
    let reqs = forge.requests();
    for c in CONTEXTS {
        assert_eq!(states(&reqs, &main_sha, c), ["pending", "success"], "{c}");
    }
    assert_eq!(count(&reqs, "POST", "/comments"), 0, "no comment on a push");
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
    }
    let (_, _, _, target) = &statuses(&reqs, &main_sha)[0];
    assert_eq!(target, RUN_PAGE);
    assert!(
        reqs.iter()
            .all(|r| r.route() == format!("/repos/{REPO}/statuses/{main_sha}")),
        "{reqs:?}"
    );

    // A pull request: a branch dropping a patient and adding a column;
    // the job's checkout and GITHUB_SHA are GitHub's merge commit.
    p.repo.git(&["checkout", "-q", "-b", "feature"]);
    p.repo.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name, 1 AS flag FROM patients WHERE clinic = 'a' AND id <> 4;\n",
    );
    let head1 = p.commit("drop patient 4");
    let merge1 = p.merge_commit("feature");
    assert_ne!(head1, merge1);
    forge.set_pr_head(7, &head1);
    let event = pr_event(
        "github/pull_request.opened.1.json",
        7,
        &head1,
        "feature",
        REPO,
    );
    let before = forge.requests().len();
    let run = p.github(&forge, "pull_request", &event, &merge1);
    run.success().stdout_has("clinics/a");
    no_token_printed(&run);
    let reqs = forge.requests();
    let new = &reqs[before..];
    for c in CONTEXTS {
        assert_eq!(states(new, &head1, c), ["pending", "success"], "{c}");
    }
    for r in &reqs {
        assert!(
            !r.path.contains(&merge1) && !r.body.contains(&merge1),
            "something went to the merge commit: {r:?}"
        );
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
    }
    assert_eq!(count(new, "POST", "/issues/7/comments"), 1);
    let comments = forge.comments();
    assert_eq!(comments.len(), 1);
    let body = &comments[0].1;
    assert!(body.starts_with("<!-- sluice:report -->"), "{body}");
    assert!(body.contains("Patients") && body.contains("flag"), "{body}");
    assert!(body.contains("3 → 2"), "production → branch rows:\n{body}");
    assert!(body.contains(RUN_PAGE), "{body}");

    // Another commit on the PR, with a failing node: the same comment is
    // edited, the failing pipeline's status is a failure, exit 1.
    p.repo.git(&["checkout", "-q", "feature"]);
    p.repo
        .file(
            "clinics/a/Patients.sql",
            "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients WHERE clinic = 'a' AND id <> 1 AND id <> 4;\n",
        )
        .file(
            "clinics/b/Broken.sql",
            "-- @depend ./Patients\nSELECT no_such_column FROM Patients;\n",
        );
    let head2 = p.commit("drop patient 1 too; a broken node");
    let merge2 = p.merge_commit("feature");
    forge.set_pr_head(7, &head2);
    let event = pr_event(
        "github/pull_request.synchronize.1.json",
        7,
        &head2,
        "feature",
        REPO,
    );
    let before = forge.requests().len();
    let run = p.github(&forge, "pull_request", &event, &merge2);
    run.failure().stdout_has("Broken");
    no_token_printed(&run);
    let reqs = forge.requests();
    let new = &reqs[before..];
    assert_eq!(
        states(new, &head2, "sluice/clinics/a"),
        ["pending", "success"]
    );
    assert_eq!(
        states(new, &head2, "sluice/clinics/b"),
        ["pending", "failure"]
    );
    assert!(
        reqs.iter()
            .all(|r| !r.path.contains(&merge2) && !r.body.contains(&merge2))
    );
    assert_eq!(count(&reqs, "POST", "/issues/7/comments"), 1, "one POST");
    assert_eq!(count(new, "PATCH", "/issues/comments/"), 1, "then a PATCH");
    let comments = forge.comments();
    assert_eq!(comments.len(), 1);
    assert!(comments[0].1.contains("3 → 1"), "{}", comments[0].1);
    assert!(comments[0].1.contains("Broken"), "{}", comments[0].1);
}

#[test]
fn gitlab_ci_branch_then_merge_request_statuses_and_one_note_edited_in_place() {
    let p = Project::new();
    let forge = FakeForgeServer::start();
    let api = format!("{}/api/v4", forge.url());
    let job_url = "https://gitlab.example/acme/pipelines/-/jobs/99";
    let gitlab = |sha: &str, extra: &[(&str, &str)], args: &[&str]| {
        let mut vars = vec![
            ("GITLAB_CI", "true"),
            ("CI", "true"),
            ("CI_PROJECT_ID", "42"),
            ("CI_PROJECT_PATH", REPO),
            ("CI_COMMIT_SHA", sha),
            ("CI_API_V4_URL", api.as_str()),
            ("CI_JOB_URL", job_url),
            ("SLUICE_GITLAB_TOKEN", TOKEN),
        ];
        vars.extend_from_slice(extra);
        p.ci(&vars, args)
    };
    let main_sha = p.commit("first");
    let run = gitlab(
        &main_sha,
        &[("CI_COMMIT_BRANCH", "main"), ("CI_PIPELINE_SOURCE", "push")],
        &[],
    );
    run.success()
        .stdout_has("promoted: production/clinics/a")
        .stdout_has("promoted: production/clinics/b");
    no_token_printed(&run);
    let reqs = forge.requests();
    let route = format!("/api/v4/projects/acme%2Fpipelines/statuses/{main_sha}");
    assert!(reqs.iter().all(|r| r.route() == route), "{reqs:?}");
    for c in CONTEXTS {
        assert_eq!(states(&reqs, &main_sha, c), ["pending", "success"], "{c}");
    }
    for r in &reqs {
        assert!(r.json()["name"].as_str().unwrap().starts_with("sluice/"));
        assert_eq!(r.json()["target_url"], job_url);
        assert_eq!(r.header("private-token"), Some(TOKEN));
    }

    // A merge request pipeline: CI_COMMIT_SHA is the MR's head.
    p.repo.git(&["checkout", "-q", "-b", "feature"]);
    p.repo.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients WHERE clinic = 'a' AND id <> 4;\n",
    );
    let head1 = p.commit("drop patient 4");
    forge.set_pr_head(3, &head1);
    let mr = [
        ("CI_MERGE_REQUEST_IID", "3"),
        ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "feature"),
        ("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA", ""),
        ("CI_PIPELINE_SOURCE", "merge_request_event"),
    ];
    let run = gitlab(&head1, &mr, &[]);
    run.success();
    let reqs = forge.requests();
    for c in CONTEXTS {
        assert_eq!(states(&reqs, &head1, c), ["pending", "success"], "{c}");
    }
    let notes = "/api/v4/projects/acme%2Fpipelines/merge_requests/3/notes";
    assert_eq!(count(&reqs, "POST", notes), 1);
    let comments = forge.comments();
    assert_eq!(comments.len(), 1);
    assert!(comments[0].1.contains("3 → 2"), "{}", comments[0].1);
    assert!(comments[0].1.contains(job_url), "{}", comments[0].1);

    // A new commit: the note is edited; --run-url overrides the job page.
    p.repo.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients WHERE clinic = 'a' AND id <> 1 AND id <> 4;\n",
    );
    let head2 = p.commit("drop patient 1 too");
    forge.set_pr_head(3, &head2);
    let run = gitlab(&head2, &mr, &["--run-url", "https://runs.example/7"]);
    run.success();
    no_token_printed(&run);
    let reqs = forge.requests();
    assert_eq!(count(&reqs, "POST", notes), 1, "one note");
    assert_eq!(count(&reqs, "PUT", notes), 1, "edited in place");
    let comments = forge.comments();
    assert_eq!(comments.len(), 1);
    assert!(comments[0].1.contains("3 → 1"), "{}", comments[0].1);
    assert!(
        statuses(&reqs, &head2)
            .iter()
            .all(|(.., url)| url == "https://runs.example/7")
    );

    // An older job finishing after the MR moved on leaves the note alone.
    forge.set_pr_head(3, &main_sha);
    gitlab(&head2, &mr, &[]).success();
    let reqs = forge.requests();
    assert_eq!(count(&reqs, "PUT", notes), 1);
    assert_eq!(count(&reqs, "POST", notes), 1);
}

/// Clinic b reads clinic a's Count: the comment and b's status show it as
/// an input from clinic a, described there once, not as b's own node.
#[test]
fn a_node_of_another_pipeline_is_an_input_in_the_comment_and_statuses() {
    let p = Project::new();
    p.repo.file(
        "clinics/b/Both.sql",
        "-- @depend /clinics/a/Count\nSELECT n FROM Count;\n",
    );
    let sha = p.commit("b reads a's count");
    let forge = FakeForgeServer::start();
    forge.set_pr_head(3, &sha);
    let event = pr_event("github/pull_request.opened.1.json", 3, &sha, "main", REPO);
    p.github(&forge, "pull_request", &event, &sha).success();
    let comment = &forge.comments()[0].1;
    let b = comment
        .split_once("`clinics/b`\n")
        .map(|(_, b)| b)
        .expect("a section for clinic b");
    assert!(
        b.contains("Inputs from other directories: `clinics/a/Patients` (see `clinics/a`), `clinics/a/Count` (see `clinics/a`)."),
        "{comment}"
    );
    assert!(!comment.contains("/clinics/a/"), "{comment}");
    // a: Patients and Count; b: Patients and Both. Four tables computed.
    assert!(comment.contains("<sub>4 computed · 0 cached"), "{comment}");
    let reqs = forge.requests();
    let b_status = statuses(&reqs, &sha)
        .into_iter()
        .rfind(|(context, ..)| context == "sluice/clinics/b")
        .expect("a status for clinic b");
    assert!(b_status.2.starts_with("2 changed ·"), "{b_status:?}");
}

#[test]
fn no_cell_value_reaches_the_forge_or_the_job_log() {
    const PHI: &str = "ZZPHI4711Q";
    let p = Project::with_patients(&format!("id,name,clinic\n1,{PHI},a\n2,Bob,a\n3,Cy,b\n"));
    p.repo
        .file(
            "clinics/a/BadSql.sql",
            "-- @depend ./Patients\n-- @key name\nSELECT name, CAST(name AS INTEGER) + zz_no_such_column FROM Patients;\n",
        )
        .file(
            "clinics/a/Leak.py",
            "# @depend ./Patients\nimport os, sys\nprint(open(os.environ['SLUICE_INPUT_Patients']).read())\nsys.stderr.write('bad row: ' + open(os.environ['SLUICE_INPUT_Patients']).read())\nsys.exit(3)\n",
        )
        .file(
            "clinics/b/Dup.sql",
            "-- @source data://patients.csv\n-- @key clinic\n-- @assert sql: SELECT name FROM patients WHERE name LIKE 'ZZ%'\nSELECT * FROM patients;\n",
        );
    let sha = p.commit("failing nodes");
    let forge = FakeForgeServer::start();
    let push = p.github(&forge, "push", &push_event("main", &sha), &sha);
    push.failure();
    forge.set_pr_head(5, &sha);
    let event = pr_event("github/pull_request.opened.1.json", 5, &sha, "main", REPO);
    let pr = p.github(&forge, "pull_request", &event, &sha);
    pr.failure().stdout_has("Leak").stdout_has("BadSql");
    let reqs = forge.requests();
    assert_eq!(
        states(&reqs, &sha, "sluice/clinics/a").last().unwrap(),
        "failure"
    );
    let comment = &forge.comments()[0].1;
    assert!(
        comment.contains("Leak") && comment.contains("BadSql"),
        "{comment}"
    );
    for r in &reqs {
        assert!(
            !r.body.contains(PHI)
                && !r.path.contains(PHI)
                && r.headers.iter().all(|(_, v)| !v.contains(PHI)),
            "PHI sent to the forge: {r:?}"
        );
    }
    for run in [&push, &pr] {
        assert!(
            !run.stdout.contains(PHI) && !run.stderr.contains(PHI),
            "PHI in the job log:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn missing_variables_are_named_and_forks_refused() {
    let p = Project::new();
    let sha = p.commit("first");

    // No CI system at all.
    let run = p.ci(&[], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("GITHUB_ACTIONS=true")
        .stderr_has("GITLAB_CI=true");

    // GitHub Actions with nothing else.
    let run = p.ci(&[("GITHUB_ACTIONS", "true")], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for var in [
        "GITHUB_EVENT_NAME",
        "GITHUB_REPOSITORY",
        "GITHUB_SHA",
        "GITHUB_TOKEN",
    ] {
        run.stderr_has(var);
    }

    // A pull request without its event file; the token is set and not shown.
    let run = p.ci(
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_REPOSITORY", REPO),
            ("GITHUB_SHA", &sha),
            ("GITHUB_TOKEN", TOKEN),
        ],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("GITHUB_EVENT_PATH");
    assert!(!run.stderr.contains("GITHUB_TOKEN"), "{}", run.stderr);
    no_token_printed(&run);

    // GitLab CI, with only the token.
    let run = p.ci(
        &[("GITLAB_CI", "true"), ("SLUICE_GITLAB_TOKEN", TOKEN)],
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    for var in ["CI_PROJECT_PATH", "CI_COMMIT_SHA", "CI_API_V4_URL"] {
        run.stderr_has(var);
    }
    no_token_printed(&run);
    // --provider overrides the detection.
    let run = p.ci(&[("GITHUB_ACTIONS", "true")], &["--provider", "gitlab"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("SLUICE_GITLAB_TOKEN");

    // A pull request from a fork is not run, and nothing is sent.
    let forge = FakeForgeServer::start();
    let event = pr_event(
        "github/pull_request.opened.1.json",
        9,
        &sha,
        "main",
        "evil/fork",
    );
    let run = p.github(&forge, "pull_request", &event, &sha);
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("fork");
    assert!(forge.requests().is_empty(), "{:?}", forge.requests());
}

#[test]
fn problems_in_the_pipelines_fail_one_sluice_status() {
    let p = Project::new();
    p.repo
        .file(
            "clinics/a/Count.sql",
            "-- @depend ./Patiens\nSELECT count(*) AS n FROM Patiens;\n",
        )
        .file("clinics/b/Empty.sql", "-- @depend ./Patients\n");
    let sha = p.commit("typos");
    let forge = FakeForgeServer::start();
    let run = p.github(&forge, "push", &push_event("main", &sha), &sha);
    run.failure()
        .stderr_has("clinics/a/Count.sql:1")
        .stderr_has("clinics/b/Empty.sql")
        .stderr_has("2 problems found");
    let s = statuses(&forge.requests(), &sha);
    assert_eq!(s.len(), 1, "{s:?}");
    let (context, state, description, _) = &s[0];
    assert_eq!((context.as_str(), state.as_str()), ("sluice", "failure"));
    assert!(
        description.starts_with("2 problems in the pipelines: clinics/a/Count.sql:1"),
        "{description}"
    );
    assert!(description.chars().count() <= 140);
}

#[test]
fn forge_trouble_is_retried_then_exits_2_after_printing_the_result() {
    let p = Project::new();
    let sha = p.commit("first");

    // Two 503s asking to retry at once: retried, all delivered, exit 0.
    let forge = FakeForgeServer::start();
    forge.fail_next(2, 503, &[("retry-after", "0")]);
    let run = p.github(&forge, "push", &push_event("main", &sha), &sha);
    run.success().stderr_has("retrying");
    let reqs = forge.requests();
    assert_eq!(statuses(&reqs, &sha).len(), 6, "2 refused + 4 delivered");
    for c in CONTEXTS {
        assert_eq!(
            states(&reqs, &sha, c).last().map(String::as_str),
            Some("success")
        );
    }

    // A forge refusing the token: the run's result is still printed,
    // each call is tried once (401 is not worth retrying), exit 2.
    let forge = FakeForgeServer::start();
    forge.fail_next(100, 401, &[]);
    let run = p.github(&forge, "push", &push_event("main", &sha), &sha);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    run.stdout_has("clinics/a")
        .stdout_has("clinics/b")
        .stderr_has("HTTP 401")
        .stderr_has("4 forge calls failed");
    assert_eq!(forge.requests().len(), 4);
    no_token_printed(&run);
}

#[test]
fn ctrl_c_stops_the_run_and_finishes_its_statuses() {
    let p = Project::new();
    p.repo.file(
        "clinics/a/Slow.sh",
        "# @depend ./Patients\n# @timeout 60s\nsleep 30\ncp \"$SLUICE_INPUT_Patients\" \"$SLUICE_OUTPUT\"\n",
    );
    let sha = p.commit("slow");
    let forge = FakeForgeServer::start();
    let mut cmd = p.github_command(&forge, "push", &push_event("main", &sha), &sha);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pending = |r: &[Recorded]| {
        CONTEXTS
            .iter()
            .all(|c| states(r, &sha, c).first().map(String::as_str) == Some("pending"))
    };
    assert!(forge.wait_for(pending, std::time::Duration::from_secs(30)));
    // Give the slow node a moment to start.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, 130, "{}\n{}", run.stdout, run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    run.stderr_has("interrupted");
    let reqs = forge.requests();
    for c in CONTEXTS {
        // GitHub has no "cancelled" state: it is `error`.
        assert_eq!(states(&reqs, &sha, c), ["pending", "error"], "{c}");
    }
    assert!(
        statuses(&reqs, &sha)
            .iter()
            .any(|(_, _, d, _)| d == "cancelled with the CI job")
    );
}
