//! `sluice gc`: what is reachable stays (production reads and runs from
//! the cache afterwards), old unreachable blobs go, young ones stay until
//! the grace ends, `--dry-run` changes nothing, the state is clean after
//! each gc, and the daemon's shared blob store keeps what any repository
//! needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sluice::plan::digest::Digest;
use sluice::store::blob::{BlobStore, LocalBlobStore};
use sluice::store::queue::{JobKind, JobState, NewJob};
use sluice::store::state::{SqliteState, State as _};

use crate::util::{Repo, Run};

/// `node` -> output digest, over every pipeline of a `run --json`.
fn outputs(run: &Run) -> BTreeMap<String, String> {
    let v = run.json();
    let mut out = BTreeMap::new();
    for p in v["runs"].as_array().expect("runs") {
        let pipeline = p["pipeline"].as_str().unwrap();
        for n in p["nodes"].as_array().expect("nodes") {
            if let Some(o) = n["output"].as_str() {
                let name = n["name"].as_str().unwrap();
                out.insert(format!("{pipeline}/{name}"), o.to_string());
            }
        }
    }
    out
}

fn statuses(run: &Run) -> BTreeSet<String> {
    let v = run.json();
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["nodes"].as_array().unwrap().iter())
        .map(|n| n["status"].as_str().unwrap().to_string())
        .collect()
}

/// Every blob under a store directory, by digest.
fn blobs_in(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(tops) = std::fs::read_dir(store.join("sha256")) else {
        return out;
    };
    for top in tops.flatten() {
        for mid in std::fs::read_dir(top.path()).unwrap().flatten() {
            for leaf in std::fs::read_dir(mid.path()).unwrap().flatten() {
                out.insert(format!("sha256:{}", leaf.file_name().to_str().unwrap()));
            }
        }
    }
    out
}

