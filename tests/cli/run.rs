//! `run`, `cat`, `diff`, `why` and the cache: the example's tables against
//! an independent computation, early cutoff, failures, crash safety.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::util::{Repo, Run};

/// `pipeline:node` -> status, from `run --json`.
fn statuses(run: &Run) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in run.json()["runs"].as_array().expect("runs") {
        let p = r["pipeline"].as_str().expect("pipeline");
        for n in r["nodes"].as_array().expect("nodes") {
            out.insert(
                format!("{p}:{}", n["name"].as_str().expect("name")),
                n["status"].as_str().expect("status").to_string(),
            );
        }
    }
    out
}

fn with_status(s: &BTreeMap<String, String>, status: &str) -> Vec<String> {
    s.iter()
        .filter(|(_, v)| *v == status)
        .map(|(k, _)| k.clone())
        .collect()
}

fn edit(r: &Repo, path: &str, from: &str, to: &str) {
    let text = r.read(path);
    assert!(text.contains(from), "{path} lacks {from:?}");
    r.file(path, &text.replacen(from, to, 1));
}

#[test]
fn example_tables_equal_an_independent_computation() {
    let r = Repo::example();
    let run = r.sluice(&["run", "--json", "-j", "2"]);
    run.success();
    let s = statuses(&run);
    assert!(with_status(&s, "computed").len() >= 20, "{s:?}");
    let out = tempfile::tempdir().unwrap();
    let py = Command::new("python3")
        .arg(r.path().join("tools/reference_run.py"))
        .args([
            "--repo",
            r.path().to_str().unwrap(),
            "--all",
            out.path().to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let mut compared = 0;
    for key in s.keys() {
        let (pipeline, node) = key.split_once(':').unwrap();
        if node.starts_with('/') {
            continue;
        }
        let expected =
            std::fs::read_to_string(out.path().join(pipeline).join(format!("{node}.csv")))
                .unwrap_or_else(|e| panic!("reference lacks {key}: {e}"));
        let cat = r.sluice(&["cat", &format!("{pipeline}/{node}")]);
        cat.success();
        assert_eq!(
            cat.stdout, expected,
            "{key} differs from the reference computation"
        );
        compared += 1;
    }
    assert!(compared >= 20);
}

#[test]
fn rerun_computes_nothing_and_shared_edits_recompute_exactly_their_path() {
    let r = Repo::example();
    r.commit_all("example");
    r.sluice(&["run", "--json", "--promote"]).success();
    let again = r.sluice(&["run", "--json"]);
    again.success();
    let s = statuses(&again);
    assert_eq!(
        with_status(&s, "computed"),
        Vec::<String>::new(),
        "a re-run computes nothing"
    );
    assert_eq!(with_status(&s, "cached").len(), s.len());

    // Edit a shared node: it and its descendants recompute in both clinics.
    edit(
        &r,
        "common/varian/Albumin.sql",
        "AND value IS NOT NULL",
        "AND value IS NOT NULL AND 1 = 1",
    );
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let computed = with_status(&statuses(&run), "computed");
    assert_eq!(
        computed,
        vec!["clinics/clinic_a:Albumin", "clinics/clinic_b:Albumin",],
        "an edit that yields byte-identical output stops at the edited node (early cutoff)"
    );
    edit(
        &r,
        "common/varian/Albumin.sql",
        "{{albumin_low}} THEN 1",
        "{{albumin_low}} + 0.5 THEN 1",
    );
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let computed = with_status(&statuses(&run), "computed");
    assert_eq!(
        computed,
        vec![
            "clinics/clinic_a:Albumin",
            "clinics/clinic_a:AlbuminTrend",
            "clinics/clinic_a:PatientSummary",
            "clinics/clinic_b:Albumin",
            "clinics/clinic_b:PatientSummary",
        ]
    );

    // The plan now compares with production for real.
    let plan = r.sluice(&["plan", "--json"]);
    plan.success();
    let mut changes = BTreeMap::new();
    for p in plan.json()["plans"].as_array().unwrap() {
        for n in p["nodes"].as_array().unwrap() {
            changes.insert(
                format!(
                    "{}:{}",
                    p["pipeline"].as_str().unwrap(),
                    n["name"].as_str().unwrap()
                ),
                n["change"].as_str().unwrap().to_string(),
            );
        }
    }
    assert_eq!(changes["clinics/clinic_a:Albumin"], "modified");
    assert_eq!(changes["clinics/clinic_a:PatientSummary"], "affected");
    assert_eq!(changes["clinics/clinic_a:AlbuminTrend"], "affected");
    assert_eq!(changes["clinics/clinic_a:Labs"], "unchanged");

    // why names the part that changed.
    r.sluice(&["why", "clinics/clinic_a/Albumin"])
        .success()
        .stdout_has("computed")
        .stdout_has("body changed");
    r.sluice(&["why", "clinics/clinic_a/PatientSummary"])
        .success()
        .stdout_has("input Albumin changed");
    r.sluice(&["why", "clinics/clinic_a/Labs"])
        .success()
        .stdout_has("nothing changed");

    // diff: counts against production, no cell values.
    let diff = r.sluice(&["diff", "--json", "clinics/clinic_a"]);
    diff.success();
    let v = diff.json();
    let nodes = v["diffs"][0]["nodes"].as_array().unwrap();
    let alb = nodes
        .iter()
        .find(|n| n["name"] == "Albumin")
        .expect("Albumin in diff");
    assert_eq!(alb["rows_before"], alb["rows_after"]);
    assert!(alb["keyed"]["changed"].as_u64().unwrap() > 0, "{alb}");
    assert_eq!(alb["keyed"]["added"], 0);
    assert!(
        nodes.iter().all(|n| n["name"] != "Labs"),
        "unchanged tables are left out"
    );
}

#[test]
fn a_failing_node_skips_only_its_descendants() {
    let r = Repo::example();
    edit(&r, "common/varian/Albumin.sql", "FROM Labs", "FROM Labz");
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    let s = statuses(&run);
    assert_eq!(
        with_status(&s, "failed"),
        vec!["clinics/clinic_a:Albumin", "clinics/clinic_b:Albumin"]
    );
    assert_eq!(
        with_status(&s, "skipped"),
        vec![
            "clinics/clinic_a:AlbuminTrend",
            "clinics/clinic_a:PatientSummary",
            "clinics/clinic_b:PatientSummary",
        ]
    );
    assert_eq!(
        s["clinics/clinic_a:Hemoglobin"], "computed",
        "independent nodes still run"
    );
    let text = r.sluice(&["run"]);
    // At the line and column of the mounted file the query came from.
    text.failure()
        .stdout_has("common/varian/Albumin.sql:20:6: SQL error: no such table: Labz");
}

#[test]
fn failed_assertions_and_keys_fail_the_node_with_counts_only() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,v\n1,10\n1,11\n2,\n")
        .file(
            "clinics/a/K.sql",
            "-- @depend ./T\n-- @key id\nSELECT id, v FROM T;\n",
        )
        .file(
            "clinics/a/N.sql",
            "-- @depend ./T\n-- @assert not_null(v)\n-- @assert rows > 5\nSELECT * FROM T;\n",
        )
        .file(
            "clinics/a/Ok.sql",
            "-- @depend ./T\n-- @assert sql: SELECT * FROM Ok WHERE v < 0\nSELECT * FROM T;\n",
        );
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    let s = statuses(&run);
    assert_eq!(s["clinics/a:K"], "failed");
    assert_eq!(s["clinics/a:N"], "failed");
    assert_eq!(s["clinics/a:Ok"], "computed");
    let text = r.sluice(&["run"]);
    text.stdout_has("clinics/a/K.sql: ").stdout_has("duplicate");
    assert!(!text.stdout.contains(",10"), "no cell values in errors");
}

#[test]
fn command_actions_get_inputs_params_and_a_timeout() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n2\n")
        .file(
            "clinics/a/Py.py",
            "# @depend ./T\n# @param factor=3\nimport csv, os\nrows = list(csv.DictReader(open(os.environ['SLUICE_INPUT_T'])))\nwith open(os.environ['SLUICE_OUTPUT'], 'w') as f:\n    f.write('id,x\\n')\n    for r in rows:\n        f.write(f\"{r['id']},{int(r['id']) * int(os.environ['SLUICE_PARAM_factor'])}\\n\")\n",
        )
        .file("clinics/a/Slow.sh", "# @timeout 1s\nsleep 20\n");
    let run = r.sluice(&["run", "--json"]);
    run.failure();
    let s = statuses(&run);
    assert_eq!(s["clinics/a:Py"], "computed");
    assert_eq!(s["clinics/a:Slow"], "failed");
    r.sluice(&["cat", "clinics/a/Py"])
        .success()
        .stdout_has("id,x\n1,3\n2,6\n");
    r.sluice(&["run"]).stdout_has("timed out after 1s");
}

