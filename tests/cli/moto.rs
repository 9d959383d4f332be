//! One S3 API server per test binary: moto's (`moto[server]` on PyPI), on
//! loopback, started at first use. It goes away with the tests: a watchdog
//! thread in the server exits once its parent, the test binary, is gone.
//! Each test makes its own bucket (moto takes any credentials).
//!
//! Shared by the end-to-end tests and the unit tests of the S3 blob store
//! (included there with `#[path]`), so it uses nothing from the crate.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

/// The watchdog, then moto's own entry point on the port given.
const SCRIPT: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

/// How to get moto where it is missing.
pub const INSTALL: &str = "moto's S3 server is not installed, and the S3 tests need it: \
     pip install 'moto[server]' (add --break-system-packages if pip refuses on Debian); \
     .ci/run does this";

static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();

/// The server, started on first use. Panics (failing the test, never
/// skipping it) when moto is not installed or does not come up.
pub fn moto() -> &'static Moto {
    match MOTO.get_or_init(start) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

fn start() -> Result<Moto, String> {
    start_with("python3")
}

fn start_with(python: &str) -> Result<Moto, String> {
    let probe = Command::new(python)
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Err(INSTALL.to_string());
    }
    // A free port: bound by the OS, released, then taken by moto.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port: {e}"))?
        .port();
    let log = std::env::temp_dir().join(format!("sluice-moto-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(python)
        .args(["-c", SCRIPT, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("cannot start moto: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("moto exited ({status}) before serving:\n{out}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("moto did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Moto {
        endpoint: format!("http://127.0.0.1:{port}"),
    })
}

impl Moto {
    /// Creates a fresh bucket and returns its name.
    pub fn bucket(&self, hint: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let hint: String = hint
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect::<String>()
            .to_ascii_lowercase();
        let name = format!(
            "t{}-{}-{hint}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let url = format!("{}/{name}", self.endpoint);
        let res = ureq::put(&url).send_empty();
        assert!(res.is_ok(), "cannot create bucket {name}: {res:?}");
        name
    }

    /// The environment a `sluice` process needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing-key-id".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret-key".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Overwrites an object through the signed S3 API (boto3, which
    /// moto's server brings), as someone with write access to the bucket
    /// could.
    pub fn overwrite(&self, bucket: &str, key: &str, bytes: &str) {
        let script = "import boto3, sys\n\
                      s3 = boto3.client('s3', endpoint_url=sys.argv[1])\n\
                      s3.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=sys.argv[4].encode())\n";
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script, &self.endpoint, bucket, key, bytes]);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("python3 runs");
        assert!(
            out.status.success(),
            "cannot overwrite {bucket}/{key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The keys under `prefix` in the bucket (first 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint);
        let body = ureq::get(&url)
            .call()
            .expect("list objects")
            .into_body()
            .read_to_string()
            .expect("list body");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }
}

#[test]
fn without_moto_the_tests_fail_saying_how_to_install_it() {
    let e = start_with("/nonexistent/python3").unwrap_err();
    assert!(e.contains("pip install 'moto[server]'"), "{e}");
}
