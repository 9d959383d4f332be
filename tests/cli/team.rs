//! A team on shared infrastructure, end to end: two checkouts (two clones,
//! two state dirs) sharing one PostgreSQL database (`--state`, the
//! `pg_cluster` harness) and one bucket (`--blobs`, moto's S3 server on
//! loopback), and `sluice gc` on that shared store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;

use crate::moto::moto;
use crate::pg_cluster::{PASSWORD, TestDb, cluster};
use crate::util::{Repo, Run, git_in};

/// One database and one bucket, as a team would share them.
struct Shared {
    db: TestDb,
    bucket: String,
    /// `s3://BUCKET/team`
    blobs: String,
}

impl Shared {
    fn new(hint: &str) -> Shared {
        let bucket = moto().bucket(hint);
        Shared {
            db: cluster().fresh_db(),
            blobs: format!("s3://{bucket}/team"),
            bucket,
        }
    }

    /// Runs sluice in `repo` with its own `state_dir` and the shared
    /// state and blobs, the password and AWS settings in the environment.
    fn sluice(&self, repo: &Path, state_dir: &Path, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--repo")
            .arg(repo)
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--state", &self.db.url, "--blobs", &self.blobs])
            .args(args)
            .current_dir(repo)
            .env_remove("SLUICE_STATE_DIR")
            .env_remove("SLUICE_DATA_ROOT")
            .env_remove("SLUICE_STATE")
            .env_remove("SLUICE_BLOBS")
            .env_remove("PGPASSFILE")
            .env("PGPASSWORD", PASSWORD);
        for (k, v) in moto().env() {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("sluice runs"))
    }

    /// The blob keys in the bucket, without the prefix (`sha256/<hex>`).
    fn keys(&self) -> Vec<String> {
        moto()
            .keys(&self.bucket, "team/sha256/")
            .into_iter()
            .map(|k| k.trim_start_matches("team/").to_string())
            .collect()
    }

    /// (objects, bytes) in the bucket.
    fn bucket_size(&self) -> (usize, u64) {
        let url = format!(
            "{}/{}?list-type=2&prefix=team/",
            moto().endpoint,
            self.bucket
        );
        let body = ureq::get(&url)
            .call()
            .expect("list objects")
            .into_body()
            .read_to_string()
            .expect("list body");
        let sizes: Vec<u64> = body
            .split("<Size>")
            .skip(1)
            .filter_map(|s| s.split_once("</Size>").and_then(|(n, _)| n.parse().ok()))
            .collect();
        (sizes.len(), sizes.iter().sum())
    }

    fn count(&self, sql: &str) -> i64 {
        cluster().query(&self.db.name, sql)[0].parse().unwrap()
    }
}

/// Two clinics: a CSV, SQL over it, Python over that; and a second SQL
/// pipeline.
fn team_repo() -> Repo {
    let r = Repo::new();
    r.file("clinics/a/T.csv", "id,name\n1,alpha\n2,beta\n3,gamma\n")
        .file(
            "clinics/a/U.sql",
            "-- @depend ./T\n-- @key id\nSELECT id, upper(name) AS name FROM T;\n",
        )
        .file("clinics/a/V.py", &v_py("n"))
        .file(
            "clinics/b/W.sql",
            "SELECT 1 AS id, 'one' AS label UNION ALL SELECT 2, 'two';\n",
        );
    r.commit_all("first");
    r
}

/// A Python node counting U's rows under the column `header`.
fn v_py(header: &str) -> String {
    format!(
        "# @depend ./U\nimport csv, os\n\
         rows = list(csv.reader(open(os.environ['SLUICE_INPUT_U'])))\n\
         with open(os.environ['SLUICE_OUTPUT'], 'w', newline='') as f:\n\
         \x20   w = csv.writer(f, lineterminator='\\n')\n\
         \x20   w.writerow(['{header}'])\n\
         \x20   w.writerow([len(rows) - 1])\n"
    )
}

/// A second checkout: a clone of `a` in its own directory.
fn clone(a: &Repo) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    git_in(
        dir.path(),
        &["clone", "-q", a.path().to_str().unwrap(), "checkout"],
    );
    let path = dir.path().join("checkout");
    (dir, path)
}

