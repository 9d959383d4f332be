//! `sluice serve` end to end: the real daemon on a loopback port, real
//! commits pushed to a local bare repository, the forges' own example
//! payloads (re-targeted and signed as the forge would), and a recording
//! fake forge checking what sluice sent.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fake_forge::{FakeForgeServer, Recorded};
use crate::util::{Repo, http};

pub(crate) const SECRET: &str = "hook-secret-for-tests";
const TOKEN: &str = "forge-token-for-tests";
pub(crate) const REPO: &str = "acme/pipelines";

/// A pipelines repository with two clinics, pushed to a bare `origin`.
struct Origin {
    work: Repo,
    bare: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Origin {
    fn new() -> Origin {
        let work = Repo::new();
        work.file(
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
        std::fs::write(
            data.path().join("patients.csv"),
            "id,name,clinic\n1,Ann,a\n2,Bob,a\n3,Cy,b\n4,Di,a\n",
        )
        .unwrap();
        let bare = tempfile::tempdir().unwrap();
        git(bare.path(), &["init", "-q", "--bare", "-b", "main"]);
        work.commit_all("first");
        work.git(&["remote", "add", "origin", bare.path().to_str().unwrap()]);
        work.git(&["push", "-q", "origin", "main"]);
        Origin { work, bare, data }
    }

    /// Commits everything on the current branch and pushes it.
    fn push(&self, branch: &str, message: &str) -> String {
        self.work.git(&["add", "-A"]);
        self.work.git(&["commit", "-q", "-m", message]);
        self.work.git(&[
            "push",
            "-q",
            "-f",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ]);
        self.work.git(&["rev-parse", "HEAD"])
    }
}

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A running `sluice serve`.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) url: String,
    pub(crate) state: PathBuf,
    config: PathBuf,
    dir: Option<tempfile::TempDir>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn start(origin: &Origin, forge: &FakeForgeServer, extra: &str) -> Daemon {
        Daemon::start_as(origin, forge, extra, "github")
    }