/// Every blob file's bytes hash to its name.
fn assert_blobs_intact(state: &Path) {
    let mut stack = vec![state.join("blobs/sha256")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                continue;
            }
            let bytes = std::fs::read(e.path()).unwrap();
            let want = e.file_name().to_string_lossy().to_string();
            let got = sluice::plan::digest::Digest::of(&bytes).hex();
            assert_eq!(got, want, "blob {} is not intact", e.path().display());
        }
    }
}

/// Waits until a running node has written `name` into its own temp dir
/// (the sandbox lets a node write nowhere else) and returns its path.
fn wait_for_node_file(r: &Repo, name: &str) -> std::path::PathBuf {
    let start = std::time::Instant::now();
    loop {
        if let Ok(dirs) = std::fs::read_dir(r.path().join(".sluice/tmp")) {
            for d in dirs.flatten() {
                let p = d.path().join(name);
                if p.exists() {
                    return p;
                }
            }
        }
        assert!(start.elapsed().as_secs() < 20, "the node never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_run_killed_mid_write_leaves_no_blob_and_no_cache_entry() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n").file(
        "clinics/a/Slow.sh",
        "# @depend ./T\nprintf 'id\\n1\\n' > \"$SLUICE_OUTPUT\"\ntouch \"$PWD/started\"\nsleep 3\nprintf '2\\n' >> \"$SLUICE_OUTPUT\"\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--repo", r.path().to_str().unwrap(), "run", "-j", "1"])
        .spawn()
        .unwrap();
    wait_for_node_file(&r, "started");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_blobs_intact(&r.path().join(".sluice"));
    // The next run computes the node again: nothing of the killed one was
    // cached, and its full output is what lands.
    let run = r.sluice(&["run", "--json"]);
    run.success();
    assert_eq!(statuses(&run)["clinics/a:Slow"], "computed");
    r.sluice(&["cat", "clinics/a/Slow"])
        .success()
        .stdout_has("id\n1\n2\n");
    assert_blobs_intact(&r.path().join(".sluice"));
}