/// `pipeline/node` -> (status, output digest hex) of a `run --json`.
fn nodes(run: &Run) -> BTreeMap<String, (String, String)> {
    let v = run.json();
    let mut out = BTreeMap::new();
    for r in v["runs"].as_array().expect("runs") {
        let p = r["pipeline"].as_str().unwrap();
        for n in r["nodes"].as_array().expect("nodes") {
            out.insert(
                format!("{p}/{}", n["name"].as_str().unwrap()),
                (
                    n["status"].as_str().unwrap_or("").to_string(),
                    n["output"]
                        .as_str()
                        .unwrap_or("")
                        .trim_start_matches("sha256:")
                        .to_string(),
                ),
            );
        }
    }
    out
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The state dir holds no blob outside its read cache, and every file of
/// the cache is a verified copy (its bytes hash to its name).
fn only_a_read_cache(state_dir: &Path) -> usize {
    let mut cached = 0;
    for rel in files_under(state_dir) {
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        let is_digest = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if rel.starts_with("blob-cache") {
            if is_digest {
                let bytes = std::fs::read(state_dir.join(&rel)).unwrap();
                assert_eq!(sha256_hex(&bytes), name, "{}", rel.display());
                cached += 1;
            }
        } else {
            assert!(
                !is_digest && !rel.starts_with("blobs"),
                "a blob outside the read cache: {}",
                rel.display()
            );
        }
    }
    cached
}

#[test]
fn two_checkouts_share_one_postgresql_and_one_bucket_byte_for_byte() {
    let shared = Shared::new("team");
    let a = team_repo();
    let (_b_dir, b) = clone(&a);
    let states = tempfile::tempdir().unwrap();
    let (sa, sb) = (states.path().join("a"), states.path().join("b"));

    // A computes everything and promotes it.
    let first = shared.sluice(a.path(), &sa, &["run", "--json", "--promote"]);
    first.success();
    let computed = nodes(&first);
    assert_eq!(computed.len(), 4, "{computed:?}");
    assert!(
        computed.values().all(|(s, _)| s == "computed"),
        "{computed:?}"
    );
    // Every table is in the bucket, under its digest.
    let keys = shared.keys();
    for (node, (_, digest)) in &computed {
        assert!(
            keys.contains(&format!("sha256/{digest}")),
            "{node}: {digest} not in {keys:?}"
        );
    }

    // B: another clone, another state dir, the same database and bucket.
    let plan = shared.sluice(&b, &sb, &["plan", "--json"]);
    plan.success();
    assert!(
        !plan.stdout.contains("\"new\""),
        "B sees A's production: {}",
        plan.stdout
    );
    let second = shared.sluice(&b, &sb, &["run", "--json"]);
    second.success();
    let hits = nodes(&second);
    assert_eq!(
        hits.keys().collect::<Vec<_>>(),
        computed.keys().collect::<Vec<_>>()
    );
    for (node, (status, digest)) in &hits {
        assert_eq!(status, "cached", "{node} is a cache hit on B");
        assert_eq!(digest, &computed[node].1, "{node}");
    }
    // B's run wrote no table: only its run's manifest is new.
    let after = shared.keys();
    assert!(keys.iter().all(|k| after.contains(k)));

    // Byte for byte from either checkout, and the bytes are the blob.
    for (node, (_, digest)) in &computed {
        let from_a = shared.sluice(a.path(), &sa, &["cat", node]);
        let from_b = shared.sluice(&b, &sb, &["cat", node]);
        from_a.success();
        from_b.success();
        assert!(!from_a.stdout.is_empty(), "{node}");
        assert_eq!(from_a.stdout, from_b.stdout, "{node}");
        assert_eq!(&sha256_hex(from_b.stdout.as_bytes()), digest, "{node}");
    }
    // What the tables hold, to be sure the bytes are the computed ones.
    let v = shared.sluice(&b, &sb, &["cat", "clinics/a/V"]);
    assert_eq!(v.stdout, "n\n3\n");

    // B keeps no blob of its own: what it read is in its verified cache.
    assert!(sb.join("state.db").is_file(), "B keeps its own source memo");
    let cached = only_a_read_cache(&sb);
    assert!(cached >= computed.len(), "B's read cache: {cached} blobs");
    only_a_read_cache(&sa);

    // What the shared state costs for this run (printed for the docs).
    let rows = |t: &str| shared.count(&format!("SELECT count(*) FROM sluice.{t}"));
    assert_eq!(rows("action_cache"), 4);
    assert_eq!(rows("refs"), 2, "both pipelines promoted");
    let (objects, bytes) = shared.bucket_size();
    eprintln!(
        "shared store after 2 runs of 4 nodes: PostgreSQL schema sluice {} bytes \
         (action_cache {} rows, runs {} rows), bucket {objects} objects, {bytes} bytes",
        shared.count(
            "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'sluice' AND c.relkind = 'r'"
        ),
        rows("action_cache"),
        rows("runs"),
    );
}

#[test]
fn gc_on_the_shared_store_keeps_production_and_deletes_a_superseded_table() {
    let shared = Shared::new("teamgc");
    let a = team_repo();
    let states = tempfile::tempdir().unwrap();
    let (sa, sb) = (states.path().join("a"), states.path().join("b"));

    // Production v1, then v2 with V changed: V's first table is needed by
    // the first, superseded run only.
    let v1 = nodes(&shared.sluice(a.path(), &sa, &["run", "--json", "--promote"]));
    a.file("clinics/a/V.py", &v_py("rows"));
    a.commit_all("rename V's column");
    let v2 = nodes(&shared.sluice(a.path(), &sa, &["run", "--json", "--promote"]));
    let old_v = &v1["clinics/a/V"].1;
    let new_v = &v2["clinics/a/V"].1;
    assert_ne!(old_v, new_v);
    assert_eq!(
        v1["clinics/a/U"],
        (String::from("computed"), v2["clinics/a/U"].1.clone())
    );
    assert_eq!(v2["clinics/a/U"].0, "cached");
    assert!(shared.keys().contains(&format!("sha256/{old_v}")));

    // B, a clone of v2, reads production through the cache.
    let (_b_dir, b) = clone(&a);
    let hits = nodes(&shared.sluice(&b, &sb, &["run", "--json"]));
    assert!(hits.values().all(|(s, _)| s == "cached"), "{hits:?}");
    let before: BTreeMap<String, String> = v2
        .keys()
        .map(|n| {
            let out = shared.sluice(a.path(), &sa, &["cat", n]);
            out.success();
            (n.clone(), out.stdout)
        })
        .collect();

    let gc = shared.sluice(
        a.path(),
        &sa,
        &["gc", "--grace", "0s", "--keep-runs", "1", "--json"],
    );
    gc.success();
    let report = gc.json();
    assert!(
        report["deleted"]["blobs"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let keys = shared.keys();
    assert!(
        !keys.contains(&format!("sha256/{old_v}")),
        "the superseded table is deleted from the bucket: {report}"
    );
    for (node, (_, digest)) in &v2 {
        assert!(keys.contains(&format!("sha256/{digest}")), "{node} kept");
    }

    // Production reads the same from both checkouts, B without its cache.
    std::fs::remove_dir_all(sb.join("blob-cache")).unwrap();
    for (node, bytes) in &before {
        let from_a = shared.sluice(a.path(), &sa, &["cat", node]);
        let from_b = shared.sluice(&b, &sb, &["cat", node]);
        from_a.success();
        from_b.success();
        assert_eq!(&from_a.stdout, bytes, "{node} after gc, from A");
        assert_eq!(&from_b.stdout, bytes, "{node} after gc, from B");
    }
    // The cache entry of the deleted table went with it: going back to
    // v1 computes V again (not a hit on a table that is gone).
    a.file("clinics/a/V.py", &v_py("n"));
    a.commit_all("back to n");
    let back = nodes(&shared.sluice(a.path(), &sa, &["run", "--json"]));
    assert_eq!(back["clinics/a/V"], ("computed".to_string(), old_v.clone()));
    assert_eq!(back["clinics/a/U"].0, "cached");
    let v = shared.sluice(a.path(), &sa, &["cat", "clinics/a/V"]);
    assert_eq!(v.stdout, "n\n3\n");
}

#[test]
fn fsck_on_the_shared_store_finds_and_repairs_a_tampered_table() {
    let shared = Shared::new("teamfsck");
    let a = team_repo();
    let states = tempfile::tempdir().unwrap();
    let (sa, sb) = (states.path().join("a"), states.path().join("b"));
    let first = nodes(&shared.sluice(a.path(), &sa, &["run", "--json", "--promote"]));
    let w = first["clinics/b/W"].1.clone();
    let w_bytes = shared.sluice(a.path(), &sa, &["cat", "clinics/b/W"]).stdout;

    let clean = shared.sluice(a.path(), &sa, &["fsck"]);
    clean.success();
    assert!(
        clean.stdout.contains(&format!(
            "shared stores: blobs in {}, state in PostgreSQL",
            shared.blobs
        )),
        "{}",
        clean.stdout
    );
    let objects = shared.keys().len();
    assert!(
        clean.stdout.contains(&format!("{objects} blobs checked")),
        "{}",
        clean.stdout
    );
    assert!(clean.stdout.contains("clean"), "{}", clean.stdout);

    // Someone with write access to the bucket overwrites W's table.
    moto().overwrite(
        &shared.bucket,
        &format!("team/sha256/{w}"),
        "id,label\n1,tampered-canary\n",
    );

    let found = shared.sluice(a.path(), &sa, &["fsck", "--json"]);
    assert_eq!(found.code, 1, "{}", found.stdout);
    let report = found.json();
    assert_eq!(report["damaged_blobs"]["found"], 1, "{report}");
    assert_eq!(report["cache_entries"]["found"], 1, "{report}");
    assert_eq!(report["refs"]["found"], 0, "{report}");
    let problems = report["problems"].to_string();
    assert!(
        problems.contains(&format!("blob sha256:{w}")) || problems.contains(&w),
        "{problems}"
    );
    // Digests and names only: never the bytes.
    assert!(!found.stdout.contains("canary"), "{}", found.stdout);

    let repaired = shared.sluice(a.path(), &sa, &["fsck", "--repair"]);
    repaired.success();
    assert!(repaired.stdout.contains("(deleted)"), "{}", repaired.stdout);
    assert!(!shared.keys().contains(&format!("sha256/{w}")));
    shared.sluice(a.path(), &sa, &["fsck"]).success();

    // The next run on another machine recomputes W to the same bytes.
    let (_b_dir, b) = clone(&a);
    let again = nodes(&shared.sluice(&b, &sb, &["run", "--json"]));
    assert_eq!(again["clinics/b/W"], ("computed".to_string(), w.clone()));
    assert_eq!(again["clinics/a/U"].0, "cached");
    assert_eq!(
        shared.sluice(&b, &sb, &["cat", "clinics/b/W"]).stdout,
        w_bytes
    );
}