    fn start_as(origin: &Origin, forge: &FakeForgeServer, extra: &str, kind: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("sluice-server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\npublic_url = \"http://sluice.test\"\nstate_dir = \"{}\"\ndata_root = \"{}\"\nworkers = 2\n{extra}\n\
                 [[repos]]\nforge = \"{kind}\"\nname = \"{REPO}\"\nclone_url = \"{}\"\napi_url = \"{}\"\n\
                 production_branch = \"main\"\nsecret_env = \"SLUICE_TEST_SECRET\"\ntoken_env = \"SLUICE_TEST_TOKEN\"\n",
                state.display(),
                origin.data.path().display(),
                origin.bare.path().display(),
                forge.url(),
            ),
        )
        .unwrap();
        Daemon::spawn(dir, state, config)
    }

    pub(crate) fn spawn(dir: tempfile::TempDir, state: PathBuf, config: PathBuf) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        #[cfg(feature = "team")]
        {
            // For a config with `blobs = "s3://…"`: moto's endpoint and keys.
            if std::fs::read_to_string(&config).is_ok_and(|c| c.contains("\"s3://")) {
                for (k, v) in crate::moto::moto().env() {
                    cmd.env(k, v);
                }
            }
            // For a config with `state = "postgresql://…"`.
            cmd.env("PGPASSWORD", crate::pg_cluster::PASSWORD);
        }
        let mut child = cmd
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("SLUICE_TEST_SECRET", SECRET)
            .env("SLUICE_TEST_TOKEN", TOKEN)
            .env_remove("SLUICE_STATE_DIR")
            .env_remove("SLUICE_DATA_ROOT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("sluice serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let log = crate::util::capture_stderr(&mut child);
        Daemon {
            child,
            url,
            state,
            config,
            dir: Some(dir),
            log,
        }
    }

    /// Kills the daemon with SIGKILL and starts it again on the same state.
    fn kill9_and_restart(mut self) -> Daemon {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = self.dir.take().unwrap();
        Daemon::spawn(dir, self.state.clone(), self.config.clone())
    }

    /// Stops the daemon with SIGTERM (it must exit 0, quickly) and starts
    /// it again on the same state.
    fn terminate_and_restart(mut self) -> Daemon {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let start = std::time::Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
        assert!(start.elapsed() < Duration::from_secs(10), "slow shutdown");
        assert!(self.log().contains("queued again"), "{}", self.log());
        let dir = self.dir.take().unwrap();
        Daemon::spawn(dir, self.state.clone(), self.config.clone())
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POSTs to the daemon; returns (status, body).
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        http(&self.url, "POST", path, headers, body)
    }

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http(&self.url, "GET", path, &[], b"")
    }

    /// Sends a GitHub delivery signed with `secret`.
    pub(crate) fn github(&self, event: &str, payload: &Value, delivery: &str) -> (u16, String) {
        let body = serde_json::to_vec(payload).unwrap();
        let sig = sluice::server::webhook::sign(SECRET.as_bytes(), &body);
        self.post(
            "/hooks/github",
            &[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &sig),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn fixture(path: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/webhooks")
        .join(path);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// GitHub's push example, re-targeted at a branch push of `sha`.
pub(crate) fn push_payload(branch: &str, sha: &str) -> Value {
    let mut v = fixture("github/push.1.json");
    v["ref"] = format!("refs/heads/{branch}").into();
    v["before"] = "0".repeat(40).into();
    v["after"] = sha.into();
    v["created"] = true.into();
    v["deleted"] = false.into();
    v["repository"]["full_name"] = REPO.into();
    v
}

/// GitHub's pull_request example, re-targeted.
pub(crate) fn pr_payload(
    file: &str,
    number: u64,
    head: &str,
    branch: &str,
    head_repo: &str,
) -> Value {
    let mut v = fixture(file);
    v["number"] = number.into();
    v["pull_request"]["number"] = number.into();
    v["pull_request"]["head"]["sha"] = head.into();
    v["pull_request"]["head"]["ref"] = branch.into();
    v["pull_request"]["head"]["repo"]["full_name"] = head_repo.into();
    v["pull_request"]["base"]["ref"] = "main".into();
    v["pull_request"]["base"]["repo"]["full_name"] = REPO.into();
    v["repository"]["full_name"] = REPO.into();
    v
}

pub(crate) fn statuses_for(reqs: &[Recorded], sha: &str) -> Vec<(String, String, String)> {
    crate::fake_forge::statuses(reqs, sha)
        .into_iter()
        .map(|(context, state, description, _)| (context, state, description))
        .collect()
}

/// True once every pipeline context of `sha` has a final (non-pending) status.
pub(crate) fn finals(reqs: &[Recorded], sha: &str, contexts: &[&str]) -> bool {
    let s = statuses_for(reqs, sha);
    contexts.iter().all(|c| {
        s.iter()
            .any(|(ctx, state, _)| ctx == c && state != "pending")
    })
}

const WAIT: Duration = Duration::from_secs(60);
const CONTEXTS: [&str; 2] = ["sluice/clinics/a", "sluice/clinics/b"];

#[test]
fn push_then_pull_request_statuses_and_one_comment_edited_in_place() {
    push_then_pull_request("");
}

/// The same with the queue and the state on PostgreSQL, the blobs on S3.
#[cfg(feature = "team")]
#[test]
fn push_then_pull_request_on_postgresql_and_s3() {
    let stores = Stores::shared("pushpr");
    push_then_pull_request(&stores.config);
    let count = |sql: &str| stores.count(sql);
    assert!(count("SELECT count(*) FROM sluice_daemon.jobs WHERE state = 'done'") >= 2);
    assert!(count("SELECT count(*) FROM sluice_daemon.outbox WHERE state = 'done'") >= 4);
    let repos = stores.repo_schemas();
    assert_eq!(repos.len(), 1, "{repos:?}");
    let refs = count(&format!("SELECT count(*) FROM {}.refs", repos[0]));
    assert_eq!(refs, 2, "main promoted both clinics");
}

/// Where a daemon keeps its state and blobs: the embedded stores under its
/// `state_dir`, or a fresh PostgreSQL database (`state = "postgresql://…"`)
/// and a fresh bucket on moto's S3 server (`blobs = "s3://…"`).
pub(crate) struct Stores {
    /// Lines for `sluice-server.toml`.
    pub(crate) config: String,
    #[cfg(feature = "team")]
    shared: Option<(crate::pg_cluster::TestDb, String)>,
}

impl Stores {
    pub(crate) fn embedded() -> Stores {
        Stores {
            config: String::new(),
            #[cfg(feature = "team")]
            shared: None,
        }
    }

    /// Whether these are the embedded stores.
    fn is_embedded(&self) -> bool {
        #[cfg(feature = "team")]
        {
            self.shared.is_none()
        }
        #[cfg(not(feature = "team"))]
        {
            true
        }
    }

    /// Without the team feature, only the embedded stores: nothing to
    /// check.
    #[cfg(not(feature = "team"))]
    fn check(&self, _: &Daemon) {}

    /// Without the team feature, only the embedded stores: nothing to
    /// check.
    #[cfg(not(feature = "team"))]
    fn lacks(&self, _: &str) {}

    #[cfg(feature = "team")]
    pub(crate) fn shared(hint: &str) -> Stores {
        let db = crate::pg_cluster::cluster().fresh_db();
        let bucket = crate::moto::moto().bucket(hint);
        Stores {
            // A short lease: a killed daemon's job is taken over quickly.
            config: format!(
                "state = \"{}\"\nblobs = \"s3://{bucket}/d\"\ntask_lease = \"2s\"\n",
                db.url
            ),
            shared: Some((db, bucket)),
        }
    }

    #[cfg(feature = "team")]
    pub(crate) fn bucket(&self) -> &str {
        &self.shared.as_ref().expect("shared stores").1
    }

    #[cfg(feature = "team")]
    pub(crate) fn db(&self) -> &crate::pg_cluster::TestDb {
        &self.shared.as_ref().expect("shared stores").0
    }

    #[cfg(feature = "team")]
    pub(crate) fn count(&self, sql: &str) -> i64 {
        crate::pg_cluster::cluster().query(&self.db().name, sql)[0]
            .parse()
            .unwrap()
    }

    /// The `sluice_repo_<id>` schemas the daemon made.
    #[cfg(feature = "team")]
    fn repo_schemas(&self) -> Vec<String> {
        crate::pg_cluster::cluster().query(
            &self.db().name,
            "SELECT schema_name FROM information_schema.schemata \
             WHERE schema_name LIKE 'sluice_repo_%'",
        )
    }

    /// With the shared stores: the daemon used them (its jobs in
    /// PostgreSQL, its tables in the bucket, no blob under its state dir),
    /// with the embedded ones, nothing to check.
    #[cfg(feature = "team")]
    fn check(&self, d: &Daemon) {
        let Some((_, bucket)) = &self.shared else {
            return;
        };
        assert!(self.count("SELECT count(*) FROM sluice_daemon.jobs") >= 1);
        let keys = crate::moto::moto().keys(bucket, "d/sha256/");
        assert!(!keys.is_empty(), "no blob in the bucket");
        fn files(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() { files(&p) } else { 1 }
                    })
                    .sum()
            })
        }
        let local = d.state.join("blobs");
        assert_eq!(files(&local), 0, "blobs under {}", local.display());
    }

    /// With the shared stores: no row of any sluice schema of the
    /// database holds `secret` in its text form.
    #[cfg(feature = "team")]
    fn lacks(&self, secret: &str) {
        let Some((db, _)) = &self.shared else {
            return;
        };
        let tables = crate::pg_cluster::cluster().query(
            &db.name,
            "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) \
             FROM information_schema.tables WHERE table_schema LIKE 'sluice%'",
        );
        assert!(tables.len() >= 5, "{tables:?}");
        for t in tables {
            let hits = self.count(&format!(
                "SELECT count(*) FROM {t} AS x WHERE x::text LIKE '%{secret}%'"
            ));
            assert_eq!(hits, 0, "{secret} in {t}");
        }
    }
}

