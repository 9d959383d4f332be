//! `sluice serve` end to end: the real daemon on a loopback port, real
//! commits pushed to a local bare repository, the forges' own example
//! payloads (re-targeted and signed as the forge would), and a recording
//! fake forge checking what sluice sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::fake_forge::{FakeForgeServer, Recorded};
use crate::util::Repo;

const SECRET: &str = "hook-secret-for-tests";
const TOKEN: &str = "forge-token-for-tests";
const REPO: &str = "acme/pipelines";

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

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A running `sluice serve`.
struct Daemon {
    child: Child,
    url: String,
    state: PathBuf,
    config: PathBuf,
    dir: Option<tempfile::TempDir>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn start(origin: &Origin, forge: &FakeForgeServer, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("sluice-server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\npublic_url = \"http://sluice.test\"\nstate_dir = \"{}\"\ndata_root = \"{}\"\nworkers = 2\n{extra}\n\
                 [[repos]]\nforge = \"github\"\nname = \"{REPO}\"\nclone_url = \"{}\"\napi_url = \"{}\"\n\
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

    fn spawn(dir: tempfile::TempDir, state: PathBuf, config: PathBuf) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
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
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
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

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POSTs to the daemon; returns (status, body).
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        http(&self.url, "POST", path, headers, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(&self.url, "GET", path, &[], b"")
    }

    /// Sends a GitHub delivery signed with `secret`.
    fn github(&self, event: &str, payload: &Value, delivery: &str) -> (u16, String) {
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

/// A minimal HTTP/1.1 client (one request per connection).
fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn fixture(path: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/webhooks")
        .join(path);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// GitHub's push example, re-targeted at a branch push of `sha`.
fn push_payload(branch: &str, sha: &str) -> Value {
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
fn pr_payload(file: &str, number: u64, head: &str, branch: &str, head_repo: &str) -> Value {
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

fn statuses_for<'a>(reqs: &'a [Recorded], sha: &str) -> Vec<(String, String, String)> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.route().ends_with(&format!("/statuses/{sha}")))
        .map(|r| {
            let j = r.json();
            (
                j["context"].as_str().unwrap_or("").to_string(),
                j["state"].as_str().unwrap_or("").to_string(),
                j["description"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// True once every pipeline context of `sha` has a final (non-pending) status.
fn finals(reqs: &[Recorded], sha: &str, contexts: &[&str]) -> bool {
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
    let origin = Origin::new();
    let forge = FakeForgeServer::start();
    let d = Daemon::start(&origin, &forge, "");
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
        .last()
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
