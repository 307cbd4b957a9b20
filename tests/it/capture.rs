//! Capture: every state-changing request is in the log, durable, before the origin sees it, and
//! the log says exactly what happened.

use tokio::io::AsyncWriteExt;

use crate::assert_eventually;
use crate::support::client::multipart;
use crate::support::node::Opts;
use crate::support::{raw, StubOrigin, TestNode};

#[tokio::test]
async fn post_is_logged_accepted_and_answered_with_its_seq() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let c = node.client();
    let r = c
        .post_form("/items?x=1", "title=hello&password=hunter2")
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.seq(), Some(1));
    assert_eq!(r.header("location"), Some("/item/1"));
    assert_eq!(origin.seen()[0].body, b"title=hello&password=hunter2");
    let r2 = c.post_form("/items", "title=two").await;
    assert_eq!(r2.seq(), Some(2));

    let e = node.api("/api/v1/log/1").await;
    assert_eq!(e["state"], "accepted");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["target"], "/items?x=1");
    assert_eq!(e["status"], 201);
    assert_eq!(e["body_len"], 28);
    assert_eq!(e["body_storage"], "inline");
    assert_eq!(e["outcome"]["location"], "/item/1");
    assert_eq!(e["outcome"]["set_cookies"][0], "sid=********; Path=/");
    let form = e["form"].as_array().unwrap();
    assert_eq!(form[0], serde_json::json!(["title", "hello"]));
    assert_eq!(form[1], serde_json::json!(["password", "********"]));
    assert!(
        !e.to_string().contains("hunter2"),
        "password leaked into log show"
    );
    assert!(
        !e.to_string().contains("origin-secret"),
        "cookie leaked into log show"
    );

    let list = node.api("/api/v1/log").await;
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 1], "newest first");
}

#[tokio::test]
async fn non_success_status_is_recorded_as_rejected() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let r = node.client().post_form("/status/500", "a=1").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.seq(), Some(1));
    let e = node.api("/api/v1/log/1").await;
    assert_eq!(e["state"], "rejected");
    assert_eq!(e["outcome"]["status"], 500);
    // 3xx is a success by default.
    node.client().post_form("/status/303", "a=1").await;
    assert_eq!(node.api("/api/v1/log/2").await["state"], "accepted");
}

#[tokio::test]
async fn success_statuses_are_configurable() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        extra: "[capture]\nsuccess_status = [\"2xx\"]\n",
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    node.client().post_form("/status/303", "a=1").await;
    assert_eq!(node.api("/api/v1/log/1").await["state"], "rejected");
}

#[tokio::test]
async fn configured_rule_captures_a_get_with_side_effects() {
    let origin = StubOrigin::spawn().await;
    let rules = "[[capture.rule]]\nmethod = \"GET\"\npath = \"/visit*\"\naction = \"capture\"\n\n[[capture.rule]]\nmethod = \"POST\"\npath = \"/ping\"\naction = \"pass\"\n";
    let node = TestNode::start_opts(
        &origin.url(),
        Opts {
            extra: rules,
            ..Opts::default()
        },
    )
    .await;
    let c = node.client();
    assert_eq!(c.get("/visit?page=3").await.seq(), Some(1));
    assert_eq!(c.get("/other").await.seq(), None);
    assert_eq!(c.post_form("/ping", "x").await.seq(), None);
    assert_eq!(node.last_seq().await, 1);
}

#[tokio::test]
async fn large_multipart_upload_goes_to_the_blob_store_and_is_indexed() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let file: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let body = multipart(
        "BOUNDARY",
        &[("title", "pic"), ("user_password", "s3cret")],
        &[("file", "a.bin", &file)],
    );
    let r = node
        .client()
        .post(
            "/upload",
            "multipart/form-data; boundary=BOUNDARY",
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(origin.seen()[0].body, body, "origin got the exact bytes");
    let e = node.api("/api/v1/log/1").await;
    assert_eq!(e["body_storage"], "blob");
    assert_eq!(e["body_len"], body.len());
    let hash = e["body_hash"].as_str().unwrap().to_string();
    assert_eq!(hash, blake3::hash(&body).to_hex().to_string());
    let parts = e["multipart"]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["value"], "pic");
    assert_eq!(parts[1]["value"], "********");
    assert_eq!(parts[2]["filename"], "a.bin");
    assert_eq!(parts[2]["size"], file.len());
    assert_eq!(parts[2]["hash"], blake3::hash(&file).to_hex().to_string());
    // The blob is retrievable byte for byte.
    let blob = node
        .admin_client()
        .get(&format!("/api/v1/blob/{hash}"))
        .await;
    assert_eq!(blob.status, 200);
    assert!(blob.body == body, "blob differs from the uploaded body");
}

