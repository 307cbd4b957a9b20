//! Crashes at named points (RELIABILITY.md A2, A3, A5, A7): a real `copyist run` built with the
//! `failpoints` feature and started with `FAILPOINTS=NAME=return` aborts (SIGABRT) exactly when
//! it reaches the point `NAME` (the table is in `src/lib.rs`). Each test proves the crash fired
//! (the process died by SIGABRT, and a client of a writer point got no 2xx), restarts the node
//! WITHOUT the point and checks the state that point must leave: nothing acknowledged lost (ACK),
//! nothing applied twice (ONCE, by the CMS's own rows), an outcome nobody can know recorded
//! in-doubt and never guessed (UNKNOWN), a mirror halted until an operator acts (HALT), and at the
//! end identical `/dump`s (CONVERGE) with the writer's IDs (IDS).
//!
//! Each cluster is a writer and one mirror (`support::process_cluster`), each a real process in
//! front of its own PHP fixture CMS. Every test first writes two articles and waits until the
//! mirror has them, so "nothing applied twice" is checked against rows that were already there.
//!
//! Only compiled with `--features failpoints` (as `scripts/check.sh` runs the suite): without it
//! the binary has no crash points and every test here would fail for that reason alone.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use copyist::log::{EntryState, Log, Seq};
use copyist::ship::peer::{EntryReply, Peer};
use http_body_util::Full;
use serde_json::Value;

use crate::support::process_cluster::{ProcNode, ProcessCluster, ProcessClusterOpts};
use crate::support::{Client, Reply};

/// The signal `std::process::abort` raises.
const SIGABRT: i32 = 6;

/// How long a node may take to reach an armed point once it has work for it.
const CRASH_WITHIN: Duration = Duration::from_secs(20);

/// No drain delay on SIGTERM: the tests stop nodes between steps, with nothing in flight.
fn opts() -> ProcessClusterOpts {
    ProcessClusterOpts {
        extra: "[health]\nshutdown_delay = \"1ms\"\n".into(),
        ..ProcessClusterOpts::default()
    }
}

fn armed(point: &str) -> String {
    format!("{point}=return")
}

/// Asserts the node died by SIGABRT, i.e. at the armed point, not by exiting or by a panic.
fn assert_aborted(status: ExitStatus, node: &ProcNode, point: &str) {
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "{}: expected SIGABRT at {point}, got {status}\n{}",
        node.name,
        node.log_tail()
    );
}

/// Stops `node` gracefully and starts it again with `point` armed.
async fn arm(node: &mut ProcNode, point: &str) {
    let status = node.sigterm().await;
    assert!(status.success(), "{} stopped with {status}", node.name);
    node.start_with(&[("FAILPOINTS", &armed(point))]).await;
}

/// `POST /articles` with `title`, without panicking when the connection dies under it.
async fn try_post(c: &Client, title: &str) -> Result<Reply, String> {
    let req = c
        .request("POST", "/articles")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("title={title}"))))
        .unwrap();
    c.try_send(req).await
}

/// `POST /articles` that must be acknowledged with `seq`; returns its Location.
async fn post_ok(cluster: &ProcessCluster, title: &str, seq: u64) -> String {
    let r = cluster
        .writer
        .client()
        .post_form("/articles", &format!("title={title}"))
        .await;
    assert_eq!(r.status, 303, "{title}: {}\n{}", r.text(), cluster.logs());
    assert_eq!(r.seq(), Some(seq), "{title}");
    r.header("location").unwrap().to_string()
}

/// A writer and a mirror that both hold articles 1 and 2 (seqs 1 and 2).
async fn cluster_with_two_articles() -> ProcessCluster {
    let cluster = ProcessCluster::start(opts()).await;
    for seq in 1..=2 {
        post_ok(&cluster, &format!("before{seq}"), seq).await;
    }
    cluster.wait_converged(Duration::from_secs(20)).await;
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2]);
    cluster
}

