//! The work queue at node granularity, end to end: a full daemon that only
//! dispatches (`task_threads = 0`) and two `sluice serve --worker-only`
//! processes sharing one PostgreSQL and one bucket (the `pg_cluster` and
//! moto harnesses). One worker is killed with SIGKILL in the middle of a
//! node; the other takes the task over when its lease expires and the job
//! finishes, with tables byte-identical to a single-machine run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use sluice::store::blob::BlobStore as _;

use crate::daemon::{Daemon, REPO, SECRET, Stores, finals, git, push_payload};
use crate::fake_forge::FakeForgeServer;
use crate::util::Repo;

const WAIT: Duration = Duration::from_secs(90);

/// A running `sluice serve --worker-only`.
struct Worker {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(config: &str) -> Worker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice-server.toml");
        // Its own state dir (source memo, temp dirs, blob cache), as on
        // another machine.
        let config = config.replace("@STATE@", &dir.path().join("state").display().to_string());
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        for (k, v) in crate::moto::moto().env() {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["serve", "--worker-only", "--config", path.to_str().unwrap()])
            .env("SLUICE_TEST_SECRET", SECRET)
            .env("SLUICE_TEST_TOKEN", "token")
            .env("PGPASSWORD", crate::pg_cluster::PASSWORD)
            .env("SLUICE_LOG", "debug")
            .env_remove("SLUICE_STATE_DIR")
            .env_remove("SLUICE_DATA_ROOT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("worker-only"),
            "unexpected first line {line:?}"
        );
        let log = crate::util::capture_stderr(&mut child);
        Worker {
            child,
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository: a source, a slow Bash node in the middle (the one the
/// kill lands in), SQL around it.
fn origin() -> (Repo, tempfile::TempDir, tempfile::TempDir) {
    let work = Repo::new();
    work.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name, clinic FROM patients;\n",
    )
    .file(
        "clinics/a/Slow.sh",
        "# @depend ./Patients\nsleep 4\nsort \"$SLUICE_INPUT_Patients\" > \"$SLUICE_OUTPUT\"\n",
    )
    .file(
        "clinics/a/Count.sql",
        "-- @depend ./Slow\nSELECT count(*) AS n FROM Slow;\n",
    );
    for i in 0..6 {
        work.file(
            &format!("clinics/a/Q{i}.sql"),
            &format!(
                "-- @depend ./Patients\nSELECT id * {i} AS x, name FROM Patients ORDER BY id;\n"
            ),
        );
    }
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
    (work, bare, data)
}

fn server_config(state: &str, data: &Path, bare: &Path, forge: &str, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"http://sluice.test\"\nstate_dir = \"{state}\"\n\
         data_root = \"{}\"\nworkers = 1\n{extra}\n\
         [[repos]]\nforge = \"github\"\nname = \"{REPO}\"\nclone_url = \"{}\"\napi_url = \"{forge}\"\n\
         production_branch = \"main\"\nsecret_env = \"SLUICE_TEST_SECRET\"\n\
         token_env = \"SLUICE_TEST_TOKEN\"\n",
        data.display(),
        bare.display(),
    )
}

/// The pid in a `claimed_by` (`host:pid:tag`).
fn pid_of(claimed_by: &str) -> u32 {
    claimed_by.split(':').nth(1).unwrap().parse().unwrap()
}

/// The test bucket's blob store (prefix `d`), with moto's keys.
fn bucket_store(bucket: &str, cache: &Path) -> sluice::store::s3::S3BlobStore {
    let env: std::collections::HashMap<_, _> = crate::moto::moto().env().into_iter().collect();
    let builder = object_store::aws::AmazonS3Builder::new()
        .with_access_key_id(&env["AWS_ACCESS_KEY_ID"])
        .with_secret_access_key(&env["AWS_SECRET_ACCESS_KEY"])
        .with_region(&env["AWS_REGION"])
        .with_endpoint(&env["AWS_ENDPOINT_URL"])
        .with_allow_http(true);
    sluice::store::s3::S3BlobStore::open_with(
        builder,
        sluice::store::s3::S3Location::parse(&format!("s3://{bucket}/d")).unwrap(),
        &sluice::store::s3::S3Options::new(cache, 1 << 20),
    )
    .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_worker_killed_mid_node_is_replaced_and_the_tables_match_one_machine() {
    let stores = Stores::shared("workers");
    let (work, bare, data) = origin();
    let forge = FakeForgeServer::start();
    let daemon_dir = tempfile::tempdir().unwrap();
    let daemon_state = daemon_dir.path().join("state");
    let config = daemon_dir.path().join("sluice-server.toml");
    // The daemon only dispatches: every node is computed by the workers.
    let extra = format!("{}task_threads = 0\n", stores.config);
    std::fs::write(
        &config,
        server_config(
            &daemon_state.display().to_string(),
            data.path(),
            bare.path(),
            &forge.url(),
            &extra,
        ),
    )
    .unwrap();
    let d = Daemon::spawn(daemon_dir, daemon_state, config);
    let worker_config = server_config(
        "@STATE@",
        data.path(),
        bare.path(),
        &forge.url(),
        &stores.config,
    );
    let mut workers = vec![Worker::start(&worker_config), Worker::start(&worker_config)];

    let sha = work.git(&["rev-parse", "HEAD"]);
    let (code, body) = d.github("push", &push_payload("main", &sha), "w-1");
    assert_eq!(code, 202, "{body}");

    // Wait until a worker is inside the slow node, then kill it.
    let q = |sql: &str| crate::pg_cluster::cluster().query(&stores.db().name, sql);
    let running = "SELECT claimed_by FROM sluice_daemon.tasks \
                   WHERE state = 'running' AND spec LIKE '%clinics/a/Slow.sh%'";
    let start = Instant::now();
    let holder = loop {
        if let Some(by) = q(running).into_iter().next() {
            break by;
        }
        assert!(
            start.elapsed() < WAIT,
            "the slow node never started\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Mid-node: it sleeps 4 s before writing anything.
    std::thread::sleep(Duration::from_millis(500));
    let victim = workers
        .iter()
        .position(|w| w.pid() == pid_of(&holder))
        .unwrap_or_else(|| panic!("{holder} is not one of the workers"));
    let mut dead = workers.remove(victim);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let survivor = &workers[0];

    assert!(
        forge.wait_for(|r| finals(r, &sha, &["sluice/clinics/a"]), WAIT),
        "daemon:\n{}\nsurvivor:\n{}",
        d.log(),
        survivor.log()
    );
    let reqs = forge.requests();
    let last = crate::daemon::statuses_for(&reqs, &sha)
        .into_iter()
        .rfind(|(ctx, _, _)| ctx == "sluice/clinics/a")
        .unwrap();
    assert_eq!(last.1, "success", "{last:?}\n{}", survivor.log());

    // The slow task: claimed twice, completed once, by the survivor.
    let slow = q(
        "SELECT attempt || ' ' || completions || ' ' || completed_by FROM sluice_daemon.tasks \
                  WHERE spec LIKE '%clinics/a/Slow.sh%'",
    );
    let parts: Vec<&str> = slow[0].split(' ').collect();
    assert_eq!(&parts[..2], ["2", "1"], "{slow:?}");
    assert_eq!(pid_of(parts[2]), survivor.pid());
    // No task ran twice to completion; every one is done.
    assert_eq!(q("SELECT max(completions) FROM sluice_daemon.tasks"), ["1"]);
    assert_eq!(
        q("SELECT count(*) FROM sluice_daemon.tasks WHERE state <> 'done'"),
        ["0"]
    );
    assert_eq!(q("SELECT count(*) FROM sluice_daemon.tasks"), ["9"]);
    // The report was written once, by the daemon.
    assert_eq!(
        q("SELECT count(*) FROM sluice_daemon.jobs WHERE state = 'done' AND report IS NOT NULL"),
        ["1"]
    );

    // The same tables as a single-machine embedded run.
    let run_id = q("SELECT run_id FROM sluice_daemon.jobs")[0].clone();
    let (code, body) = d.get(&format!("/runs/{run_id}.json"));
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut shared = std::collections::BTreeMap::new();
    for n in report["pipelines"][0]["nodes"].as_array().unwrap() {
        shared.insert(
            n["name"].as_str().unwrap().to_string(),
            n["output"].as_str().unwrap().to_string(),
        );
    }
    let data_arg = data.path().to_str().unwrap();
    let local = crate::util::outputs(
        work.sluice(&["--data", data_arg, "run", "--json"])
            .success(),
    );
    assert_eq!(shared.len(), 9, "{shared:?}");
    assert_eq!(shared, local);

    // Every table and log the tasks name is in the bucket and verifies
    // (read from the bucket through an empty cache: every read is checked
    // against the digest).
    let cache = tempfile::tempdir().unwrap();
    let blobs = bucket_store(stores.bucket(), cache.path());
    let mut checked = 0;
    for r in q("SELECT result FROM sluice_daemon.tasks") {
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        for d in [&v["output"], &v["log"]] {
            let Some(d) = d.as_str() else { continue };
            let digest: sluice::plan::digest::Digest = d.parse().unwrap();
            let bytes = blobs.get(&digest).unwrap_or_else(|e| panic!("{d}: {e}"));
            assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), d);
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked}");

    // SIGTERM: the idle worker exits cleanly, at once.
    let mut survivor = workers.remove(0);
    let pid = rustix::process::Pid::from_raw(survivor.pid() as i32).unwrap();
    let start = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = survivor.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", survivor.log());
    assert!(start.elapsed() < Duration::from_secs(5), "slow shutdown");
    drop(dead);
}

#[test]
fn worker_only_needs_the_state_on_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice-server.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        server_config(
            &state.display().to_string(),
            dir.path(),
            dir.path(),
            "http://127.0.0.1:9",
            "",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--worker-only",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("SLUICE_TEST_SECRET", SECRET)
        .env("SLUICE_TEST_TOKEN", "token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--worker-only") && err.contains("postgresql://"),
        "{err}"
    );
}
