//! A writer and one mirror as real `copyist run` processes (so either can be `kill -9`ed and
//! restarted on the same data dir), each in front of its own PHP fixture CMS, with certificates
//! from a fresh cluster CA.
//!
//! Ports: public and admin listeners are port 0 (a node writes `data_dir/admin.addr`; its status
//! reports `public_addr`). The mirror's replication listener is a fixed free port, borrowed once
//! from the OS and reused across restarts, because the writer's `[[mirrors]] url` names it. The
//! writer's replication listener is port 0 (nothing connects to it: the writer pushes).
//!
//! Each node's stderr is appended to `NAME.log` in the cluster dir, across restarts; failure
//! messages carry the tail of it. `COPYIST_KEEP_DIRS=1` keeps the dirs for a post-mortem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Certs;
use super::{Client, NodeProcess, PhpCms};

/// `[replication]` for `name`, listening on `listen`, with the files under `dir`. Same timings
/// as `support::cluster::replication_section`.
pub fn replication_section_at(dir: &Path, name: &str, listen: &str) -> String {
    let d = dir.display();
    format!(
        "[replication]\nlisten = \"{listen}\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/{name}.pem\"\nkey = \"{d}/{name}.key\"\nretry_max = \"200ms\"\nrequest_timeout = \"10s\"\n"
    )
}

/// A free loopback port: bound by the OS, then released for a node to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `copyist run` process (restartable) and its CMS.
pub struct ProcNode {
    pub name: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub cms: PhpCms,
    /// The mirror's fixed replication port (None on the writer).
    pub replication_port: Option<u16>,
    pub proc: Option<NodeProcess>,
    /// How many times this node has been started.
    pub starts: usize,
    /// Every pid it has run as, in order.
    pub pids: Vec<u32>,
}

