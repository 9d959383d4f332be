//! A throwaway PostgreSQL cluster for tests, on loopback only: `initdb` in
//! a temp dir, `pg_ctl start` on a free 127.0.0.1 port and a private
//! socket dir, password authentication (scram) for the `sluice` role. One
//! cluster per test binary, a fresh database per test. A watchdog process
//! stops the cluster and removes its directory once the test binary is
//! gone, however it ended (statics are never dropped, and a killed binary
//! runs nothing).
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `pg_ctl` run
//! as the `postgres` user through `runuser`, in a directory it owns.
//!
//! Uses std and the `postgres` crate only, so the end-to-end tests include
//! this same file (`#[path]`).

#![allow(clippy::unwrap_used, dead_code)]

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The test role's password (the cluster lives on loopback for seconds).
pub const PASSWORD: &str = "sluice-test-password";
/// The test role.
pub const USER: &str = "sluice";

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
}

/// A fresh database of the cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `postgresql://sluice@127.0.0.1:PORT/NAME`, without the password.
    pub url: String,
    pub name: String,
}

/// What to tell someone whose machine lacks PostgreSQL.
const INSTALL: &str = "PostgreSQL is not installed, and these tests start a throwaway cluster \
     with its initdb and pg_ctl: apt-get install postgresql (Debian/Ubuntu), or put initdb on \
     PATH";

/// The directory holding `initdb` and `pg_ctl`: on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return dir;
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("{INSTALL}"),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the postgres user when we are root.
fn as_pg_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A test CA and a certificate for `localhost` / 127.0.0.1 signed by it
/// (`ca.crt`, `server.crt`, `server.key` in `dir`), and the server
/// options that turn TLS on with them; empty (no TLS) without `openssl`.
fn make_certificates(dir: &Path) -> String {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let made = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sluice test CA",
    ]) && openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    if !made {
        return String::new();
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    format!(
        " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    )
}

impl Cluster {
    /// The CA that signed the server's certificate, when it has one.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        Some(self.dir.join("ca.crt")).filter(|p| p.is_file())
    }

    fn start() -> Cluster {
        let bin = bin_dir();
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let data = dir.join("data");
        let sock = dir.join("sock");
        std::fs::create_dir(&sock).unwrap();
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        let tls = make_certificates(&dir);
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            );
        }
        let mut initdb = as_pg_user(&bin.join("initdb"), root);
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb");
        let port = free_port();
        let mut start = as_pg_user(&bin.join("pg_ctl"), root);
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=200{tls}",
                sock.display()
            ))
            .args(["-w", "start"]);
        run(start, "pg_ctl start");
        // The watchdog: once this process is gone, stop the cluster and
        // remove its directory.
        let stop = format!(
            "{}'{}' -D '{}' -m immediate stop",
            if root { "runuser -u postgres -- " } else { "" },
            bin.join("pg_ctl").display(),
            data.display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            dir = dir.display()
        );
        // Its own process group, so that a Ctrl-C of the tests does not
        // kill it before it cleans up; never waited for, by design.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Cluster { port, dir }
    }

    fn admin(&self) -> postgres::Client {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(PASSWORD)
            .dbname("postgres")
            .connect(postgres::NoTls)
            .unwrap()
    }

    /// A new, empty database.
    pub fn fresh_db(&self) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // Off any tokio runtime the caller may be in.
        let port = self.port;
        std::thread::scope(|s| {
            s.spawn(|| {
                self.admin()
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap();
            })
            .join()
            .unwrap();
        });
        TestDb {
            url: format!("postgresql://{USER}@127.0.0.1:{port}/{name}"),
            name,
        }
    }

    /// Runs `sql` in database `db` as the test role; the rows' first
    /// column as text.
    pub fn query(&self, db: &str, sql: &str) -> Vec<String> {
        let port = self.port;
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = postgres::Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user(USER)
                    .password(PASSWORD)
                    .dbname(db)
                    .connect(postgres::NoTls)
                    .unwrap();
                c.simple_query(sql)
                    .unwrap()
                    .into_iter()
                    .filter_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap_or("NULL").to_string())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .join()
            .unwrap()
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The cluster of this test binary, started at first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}
