//! Nothing acknowledged is lost: `kill -9` under write load, in-doubt recovery, sequence numbers
//! never reused, and fail-closed when storage cannot be written.

use std::collections::HashMap;
use std::path::Path;

use copyist::log::{BodyRef, EntryState, Log, Seq};

use crate::assert_eventually;
use crate::support::node::{config_text, Opts};
use crate::support::{Client, NodeProcess, StubOrigin, TestNode};

/// Kill cycles in the default run; `COPYIST_KILL_CYCLES` raises it for soaks (scripts/chaos.sh).
fn kill_cycles() -> usize {
    std::env::var("COPYIST_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn open_log(data: &Path) -> (Log, Vec<Seq>) {
    Log::open(&data.join("log"), 16 << 20).expect("log opens after kill -9")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_write_load_loses_no_acknowledged_write() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, config_text(&data, &origin.url(), Opts::default())).unwrap();

    // marker -> seq the client was told, for every 2xx answer.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut killed_mid_flight = 0;
    for cycle in 0..kill_cycles() {
        let mut node = NodeProcess::start(&config, &data).await;
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let c = Client::new(node.public);
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in 0.. {
                    let marker = format!("m-{cycle}-{worker}-{i}");
                    match c.try_send(post(&c, &marker)).await {
                        Ok(r) if r.status / 100 == 2 => ok.push((marker, r.seq().unwrap())),
                        Ok(r) => panic!("unexpected answer {}: {}", r.status, r.text()),
                        Err(_) => return ok, // killed under us
                    }
                }
                ok
            }));
        }
        // Let a varying number of writes land, then kill without warning.
        let target = origin.started() + 5 + (cycle * 7) % 40;
        assert_eventually!(origin.started() >= target, "writes are not flowing");
        node.kill9();
        for t in tasks {
            for (marker, seq) in t.await.unwrap() {
                assert!(acked.insert(marker, seq).is_none());
            }
        }
        killed_mid_flight += 1;
    }
    assert_eq!(
        killed_mid_flight,
        kill_cycles(),
        "every cycle ended in kill -9"
    );
    assert!(
        acked.len() >= kill_cycles() * 5,
        "too few writes acknowledged: {}",
        acked.len()
    );

    let (log, _in_doubt) = open_log(&data);
    let mut seq_owner: HashMap<u64, &str> = HashMap::new();
    for (marker, seq) in &acked {
        if let Some(other) = seq_owner.insert(*seq, marker) {
            panic!("seq {seq} was given to both {other} and {marker}");
        }
        let entry = log
            .get(Seq(*seq))
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged seq {seq} ({marker}) lost"));
        assert_eq!(entry.state, EntryState::Accepted, "seq {seq}");
        let BodyRef::Inline(body) = &entry.request.body else {
            panic!("small body not inline")
        };
        assert_eq!(
            body,
            format!("m={marker}").as_bytes(),
            "seq {seq} holds another request"
        );
    }
    // No gaps, nothing left pending.
    let last = log.last_seq().0;
    for n in 1..=last {
        let e = log
            .get(Seq(n))
            .unwrap()
            .unwrap_or_else(|| panic!("gap at {n}"));
        assert_ne!(
            e.state,
            EntryState::Pending,
            "seq {n} still pending after recovery"
        );
    }
}

fn post(c: &Client, marker: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    c.request("POST", "/items")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            "m={marker}"
        ))))
        .unwrap()
}

#[tokio::test]
async fn a_pending_entry_interrupted_by_kill_9_comes_back_in_doubt() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, config_text(&data, &origin.url(), Opts::default())).unwrap();
    let mut node = NodeProcess::start(&config, &data).await;
    let c = Client::new(node.public);
    assert_eq!(c.post_form("/items", "a=1").await.seq(), Some(1));
    let c2 = c.clone();
    let stall = tokio::spawn(async move {
        c2.try_send(
            c2.request("POST", "/stall")
                .body(Default::default())
                .unwrap(),
        )
        .await
    });
    assert_eventually!(
        origin.seen().iter().any(|s| s.target == "/stall"),
        "stall never reached the origin"
    );
    node.kill9();
    assert!(
        stall.await.unwrap().is_err(),
        "client must not get an answer"
    );

    let (log, in_doubt) = open_log(&data);
    let stall_seq = (1..=log.last_seq().0)
        .find(|n| log.get(Seq(*n)).unwrap().unwrap().request.target == "/stall")
        .unwrap();
    assert!(
        in_doubt.contains(&Seq(stall_seq)),
        "recovery did not report {stall_seq}"
    );
    assert_eq!(
        log.get(Seq(stall_seq)).unwrap().unwrap().state,
        EntryState::InDoubt
    );
    drop(log);

    // After a restart the node says so, and new writes never reuse a sequence number.
    let node = NodeProcess::start(&config, &data).await;
    let c = Client::new(node.public);
    let e: serde_json::Value = serde_json::from_slice(
        &Client::new(node.admin)
            .get(&format!("/api/v1/log/{stall_seq}"))
            .await
            .body,
    )
    .unwrap();
    assert_eq!(e["state"], "in-doubt");
    let next = c.post_form("/items", "after=1").await.seq().unwrap();
    assert!(next > stall_seq, "seq {next} reused");
}

#[tokio::test]
async fn restart_continues_the_sequence() {
    let origin = StubOrigin::spawn().await;
    let node = TestNode::start(&origin.url()).await;
    for i in 1..=3 {
        assert_eq!(
            node.client().post_form("/items", "x=1").await.seq(),
            Some(i)
        );
    }
    let dir = node.stop().await;
    let node = TestNode::start_in(dir, &origin.url(), Opts::default()).await;
    assert_eq!(
        node.client().post_form("/items", "x=1").await.seq(),
        Some(4)
    );
    assert_eq!(node.api("/api/v1/log/2").await["state"], "accepted");
}

#[tokio::test]
async fn disk_full_refuses_writes_with_503_until_restart_and_reads_keep_flowing() {
    let origin = StubOrigin::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let _disk = crate::support::SmallDisk::mount(&dir.path().join("data"), "8m");
    let node = TestNode::start_in(dir, &origin.url(), Opts::default()).await;
    let c = node.client();
    assert_eq!(c.post_form("/items", "before=1").await.seq(), Some(1));
    let started = origin.started();

    let big = vec![7u8; 12 << 20];
    let r = c.post("/upload", "application/octet-stream", big).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("origin not contacted"), "{}", r.text());
    assert_eq!(
        origin.started(),
        started,
        "the origin saw a write that was not logged"
    );

    // Latched: even a small write that would fit is refused now.
    let r = c.post_form("/items", "after=1").await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(origin.started(), started);
    assert_eq!(c.get("/page").await.status, 200, "reads must keep flowing");
    assert_eq!(node.api("/api/v1/status").await["fail_closed"], true);
}
