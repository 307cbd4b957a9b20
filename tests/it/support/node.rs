//! copyist nodes for tests: in-process through `Node::build` (fast, the same composition root
//! `copyist run` uses), or as a real process for `kill -9` and the CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use copyist::config::Config;
use copyist::node::Node;
use copyist::shutdown::{self, Trigger};

/// Extra config lines: `public` and `origin` go inside those sections, `extra` is appended
/// verbatim (whole sections, e.g. `[capture]` rules).
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts<'a> {
    /// Node name (default "test-writer").
    pub name: &'a str,
    /// "writer" (default) or "mirror".
    pub role: &'a str,
    pub public: &'a str,
    pub origin: &'a str,
    pub extra: &'a str,
}

/// The config a test node runs with.
pub fn config_text(data_dir: &Path, origin: &str, opts: Opts<'_>) -> String {
    let (public_extra, origin_extra, extra) = (opts.public, opts.origin, opts.extra);
    let name = if opts.name.is_empty() {
        "test-writer"
    } else {
        opts.name
    };
    let role = if opts.role.is_empty() {
        "writer"
    } else {
        opts.role
    };
    format!(
        r#"
[node]
name = "{name}"
role = "{role}"
data_dir = "{data}"

[public]
listen = "127.0.0.1:0"
{public_extra}

[origin]
url = "{origin}"
{origin_extra}

[admin]
listen = "127.0.0.1:0"

{extra}
"#,
        data = data_dir.display()
    )
}

/// A node running inside the test process.
pub struct TestNode {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The replication listener, when configured.
    pub replication: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
}

impl TestNode {
    pub async fn start(origin: &str) -> TestNode {
        Self::start_opts(origin, Opts::default()).await
    }

    pub async fn start_opts(origin: &str, opts: Opts<'_>) -> TestNode {
        super::init_logs();
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, origin, opts).await
    }

    /// Starts a node whose data lives in `dir/data` (reuse a dir to restart a node).
    pub async fn start_in(dir: tempfile::TempDir, origin: &str, opts: Opts<'_>) -> TestNode {
        let data = dir.path().join("data");
        let text = config_text(&data, origin, opts);
        let path = dir.path().join("proxy.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let node = Node::build(config.clone()).await.unwrap();
        let (public, admin, replication) = (
            node.public_addr(),
            node.admin_addr(),
            node.replication_addr(),
        );
        let (trigger, rx) = shutdown::channel();
        let task = tokio::spawn(async move {
            node.run(rx).await.unwrap();
        });
        TestNode {
            public,
            admin,
            replication,
            dir,
            config,
            trigger,
            task,
        }
    }

    pub fn client(&self) -> super::Client {
        super::Client::new(self.public)
    }

    pub fn admin_client(&self) -> super::Client {
        super::Client::new(self.admin)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Admin API JSON.
    pub async fn api(&self, path: &str) -> serde_json::Value {
        let r = self.admin_client().get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    pub async fn last_seq(&self) -> u64 {
        self.api("/api/v1/status").await["last_seq"]
            .as_u64()
            .unwrap()
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.trigger.fire();
        self.task.await.unwrap();
        self.dir
    }
}

/// `copyist run` as a child process.
pub struct NodeProcess {
    /// What was spawned: copyist itself, or the wrapper (`strace`) in front of it.
    pub child: Child,
    /// The copyist process's own pid (differs from `child`'s when wrapped).
    pub pid: u32,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub admin: SocketAddr,
    pub public: SocketAddr,
}

/// Whether process `pid` is running the copyist binary itself.
fn runs_copyist(pid: u32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    exe.is_some() && exe == std::fs::canonicalize(binary()).ok()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_copyist")
}

impl NodeProcess {
    /// Starts `copyist run -c config_path` and waits until its admin API reports its addresses.
    pub async fn start(config_path: &Path, data_dir: &Path) -> NodeProcess {
        Self::start_wrapped(config_path, data_dir, &[]).await
    }

    /// Like [`NodeProcess::start`], run under `wrapper` (a command that execs the rest, e.g.
    /// `prlimit --nofile=64:64 --`), so the pid is copyist's own.
    pub async fn start_under(config_path: &Path, data_dir: &Path, wrapper: &[&str]) -> NodeProcess {
        let prefix: Vec<std::ffi::OsString> = wrapper.iter().map(|w| w.into()).collect();
        Self::start_wrapped(config_path, data_dir, &prefix).await
    }

    /// Like [`NodeProcess::start`], with `prefix` run in front of the binary (e.g. `strace -f
    /// -o inj.log -e inject=…`, see `support::strace`): `prefix… copyist run -c config_path`.
    pub async fn start_wrapped(
        config_path: &Path,
        data_dir: &Path,
        prefix: &[std::ffi::OsString],
    ) -> NodeProcess {
        let _ = std::fs::remove_file(data_dir.join("admin.addr"));
        let log = std::fs::File::create(config_path.with_extension("log")).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = cmd
            .arg("run")
            .arg("-c")
            .arg(config_path)
            .env("COPYIST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut p = NodeProcess {
            child,
            pid,
            config_path: config_path.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            admin: "127.0.0.1:0".parse().unwrap(),
            public: "127.0.0.1:0".parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log =
                    std::fs::read_to_string(config_path.with_extension("log")).unwrap_or_default();
                panic!("copyist exited at start with {status}: {log}");
            }
            if let Some(admin) = std::fs::read_to_string(data_dir.join("admin.addr"))
                .ok()
                .and_then(|t| t.trim().parse::<SocketAddr>().ok())
            {
                let c = super::Client::new(admin);
                if let Ok(r) = c
                    .try_send(
                        c.request("GET", "/api/v1/status")
                            .body(Default::default())
                            .unwrap(),
                    )
                    .await
                {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    p.admin = admin;
                    p.public = v["public_addr"].as_str().unwrap().parse().unwrap();
                    // A wrapper that execs (prlimit) leaves copyist at the child's pid; one
                    // that forks (strace) has copyist as its child.
                    if !prefix.is_empty() && !runs_copyist(p.child.id()) {
                        p.pid = super::strace::child_of(p.child.id());
                    }
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "copyist did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(&mut self) {
        if self.pid != self.child.id() {
            // A wrapper's death would only detach copyist: kill copyist itself first.
            let _ = Command::new("kill")
                .args(["-9", &self.pid.to_string()])
                .status();
        }
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Runs a CLI subcommand against this node's config; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, Vec<u8>, String) {
        cli(&self.config_path, args)
    }
}

/// [`cli`] off the runtime (it blocks), with stdout as text: for async tests.
pub async fn cli_async(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = cli(&config, &refs);
        (code, String::from_utf8_lossy(&out).into_owned(), err)
    })
    .await
    .unwrap()
}

/// Runs `copyist ARGS -c config`; returns (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
