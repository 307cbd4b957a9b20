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
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Certs;
use super::history::vacuity::Peak;
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
    /// Extra environment for the next start (e.g. libfaketime's `LD_PRELOAD` and `FAKETIME`).
    pub env: Vec<(String, String)>,
    /// Highest memory and fd count seen over all its processes (sampled before each kill).
    pub peak: Peak,
}

impl ProcNode {
    /// `self.env` (every start) plus `extra` (this start only).
    fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let extra = extra.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        self.env.iter().cloned().chain(extra).collect()
    }

    /// Starts (or restarts) the process on the same config and data dir.
    pub async fn start(&mut self) {
        self.start_with(&[]).await;
    }

    /// Like [`ProcNode::start`], with extra environment variables for this run only (e.g.
    /// `FAILPOINTS`).
    pub async fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        let env = self.env_with(env);
        let p = spawn(&self.config_path, &self.data_dir, &self.log_path, &env).await;
        self.pids.push(p.child.id());
        self.proc = Some(p);
        self.starts += 1;
    }

    /// Starts the process with `env` expecting it to exit before it serves (a crash point on
    /// the way up); returns how it exited. Panics if it comes up instead.
    pub async fn start_expecting_exit(&mut self, env: &[(&str, &str)]) -> ExitStatus {
        assert!(self.proc.is_none(), "{} is already running", self.name);
        let _ = std::fs::remove_file(self.data_dir.join("admin.addr"));
        let mut child = command(&self.config_path, &self.log_path, &self.env_with(env))
            .spawn()
            .unwrap();
        self.pids.push(child.id());
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if self.data_dir.join("admin.addr").exists() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} came up (or hung) instead of exiting at start\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) for the running process to exit by itself (a crash point fired);
    /// returns how it exited.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut p = self.proc.take().expect("node is not running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                p.kill9();
                panic!(
                    "{} did not exit within {within:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM (a graceful stop), then waits for the exit; returns how it exited.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let pid = self.proc.as_ref().expect("node is not running").child.id();
        let ok = Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid} failed");
        self.wait_exit(Duration::from_secs(30)).await
    }

    /// How long this node's log file is now: pass it to [`ProcNode::log_since`].
    pub fn log_mark(&self) -> usize {
        std::fs::read(&self.log_path).map_or(0, |b| b.len())
    }

    /// What this node logged since `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(mark..).unwrap_or_default()).into_owned()
    }

    /// SIGKILL, and reap it. Returns the pid killed. Its memory peak (`VmHWM`) is read first.
    pub fn kill9(&mut self) -> u32 {
        let mut p = self.proc.take().expect("node is not running");
        let pid = p.child.id();
        self.peak.sample(pid);
        p.kill9();
        pid
    }

    /// The running process's pid.
    pub fn pid(&self) -> u32 {
        self.running().child.id()
    }

    /// Its peak memory and fds so far, the running process included.
    pub fn sample_peak(&mut self) -> Peak {
        if let Some(p) = &self.proc {
            self.peak.sample(p.child.id());
        }
        self.peak
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
async fn spawn(config: &Path, data: &Path, log: &Path, env: &[(String, String)]) -> NodeProcess {
    let deadline = Instant::now() + Duration::from_secs(20);
    'attempt: loop {
        let _ = std::fs::remove_file(data.join("admin.addr"));
        let child = command(config, log, env).spawn().unwrap();
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

/// `copyist run -c config` with stderr appended to `log` and `env` added.
fn command(config: &Path, log: &Path, env: &[(String, String)]) -> Command {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(super::node::binary());
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .env("COPYIST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(err);
    cmd
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
    /// Whole sections appended to every node's config (e.g. `[health]`).
    pub extra: String,
    /// How many mirrors (0 means 1): `mirror-1` is `mirror`, the others are `more_mirrors`.
    pub mirrors: usize,
    /// Give the writer's replication listener a fixed port and point every mirror's `[writer]`
    /// at it, so a write sent to a mirror is forwarded to the writer.
    pub forward_writes: bool,
    /// A tmpfs of this size (e.g. "8m") mounted over `mirror-1`'s data dir before it starts,
    /// for a real disk-full (root only; see `SmallDisk`).
    pub mirror_disk: Option<String>,
}

/// A writer and one mirror (`mirror-1`), or more, all real processes.
pub struct ProcessCluster {
    pub certs: Certs,
    pub writer: ProcNode,
    pub mirror: ProcNode,
    /// `mirror-2`, `mirror-3`, … when asked for.
    pub more_mirrors: Vec<ProcNode>,
    /// `mirror-1`'s small disk, if asked for; unmounted after the nodes are stopped.
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
    /// Builds and starts the mirrors, then the writer.
    pub async fn start(opts: ProcessClusterOpts) -> ProcessCluster {
        let count = opts.mirrors.max(1);
        let names: Vec<String> = (1..=count).map(|i| format!("mirror-{i}")).collect();
        let mut cert_names = vec!["writer"];
        cert_names.extend(names.iter().map(String::as_str));
        let certs = Certs::new(&cert_names);
        let root = tempfile::tempdir().unwrap();
        let writer_port = if opts.forward_writes { free_port() } else { 0 };
        let writer_url = if opts.forward_writes {
            format!("https://127.0.0.1:{writer_port}")
        } else {
            // Nothing forwards: a port nobody listens on.
            "https://127.0.0.1:9".to_string()
        };

        let mut mirrors = Vec::new();
        let mut mirror_sections = String::new();
        let mut mirror_disk = None;
        for name in &names {
            let mirror_cms = PhpCms::start();
            let port = free_port();
            let mirror_data = root.path().join(name);
            if name == "mirror-1" {
                mirror_disk = opts
                    .mirror_disk
                    .as_deref()
                    .map(|size| super::SmallDisk::mount(&mirror_data, size));
            }
            let mirror_extra = format!(
                "{}\n[writer]\nname = \"writer\"\nurl = \"{writer_url}\"\n\n{}\n",
                replication_section_at(certs.path(), name, &format!("127.0.0.1:{port}")),
                opts.extra
            );
            let mirror_config = root.path().join(format!("{name}.toml"));
            std::fs::write(
                &mirror_config,
                config(
                    name,
                    "mirror",
                    &mirror_data,
                    &mirror_cms,
                    &opts.mirror_origin,
                    &mirror_extra,
                ),
            )
            .unwrap();
            let mut mirror = ProcNode {
                name: name.clone(),
                config_path: mirror_config,
                data_dir: mirror_data,
                log_path: root.path().join(format!("{name}.log")),
                cms: mirror_cms,
                replication_port: Some(port),
                proc: None,
                starts: 0,
                pids: Vec::new(),
                env: Vec::new(),
                peak: Peak::default(),
            };
            mirror.start().await;
            mirror_sections.push_str(&format!(
                "\n[[mirrors]]\nname = \"{name}\"\nurl = \"https://127.0.0.1:{port}\"\n"
            ));
            mirrors.push(mirror);
        }

        let writer_cms = PhpCms::start();
        let writer_data = root.path().join("writer");
        let writer_extra = format!(
            "{}{}\n{mirror_sections}\n{}\n",
            replication_section_at(certs.path(), "writer", &format!("127.0.0.1:{writer_port}")),
            opts.writer_replication,
            opts.extra
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
            replication_port: opts.forward_writes.then_some(writer_port),
            proc: None,
            starts: 0,
            pids: Vec::new(),
            env: Vec::new(),
            peak: Peak::default(),
        };
        writer.start().await;
        let mut mirrors = mirrors.into_iter();
        let mirror = mirrors.next().expect("at least one mirror");
        ProcessCluster {
            certs,
            writer,
            mirror,
            more_mirrors: mirrors.collect(),
            mirror_disk,
            root,
        }
    }

    /// Every mirror, `mirror-1` first.
    pub fn mirrors(&self) -> Vec<&ProcNode> {
        std::iter::once(&self.mirror)
            .chain(self.more_mirrors.iter())
            .collect()
    }

    /// Every node, writer first: what the history checkers read.
    pub fn handles(&self) -> Vec<super::history::check::NodeHandle> {
        std::iter::once(&self.writer)
            .chain(self.mirrors())
            .map(Into::into)
            .collect()
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

    /// Every node's log tail.
    pub fn logs(&self) -> String {
        std::iter::once(&self.writer)
            .chain(self.mirrors())
            .map(ProcNode::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every mirror has applied everything the writer logged, with no halt.
    pub async fn wait_converged(&self, within: Duration) {
        let deadline = Instant::now() + within;
        'poll: loop {
            let w = self.writer.status().await;
            let last = w["last_seq"].as_u64().unwrap();
            for (i, mirror) in self.mirrors().into_iter().enumerate() {
                let m = mirror.status().await;
                assert!(
                    m["halt"].is_null(),
                    "{} halted: {}\n{}",
                    mirror.name,
                    m["halt"],
                    self.logs()
                );
                if m["applied_seq"].as_u64().unwrap() >= last {
                    continue;
                }
                if Instant::now() > deadline {
                    let next = m["applied_seq"].as_u64().unwrap() + 1;
                    panic!(
                        "{} did not catch up: writer last_seq {last}, mirror applied_seq {}; \
                         the writer sees the mirror as {}; mirror's entry {next}: {:?}\n{}",
                        mirror.name,
                        m["applied_seq"],
                        w["mirrors"][i],
                        mirror.entry(next).await.map(|e| e["state"].clone()),
                        self.logs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue 'poll;
            }
            return;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // Stop the nodes before their CMSes and dirs go away.
        if let Some(mut p) = self.writer.proc.take() {
            p.kill9();
        }
        for m in std::iter::once(&mut self.mirror).chain(self.more_mirrors.iter_mut()) {
            if let Some(mut p) = m.proc.take() {
                p.kill9();
            }
        }
        if std::env::var_os("COPYIST_KEEP_DIRS").is_some() {
            let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
            eprintln!("kept {}", root.keep().display());
        }
    }
}