#[test]
fn ctrl_c_and_sigterm_leave_no_node_process_and_no_temp_dir() {
    for signal in [rustix::process::Signal::INT, rustix::process::Signal::TERM] {
        let r = Repo::new();
        r.file("clinics/a/T.csv", "id\n1\n").file(
            "clinics/a/Slow.sh",
            "# @depend ./T\nsleep 30 &\necho \"$! $PWD\" > \"$PWD/info.tmp\" && mv \"$PWD/info.tmp\" \"$PWD/node-info\"\nwait\n",
        );
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--repo", r.path().to_str().unwrap(), "run", "-j", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let info = wait_for_node_file(&r, "node-info");
        let text = std::fs::read_to_string(&info).unwrap();
        let (pid, dir) = text.trim().split_once(' ').unwrap();
        let pid: i32 = pid.parse().unwrap();
        let sluice_pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(sluice_pid, signal).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{signal:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("interrupted"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(start.elapsed().as_secs() < 10, "sluice waited for the node");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "{signal:?}: the node's process survived: {stat}"
        );
        assert!(
            !Path::new(dir).exists(),
            "{signal:?}: temp dir {dir} left behind"
        );
        // Nothing was promoted or recorded as a run.
        r.sluice(&["diff"]).stderr_has("has not run yet");
    }
}

#[test]
fn a_corrupt_blob_is_detected_not_served() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n2\n")
        .file("clinics/a/U.sql", "-- @depend ./T\nSELECT id FROM T;\n");
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let v = run.json();
    let t = v["runs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "T")
        .unwrap()
        .clone();
    let digest = t["output"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let path = r.path().join(format!(
        ".sluice/blobs/sha256/{}/{}/{}",
        &digest[..2],
        &digest[2..4],
        digest
    ));
    let mut bytes = std::fs::read(&path).expect("blob at its content address");
    bytes[3] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    r.sluice(&["cat", "clinics/a/T"]).stderr_has(&digest[..12]);
    // A node reading the damaged table fails, naming it, instead of using
    // it; the next run recomputes the table (repairing the blob).
    r.file(
        "clinics/a/U.sql",
        "-- @depend ./T\nSELECT id + 1 AS id FROM T;\n",
    );
    let run = r.sluice(&["run"]);
    run.failure()
        .stdout_has(&digest[..12])
        .stdout_has("corrupt");
    let run = r.sluice(&["run", "--json"]);
    run.success();
    let s = statuses(&run);
    assert_eq!(
        s["clinics/a:T"], "computed",
        "the damaged table is recomputed"
    );
    assert_eq!(s["clinics/a:U"], "computed");
    r.sluice(&["cat", "clinics/a/T"])
        .success()
        .stdout_has("id\n1\n2\n");
    r.sluice(&["cat", "clinics/a/U"])
        .success()
        .stdout_has("id\n2\n3\n");
    assert_blobs_intact(&r.path().join(".sluice"));
}

#[test]
fn relative_repo_paths_work_for_command_actions_and_failures_show_the_log_locally() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n")
        .file(
            "clinics/a/Copy.sh",
            "# @depend ./T\ncp \"$SLUICE_INPUT_T\" \"$SLUICE_OUTPUT\"\n",
        )
        .file(
            "clinics/a/Bad.sh",
            "echo 'something went wrong here' >&2\nexit 4\n",
        );
    let parent = r.path().parent().unwrap();
    let name = r.path().file_name().unwrap().to_str().unwrap();
    let run = crate::util::sluice_in(parent, &["--repo", name, "run"]);
    run.failure()
        .stdout_has("computed")
        .stdout_has("clinics/a/Bad.sh: `bash` exited with status 4")
        .stdout_has("| something went wrong here");
    let json = r.sluice(&["run", "--json"]);
    assert_eq!(statuses(&json)["clinics/a:Copy"], "cached");
    assert!(
        !json.stdout.contains("something went wrong"),
        "logs stay out of JSON and manifests"
    );
}

#[test]
fn sources_cannot_leave_the_data_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.csv"), "ssn\n123\n").unwrap();
    let r = Repo::new();
    r.file(
        "clinics/a/A.sql",
        "-- @source data://leak.csv\nSELECT * FROM leak;\n",
    )
    .file("data/ok.csv", "x\n1\n");
    std::os::unix::fs::symlink(
        outside.path().join("secret.csv"),
        r.path().join("data/leak.csv"),
    )
    .unwrap();
    r.sluice(&["plan"])
        .failure()
        .stderr_has("clinics/a/A.sql:1: @source data://leak.csv leads outside the data root");
    r.sluice(&["run"]).failure();
    r.file(
        "sluice.toml",
        "[project]\npipelines = [\"clinics/*\"]\n[data]\nroot = \"/tmp\"\n",
    );
    r.sluice(&["check"])
        .failure()
        .stderr_has("must be a relative path inside the repository");
}