/// Arms `point` on the writer and sends it the third write, which must crash it: the process
/// aborts and the client gets no 2xx. Returns the answer the client got, if any.
async fn crash_the_writer_on_a_write(cluster: &mut ProcessCluster, point: &str) -> Option<Reply> {
    arm(&mut cluster.writer, point).await;
    let reply = try_post(&cluster.writer.client(), "crash").await;
    let status = cluster.writer.wait_exit(CRASH_WITHIN).await;
    assert_aborted(status, &cluster.writer, point);
    if let Ok(r) = &reply {
        assert!(
            r.status / 100 != 2,
            "{point}: the client got {} for a write the writer crashed on",
            r.status
        );
    }
    reply.ok()
}

/// Arms `point` on the mirror and sends the writer a third write: the writer acknowledges it,
/// the mirror crashes on it.
async fn crash_the_mirror_on_a_write(cluster: &mut ProcessCluster, point: &str) {
    arm(&mut cluster.mirror, point).await;
    post_ok(cluster, "crash", 3).await;
    let status = cluster.mirror.wait_exit(CRASH_WITHIN).await;
    assert_aborted(status, &cluster.mirror, point);
}

/// Runs `copyist ARGS -c writer.toml` and asserts it succeeded.
async fn operator(cluster: &ProcessCluster, args: &[&str]) {
    let (code, out, err) = cluster.cli(args).await;
    assert_eq!(code, 0, "copyist {args:?}: {out}{err}\n{}", cluster.logs());
}

/// One entry on `node`, which must have it.
async fn entry(node: &ProcNode, seq: u64) -> Value {
    node.entry(seq)
        .await
        .unwrap_or_else(|| panic!("{} has no entry {seq}", node.name))
}

/// Waits until the mirror has everything, then: identical dumps, the articles are exactly
/// `1..=articles` on both CMSes (each applied once), and every entry the mirror applied created
/// the row the writer's did.
async fn assert_converged(cluster: &ProcessCluster, articles: u64) {
    cluster.wait_converged(Duration::from_secs(30)).await;
    let want: Vec<u64> = (1..=articles).collect();
    assert_eq!(cluster.writer.article_ids_in_db(), want, "writer's CMS");
    assert_eq!(
        cluster.mirror.article_ids_in_db(),
        want,
        "ONCE: the mirror's CMS\n{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.mirror.dump().await,
        cluster.writer.dump().await,
        "CONVERGE"
    );
    let last = cluster.writer.status().await["last_seq"].as_u64().unwrap();
    for seq in 1..=last {
        let m = entry(&cluster.mirror, seq).await;
        if m["state"] == "applied" {
            let w = entry(&cluster.writer, seq).await;
            if !w["outcome"].is_null() {
                assert_eq!(
                    m["mirror_outcome"]["location"], w["outcome"]["location"],
                    "IDS: entry {seq}"
                );
            }
        }
    }
}

/// Waits until the writer reports its shipping to the mirror blocked at the in-doubt `seq`.
async fn assert_blocked_at(cluster: &ProcessCluster, seq: u64) {
    crate::assert_eventually!(
        {
            let m = &cluster.writer.status().await["mirrors"][0];
            m["state"] == "blocked" && m["blocked_at"] == seq
        },
        "shipping never stopped at the in-doubt entry {seq}: {}\n{}",
        cluster.writer.status().await["mirrors"][0],
        cluster.logs()
    );
}

/// The mirror's halt after a restart: `in_doubt` at `seq`, nothing after it applied.
async fn assert_halted_in_doubt(cluster: &ProcessCluster, seq: u64) {
    let s = cluster.mirror.status().await;
    assert_eq!(s["halt"]["reason"], "in_doubt", "{s}\n{}", cluster.logs());
    assert_eq!(s["halt"]["seq"], seq, "{s}");
    assert_eq!(s["applied_seq"], seq - 1, "{s}");
    assert_eq!(entry(&cluster.mirror, seq).await["state"], "in-doubt");
}

