//! Who may drive a mirror (RELIABILITY.md G, invariants AUTH, ONCE, HALT, UNKNOWN): clients
//! without a certificate, with one from another CA or with the wrong name are refused before any
//! request reaches the apply handler; the real writer's forged entries are refused and its
//! replays answered from the record; replication paths do not exist on the public port; an
//! in-doubt entry blocks shipping until an operator resolves it; a halt survives a restart.
//!
//! Every refusal test also runs a null control: the same call with the writer's certificate gets
//! through, so a refusal is the certificate's doing, not a broken client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use copyist::blobs::BlobHash;
use copyist::config::ReplicationConfig;
use copyist::log::{BodyRef, Entry, EntryState, Outcome, RequestRecord, Seq};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::support::cluster::{Certs, Member, TestCluster};
use crate::support::node::Opts;
use crate::support::{Client, PhpCms, TestNode};

const STATE: &str = "/_copyist/v1/state";

// === a replication client, by hand ===

/// One request over TLS 1.3 + HTTP/2 to a replication listener, as `server_name` would be
/// addressed by a writer. `Err` when the handshake, the HTTP/2 preface or the request fails:
/// with TLS 1.3 the client finishes its side of the handshake before the server has checked its
/// certificate, so a refused client certificate often shows only as a failed first request.
/// Every step has a deadline, so a server that hangs fails the caller instead of the suite.
async fn rep_call(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes), String> {
    let step = Duration::from_secs(10);
    let timed = |what: &'static str| move |_| format!("{what}: timed out");
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let tls = tokio::time::timeout(step, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(timed("TLS handshake"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the replication listener speaks h2 only"
    );
    let (mut send, conn) = tokio::time::timeout(
        step,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .map_err(timed("HTTP/2 handshake"))?
    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(format!("https://{server_name}{path}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(step, send.send_request(req))
        .await
        .map_err(timed("request"))?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(step, resp.into_body().collect())
        .await
        .map_err(timed("response body"))?
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// TLS 1.3, ALPN h2, trusting the CA in `ca`; presenting `cert`/`key` when given.
fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// What the real writer's shipper uses: `copyist::tls::replication_client` on its files.
fn writer_config(certs: &Path) -> Arc<ClientConfig> {
    copyist::tls::replication_client(&ReplicationConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: certs.join("ca.pem"),
        cert: certs.join("writer.pem"),
        key: certs.join("writer.key"),
        window: 1,
        retry_max: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn pem(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

// === entries, by hand ===

/// An entry as a writer would ship it: `POST /articles` with `title`, accepted with 303.
fn article_entry(seq: u64, title: &str) -> Entry {
    let body = format!("title={title}&body=forged").into_bytes();
    let hash = BlobHash::from(blake3::hash(&body));
    Entry {
        seq: Seq(seq),
        state: EntryState::Accepted,
        request: RequestRecord {
            method: "POST".into(),
            target: "/articles".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("host".into(), b"127.0.0.1".to_vec()),
                (
                    "content-type".into(),
                    b"application/x-www-form-urlencoded".to_vec(),
                ),
                ("content-length".into(), body.len().to_string().into_bytes()),
            ],
            client_addr: "192.0.2.7".into(),
            request_id: format!("forged-{seq}"),
            received_unix_ms: 1,
            body_len: body.len() as u64,
            body_hash: hash,
            body: BodyRef::Inline(body),
            multipart: None,
        },
        outcome: Some(Outcome {
            status: 303,
            location: Some(format!("/article/{seq}")),
            set_cookies: Vec::new(),
            body_digest: BlobHash::of_empty(),
            body_len: 0,
            duration_us: 1000,
            error: None,
            fields: Vec::new(),
            masked_digest: None,
        }),
        settled_unix_ms: Some(2),
        writer_state: None,
        mirror_outcome: None,
        halt: None,
        audit: Vec::new(),
    }
}

fn encode(entry: &Entry) -> Vec<u8> {
    copyist::wire::encode_entry(entry).unwrap()
}

/// `POST entries/SEQ_IN_PATH` with `entry` to mirror-1.
async fn post_entry(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    seq_in_path: u64,
    entry: &Entry,
) -> Result<(u16, Bytes), String> {
    let path = copyist::wire::entry_path(seq_in_path);
    rep_call(addr, config, "mirror-1", "POST", &path, encode(entry)).await
}

// === helpers ===

async fn applied_seq(m: &Member) -> u64 {
    m.status().await["applied_seq"].as_u64().unwrap()
}

/// Entries in a node's log (newest first), as the admin API lists them.
async fn log_len(node: &TestNode) -> usize {
    let v = node.api("/api/v1/log").await;
    v.as_array()
        .or_else(|| v["entries"].as_array())
        .unwrap_or_else(|| panic!("log listing: {v}"))
        .len()
}

async fn run_cli(config: PathBuf, args: &[&str]) -> (i32, String, String) {
    crate::support::node::cli_async(&config, args).await
}

/// The writer's view of its only mirror.
async fn writer_view(writer: &Member) -> serde_json::Value {
    writer.status().await["mirrors"][0].clone()
}

/// Asserts every `(method, path)` fails to get through to mirror-1 with `config`, and that
/// nothing changed: the mirror's CMS dump, its applied_seq (0) and its log (empty).
async fn assert_refused(cluster: &TestCluster, config: Arc<ClientConfig>, who: &str) {
    let m = &cluster.mirrors[0];
    let rep = m.node.replication.unwrap();
    let before = m.dump().await;
    let calls = [
        ("GET", STATE.to_string(), Vec::new()),
        (
            "POST",
            copyist::wire::entry_path(1),
            encode(&article_entry(1, "intruder")),
        ),
    ];
    for (method, path, body) in calls {
        let result = rep_call(rep, config.clone(), "mirror-1", method, &path, body).await;
        assert!(
            result.is_err(),
            "{who}: {method} {path} got through: {result:?}"
        );
        let err = result.unwrap_err();
        assert!(
            !err.contains("timed out"),
            "{who}: {method} {path} was not refused but hung: {err}"
        );
    }
    assert_eq!(m.dump().await, before, "{who}: the mirror's CMS changed");
    assert_eq!(
        applied_seq(m).await,
        0,
        "{who}: the mirror applied something"
    );
    assert_eq!(
        log_len(&m.node).await,
        0,
        "{who}: the mirror logged something"
    );
    assert!(
        !before.contains("intruder"),
        "vacuity: the dump must not already hold it"
    );
}

/// The null control: the writer's own certificate gets `GET state` through.
async fn assert_writer_gets_state(cluster: &TestCluster) {
    let rep = cluster.mirrors[0].node.replication.unwrap();
    let (status, body) = rep_call(
        rep,
        writer_config(cluster.certs.path()),
        "mirror-1",
        "GET",
        STATE,
        Vec::new(),
    )
    .await
    .expect("the writer's certificate must be accepted");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let state: copyist::wire::PeerState = serde_json::from_slice(&body).unwrap();
    assert_eq!(state.node, "mirror-1");
    assert_eq!(state.role, "mirror");
}

// === 1-3: clients the mirror must refuse ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_cannot_reach_the_apply_handler() {
    let cluster = TestCluster::start(1).await;
    let ca = cluster.certs.path().join("ca.pem");
    assert_refused(&cluster, client_config(&ca, None), "no certificate").await;
    assert_writer_gets_state(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_even_with_the_writers_name() {
    let cluster = TestCluster::start(1).await;
    // Another CA, issuing a certificate that claims to be "writer" (and 127.0.0.1).
    let other = tempfile::tempdir().unwrap();
    copyist::tls::init_ca(other.path()).unwrap();
    copyist::tls::issue_node(other.path(), "writer", &["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = pem(other.path(), "writer");
    // It trusts the real cluster CA, so the server side of the handshake verifies: what is
    // refused is the client's certificate alone.
    let ca = cluster.certs.path().join("ca.pem");
    let config = client_config(&ca, Some((&cert, &key)));
    assert_refused(&cluster, config, "other CA").await;
    assert_writer_gets_state(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_the_cluster_ca_with_the_wrong_name_is_refused() {
    let cluster = TestCluster::start(1).await;
    let dir = cluster.certs.path();
    for name in ["mirror-2", "intruder"] {
        copyist::tls::issue_node(dir, name, &["127.0.0.1".to_string()]).unwrap();
    }
    let ca = dir.join("ca.pem");
    // Another mirror, a stranger, and the mirror's own certificate: none of them is "writer".
    for name in ["mirror-2", "intruder", "mirror-1"] {
        let (cert, key) = pem(dir, name);
        let config = client_config(&ca, Some((&cert, &key)));
        assert_refused(&cluster, config, name).await;
    }
    assert_writer_gets_state(&cluster).await;
    // And the real writer still ships to it afterwards.
    let w = cluster.writer.client();
    assert_eq!(w.post_form("/articles", "title=legit").await.seq(), Some(1));
    cluster.wait_converged().await;
    assert_eq!(cluster.mirrors[0].dump().await, cluster.writer.dump().await);
}

// === 4: the authenticated writer's forged and replayed entries ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_are_refused_and_a_replayed_one_is_answered_from_the_record() {
    let cluster = TestCluster::start(1).await;
    let m = &cluster.mirrors[0];
    let rep = m.node.replication.unwrap();
    let config = writer_config(cluster.certs.path());
    let w = cluster.writer.client();
    assert_eq!(w.post_form("/articles", "title=real").await.seq(), Some(1));
    cluster.wait_converged().await;
    let dump = m.dump().await;
    assert_eq!(dump, cluster.writer.dump().await);
    assert!(dump.contains("\"real\""), "{dump}");

    // Forged: the body does not hash to the recorded body_hash.
    let mut forged = article_entry(2, "forged");
    if let BodyRef::Inline(bytes) = &mut forged.request.body {
        *bytes = b"title=tampered&body=forged".to_vec();
    }
    let (status, body) = post_entry(rep, config.clone(), 2, &forged).await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // A blob reference that is not the recorded hash.
    let mut other_blob = article_entry(2, "forged");
    other_blob.request.body = BodyRef::Blob(BlobHash::from(blake3::hash(b"something else")));
    let (status, body) = post_entry(rep, config.clone(), 2, &other_blob)
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // An entry whose sequence number is not the one in its path.
    let (status, body) = post_entry(rep, config.clone(), 3, &article_entry(2, "forged"))
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // Entries the writer never ships (not settled).
    for state in [EntryState::InDoubt, EntryState::Pending] {
        let mut e = article_entry(2, "forged");
        e.state = state;
        let (status, body) = post_entry(rep, config.clone(), 2, &e).await.unwrap();
        assert_eq!(status, 400, "{state:?}: {}", String::from_utf8_lossy(&body));
    }
    // Bytes that are no entry at all.
    let garbage = rep_call(
        rep,
        config.clone(),
        "mirror-1",
        "POST",
        &copyist::wire::entry_path(2),
        b"\xff\xff\xff not postcard".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(garbage.0, 400);
    assert_eq!(
        m.dump().await,
        dump,
        "a forged entry changed the mirror's CMS"
    );
    assert_eq!(applied_seq(m).await, 1);
    assert!(
        m.node.admin_client().get("/api/v1/log/2").await.status == 404,
        "a refused entry must leave no trace in the mirror's log"
    );

    // Replayed: entry 1 again (the same request) gets the recorded answer and never reaches the
    // CMS (ONCE); another request under number 1 (a stale or second writer) is refused as
    // conflicting_record (RELIABILITY.md D9), and never reaches the CMS either.
    let recorded = m.node.api("/api/v1/log/1").await;
    assert_eq!(recorded["state"], "applied");
    let (status, body) = post_entry(rep, config.clone(), 1, &article_entry(1, "replayed"))
        .await
        .unwrap();
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("conflicting_record seq=1"));
    let mut same = article_entry(1, "real");
    if let BodyRef::Inline(bytes) = &mut same.request.body {
        *bytes = b"title=real".to_vec();
        same.request.body_len = bytes.len() as u64;
        same.request.body_hash = BlobHash::from(blake3::hash(bytes));
    }
    for _ in 0..2 {
        let (status, body) = post_entry(rep, config.clone(), 1, &same).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["seq"], 1);
        assert_eq!(answer["state"], "applied", "{answer}");
        assert!(answer["halt"].is_null(), "{answer}");
        let (got, want) = (&answer["mirror_outcome"], &recorded["mirror_outcome"]);
        for field in [
            "status",
            "location",
            "body_digest",
            "body_len",
            "duration_us",
        ] {
            assert_eq!(got[field], want[field], "{field}: {answer} vs {recorded}");
        }
        assert_eq!(got["location"], "/article/1");
    }
    assert_eq!(m.dump().await, dump, "a replayed entry reached the CMS");
    assert!(!m.dump().await.contains("replayed"));
    assert_eq!(applied_seq(m).await, 1);

    // The mirror is not poisoned: the writer's real entry 2 is applied as usual.
    assert_eq!(w.post_form("/articles", "title=next").await.seq(), Some(2));
    cluster.wait_converged().await;
    assert_eq!(m.dump().await, cluster.writer.dump().await);
    assert!(!m.dump().await.contains("forged"));
}

// === 5: no replication on the public port ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_paths_on_the_public_port_are_404_and_change_nothing() {
    let cluster = TestCluster::start(1).await;
    let m = &cluster.mirrors[0];
    let (w_dump, m_dump) = (cluster.writer.dump().await, m.dump().await);
    let entry = encode(&article_entry(1, "via-public"));
    let hash = BlobHash::from(blake3::hash(b"x"));
    let calls: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", copyist::wire::entry_path(1), entry.clone()),
        ("GET", STATE.to_string(), Vec::new()),
        (
            "POST",
            "/_copyist/v1/control".to_string(),
            br#"{"action":"skip","seq":1,"reason":"x","by":"x"}"#.to_vec(),
        ),
        ("PUT", format!("/_copyist/v1/blobs/{hash}"), b"x".to_vec()),
    ];
    for (node, addr) in [
        ("writer", cluster.writer.node.public),
        ("mirror-1", m.node.public),
    ] {
        let c = Client::new(addr);
        for (method, path, body) in &calls {
            let req = c
                .request(method, path)
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let r = c.send(req).await;
            assert_eq!(r.status, 404, "{node}: {method} {path}: {}", r.text());
        }
    }
    assert_eq!(
        cluster.writer.node.last_seq().await,
        0,
        "captured as a write"
    );
    assert_eq!(log_len(&cluster.writer.node).await, 0);
    assert_eq!(cluster.writer.dump().await, w_dump);
    assert_eq!(m.dump().await, m_dump);
    assert_eq!(applied_seq(m).await, 0);
    assert_eq!(log_len(&m.node).await, 0);
    // Null control: the public port does capture an ordinary write, and it replicates.
    let w = cluster.writer.client();
    assert_eq!(w.post_form("/articles", "title=ok").await.seq(), Some(1));
    cluster.wait_converged().await;
    assert_ne!(m.dump().await, m_dump);
}

// === a writer and one mirror built by hand (per-node origin options, a relay) ===

/// A TCP relay whose upstream can change: the writer's `[[mirrors]] url` points at the relay,
/// which stays put while the mirror behind it restarts on a new port 0. (A fixed port picked by
/// binding :0 and releasing it could be taken by another test while the mirror is down; the
/// support ChaosProxy cannot change its upstream.) It counts connections made upstream, which
/// proves the writer talked to the restarted mirror.
struct Relay {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    upstream_connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn spawn(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let upstream_connections = Arc::new(AtomicU64::new(0));
        let (up, count) = (upstream.clone(), upstream_connections.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let target = *up.lock().unwrap();
                        let count = count.clone();
                        conns.spawn(async move {
                            // Upstream down: dropping the client closes it.
                            if let Ok(mut server) = TcpStream::connect(target).await {
                                count.fetch_add(1, Ordering::SeqCst);
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                }
            }
        });
        Relay {
            addr,
            upstream,
            upstream_connections,
            task,
        }
    }

    fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    fn connections(&self) -> u64 {
        self.upstream_connections.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The task owns the JoinSet of connections: aborting it closes them all.
        self.task.abort();
    }
}

struct Pair {
    certs: Certs,
    writer: Member,
    mirror: Member,
    /// The mirror's `extra` config, to restart it with the same.
    mirror_extra: String,
    relay: Option<Relay>,
}

/// A writer (whose `[origin]` gets `writer_origin`) shipping to "mirror-1", through a [`Relay`]
/// when asked.
async fn pair(writer_origin: &str, relay: bool) -> Pair {
    let certs = Certs::new(&["writer", "mirror-1"]);
    let mirror_cms = PhpCms::start();
    let mirror_extra = format!(
        "{}\n[writer]\nname = \"writer\"\nurl = \"https://127.0.0.1:9\"\n",
        certs.replication("mirror-1")
    );
    let mirror_node = TestNode::start_opts(&mirror_cms.url(), mirror_opts(&mirror_extra)).await;
    let rep = mirror_node.replication.unwrap();
    let relay = if relay {
        Some(Relay::spawn(rep).await)
    } else {
        None
    };
    let target = relay.as_ref().map_or(rep, |r| r.addr);
    let writer_cms = PhpCms::start();
    let writer_extra = format!(
        "{}\n[[mirrors]]\nname = \"mirror-1\"\nurl = \"https://127.0.0.1:{}\"\n",
        certs.replication("writer"),
        target.port()
    );
    let writer_node = TestNode::start_opts(
        &writer_cms.url(),
        Opts {
            name: "writer",
            origin: writer_origin,
            extra: &writer_extra,
            ..Opts::default()
        },
    )
    .await;
    Pair {
        certs,
        writer: Member {
            name: "writer".into(),
            node: writer_node,
            cms: writer_cms,
        },
        mirror: Member {
            name: "mirror-1".into(),
            node: mirror_node,
            cms: mirror_cms,
        },
        mirror_extra,
        relay,
    }
}

fn mirror_opts(extra: &str) -> Opts<'_> {
    Opts {
        name: "mirror-1",
        role: "mirror",
        extra,
        ..Opts::default()
    }
}

// === 6: in-doubt blocks shipping until resolved ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_entry_blocks_shipping_until_resolved_then_the_mirror_converges() {
    let p = pair("response_timeout = \"1s\"", false).await;
    let w = p.writer.client();
    assert_eq!(
        w.post_form("/articles", "title=before").await.seq(),
        Some(1)
    );
    crate::assert_eventually!(applied_seq(&p.mirror).await == 1, "mirror never applied 1");

    // The CMS commits the row, then sleeps past the writer's 1 s origin timeout.
    let r = w.post_form("/slow?ms=3000", "x=1").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(
        p.writer.node.last_seq().await,
        2,
        "the in-doubt write was logged"
    );
    let e = p.writer.node.api("/api/v1/log/2").await;
    assert_eq!(e["state"], "in-doubt", "{e}");

    // Later writes are accepted on the writer ...
    for (i, title) in ["after-a", "after-b"].iter().enumerate() {
        let r = w.post_form("/articles", &format!("title={title}")).await;
        assert_eq!(r.status, 303, "{}", r.text());
        assert_eq!(r.seq(), Some(3 + i as u64));
    }
    // ... but shipping waits at 2.
    crate::assert_eventually!(
        {
            let v = writer_view(&p.writer).await;
            v["blocked_at"] == 2 && v["state"] == "blocked"
        },
        "the writer never showed mirror-1 blocked at 2: {}",
        writer_view(&p.writer).await
    );
    assert_eq!(
        applied_seq(&p.mirror).await,
        1,
        "applied past the in-doubt entry"
    );
    for seq in 2..=4 {
        let r = p
            .mirror
            .node
            .admin_client()
            .get(&format!("/api/v1/log/{seq}"))
            .await;
        assert_eq!(
            r.status,
            404,
            "entry {seq} reached the mirror: {}",
            r.text()
        );
    }
    let m_dump = p.mirror.dump().await;
    assert!(
        !m_dump.contains("after-a") && !m_dump.contains("\"slow\""),
        "{m_dump}"
    );
    // UNKNOWN: nothing resolved it behind the operator's back.
    let e = p.writer.node.api("/api/v1/log/2").await;
    assert_eq!(e["state"], "in-doubt", "{e}");
    let (code, out, err) = run_cli(p.writer.node.config_path(), &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("resolve 2"),
        "status must say what to do: {out}"
    );

    // The writer's CMS did insert the slow row: the operator says so.
    assert!(p.writer.dump().await.contains("\"slow\""));
    let (code, out, err) = run_cli(
        p.writer.node.config_path(),
        &["resolve", "2", "--applied", "--reason", "checked"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let e = p.writer.node.api("/api/v1/log/2").await;
    assert_eq!(e["state"], "accepted", "{e}");
    // The operator's decision is on record.
    let (code, out, err) = run_cli(p.writer.node.config_path(), &["log", "show", "2"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("resolve-applied"))
        .unwrap_or_else(|| panic!("no audit record in `log show 2`: {out}"));
    assert!(line.contains("checked"), "{line}");
    let e = p.writer.node.api("/api/v1/log/2").await;
    assert_eq!(e["audit"][0]["action"], "resolve-applied");
    assert_eq!(e["audit"][0]["reason"], "checked");

    // The mirror applies 2 (inserting the slow row too) and the rest, and converges.
    let last = p.writer.node.last_seq().await;
    assert_eq!(last, 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = p.mirror.status().await;
        assert!(
            s["halt"].is_null(),
            "mirror-1 halted replaying the resolved entry: {}",
            s["halt"]
        );
        if s["applied_seq"].as_u64().unwrap() >= last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mirror-1 never reached {last}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.mirror.dump().await, p.writer.dump().await);
    for seq in 2..=4 {
        let e = p.mirror.node.api(&format!("/api/v1/log/{seq}")).await;
        assert_eq!(e["state"], "applied", "seq {seq}: {e}");
    }
    crate::assert_eventually!(
        writer_view(&p.writer).await["blocked_at"].is_null(),
        "still blocked: {}",
        writer_view(&p.writer).await
    );
}

// === 7: a halt survives a restart ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_mirror_stays_halted_across_a_restart() {
    let Pair {
        certs,
        writer,
        mirror,
        mirror_extra,
        relay,
    } = pair("", true).await;
    let relay = relay.unwrap();
    mirror.dump().await; // the fixture creates its schema on first use
    mirror
        .cms
        .sql("INSERT INTO articles (title, body) VALUES ('hand', 'edit')");
    let w = writer.client();
    assert_eq!(w.post_form("/articles", "title=one").await.seq(), Some(1));
    crate::assert_eventually!(
        !mirror.status().await["halt"].is_null(),
        "mirror-1 never halted"
    );
    let halt = mirror.status().await["halt"].clone();
    assert_eq!(halt["seq"], 1, "{halt}");
    assert_eq!(halt["reason"], "location_mismatch", "{halt}");
    let dump = mirror.dump().await;

    // Stop the mirror; the writer notices it is gone.
    let Member { name, node, cms } = mirror;
    let dir = node.stop().await;
    crate::assert_eventually!(
        writer_view(&writer).await["state"] == "connecting",
        "the writer never noticed the mirror was down: {}",
        writer_view(&writer).await
    );
    // Writes go on while it is down.
    assert_eq!(w.post_form("/articles", "title=two").await.seq(), Some(2));

    // Same data dir, same config.
    let node = TestNode::start_in(dir, &cms.url(), mirror_opts(&mirror_extra)).await;
    let mirror = Member { name, node, cms };
    let s = mirror.status().await;
    assert_eq!(s["halt"], halt, "the halt did not survive the restart: {s}");
    assert_eq!(s["applied_seq"], 0);
    let seen = relay.connections();
    relay.retarget(mirror.node.replication.unwrap());

    // The writer reaches the restarted mirror, sees the halt and ships nothing.
    assert_eq!(w.post_form("/articles", "title=three").await.seq(), Some(3));
    crate::assert_eventually!(
        {
            let v = writer_view(&writer).await;
            relay.connections() > seen && v["state"] == "halted" && v["last_error"].is_null()
        },
        "the writer never saw the restarted mirror halted: {}",
        writer_view(&writer).await
    );
    assert_eq!(writer_view(&writer).await["halt"], halt);
    // The writer's own check: its status still reports the same halt.
    let rep = mirror.node.replication.unwrap();
    let (status, body) = rep_call(
        rep,
        writer_config(certs.path()),
        "mirror-1",
        "GET",
        STATE,
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let state: copyist::wire::PeerState = serde_json::from_slice(&body).unwrap();
    assert_eq!(state.applied_seq, 0);
    assert_eq!(state.halt.as_ref().map(|h| h.seq.0), Some(1));
    // Even the real writer sending the next entry by hand is refused while halted (423).
    let (status, body) = rep_call(
        rep,
        writer_config(certs.path()),
        "mirror-1",
        "POST",
        &copyist::wire::entry_path(1),
        encode(&article_entry(1, "pushed")),
    )
    .await
    .unwrap();
    assert_eq!(status, 423, "{}", String::from_utf8_lossy(&body));

    let s = mirror.status().await;
    assert_eq!(s["applied_seq"], 0, "applied after the restart: {s}");
    assert_eq!(s["halt"], halt);
    assert_eq!(mirror.dump().await, dump, "the halted mirror's CMS changed");
    for seq in 2..=3 {
        let r = mirror
            .node
            .admin_client()
            .get(&format!("/api/v1/log/{seq}"))
            .await;
        assert_eq!(r.status, 404, "entry {seq} reached the halted mirror");
    }
    let e = mirror.node.api("/api/v1/log/1").await;
    assert_eq!(e["state"], "diverged", "{e}");
}

// === 7: out of order (RELIABILITY.md G3) ===

/// The writer's own certificate sends entry N+2 before N+1: N+2 waits for its turn (or, too far
/// ahead, is refused as a gap naming the expected number) and is never applied before N+1;
/// once N+1 arrives both are applied, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_ahead_of_its_turn_is_never_applied_before_its_predecessor() {
    let cluster = TestCluster::start(1).await;
    let m = &cluster.mirrors[0];
    let rep = m.node.replication.unwrap();
    let config = writer_config(cluster.certs.path());
    let w = cluster.writer.client();
    assert_eq!(w.post_form("/articles", "title=first").await.seq(), Some(1));
    cluster.wait_converged().await;
    let dump = m.dump().await;

    // Far past the window: refused at once as a gap, naming what the mirror expects.
    let (status, body) = post_entry(rep, config.clone(), 1000, &article_entry(1000, "far"))
        .await
        .unwrap();
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let gap: copyist::wire::Gap = serde_json::from_slice(&body).unwrap();
    assert_eq!(gap.expected, 2);

    // N+2 within the window: held, not applied, while N+1 is missing.
    let early = {
        let config = config.clone();
        tokio::spawn(async move { post_entry(rep, config, 3, &article_entry(3, "third")).await })
    };
    let watch_until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < watch_until {
        assert_eq!(applied_seq(m).await, 1, "N+2 was applied before N+1");
        assert!(!early.is_finished(), "N+2 was answered before N+1 arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.dump().await, dump, "N+2 reached the CMS before N+1");
    assert_eq!(
        m.node.admin_client().get("/api/v1/log/3").await.status,
        404,
        "N+2 is in the mirror's log before N+1"
    );

    // N+1 arrives: applied, then N+2 after it.
    let (status, body) = post_entry(rep, config.clone(), 2, &article_entry(2, "second"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, body) = early.await.unwrap().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["state"], "applied", "{answer}");
    assert_eq!(applied_seq(m).await, 3);
    let dump = m.dump().await;
    let (second, third) = (
        dump.find("\"second\"").unwrap(),
        dump.find("\"third\"").unwrap(),
    );
    assert!(second < third, "applied out of order: {dump}");
    assert!(
        dump.contains("{\"body\":\"forged\",\"id\":2,\"title\":\"second\"}"),
        "{dump}"
    );
    assert!(!dump.contains("\"far\""));
}
