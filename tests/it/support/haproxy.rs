//! Debian's HAProxy as a child process in front of a [`TestCluster`]: writes to the node whose
//! `/writer` check passes, reads to every node whose `/read-only?lag=5` check passes, with the
//! answering server's name in `X-Served-By` and an admin stats socket the test reads.
//!
//! HAProxy is required: `scripts/check.sh` installs it, and a missing binary fails the test
//! instead of skipping it. The process is killed on drop, so also when a test panics.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::TestCluster;

/// The backend all writes go to.
pub const WRITERS: &str = "writers";
/// The backend everything else goes to.
pub const READERS: &str = "readers";

/// A running `haproxy -db`.
pub struct HaProxy {
    /// The frontend clients talk to.
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// Where Debian puts it; else whatever `haproxy` is on PATH.
fn binary() -> PathBuf {
    let debian = PathBuf::from("/usr/sbin/haproxy");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("haproxy")
    }
}

impl HaProxy {
    /// Starts HAProxy before every node of `cluster` (servers named as the nodes) and waits until
    /// its stats socket answers. `disable_on_404` adds `http-check disable-on-404` to the readers.
    pub fn start(cluster: &TestCluster, disable_on_404: bool) -> HaProxy {
        let mut nodes = vec![(&cluster.writer.name, &cluster.writer.node)];
        nodes.extend(cluster.mirrors.iter().map(|m| (&m.name, &m.node)));
        let servers: Vec<(String, SocketAddr, u16)> = nodes
            .iter()
            .map(|(name, node)| (name.to_string(), node.public, node.admin.port()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            // HAProxy cannot report the port it bound to 0: borrow a free one and hand it over;
            // if another process takes it in between, HAProxy exits and we try again.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, config(dir.path(), addr, &servers, disable_on_404)).unwrap();
            let log_path = dir.path().join("haproxy.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(binary())
                .arg("-f")
                .arg(&cfg)
                .arg("-db")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("haproxy not found ({e}): scripts/check.sh installs it")
                });
            if wait_ready(&mut child, &dir.path().join("admin.sock")) {
                return HaProxy { addr, dir, child };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("haproxy did not start: {last_log}");
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Every server's status in `backend` by name, as `show stat` says it ("UP", "DOWN",
    /// "UP 1/2", "NOLB", "MAINT", ...), with " (unchecked)" appended until its first check has
    /// run: HAProxy assumes a server up before checking it, which proves nothing.
    pub fn statuses(&self, backend: &str) -> HashMap<String, String> {
        let out = command(&self.socket(), "show stat")
            .unwrap_or_else(|e| panic!("stats socket: {e}; log: {}", self.log()));
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (px, sv, status, check) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("check_status"),
        );
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > check.max(status) && f[px] == backend)
            .filter(|f| f[sv] != "BACKEND" && f[sv] != "FRONTEND")
            .map(|f| {
                let checked = !f[check].is_empty() && !f[check].starts_with("INI");
                let status = if checked {
                    f[status].to_string()
                } else {
                    format!("{} (unchecked)", f[status])
                };
                (f[sv].to_string(), status)
            })
            .collect()
    }

    /// Waits until `backend` shows exactly `want` (server name → status).
    pub async fn wait_statuses(&self, backend: &str, want: &[(&str, &str)]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.statuses(backend);
            if want
                .iter()
                .all(|(s, st)| now.get(*s).map(String::as_str) == Some(*st))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{backend} never showed {want:?}; it shows {now:?}; log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn client(&self) -> super::Client {
        super::Client::new(self.addr)
    }

    /// HAProxy's own output (alerts, server state changes), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Until the stats socket answers (HAProxy binds every listener before it serves the socket) or
/// the process exits (e.g. the frontend port was taken meanwhile).
fn wait_ready(child: &mut Child, socket: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if command(socket, "show info").is_ok_and(|out| out.contains("Pid:")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One stats-socket command; HAProxy answers and closes (non-interactive mode).
fn command(socket: &Path, cmd: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The whole haproxy.cfg. Checks go to each node's admin port every 200 ms; two results in a
/// row change a server's state.
fn config(
    dir: &Path,
    addr: SocketAddr,
    servers: &[(String, SocketAddr, u16)],
    disable_on_404: bool,
) -> String {
    // The same servers in both backends; each backend's `http-check send` picks the question.
    let server_lines = servers
        .iter()
        .map(|(name, public, admin)| {
            format!("    server {name} {public} check port {admin} inter 200ms fall 2 rise 2\n")
        })
        .collect::<String>();
    let drain = if disable_on_404 {
        "    http-check disable-on-404\n"
    } else {
        ""
    };
    format!(
        r#"global
    stats socket {sock} mode 600 level admin
    stats timeout 5s

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s

frontend www
    bind {addr}
    acl write method POST PUT PATCH DELETE
    use_backend {WRITERS} if write
    default_backend {READERS}

backend {WRITERS}
    option httpchk
    http-check send meth GET uri /writer ver HTTP/1.1 hdr Host localhost
    http-response set-header X-Served-By %s
{servers}
backend {READERS}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /read-only?lag=5 ver HTTP/1.1 hdr Host localhost
{drain}    http-response set-header X-Served-By %s
{servers}"#,
        sock = dir.join("admin.sock").display(),
        servers = server_lines,
    )
}