fn push_then_pull_request(extra: &str) {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, extra);
    let main_sha = origin.work.git(&["rev-parse", "HEAD"]);

    // A push to main: statuses per pipeline, pending then success, and
    // production is promoted (the cache warms).
    let (code, body) = d.github("push", &push_payload("main", &main_sha), "d-1");
    assert_eq!(code, 202, "{body}");
    assert!(
        forge.wait_for(|r| finals(r, &main_sha, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    for c in CONTEXTS {
        let states: Vec<String> = statuses_for(&reqs, &main_sha)
            .into_iter()
            .filter(|(ctx, _, _)| ctx == c)
            .map(|(_, s, _)| s)
            .collect();
        assert_eq!(states, ["pending", "success"], "{c}");
    }
    let st = reqs
        .iter()
        .find(|r| r.route().ends_with(&format!("/statuses/{main_sha}")))
        .unwrap();
    assert_eq!(st.route(), format!("/repos/{REPO}/statuses/{main_sha}"));
    assert_eq!(
        st.header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert!(
        st.json()["target_url"]
            .as_str()
            .unwrap()
            .starts_with("http://sluice.test/runs/r_")
    );

    // A redelivery of the same delivery id does nothing.
    let (code, body) = d.github("push", &push_payload("main", &main_sha), "d-1");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("duplicate"), "{body}");

    // A branch that drops a patient and adds a column, as a PR.
    origin.work.git(&["checkout", "-q", "-b", "feature"]);
    origin.work.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name, 1 AS flag FROM patients WHERE clinic = 'a' AND id <> 4;\n",
    );
    let head1 = origin.push("feature", "drop patient 4");
    forge.set_pr_head(7, &head1);
    let payload = pr_payload(
        "github/pull_request.opened.1.json",
        7,
        &head1,
        "feature",
        REPO,
    );
    let (code, body) = d.github("pull_request", &payload, "d-2");
    assert_eq!(code, 202, "{body}");
    assert!(
        forge.wait_for(
            |r| r
                .iter()
                .any(|q| q.method == "POST" && q.route().ends_with("/issues/7/comments")),
            WAIT
        ),
        "no comment; log:\n{}",
        d.log()
    );
    let comments = forge.comments();
    assert_eq!(comments.len(), 1);
    let body1 = &comments[0].1;
    assert!(body1.contains("<!-- sluice:report -->"), "{body1}");
    assert!(body1.contains("Patients"), "{body1}");
    assert!(
        body1.contains("3 → 2"),
        "row counts production → branch:\n{body1}"
    );
    assert!(body1.contains("flag"), "the added column:\n{body1}");
    let reqs = forge.requests();
    assert!(finals(&reqs, &head1, &CONTEXTS));
    let a = statuses_for(&reqs, &head1);
    assert!(
        a.iter()
            .any(|(c, s, _)| c == "sluice/clinics/b" && s == "success"),
        "{a:?}"
    );

    // New commits: the same comment is edited, never a second one.
    origin.work.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients WHERE clinic = 'a' AND id <> 1 AND id <> 4;\n",
    );
    let head2 = origin.push("feature", "drop patient 1 too");
    forge.set_pr_head(7, &head2);
    let payload = pr_payload(
        "github/pull_request.synchronize.1.json",
        7,
        &head2,
        "feature",
        REPO,
    );
    let (code, body) = d.github("pull_request", &payload, "d-3");
    assert_eq!(code, 202, "{body}");
    assert!(
        forge.wait_for(
            |r| r
                .iter()
                .any(|q| q.method == "PATCH" && q.route().contains("/issues/comments/")),
            WAIT
        ),
        "no edit; log:\n{}",
        d.log()
    );
    let reqs = forge.requests();
    let posts = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.route().ends_with("/issues/7/comments"))
        .count();
    assert_eq!(posts, 1, "one comment, edited in place");
    let comments = forge.comments();
    assert_eq!(comments.len(), 1);
    assert!(comments[0].1.contains("3 → 1"), "{}", comments[0].1);

    // The run page and its JSON are served; unknown ids are not.
    let run_url = statuses_for(&reqs, &head2).len();
    assert!(run_url > 0);
    let target = reqs
        .iter()
        .filter(|r| r.route().ends_with(&format!("/statuses/{head2}")))
        .filter_map(|r| r.json()["target_url"].as_str().map(str::to_string))
        .next_back()
        .unwrap();
    let path = target.strip_prefix("http://sluice.test").unwrap();
    let (code, html) = d.get(path);
    assert_eq!(code, 200);
    assert!(
        html.contains("clinics/a") && html.contains("clinics/b"),
        "{html}"
    );
    let (code, json) = d.get(&format!("{path}.json"));
    assert_eq!(code, 200);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["commit"], Value::from(head2.clone()));
    assert_eq!(d.get("/runs/r_00000000000000000000000000000000").0, 404);
    assert_eq!(d.get("/runs/../../etc/passwd").0, 404);
}

