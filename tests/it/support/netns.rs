//! Nodes in their own network namespaces (RELIABILITY.md C1, C2, E4): each node (`copyist run` +
//! its PHP fixture CMS, both under `ip netns exec`) gets a namespace with one veth into a bridge
//! in a switch namespace, and an address in 10.77.ID.0/24, ID unique per test (reserved by
//! creating the switch namespace: `ip netns add` fails if another test holds the name).
//! Nothing is created outside the namespaces a test makes, and `Lan`'s drop deletes them all,
//! panic or not (deleting a namespace deletes its veth end, and the peer with it).
//!
//! The test process reaches a node's loopback listeners (public, admin, CMS) through a
//! [`Forward`]: a listener on the host's 127.0.0.1 whose thread entered the node's namespace
//! (setns), so every connection it opens upstream starts inside that namespace.
//!
//! Faults: `partition` / `heal` set the node's link down / up (full partition); `drop_to`
//! adds an nft rule in the node's namespace dropping its packets to one peer (one-way; its
//! counter proves it fired).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use super::Client;

/// Fixed ports inside every node's namespace: each namespace has its own port space.
pub const PUBLIC_PORT: u16 = 8000;
pub const ADMIN_PORT: u16 = 9000;
pub const CMS_PORT: u16 = 8080;
pub const REPLICATION_PORT: u16 = 7443;

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip not found");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root, as CI has)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip netns exec NS ARGS` and returns stdout, panicking on failure.
pub fn exec_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{ns}: {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A private LAN: a switch namespace with a bridge, and one namespace per host.
pub struct Lan {
    pub id: u8,
    prefix: String,
    hosts: Vec<String>,
}

impl Lan {
    /// Reserves a free ID (1..=254) by creating its switch namespace.
    pub fn new() -> Lan {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let start = std::process::id() ^ NEXT.fetch_add(7, Ordering::Relaxed);
        for k in 0..254u32 {
            let id = u8::try_from((start + k) % 254 + 1).unwrap();
            let prefix = format!("cpy{id}");
            let sw = format!("{prefix}-sw");
            let ok = Command::new("ip")
                .args(["netns", "add", &sw])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if !ok {
                continue; // another test holds this ID
            }
            let lan = Lan {
                id,
                prefix,
                hosts: Vec::new(),
            };
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
            ip(&["-n", &sw, "link", "set", "br0", "up"]);
            return lan;
        }
        panic!("no free 10.77.x.0/24 for a test LAN");
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// A new host namespace with `eth0` at 10.77.ID.(n+1), plugged into the bridge.
    pub fn add_host(&mut self, short: &str) -> (String, Ipv4Addr) {
        let n = self.hosts.len() + 1;
        let ns = format!("{}-{short}", self.prefix);
        let addr = Ipv4Addr::new(10, 77, self.id, u8::try_from(n).unwrap());
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let (sw, port) = (self.switch(), format!("p{n}"));
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &sw,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &sw, "link", "set", &port, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        (ns, addr)
    }
}

impl Lan {
    /// The switch's port towards the host with address 10.77.ID.`host`: (switch namespace,
    /// device). Its egress is everything that host receives, e.g. to throttle one mirror.
    pub fn port_to(&self, host: Ipv4Addr) -> (String, String) {
        (self.switch(), format!("p{}", host.octets()[3]))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.switch()]) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Full partition: the host's only link goes down.
pub fn partition(ns: &str) {
    ip(&["-n", ns, "link", "set", "eth0", "down"]);
}

pub fn heal(ns: &str) {
    ip(&["-n", ns, "link", "set", "eth0", "up"]);
}

/// Whether `eth0` in `ns` is administratively up (the evidence a partition is in force).
pub fn link_up(ns: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let flags = text.split('<').nth(1).unwrap_or("");
    flags
        .split('>')
        .next()
        .unwrap_or("")
        .split(',')
        .any(|f| f == "UP")
}

/// One-way loss: `ns` drops every packet it sends to `to` (nft table `copyist_test`).
pub fn drop_to(ns: &str, to: Ipv4Addr) {
    exec_in(ns, &["nft", "add table inet copyist_test"]);
    exec_in(
        ns,
        &[
            "nft",
            "add chain inet copyist_test out { type filter hook output priority 0 ; }",
        ],
    );
    let rule = format!("add rule inet copyist_test out ip daddr {to} counter drop");
    exec_in(ns, &["nft", &rule]);
}

/// Removes `drop_to`'s rule.
pub fn undrop(ns: &str) {
    exec_in(ns, &["nft", "delete table inet copyist_test"]);
}

/// Packets `drop_to`'s rule has dropped so far.
pub fn dropped_packets(ns: &str) -> u64 {
    let out = exec_in(ns, &["nft", "list table inet copyist_test"]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Egress of `ns`'s link limited to `rate` (tc tbf, e.g. "4mbit").
pub fn throttle(ns: &str, rate: &str) {
    throttle_dev(ns, "eth0", rate);
}

/// Egress of `dev` in `ns` limited to `rate` (tc tbf).
pub fn throttle_dev(ns: &str, dev: &str, rate: &str) {
    let args = [
        "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "16kb",
        "latency", "2s",
    ];
    let out = Command::new("tc").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (bytes sent, overlimits) of the tbf on `ns`'s link: overlimits > 0 proves it throttled.
pub fn throttle_stats(ns: &str) -> (u64, u64) {
    throttle_stats_dev(ns, "eth0")
}

/// (bytes sent, overlimits) of the tbf on `dev` in `ns`.
pub fn throttle_stats_dev(ns: &str, dev: &str) -> (u64, u64) {
    let out = Command::new("tc")
        .args(["-n", ns, "-s", "qdisc", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|n| n.trim_end_matches([',', ')']).parse().ok())
            .unwrap_or(0)
    };
    (after("Sent"), after("overlimits"))
}

/// A host-loopback port forwarded to `target` inside a namespace. Dropping it stops it.
pub struct Forward {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Forward {
    pub fn spawn(ns: &str, target: SocketAddr) -> Forward {
        // Bound here, in the test's own namespace; only the thread below moves.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                handle.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the test namespace");
            // A current-thread runtime: every socket it opens is opened on this thread.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    while let Ok((mut client, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Forward {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Kills a child and its process group (php -S forks workers).
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// `copyist run` and its PHP fixture CMS inside namespace `ns`.
pub struct NetNode {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    node: Child,
    php: Child,
    public: Forward,
    admin: Forward,
    cms: Forward,
}

impl NetNode {
    /// Starts the CMS, then the node with `extra` appended to its config; waits until both answer.
    pub async fn start(
        ns: &str,
        ip: Ipv4Addr,
        name: &str,
        role: &str,
        dir: &Path,
        extra: &str,
    ) -> NetNode {
        let router = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cms/router.php");
        let cms_dir = dir.join(format!("{name}-cms"));
        std::fs::create_dir_all(&cms_dir).unwrap();
        let php = Command::new("ip")
            .args(["netns", "exec", ns, "php"])
            // Room for C4's large upload (the fixture's php.ini defaults are 2M / 8M).
            .args([
                "-d",
                "upload_max_filesize=64M",
                "-d",
                "post_max_size=64M",
                "-S",
            ])
            .arg(format!("127.0.0.1:{CMS_PORT}"))
            .arg(&router)
            .env("CMS_DATA_DIR", &cms_dir)
            .env("PHP_CLI_SERVER_WORKERS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let data = dir.join(name);
        let config_path = dir.join(format!("{name}.toml"));
        let log_path = dir.join(format!("{name}.log"));
        std::fs::write(
            &config_path,
            format!(
                "[node]\nname = \"{name}\"\nrole = \"{role}\"\ndata_dir = \"{}\"\n\n[public]\nlisten = \"127.0.0.1:{PUBLIC_PORT}\"\n\n[origin]\nurl = \"http://127.0.0.1:{CMS_PORT}\"\n\n[admin]\nlisten = \"127.0.0.1:{ADMIN_PORT}\"\n\n{extra}\n",
                data.display()
            ),
        )
        .unwrap();
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let cms = Forward::spawn(ns, loopback(CMS_PORT));
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = Client::new(cms.addr);
        while probe
            .try_send(get(&probe, "/healthz"))
            .await
            .map(|r| r.status)
            != Ok(200)
        {
            assert!(Instant::now() < deadline, "{name}: php -S did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let node = Command::new("ip")
            .args(["netns", "exec", ns, super::node::binary(), "run", "-c"])
            .arg(&config_path)
            .env("COPYIST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let mut n = NetNode {
            name: name.into(),
            ns: ns.into(),
            ip,
            config_path,
            log_path,
            node,
            php,
            public: Forward::spawn(ns, loopback(PUBLIC_PORT)),
            admin: Forward::spawn(ns, loopback(ADMIN_PORT)),
            cms,
        };
        let admin = n.admin_client();
        loop {
            if let Ok(Some(status)) = n.node.try_wait() {
                panic!("{name} exited at start with {status}: {}", n.log());
            }
            if admin
                .try_send(get(&admin, "/api/v1/status"))
                .await
                .map(|r| r.status)
                == Ok(200)
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not come up: {}",
                n.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `copyist run` process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.node.id()
    }

    /// Peak resident memory of the node process so far, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap();
        kb * 1024
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(self.public.addr)
    }

    pub fn admin_client(&self) -> Client {
        Client::new(self.admin.addr)
    }

    pub async fn api(&self, path: &str) -> Value {
        let r = self.admin_client().get(path).await;
        assert_eq!(r.status, 200, "{}: {path}: {}", self.name, r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    pub async fn status(&self) -> Value {
        self.api("/api/v1/status").await
    }

    /// The CMS's canonical state, read from the CMS directly.
    pub async fn dump(&self) -> String {
        Client::new(self.cms.addr).get("/dump").await.text()
    }
}

fn get(c: &Client, path: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    c.request("GET", path).body(Default::default()).unwrap()
}

impl Drop for NetNode {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
        kill_group(&mut self.php);
    }
}

/// A writer and mirrors, each in its own namespace on one LAN, with certificates naming their
/// LAN addresses. Fields drop in order: nodes first, then the namespaces.
pub struct NetCluster {
    pub writer: NetNode,
    pub mirrors: Vec<NetNode>,
    pub dir: tempfile::TempDir,
    pub lan: Lan,
}

impl NetCluster {
    /// `extra` is appended to every node's config (e.g. `[health]`).
    pub async fn start(mirrors: usize, extra: &str) -> NetCluster {
        super::init_logs();
        let mut lan = Lan::new();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        copyist::tls::init_ca(&certs).unwrap();
        let (w_ns, w_ip) = lan.add_host("w");
        copyist::tls::issue_node(&certs, "writer", &[w_ip.to_string()]).unwrap();
        let rep = |name: &str, ip: Ipv4Addr| {
            let listen = format!("{ip}:{REPLICATION_PORT}");
            super::process_cluster::replication_section_at(&certs, name, &listen)
        };
        let mut nodes = Vec::new();
        let mut sections = String::new();
        for i in 1..=mirrors {
            let name = format!("mirror-{i}");
            let (ns, m_ip) = lan.add_host(&format!("m{i}"));
            copyist::tls::issue_node(&certs, &name, &[m_ip.to_string()]).unwrap();
            let extra = format!(
                "{}\n[writer]\nname = \"writer\"\nurl = \"https://{w_ip}:{REPLICATION_PORT}\"\n\n{extra}\n",
                rep(&name, m_ip)
            );
            nodes.push(NetNode::start(&ns, m_ip, &name, "mirror", dir.path(), &extra).await);
            sections.push_str(&format!(
                "[[mirrors]]\nname = \"{name}\"\nurl = \"https://{m_ip}:{REPLICATION_PORT}\"\n\n"
            ));
        }
        let extra = format!("{}\n{sections}\n{extra}\n", rep("writer", w_ip));
        let writer = NetNode::start(&w_ns, w_ip, "writer", "writer", dir.path(), &extra).await;
        NetCluster {
            writer,
            mirrors: nodes,
            dir,
            lan,
        }
    }

    pub async fn last_seq(&self) -> u64 {
        self.writer.status().await["last_seq"].as_u64().unwrap()
    }

    /// Waits until mirror `i` applied everything the writer logged; panics if it halts.
    pub async fn wait_caught_up(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let m = &self.mirrors[i];
        loop {
            let last = self.last_seq().await;
            let s = m.status().await;
            assert!(s["halt"].is_null(), "{} halted: {}", m.name, s["halt"]);
            if s["applied_seq"].as_u64().unwrap() >= last {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} stuck at {} of {last}: {}",
                m.name,
                s["applied_seq"],
                m.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
