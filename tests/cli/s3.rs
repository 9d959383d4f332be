//! Blobs on an S3-compatible object store, end to end: `sluice run` with
//! `--blobs s3://…` against moto's server on loopback, two state dirs,
//! `cat` after the local cache is gone, and bad settings.

use std::path::Path;
use std::process::Command;

use crate::moto::moto;
use crate::util::{Repo, Run, outputs};

/// Runs sluice on `r` with the AWS environment of the moto server.
fn sluice_s3(r: &Repo, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--repo")
        .arg(r.path())
        .args(args)
        .current_dir(r.path())
        .env_remove("SLUICE_STATE_DIR")
        .env_remove("SLUICE_DATA_ROOT")
        .env_remove("SLUICE_BLOBS");
    for (k, v) in moto().env() {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("sluice runs"))
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

fn small_repo() -> Repo {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,name\n1,alpha\n2,beta\n")
        .file(
            "clinics/a/U.sql",
            "-- @depend ./T\nSELECT id, upper(name) AS name FROM T;\n",
        )
        .file(
            "clinics/a/V.py",
            "# @depend ./U\nimport csv, os\n\
             rows = list(csv.reader(open(os.environ['SLUICE_INPUT_U'])))\n\
             with open(os.environ['SLUICE_OUTPUT'], 'w', newline='') as f:\n\
             \x20   w = csv.writer(f, lineterminator='\\n')\n\
             \x20   w.writerow(['n'])\n\
             \x20   w.writerow([len(rows) - 1])\n",
        );
    r.commit_all("first");
    r
}

#[test]
fn tables_land_in_the_bucket_and_cat_reads_them_back_after_the_cache_is_gone() {
    let r = small_repo();
    let bucket = moto().bucket("e2e");
    let url = format!("s3://{bucket}/team");
    let state_a = tempfile::tempdir().unwrap();
    let a = state_a.path().to_str().unwrap();

    let first = sluice_s3(&r, &["--blobs", &url, "--state-dir", a, "run", "--json"]);
    first.success();
    let outs = outputs(&first);
    assert_eq!(outs.len(), 3, "{outs:?}");
    let keys = moto().keys(&bucket, "team/sha256/");
    for (node, digest) in &outs {
        let key = format!("team/sha256/{}", digest.trim_start_matches("sha256:"));
        assert!(keys.contains(&key), "{node}: {key} not in {keys:?}");
    }
    // Nothing went to the local store; the cache holds verified copies.
    assert!(files_under(&state_a.path().join("blobs")).is_empty());
    let cached = files_under(&state_a.path().join("blob-cache/sha256"));
    for digest in outs.values() {
        assert!(cached.contains(&digest.trim_start_matches("sha256:").to_string()));
    }

    // A second checkout's state dir, the bucket named by SLUICE_BLOBS:
    // the same tables, byte for byte, under the same names (its action
    // cache is its own until the state is shared too).
    let state_b = tempfile::tempdir().unwrap();
    let mut second_args = vec!["--state-dir", state_b.path().to_str().unwrap()];
    second_args.extend(["run", "--json"]);
    let second = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--repo")
            .arg(r.path())
            .args(&second_args)
            .env("SLUICE_BLOBS", &url);
        for (k, v) in moto().env() {
            cmd.env(k, v);
        }
        Run::from(cmd.output().unwrap())
    };
    second.success();
    assert_eq!(outputs(&second), outs);
    // Only its own run record is new in the bucket: no table twice.
    let after = moto().keys(&bucket, "team/sha256/");
    assert!(keys.iter().all(|k| after.contains(k)));
    assert_eq!(after.len(), keys.len() + 1, "{after:?}");

    // The first checkout loses its cache: `cat` reads the table back from
    // the bucket, verified, into a new cache.
    std::fs::remove_dir_all(state_a.path().join("blob-cache")).unwrap();
    sluice_s3(
        &r,
        &["--blobs", &url, "--state-dir", a, "cat", "clinics/a/U"],
    )
    .success()
    .stdout_has("id,name\n1,ALPHA\n2,BETA\n");
    sluice_s3(
        &r,
        &["--blobs", &url, "--state-dir", a, "cat", "clinics/a/V"],
    )
    .success()
    .stdout_has("n\n2\n");
    let u = outs["U"].trim_start_matches("sha256:").to_string();
    assert!(files_under(&state_a.path().join("blob-cache/sha256")).contains(&u));

    // And a run after that takes everything from the cache.
    let again = sluice_s3(&r, &["--blobs", &url, "--state-dir", a, "run", "--json"]);
    again.success();
    for n in again.json()["runs"][0]["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "cached", "{n}");
    }
}

