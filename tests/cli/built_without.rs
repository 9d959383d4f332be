//! A build without the cargo feature `team` (the default): every way of
//! naming a shared store (`--blobs s3://…`, `--state postgresql://…`,
//! their environment variables, the daemon config's `blobs` and `state`,
//! `serve --worker-only`) is refused at once with how to build them in,
//! exit 2 as for any other usage error, and nothing is created.

use std::path::Path;
use std::process::Command;

use crate::util::{Repo, Run};

/// Runs sluice in `repo` with `state_dir` and the given environment.
fn sluice(repo: &Path, state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--repo")
        .arg(repo)
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .current_dir(repo)
        .env_remove("SLUICE_STATE_DIR")
        .env_remove("SLUICE_DATA_ROOT")
        .env_remove("SLUICE_BLOBS")
        .env_remove("SLUICE_STATE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

#[track_caller]
fn refused(run: &Run, setting: &str) {
    assert_eq!(
        run.code, 2,
        "expected exit 2\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run.stderr_has(setting)
        .stderr_has("this sluice was built without the shared stores")
        .stderr_has("cargo install --path . --features team")
        .stderr_has("docs/team.md")
        .stderr_lacks("panicked");
    assert_eq!(run.stderr.lines().count(), 1, "one line:\n{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn shared_stores_without_the_team_feature_are_refused_with_how_to_build_them() {
    let repo = Repo::example();
    let state = repo.path().join("state");
    let pg = "postgresql://sluice:hunter2@127.0.0.1/sluice";
    for command in [&["run"][..], &["plan"], &["fsck"], &["gc", "--dry-run"]] {
        let blobs = [&["--blobs", "s3://team-bucket/d"][..], command].concat();
        refused(&sluice(repo.path(), &state, &blobs, &[]), "--blobs");
        let env = [("SLUICE_BLOBS", "s3://team-bucket")];
        refused(&sluice(repo.path(), &state, command, &env), "SLUICE_BLOBS");
        let run = sluice(
            repo.path(),
            &state,
            &[&["--state", pg][..], command].concat(),
            &[],
        );
        refused(&run, "--state");
        // The URL's password is not echoed.
        run.stderr_lacks("hunter2");
        let env = [("SLUICE_STATE", pg)];
        refused(&sluice(repo.path(), &state, command, &env), "--state");
    }
    assert!(!state.exists(), "the state dir was created");
    assert!(!repo.path().join(".sluice").exists());

    // The daemon: its config's `state` and `blobs` at their line, and
    // --worker-only before anything is read.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice-server.toml");
    let daemon_state = dir.path().join("s");
    let base = format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"http://s.test\"\nstate_dir = \"{}\"\n\
         data_root = \"{}\"\nworkers = 1\n",
        daemon_state.display(),
        dir.path().display()
    );
    let serve = |args: &[&str]| {
        Run::from(
            Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(args)
                .env_remove("SLUICE_STATE_DIR")
                .output()
                .unwrap(),
        )
    };
    let cfg = config.to_str().unwrap();
    for (line, key) in [
        (format!("state = \"{pg}\""), "sluice-server.toml:6: state"),
        (
            "blobs = \"s3://team-bucket/d\"".to_string(),
            "sluice-server.toml:6: blobs",
        ),
    ] {
        std::fs::write(&config, format!("{base}{line}\n")).unwrap();
        let run = serve(&["serve", "--config", cfg]);
        refused(&run, key);
        run.stderr_lacks("hunter2");
        refused(&serve(&["gc", "--server-config", cfg, "--dry-run"]), key);
    }
    std::fs::write(&config, &base).unwrap();
    refused(
        &serve(&["serve", "--config", cfg, "--worker-only"]),
        "--worker-only",
    );
    assert!(!daemon_state.exists(), "the daemon's state dir was created");
}
