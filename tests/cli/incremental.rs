//! The daemon's incremental plan: a second push is planned from the first
//! one's plan (the log says so, with `plan_ms`), and gives the statuses and
//! the report a cold daemon gives for the same commits.

use std::time::Duration;

use serde_json::Value;

use crate::daemon::{Daemon, SECRET, fixture};
use crate::fake_forge::{FakeForgeServer, Recorded};
use crate::util::{Repo, git_in};

const REPO: &str = "acme/incremental";
const CONTEXTS: [&str; 3] = ["sluice/clinics/a", "sluice/clinics/b", "sluice/clinics/c"];
const WAIT: Duration = Duration::from_secs(60);

/// Three clinics mounting one shared group, pushed to a bare origin.
struct Origin {
    work: Repo,
    bare: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Origin {
    fn new() -> Origin {
        let work = Repo::new();
        work.file(
            "groups/common/Patients.sql",
            "-- @source data://patients.csv\n-- @param clinic=x\n-- @key id\nSELECT id, name FROM patients WHERE clinic = '{{clinic}}';\n",
        );
        for c in ["a", "b", "c"] {
            work.file(
                &format!("clinics/{c}/group.sql"),
                &format!("-- @include /groups/common\n-- @param clinic={c}\n"),
            )
            .file(
                &format!("clinics/{c}/Count.sql"),
                "-- @depend ./Patients\nSELECT count(*) AS n FROM Patients;\n",
            );
        }
        let data = tempfile::tempdir().unwrap();
        std::fs::write(
            data.path().join("patients.csv"),
            "id,name,clinic\n1,Ann,a\n2,Bob,b\n3,Cy,c\n4,Di,a\n",
        )
        .unwrap();
        let bare = tempfile::tempdir().unwrap();
        git_in(bare.path(), &["init", "-q", "--bare", "-b", "main"]);
        work.commit_all("first");
        work.git(&["branch", "-M", "main"]);
        work.git(&["remote", "add", "origin", bare.path().to_str().unwrap()]);
        work.git(&["push", "-q", "origin", "main"]);
        Origin { work, bare, data }
    }

    fn push(&self, message: &str) -> String {
        self.work.git(&["add", "-A"]);
        self.work.git(&["commit", "-q", "-m", message]);
        self.work
            .git(&["push", "-q", "-f", "origin", "HEAD:refs/heads/main"]);
        self.work.git(&["rev-parse", "HEAD"])
    }

    /// A daemon keeping its state in `state`.
    fn daemon(&self, forge: &FakeForgeServer, state: &std::path::Path) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = state.to_path_buf();
        let config = dir.path().join("sluice-server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\npublic_url = \"http://sluice.test\"\nstate_dir = \"{}\"\ndata_root = \"{}\"\nworkers = 1\n\
                 [[repos]]\nforge = \"github\"\nname = \"{REPO}\"\nclone_url = \"{}\"\napi_url = \"{}\"\n\
                 production_branch = \"main\"\nsecret_env = \"SLUICE_TEST_SECRET\"\ntoken_env = \"SLUICE_TEST_TOKEN\"\n",
                state.display(),
                self.data.path().display(),
                self.bare.path().display(),
                forge.url(),
            ),
        )
        .unwrap();
        Daemon::spawn(dir, state, config)
    }
}

/// The body of a 2xx answer.
fn http(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let (status, text) = crate::util::http(base, method, path, headers, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    text
}

/// Delivers a push of `sha` to main; returns the job's run id.
fn push(d: &Daemon, sha: &str, delivery: &str) -> String {
    let mut v = fixture("github/push.1.json");
    v["ref"] = "refs/heads/main".into();
    v["before"] = "0".repeat(40).into();
    v["after"] = sha.into();
    v["created"] = true.into();
    v["deleted"] = false.into();
    v["repository"]["full_name"] = REPO.into();
    let body = serde_json::to_vec(&v).unwrap();
    let sig = sluice::server::webhook::sign(SECRET.as_bytes(), &body);
    let answer = http(
        &d.url,
        "POST",
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &sig),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    answer["run"].as_str().unwrap().to_string()
}

/// The statuses of `sha`, in order: (context, state, description).
fn statuses(reqs: &[Recorded], sha: &str) -> Vec<(String, String, String)> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.route().ends_with(&format!("/statuses/{sha}")))
        .map(|r| {
            let j = r.json();
            let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
            // Without the time it took (`2 ms`, `1.5 s`).
            let description: Vec<String> = s("description")
                .split(" · ")
                .filter(|part| !part.ends_with(" ms") && !part.ends_with(" s"))
                .map(str::to_string)
                .collect();
            (s("context"), s("state"), description.join(" · "))
        })
        .collect()
}

