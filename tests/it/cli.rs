//! The command line: check-config, and log list|show and blob get against a running node, found
//! through the same `-c FILE` as `run`.

use std::path::PathBuf;

use crate::support::client::multipart;
use crate::support::node::cli;
use crate::support::{StubOrigin, TestNode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn run_cli(config: PathBuf, args: &'static [&'static str]) -> (i32, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || cli(&config, args))
        .await
        .unwrap()
}

#[tokio::test]
async fn check_config_accepts_the_example_and_names_file_line_and_key_of_problems() {
    let (code, out, err) = run_cli(root().join("proxy.toml.example"), &["check-config"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("ok"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[node]\nname = \"n\"\nrole = \"boss\"\ndata_dir = \"d\"\n\n[public]\nlisten = \"nowhere\"\nlisten_typo = 1\n\n[origin]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(bad.clone(), &["check-config"]).await;
    assert_eq!(code, 1);
    let name = bad.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        err.contains(&format!("{name}:3:")),
        "role problem not located: {err}"
    );
    assert!(
        err.contains(&format!("{name}:7:")),
        "listen problem not located: {err}"
    );
    assert!(err.contains("listen_typo"), "unknown key not named: {err}");
}

#[tokio::test]
async fn log_list_show_and_blob_get_talk_to_the_running_node() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let c = node.client();
    c.post_form("/login", "user=admin&password=CANARY-123")
        .await;
    let file: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    let body = multipart("B0", &[("title", "x")], &[("file", "photo.jpg", &file)]);
    c.post("/upload", "multipart/form-data; boundary=B0", body.clone())
        .await;
    let config = node.config_path();

    let (code, out, err) = run_cli(config.clone(), &["log", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(
        out.contains("accepted") && out.contains("/login") && out.contains("/upload"),
        "{out}"
    );

    let (code, out, err) = run_cli(config.clone(), &["log", "show", "1"]).await;
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(out.contains("password = ********"), "{out}");
    assert!(!out.contains("CANARY"), "password shown by log show: {out}");

    let (code, out, _) = run_cli(config.clone(), &["log", "show", "2"]).await;
    assert_eq!(code, 0);
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(
        out.contains("photo.jpg") && out.contains("100000 bytes"),
        "{out}"
    );

    let hash = blake3::hash(&body).to_hex().to_string();
    let args: &'static [&'static str] =
        Box::leak(vec!["blob", "get", Box::leak(hash.into_boxed_str()) as &str].into_boxed_slice());
    let (code, out, err) = run_cli(config.clone(), args).await;
    assert_eq!(code, 0, "{err}");
    assert!(out == body, "blob get returned other bytes");

    let (code, _, err) = run_cli(config.clone(), &["log", "show", "99"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn commands_say_clearly_when_the_node_is_not_running() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let config = node.config_path();
    let dir = node.stop().await;
    let (code, _, err) = run_cli(config, &["log", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("is it running"), "{err}");
    drop(dir);
}
