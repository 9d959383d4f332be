//! Trust in what a repository can make sluice do while it is only being
//! read: bounded include and mount chains, no symlink out of the
//! repository for the data root or the state, no repository program run by
//! `plan` or `show`, and git's reading of an ambiguous ref name.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::{Duration, Instant};

use crate::util::Repo;

/// `clinics/a/A.sql` inheriting through `lib/f1.sql` … `lib/f{depth}.sql`.
fn include_chain(depth: usize) -> Repo {
    let r = Repo::new();
    r.file("clinics/a/A.sql", "-- @include /lib/f1.sql\n");
    for i in 1..depth {
        r.file(
            &format!("lib/f{i}.sql"),
            &format!("-- @include ./f{}.sql\n", i + 1),
        );
    }
    r.file(&format!("lib/f{depth}.sql"), "SELECT 1 AS deepest;\n");
    r
}

#[test]
fn include_chain_7000_deep_is_refused_in_under_a_second() {
    let r = include_chain(7000);
    let start = Instant::now();
    let run = r.sluice(&["check"]);
    let took = start.elapsed();
    run.failure().stderr_has(
        "lib/f64.sql:1: include chain deeper than 64 files (clinics/a/A.sql -> lib/f1.sql -> …",
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn include_chain_60_deep_still_resolves() {
    let r = include_chain(60);
    r.sluice(&["check"]).success();
    r.sluice(&["show", "clinics/a/A"])
        .success()
        .stdout_has("inherits    lib/f60.sql")
        .stdout_has("  | SELECT 1 AS deepest;");
}

#[test]
fn mount_chain_2000_deep_is_refused_in_under_a_second() {
    let r = Repo::new();
    r.file("clinics/a/m.sql", "-- @include /lib/g0\n");
    for i in 0..2000 {
        r.file(
            &format!("lib/g{i}/N{i}.sql"),
            &format!("SELECT {i} AS n;\n"),
        );
        r.file(
            &format!("lib/g{i}/m.sql"),
            &format!("-- @include /lib/g{}\n", i + 1),
        );
    }
    let start = Instant::now();
    let run = r.sluice(&["check"]);
    let took = start.elapsed();
    run.failure().stderr_has(
        "lib/g63/m.sql:1: mount chain deeper than 64 directories (clinics/a -> lib/g0 -> …",
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// A repository whose node reads `data://secret.csv`.
fn reads_secret() -> Repo {
    let r = Repo::new();
    r.file(
        "clinics/a/A.sql",
        "-- @source data://secret.csv\nSELECT * FROM secret;\n",
    );
    r
}

#[test]
fn data_root_symlink_out_of_the_repository_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.csv"), "id\nCANARY-42\n").unwrap();
    let r = reads_secret();
    symlink(outside.path(), r.path().join("data")).unwrap();
    for cmd in ["check", "plan", "run"] {
        let run = r.sluice(&[cmd]);
        assert_ne!(run.code, 0, "{cmd}: {}{}", run.stdout, run.stderr);
        run.stderr_has("sluice.toml:6: [data] root `data` resolves to")
            .stderr_has("outside the repository");
        assert!(!run.stdout.contains("CANARY"), "{cmd}: {}", run.stdout);
    }
    // The same directory given by the administrator is used as given.
    let data = outside.path().to_str().unwrap();
    r.sluice(&["--data", data, "run"]).success();
}

#[test]
fn data_root_exposing_the_state_is_refused() {
    let r = reads_secret();
    r.file(
        "sluice.toml",
        &crate::util::CONFIG.replace("root = \"data\"", "root = \".\""),
    );
    r.file("secret.csv", "id\n1\n");
    r.sluice(&["check"])
        .failure()
        .stderr_has("sluice.toml:6: [data] root `.` would expose .git");
}

#[test]
fn dot_sluice_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let r = Repo::new();
    r.file("clinics/a/A.sql", "SELECT 1 AS id;\n");
    symlink(outside.path(), r.path().join(".sluice")).unwrap();
    let run = r.sluice(&["run"]);
    assert_ne!(run.code, 0, "{}{}", run.stdout, run.stderr);
    run.stderr_has("refusing the state directory")
        .stderr_has(".sluice is a symlink");
    // `plan` only reads the state, and refuses it as well.
    assert_ne!(r.sluice(&["plan"]).code, 0);
    let left: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert!(left.is_empty(), "state written through the link: {left:?}");
    // A link below it (`.sluice/blobs`, as a branch could commit) too.
    std::fs::remove_file(r.path().join(".sluice")).unwrap();
    std::fs::create_dir(r.path().join(".sluice")).unwrap();
    symlink(outside.path(), r.path().join(".sluice/blobs")).unwrap();
    r.sluice(&["run"])
        .stderr_has("refusing the state directory")
        .stderr_has("blobs is a symlink");
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    // A state directory chosen by the administrator is not second-guessed.
    let state = tempfile::tempdir().unwrap();
    r.sluice(&["--state-dir", state.path().to_str().unwrap(), "run"])
        .success();
}

/// The `show` line with the node's definition hash.
fn definition(r: &Repo) -> String {
    let run = r.sluice(&["show", "clinics/a/A"]);
    run.success();
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("definition  "))
        .unwrap_or_else(|| panic!("no definition:\n{}", run.stdout))
        .to_string()
}

#[test]
fn plan_and_show_run_no_repository_program() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("ran");
    let r = Repo::new();
    let evil = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    r.file("tools/evil.sh", &evil)
        .file("action/evil", "# @command tools/evil.sh {script}\n")
        .file(
            "clinics/a/A.sh",
            "# @include /action/evil\necho id > \"$SLUICE_OUTPUT\"\n",
        );
    let script = r.path().join("tools/evil.sh");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Planning in the repository's own directory, where `tools/evil.sh`
    // would resolve.
    r.sluice(&["check"]).success();
    r.sluice(&["plan", "--json"]).success();
    let before = definition(&r);
    assert!(!marker.exists(), "plan or show ran tools/evil.sh");
    // The program's bytes are its identity: editing it is a change.
    r.file("tools/evil.sh", &format!("{evil}# edited\n"));
    let after = definition(&r);
    assert_ne!(before, after);
    assert!(!marker.exists(), "show ran tools/evil.sh");
}

