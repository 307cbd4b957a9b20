//! A writer and mirrors, each in front of its own PHP fixture CMS, with certificates from a
//! fresh cluster CA and, optionally, a fault-injecting TCP proxy on each writer→mirror path.

use std::path::Path;
use std::time::{Duration, Instant};

use super::chaos::ChaosProxy;
use super::node::Opts;
use super::{PhpCms, TestNode};

/// Certificates for a cluster: `ca.pem`, and `NAME.pem` / `NAME.key` per node.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new(names: &[&str]) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        copyist::tls::init_ca(dir.path()).unwrap();
        for name in names {
            copyist::tls::issue_node(dir.path(), name, &["127.0.0.1".to_string()]).unwrap();
        }
        Certs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `[replication]` section for node `name`.
    pub fn replication(&self, name: &str) -> String {
        replication_section(self.path(), name)
    }

    /// The `[replication]` section for node `name` listening on `port`.
    pub fn replication_on(&self, name: &str, port: u16) -> String {
        replication_section(self.path(), name).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    }
}

/// `[replication]` on 127.0.0.1:0 with the files for `name` under `dir`.
pub fn replication_section(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "[replication]\nlisten = \"127.0.0.1:0\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/{name}.pem\"\nkey = \"{d}/{name}.key\"\nretry_max = \"200ms\"\nrequest_timeout = \"10s\"\n"
    )
}

/// One node and its CMS.
pub struct Member {
    pub name: String,
    pub node: TestNode,
    pub cms: PhpCms,
}

impl Member {
    pub fn client(&self) -> super::Client {
        self.node.client()
    }

    /// The CMS's canonical state, read directly from the CMS.
    pub async fn dump(&self) -> String {
        super::Client::new(self.cms.addr).get("/dump").await.text()
    }

    pub async fn status(&self) -> serde_json::Value {
        self.node.api("/api/v1/status").await
    }
}

pub struct TestCluster {
    pub certs: Certs,
    pub writer: Member,
    pub mirrors: Vec<Member>,
    /// The chaos proxy in front of each mirror's replication listener (when asked for).
    pub chaos: Vec<Option<ChaosProxy>>,
}

/// How to build a cluster.
#[derive(Clone, Default)]
pub struct ClusterOpts {
    pub mirrors: usize,
    /// Put a ChaosProxy between the writer and every mirror.
    pub chaos: bool,
    /// Extra config appended to every node (e.g. `[compare]`).
    pub extra: String,
    /// Keys added to every mirror's `[writer]` section (e.g. `paths = [...]`).
    pub writer_keys: String,
    /// Give every node its own at-rest key (`certs/NAME.logkey`, from `copyist key init`'s
    /// code) in `[log] encryption_key_file`.
    pub encrypt_at_rest: bool,
}

/// `[log]` with a fresh key file for node `name` when `encrypt`, else nothing.
fn at_rest_section(encrypt: bool, certs: &Certs, name: &str) -> String {
    if !encrypt {
        return String::new();
    }
    let file = certs.path().join(format!("{name}.logkey"));
    copyist::crypt::NodeKey::init_file(&file).unwrap();
    format!("[log]\nencryption_key_file = \"{}\"\n", file.display())
}

impl TestCluster {
    pub async fn start(mirrors: usize) -> TestCluster {
        Self::start_opts(ClusterOpts {
            mirrors,
            ..ClusterOpts::default()
        })
        .await
    }