fn manifest(r: &Repo, digest: &str) -> serde_json::Value {
    let hex = digest.trim_start_matches("sha256:");
    let path = r.path().join(format!(
        ".sluice/blobs/sha256/{}/{}/{hex}",
        &hex[..2],
        &hex[2..4]
    ));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn promotion_follows_the_production_branch_and_chains_manifests() {
    let r = crate::check::two_clinics();
    r.commit_all("first");
    r.git(&["checkout", "-q", "-b", "experiment"]);
    r.file("clinics/a/Extra.sql", "SELECT 1 AS x;\n");
    r.commit_all("an experiment");
    r.sluice(&["run", "--promote"])
        .stderr_has("branch `experiment`) is not on the production branch `main`");
    r.git(&["checkout", "-q", "main"]);
    let first = r.sluice(&["run", "--json", "--promote"]);
    first.success();
    let m1 = first.json()["runs"][0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first.json()["runs"][0]["promoted"], true);
    assert_eq!(manifest(&r, &m1)["git_ref"], "main");
    r.file(
        "common/g/Stats.sql",
        "-- @depend /reference/codes\nSELECT count(*) * 2 AS n FROM codes;\n",
    );
    r.commit_all("second");
    let second = r.sluice(&["run", "--json", "--promote"]);
    second.success();
    let m2 = second.json()["runs"][0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        manifest(&r, &m2)["previous"],
        m1,
        "each production manifest links the one before"
    );
    // A run with a failure is recorded but not promoted.
    r.file("clinics/a/Bad.sql", "SELECT * FROM nowhere;\n");
    r.commit_all("third");
    let third = r.sluice(&["run", "--json", "--promote"]);
    third.failure();
    assert_eq!(third.json()["runs"][0]["promoted"], false);
    let plan = r.sluice(&["plan", "--json", "clinics/a"]);
    let nodes = plan.json()["plans"][0]["nodes"].as_array().unwrap().clone();
    let bad = nodes.iter().find(|n| n["name"] == "Bad").unwrap();
    assert_eq!(
        bad["change"], "new",
        "production still is the second manifest"
    );
}

#[test]
fn diff_counts_keyed_changes_including_null_to_empty() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,v\n1,\n2,b\n3,c\n").file(
        "clinics/a/K.sql",
        "-- @depend ./T\n-- @key id\nSELECT id, v FROM T;\n",
    );
    r.commit_all("first");
    r.sluice(&["run", "--promote"]).success();
    // Row 1: NULL -> "", row 3 removed, row 4 added, a column added.
    r.file("clinics/a/T.csv", "id,v\n1,\"\"\n2,b\n4,d\n").file(
        "clinics/a/K.sql",
        "-- @depend ./T\n-- @key id\nSELECT id, v, 1 AS flag FROM T;\n",
    );
    r.sluice(&["run"]).success();
    let d = r.sluice(&["diff", "--json"]);
    d.success();
    let v = d.json();
    let k = v["diffs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "K")
        .unwrap()
        .clone();
    assert_eq!(k["rows_before"], 3);
    assert_eq!(k["rows_after"], 3);
    assert_eq!(k["delta"], 0);
    assert_eq!(k["columns_added"], serde_json::json!(["flag"]));
    assert_eq!(
        k["keyed"],
        serde_json::json!({"added": 1, "removed": 1, "changed": 2})
    );
    let text = r.sluice(&["diff"]);
    text.success()
        .stdout_has("keys +1 -1 ~2")
        .stdout_has("+cols flag");
    for cell in ["\"b\"", ",d", "\"d\""] {
        assert!(
            !d.stdout.contains(cell) && !text.stdout.contains(cell),
            "no cell values in a diff"
        );
    }
}

