//! The PHP fixture CMS under `php -S`, in its own process group with its own data dir.
//!
//! `php -S` with workers forks children that keep the port if only the parent dies, so the whole
//! group is killed on drop. PHP is required: `.ci/run` installs it, and a missing PHP fails the
//! test instead of skipping it.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PhpCms {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl PhpCms {
    /// Starts the fixture on a free loopback port and waits until it answers.
    pub fn start() -> PhpCms {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cms/router.php");
        let dir = tempfile::tempdir().unwrap();
        for _attempt in 0..5 {
            // php -S cannot take port 0: borrow a free port from the OS, then hand it over.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut child = Command::new("php")
                .arg("-S")
                .arg(addr.to_string())
                .arg(&root)
                .env("CMS_DATA_DIR", dir.path())
                .env("PHP_CLI_SERVER_WORKERS", "2")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("php not found: install php-cli and php-sqlite3 (see README)");
            if wait_ready(&mut child, addr) {
                return PhpCms { addr, dir, child };
            }
            kill_group(&mut child);
        }
        panic!("php -S did not start");
    }

    /// Stops this CMS and starts it again on the same address and data dir, with `env` added to
    /// its environment (e.g. libfaketime's `LD_PRELOAD` and `FAKETIME`).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        kill_group(&mut self.child);
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cms/router.php");
        // The port was just freed; php -S may need a moment to get it back.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new("php")
                .arg("-S")
                .arg(self.addr.to_string())
                .arg(&root)
                .env("CMS_DATA_DIR", self.dir.path())
                .env("PHP_CLI_SERVER_WORKERS", "2")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            if wait_ready(&mut child, self.addr) {
                self.child = child;
                return;
            }
            kill_group(&mut child);
            assert!(Instant::now() < deadline, "php -S did not restart");
        }
    }

    /// The `php -S` master's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs SQL against this CMS's SQLite file, as an operator editing the database by hand.
    pub fn sql(&self, sql: &str) {
        sql_at(&self.dir.path().join("cms.sqlite"), sql);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.contains(" 200 ") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills php and its forked workers (they share the process group started above).
fn kill_group(child: &mut Child) {
    let pgid = child.id();
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PhpCms {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Runs SQL against a fixture CMS's SQLite file with PHP's PDO (the test machine has no sqlite3).
pub fn sql_at(db: &std::path::Path, sql: &str) {
    let code = format!(
        "$db = new PDO('sqlite:{}'); $db->exec(\"{sql}\");",
        db.display()
    );
    let out = Command::new("php").arg("-r").arg(code).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
