//! Keeps the benchmark script working: `bench/run --quick` on a tiny N with
//! this build's binary. The figures are not judged here.

#[test]
fn bench_run_quick_smoke() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("bench/run"))
        .args([
            "--quick",
            "--no-build",
            "--bin",
            env!("CARGO_BIN_EXE_sluice"),
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench/run --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("targets:"), "{stdout}");
    assert!(stdout.contains("no-op re-run"), "{stdout}");
}