#[test]
fn bad_signatures_forks_and_unknown_repositories_are_refused() {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, "");
    let sha = origin.work.git(&["rev-parse", "HEAD"]);
    let body = serde_json::to_vec(&push_payload("main", &sha)).unwrap();

    // Wrong secret, tampered body, missing signature: 401.
    let wrong = sluice::server::webhook::sign(b"not-the-secret", &body);
    let (code, _) = d.post(
        "/hooks/github",
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong)],
        &body,
    );
    assert_eq!(code, 401);
    let good = sluice::server::webhook::sign(SECRET.as_bytes(), &body);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let (code, _) = d.post(
        "/hooks/github",
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &good)],
        &tampered,
    );
    assert_eq!(code, 401);
    let (code, _) = d.post("/hooks/github", &[("X-GitHub-Event", "push")], &body);
    assert_eq!(code, 401);
    // GitLab's token, wrong.
    let (code, _) = d.post(
        "/hooks/gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", SECRET)],
        &body,
    );
    assert_eq!(code, 401, "no GitLab repository is configured");

    // A ping is answered.
    let (code, _) = d.github("ping", &fixture("github/ping.1.json"), "p-1");
    assert_eq!(code, 200);

    // An unknown repository: 404.
    let mut other = push_payload("main", &sha);
    other["repository"]["full_name"] = "acme/other".into();
    let (code, _) = d.github("push", &other, "u-1");
    assert_eq!(code, 404);

    // A fork's pull request is not run.
    let fork = pr_payload(
        "github/pull_request.opened.1.json",
        9,
        &sha,
        "main",
        "evil/fork",
    );
    let (code, body) = d.github("pull_request", &fork, "f-1");
    assert_eq!(code, 202, "{body}");
    assert!(body.contains("nothing to run"), "{body}");
    // A closed PR and a tag push are ignored too.
    let closed = pr_payload("github/pull_request.closed.1.json", 9, &sha, "main", REPO);
    assert_eq!(d.github("pull_request", &closed, "c-1").0, 202);
    let (code, _) = d.github("push", &fixture("github/push.1.json"), "t-1");
    assert!(code == 202 || code == 404, "{code}");

    std::thread::sleep(Duration::from_millis(500));
    assert!(forge.requests().is_empty(), "{:?}", forge.requests());
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains("sluice_deliveries_total{result=\"unauthorized\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_jobs{state=\"queued\"} 0"),
        "{metrics}"
    );
    assert!(!d.log().contains(SECRET) && !d.log().contains(TOKEN));
}

