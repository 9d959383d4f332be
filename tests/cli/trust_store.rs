//! The store under faults: damaged and missing blobs, a lost state
//! database, `sluice fsck [--repair]`, a lost promotion race, file modes,
//! and streaming `cat`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Repo, Run, outputs};

/// `node` -> status of the one pipeline in a `run --json`.
fn statuses(run: &Run) -> BTreeMap<String, String> {
    let v = run.json();
    v["runs"][0]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn blob_path(r: &Repo, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    r.path().join(format!(
        ".sluice/blobs/sha256/{}/{}/{hex}",
        &hex[..2],
        &hex[2..4]
    ))
}

/// Flips one byte of a blob in place, keeping its size (blobs are
/// read-only: make it writable first, as a rogue process would).
fn flip_byte(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len();
    bytes[len - 2] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len() as usize, len);
}

/// A committed one-pipeline repository: a source table and a leaf.
fn small_repo() -> Repo {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,name\n1,alpha\n2,beta\n")
        .file(
            "clinics/a/U.sql",
            "-- @depend ./T\nSELECT id, upper(name) AS name FROM T;\n",
        );
    r.commit_all("first");
    r
}

fn changes(plan: &Run) -> BTreeMap<String, String> {
    plan.json()["plans"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn fsck_json(r: &Repo, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["fsck", "--json"];
    all.extend_from_slice(args);
    let run = r.sluice(&all);
    assert!(
        !run.stdout.contains("alpha") && !run.stdout.contains("ALPHA"),
        "fsck never prints cell values:\n{}",
        run.stdout
    );
    (run.code, run.json())
}

/// A pipeline unchanged since production is answered from its manifest,
/// but only while the cache would answer the same: a table whose blob is
/// gone, or whose cache entry was dropped, is computed again.
#[test]
fn an_unchanged_pipeline_still_recomputes_a_lost_table() {
    let r = small_repo();
    r.sluice(&["run", "--json", "--promote"]).success();
    let again = r.sluice(&["run", "--json", "--promote"]);
    again.success();
    assert!(
        statuses(&again).values().all(|s| s == "cached"),
        "{}",
        again.stdout
    );
    let out = outputs(&again);
    std::fs::remove_file(blob_path(&r, &out["U"])).unwrap();
    let after = r.sluice(&["run", "--json", "--promote"]);
    after.success();
    assert_eq!(statuses(&after)["U"], "computed");
    assert_eq!(statuses(&after)["T"], "cached");
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("1,ALPHA\n");
}

#[test]
fn promotion_refuses_a_damaged_output_and_the_next_run_recomputes_it() {
    let r = small_repo();
    let first = r.sluice(&["run", "--json"]);
    first.success();
    let u = outputs(&first)["U"].clone();
    flip_byte(&blob_path(&r, &u));

    // The damaged leaf is "cached", but promotion hashes its bytes.
    let blocked = r.sluice(&["run", "--json", "--promote"]);
    blocked
        .failure()
        .stderr_has("not promoted")
        .stderr_has("output of U")
        .stderr_has(&u);
    assert_eq!(blocked.json()["runs"][0]["promoted"], false);
    r.sluice(&["plan", "--json"]).success();

    // Its cache entries were dropped: the next run recomputes and promotes.
    let again = r.sluice(&["run", "--json", "--promote"]);
    again.success();
    assert_eq!(statuses(&again)["U"], "computed");
    assert_eq!(statuses(&again)["T"], "cached");
    assert_eq!(again.json()["runs"][0]["promoted"], true);
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("id,name\n1,ALPHA\n2,BETA\n");
    let (code, _) = fsck_json(&r, &[]);
    assert_eq!(code, 0);
}

#[test]
fn a_missing_production_manifest_warns_and_promote_starts_a_new_chain() {
    let r = small_repo();
    let first = r.sluice(&["run", "--json", "--promote"]);
    first.success();
    let m1 = first.json()["runs"][0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(blob_path(&r, &m1)).unwrap();

    let plan = r.sluice(&["plan", "--json"]);
    plan.success()
        .stderr_has("production/clinics/a")
        .stderr_has(&m1)
        .stderr_has("sluice fsck --repair");
    assert!(
        changes(&plan).values().all(|c| c == "new"),
        "{plan:?}",
        plan = plan.stdout
    );
    r.sluice(&["diff"])
        .success()
        .stderr_has("sluice fsck --repair");

    let second = r.sluice(&["run", "--json", "--promote"]);
    second.success().stderr_has("sluice fsck --repair");
    assert_eq!(second.json()["runs"][0]["promoted"], true);
    let m2 = second.json()["runs"][0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(m1, m2);

    let plan = r.sluice(&["plan", "--json"]);
    plan.success();
    assert!(!plan.stderr.contains("warning"), "{}", plan.stderr);
    assert!(changes(&plan).values().all(|c| c == "unchanged"));
}

#[test]
fn an_empty_state_db_is_refused_and_fsck_repair_restores_the_refs() {
    let r = small_repo();
    r.sluice(&["run", "--promote"]).success();
    let state = r.path().join(".sluice");
    let ref_file = state.join("refs/production/clinics%2Fa");
    let head = std::fs::read_to_string(&ref_file).expect("the ref is mirrored in a file");
    assert!(head.starts_with("sha256:"), "{head}");

    std::fs::File::create(state.join("state.db")).unwrap(); // truncates to 0 bytes
    for cmd in [&["run"][..], &["plan"], &["diff"]] {
        let refused = r.sluice(cmd);
        assert_eq!(refused.code, 2, "{cmd:?}: {}", refused.stderr);
        refused
            .stderr_has("state.db is empty")
            .stderr_has("sluice fsck --repair");
    }
    assert_eq!(std::fs::metadata(state.join("state.db")).unwrap().len(), 0);

    let (code, report) = fsck_json(&r, &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["database"]["found"], 1);

    let (code, report) = fsck_json(&r, &["--repair"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["database"]["repaired"], 1);
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.db.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");

    let (code, report) = fsck_json(&r, &[]);
    assert_eq!(
        (code, report["problems"].as_array().unwrap().len()),
        (0, 0),
        "{report}"
    );
    let plan = r.sluice(&["plan", "--json"]);
    plan.success();
    assert!(
        changes(&plan).values().all(|c| c == "unchanged"),
        "{}",
        plan.stdout
    );
    assert_eq!(std::fs::read_to_string(&ref_file).unwrap(), head);
}

#[test]
fn fsck_finds_each_kind_of_damage_and_repair_fixes_it() {
    let r = small_repo();
    let run = r.sluice(&["run", "--json", "--promote"]);
    run.success();
    let out = outputs(&run);
    let state = r.path().join(".sluice");
    let (code, report) = fsck_json(&r, &[]);
    assert_eq!(code, 0, "a fresh state is clean: {report}");
    assert!(report["blobs_checked"].as_u64().unwrap() >= 3);

    // A bad blob (U's output, so its cache entry goes bad too), a blob the
    // cache names that is gone (T's output), a ref dropped from the
    // database, a temp file a crashed writer left, a loose mode.
    flip_byte(&blob_path(&r, &out["U"]));
    std::fs::remove_file(blob_path(&r, &out["T"])).unwrap();
    rusqlite::Connection::open(state.join("state.db"))
        .unwrap()
        .execute("DELETE FROM refs", [])
        .unwrap();
    let temp = state.join("blobs/tmp/blob-crashed.tmp");
    std::fs::write(&temp, "id,name\n1,al").unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Untouched for two minutes, and no writer holds its lock.
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    // A temp file of this (live) process, just created: maybe not locked yet.
    let young = state.join(format!("blob-{}-x.tmp", std::process::id()));
    let young = state.join("blobs/tmp").join(young.file_name().unwrap());
    std::fs::write(&young, "").unwrap();
    std::fs::set_permissions(&young, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(state.join("blobs"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let (code, report) = fsck_json(&r, &[]);
    assert_eq!(code, 1, "{report}");
    for (kind, n) in [
        ("damaged_blobs", 1),
        ("cache_entries", 2),
        ("refs", 1),
        ("temp_files", 1),
        ("modes", 1),
        ("database", 0),
    ] {
        assert_eq!(report[kind]["found"], n, "{kind}: {report}");
        assert_eq!(report[kind]["repaired"], 0, "{kind}: {report}");
    }
    let text = r.sluice(&["fsck"]);
    text.failure()
        .stdout_has("1 damaged blobs")
        .stdout_has("2 bad cache entries")
        .stdout_has("sluice fsck --repair");

    let (code, report) = fsck_json(&r, &["--repair"]);
    assert_eq!(code, 0, "{report}");
    for kind in [
        "damaged_blobs",
        "cache_entries",
        "refs",
        "temp_files",
        "modes",
    ] {
        assert_eq!(
            report[kind]["repaired"], report[kind]["found"],
            "{kind}: {report}"
        );
    }
    let (code, report) = fsck_json(&r, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    assert!(!temp.exists());
    assert!(
        young.exists(),
        "a temp file that may be a live write's is left"
    );

    // The ref is back (plan: unchanged), and the next run recomputes the
    // lost and damaged tables.
    let plan = r.sluice(&["plan", "--json"]);
    assert!(
        changes(&plan).values().all(|c| c == "unchanged"),
        "{}",
        plan.stdout
    );
    let again = r.sluice(&["run", "--json"]);
    again.success();
    assert_eq!(statuses(&again)["T"], "computed");
    assert_eq!(statuses(&again)["U"], "computed");
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("1,ALPHA\n");
    assert_eq!(fsck_json(&r, &[]).0, 0);
}

#[test]
fn a_promotion_that_loses_the_race_exits_non_zero() {
    let r = Repo::new();
    // The node waits for `go` in its own temp dir (the sandbox lets it
    // write nowhere else).
    r.file("clinics/a/T.csv", "id\n1\n").file(
        "clinics/a/Slow.sh",
        "# @depend ./T\ntouch \"$PWD/started\"\nwhile [ ! -e \"$PWD/go\" ]; do sleep 0.02; done\ncp \"$SLUICE_INPUT_T\" \"$SLUICE_OUTPUT\"\n",
    );
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "--repo",
                r.path().to_str().unwrap(),
                "run",
                "--json",
                "--promote",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The node's temp dir, once it has started.
    let started = || {
        let start = Instant::now();
        loop {
            let found = std::fs::read_dir(r.path().join(".sluice/tmp"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|d| d.path())
                .find(|p| p.join("started").exists());
            if let Some(dir) = found {
                return dir;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the node never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    r.commit_all("first");
    let child = spawn();
    std::fs::write(started().join("go"), "").unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    r.file("clinics/a/T.csv", "id\n1\n2\n");
    r.commit_all("second");

    let child = spawn();
    let node_dir = started();
    // Another promotion wins while this run is between planning and
    // promoting.
    let theirs = sluice::plan::digest::Digest::of(b"another run's manifest");
    use sluice::store::state::State as _;
    let db = sluice::store::state::SqliteState::open(&r.path().join(".sluice/state.db")).unwrap();
    db.ref_set("production/clinics/a", &theirs).unwrap();
    drop(db);
    std::fs::write(node_dir.join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("moved during the run; not promoted"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"][0]["promoted"], false);
    let db = sluice::store::state::SqliteState::open(&r.path().join(".sluice/state.db")).unwrap();
    assert_eq!(db.ref_get("production/clinics/a").unwrap(), Some(theirs));
    assert_eq!(
        std::fs::read_to_string(r.path().join(".sluice/refs/production/clinics%2Fa"))
            .unwrap()
            .trim(),
        theirs.to_string(),
        "the ref file follows the winner"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_state_dir_is_private_and_blobs_are_owner_read_only() {
    let r = small_repo();
    r.sluice(&["run"]).success();
    let state = r.path().join(".sluice");
    assert_eq!(mode(&state), 0o700);
    let mut stack = vec![state.join("blobs")];
    let (mut dirs, mut files) = (0, 0);
    while let Some(dir) = stack.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        dirs += 1;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                assert_eq!(mode(&e.path()), 0o400, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(dirs >= 4 && files >= 3, "{dirs} dirs, {files} files");

    // An existing state dir readable by others is tightened, with a warning.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    r.sluice(&["run"])
        .success()
        .stderr_has("was mode 0755")
        .stderr_has("now 0700");
    assert_eq!(mode(&state), 0o700);
    let other = Repo::new();
    other.file("clinics/a/T.csv", "id\n1\n");
    std::fs::create_dir(other.path().join(".sluice")).unwrap();
    std::fs::set_permissions(
        other.path().join(".sluice"),
        std::fs::Permissions::from_mode(0o775),
    )
    .unwrap();
    other.sluice(&["plan"]).success();
    other.sluice(&["run"]).success().stderr_has("now 0700");
    assert_eq!(mode(&other.path().join(".sluice")), 0o700);
}

#[test]
fn cat_streams_a_large_table_and_stops_on_damage() {
    let r = Repo::new();
    // About 6 MB of output from a few bytes of SQL.
    r.file(
        "clinics/a/Big.sql",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400000)\n\
         SELECT i, printf('%020d', i * 7) AS v FROM n;\n",
    )
    .file("clinics/a/Small.csv", "i\n1\n");
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let big = outputs(&run)["Big"].clone();
    let path = blob_path(&r, &big);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 10_000_000, "{size}");

    // Peak memory of `cat` grows far less than the table's size over a
    // tiny table's.
    let small = peak_rss_kb(&r, "clinics/a/Small", 4);
    let large = peak_rss_kb(&r, "clinics/a/Big", size);
    assert!(
        large.saturating_sub(small) * 1024 < size / 2,
        "cat's peak RSS grew from {small} kB to {large} kB for a table of {size} bytes"
    );

    let cat = r.sluice(&["cat", "clinics/a/Big"]);
    cat.success();
    assert_eq!(cat.stdout.len() as u64, size);
    assert!(cat.stdout.starts_with("i,v\n1,00000000000000000007\n"));

    // A flipped byte near the end: the stream stops with an error naming
    // the blob.
    flip_byte(&path);
    let cat = r.sluice(&["cat", "clinics/a/Big"]);
    assert_eq!(cat.code, 2);
    cat.stderr_has(&big["sha256:".len()..])
        .stderr_has("corrupt");
}

/// The peak RSS of `sluice cat NODE`, in kB, checking it printed `size` bytes.
fn peak_rss_kb(r: &Repo, node: &str, size: u64) -> u64 {
    let py = Command::new("python3")
        .args([
            "-c",
            "import resource, subprocess, sys\n\
             out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, check=True).stdout\n\
             rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n\
             print(len(out), rss)\n",
            env!("CARGO_BIN_EXE_sluice"),
            "--repo",
            r.path().to_str().unwrap(),
            "cat",
            node,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let text = String::from_utf8_lossy(&py.stdout);
    let (len, rss_kb) = text.trim().split_once(' ').unwrap();
    assert_eq!(len.parse::<u64>().unwrap(), size, "{node}");
    rss_kb.parse().unwrap()
}
