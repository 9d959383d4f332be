//! The server hooks, driven by real `git push`es to a bare repository with
//! `sluice hook install`ed hooks, and the daemon reporting as git notes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::util::Repo;

use crate::daemon::SECRET;

/// Pushes HEAD to `main` of `remote`: (accepted, what the pusher saw).
fn push(work: &Repo, remote: &Path) -> (bool, String) {
    let out = Command::new("git")
        .args(["push", remote.to_str().unwrap(), "HEAD:refs/heads/main"])
        .current_dir(work.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bare_repo(dir: &Path) -> PathBuf {
    let bare = dir.join("pipelines.git");
    let ok = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    bare
}

fn git_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn sluice_hook(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("hook")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon serving `bare` as a plain git repository.
fn git_daemon(bare: &Path, data: &Path) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("sluice-server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"http://sluice.test\"\nstate_dir = \"{}\"\ndata_root = \"{}\"\nworkers = 1\n\
             [[repos]]\nforge = \"git\"\nname = \"pipelines\"\nclone_url = \"{}\"\n\
             production_branch = \"main\"\nsecret_env = \"SLUICE_TEST_SECRET\"\n",
            state.display(),
            data.display(),
            bare.display(),
        ),
    )
    .unwrap();
    Daemon::spawn(dir, state, config)
}

#[test]
fn installed_hooks_guard_pushes_chain_the_old_hook_and_report_as_notes() {
    let server = tempfile::tempdir().unwrap();
    let bare = bare_repo(server.path());
    // A hook the admin already had: it must keep running.
    let ran = server.path().join("old-hook-ran");
    let old_hook = format!("#!/bin/sh\ncat > /dev/null\ntouch {}\n", ran.display());
    std::fs::write(bare.join("hooks/pre-receive"), &old_hook).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bare.join("hooks/pre-receive"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let git_dir = bare.to_str().unwrap();
    let out = sluice_hook(&["install", "--git-dir", git_dir]);
    assert!(out.contains("kept"), "{out}");
    let installed = std::fs::read_to_string(bare.join("hooks/pre-receive")).unwrap();
    let out = sluice_hook(&["install", "--git-dir", git_dir]);
    assert!(out.contains("already installed"), "{out}");
    assert_eq!(
        std::fs::read_to_string(bare.join("hooks/pre-receive")).unwrap(),
        installed,
        "installing twice changes nothing"
    );

    // The daemon, and post-receive pointed at it.
    let data = tempfile::tempdir().unwrap();
    const PHI: &str = "ZZNOTEPHI93";
    std::fs::write(
        data.path().join("patients.csv"),
        format!("id,name\n1,{PHI}\n2,Bob\n3,Cy\n"),
    )
    .unwrap();
    let secret_file = server.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let d = git_daemon(&bare, data.path());
    for (k, v) in [
        ("sluice.server", d.url.as_str()),
        ("sluice.secretFile", secret_file.to_str().unwrap()),
        ("sluice.repo", "pipelines"),
    ] {
        assert!(git_in(&bare, &["config", k, v]).0);
    }

    // A good push is accepted; the old hook ran; a note appears.
    let work = Repo::new();
    work.file(
        "clinics/a/Patients.sql",
        "-- @source data://patients.csv\n-- @key id\nSELECT id, name FROM patients;\n",
    )
    .file(
        "clinics/a/Leak.py",
        "# @depend ./Patients\nimport os, sys\nprint(open(os.environ['SLUICE_INPUT_Patients']).read())\nsys.exit(1)\n",
    );
    let sha = work.commit_all("good");
    let (ok, err) = push(&work, &bare);
    assert!(ok, "a valid push is accepted: {err}");
    assert!(ran.exists(), "the hook that was there before still runs");
    assert!(err.contains("remote: sluice: running; report at"), "{err}");
    let start = Instant::now();
    let note = loop {
        let (found, text) = git_in(&bare, &["notes", "--ref=sluice", "show", &sha]);
        if found {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no note; daemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(note.contains("Patients") && note.contains("Leak"), "{note}");
    assert!(note.contains("3"), "row counts: {note}");
    assert!(note.contains("http://sluice.test/runs/r_"), "{note}");
    assert!(!note.contains(PHI), "PHI in the note:\n{note}");
    // What an analyst runs to see it.
    work.git(&[
        "fetch",
        "-q",
        bare.to_str().unwrap(),
        "refs/notes/sluice:refs/notes/sluice",
    ]);
    let log = work.git(&["log", "--notes=sluice", "-1"]);
    assert!(log.contains("Notes (sluice):"), "{log}");

    // A push adding a cycle is refused, naming the file and line.
    work.file("clinics/a/Loop.sql", "-- @depend ./Loop\nSELECT 1;\n");
    work.commit_all("bad");
    let (ok, err) = push(&work, &bare);
    assert!(!ok, "an invalid push is refused");
    assert!(
        err.contains("remote: clinics/a/Loop.sql:1: dependency cycle: Loop -> Loop"),
        "{err}"
    );
    assert_eq!(git_in(&bare, &["rev-parse", "main"]).1.trim(), sha);

    // With the daemon down, a push is accepted with a warning. (The bad
    // commit is dropped: every new commit of a push is checked.)
    drop(d);
    work.git(&["reset", "-q", "--hard", "HEAD~1"]);
    work.file(
        "clinics/a/Count.sql",
        "-- @depend ./Patients\nSELECT count(*) AS n FROM Patients;\n",
    );
    let sha2 = work.commit_all("more");
    let (ok, err) = push(&work, &bare);
    assert!(ok, "{err}");
    assert!(err.contains("did not take the push"), "{err}");
    assert_eq!(git_in(&bare, &["rev-parse", "main"]).1.trim(), sha2);

    // Deleting a branch and pushing a tag are allowed.
    work.git(&["tag", "v1"]);
    work.git(&[
        "push",
        "-q",
        bare.to_str().unwrap(),
        "v1",
        "HEAD:refs/heads/tmp",
    ]);
    work.git(&["push", "-q", bare.to_str().unwrap(), ":refs/heads/tmp"]);

    // Uninstall restores the admin's hook.
    let out = sluice_hook(&["uninstall", "--git-dir", git_dir]);
    assert!(out.contains("restored"), "{out}");
    assert_eq!(
        std::fs::read_to_string(bare.join("hooks/pre-receive")).unwrap(),
        old_hook
    );
    assert!(!bare.join("hooks/post-receive").exists());
}

#[test]
fn the_shipped_hook_scripts_call_sluice() {
    let server = tempfile::tempdir().unwrap();
    let bare = bare_repo(server.path());
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/pre-receive"),
        bare.join("hooks/pre-receive"),
    )
    .unwrap();
    let work = crate::check::two_clinics();
    work.commit_all("good");
    let run = |w: &Repo| {
        let out = Command::new("git")
            .args(["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"])
            .current_dir(w.path())
            .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&work);
    assert!(ok, "{err}");
    work.file("clinics/a/Bad.sql", "-- @depnd ./Patient\nSELECT 1;\n");
    work.commit_all("bad");
    let (ok, err) = run(&work);
    assert!(!ok);
    assert!(
        err.contains("clinics/a/Bad.sql:1: unknown directive @depnd (did you mean @depend?)"),
        "{err}"
    );
    // Without a sluice to run, the push is refused and the pusher told why.
    let out = Command::new("git")
        .args(["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"])
        .current_dir(work.path())
        .env("SLUICE_BIN", server.path().join("no-sluice"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sluice: could not run sluice:") && err.contains("the push is refused"),
        "{err}"
    );
}

/// A bare repository with sluice's hooks installed, and a work repository
/// pushing to it.
fn guarded() -> (tempfile::TempDir, PathBuf, Repo) {
    let server = tempfile::tempdir().unwrap();
    let bare = bare_repo(server.path());
    sluice_hook(&["install", "--git-dir", bare.to_str().unwrap()]);
    let work = Repo::new();
    work.file("clinics/a/A.sql", "SELECT 1 AS x;\n");
    work.commit_all("first");
    let (ok, err) = push(&work, &bare);
    assert!(ok, "{err}");
    (server, bare, work)
}

/// Pushes HEAD to `refspec_dst` of `remote` with extra environment.
fn push_to(work: &Repo, remote: &Path, dst: &str, env: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = Command::new("git");
    cmd.args(["push", remote.to_str().unwrap(), &format!("HEAD:{dst}")])
        .current_dir(work.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_new_commit_of_a_push_is_checked_and_the_broken_one_named() {
    let (_server, bare, work) = guarded();
    let before = git_in(&bare, &["rev-parse", "main"]).1;
    let mut shas = Vec::new();
    for i in 1..=5 {
        if i == 3 {
            work.file(
                "clinics/a/Mid.sql",
                "-- @depend ./Missing\nSELECT 1 AS x;\n",
            );
        } else if i == 4 {
            work.remove("clinics/a/Mid.sql");
        }
        work.file(&format!("clinics/a/N{i}.sql"), "SELECT 1 AS x;\n");
        shas.push(work.commit_all(&format!("commit {i}")));
    }
    let (ok, err) = push(&work, &bare);
    assert!(!ok, "a push whose middle commit is broken is refused");
    let mid = &shas[2][..12];
    assert!(
        err.contains(&format!(
            "sluice: push of refs/heads/main refused: commit {mid} (commit 3) does not check:"
        )),
        "{err}"
    );
    assert!(err.contains("clinics/a/Mid.sql:1:"), "{err}");
    assert_eq!(err.matches("does not check").count(), 1, "{err}");
    assert_eq!(git_in(&bare, &["rev-parse", "main"]).1, before);

    // Review refs are checked too; tags are not.
    let (ok, err) = push_to(&work, &bare, "refs/for/main", &[]);
    assert!(!ok && err.contains("refs/for/main refused"), "{err}");
    let (ok, err) = push_to(&work, &bare, "refs/tags/v1", &[]);
    assert!(ok, "{err}");
}

#[test]
fn a_branch_that_had_sluice_toml_keeps_needing_one() {
    let (_server, bare, work) = guarded();
    work.remove("sluice.toml");
    work.commit_all("drop the config");
    let (ok, err) = push(&work, &bare);
    assert!(!ok, "deleting sluice.toml is refused");
    assert!(
        err.contains("sluice.toml:1: the branch had a sluice.toml before"),
        "{err}"
    );

    // A sluice.toml that is a gitlink is no better.
    let head = work.git(&["rev-parse", "HEAD"]);
    work.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{head},sluice.toml"),
    ]);
    work.git(&["commit", "-q", "-m", "gitlink config"]);
    work.git(&["reset", "-q", "--soft", "HEAD~2"]);
    work.git(&["commit", "-q", "-m", "gitlink config"]);
    let (ok, err) = push(&work, &bare);
    assert!(!ok, "{err}");
    assert!(err.contains("gitlink"), "{err}");

    // A repository that never had one is not sluice's business.
    let other = Repo::empty();
    other.file("README", "not pipelines\n");
    other.commit_all("other");
    let (ok, err) = push_to(&other, &bare, "refs/heads/docs", &[]);
    assert!(ok, "{err}");
}

#[test]
fn a_check_past_its_time_refuses_the_push_and_leaves_nothing_behind() {
    let (server, bare, work) = guarded();
    assert!(git_in(&bare, &["config", "sluice.hookTimeout", "0.000001"]).0);
    for i in 0..300 {
        work.file(&format!("clinics/a/T{i}.sql"), "SELECT 1 AS x;\n");
    }
    work.commit_all("many");
    let tmp = server.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let (ok, err) = push_to(&work, &bare, "refs/heads/main", &[("TMPDIR", &tmp)]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("took longer than 0.000001 s (git config sluice.hookTimeout, default 30 s)"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let incoming = std::fs::read_dir(bare.join("objects"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
        .count();
    assert_eq!(incoming, 0, "the quarantine is gone");

    // Within its time, the same push is accepted.
    assert!(git_in(&bare, &["config", "sluice.hookTimeout", "30"]).0);
    let (ok, err) = push(&work, &bare);
    assert!(ok, "{err}");
}

#[test]
fn a_hook_that_cannot_run_sluice_says_so() {
    let server = tempfile::tempdir().unwrap();
    let bare = bare_repo(server.path());
    let gone = server.path().join("no-such-sluice");
    sluice_hook(&[
        "install",
        "--git-dir",
        bare.to_str().unwrap(),
        "--sluice",
        gone.to_str().unwrap(),
    ]);
    let work = Repo::new();
    work.file("clinics/a/A.sql", "SELECT 1 AS x;\n");
    work.commit_all("first");
    let (ok, err) = push(&work, &bare);
    assert!(!ok);
    assert!(
        err.contains("sluice: could not run sluice:") && err.contains("the push is refused"),
        "{err}"
    );
    assert!(!err.contains("do not check"), "{err}");
}

#[test]
fn a_push_of_more_than_100_commits_checks_the_newest_100_and_says_so() {
    let (_server, bare, work) = guarded();
    let mut head = work.git(&["rev-parse", "HEAD"]);
    let tree = work.git(&["rev-parse", "HEAD^{tree}"]);
    for i in 0..101 {
        head = work.git(&["commit-tree", &tree, "-p", &head, "-m", &format!("c{i}")]);
    }
    work.git(&["reset", "-q", "--hard", &head]);
    let (ok, err) = push(&work, &bare);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "sluice: refs/heads/main: more than 100 new commits; only the 100 newest are checked"
        ),
        "{err}"
    );
}