#[test]
fn a_bad_blob_store_url_names_the_setting() {
    let r = small_repo();
    let state = tempfile::tempdir().unwrap();
    let s = state.path().to_str().unwrap();
    let run = sluice_s3(&r, &["--blobs", "/srv/blobs", "--state-dir", s, "run"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("--blobs / SLUICE_BLOBS `/srv/blobs`")
        .stderr_has("s3://BUCKET");
    let fsck = sluice_s3(
        &r,
        &["--blobs", "s3://good-bucket", "--state-dir", s, "fsck"],
    );
    // A bucket that is not there: an error naming it, not "clean".
    assert_eq!(fsck.code, 2, "{}", fsck.stderr);
    fsck.stderr_has("cannot list the blobs")
        .stderr_has("good-bucket");
    assert!(
        !fsck.stderr.contains("testing-secret-key"),
        "{}",
        fsck.stderr
    );
    let run = sluice_s3(&r, &["--blobs", "s3://Bad_Bucket", "--state-dir", s, "run"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("not a bucket name");
    let run = sluice_s3(
        &r,
        &[
            "--blobs",
            "s3://good-bucket",
            "--blob-cache-size",
            "lots",
            "--state-dir",
            s,
            "run",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    run.stderr_has("--blob-cache-size / SLUICE_BLOB_CACHE_SIZE: `lots` is not a size");
}

#[test]
fn an_unreachable_bucket_is_an_error_without_credentials_in_it() {
    let r = small_repo();
    let state = tempfile::tempdir().unwrap();
    let s = state.path().to_str().unwrap();
    let run = sluice_s3(
        &r,
        &[
            "--blobs",
            "s3://no-such-bucket-e2e",
            "--state-dir",
            s,
            "run",
            "--json",
        ],
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("s3://no-such-bucket-e2e/sha256/"), "{all}");
    assert!(!all.contains("testing-secret-key"), "{all}");
    assert!(!all.contains("testing-key-id"), "{all}");
}

/// A `sluice-server.toml` serving one plain-git repository, blobs in `blobs`.
fn server_config(dir: &Path, bare: &Path, data: &Path, blobs: &str) -> std::path::PathBuf {
    let config = dir.join("sluice-server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://sluice.test\"\nstate_dir = \"{}\"\n\
             data_root = \"{}\"\nworkers = 1\nblobs = \"{blobs}\"\nblob_cache_size = \"64MiB\"\n\
             [[repos]]\nforge = \"git\"\nname = \"pipelines\"\nclone_url = \"{}\"\n\
             production_branch = \"main\"\nsecret_env = \"SLUICE_TEST_SECRET\"\n",
            dir.join("state").display(),
            data.display(),
            bare.display(),
        ),
    )
    .unwrap();
    config
}

fn serve(config: &Path) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .env("SLUICE_TEST_SECRET", "hook-secret")
        .env_remove("SLUICE_STATE_DIR")
        .env_remove("SLUICE_DATA_ROOT")
        .env_remove("SLUICE_BLOBS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in moto().env() {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

#[test]
fn the_daemon_keeps_its_tables_in_the_bucket_named_by_its_config() {
    use std::io::BufRead;
    let r = small_repo();
    let sha = r.git(&["rev-parse", "HEAD"]);
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("origin.git");
    crate::util::git_in(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            r.path().to_str().unwrap(),
            "origin.git",
        ],
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let bucket = moto().bucket("daemon");
    let config = server_config(dir.path(), &bare, &data, &format!("s3://{bucket}/d"));

    let mut child = serve(&config);
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("sluice serve: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let body = format!(
        "{{\"repo\":\"pipelines\",\"updates\":[{{\"old\":\"{}\",\"new\":\"{sha}\",\"ref\":\"refs/heads/main\"}}]}}",
        "0".repeat(40)
    );
    let res = ureq::post(&format!("{url}/hooks/git"))
        .header("Authorization", "Bearer hook-secret")
        .header("Content-Type", "application/json")
        .send(body.as_bytes());
    assert!(res.is_ok(), "{res:?}");

    // U's table, by its digest, appears in the bucket.
    let u = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(b"id,name\n1,ALPHA\n2,BETA\n");
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let key = format!("d/sha256/{u}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !moto().keys(&bucket, "d/sha256/").contains(&key) {
        assert!(
            std::time::Instant::now() < deadline,
            "{key} never reached the bucket"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let state = dir.path().join("state");
    assert!(files_under(&state.join("blobs")).is_empty());
    assert!(files_under(&state.join("blob-cache/sha256")).contains(&u));
}

#[test]
fn the_daemon_refuses_a_bad_blobs_url_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = server_config(dir.path(), dir.path(), dir.path(), "/srv/blobs");
    let out = serve(&config).wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sluice-server.toml:6: blobs:"), "{err}");
    assert!(err.contains("s3://BUCKET"), "{err}");
}