#[tokio::test]
async fn client_that_disconnects_mid_body_leaves_no_entry_and_no_origin_request() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    for size in [100usize, 200_000] {
        let mut s = tokio::net::TcpStream::connect(node.public).await.unwrap();
        let head = format!(
            "POST /items HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            size * 2
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'a'; size]).await.unwrap();
        drop(s);
    }
    // A complete request afterwards gets seq 1: nothing before it was logged.
    let r = node.client().post_form("/items", "done=1").await;
    assert_eq!(r.seq(), Some(1));
    assert_eq!(origin.started(), 1, "a half-sent body reached the origin");
    let tmp = node.config.node.data_dir.join("blobs/tmp");
    assert_eventually!(
        std::fs::read_dir(&tmp)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "unfinished blob temp files left behind"
    );
}

#[tokio::test]
async fn captured_writes_reach_the_origin_one_at_a_time_in_log_order() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = node.client();
        tasks.push(tokio::spawn(async move {
            let r = c.post_form("/items", &format!("n={i}")).await;
            (r.seq().unwrap(), r.header("location").unwrap().to_string())
        }));
    }
    for t in tasks {
        let (seq, location) = t.await.unwrap();
        // The stub numbers items in arrival order: equal to seq only if the order is the log's.
        assert_eq!(location, format!("/item/{seq}"));
    }
    for (i, seen) in origin.seen().iter().enumerate() {
        let e = node.api(&format!("/api/v1/log/{}", i + 1)).await;
        let form = e["form"][0][1].as_str().unwrap().to_string();
        assert_eq!(format!("n={form}"), String::from_utf8_lossy(&seen.body));
    }
}

#[tokio::test]
async fn origin_that_never_answers_leaves_the_entry_in_doubt() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        origin: "response_timeout = \"300ms\"",
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let r = node.client().post_form("/stall", "a=1").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.seq(), Some(1), "the client can name the in-doubt entry");
    assert_eq!(origin.seen().len(), 1, "the origin did get the request");
    let e = node.api("/api/v1/log/1").await;
    assert_eq!(
        e["state"], "in-doubt",
        "an unknown outcome must not be guessed"
    );
    assert!(e["outcome"]["error"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    // The write lock was released: the next write goes through.
    assert_eq!(
        node.client().post_form("/items", "b=2").await.seq(),
        Some(2)
    );
}

#[tokio::test]
async fn origin_refusing_connections_gives_502_and_a_rejected_entry() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = TestNode::start(&format!("http://127.0.0.1:{port}")).await;
    let r = node.client().post_form("/items", "a=1").await;
    assert_eq!(r.status, 502);
    let e = node.api("/api/v1/log/1").await;
    assert_eq!(
        e["state"], "rejected",
        "the CMS provably never saw it: never replayed"
    );
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413_and_never_reaches_origin() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        public: "max_body_bytes = \"64KiB\"",
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let mut req = b"POST /items HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(b"2000\r\n");
        req.extend_from_slice(&[b'x'; 0x2000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(node.public, &req).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A declared length over the limit is refused before reading the body.
    let answer = raw(
        node.public,
        b"POST /items HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(origin.started(), 0);
    assert_eq!(node.last_seq().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_whose_writer_is_down_refuses_writes_with_503_and_keeps_reading() {
    let cluster = crate::support::cluster::TestCluster::start(1).await;
    let crate::support::cluster::TestCluster {
        writer, mirrors, ..
    } = cluster;
    writer.node.stop().await;
    let mirror = &mirrors[0];
    let before = mirror.dump().await;
    let r = mirror.client().post_form("/articles", "title=direct").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        mirror.client().get("/").await.status,
        200,
        "reads still served"
    );
    assert_eq!(
        mirror.dump().await,
        before,
        "the mirror's CMS changed outside replay"
    );
    assert_eq!(mirror.status().await["last_seq"], 0);
}

#[tokio::test]
async fn a_client_that_hangs_up_while_the_origin_works_still_gets_its_entry_settled() {
    let origin = StubOrigin::spawn().await;
    let opts = Opts {
        origin: "response_timeout = \"300ms\"",
        ..Opts::default()
    };
    let node = TestNode::start_opts(&origin.url(), opts).await;
    let mut s = tokio::net::TcpStream::connect(node.public).await.unwrap();
    s.write_all(b"POST /stall HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    crate::assert_eventually!(
        origin.seen().iter().any(|r| r.target == "/stall"),
        "never forwarded"
    );
    drop(s); // the client gives up while the origin is still working
             // The capture still finishes: the entry is settled (in doubt), never left pending.
    crate::assert_eventually!(
        node.api("/api/v1/log/1").await["state"] == "in-doubt",
        "entry left pending after the client hung up"
    );
    assert_eq!(
        node.client().post_form("/items", "next=1").await.seq(),
        Some(2)
    );
}
