//! A throwaway PostgreSQL server (Debian's `postgresql` package) in a temp
//! directory on a loopback port, with password authentication, run as the
//! `postgres` user when the tests run as root. Fails, saying how to install
//! it, when the server binaries are missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const USER: &str = "pipelens";
pub const PASSWORD: &str = "s3cret-Pg-pass";

pub struct Postgres {
    pub addr: SocketAddr,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    running: bool,
}

/// The directory of Debian's PostgreSQL server binaries.
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server binaries are missing (no /usr/lib/postgresql/*/bin/pg_ctl): \
             install them with `apt-get install -y postgresql` (scripts/test does)"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args` as the `postgres` user when we are root.
fn command(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// initdb (user `pipelens` with [`PASSWORD`], scram-sha-256) and start.
    pub fn start() -> Self {
        let bin = server_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            let uid = String::from_utf8(
                Command::new("id")
                    .args(["-u", "postgres"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap()
            .trim()
            .parse::<u32>()
            .expect("a `postgres` user (it comes with the postgresql package)");
            for p in [dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), None).unwrap();
            }
        }
        run(
            command(
                &bin.join("initdb"),
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    USER,
                    "--pwfile",
                    pwfile.to_str().unwrap(),
                    "-A",
                    "scram-sha-256",
                    "--no-sync",
                ],
            ),
            "initdb",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            bin,
            data,
            _dir: dir,
            running: false,
        };
        pg.resume();
        pg
    }

    /// The URL with the password in it.
    pub fn url(&self) -> String {
        format!("postgres://{USER}:{PASSWORD}@{}/postgres", self.addr)
    }

    /// The URL without a password (give it in a file).
    pub fn url_without_password(&self) -> String {
        format!("postgres://{USER}@{}/postgres", self.addr)
    }

    /// Starts the server (again).
    pub fn resume(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off",
            self.addr.port()
        );
        let log = self.data.with_file_name("server.log");
        run(
            command(
                &self.bin.join("pg_ctl"),
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-o",
                    &options,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "start",
                ],
            ),
            "pg_ctl start",
        );
        self.running = true;
    }

    /// Stops the server (fast: open connections are cut).
    pub fn stop(&mut self) {
        run(
            command(
                &self.bin.join("pg_ctl"),
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
            ),
            "pg_ctl stop",
        );
        self.running = false;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = command(
                &self.bin.join("pg_ctl"),
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
            .output();
        }
    }
}
