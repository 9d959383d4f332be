//! The state on PostgreSQL end to end: a throwaway cluster on loopback
//! (`pg_cluster`), the real binary with `--state postgresql://…`, and the
//! password only from `PGPASSWORD` or `.pgpass`.

use std::path::Path;
use std::process::{Command, Output};

use crate::pg_cluster::{PASSWORD, TestDb, cluster};
use crate::util::{Repo, git_in};

/// Runs sluice in `repo` with its own state dir and the shared state.
fn sluice(repo: &Path, state_dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--repo")
        .arg(repo)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--state", url])
        .args(args)
        .env_remove("SLUICE_STATE_DIR")
        .env_remove("SLUICE_DATA_ROOT")
        .env_remove("SLUICE_STATE")
        .env_remove("PGPASSFILE")
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Node statuses of `run --json`, by `pipeline:name`.
fn statuses(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut out = Vec::new();
    for r in v["runs"].as_array().unwrap() {
        let p = r["pipeline"].as_str().unwrap();
        for n in r["nodes"].as_array().unwrap() {
            out.push((
                format!("{p}/{}", n["name"].as_str().unwrap()),
                n["status"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn count(db: &TestDb, sql: &str) -> i64 {
    cluster().query(&db.name, sql)[0].parse().unwrap()
}

#[test]
fn two_checkouts_share_the_cache_and_production_through_postgresql() {
    let db = cluster().fresh_db();
    let a = Repo::example();
    a.commit_all("example");
    let b = tempfile::tempdir().unwrap();
    git_in(
        b.path(),
        &["clone", "-q", a.path().to_str().unwrap(), "checkout"],
    );
    let b_repo = b.path().join("checkout");
    assert!(
        b_repo.join("data").is_dir(),
        "the example's data is committed"
    );

    let states = tempfile::tempdir().unwrap();
    let (sa, sb) = (states.path().join("a"), states.path().join("b"));
    let first = ok(&sluice(
        a.path(),
        &sa,
        &db.url,
        &["run", "--json", "--promote"],
    ));
    let computed = statuses(&first);
    assert!(
        computed.iter().any(|(_, s)| s == "computed"),
        "{computed:?}"
    );

    // The action cache, refs and runs are in PostgreSQL, not in A's file.
    assert!(count(&db, "SELECT count(*) FROM sluice.action_cache") >= 20);
    assert!(count(&db, "SELECT count(*) FROM sluice.refs") >= 2);
    let local = sluice::store::state::SqliteState::open(&sa.join("state.db")).unwrap();
    {
        use sluice::store::state::State as _;
        assert!(local.cache_blobs().unwrap().is_empty());
        assert!(local.ref_list().unwrap().is_empty());
    }

    // B: another state dir, so another source memo; the blobs are shared
    // as a bucket would share them (until the S3 store lands, a directory).
    std::fs::create_dir_all(&sb).unwrap();
    std::os::unix::fs::symlink(sa.join("blobs"), sb.join("blobs")).unwrap();
    let plan = ok(&sluice(&b_repo, &sb, &db.url, &["plan", "--json"]));
    assert!(!plan.contains("\"new\""), "B sees A's production: {plan}");
    let second = ok(&sluice(&b_repo, &sb, &db.url, &["run", "--json"]));
    let s = statuses(&second);
    assert_eq!(s.len(), computed.len());
    assert!(
        s.iter().all(|(_, st)| st == "cached"),
        "what A computed is a cache hit on B: {s:?}"
    );
    assert!(sb.join("state.db").is_file(), "B keeps its own source memo");
    // Byte for byte: the same tables read from either checkout.
    for (node, _) in s.iter().filter(|(n, _)| !n.contains("//")).take(6) {
        let from_a = ok(&sluice(a.path(), &sa, &db.url, &["cat", node]));
        let from_b = ok(&sluice(&b_repo, &sb, &db.url, &["cat", node]));
        assert!(!from_a.is_empty());
        assert_eq!(from_a, from_b, "{node}");
    }
}

#[test]
fn two_processes_opening_at_once_migrate_once() {
    let db = cluster().fresh_db();
    let r = Repo::example();
    r.commit_all("example");
    let states = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("--repo")
                .arg(r.path())
                .arg("--state-dir")
                .arg(states.path().join(i.to_string()))
                .args(["--state", &db.url, "plan"])
                .env("PGPASSWORD", PASSWORD)
                .env_remove("SLUICE_STATE_DIR")
                .output()
        })
        .collect();
    for out in children {
        ok(&out.unwrap());
    }
    // Spawned one after another above; now truly at once.
    let db2 = cluster().fresh_db();
    let spawned: Vec<_> = (0..3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("--repo")
                .arg(r.path())
                .arg("--state-dir")
                .arg(states.path().join(format!("x{i}")))
                .args(["--state", &db2.url, "plan"])
                .env("PGPASSWORD", PASSWORD)
                .env_remove("SLUICE_STATE_DIR")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in spawned {
        ok(&child.wait_with_output().unwrap());
    }
    for d in [&db, &db2] {
        assert_eq!(
            count(d, "SELECT count(*) FROM sluice.schema_migrations"),
            i64::from(sluice::store::pg::SCHEMA_VERSION)
        );
    }
}

#[test]
fn the_password_comes_only_from_pgpassword_or_pgpass() {
    let db = cluster().fresh_db();
    let r = Repo::example();
    let state = tempfile::tempdir().unwrap();
    let run = |url: &str, env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.arg("--repo")
            .arg(r.path())
            .arg("--state-dir")
            .arg(state.path())
            .args(["--state", url, "plan"])
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env_remove("SLUICE_STATE_DIR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // In the URL: refused, and not echoed.
    let with_pw = db.url.replace("sluice@", "sluice:hunter2@");
    let out = run(&with_pw, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("carries a password"), "{err}");
    assert!(err.contains("PGPASSWORD"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    // None at all: the server refuses, and the error says where it failed.
    let home = tempfile::tempdir().unwrap();
    let out = run(&db.url, &[("HOME", home.path().to_str().unwrap())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot connect to postgresql://"), "{err}");

    // PGPASSWORD.
    ok(&run(&db.url, &[("PGPASSWORD", PASSWORD)]));

    // ~/.pgpass, mode 0600.
    use std::os::unix::fs::PermissionsExt as _;
    let pgpass = home.path().join(".pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:*:*:sluice:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(&run(&db.url, &[("HOME", home.path().to_str().unwrap())]));

    // TLS, the server's certificate signed by a CA trusted through
    // SSL_CERT_FILE, and SLUICE_STATE instead of --state.
    let ca = cluster().ca_cert().expect("the test cluster has TLS");
    let tls_url = format!(
        "postgresql://sluice@localhost:{}/{}?sslmode=require",
        cluster().port,
        db.name
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--repo")
        .arg(r.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("plan")
        .env("SLUICE_STATE", &tls_url)
        .env("PGPASSWORD", PASSWORD)
        .env("SSL_CERT_FILE", &ca)
        .env_remove("SLUICE_STATE_DIR")
        .output()
        .unwrap();
    ok(&out);
    // Without trusting that CA, the same URL is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--repo")
        .arg(r.path())
        .arg("--state-dir")
        .arg(state.path())
        .args(["--state", &tls_url, "plan"])
        .env("PGPASSWORD", PASSWORD)
        .env("SSL_CERT_FILE", "/nonexistent")
        .env_remove("SLUICE_STATE_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");

    // A remote host without TLS is refused before connecting.
    let out = run("postgresql://sluice@db.example.org/sluice", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslmode=require"), "{err}");
}

/// A no-op run of 500 nodes, state on SQLite and on PostgreSQL (loopback).
#[test]
#[ignore = "a measurement: cargo test --release --features team --test cli noop_run_timing -- --ignored --nocapture"]
fn noop_run_timing() {
    let db = cluster().fresh_db();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let gen_ok = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen_repo.py"))
        .args(["--nodes", "500", "-q", "--out"])
        .arg(&repo)
        .status()
        .unwrap()
        .success();
    assert!(gen_ok);
    git_in(&repo, &["init", "-q"]);
    git_in(&repo, &["add", "-A"]);
    git_in(&repo, &["commit", "-q", "-m", "gen"]);
    let local = |dir: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--repo")
            .arg(&repo)
            .arg("--state-dir")
            .arg(dir)
            .args(args)
            .env_remove("SLUICE_STATE")
            .output()
            .unwrap()
    };
    let (s1, s2) = (tmp.path().join("sqlite"), tmp.path().join("pg"));
    ok(&local(&s1, &["run", "--promote"]));
    ok(&sluice(&repo, &s2, &db.url, &["run", "--promote"]));
    let time = |f: &dyn Fn() -> Output| {
        let mut best = std::time::Duration::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            ok(&f());
            best = best.min(t.elapsed());
        }
        best
    };
    let sqlite = time(&|| local(&s1, &["run"]));
    let pg = time(&|| sluice(&repo, &s2, &db.url, &["run"]));
    eprintln!("no-op run, 500 nodes, best of 3: SQLite {sqlite:?}, PostgreSQL {pg:?}");
}