#[test]
fn a_source_that_changes_during_the_run_fails_its_node() {
    let r = Repo::new();
    r.file("data/in.csv", "id\n1\n").file(
        "clinics/a/Grab.sh",
        "# @source data://in.csv\ncp \"$SLUICE_INPUT_in\" \"$SLUICE_OUTPUT\"\ntouch \"$PWD/started\"\nsleep 1\n",
    );
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--repo", r.path().to_str().unwrap(), "run", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_node_file(&r, "started");
    // The source changes while the node runs (the node cannot write it).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(r.path().join("data/in.csv"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::new(),
    };
    run.failure();
    assert_eq!(statuses(&run)["clinics/a:Grab"], "failed");
    run.stdout_has("data://in.csv changed while sluice was running");
    // Unchanged since, the next run takes the new data.
    r.sluice(&["run"]).success();
}

#[test]
fn a_new_interpreter_version_is_a_new_definition() {
    use std::os::unix::fs::PermissionsExt;
    let r = Repo::new();
    r.file("clinics/a/P.py", "print(1)\n");
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("python3");
    let def = |version: &str| {
        std::fs::write(&fake, format!("#!/bin/sh\necho 'Python {version}'\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.path().display());
        let plan = r.sluice(&["--action-path", &path, "plan", "--json"]);
        plan.success();
        plan.json()["plans"][0]["nodes"][0]["definition"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = def("3.11.7");
    assert_eq!(def("3.11.7"), a);
    assert_ne!(
        def("3.12.0"),
        a,
        "upgrading python3 changes the node's definition"
    );
}

/// Promotion needs a clean tree at a commit that is the production
/// branch's tip or reachable from it, and says which condition failed.
#[test]
fn promotion_requires_a_clean_commit_of_the_production_branch() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id\n1\n");
    let refused = |what: &str| {
        let out = r.sluice(&["run", "--promote"]);
        assert_eq!(out.code, 2, "{what}: {}", out.stderr);
        out.stderr_has(what);
    };
    // Not in git at all (the temp dir is outside any repository).
    refused("is not in a git repository");
    r.git(&["init", "-q"]);
    refused("the repository has no commit yet");
    r.commit_all("first");
    // The state dir (.sluice) is no change; an edited node is.
    r.file("clinics/a/T.csv", "id\n2\n");
    refused("the working tree is not clean (1 file differs from HEAD: clinics/a/T.csv)");
    r.file("clinics/a/New.sql", "SELECT 1 AS x;\n");
    refused("the working tree is not clean (2 files differ from HEAD");
    r.git(&["checkout", "-q", "--", "."]);
    r.remove("clinics/a/New.sql");
    // A detached HEAD on main's history (as CI checks out) promotes.
    let first = r.git(&["rev-parse", "HEAD"]);
    r.file("clinics/a/T.csv", "id\n3\n");
    r.commit_all("second");
    r.git(&["checkout", "-q", "--detach", &first]);
    let out = r.sluice(&["run", "--json", "--promote"]);
    out.success();
    assert_eq!(out.json()["runs"][0]["promoted"], true);
    // A detached commit that is not on main is refused.
    r.file("clinics/a/T.csv", "id\n4\n");
    r.commit_all("off main");
    refused(
        "detached) is not on the production branch `main`: it is neither its tip nor reachable from it",
    );
    // And `--at` a commit that is not on main.
    let off = r.git(&["rev-parse", "HEAD"]);
    r.git(&["checkout", "-q", "main"]);
    let out = r.sluice(&["--at", &off, "run", "--promote"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    out.stderr_has(&format!("--at {off}"));
    r.sluice(&["--at", "main", "run", "--promote"]).success();
}

/// `diff` says what a table did against production (not how the run got
/// it), and a failed node's line does not read as dropped columns.
#[test]
fn diff_describes_changes_not_cache_hits_and_failed_nodes_drop_no_columns() {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,v\n1,a\n2,b\n").file(
        "clinics/a/K.sql",
        "-- @depend ./T\n-- @key id\nSELECT id, v FROM T;\n",
    );
    r.commit_all("first");
    r.sluice(&["run", "--promote"]).success();
    r.file("clinics/a/T.csv", "id,v\n1,a\n2,c\n");
    r.sluice(&["run"]).success();
    // The second run takes K from the cache; its table still differs.
    let again = r.sluice(&["run"]);
    again.success().stderr_lacks("[1/2]");
    let diff = r.sluice(&["diff", "--json"]);
    let v = diff.json();
    let k = v["diffs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "K")
        .cloned()
        .unwrap();
    assert_eq!(k["status"], "changed", "{k}");

    r.file(
        "clinics/a/K.sql",
        "-- @depend ./T\nSELECT id, v FROM Nowhere;\n",
    );
    r.sluice(&["run"]).failure();
    let diff = r.sluice(&["diff", "--json"]);
    let nodes = diff.json()["diffs"][0]["nodes"].clone();
    let k = &nodes[0];
    assert_eq!(k["name"], "K");
    assert_eq!(k["status"], "failed");
    assert_eq!(k["columns_removed"], serde_json::json!([]), "{k}");
    let text = r.sluice(&["diff"]);
    text.success()
        .stdout_has("failed in this run: no table to compare");
    assert!(!text.stdout.contains("-cols"), "{}", text.stdout);
}

/// Outside a terminal, cached nodes get no line: the lines say how many
/// were cached so the numbers do not seem to skip.
#[test]
fn progress_lines_account_for_cached_nodes() {
    let r = Repo::new();
    r.file("clinics/a/A.csv", "id\n1\n")
        .file("clinics/a/B.sql", "-- @depend ./A\nSELECT id FROM A;\n");
    r.sluice(&["run"]).success();
    r.file("clinics/a/C.sql", "-- @depend ./B\nSELECT id FROM B;\n");
    r.sluice(&["run"])
        .success()
        .stderr_has("[3/3] computed clinics/a/C (")
        .stderr_has("1 row; 2 cached so far)");
}

/// South depends on north's Patient: in south's summary it is an input
/// from north, computed once, not one of south's own nodes.
#[test]
fn a_node_of_another_pipeline_is_an_input_described_once() {
    let r = Repo::new();
    r.file("clinics/north/Patient.csv", "id\n1\n2\n")
        .file(
            "clinics/south/Both.sql",
            "-- @depend /clinics/north/Patient\nSELECT count(*) AS n FROM Patient;\n",
        )
        .file("reference/codes.csv", "code\nA\n")
        .file(
            "clinics/north/Codes.sql",
            "-- @depend /reference/codes\nSELECT * FROM codes;\n",
        )
        .file(
            "clinics/south/Codes.sql",
            "-- @depend /reference/codes\nSELECT code FROM codes;\n",
        );
    let out = r.sluice(&["run"]);
    out.success();
    let south = out.stdout.split("clinics/south").nth(1).unwrap();
    assert!(
        south.contains("inputs from other directories: clinics/north/Patient (see clinics/north), reference/codes (see clinics/north)"),
        "{}",
        out.stdout
    );
    assert!(south.contains("2 nodes: 2 computed"), "{}", out.stdout);
    let north = out.stdout.split("clinics/south").next().unwrap();
    assert!(
        north.contains("inputs from other directories: reference/codes (computed)"),
        "{}",
        out.stdout
    );
    // Only south: north's Patient is computed for it, and said so.
    let only = r.sluice(&["run", "--json", "clinics/south"]);
    let v = only.json();
    let patient = v["runs"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "/clinics/north/Patient")
        .cloned()
        .unwrap();
    assert_eq!(patient["input_from"], "clinics/north");
}