impl ProcNode {
    /// Starts (or restarts) the process on the same config and data dir.
    pub async fn start(&mut self) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        let p = spawn(&self.config_path, &self.data_dir, &self.log_path).await;
        self.pids.push(p.child.id());
        self.proc = Some(p);
        self.starts += 1;
    }

    /// SIGKILL, and reap it. Returns the pid killed.
    pub fn kill9(&mut self) -> u32 {
        let mut p = self.proc.take().expect("node is not running");
        let pid = p.child.id();
        p.kill9();
        pid
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    fn running(&self) -> &NodeProcess {
        self.proc
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    pub fn public(&self) -> SocketAddr {
        self.running().public
    }

    pub fn admin(&self) -> SocketAddr {
        self.running().admin
    }

    /// A client for the public listener.
    pub fn client(&self) -> Client {
        Client::new(self.public())
    }

    /// Admin API JSON, or the error (status or transport) as text.
    pub async fn try_api(&self, path: &str) -> Result<(u16, Value), String> {
        let c = Client::new(self.admin());
        let r = c
            .try_send(c.request("GET", path).body(Default::default()).unwrap())
            .await?;
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Ok((r.status, v))
    }

    /// Admin API JSON; panics unless 200.
    pub async fn api(&self, path: &str) -> Value {
        match self.try_api(path).await {
            Ok((200, v)) => v,
            other => panic!("{} {path}: {other:?}\n{}", self.name, self.log_tail()),
        }
    }

    pub async fn status(&self) -> Value {
        self.api("/api/v1/status").await
    }

    /// One log entry as the admin API shows it; None if this node does not have it.
    pub async fn entry(&self, seq: u64) -> Option<Value> {
        match self.try_api(&format!("/api/v1/log/{seq}")).await {
            Ok((200, v)) => Some(v),
            Ok((404, _)) => None,
            other => panic!("{} log {seq}: {other:?}", self.name),
        }
    }

    /// The CMS's canonical state, read directly from the CMS (not through copyist).
    pub async fn dump(&self) -> String {
        let r = Client::new(self.cms.addr).get("/dump").await;
        assert_eq!(r.status, 200, "{} /dump: {}", self.name, r.text());
        r.text()
    }

    /// The article ids in the CMS, read directly from its SQLite file (not through `php -S`,
    /// whose workers may be busy with a slow request).
    pub fn article_ids_in_db(&self) -> Vec<u64> {
        let db = self.cms.dir.path().join("cms.sqlite");
        let code = format!(
            "$db = new PDO('sqlite:{}'); $db->setAttribute(PDO::ATTR_TIMEOUT, 10); \
             foreach ($db->query('SELECT id FROM articles ORDER BY id') as $r) echo $r[0], \"\\n\";",
            db.display()
        );
        let out = Command::new("php").arg("-r").arg(code).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// The last lines of this node's log (all its runs), for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }
}

/// Starts `copyist run -c config`, appending its stderr to `log`, and waits until its admin API
/// answers. A start that fails because the fixed replication port is briefly taken (by an
/// outgoing connection's ephemeral port) is retried.
async fn spawn(config: &Path, data: &Path, log: &Path) -> NodeProcess {
    let deadline = Instant::now() + Duration::from_secs(20);
    'attempt: loop {
        let _ = std::fs::remove_file(data.join("admin.addr"));
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(super::node::binary())
            .arg("run")
            .arg("-c")
            .arg(config)
            .env("COPYIST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut p = NodeProcess {
            child,
            pid,
            config_path: config.to_path_buf(),
            data_dir: data.to_path_buf(),
            admin: "127.0.0.1:0".parse().unwrap(),
            public: "127.0.0.1:0".parse().unwrap(),
        };
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                if tail.contains("in use") && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'attempt;
                }
                panic!("copyist exited at start with {status}:\n{tail}");
            }
            if let Some(admin) = std::fs::read_to_string(data.join("admin.addr"))
                .ok()
                .and_then(|t| t.trim().parse::<SocketAddr>().ok())
            {
                let c = Client::new(admin);
                if let Ok(r) = c
                    .try_send(
                        c.request("GET", "/api/v1/status")
                            .body(Default::default())
                            .unwrap(),
                    )
                    .await
                {
                    let v: Value = serde_json::from_slice(&r.body).unwrap();
                    p.admin = admin;
                    p.public = v["public_addr"].as_str().unwrap().parse().unwrap();
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "copyist did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How to build a [`ProcessCluster`].
#[derive(Clone, Default)]
pub struct ProcessClusterOpts {
    /// Extra lines inside the writer's `[origin]` (e.g. `response_timeout = "30s"`).
    pub writer_origin: String,
    /// Extra lines inside the mirror's `[origin]`.
    pub mirror_origin: String,
    /// Extra lines inside the writer's `[replication]` (e.g. `window = 4`).
    pub writer_replication: String,
    /// A tmpfs of this size (e.g. "8m") mounted over the mirror's data dir before it starts,
    /// for a real disk-full (root only; see `SmallDisk`).
    pub mirror_disk: Option<String>,
}

/// A writer and one mirror (`mirror-1`), both real processes.
pub struct ProcessCluster {
    pub certs: Certs,
    pub writer: ProcNode,
    pub mirror: ProcNode,
    /// The mirror's small disk, if asked for; unmounted after the nodes are stopped.
    pub mirror_disk: Option<super::SmallDisk>,
    /// Configs, data dirs and logs.
    pub root: tempfile::TempDir,
}

fn config(
    name: &str,
    role: &str,
    data: &Path,
    cms: &PhpCms,
    origin_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[node]
name = "{name}"
role = "{role}"
data_dir = "{data}"

[public]
listen = "127.0.0.1:0"

[origin]
url = "{origin}"
{origin_extra}

[admin]
listen = "127.0.0.1:0"

{extra}
"#,
        data = data.display(),
        origin = cms.url(),
    )
}

impl ProcessCluster {
    /// Builds and starts the mirror, then the writer.
    pub async fn start(opts: ProcessClusterOpts) -> ProcessCluster {
        let certs = Certs::new(&["writer", "mirror-1"]);
        let root = tempfile::tempdir().unwrap();

        let mirror_cms = PhpCms::start();
        let port = free_port();
        let mirror_data = root.path().join("mirror-1");
        let mirror_disk = opts
            .mirror_disk
            .as_deref()
            .map(|size| super::SmallDisk::mount(&mirror_data, size));
        let mirror_extra = format!(
            "{}\n[writer]\nname = \"writer\"\nurl = \"https://127.0.0.1:9\"\n",
            replication_section_at(certs.path(), "mirror-1", &format!("127.0.0.1:{port}"))
        );
        let mirror_config = root.path().join("mirror-1.toml");
        std::fs::write(
            &mirror_config,
            config(
                "mirror-1",
                "mirror",
                &mirror_data,
                &mirror_cms,
                &opts.mirror_origin,
                &mirror_extra,
            ),
        )
        .unwrap();
        let mut mirror = ProcNode {
            name: "mirror-1".into(),
            config_path: mirror_config,
            data_dir: mirror_data,
            log_path: root.path().join("mirror-1.log"),
            cms: mirror_cms,
            replication_port: Some(port),
            proc: None,
            starts: 0,
            pids: Vec::new(),
        };
        mirror.start().await;

        let writer_cms = PhpCms::start();
        let writer_data = root.path().join("writer");
        let writer_extra = format!(
            "{}{}\n\n[[mirrors]]\nname = \"mirror-1\"\nurl = \"https://127.0.0.1:{port}\"\n",
            replication_section_at(certs.path(), "writer", "127.0.0.1:0"),
            opts.writer_replication
        );
        let writer_config = root.path().join("writer.toml");
        std::fs::write(
            &writer_config,
            config(
                "writer",
                "writer",
                &writer_data,
                &writer_cms,
                &opts.writer_origin,
                &writer_extra,
            ),
        )
        .unwrap();
        let mut writer = ProcNode {
            name: "writer".into(),
            config_path: writer_config,
            data_dir: writer_data,
            log_path: root.path().join("writer.log"),
            cms: writer_cms,
            replication_port: None,
            proc: None,
            starts: 0,
            pids: Vec::new(),
        };
        writer.start().await;
        ProcessCluster {
            certs,
            writer,
            mirror,
            mirror_disk,
            root,
        }
    }

    /// Runs `copyist ARGS -c writer.toml` (the operator's view), off the runtime.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.writer.config_path.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = super::node::cli(&config, &refs);
            (code, String::from_utf8_lossy(&out).into_owned(), err)
        })
        .await
        .unwrap()
    }

    /// Both nodes' log tails.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.writer.log_tail(), self.mirror.log_tail())
    }

    /// Waits until the mirror has applied everything the writer logged, with no halt.
    pub async fn wait_converged(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let w = self.writer.status().await;
            let m = self.mirror.status().await;
            assert!(
                m["halt"].is_null(),
                "mirror halted: {}\n{}",
                m["halt"],
                self.logs()
            );
            let last = w["last_seq"].as_u64().unwrap();
            if m["applied_seq"].as_u64().unwrap() >= last {
                return;
            }
            if Instant::now() > deadline {
                let next = m["applied_seq"].as_u64().unwrap() + 1;
                panic!(
                    "mirror did not catch up: writer last_seq {last}, mirror applied_seq {}; \
                     the writer sees the mirror as {}; mirror's entry {next}: {:?}\n{}",
                    m["applied_seq"],
                    w["mirrors"][0],
                    self.mirror.entry(next).await.map(|e| e["state"].clone()),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // Stop the nodes before their CMSes and dirs go away.
        if let Some(mut p) = self.writer.proc.take() {
            p.kill9();
        }
        if let Some(mut p) = self.mirror.proc.take() {
            p.kill9();
        }
        if std::env::var_os("COPYIST_KEEP_DIRS").is_some() {
            let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
            eprintln!("kept {}", root.keep().display());
        }
    }
}
