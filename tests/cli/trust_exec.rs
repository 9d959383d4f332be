//! Execution under faults and hostile code: bit rot in a blob, orphaned
//! processes and temp dirs, SQL nodes without limits, process-wide
//! PRAGMAs, the Landlock sandbox of command nodes, and PHI in error text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Repo, Run};

/// `node` -> (status, error), from `run --json` (one pipeline).
fn nodes(run: &Run) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for r in run.json()["runs"].as_array().expect("runs") {
        for n in r["nodes"].as_array().expect("nodes") {
            out.insert(
                n["name"].as_str().expect("name").to_string(),
                (
                    n["status"].as_str().unwrap_or("").to_string(),
                    n["error"].as_str().unwrap_or("").to_string(),
                ),
            );
        }
    }
    out
}

/// The output digest (hex) of `node` in `run --json`.
fn output_hex(run: &Run, node: &str) -> String {
    let v = run.json();
    let n = v["runs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .clone();
    n["output"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

fn blob_path(r: &Repo, hex: &str) -> PathBuf {
    r.path().join(format!(
        ".sluice/blobs/sha256/{}/{}/{}",
        &hex[..2],
        &hex[2..4],
        hex
    ))
}

/// The pids of live (not zombie) processes whose command line holds
/// `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn kill_all(pids: &[i32]) {
    for &p in pids {
        if let Some(p) = rustix::process::Pid::from_raw(p) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// Waits up to `secs` for no live process to hold `needle`; returns the
/// survivors (killed, so nothing leaks from a failing test).
fn survivors(needle: &str, secs: u64) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let left = processes_with(needle);
        if left.is_empty() || start.elapsed() > Duration::from_secs(secs) {
            kill_all(&left);
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// 1. Bit rot

#[test]
fn bit_rot_in_an_intermediate_blob_is_caught_and_repaired() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,v\n1,10\n2,20\n")
        .file(
            "clinics/a/U.sql",
            "-- @depend ./T\nSELECT id, v * 2 AS w FROM T;\n",
        )
        .file(
            "clinics/a/W.sql",
            "-- @depend ./U\nSELECT sum(w) AS s FROM U;\n",
        );
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let hex = output_hex(&run, "U");
    let path = blob_path(&r, &hex);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "id,w\n1,20\n2,40\n"
    );

    // Flip a digit in place: same size, same inode, same mtime.
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let before = std::fs::metadata(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(7)).unwrap();
    f.write_all(b"9").unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    std::fs::set_permissions(&path, before.permissions()).unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.len(), after.ino(), after.mtime(), after.mtime_nsec()),
        (
            before.len(),
            before.ino(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "id,w\n1,90\n2,40\n"
    );

    // W changes, U does not: U is cached, W reads the damaged blob.
    r.file(
        "clinics/a/W.sql",
        "-- @depend ./U\nSELECT sum(w) AS total FROM U;\n",
    );
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    let n = nodes(&run);
    assert_eq!(n["U"].0, "cached");
    assert_eq!(n["W"].0, "failed", "{n:?}");
    assert!(
        n["W"].1.contains("corrupt") && n["W"].1.contains(&hex[..12]),
        "{n:?}"
    );
    // The next run recomputes U (repairing its blob) and W from it.
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let n = nodes(&run);
    assert_eq!(n["U"].0, "computed", "{n:?}");
    assert_eq!(n["W"].0, "computed", "{n:?}");
    r.sluice(&["cat", "clinics/a/W"])
        .success()
        .stdout_has("total\n60\n");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "id,w\n1,20\n2,40\n"
    );
}

// ---------------------------------------------------------------------------
// 2. Orphans and temp dirs

#[test]
fn a_setsid_grandchild_is_killed_at_timeout() {
    let marker = format!("31.{}", std::process::id());
    let r = Repo::new();
    r.file(
        "clinics/a/Slow.sh",
        &format!("# @timeout 1s\nsetsid sleep {marker} &\nsleep 30\n"),
    );
    let start = Instant::now();
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    assert!(start.elapsed() < Duration::from_secs(5));
    let n = nodes(&run);
    assert!(n["Slow"].1.contains("timed out after 1s"), "{n:?}");
    let left = survivors(&marker, 1);
    assert!(left.is_empty(), "the setsid grandchild survived: {left:?}");
}

#[test]
fn a_sigkilled_run_leaves_no_node_process_and_the_next_run_sweeps_its_temp_dir() {
    let marker = format!("32.{}", std::process::id());
    let r = Repo::new();
    r.file(
        "clinics/a/Slow.sh",
        &format!(
            "touch \"$PWD/started\"\nsleep {marker}\nprintf 'x\\n1\\n' > \"$SLUICE_OUTPUT\"\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--repo", r.path().to_str().unwrap(), "run", "-j", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tmp = r.path().join(".sluice/tmp");
    let start = Instant::now();
    let node_dir = loop {
        let found = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("started").exists());
        if let Some(d) = found {
            break d;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tmp).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the temp root is private");
    child.kill().unwrap();
    child.wait().unwrap();
    let left = survivors(&marker, 2);
    assert!(left.is_empty(), "the node outlived sluice: {left:?}");
    assert!(node_dir.exists(), "a SIGKILLed sluice cannot clean up");
    // The next run sweeps it.
    r.file(
        "clinics/a/Slow.sh",
        "printf 'x\\n1\\n' > \"$SLUICE_OUTPUT\"\n",
    );
    r.sluice(&["run"]).success();
    assert!(!node_dir.exists(), "stale temp dir {node_dir:?} not swept");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------
// 3. SQL limits

#[test]
fn an_endless_recursive_cte_stops_at_its_timeout() {
    let r = Repo::new();
    r.file(
        "clinics/a/Loop.sql",
        "-- @timeout 1s\nWITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)\nSELECT count(*) AS c FROM r;\n",
    );
    let start = Instant::now();
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    let n = nodes(&run);
    assert_eq!(n["Loop"].0, "failed");
    assert!(n["Loop"].1.contains("timed out after 1s"), "{n:?}");
}

#[test]
fn a_node_cannot_write_more_than_max_output_mb() {
    let r = Repo::new();
    r.file(
        "sluice.toml",
        &format!("{}\n[limits]\nmax_output_mb = 1\n", crate::util::CONFIG),
    )
    .file(
        "clinics/a/Flood.sql",
        // @timeout only so that a missing cap fails fast instead of
        // filling the disk.
        "-- @timeout 5s\nWITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)\nSELECT n, 'padding padding padding padding' AS pad FROM r;\n",
    )
    .file(
        "clinics/a/Yes.sh",
        "yes 'a,b' | head -c 3000000 > \"$SLUICE_OUTPUT\"\n",
    );
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    let n = nodes(&run);
    for node in ["Flood", "Yes"] {
        assert_eq!(n[node].0, "failed", "{n:?}");
        assert!(
            n[node].1.contains("output limit") && n[node].1.contains("max_output_mb"),
            "{n:?}"
        );
    }
    let blobs: u64 = walk(&r.path().join(".sluice/blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(blobs < 2_000_000, "{blobs} bytes of blobs");
}

// ---------------------------------------------------------------------------
// 4. PRAGMAs

#[test]
fn only_read_only_pragmas_run() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,name\n1,a\n")
        .file(
            "clinics/a/Heap.sql",
            "PRAGMA hard_heap_limit=1;\nSELECT 1 AS x;\n",
        )
        .file(
            "clinics/a/TempDir.sql",
            "PRAGMA temp_store_directory = '/tmp';\nSELECT 1 AS x;\n",
        )
        .file(
            "clinics/a/Info.sql",
            "-- @depend ./T\nPRAGMA table_info(T);\n",
        )
        .file(
            "clinics/a/Cols.sql",
            "-- @depend ./T\nSELECT name FROM pragma_table_info('T') ORDER BY cid;\n",
        );
    let run = r.sluice(&["run", "--json", "-j", "1"]);
    run.failure();
    let n = nodes(&run);
    assert_eq!(n["Heap"].0, "failed", "{n:?}");
    assert!(
        n["Heap"]
            .1
            .contains("PRAGMA hard_heap_limit is not allowed"),
        "{n:?}"
    );
    assert_eq!(n["TempDir"].0, "failed", "{n:?}");
    assert!(
        n["TempDir"]
            .1
            .contains("PRAGMA temp_store_directory is not allowed"),
        "{n:?}"
    );
    assert_eq!(n["Info"].0, "computed", "{n:?}");
    assert_eq!(n["Cols"].0, "computed", "{n:?}");
    r.sluice(&["cat", "clinics/a/Cols"])
        .success()
        .stdout_has("name\nid\nname\n");
    r.sluice(&["cat", "clinics/a/Info"])
        .success()
        .stdout_has("cid,name,type,notnull,dflt_value,pk\n0,id,");
}

// ---------------------------------------------------------------------------
// 5. The sandbox

#[test]
fn a_sandboxed_node_reads_only_its_inputs_and_cannot_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = Repo::new();
    r.file("data/clinic_a.csv", "id\n1\n")
        .file("data/other_clinic.csv", "id\nSECRET\n")
        .file(
            "clinics/a/Sh.sh",
            &format!(
                "# @source data://clinic_a.csv\n\
                 set -u\n\
                 cat \"$SLUICE_INPUT_clinic_a\" > /dev/null || exit 3\n\
                 if cat \"$(dirname \"$SLUICE_INPUT_clinic_a\")/other_clinic.csv\"; then exit 4; fi\n\
                 if (exec 3<>/dev/tcp/127.0.0.1/{port}); then exit 5; fi\n\
                 printf 'ok\\nsh\\n' > \"$SLUICE_OUTPUT\"\n"
            ),
        )
        .file(
            "clinics/a/Py.py",
            &format!(
                "# @source data://clinic_a.csv\n\
                 import os, socket\n\
                 src = os.environ['SLUICE_INPUT_clinic_a']\n\
                 open(src).read()\n\
                 try:\n    open(os.path.join(os.path.dirname(src), 'other_clinic.csv')).read()\n    raise SystemExit(4)\n\
                 except PermissionError:\n    pass\n\
                 s = socket.socket()\n\
                 try:\n    s.connect(('127.0.0.1', {port}))\n    raise SystemExit(5)\n\
                 except PermissionError:\n    pass\n\
                 open(os.environ['SLUICE_OUTPUT'], 'w').write('ok\\npy\\n')\n"
            ),
        );
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let n = nodes(&run);
    assert_eq!(n["Sh"].0, "computed", "{n:?}");
    assert_eq!(n["Py"].0, "computed", "{n:?}");
    r.sluice(&["cat", "clinics/a/Sh"])
        .success()
        .stdout_has("ok\nsh\n");
    r.sluice(&["cat", "clinics/a/Py"])
        .success()
        .stdout_has("ok\npy\n");
    assert!(
        listener.accept().is_err(),
        "a node connected to the loopback port"
    );
}

// ---------------------------------------------------------------------------
// 6. PHI in error text

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_cell_value_in_a_sql_error_never_leaves_the_terminal() {
    let canary = "CANARY-7f3a9c";
    let r = Repo::new();
    r.file("data/patients.csv", &format!("patient_id\n{canary}\n"))
        .file(
            "clinics/a/Leak.sql",
            "-- @source data://patients.csv\nSELECT json_extract('{}', patient_id) AS j FROM patients;\n",
        )
        .file(
            "clinics/a/Own.sql",
            "SELECT json_extract('{}', 'path-from-the-sql') AS j;\n",
        );
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    assert!(!run.stdout.contains(canary), "{}", run.stdout);
    let n = nodes(&run);
    assert!(n["Leak"].1.contains("bad JSON path: '…'"), "{n:?}");
    assert!(
        n["Own"].1.contains("'path-from-the-sql'"),
        "a fragment of the node's own SQL is kept: {n:?}"
    );
    let plain = r.sluice(&["run"]);
    assert!(!plain.stdout.contains(canary), "{}", plain.stdout);
    let blobs = walk(&r.path().join(".sluice/blobs"));
    assert!(!blobs.is_empty());
    for b in blobs {
        let bytes = std::fs::read(&b).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(canary),
            "{} holds the canary",
            b.display()
        );
    }
}

#[test]
fn column_names_the_data_chose_are_counted_not_shown_outside_the_terminal() {
    let r = Repo::new();
    r.file("data/dx.csv", "patient_id,code\np1,C50\np2,C61\n")
        .file(
            "clinics/a/Dx.sql",
            "-- @source data://dx.csv\nSELECT patient_id, code FROM dx;\n",
        )
        .file(
            "clinics/a/Pivot.py",
            "# @depend ./Dx\nimport csv, os\n\
             rows = list(csv.DictReader(open(os.environ['SLUICE_INPUT_Dx'])))\n\
             codes = sorted({r['code'] for r in rows})\n\
             with open(os.environ['SLUICE_OUTPUT'], 'w', newline='') as f:\n\
             \x20   w = csv.writer(f)\n\
             \x20   w.writerow(['patient_id'] + codes)\n\
             \x20   for r in rows:\n\
             \x20       w.writerow([r['patient_id']] + [int(r['code'] == c) for c in codes])\n",
        );
    r.commit_all("pivot");
    r.sluice(&["run", "--promote"]).success();
    // New data: a code no file of the repository names.
    r.file(
        "data/dx.csv",
        "patient_id,code\np1,C50\np2,C61\np3,ZCANARY77\n",
    );
    let run = r.sluice(&["run", "--json"]);
    run.success();
    assert!(!run.stdout.contains("ZCANARY77"), "{}", run.stdout);
    let json = r.sluice(&["diff", "--json"]);
    json.success();
    assert!(!json.stdout.contains("ZCANARY77"), "{}", json.stdout);
    assert!(json.stdout.contains("\"patient_id\"") || json.stdout.contains("Pivot"));
    assert!(
        json.stdout.contains("(1 column named by the data)"),
        "{}",
        json.stdout
    );
    // The local terminal may show the names.
    r.sluice(&["diff"]).success().stdout_has("ZCANARY77");
}

#[test]
fn a_wrong_key_column_does_not_list_column_names_the_data_chose() {
    let r = Repo::new();
    r.file("data/dx.csv", "patient_id,code\np1,ZCANARY42\n")
        .file(
            "clinics/a/Pivot.py",
            "# @source data://dx.csv\n# @key patiend_id\nimport csv, os\n\
         rows = list(csv.DictReader(open(os.environ['SLUICE_INPUT_dx'])))\n\
         w = csv.writer(open(os.environ['SLUICE_OUTPUT'], 'w', newline=''))\n\
         w.writerow(['patient_id'] + [r['code'] for r in rows])\n\
         w.writerow(['p1', '1'])\n",
        );
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    assert!(!run.stdout.contains("ZCANARY42"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("its columns are: patient_id, (1 column named by the data)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("did you mean patient_id"),
        "{}",
        run.stdout
    );
    // On the local terminal, `sluice test` may name them.
    r.sluice(&["test", "clinics/a/Pivot"])
        .failure()
        .stdout_has("ZCANARY42");
}
