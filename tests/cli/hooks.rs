//! The server hooks, driven by real `git push`es to a bare repository.

use std::process::Command;

use crate::util::Repo;

fn push(work: &Repo, remote: &std::path::Path) -> (bool, String) {
    let out = Command::new("git")
        .args([
            "push",
            "-q",
            remote.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ])
        .current_dir(work.path())
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pre_receive_rejects_pipelines_that_do_not_check() {
    let server = tempfile::tempdir().unwrap();
    let bare = server.path().join("pipelines.git");
    let init = Command::new("git")
        .args(["init", "-q", "--bare", bare.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(init.success());
    let hook = bare.join("hooks/pre-receive");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/pre-receive"),
        &hook,
    )
    .unwrap();

    let work = crate::check::two_clinics();
    work.commit_all("good");
    let (ok, err) = push(&work, &bare);
    assert!(ok, "a valid push is accepted: {err}");

    work.file("clinics/a/Bad.sql", "-- @depnd ./Patient\nSELECT 1;\n");
    work.file("clinics/a/Loop.sql", "-- @depend ./Loop\nSELECT 1;\n");
    work.commit_all("bad");
    let (ok, err) = push(&work, &bare);
    assert!(!ok, "an invalid push is rejected");
    assert!(
        err.contains("clinics/a/Bad.sql:1: unknown directive @depnd (did you mean @depend?)"),
        "{err}"
    );
    assert!(
        err.contains("clinics/a/Loop.sql:1: dependency cycle: Loop -> Loop"),
        "{err}"
    );
    let head = Command::new("git")
        .args(["rev-parse", "main"])
        .current_dir(&bare)
        .output()
        .unwrap();
    let good = work.git(&["rev-parse", "HEAD~1"]);
    assert_eq!(
        String::from_utf8_lossy(&head.stdout).trim(),
        good,
        "the server kept the good commit"
    );
}