fn finished(reqs: &[Recorded], sha: &str) -> bool {
    let s = statuses(reqs, sha);
    CONTEXTS.iter().all(|c| {
        s.iter()
            .any(|(ctx, state, _)| ctx == c && state != "pending")
    })
}

/// The run report without what differs from run to run (ids, times,
/// manifest digests, which record times).
fn report(d: &Daemon, run: &str) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for k in [
                    "run_id",
                    "started_at",
                    "duration_ms",
                    "manifest",
                    "production",
                    "url",
                ] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value =
        serde_json::from_str(&http(&d.url, "GET", &format!("/runs/{run}.json"), &[], b"")).unwrap();
    strip(&mut v);
    v
}

/// The `planned` line of the job of `run`: (how, plan_ms).
fn planned(d: &Daemon, run: &str) -> (String, f64) {
    let log = without_colours(&d.log());
    let job = log
        .lines()
        .find(|l| l.contains("job started") && l.contains(&format!("run={run}")))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("job=")))
        .unwrap_or_else(|| panic!("no start of {run}:\n{log}"))
        .to_string();
    let line = log
        .lines()
        .find(|l| l.contains("planned (") && l.contains(&format!("job={job} ")))
        .unwrap_or_else(|| panic!("no plan line of job {job}:\n{log}"));
    let how = line
        .split_once("planned (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(how, _)| how.to_string())
        .unwrap();
    let ms = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("plan_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no plan_ms: {line}"));
    (how, ms)
}

/// The log without its ANSI colour codes.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        rest = tail.find('m').map_or("", |j| &tail[j + 1..]);
    }
    out.push_str(rest);
    out
}

#[test]
fn a_second_push_is_planned_incrementally_with_a_cold_daemons_result() {
    let origin = Origin::new();
    let first = origin.work.git(&["rev-parse", "HEAD"]);
    // One clinic's node edited: one unit of three is resolved again.
    origin.work.file(
        "clinics/b/Count.sql",
        "-- @depend ./Patients\nSELECT count(*) + 0 AS n FROM Patients;\n",
    );
    let second = origin.push("edit b");

    // A daemon plans the second push from the first one's plan.
    let forge = FakeForgeServer::start();
    let state = tempfile::tempdir().unwrap();
    let d = origin.daemon(&forge, state.path());
    let run1 = push(&d, &first, "i-1");
    assert!(forge.wait_for(|r| finished(r, &first), WAIT), "{}", d.log());
    let run2 = push(&d, &second, "i-2");
    assert!(
        forge.wait_for(|r| finished(r, &second), WAIT),
        "{}",
        d.log()
    );
    let (how1, _) = planned(&d, &run1);
    assert_eq!(how1, "cold: no earlier plan");
    let (how2, ms) = planned(&d, &run2);
    assert_eq!(
        how2,
        "incremental: 1 changed entries, 1 units resolved, 2 reused"
    );
    assert!(ms > 0.0 && ms < 10_000.0, "{ms}");

    // Another daemon plans the same commits cold: it is started again on
    // its state in between, which forgets the plan.
    let cold_forge = FakeForgeServer::start();
    let cold_state = tempfile::tempdir().unwrap();
    let c = origin.daemon(&cold_forge, cold_state.path());
    push(&c, &first, "c-1");
    assert!(
        cold_forge.wait_for(|r| finished(r, &first), WAIT),
        "{}",
        c.log()
    );
    drop(c);
    let c = origin.daemon(&cold_forge, cold_state.path());
    let cold2 = push(&c, &second, "c-2");
    assert!(
        cold_forge.wait_for(|r| finished(r, &second), WAIT),
        "{}",
        c.log()
    );
    assert_eq!(planned(&c, &cold2).0, "cold: no earlier plan");

    let got = statuses(&forge.requests(), &second);
    assert_eq!(got, statuses(&cold_forge.requests(), &second));
    assert!(
        got.iter()
            .any(|(c, s, _)| c == "sluice/clinics/b" && s == "success"),
        "{got:?}"
    );
    let (inc, cold) = (report(&d, &run2), report(&c, &cold2));
    assert_eq!(inc, cold);
    // The edited node ran again; the others were answered from production.
    let text = inc.to_string();
    assert!(text.contains("\"modified\""), "{text}");
}