/// Opens a stopped node's log in this process (recovery included, as a restart would).
fn open_log(node: &ProcNode) -> (Log, Vec<Seq>) {
    assert!(!node.is_running(), "{} still holds its log", node.name);
    Log::open(&node.data_dir.join("log"), 16 << 20).expect("the log opens after a crash")
}

// === A2: the writer ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_before_append_leaves_no_entry_and_the_cms_untouched() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_writer_on_a_write(&mut cluster, "before_append").await;
    cluster.writer.start().await;
    assert_eq!(cluster.writer.status().await["last_seq"], 2);
    assert!(cluster.writer.entry(3).await.is_none(), "no entry 3");
    assert_eq!(cluster.writer.article_ids_in_db(), vec![1, 2], "CMS saw it");
    // The client's retry is a new write with the next number.
    assert_eq!(post_ok(&cluster, "retry", 3).await, "/article/3");
    assert_converged(&cluster, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_after_append_before_sync_leaves_no_entry_or_an_in_doubt_one() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_writer_on_a_write(&mut cluster, "after_append_before_sync").await;
    cluster.writer.start().await;
    assert_eq!(cluster.writer.article_ids_in_db(), vec![1, 2], "CMS saw it");
    // Whether sled's background flush wrote the unsynced entry is up to chance; either way it
    // is not accepted, and if it is there the operator says the CMS never saw it.
    let next = match cluster.writer.entry(3).await {
        None => 3,
        Some(e) => {
            assert_eq!(e["state"], "in-doubt", "{e}");
            assert_blocked_at(&cluster, 3).await;
            operator(
                &cluster,
                &[
                    "resolve",
                    "3",
                    "--not-applied",
                    "--reason",
                    "crashed before the CMS; no row",
                ],
            )
            .await;
            assert_eq!(entry(&cluster.writer, 3).await["state"], "rejected");
            4
        }
    };
    eprintln!("after_append_before_sync: the next write got seq {next}");
    post_ok(&cluster, "retry", next).await;
    assert_converged(&cluster, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_after_sync_before_cms_leaves_an_in_doubt_entry_the_cms_never_saw() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_writer_on_a_write(&mut cluster, "after_sync_before_cms").await;
    cluster.writer.start().await;
    let e = entry(&cluster.writer, 3).await;
    assert_eq!(e["state"], "in-doubt", "UNKNOWN: {e}");
    assert_eq!(cluster.writer.article_ids_in_db(), vec![1, 2], "CMS saw it");

    // Writes go on; shipping stops at the in-doubt entry.
    assert_eq!(post_ok(&cluster, "after", 4).await, "/article/3");
    assert_blocked_at(&cluster, 3).await;
    assert_eq!(cluster.mirror.status().await["applied_seq"], 2);
    assert!(cluster.mirror.entry(3).await.is_none());

    // The operator looks at the CMS (no row for it) and says so.
    operator(
        &cluster,
        &[
            "resolve",
            "3",
            "--not-applied",
            "--reason",
            "crashed before the CMS; no row",
        ],
    )
    .await;
    let e = entry(&cluster.writer, 3).await;
    assert_eq!(e["state"], "rejected", "{e}");
    assert_eq!(e["audit"][0]["reason"], "crashed before the CMS; no row");
    assert_converged(&cluster, 3).await;
    assert_eq!(
        entry(&cluster.mirror, 3).await["state"],
        "rejected",
        "recorded, never applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_after_cms_before_outcome_is_in_doubt_and_blocks_shipping_until_resolved() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_writer_on_a_write(&mut cluster, "after_cms_before_outcome").await;
    cluster.writer.start().await;
    // The CMS did apply it, but the log cannot know: in doubt, never guessed, not even by a
    // second restart.
    assert_eq!(cluster.writer.article_ids_in_db(), vec![1, 2, 3]);
    for restart in 0..2 {
        let e = entry(&cluster.writer, 3).await;
        assert_eq!(
            e["state"], "in-doubt",
            "UNKNOWN after restart {restart}: {e}"
        );
        assert!(e["outcome"].is_null(), "an outcome was made up: {e}");
        if restart == 0 {
            let status = cluster.writer.sigterm().await;
            assert!(status.success());
            cluster.writer.start().await;
        }
    }

    // Later writes are taken (the client got no 2xx for "crash", so it is not lost), but no
    // mirror gets anything past the in-doubt entry.
    assert_eq!(post_ok(&cluster, "after", 4).await, "/article/4");
    assert_blocked_at(&cluster, 3).await;
    let m = cluster.mirror.status().await;
    assert_eq!(m["applied_seq"], 2, "{m}");
    assert!(cluster.mirror.entry(3).await.is_none());
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2]);

    // The operator finds row 3 in the CMS: applied. Now it ships, and the mirror replays it.
    operator(
        &cluster,
        &[
            "resolve",
            "3",
            "--applied",
            "--reason",
            "row 3 present in the writer CMS",
        ],
    )
    .await;
    assert_eq!(entry(&cluster.writer, 3).await["state"], "accepted");
    assert_converged(&cluster, 4).await;
    assert_eq!(entry(&cluster.mirror, 3).await["state"], "applied");
    assert_eq!(
        entry(&cluster.mirror, 3).await["mirror_outcome"]["location"],
        "/article/3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_after_outcome_before_reply_keeps_the_accepted_write_and_ships_it() {
    let mut cluster = cluster_with_two_articles().await;
    let reply = crash_the_writer_on_a_write(&mut cluster, "after_outcome_before_reply").await;
    assert!(reply.is_none(), "the client got an answer: {reply:?}");
    cluster.writer.start().await;
    // Jepsen's "info": the client does not know, but the write happened and is not lost.
    let e = entry(&cluster.writer, 3).await;
    assert_eq!(e["state"], "accepted", "{e}");
    assert_eq!(e["outcome"]["location"], "/article/3", "{e}");
    assert_eq!(cluster.writer.article_ids_in_db(), vec![1, 2, 3]);
    assert_converged(&cluster, 3).await;
    assert_eq!(entry(&cluster.mirror, 3).await["state"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_crash_mid_replicate_send_reships_after_restart_and_the_mirror_applies_once() {
    let mut cluster = cluster_with_two_articles().await;
    // A backlog of three, shipped together once resumed (window 32): the writer crashes on the
    // answer to 3 while 4 (a row, then 3 s in the mirror's CMS) and 5 are still in flight.
    operator(
        &cluster,
        &["mirror", "pause", "mirror-1", "--reason", "backlog"],
    )
    .await;
    post_ok(&cluster, "backlog3", 3).await;
    let w = cluster.writer.client();
    let slow = w
        .send(
            w.request("POST", "/slow?ms=3000")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((slow.status, slow.seq()), (200, Some(4)), "{}", slow.text());
    post_ok(&cluster, "backlog5", 5).await;
    arm(&mut cluster.writer, "mid_replicate_send").await;
    // The resume itself may or may not be answered before the crash: its effect is durable
    // before shipping starts, which is what makes the shipper send (and crash).
    let _ = cluster
        .cli(&["mirror", "resume", "mirror-1", "--reason", "ship it"])
        .await;
    let status = cluster.writer.wait_exit(CRASH_WITHIN).await;
    assert_aborted(status, &cluster.writer, "mid_replicate_send");
    // The mirror answered entry 3 (that answer is what the writer crashed on).
    let m = cluster.mirror.status().await;
    assert!(m["applied_seq"].as_u64().unwrap() >= 3, "{m}");
    assert!(m["halt"].is_null(), "{m}");

    // Restarted while the mirror still applies 4: the writer starts from the mirror's position
    // (3) and sends 4 and 5 again; the mirror answers what it has from its record.
    cluster.writer.start().await;
    assert_eq!(
        entry(&cluster.mirror, 4).await["state"],
        "applying",
        "the writer came back after the in-flight apply finished: nothing to re-ship"
    );
    assert_converged(&cluster, 5).await;
    for seq in 3..=5 {
        let e = entry(&cluster.mirror, seq).await;
        assert_eq!(e["state"], "applied", "{e}");
    }
}

// === A3: the mirror ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_crash_after_receive_stores_nothing_and_the_writer_sends_it_again() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_mirror_on_a_write(&mut cluster, "after_receive").await;
    {
        let (log, recovered) = open_log(&cluster.mirror);
        assert!(recovered.is_empty(), "{recovered:?}");
        assert_eq!(log.applied_seq(), Seq(2));
        assert!(log.get(Seq(3)).unwrap().is_none(), "entry 3 was stored");
        assert!(log.halt().is_none());
    }
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2]);
    cluster.mirror.start().await;
    assert_converged(&cluster, 3).await;
    assert_eq!(entry(&cluster.mirror, 3).await["state"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_crash_after_intent_before_cms_halts_in_doubt_and_retry_applies_it_once() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_mirror_on_a_write(&mut cluster, "after_intent_before_cms").await;
    cluster.mirror.start().await;
    assert_halted_in_doubt(&cluster, 3).await;
    // The operator checks the mirror's CMS: no row 3, so the apply never reached it: retry.
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2]);
    operator(
        &cluster,
        &[
            "mirror",
            "retry",
            "mirror-1",
            "--reason",
            "no row 3 on the mirror",
        ],
    )
    .await;
    assert_converged(&cluster, 3).await;
    let e = entry(&cluster.mirror, 3).await;
    assert_eq!(e["state"], "applied", "{e}");
    assert_eq!(e["audit"][0]["action"], "retry", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_crash_after_cms_before_applied_halts_in_doubt_and_skip_keeps_one_row() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_mirror_on_a_write(&mut cluster, "after_cms_before_applied").await;
    cluster.mirror.start().await;
    assert_halted_in_doubt(&cluster, 3).await;
    // The mirror's CMS did apply it: a retry would insert a second row, so the operator skips.
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2, 3]);
    post_ok(&cluster, "after", 4).await;
    crate::assert_eventually!(
        cluster.writer.status().await["mirrors"][0]["state"] == "halted",
        "the writer never saw the halt"
    );
    assert_eq!(
        cluster.mirror.article_ids_in_db(),
        vec![1, 2, 3],
        "HALT: applied past it"
    );
    operator(
        &cluster,
        &[
            "mirror",
            "skip",
            "mirror-1",
            "--seq",
            "3",
            "--reason",
            "row 3 present on the mirror",
        ],
    )
    .await;
    assert_converged(&cluster, 4).await;
    assert_eq!(entry(&cluster.mirror, 3).await["state"], "skipped");
    assert_eq!(entry(&cluster.mirror, 4).await["state"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_crash_after_applied_before_ack_answers_the_writers_resend_from_the_record() {
    let mut cluster = cluster_with_two_articles().await;
    crash_the_mirror_on_a_write(&mut cluster, "after_applied_before_ack").await;
    cluster.mirror.start().await;
    let s = cluster.mirror.status().await;
    assert!(s["halt"].is_null(), "{s}");
    assert_eq!(
        s["applied_seq"], 3,
        "the apply was durable before the crash: {s}"
    );
    let recorded = entry(&cluster.mirror, 3).await;
    assert_eq!(recorded["state"], "applied");
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2, 3]);

    // The writer never got the answer. Its shipper resumes from the mirror's position, so here
    // the writer's resend is made by hand: entry 3 exactly as in the writer's log, sent with the
    // writer's own client and certificate, twice.
    let status = cluster.writer.sigterm().await;
    assert!(status.success());
    let shipped = {
        let (log, _) = open_log(&cluster.writer);
        log.get(Seq(3)).unwrap().expect("writer's entry 3")
    };
    assert_eq!(shipped.state, EntryState::Accepted);
    let config = copyist::config::Config::load(&cluster.writer.config_path).unwrap();
    let tls = copyist::tls::replication_client(config.replication.as_ref().unwrap()).unwrap();
    let peer = Peer::new(
        "mirror-1",
        &config.mirrors[0].url,
        tls,
        Duration::from_secs(10),
    );
    for _ in 0..2 {
        let reply = peer.send_entry(&shipped).await.unwrap();
        let EntryReply::Done(answer) = reply else {
            panic!("resend not answered from the record: {reply:?}")
        };
        assert_eq!(answer.seq, 3);
        assert_eq!(answer.state, "applied");
        assert!(answer.halt.is_none());
        let outcome = answer.mirror_outcome.expect("the recorded outcome");
        assert_eq!(outcome.location.as_deref(), Some("/article/3"));
        // A fresh replay would have taken its own time: the same duration is the record's.
        assert_eq!(
            Some(outcome.duration_us),
            recorded["mirror_outcome"]["duration_us"].as_u64(),
            "not the recorded answer"
        );
    }
    assert_eq!(
        cluster.mirror.article_ids_in_db(),
        vec![1, 2, 3],
        "ONCE: a resend reached the CMS"
    );

    cluster.writer.start().await;
    post_ok(&cluster, "after", 4).await;
    assert_converged(&cluster, 4).await;
}

// === A5: a crash during recovery ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_recovery_is_recovered_by_the_next_start_on_writer_and_mirror() {
    let mut cluster = cluster_with_two_articles().await;

    // Writer: entry 3 left pending, then the start that would recover it crashes inside
    // recovery; the next start recovers the same state.
    crash_the_writer_on_a_write(&mut cluster, "after_sync_before_cms").await;
    let mark = cluster.writer.log_mark();
    let status = cluster
        .writer
        .start_expecting_exit(&[("FAILPOINTS", &armed("during_recovery"))])
        .await;
    assert_aborted(status, &cluster.writer, "during_recovery");
    assert!(
        !cluster.writer.log_since(mark).contains("now in-doubt"),
        "the crashed start finished recovery: {}",
        cluster.writer.log_since(mark)
    );
    let mark = cluster.writer.log_mark();
    cluster.writer.start().await;
    assert!(
        cluster.writer.log_since(mark).contains("now in-doubt"),
        "the clean start did not recover entry 3: {}",
        cluster.writer.log_since(mark)
    );
    assert_eq!(entry(&cluster.writer, 3).await["state"], "in-doubt");
    assert_eq!(cluster.writer.status().await["last_seq"], 3);
    assert_eq!(cluster.writer.article_ids_in_db(), vec![1, 2]);
    operator(
        &cluster,
        &["resolve", "3", "--not-applied", "--reason", "no row"],
    )
    .await;
    post_ok(&cluster, "after", 4).await;
    assert_converged(&cluster, 3).await;

    // Mirror: entry 5 left applying, then a crash inside recovery; the next start halts it in
    // doubt exactly as a single crash would.
    arm(&mut cluster.mirror, "after_intent_before_cms").await;
    post_ok(&cluster, "crash", 5).await;
    let status = cluster.mirror.wait_exit(CRASH_WITHIN).await;
    assert_aborted(status, &cluster.mirror, "after_intent_before_cms");
    let status = cluster
        .mirror
        .start_expecting_exit(&[("FAILPOINTS", &armed("during_recovery"))])
        .await;
    assert_aborted(status, &cluster.mirror, "during_recovery");
    cluster.mirror.start().await;
    assert_halted_in_doubt(&cluster, 5).await;
    assert_eq!(cluster.mirror.article_ids_in_db(), vec![1, 2, 3]);
    operator(
        &cluster,
        &[
            "mirror",
            "retry",
            "mirror-1",
            "--reason",
            "no row on the mirror",
        ],
    )
    .await;
    assert_converged(&cluster, 4).await;
}

// === A7: graceful versus abrupt stop ===

/// Client loops posting `POST /slow?ms=200` (a row, then a 200 ms wait: an entry is pending at
/// almost every moment) until the writer goes away; every 2xx's seq is kept.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn spawn(c: &Client, loops: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..loops)
            .map(|_| {
                let (c, stop, acked) = (c.clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let req = c
                            .request("POST", "/slow?ms=200")
                            .body(Full::default())
                            .unwrap();
                        match c.try_send(req).await {
                            Ok(r) if r.status == 200 => {
                                acked.lock().unwrap().push(r.seq().unwrap())
                            }
                            Ok(r) => panic!("writer answered {}: {}", r.status, r.text()),
                            Err(_) => return, // stopped under us
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, tasks }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for(&self, n: usize) {
        crate::assert_eventually!(self.count() >= n, "writes are not flowing");
    }

    async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Waits until `writer`'s newest entry is durably `pending` (under [`Load`] one is, almost all
/// the time), so a stop aimed now lands in the middle of a write; returns its seq.
async fn pending_entry(writer: &ProcNode) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let last = writer.status().await["last_seq"].as_u64().unwrap();
        if matches!(writer.entry(last).await, Some(e) if e["state"] == "pending") {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no entry is ever pending under load"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every acknowledged seq is accepted in `log`; returns how many entries are in doubt.
fn check_log(log: &Log, acked: &[u64]) -> usize {
    for seq in acked {
        let e = log
            .get(Seq(*seq))
            .unwrap()
            .expect("ACK: acknowledged entry");
        assert_eq!(e.state, EntryState::Accepted, "seq {seq}");
    }
    (1..=log.last_seq().0)
        .filter(|n| log.get(Seq(*n)).unwrap().unwrap().state == EntryState::InDoubt)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_write_load_leaves_no_in_doubt_entry_and_kill_9_at_most_one() {
    let mut cluster = ProcessCluster::start(opts()).await;

    // SIGTERM: in-flight writes finish and are settled before the process exits 0.
    let load = Load::spawn(&cluster.writer.client(), 4);
    load.wait_for(4).await;
    let pending = pending_entry(&cluster.writer).await;
    let status = cluster.writer.sigterm().await;
    assert!(status.success(), "SIGTERM: exit {status}");
    let acked = load.finish().await;
    {
        let (log, recovered) = open_log(&cluster.writer);
        assert!(
            recovered.is_empty(),
            "SIGTERM left pending entries {recovered:?}"
        );
        assert_eq!(check_log(&log, &acked), 0, "SIGTERM left in-doubt entries");
        let e = log.get(Seq(pending)).unwrap().unwrap();
        assert_eq!(
            e.state,
            EntryState::Accepted,
            "the entry pending at SIGTERM was not finished"
        );
    }

    // kill -9: whatever was between its durable `pending` and its outcome is in doubt. The
    // write lock lets one entry at a time be there, so each kill leaves at most one.
    let mut in_doubt = 0;
    let kills = 3;
    for _ in 0..kills {
        cluster.writer.start().await;
        let load = Load::spawn(&cluster.writer.client(), 4);
        load.wait_for(3).await;
        pending_entry(&cluster.writer).await;
        cluster.writer.kill9();
        let acked = load.finish().await;
        let (log, recovered) = open_log(&cluster.writer);
        assert!(
            recovered.len() <= 1,
            "one kill -9 left {recovered:?} in doubt"
        );
        in_doubt += recovered.len();
        check_log(&log, &acked);
    }
    // Null control for the SIGTERM half: the same load, stopped abruptly while an entry is
    // pending, does leave entries in doubt.
    assert!(
        in_doubt >= 1,
        "{kills} kill -9s under load left nothing in doubt: the kills missed the writes"
    );
    eprintln!("A7: {kills} kill -9s left {in_doubt} in-doubt entries; SIGTERM left none");
}