fn blob_file(store: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    store
        .join("sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex)
}

/// Sets every blob's stored time `age` back (the files are 0400: opened
/// read-only, as their owner may still set their times).
fn backdate_all(store: &Path, age: Duration) {
    let when = SystemTime::now() - age;
    for d in blobs_in(store) {
        std::fs::File::open(blob_file(store, &d))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A committed repository with one pipeline: a source table, a node
/// reading it and one reading that node.
fn repo() -> Repo {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,name\n1,alpha\n2,beta\n")
        .file(
            "clinics/a/U.sql",
            "-- @depend ./T\nSELECT id, upper(name) AS name FROM T;\n",
        )
        .file(
            "clinics/a/V.sql",
            "-- @depend ./U\nSELECT count(*) AS n FROM U;\n",
        );
    r.commit_all("first");
    r
}

/// Edits U on the feature branch so that its output changes, commits,
/// runs, and returns U's output.
fn branch_run(r: &Repo, i: usize) -> String {
    r.file(
        "clinics/a/U.sql",
        &format!("-- @depend ./T\nSELECT id, upper(name) || '-{i}' AS name FROM T;\n"),
    );
    r.git(&["commit", "-qam", &format!("edit {i}")]);
    let run = r.sluice(&["run", "--json"]);
    run.success();
    outputs(&run)["clinics/a/U"].clone()
}

fn gc_json(r: &Repo, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["gc", "--json"];
    all.extend_from_slice(args);
    let run = r.sluice(&all);
    run.success();
    assert!(
        !run.stdout.contains("ALPHA") && !run.stderr.contains("ALPHA"),
        "gc never prints cell values"
    );
    run.json()
}

fn fsck_clean(r: &Repo) {
    let run = r.sluice(&["fsck", "--json"]);
    let v = run.json();
    assert_eq!(v["cache_entries"]["found"], 0, "{v}");
    assert_eq!(v["refs"]["found"], 0, "{v}");
    run.success();
}

#[test]
fn gc_keeps_what_is_reachable_and_deletes_old_unreachable_blobs() {
    let r = repo();
    let store = r.path().join(".sluice/blobs");
    let promoted = r.sluice(&["run", "--json", "--promote"]);
    promoted.success();
    let production = outputs(&promoted);

    r.git(&["checkout", "-qb", "feature"]);
    let old: Vec<String> = (1..=3).map(|i| branch_run(&r, i)).collect();
    backdate_all(&store, 2 * DAY);
    let young = branch_run(&r, 4);
    let last = branch_run(&r, 5);
    let before = blobs_in(&store);
    for d in production.values().chain(&old).chain([&young, &last]) {
        assert!(before.contains(d), "{d} is stored");
    }

    // --dry-run says what would go and deletes nothing.
    let dry = gc_json(&r, &["--keep-runs", "1", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["deleted"]["blobs"].as_u64().unwrap() >= 3, "{dry}");
    assert_eq!(blobs_in(&store), before, "a dry run deletes nothing");

    // With the default grace (a day): the old unreachable outputs go, the
    // young one stays, and so does everything reachable.
    let done = gc_json(&r, &["--keep-runs", "1"]);
    assert_eq!(
        done["deleted"], dry["deleted"],
        "the dry run told the truth"
    );
    assert_eq!(done["grace"], "24h");
    let after = blobs_in(&store);
    for d in &old {
        assert!(!after.contains(d), "old unreachable {d} was deleted");
    }
    assert!(
        after.contains(&young),
        "a blob younger than the grace stays"
    );
    for d in production.values().chain([&last]) {
        assert!(after.contains(d), "reachable {d} stays");
    }
    assert!(
        done["dropped"]["cache_entries"].as_u64().unwrap() >= 3,
        "{done}"
    );
    assert!(done["dropped"]["runs"].as_u64().unwrap() >= 3, "{done}");
    fsck_clean(&r);

    // The same with no grace: now the young one goes too.
    let text = r.sluice(&["gc", "--keep-runs", "1", "--grace", "0s"]);
    text.success()
        .stdout_has("deleted ")
        .stdout_has("freed ")
        .stdout_has("younger than 0s");
    let after = blobs_in(&store);
    assert!(!after.contains(&young));
    for d in production.values().chain([&last]) {
        assert!(after.contains(d), "reachable {d} stays");
    }
    fsck_clean(&r);
    // The branch's last run still reads.
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("ALPHA-5");

    // Production: a run is all cache hits and every table reads.
    r.git(&["checkout", "-q", "main"]);
    let again = r.sluice(&["run", "--json"]);
    again.success();
    assert_eq!(statuses(&again), BTreeSet::from(["cached".to_string()]));
    assert_eq!(outputs(&again), production);
    for node in ["clinics/a/T", "clinics/a/U", "clinics/a/V"] {
        r.sluice(&["cat", node]).success();
    }
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("ALPHA\n");
    // A gc between two runs leaves the cache whole: the branch's next run
    // recomputes what went and finds no entry naming a missing blob.
    r.git(&["checkout", "-q", "feature"]);
    let rerun = r.sluice(&["run", "--json"]);
    rerun.success();
    fsck_clean(&r);
}

#[test]
fn gc_refuses_bad_arguments_clearly_and_explains_itself() {
    let r = repo();
    let bad = r.sluice(&["gc", "--grace", "1.5h"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    bad.stderr_has("e.g. 0s, 90m, 24h or 7d");
    r.sluice(&["gc"]).success().stderr_has("nothing to collect");
    let help = r.sluice(&["gc", "--help"]);
    help.success()
        .stdout_has("Example: sluice gc")
        .stdout_has("--keep-runs")
        .stdout_has("--grace")
        .stdout_has("--server-config");
    let missing = r.path().join("nope.toml");
    let none = r.sluice(&["gc", "--server-config", missing.to_str().unwrap()]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    none.stderr_has("nope.toml");
}

/// The daemon's layout: one blob store under `state_dir/blobs` shared by
/// `repos/<id>/state.db` of each repository, and `daemon.db` with the jobs.
/// Each repository's state is made by a real run with its own state dir,
/// then moved into the layout.
#[test]
fn the_daemon_store_keeps_what_any_repository_needs() {
    let state_dir = tempfile::tempdir().unwrap();
    let s = state_dir.path();
    let first = repo();
    let second = Repo::new();
    second.file("clinics/b/W.csv", "code\nx\ny\n").file(
        "clinics/b/X.sql",
        "-- @depend ./W\nSELECT code, length(code) AS len FROM W;\n",
    );
    second.commit_all("first");

    let mut outputs_by_repo = Vec::new();
    for (i, (r, name)) in [(&first, "acme/first"), (&second, "acme/second")]
        .into_iter()
        .enumerate()
    {
        let own = r.path().join(format!("state-{i}"));
        let run = r.sluice(&[
            "--state-dir",
            own.to_str().unwrap(),
            "run",
            "--json",
            "--promote",
        ]);
        run.success();
        outputs_by_repo.push(outputs(&run));
        let id = Digest::of(format!("github:{name}").as_bytes()).hex();
        let repo_dir = s.join("repos").join(&id[..32]);
        std::fs::create_dir_all(&repo_dir).unwrap();
        std::fs::create_dir_all(s.join("blobs")).unwrap();
        for (from, to) in [
            (own.join("blobs/."), s.join("blobs")),
            (own.join("state.db"), repo_dir.join("state.db")),
            (own.join("refs"), repo_dir.join("refs")),
        ] {
            let ok = std::process::Command::new("cp")
                .args(["-a"])
                .arg(&from)
                .arg(&to)
                .status()
                .unwrap()
                .success();
            assert!(ok, "cp {} {}", from.display(), to.display());
        }
    }
    let store = s.join("blobs");
    let blobs = LocalBlobStore::open(&store).unwrap();
    // Two run-page reports of one lane and one log only the newer names.
    let daemon = SqliteState::open(&s.join("daemon.db")).unwrap();
    let log = blobs.put(b"the log of a command node\n").unwrap();
    let mut reports = Vec::new();
    for (i, with_log) in [(1, false), (2, true)] {
        let node = if with_log {
            format!(r#"{{"name":"X","log":"{log}"}}"#)
        } else {
            r#"{"name":"X"}"#.to_string()
        };
        let report = blobs
            .put(
                format!(r#"{{"pipelines":[{{"pipeline":"clinics/b","nodes":[{node}]}}]}}"#)
                    .as_bytes(),
            )
            .unwrap();
        daemon
            .enqueue(
                &NewJob {
                    repo: "github:acme/second".into(),
                    kind: JobKind::Push,
                    lane: "refs/heads/main".into(),
                    git_ref: "refs/heads/main".into(),
                    branch: Some("main".into()),
                    sha: format!("{i:040}"),
                    pr_number: None,
                    run_id: format!("run{i}"),
                },
                None,
            )
            .unwrap();
        let job = daemon.claim_job().unwrap().unwrap();
        daemon
            .finish_job(job.id, JobState::Done, Some("success"), Some(&report))
            .unwrap();
        reports.push((job.id, report));
    }
    drop(daemon);
    let orphan = blobs.put(b"nothing names this\n").unwrap();
    backdate_all(&store, 2 * DAY);
    let cfg = s.join("sluice-server.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://s.test\"\nstate_dir = \"{0}\"\ndata_root = \"{0}\"\nworkers = 1\n\
             [[repos]]\nforge = \"github\"\nname = \"acme/first\"\nclone_url = \"{0}/x\"\napi_url = \"http://f.test\"\n\
             production_branch = \"main\"\nsecret_env = \"S\"\ntoken_env = \"T\"\n\
             [[repos]]\nforge = \"github\"\nname = \"acme/second\"\nclone_url = \"{0}/y\"\napi_url = \"http://f.test\"\n\
             production_branch = \"main\"\nsecret_env = \"S\"\ntoken_env = \"T\"\n",
            s.display()
        ),
    )
    .unwrap();

    let run = first.sluice(&[
        "gc",
        "--server-config",
        cfg.to_str().unwrap(),
        "--keep-runs",
        "1",
        "--grace",
        "0s",
        "--json",
    ]);
    run.success();
    let v = run.json();
    let after = blobs_in(&store);
    for (i, outs) in outputs_by_repo.iter().enumerate() {
        for (node, d) in outs {
            assert!(
                after.contains(d),
                "repository {i}: {node}'s output {d} stays"
            );
        }
    }
    assert!(!after.contains(&orphan.to_string()), "the orphan went");
    assert!(
        !after.contains(&reports[0].1.to_string()),
        "the older report went"
    );
    assert!(
        after.contains(&reports[1].1.to_string()),
        "the newer report stays"
    );
    assert!(
        after.contains(&log.to_string()),
        "the log its page shows stays"
    );
    assert_eq!(v["deleted"]["blobs"], 2, "{v}");
    assert_eq!(v["dropped"]["reports"], 1, "{v}");
    let daemon = SqliteState::open(&s.join("daemon.db")).unwrap();
    assert_eq!(daemon.job(reports[0].0).unwrap().unwrap().report, None);
    assert_eq!(
        daemon.job(reports[1].0).unwrap().unwrap().report,
        Some(reports[1].1)
    );
}

/// Every node `sluice ls` lists, with what `sluice cat` prints for it.
fn tables(r: &Repo) -> BTreeMap<String, String> {
    let ls = r.sluice(&["ls"]);
    ls.success();
    ls.stdout
        .lines()
        .map(|node| {
            let cat = r.sluice(&["cat", node]);
            cat.success();
            (node.to_string(), cat.stdout.clone())
        })
        .collect()
}

fn manifests(run: &Run) -> Vec<String> {
    run.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["manifest"].as_str().unwrap().to_string())
        .collect()
}

/// The example repository (SQL, Python and Bash nodes, two clinics and a
/// shared group): production promoted twice, a branch run three times.
#[test]
fn on_the_example_production_reads_the_same_after_gc_and_its_chain_stays() {
    let r = Repo::example();
    r.commit_all("first");
    let store = r.path().join(".sluice/blobs");
    let first = r.sluice(&["run", "--json", "--promote"]);
    first.success();
    let first_outputs = outputs(&first);
    let physician = "common/base/Physician.sql";
    let text = r.read(physician);
    r.file(physician, &text.replacen("SELECT", "SELECT 1 AS one,", 1));
    r.git(&["commit", "-qam", "physician: one more column"]);
    let second = r.sluice(&["run", "--json", "--promote"]);
    second.success();
    let production = outputs(&second);
    let before = tables(&r);

    r.git(&["checkout", "-qb", "feature"]);
    for i in 2..5 {
        r.file(
            physician,
            &text.replacen("SELECT", &format!("SELECT {i} AS one,"), 1),
        );
        r.git(&["commit", "-qam", &format!("physician {i}")]);
        r.sluice(&["run"]).success();
    }
    backdate_all(&store, 2 * DAY);
    let gc = gc_json(&r, &["--keep-runs", "1", "--grace", "0s"]);
    assert!(gc["deleted"]["blobs"].as_u64().unwrap() > 0, "{gc}");
    let after = blobs_in(&store);
    for d in production.values() {
        assert!(after.contains(d), "production's {d} stays");
    }
    // The first production's manifests stay (the chain), its replaced
    // Physician tables do not.
    for m in manifests(&first) {
        assert!(after.contains(&m), "chain manifest {m} stays");
    }
    let replaced: Vec<&String> = first_outputs
        .iter()
        .filter(|(node, d)| production.get(*node) != Some(d))
        .map(|(_, d)| d)
        .collect();
    assert!(!replaced.is_empty());
    for d in replaced {
        assert!(!after.contains(d), "replaced table {d} went");
    }
    fsck_clean(&r);

    r.git(&["checkout", "-q", "main"]);
    let again = r.sluice(&["run", "--json"]);
    again.success();
    assert_eq!(statuses(&again), BTreeSet::from(["cached".to_string()]));
    assert_eq!(tables(&r), before, "every production table reads the same");
}
