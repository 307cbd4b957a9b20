//! Secrets at rest (RELIABILITY.md I2, invariant NOSECRET): with `[log] encryption_key_file`
//! on every node, canaries sent in a login form, an article, an inline multipart upload and a
//! blob-sized one appear in no file under either node's data directory (sled's files, blobs,
//! temp dirs: raw bytes), while replay still works. The control sends the same traffic to a
//! cluster without keys and finds every canary on both nodes, so the scan would see a leak.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use copyist::config::Config;
use copyist::node::Node;

use crate::support::client::multipart;
use crate::support::cluster::{ClusterOpts, TestCluster};
use crate::support::node::{binary, config_text, Opts};
use crate::support::{StubOrigin, TestNode};

/// One canary per way client data reaches the disk.
struct Canaries {
    /// A password in a (failed: rejected, still logged and shipped) login form.
    login: String,
    /// An accepted form, replayed on the mirror.
    article: String,
    /// A multipart text field and a small file: inline in the log entry.
    field: String,
    small_file: String,
    /// A file in an upload too large to stay inline: a blob.
    big_file: String,
}

impl Canaries {
    fn new() -> Canaries {
        let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
        let rand = &blake3::hash(seed.as_bytes()).to_hex()[..16];
        let canary = |tag: &str| format!("CANARY-{rand}-{tag}");
        Canaries {
            login: canary("login"),
            article: canary("article"),
            field: canary("field"),
            small_file: canary("small-file"),
            big_file: canary("big-file"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.login,
            &self.article,
            &self.field,
            &self.small_file,
            &self.big_file,
        ]
    }
}

/// 300 KiB (five 64 KiB sealed segments) with the canary at the start, across the first
/// segment boundary and at the end.
fn big_file(canary: &str) -> Vec<u8> {
    let mut data: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let n = canary.len();
    for at in [0, 64 * 1024 - n / 2, data.len() - n] {
        data[at..at + n].copy_from_slice(canary.as_bytes());
    }
    data
}

/// Sends the traffic, checks the writer's answers, waits for the mirror and compares the two
/// CMSs' state.
async fn send_canaries(cluster: &TestCluster, canaries: &Canaries) {
    let c = cluster.writer.client();
    let form = format!("user=admin&password={}&csrf=0", canaries.login);
    let login = c.post_form("/login", &form).await;
    assert_eq!(login.status, 403, "{}", login.text());
    assert!(login.seq().is_some(), "a failed login is still logged");

    let form = format!("title=t&body={}", canaries.article);
    let article = c.post_form("/articles", &form).await;
    assert_eq!(article.status, 303, "{}", article.text());

    let fields = [("title", canaries.field.as_str())];
    let small = multipart(
        "B1",
        &fields,
        &[("file", "a.txt", canaries.small_file.as_bytes())],
    );
    assert!(small.len() < 16 * 1024, "stays inline");
    let up = c
        .post("/upload", "multipart/form-data; boundary=B1", small)
        .await;
    assert_eq!(up.status, 303, "{}", up.text());

    let big = multipart(
        "B2",
        &[],
        &[("file", "b.bin", &big_file(&canaries.big_file))],
    );
    let up = c
        .post("/upload", "multipart/form-data; boundary=B2", big)
        .await;
    assert_eq!(up.status, 303, "{}", up.text());
    assert_eq!(up.seq(), Some(4));

    cluster.wait_converged().await;
    let (writer, mirror) = (cluster.writer.dump().await, cluster.mirrors[0].dump().await);
    assert_eq!(writer, mirror, "replay on the mirror gave another state");
    assert!(
        writer.contains(&canaries.article),
        "the CMS got the plaintext"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue; // removed while walking (a temp dir)
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

/// The files under `dir` whose raw bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// Which canaries are found under each node's data directory: (node, canary, files).
fn scan(dirs: &[(&str, PathBuf)], canaries: &Canaries) -> Vec<(String, String, Vec<PathBuf>)> {
    let mut found = Vec::new();
    for (node, dir) in dirs {
        for sub in ["log", "blobs"] {
            let n = files_under(&dir.join(sub)).len();
            assert!(n > 0, "{node}: nothing to scan in {}/{sub}", dir.display());
        }
        for canary in canaries.all() {
            let files = files_containing(dir, canary);
            if !files.is_empty() {
                found.push((node.to_string(), canary.to_string(), files));
            }
        }
    }
    found
}

fn data_dirs(cluster: &TestCluster) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("writer", cluster.writer.node.config.node.data_dir.clone()),
        (
            "mirror",
            cluster.mirrors[0].node.config.node.data_dir.clone(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_no_canary_is_stored_in_the_clear_and_replay_still_works() {
    let cluster = TestCluster::start_opts(ClusterOpts {
        mirrors: 1,
        encrypt_at_rest: true,
        ..ClusterOpts::default()
    })
    .await;
    let canaries = Canaries::new();
    send_canaries(&cluster, &canaries).await;
    let dirs = data_dirs(&cluster);
    for (node, dir) in &dirs {
        let sealed_blobs = files_under(&dir.join("blobs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "enc"))
            .count();
        assert!(
            sealed_blobs >= 1,
            "{node}: the upload was not stored as a sealed blob"
        );
    }
    let found = scan(&dirs, &canaries);
    assert!(found.is_empty(), "plaintext at rest: {found:#?}");

    // What is sealed on disk reads back whole through the node: the admin API's entry and
    // blob, on the writer and on the mirror.
    for member in [&cluster.writer, &cluster.mirrors[0]] {
        let entry = member.node.api("/api/v1/log/4").await;
        let hash = entry["body_hash"].as_str().unwrap().to_owned();
        let blob = member
            .node
            .admin_client()
            .get(&format!("/api/v1/blob/{hash}"))
            .await;
        assert_eq!(blob.status, 200, "{}", blob.text());
        assert_eq!(blake3::hash(&blob.body).to_hex().as_str(), hash);
        assert!(String::from_utf8_lossy(&blob.body).contains(&canaries.big_file));
    }

    // And after a clean stop (sled writes its last state on the way out).
    let TestCluster {
        writer, mirrors, ..
    } = cluster;
    let mut kept = Vec::new();
    for member in mirrors.into_iter().chain([writer]) {
        kept.push(member.node.stop().await);
    }
    let found = scan(&dirs, &canaries);
    assert!(found.is_empty(), "plaintext at rest after stop: {found:#?}");
    drop(kept);
}

/// The null control: the same traffic without keys leaves every canary on both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_same_scan_finds_every_canary_on_both_nodes() {
    let cluster = TestCluster::start_opts(ClusterOpts {
        mirrors: 1,
        ..ClusterOpts::default()
    })
    .await;
    let canaries = Canaries::new();
    send_canaries(&cluster, &canaries).await;
    let found = scan(&data_dirs(&cluster), &canaries);
    for node in ["writer", "mirror"] {
        for canary in canaries.all() {
            assert!(
                found.iter().any(|(n, c, _)| n == node && c == canary),
                "{canary} not found on the {node}: the scan is blind to it"
            );
        }
    }
}

// --- the key file: created by the CLI, checked at start ---

/// `[log]` naming `file`.
fn key_section(file: &Path) -> String {
    format!("[log]\nencryption_key_file = \"{}\"\n", file.display())
}

/// Builds a node on `data` with `extra` config and returns why it refused to start.
async fn refusal(data: &Path, origin: &str, extra: &str) -> String {
    let text = config_text(
        data,
        origin,
        Opts {
            extra,
            ..Opts::default()
        },
    );
    let config = Config::from_toml(&text, &data.with_extension("toml")).unwrap();
    match Node::build(config).await {
        Ok(_) => panic!("the node started"),
        Err(e) => copyist::error::error_chain(&e),
    }
}

#[tokio::test]
async fn a_missing_malformed_or_world_readable_key_file_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("log.key");
    let origin = "http://127.0.0.1:9/";

    let err = refusal(&data, origin, &key_section(&file)).await;
    assert!(
        err.contains("encryption key file") && err.contains("log.key"),
        "{err}"
    );

    std::fs::write(&file, "not a key\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refusal(&data, origin, &key_section(&file)).await;
    assert!(
        err.contains("64 hex digits") && !err.contains("not a key"),
        "{err}"
    );

    std::fs::remove_file(&file).unwrap();
    copyist::crypt::NodeKey::init_file(&file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refusal(&data, origin, &key_section(&file)).await;
    assert!(err.contains("chmod 600"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_without_its_key_or_with_another_refuses_to_start() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.key");
    let key = copyist::crypt::NodeKey::init_file(&file).unwrap();
    let extra = key_section(&file);
    let node = TestNode::start_in(
        dir,
        &origin.url(),
        Opts {
            extra: &extra,
            ..Opts::default()
        },
    )
    .await;
    let r = node.client().post_form("/node/add", "title=x").await;
    assert_eq!(r.seq(), Some(1));
    let dir = node.stop().await;
    let data = dir.path().join("data");

    let err = refusal(&data, &origin.url(), "").await;
    assert!(err.contains("a key this node does not have"), "{err}");
    assert!(err.contains(&key.id().to_string()), "{err}");

    let other = dir.path().join("other.key");
    let other_key = copyist::crypt::NodeKey::init_file(&other).unwrap();
    let err = refusal(&data, &origin.url(), &key_section(&other)).await;
    assert!(err.contains(&other_key.id().to_string()), "{err}");

    // With its own key it comes back, its entry intact.
    let node = TestNode::start_in(
        dir,
        &origin.url(),
        Opts {
            extra: &extra,
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(node.api("/api/v1/log/1").await["target"], "/node/add");
    node.stop().await;
}

#[test]
fn key_init_creates_a_private_key_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.key");
    let run = || {
        std::process::Command::new(binary())
            .args(["key", "init"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let key = copyist::crypt::NodeKey::load(&file).unwrap();
    assert!(said.contains(&key.id().to_string()), "{said}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = run();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(copyist::crypt::NodeKey::load(&file).unwrap().id(), key.id());
}