/// Consecutive duplicates removed: a retried call is one call.
fn dedup<T: PartialEq>(mut v: Vec<T>) -> Vec<T> {
    v.dedup();
    v
}

fn states_of(reqs: &[Recorded], sha: &str, context: &str) -> Vec<String> {
    dedup(
        statuses_for(reqs, sha)
            .into_iter()
            .filter(|(c, _, _)| c == context)
            .map(|(_, s, _)| s)
            .collect(),
    )
}

/// A node that takes a while, so a job can be caught running.
const SLOW: &str = "# @depend ./Patients\n# @timeout 60s\nsleep 4\ncp \"$SLUICE_INPUT_Patients\" \"$SLUICE_OUTPUT\"\n";

#[test]
fn a_newer_push_supersedes_the_running_job() {
    a_newer_push_supersedes_the_running_job_on(&Stores::embedded());
}

#[cfg(feature = "team")]
#[test]
fn a_newer_push_supersedes_the_running_job_on_postgresql_and_s3() {
    a_newer_push_supersedes_the_running_job_on(&Stores::shared("a_newer_push"));
}

fn a_newer_push_supersedes_the_running_job_on(stores: &Stores) {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, &stores.config);
    origin.work.git(&["checkout", "-q", "-b", "feat"]);
    origin.work.file("clinics/a/Slow.sh", SLOW);
    let first = origin.push("feat", "slow");
    assert_eq!(
        d.github("push", &push_payload("feat", &first), "s-1").0,
        202
    );
    // Running: its pending statuses are out.
    assert!(
        forge.wait_for(
            |r| statuses_for(r, &first)
                .iter()
                .any(|(_, s, _)| s == "pending"),
            WAIT
        ),
        "{}",
        d.log()
    );
    origin.work.file(
        "clinics/a/Slow.sh",
        "# @depend ./Patients\ncp \"$SLUICE_INPUT_Patients\" \"$SLUICE_OUTPUT\"\n",
    );
    let second = origin.push("feat", "fast");
    let started = std::time::Instant::now();
    assert_eq!(
        d.github("push", &push_payload("feat", &second), "s-2").0,
        202
    );
    assert!(
        forge.wait_for(|r| finals(r, &second, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    let old = statuses_for(&reqs, &first);
    assert!(
        old.iter().any(|(c, s, desc)| c == "sluice/clinics/a"
            && s == "error"
            && desc.contains("superseded")),
        "{old:?}"
    );
    assert_eq!(
        states_of(&reqs, &second, "sluice/clinics/a"),
        ["pending", "success"]
    );
    // The sleeping node was stopped, not waited for.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    stores.check(&d);
}

#[test]
fn a_job_killed_with_sigkill_finishes_after_restart() {
    a_job_killed_with_sigkill_finishes_after_restart_on(&Stores::embedded());
}

#[cfg(feature = "team")]
#[test]
fn a_job_killed_with_sigkill_finishes_after_restart_on_postgresql_and_s3() {
    a_job_killed_with_sigkill_finishes_after_restart_on(&Stores::shared("a_job_killed"));
}

fn a_job_killed_with_sigkill_finishes_after_restart_on(stores: &Stores) {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, &stores.config);
    origin.work.file("clinics/a/Slow.sh", SLOW);
    let sha = origin.push("main", "slow node");
    assert_eq!(d.github("push", &push_payload("main", &sha), "k-1").0, 202);
    assert!(
        forge.wait_for(
            |r| statuses_for(r, &sha).iter().any(|(_, s, _)| s == "pending"),
            WAIT
        ),
        "{}",
        d.log()
    );
    assert!(!finals(&forge.requests(), &sha, &CONTEXTS));
    let d = d.kill9_and_restart();
    assert!(
        forge.wait_for(|r| finals(r, &sha, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    for c in CONTEXTS {
        assert_eq!(
            states_of(&reqs, &sha, c).last().map(String::as_str),
            Some("success"),
            "{c}"
        );
    }
    if stores.is_embedded() {
        assert!(d.log().contains("resuming jobs"), "{}", d.log());
    } else {
        // On a shared queue the killed daemon's job is claimed again once
        // its lease expired, and its report written once.
        #[cfg(feature = "team")]
        assert_eq!(
            stores.count("SELECT count(*) FROM sluice_daemon.jobs WHERE report IS NOT NULL"),
            1
        );
    }
    stores.check(&d);
}

#[test]
fn sigterm_stops_the_running_job_and_the_next_start_finishes_it() {
    sigterm_stops_the_running_job_and_the_next_start_finishes_it_on(&Stores::embedded());
}

#[cfg(feature = "team")]
#[test]
fn sigterm_stops_the_running_job_and_the_next_start_finishes_it_on_postgresql_and_s3() {
    sigterm_stops_the_running_job_and_the_next_start_finishes_it_on(&Stores::shared(
        "sigterm_stop",
    ));
}

fn sigterm_stops_the_running_job_and_the_next_start_finishes_it_on(stores: &Stores) {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, &stores.config);
    origin.work.file("clinics/a/Slow.sh", SLOW);
    let sha = origin.push("main", "slow node");
    assert_eq!(d.github("push", &push_payload("main", &sha), "t-1").0, 202);
    assert!(
        forge.wait_for(
            |r| statuses_for(r, &sha).iter().any(|(_, s, _)| s == "pending"),
            WAIT
        ),
        "{}",
        d.log()
    );
    let d = d.terminate_and_restart();
    assert!(
        forge.wait_for(|r| finals(r, &sha, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    for c in CONTEXTS {
        assert_eq!(
            states_of(&reqs, &sha, c).last().map(String::as_str),
            Some("success"),
            "{c}"
        );
    }
    stores.check(&d);
}

#[test]
fn statuses_survive_a_forge_outage_in_order() {
    statuses_survive_a_forge_outage_in_order_on(&Stores::embedded());
}

#[cfg(feature = "team")]
#[test]
fn statuses_survive_a_forge_outage_in_order_on_postgresql_and_s3() {
    statuses_survive_a_forge_outage_in_order_on(&Stores::shared("statuses_sur"));
}

fn statuses_survive_a_forge_outage_in_order_on(stores: &Stores) {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    // Two 500s, then two 429s asking for a second's patience.
    forge.fail_next(2, 500, &[]);
    forge.fail_next(2, 429, &[("Retry-After", "1")]);
    let d = Daemon::start(&origin, &forge, &stores.config);
    let sha = origin.work.git(&["rev-parse", "HEAD"]);
    assert_eq!(d.github("push", &push_payload("main", &sha), "o-1").0, 202);
    assert!(
        forge.wait_for(|r| finals(r, &sha, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    for c in CONTEXTS {
        assert_eq!(states_of(&reqs, &sha, c), ["pending", "success"], "{c}");
    }
    // Retry-After was honoured: the try after the last 429 came a second
    // or more after it.
    let posts: Vec<&Recorded> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert!(posts.len() >= 4 + 4, "{}", posts.len());
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains("sluice_forge_calls_total{result=\"retried\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_forge_calls_total{result=\"dropped\"} 0"),
        "{metrics}"
    );
    stores.check(&d);
}

#[test]
fn no_cell_value_reaches_the_forge_the_metrics_or_the_log() {
    no_cell_value_reaches_the_forge_the_metrics_or_the_log_on(&Stores::embedded());
}

#[cfg(feature = "team")]
#[test]
fn no_cell_value_reaches_the_forge_the_metrics_or_the_log_on_postgresql_and_s3() {
    no_cell_value_reaches_the_forge_the_metrics_or_the_log_on(&Stores::shared("no_cell_valu"));
}

fn no_cell_value_reaches_the_forge_the_metrics_or_the_log_on(stores: &Stores) {
    const PHI: &str = "ZZPHI4711Q";
    let origin = Origin::new();
    std::fs::write(
        origin.data.path().join("patients.csv"),
        format!("id,name,clinic\n1,{PHI},a\n2,Bob,a\n3,Cy,b\n"),
    )
    .unwrap();
    origin
        .work
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
    let sha = origin.push("main", "failing nodes");
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, &stores.config);
    forge.set_pr_head(5, &sha);
    assert_eq!(
        d.github("push", &push_payload("main", &sha), "phi-1").0,
        202
    );
    let pr = pr_payload("github/pull_request.opened.1.json", 5, &sha, "main", REPO);
    assert_eq!(d.github("pull_request", &pr, "phi-2").0, 202);
    assert!(
        forge.wait_for(
            |r| finals(r, &sha, &CONTEXTS)
                && r.iter()
                    .any(|q| q.route().ends_with("/issues/5/comments") && q.method == "POST"),
            WAIT
        ),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    let a = states_of(&reqs, &sha, "sluice/clinics/a");
    assert_eq!(a.last().map(String::as_str), Some("failure"), "{a:?}");
    let comment = &forge.comments()[0].1;
    assert!(
        comment.contains("Leak") && comment.contains("BadSql"),
        "{comment}"
    );
    for r in &reqs {
        assert!(
            !r.body.contains(PHI) && !r.path.contains(PHI),
            "PHI sent to the forge: {r:?}"
        );
    }
    let (_, metrics) = d.get("/metrics");
    assert!(!metrics.contains(PHI), "{metrics}");
    let target = reqs
        .iter()
        .filter_map(|r| r.json()["target_url"].as_str().map(str::to_string))
        .next_back()
        .unwrap();
    let page = target.strip_prefix("http://sluice.test").unwrap();
    let (code, html) = d.get(page);
    assert_eq!(code, 200);
    assert!(html.contains("Leak"), "{html}");
    assert!(
        !html.contains(PHI),
        "run page shows PHI without run_page_logs"
    );
    let (_, json) = d.get(&format!("{page}.json"));
    assert!(!json.contains(PHI), "{json}");
    assert!(!d.log().contains(PHI), "{}", d.log());
    stores.check(&d);
    stores.lacks(PHI);
}

#[test]
fn gitlab_merge_request_gets_statuses_and_one_note() {
    gitlab_merge_request_gets_statuses_and_one_note_on(&Stores::embedded());
}

#[cfg(feature = "team")]
#[test]
fn gitlab_merge_request_gets_statuses_and_one_note_on_postgresql_and_s3() {
    gitlab_merge_request_gets_statuses_and_one_note_on(&Stores::shared("gitlab_merge"));
}

fn gitlab_merge_request_gets_statuses_and_one_note_on(stores: &Stores) {
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start_as(&origin, &forge, &stores.config, "gitlab");
    // A push to main through GitLab's push hook promotes production.
    let main_sha = origin.work.git(&["rev-parse", "HEAD"]);
    let mut push = fixture("gitlab/push.1.json");
    push["project"]["path_with_namespace"] = REPO.into();
    push["ref"] = "refs/heads/main".into();
    push["before"] = "0".repeat(40).into();
    push["after"] = main_sha.clone().into();
    push["checkout_sha"] = main_sha.clone().into();
    let (code, text) = d.post(
        "/hooks/gitlab",
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", SECRET),
            ("Idempotency-Key", "push-1"),
        ],
        &serde_json::to_vec(&push).unwrap(),
    );
    assert_eq!(code, 202, "{text}");
    assert!(
        forge.wait_for(|r| finals(r, &main_sha, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    origin.work.git(&["checkout", "-q", "-b", "mr"]);
    origin.work.file(
        "clinics/b/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients;\n",
    );
    let head = origin.push("mr", "all patients in b");
    forge.set_pr_head(3, &head);
    let mut v = fixture("gitlab/merge_request.1.json");
    v["project"]["path_with_namespace"] = REPO.into();
    v["object_attributes"]["iid"] = 3.into();
    v["object_attributes"]["last_commit"]["id"] = head.clone().into();
    v["object_attributes"]["source_branch"] = "mr".into();
    v["object_attributes"]["target_branch"] = "main".into();
    let body = serde_json::to_vec(&v).unwrap();
    let (code, _) = d.post(
        "/hooks/gitlab",
        &[
            ("X-Gitlab-Event", "Merge Request Hook"),
            ("X-Gitlab-Token", "wrong"),
        ],
        &body,
    );
    assert_eq!(code, 401);
    let (code, text) = d.post(
        "/hooks/gitlab",
        &[
            ("X-Gitlab-Event", "Merge Request Hook"),
            ("X-Gitlab-Token", SECRET),
            ("Idempotency-Key", "mr-1"),
        ],
        &body,
    );
    assert_eq!(code, 202, "{text}");
    let encoded = "acme%2Fpipelines";
    assert!(
        forge.wait_for(
            |r| r.iter().any(|q| q.method == "POST"
                && q.route() == format!("/projects/{encoded}/merge_requests/3/notes")),
            WAIT
        ),
        "{}",
        d.log()
    );
    let reqs = forge.requests();
    assert!(finals(&reqs, &head, &CONTEXTS));
    let st: Vec<Value> = reqs
        .iter()
        .filter(|r| r.route() == format!("/projects/{encoded}/statuses/{head}"))
        .map(|r| r.json())
        .collect();
    assert!(
        st.iter()
            .any(|j| j["name"] == "sluice/clinics/b" && j["state"] == "success"),
        "{st:?}"
    );
    assert_eq!(reqs[0].header("private-token"), Some(TOKEN));
    let note = &forge.comments()[0].1;
    assert!(note.contains("1 → 4"), "{note}");
    stores.check(&d);
}

/// The run page in a real browser (Debian's `chromium`, headless): every
/// pipeline and the failed node's error are on it. The screenshot is kept
/// in the target directory for a person to look at.
#[test]
fn run_page_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("skipped: no chromium on this machine");
        return;
    };
    let origin = Origin::new();
    origin.work.file(
        "clinics/b/Broken.sql",
        "-- @depend ./Patients\nSELECT id FROM Patients WHERE;\n",
    );
    let sha = origin.push("main", "a broken node");
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, "");
    assert_eq!(d.github("push", &push_payload("main", &sha), "c-1").0, 202);
    assert!(
        forge.wait_for(|r| finals(r, &sha, &CONTEXTS), WAIT),
        "{}",
        d.log()
    );
    let target = forge
        .requests()
        .iter()
        .filter_map(|r| r.json()["target_url"].as_str().map(str::to_string))
        .next_back()
        .unwrap();
    let url = format!(
        "{}{}",
        d.url,
        target.strip_prefix("http://sluice.test").unwrap()
    );
    let profile = tempfile::tempdir().unwrap();
    let browser = |extra: &[&str]| {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browser(&["--dump-dom"]);
    assert!(
        dom.contains("clinics/a") && dom.contains("clinics/b"),
        "{dom}"
    );
    assert!(dom.contains("Broken"), "{dom}");
    assert!(
        dom.contains("syntax error"),
        "the failed node's error:\n{dom}"
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-page.png");
    let _ = std::fs::remove_file(&shot);
    browser(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn a_bad_config_or_a_missing_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice-server.toml");
    std::fs::write(&cfg, "listen = \"nowhere\"\n").unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--config", cfg.to_str().unwrap()]);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("listen"), "{err}");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://s.test\"\nstate_dir = \"{0}/s\"\ndata_root = \"{0}\"\nworkers = 1\n\
             [[repos]]\nforge = \"github\"\nname = \"a/b\"\nclone_url = \"{0}\"\napi_url = \"http://f.test\"\n\
             production_branch = \"main\"\nsecret_env = \"SLUICE_TEST_MISSING_SECRET\"\ntoken_env = \"SLUICE_TEST_TOKEN\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (code, err) = run(&[("SLUICE_TEST_TOKEN", "t0ken-value")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("SLUICE_TEST_MISSING_SECRET"), "{err}");
    assert!(!err.contains("t0ken-value"), "{err}");
}