    pub async fn start_opts(opts: ClusterOpts) -> TestCluster {
        super::init_logs();
        let mut names = vec!["writer".to_string()];
        names.extend((1..=opts.mirrors).map(|i| format!("mirror-{i}")));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let certs = Certs::new(&refs);
        // The writer's replication port is chosen first: mirrors forward client writes to it.
        let writer_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut mirrors = Vec::new();
        let mut chaos = Vec::new();
        let mut mirror_sections = String::new();
        for name in &names[1..] {
            let cms = PhpCms::start();
            let extra = format!(
                "{}\n[writer]\nname = \"writer\"\nurl = \"https://127.0.0.1:{writer_port}\"\n{}\n\n{}\n{}",
                certs.replication(name),
                opts.writer_keys,
                opts.extra,
                at_rest_section(opts.encrypt_at_rest, &certs, name)
            );
            let node = TestNode::start_opts(
                &cms.url(),
                Opts {
                    name,
                    role: "mirror",
                    extra: &extra,
                    ..Opts::default()
                },
            )
            .await;
            let rep = node.replication.expect("mirror has a replication listener");
            let target = if opts.chaos {
                let proxy = ChaosProxy::spawn(rep).await;
                let addr = proxy.addr;
                chaos.push(Some(proxy));
                addr
            } else {
                chaos.push(None);
                rep
            };
            mirror_sections.push_str(&format!(
                "[[mirrors]]\nname = \"{name}\"\nurl = \"https://127.0.0.1:{}\"\n\n",
                target.port()
            ));
            mirrors.push(Member {
                name: name.clone(),
                node,
                cms,
            });
        }
        let cms = PhpCms::start();
        let extra = format!(
            "{}\n{}\n{}\n{}",
            certs.replication_on("writer", writer_port),
            mirror_sections,
            opts.extra,
            at_rest_section(opts.encrypt_at_rest, &certs, "writer")
        );
        let node = TestNode::start_opts(
            &cms.url(),
            Opts {
                name: "writer",
                extra: &extra,
                ..Opts::default()
            },
        )
        .await;
        let writer = Member {
            name: "writer".into(),
            node,
            cms,
        };
        TestCluster {
            certs,
            writer,
            mirrors,
            chaos,
        }
    }

    /// Waits until every mirror has applied everything the writer logged; panics if one halts.
    pub async fn wait_converged(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.writer.node.last_seq().await;
            let mut done = true;
            for m in &self.mirrors {
                let s = m.status().await;
                assert!(s["halt"].is_null(), "{} halted: {}", m.name, s["halt"]);
                if s["applied_seq"].as_u64().unwrap() < last {
                    done = false;
                }
            }
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mirrors did not catch up with seq {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops shipping to mirror `i` (`copyist mirror pause`): from now on it lags.
    pub async fn pause(&self, i: usize) {
        let name = self.mirrors[i].name.clone();
        let args = ["mirror", "pause", &name, "--reason", "test"];
        let (code, out, err) = self.cli(args.map(String::from).to_vec()).await;
        assert_eq!(code, 0, "{out}{err}");
    }

    /// Ships to mirror `i` again (`copyist mirror resume`).
    pub async fn resume(&self, i: usize) {
        let name = self.mirrors[i].name.clone();
        let args = ["mirror", "resume", &name, "--reason", "test"];
        let (code, out, err) = self.cli(args.map(String::from).to_vec()).await;
        assert_eq!(code, 0, "{out}{err}");
    }

    /// Waits until mirror `i` reports applied_seq >= seq.
    pub async fn wait_applied(&self, i: usize, seq: u64) {
        let m = &self.mirrors[i];
        crate::assert_eventually!(
            m.status().await["applied_seq"].as_u64().unwrap() >= seq,
            "{} never applied {seq}",
            m.name
        );
    }

    /// Waits until mirror `i` is halted and returns its halt.
    pub async fn wait_halted(&self, i: usize) -> serde_json::Value {
        let m = &self.mirrors[i];
        crate::assert_eventually!(
            !m.status().await["halt"].is_null(),
            "{} never halted",
            m.name
        );
        m.status().await["halt"].clone()
    }

    /// Runs `copyist ARGS -c writer.toml` (blocking, off the runtime).
    pub async fn cli(&self, args: Vec<String>) -> (i32, String, String) {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        super::node::cli_async(&self.writer.node.config_path(), &refs).await
    }
}