#[test]
fn a_branch_and_a_tag_named_alike_are_read_as_git_reads_them() {
    let r = Repo::new();
    r.file("clinics/a/A.sql", "SELECT 'feature' AS v;\n");
    let feature = r.commit_all("feature");
    r.git(&["tag", "main"]);
    r.file("clinics/a/A.sql", "SELECT 'main' AS v;\n");
    let main = r.commit_all("main");
    assert_ne!(feature, main);
    // git itself reads the tag, with a warning.
    assert_eq!(r.git(&["rev-parse", "main"]), feature);

    let g = sluice::git::GitVfs::open(r.path(), "main").unwrap();
    assert_eq!(g.commit_id(), feature);
    let warning = g.ambiguity().expect("an ambiguity warning");
    assert!(
        warning.starts_with("warning: refname 'main' is ambiguous"),
        "{warning}"
    );
    assert!(warning.contains("refs/tags/main"), "{warning}");
    // The same after a revision suffix, and not for an unambiguous name.
    let g = sluice::git::GitVfs::open(r.path(), "main~0").unwrap();
    assert_eq!(
        (g.commit_id(), g.ambiguity().is_some()),
        (feature.clone(), true)
    );
    assert!(
        sluice::git::GitVfs::open(r.path(), "HEAD")
            .unwrap()
            .ambiguity()
            .is_none()
    );

    // The workspace carries the warning for the front end to print.
    use sluice::engine::workspace::{Settings, Source, Workspace};
    let ws = Workspace::open(
        r.path(),
        &Source::Commit("main".into()),
        Settings::default(),
    )
    .unwrap();
    assert_eq!(ws.warnings, vec![warning]);

    // Promotion resolves the branch only.
    assert_eq!(sluice::git::resolve_branch(r.path(), "main"), Some(main));
    assert_eq!(sluice::git::resolve_branch(r.path(), "nope"), None);
}
