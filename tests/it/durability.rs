//! Nothing acknowledged is lost: `kill -9` under write load, in-doubt recovery, sequence numbers
//! never reused, and fail-closed when storage cannot be written.

use std::collections::BTreeSet;
use std::path::Path;

use copyist::log::{EntryState, Log, Seq};

use crate::assert_eventually;
use crate::support::history::check::{check_all, NodeHandle, Snapshot};
use crate::support::history::vacuity::{null_control, Peak, Run};
use crate::support::history::{History, Load, Outcome, Workers};
use crate::support::node::{config_text, Opts};
use crate::support::{Client, NodeProcess, PhpCms, StubOrigin, TestNode};

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

/// A1 + A5: `kill -9` of the writer under write load from four recording clients, every cycle,
/// and every fourth cycle a second kill as soon as it is back up (a crash during recovery). Then
/// every checker against the restarted writer's log and its CMS's `/dump`: nothing
/// acknowledged is lost or points at another request (ACK), no gap and nothing left pending
/// (ORDER), no row twice (ONCE), interrupted writes are in doubt, never guessed (UNKNOWN).
/// Run as a null control: the same load without the kills must pass the same checkers, and
/// only the faulty run may change pids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_write_load_loses_no_acknowledged_write() {
    null_control("A1+A5", "writer kill -9 under write load", writer_kills).await;
}

async fn writer_kills(fault: bool) -> Run {
    let cms = PhpCms::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, config_text(&data, &cms.url(), Opts::default())).unwrap();
    let history = History::new("k");
    let load = Load {
        stop_on_error: true,
        ..Load::default()
    };
    let mut peak = Peak::default();
    let mut pids = BTreeSet::new();
    let mut node = NodeProcess::start(&config, &data).await;
    pids.insert(node.child.id());
    let kill = |node: &mut NodeProcess, peak: &mut Peak| {
        peak.sample(node.child.id());
        node.kill9();
    };
    for cycle in 0..kill_cycles() {
        let workers = Workers::spawn(
            &history,
            &[("writer".to_string(), node.public)],
            4,
            load.clone(),
        );
        // Let a varying number of writes land, then kill without warning (or, as the null
        // control, stop the clients).
        let target = history.count(Outcome::Ok) + 5 + (cycle * 7) % 40;
        workers.wait_ok(target).await;
        if !fault {
            workers.finish().await;
            continue;
        }
        kill(&mut node, &mut peak);
        workers.finish().await;
        node = NodeProcess::start(&config, &data).await;
        pids.insert(node.child.id());
        if cycle % 4 == 3 {
            // A5: killed again the moment it is up, before anything else happens.
            kill(&mut node, &mut peak);
            node = NodeProcess::start(&config, &data).await;
            pids.insert(node.child.id());
        }
    }
    peak.sample(node.child.id());
    let kills = pids.len() as u64 - 1;
    if fault {
        let expected = kill_cycles() + kill_cycles() / 4;
        assert_eq!(kills as usize, expected, "every kill hit a running writer");
    }
    let ops = history.ops();
    assert!(
        history.count(Outcome::Ok) >= kill_cycles() * 5,
        "too few writes acknowledged: {}",
        history.summary()
    );
    // Only the kill may cut a client off: every answer that came was a 2xx/3xx.
    let refused: Vec<_> = ops
        .iter()
        .filter(|o| o.outcome != Outcome::Ok && o.status.is_some())
        .collect();
    assert!(refused.is_empty(), "the writer refused writes: {refused:?}");
    if !fault {
        assert_eq!(
            history.count(Outcome::Ok),
            ops.len(),
            "{}",
            history.summary()
        );
    }

    // The (restarted) writer's log and its CMS, against the history.
    let handle = NodeHandle {
        name: "writer".into(),
        admin: node.admin,
        cms: cms.addr,
    };
    let snap = Snapshot::take(&[handle]).await;
    let report = check_all(&history, &snap);
    let in_doubt = snap.nodes[0]
        .entries
        .values()
        .filter(|e| e["state"] == "in-doubt")
        .count();
    if !fault {
        assert_eq!(in_doubt, 0, "nothing is in doubt without a crash");
    }
    Run {
        fired: kills,
        ops: ops.len(),
        peak,
        note: format!(
            "{}; {in_doubt} in doubt after recovery, {} info ops found applied",
            history.summary(),
            report.recovered()
        ),
        report,
    }
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
