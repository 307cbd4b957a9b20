//! Storage faults (RELIABILITY.md B2-B5, A6) on real `copyist run` processes: fsync EIO, blob
//! write ENOSPC and slow fsync injected with strace, a full disk on a mirror, and a log or blob
//! damaged while the node is stopped. copyist must fail closed and say what is wrong: it never
//! acknowledges, serves, ships or applies a record it cannot prove intact.
//!
//! Every fault test first proves its fault fired (the strace log shows the injection, the disk
//! is full, the bytes changed: VACUITY) and has a null control: the same steps without the fault
//! pass the same checks the other way round.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use copyist::blobs::BlobStore;
use copyist::log::{BodyRef, EntryState, Log, Seq};

use crate::assert_eventually;
use crate::support::node::{config_text, Opts};
use crate::support::{strace, Client, NodeProcess, StubOrigin};

/// A writer (no mirrors) in a fresh dir, in front of `origin`.
struct Writer {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

impl Writer {
    fn new(origin: &StubOrigin) -> Writer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, config_text(&data, &origin.url(), Opts::default())).unwrap();
        Writer { dir, config, data }
    }

    async fn start(&self) -> NodeProcess {
        NodeProcess::start(&self.config, &self.data).await
    }

    fn inj_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The node's stderr (all its messages), across the runs since the last start.
    fn node_log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }
}

/// Opens the stopped node's log directly: every entry, and what recovery reported in doubt.
fn read_log(data: &Path) -> (Vec<copyist::log::Entry>, Vec<Seq>) {
    let (log, in_doubt) = Log::open(&data.join("log"), 16 << 20).expect("log opens");
    let entries = (1..=log.last_seq().0)
        .filter_map(|n| log.get(Seq(n)).unwrap())
        .collect();
    (entries, in_doubt)
}

fn form_body(e: &copyist::log::Entry) -> Vec<u8> {
    match &e.request.body {
        BodyRef::Inline(b) => b.clone(),
        BodyRef::Blob(h) => panic!("small body stored as blob {h}"),
    }
}

/// Admin `/health`: (status, reason).
async fn health(node: &NodeProcess) -> (u16, String) {
    let r = Client::new(node.admin).get("/health").await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    (r.status, v["reason"].as_str().unwrap_or("").to_owned())
}

// === B3: fsync EIO ===

/// B3. Once fsync/fdatasync fail with EIO, the write being synced is not acknowledged, the
/// node latches (503 for captured writes until restart; reads flow; health and status say so),
/// and after a restart without the fault the entry is in doubt or absent, never accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_latches_the_writer_and_the_write_is_never_acknowledged() {
    fsync_eio(true).await;
}

/// B3 null control: the same steps, traced but without the injection, acknowledge every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_traced_without_injection_acknowledges_the_writes() {
    fsync_eio(false).await;
}

async fn fsync_eio(inject: bool) {
    let origin = StubOrigin::spawn().await;
    let w = Writer::new(&origin);
    let mut node = w.start().await;
    let c = Client::new(node.public);
    let before = c.post_form("/items", "m=before").await;
    assert_eq!(before.status, 201, "{}", before.text());
    let before_seq = before.seq().unwrap();

    // Attached once the node is up: every fsync and fdatasync from now on fails (see
    // support::strace for why not `when=N+` from the start).
    let inj = w.inj_log("inj.log");
    let mut args = vec!["-e", "trace=fsync,fdatasync,sync_file_range"];
    if inject {
        args.extend(["-e", "inject=fsync,fdatasync:error=EIO:when=1+"]);
    }
    let tracer = strace::attach(node.pid, &inj, &args).await;

    let during = c.post_form("/items", "m=during").await;
    let synced: Vec<String> = strace::text(&inj)
        .lines()
        .filter(|l| l.contains("fsync(") || l.contains("fdatasync("))
        .map(str::to_owned)
        .collect();
    assert!(
        !synced.is_empty(),
        "the write was not synced while traced:\n{}",
        strace::text(&inj)
    );
    let injected =
        strace::injections(&inj, "fdatasync").len() + strace::injections(&inj, "fsync").len();
    if !inject {
        assert_eq!(injected, 0);
        assert_eq!(during.status, 201, "{}", during.text());
        let after = c.post_form("/items", "m=after").await;
        assert_eq!(after.status, 201, "{}", after.text());
        assert_eq!(health(&node).await.0, 200);
        let status = Client::new(node.admin).get("/api/v1/status").await.text();
        assert!(status.contains("\"fail_closed\":false"), "{status}");
        drop(tracer);
        node.kill9();
        let (entries, _) = read_log(&w.data);
        let accepted: Vec<Vec<u8>> = entries
            .iter()
            .filter(|e| e.state == EntryState::Accepted)
            .map(form_body)
            .collect();
        assert_eq!(
            accepted,
            [
                b"m=before".to_vec(),
                b"m=during".to_vec(),
                b"m=after".to_vec()
            ]
        );
        return;
    }

    // VACUITY: the fault fired.
    assert!(injected > 0, "no EIO injected:\n{}", strace::text(&inj));
    assert!(strace::text(&inj).contains("EIO"), "{}", strace::text(&inj));
    assert_eq!(during.status, 503, "{}", during.text());
    assert!(during.seq().is_none(), "an unsynced write was given a seq");
    assert!(
        !origin.seen().iter().any(|s| s.body == b"m=during"),
        "the origin saw a write whose entry was not durable"
    );
    // Latched: later writes are refused without touching the disk or the origin.
    let started = origin.started();
    let after = c.post_form("/items", "m=after").await;
    assert_eq!(after.status, 503, "{}", after.text());
    assert!(after.header("retry-after").is_some());
    assert!(after.text().contains("fail closed"), "{}", after.text());
    assert_eq!(
        origin.started(),
        started,
        "a latched node forwarded a write"
    );
    assert_eq!(c.get("/page").await.status, 200, "reads must keep flowing");
    let status = Client::new(node.admin).get("/api/v1/status").await.text();
    assert!(status.contains("\"fail_closed\":true"), "{status}");
    let mut last: (u16, String);
    assert_eventually!(
        {
            last = health(&node).await;
            last.0 == 503 && last.1.contains("fail-closed")
        },
        "health does not report the latch: {last:?}"
    );
    assert!(
        w.node_log().contains("fail closed"),
        "no error logged:\n{}",
        w.node_log()
    );

    // Restart without the fault: recovers; the failed write is in doubt or absent.
    drop(tracer);
    node.kill9();
    let (entries, in_doubt) = read_log(&w.data);
    for e in &entries {
        let body = form_body(e);
        if body == b"m=during" {
            assert_eq!(e.state, EntryState::InDoubt, "seq {}", e.seq);
            assert!(in_doubt.contains(&e.seq));
        } else {
            assert_eq!(body, b"m=before", "seq {} holds {:?}", e.seq, e.state);
            assert_eq!(e.state, EntryState::Accepted);
        }
    }
    assert!(!entries.iter().any(|e| form_body(e) == b"m=after"));
    let node = w.start().await;
    let c = Client::new(node.public);
    let next = c.post_form("/items", "m=restarted").await;
    assert_eq!(
        next.status,
        201,
        "restart did not clear the latch: {}",
        next.text()
    );
    assert!(next.seq().unwrap() > before_seq);
    assert!(
        entries.iter().all(|e| e.seq.0 < next.seq().unwrap()),
        "a seq was reused"
    );
}

// === B4: blob write ENOSPC ===

/// The temp files the blob store of process `pid` writes its next few blobs to
/// (`blobs/tmp/PID-N`, see `BlobStore::writer`): strace's `-P` matches exact paths.
fn blob_tmp_paths(data: &Path, pid: u32) -> Vec<String> {
    (0..4)
        .map(|n| {
            data.join("blobs/tmp")
                .join(format!("{pid}-{n}"))
                .display()
                .to_string()
        })
        .collect()
}

/// Files under `blobs/` (temp files and blobs), relative.
fn blob_files(data: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("blobs"), &data.join("blobs"), &mut out);
    out
}

/// B4. A blob write failing with ENOSPC (only under `blobs/`): the upload gets 503, the node
/// latches, no record references a missing blob, and the temp file is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_write_enospc_refuses_the_upload_and_leaves_no_dangling_record() {
    blob_enospc(true).await;
}

/// B4 null control: the same upload, traced on the same paths without the injection, is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_write_traced_without_injection_stores_the_upload() {
    blob_enospc(false).await;
}

async fn blob_enospc(inject: bool) {
    let origin = StubOrigin::spawn().await;
    let w = Writer::new(&origin);
    let mut node = w.start().await;
    let c = Client::new(node.public);
    assert_eq!(c.post_form("/items", "m=before").await.status, 201);

    let inj = w.inj_log("inj.log");
    let paths = blob_tmp_paths(&w.data, node.pid);
    let mut args: Vec<&str> = Vec::new();
    for p in &paths {
        args.extend(["-P", p.as_str()]);
    }
    args.extend(["-e", "trace=write,pwrite64,openat"]);
    if inject {
        args.extend(["-e", "inject=write,pwrite64:error=ENOSPC"]);
    }
    let tracer = strace::attach(node.pid, &inj, &args).await;

    let upload = vec![0x5a_u8; 1 << 20];
    let r = c
        .post("/upload", "application/octet-stream", upload.clone())
        .await;
    let text = strace::text(&inj);
    assert!(
        text.contains(&paths[0]),
        "the upload was not written to {}:\n{text}",
        paths[0]
    );
    let injected =
        strace::injections(&inj, "write").len() + strace::injections(&inj, "pwrite64").len();
    if !inject {
        assert_eq!(injected, 0, "{text}");
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(origin.seen().iter().any(|s| s.body == upload));
    } else {
        // VACUITY.
        assert!(injected > 0 && text.contains("ENOSPC"), "{text}");
        assert!(
            r.status == 503 || r.status == 507,
            "upload on a full blob store: {} {}",
            r.status,
            r.text()
        );
        assert!(r.text().contains("origin not contacted"), "{}", r.text());
        assert!(!origin.seen().iter().any(|s| s.body.len() == upload.len()));
        // Latched, and says so.
        let r = c.post_form("/items", "m=after").await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(c.get("/page").await.status, 200, "reads must keep flowing");
        assert_eventually!(
            health(&node).await.0 == 503,
            "health does not report the latch"
        );
        // The temp file was removed when the write failed, not at the next start.
        let files = blob_files(&w.data);
        assert!(
            files.iter().all(|f| f == "tmp" || !f.starts_with("tmp/")),
            "temp files left: {files:?}"
        );
        assert!(
            !files.iter().any(|f| !f.starts_with("tmp")),
            "a blob was stored: {files:?}"
        );
    }
    drop(tracer);
    node.kill9();

    // BLOB: every blob a record references exists and verifies.
    let (entries, _) = read_log(&w.data);
    let blobs = BlobStore::open(&w.data.join("blobs")).unwrap();
    let mut referenced = 0;
    for e in &entries {
        if let BodyRef::Blob(h) = &e.request.body {
            blobs
                .open_verified(h)
                .unwrap_or_else(|err| panic!("seq {} references blob {h}: {err}", e.seq));
            referenced += 1;
        }
    }
    assert_eq!(referenced, usize::from(!inject), "entries: {entries:#?}");
    assert_eq!(entries.len(), if inject { 1 } else { 2 });
}

// === B5: slow fsync ===

/// B5. Every fsync/fdatasync delayed 300 ms from the first syscall: writes still succeed,
/// each takes at least one delay longer (latency grows), and none is recorded or forwarded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fsync_makes_writes_slower_but_never_duplicates_them() {
    slow_fsync(true).await;
}

/// B5 null control: traced without the delay, nothing is delayed and the same checks pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_traced_without_delay_is_not_delayed() {
    slow_fsync(false).await;
}

async fn slow_fsync(inject: bool) {
    const DELAY: Duration = Duration::from_millis(300);
    let origin = StubOrigin::spawn().await;
    let w = Writer::new(&origin);
    let inj = w.inj_log("inj.log");
    let mut args = vec!["-e", "trace=fsync,fdatasync"];
    if inject {
        args.extend(["-e", "inject=fsync,fdatasync:delay_enter=300000"]);
    }
    let mut node =
        NodeProcess::start_wrapped(&w.config, &w.data, &strace::prefix(&inj, &args)).await;
    let c = Client::new(node.public);

    // Concurrent writers: slow commits queue behind the write lock, none is retried twice.
    let mut tasks = Vec::new();
    for worker in 0..3 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..3 {
                let marker = format!("m=w{worker}-{i}");
                let t = Instant::now();
                let r = c.post_form("/items", &marker).await;
                assert_eq!(r.status, 201, "{}", r.text());
                out.push((marker, r.seq().unwrap(), t.elapsed()));
            }
            out
        }));
    }
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut slowest_fastest = Duration::MAX;
    for t in tasks {
        for (marker, seq, took) in t.await.unwrap() {
            slowest_fastest = slowest_fastest.min(took);
            assert!(acked.insert(marker, seq).is_none());
        }
    }
    let delayed =
        strace::injections(&inj, "fdatasync").len() + strace::injections(&inj, "fsync").len();
    if inject {
        // VACUITY, and the latency: a write commits twice (pending, outcome), each synced.
        assert!(delayed >= 2 * acked.len(), "{}", strace::text(&inj));
        assert!(
            slowest_fastest >= 2 * DELAY,
            "a write took only {slowest_fastest:?} with every fsync delayed {DELAY:?}"
        );
    } else {
        assert_eq!(delayed, 0);
        assert!(
            strace::text(&inj).contains("fdatasync("),
            "the null control traced no fdatasync:\n{}",
            strace::text(&inj)
        );
    }
    // Nothing duplicated: each write reached the origin once and holds one seq.
    let mut seqs: Vec<u64> = acked.values().copied().collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 9);
    for marker in acked.keys() {
        let n = origin
            .seen()
            .iter()
            .filter(|s| s.body == marker.as_bytes())
            .count();
        assert_eq!(n, 1, "{marker} reached the origin {n} times");
    }
    node.kill9();
    let (entries, _) = read_log(&w.data);
    assert_eq!(entries.len(), 9);
    for e in &entries {
        assert_eq!(e.state, EntryState::Accepted);
        let body = String::from_utf8(form_body(e)).unwrap();
        assert_eq!(
            acked.get(&body),
            Some(&e.seq.0),
            "seq {} holds {body}",
            e.seq
        );
    }
}

// === A6: a log or blob damaged while the node is stopped ===

/// What is done to the writer's sled `db` file while it is stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LogDamage {
    /// Null control.
    None,
    /// One bit flipped inside every stored copy of the third entry's body.
    Flip,
    /// `truncate -s -7`: a torn tail.
    Truncate,
    /// Truncated in the middle of the last entry's body: a torn tail that takes a committed,
    /// acknowledged entry with it.
    TruncateIntoLastEntry,
}

/// Starts `copyist run` and reports whether it came up (the node, killed) or exited at start
/// (its exit status and stderr).
async fn start_or_exit(w: &Writer) -> Result<(), (std::process::ExitStatus, String)> {
    let _ = std::fs::remove_file(w.data.join("admin.addr"));
    let err = std::fs::File::create(w.dir.path().join("start.log")).unwrap();
    let mut child = std::process::Command::new(crate::support::node::binary())
        .args(["run", "-c"])
        .arg(&w.config)
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(w.dir.path().join("start.log")).unwrap();
            return Err((status, text));
        }
        if w.data.join("admin.addr").exists() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("copyist neither came up nor exited");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A6 (log). Acknowledged entries in a log whose sled file was damaged while stopped: sled
/// would silently end the log at the damage (dropping the entry and every later one); copyist
/// must refuse to start and name the problem, or (if nothing committed was hit) keep every
/// acknowledged entry. Never a silent drop, never a reused seq.
async fn damaged_log(damage: LogDamage) {
    let origin = StubOrigin::spawn().await;
    let w = Writer::new(&origin);
    let mut node = w.start().await;
    let c = Client::new(node.public);
    let mut acked = Vec::new();
    for i in 0..5 {
        let r = c
            .post_form("/items", &format!("m=marker-{i}-abcdefgh"))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        acked.push(r.seq().unwrap());
    }
    node.kill9();

    let db = w.data.join("log/db");
    let before = std::fs::read(&db).unwrap();
    match damage {
        LogDamage::None => {}
        LogDamage::Flip => {
            let needle = b"marker-2-abcdefgh";
            let mut bytes = before.clone();
            let hits: Vec<usize> = (0..bytes.len() - needle.len())
                .filter(|&i| &bytes[i..i + needle.len()] == needle)
                .collect();
            for &i in &hits {
                bytes[i + 9] ^= 0x01;
            }
            std::fs::write(&db, &bytes).unwrap();
            // VACUITY: the bytes of a stored entry changed.
            assert!(!hits.is_empty(), "entry 3 is not in {}", db.display());
            assert_ne!(std::fs::read(&db).unwrap(), before);
        }
        LogDamage::Truncate => {
            let st = std::process::Command::new("truncate")
                .args(["-s", "-7"])
                .arg(&db)
                .status()
                .unwrap();
            assert!(st.success());
            // VACUITY.
            assert_eq!(
                std::fs::metadata(&db).unwrap().len() + 7,
                before.len() as u64
            );
        }
        LogDamage::TruncateIntoLastEntry => {
            let needle = b"marker-4-abcdefgh";
            // The first copy: the entry is written again when settled.
            let at = (0..before.len() - needle.len())
                .find(|&i| &before[i..i + needle.len()] == needle)
                .expect("entry 5 is not in the db file");
            let st = std::process::Command::new("truncate")
                .args(["-s", &(at + 5).to_string()])
                .arg(&db)
                .status()
                .unwrap();
            assert!(st.success());
            // VACUITY: the file now ends inside entry 5.
            let after = std::fs::read(&db).unwrap();
            assert_eq!(after.len(), at + 5);
            assert!(!after.windows(needle.len()).any(|w| w == needle));
        }
    }

    match start_or_exit(&w).await {
        Err((status, text)) => {
            eprintln!("{damage:?}: refused to start");
            assert_ne!(
                damage,
                LogDamage::None,
                "an intact log did not open: {text}"
            );
            assert!(!status.success());
            assert!(
                text.contains("log damaged") && text.contains("sled recovered only"),
                "refused without saying why: {text}"
            );
            // Still refused on a second try: restart alone does not paper over it.
            let (_, again) = start_or_exit(&w).await.expect_err("second start came up");
            assert!(again.contains("log damaged"), "{again}");
        }
        Ok(()) => {
            eprintln!("{damage:?}: started");
            assert!(
                !matches!(damage, LogDamage::Flip | LogDamage::TruncateIntoLastEntry),
                "the writer started on a log whose entries were damaged ({damage:?})"
            );
            // Whatever survived must be all of it: every acknowledged entry, intact.
            let (entries, _) = read_log(&w.data);
            let seqs: Vec<u64> = entries.iter().map(|e| e.seq.0).collect();
            assert_eq!(seqs, acked, "acknowledged entries lost ({damage:?})");
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(form_body(e), format!("m=marker-{i}-abcdefgh").as_bytes());
                assert!(
                    matches!(e.state, EntryState::Accepted | EntryState::InDoubt),
                    "seq {}: {:?}",
                    e.seq,
                    e.state
                );
                if damage == LogDamage::None {
                    assert_eq!(e.state, EntryState::Accepted);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_stored_entry_stops_the_writer_from_starting() {
    damaged_log(LogDamage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_refused_or_loses_nothing_acknowledged() {
    damaged_log(LogDamage::Truncate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_torn_inside_the_last_acknowledged_entry_stops_the_writer_from_starting() {
    damaged_log(LogDamage::TruncateIntoLastEntry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_log_restarts_with_every_acknowledged_entry() {
    damaged_log(LogDamage::None).await;
}

/// What is done to the blob of an acknowledged upload before it was shipped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BlobDamage {
    None,
    Flip,
    Delete,
}

/// A6 (blob). An upload acknowledged while its mirror was down; its blob is altered or
/// deleted on the stopped writer. The writer must not ship it (it says why in its status and
/// log), the mirror must not apply it or anything after it; untouched, it converges.
async fn damaged_blob(damage: BlobDamage) {
    use crate::support::client::multipart;
    use crate::support::process_cluster::{ProcessCluster, ProcessClusterOpts};

    let mut c = ProcessCluster::start(ProcessClusterOpts::default()).await;
    let w = c.writer.client();
    assert_eq!(w.post_form("/articles", "title=a&body=b").await.status, 303);
    c.wait_converged(Duration::from_secs(20)).await;
    c.mirror.kill9();

    let file: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let body = multipart("B0", &[("title", "pic")], &[("file", "pic.bin", &file)]);
    let r = w
        .post("/upload", "multipart/form-data; boundary=B0", body)
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let upload_seq = r.seq().unwrap();
    let after = w.post_form("/articles", "title=after&body=b").await;
    assert_eq!(after.status, 303);
    c.writer.kill9();

    // Every blob file on the writer belongs to this upload (body and parts).
    let blobs_dir = c.writer.data_dir.join("blobs");
    let mut files = Vec::new();
    for sub in std::fs::read_dir(&blobs_dir).unwrap().flatten() {
        if sub.file_name() == "tmp" || !sub.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
            files.push(f.path());
        }
    }
    assert!(!files.is_empty(), "the upload left no blob on the writer");
    for f in &files {
        match damage {
            BlobDamage::None => {}
            BlobDamage::Flip => {
                let mut bytes = std::fs::read(f).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x01;
                std::fs::write(f, &bytes).unwrap();
            }
            BlobDamage::Delete => std::fs::remove_file(f).unwrap(),
        }
    }

    c.writer.start().await;
    c.mirror.start().await;
    if damage == BlobDamage::None {
        c.wait_converged(Duration::from_secs(30)).await;
        assert_eq!(c.writer.dump().await, c.mirror.dump().await);
        return;
    }
    let want = match damage {
        BlobDamage::Flip => "is corrupt",
        _ => "not found",
    };
    let mut last: serde_json::Value;
    crate::assert_eventually!(
        {
            last = c.writer.status().await["mirrors"][0].clone();
            last["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(want))
        },
        "the writer does not say why it cannot ship: {last}\n{}",
        c.logs()
    );
    let m = c.mirror.status().await;
    assert!(
        m["applied_seq"].as_u64().unwrap() < upload_seq,
        "the mirror applied past a damaged blob: {m}"
    );
    assert!(c.mirror.entry(upload_seq).await.is_none(), "shipped anyway");
    let dump: serde_json::Value = serde_json::from_str(&c.mirror.dump().await).unwrap();
    assert_eq!(dump["uploads"].as_array().map_or(0, Vec::len), 0, "{dump}");
    assert!(
        c.writer.log_tail().contains(want),
        "not in the writer's log:\n{}",
        c.writer.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_blob_is_never_shipped_and_the_writer_says_so() {
    damaged_blob(BlobDamage::Flip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_blob_is_never_shipped_and_the_writer_says_so() {
    damaged_blob(BlobDamage::Delete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_blob_is_shipped_and_the_mirror_converges() {
    damaged_blob(BlobDamage::None).await;
}

// === B2: mirror disk full ===

/// Fills the filesystem holding `dir` with one file; returns the error that stopped it.
fn fill_disk(dir: &Path) -> std::io::Error {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xee_u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            // Whatever fits in the last partial chunk is written too.
            let mut small = vec![0xee_u8; 512];
            while f.write_all(&small).is_ok() {
                small.truncate(small.len().max(2) / 2);
                if small.len() < 2 {
                    break;
                }
            }
            return e;
        }
    }
}

/// B2. The mirror's disk fills up while the writer keeps accepting writes: the mirror applies
/// nothing it has not recorded, the writer keeps retrying and reports the lag, the mirror says
/// its storage failed; once space is freed (and the latched mirror restarted) it catches up in
/// order, each entry once, and converges. `full: false` is the null control.
async fn mirror_disk_full(full: bool) {
    use crate::crash::{dump_article_ids, settle_in_doubt};
    use crate::support::process_cluster::{ProcessCluster, ProcessClusterOpts};

    let mut c = ProcessCluster::start(ProcessClusterOpts {
        mirror_disk: Some("8m".into()),
        ..Default::default()
    })
    .await;
    let w = c.writer.client();
    for i in 0..2 {
        let r = w
            .post_form("/articles", &format!("title=pre{i}&body=b"))
            .await;
        assert_eq!(r.status, 303, "{}", r.text());
    }
    c.wait_converged(Duration::from_secs(20)).await;

    if full {
        let e = fill_disk(&c.mirror.data_dir);
        // VACUITY: the mirror's disk is really full.
        assert_eq!(e.raw_os_error(), Some(28), "filling stopped with {e}");
        let probe = std::fs::write(c.mirror.data_dir.join("probe"), vec![1u8; 64 * 1024]);
        assert!(probe.is_err(), "the disk is not full");
    }
    let mut acked = Vec::new();
    for i in 0..6 {
        let r = w
            .post_form("/articles", &format!("title=during{i}&body=b"))
            .await;
        assert_eq!(
            r.status, 303,
            "the writer must not depend on a mirror's disk"
        );
        acked.push(r.seq().unwrap());
    }
    let last = *acked.last().unwrap();

    if full {
        // The writer keeps trying and reports the lag; the mirror reports its storage failure.
        let mut seen: serde_json::Value;
        crate::assert_eventually!(
            {
                seen = c.writer.status().await["mirrors"][0].clone();
                seen["lag_entries"].as_u64().unwrap_or(0) > 0 && !seen["last_error"].is_null()
            },
            "the writer does not report the stuck mirror: {seen}\n{}",
            c.logs()
        );
        let mut m: serde_json::Value;
        crate::assert_eventually!(
            {
                m = c.mirror.status().await;
                m["fail_closed"] == true
            },
            "the mirror does not report its storage failure: {m}\n{}",
            c.logs()
        );
        assert!(m["applied_seq"].as_u64().unwrap() < last, "{m}");
        let health = Client::new(c.mirror.admin()).get("/health").await;
        assert_eq!(health.status, 503, "{}", health.text());
        // Nothing applied without a record: every article the mirror's CMS has belongs to an
        // entry in the mirror's log.
        let mirror_ids = dump_article_ids(&c.mirror.dump().await);
        for (n, id) in mirror_ids.iter().enumerate() {
            let seq = n as u64 + 1;
            assert_eq!(*id, seq, "articles are created one per seq here");
            let entry = c.mirror.entry(seq).await;
            assert!(
                entry.is_some(),
                "article {id} applied on the mirror without an entry for seq {seq}"
            );
        }
        // Space comes back; the latched mirror needs a restart (FAILCLOSED).
        std::fs::remove_file(c.mirror.data_dir.join("filler")).unwrap();
        c.mirror.kill9();
        c.mirror.start().await;
        let settled = settle_in_doubt(&c).await;
        eprintln!("after the restart the operator had to settle: {settled:?}");
    }
    c.wait_converged(Duration::from_secs(30)).await;
    // ORDER, ONCE, CONVERGE.
    let (wd, md) = (c.writer.dump().await, c.mirror.dump().await);
    let ids = dump_article_ids(&md);
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<u64>>(),
        "mirror articles: {md}"
    );
    assert_eq!(wd, md);
    for seq in 1..=last {
        let e = c.mirror.entry(seq).await.unwrap();
        assert!(
            e["state"] == "applied" || e["state"] == "skipped",
            "seq {seq}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mirror_disk_stalls_the_mirror_and_it_resumes_in_order_once_freed() {
    mirror_disk_full(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_with_room_on_its_small_disk_keeps_up() {
    mirror_disk_full(false).await;
}

/// B3, the second sync of a write: the CMS has answered 200, but the fsync of its outcome
/// fails. The client is not told 200 (503 naming the entry), the node latches, and after a
/// restart the entry is in doubt or, if the unsynced outcome did survive in the page cache,
/// accepted with the CMS really holding the row (what the writer's CMS did is what mirrors get;
/// never a row the CMS does not have). The null control gets its 200.
async fn outcome_fsync_eio(inject: bool) {
    let cms = crate::support::PhpCms::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, config_text(&data, &cms.url(), Opts::default())).unwrap();
    let mut node = NodeProcess::start(&config, &data).await;
    let c = Client::new(node.public);
    let admin = Client::new(node.admin);
    let r = c.post_form("/articles", "title=before&body=b").await;
    assert_eq!(r.status, 303, "{}", r.text());

    // The CMS commits the row, then sleeps; meanwhile the entry is durably pending.
    let c2 = c.clone();
    let slow = tokio::spawn(async move { c2.post_form("/slow?ms=2000", "x=1").await });
    assert_eventually!(
        admin
            .get("/api/v1/log/2")
            .await
            .text()
            .contains("\"pending\""),
        "the slow write was not logged"
    );
    let inj = dir.path().join("inj.log");
    let mut args = vec!["-e", "trace=fsync,fdatasync"];
    if inject {
        args.extend(["-e", "inject=fsync,fdatasync:error=EIO:when=1+"]);
    }
    let tracer = strace::attach(node.pid, &inj, &args).await;
    let r = slow.await.unwrap();
    let injected =
        strace::injections(&inj, "fdatasync").len() + strace::injections(&inj, "fsync").len();
    assert!(
        strace::text(&inj).contains("fdatasync("),
        "the outcome was not synced while traced:\n{}",
        strace::text(&inj)
    );
    if !inject {
        assert_eq!(injected, 0);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seq(), Some(2));
        drop(tracer);
        node.kill9();
        let (entries, _) = read_log(&data);
        assert_eq!(entries[1].state, EntryState::Accepted);
        return;
    }
    // VACUITY.
    assert!(injected > 0, "{}", strace::text(&inj));
    assert_eq!(
        r.status,
        503,
        "the client was told {}: {}",
        r.status,
        r.text()
    );
    assert!(
        r.text().contains("outcome cannot be logged"),
        "{}",
        r.text()
    );
    let after = c.post_form("/articles", "title=after&body=b").await;
    assert_eq!(after.status, 503, "not latched: {}", after.text());
    assert_eq!(c.get("/").await.status, 200, "reads must keep flowing");
    drop(tracer);
    node.kill9();

    let (entries, in_doubt) = read_log(&data);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let e = &entries[1];
    assert_eq!(e.request.target, "/slow?ms=2000");
    let db = cms.dir.path().join("cms.sqlite");
    let code = format!(
        "$db = new PDO('sqlite:{}'); echo $db->query(\"SELECT COUNT(*) FROM articles WHERE title = 'slow'\")->fetchColumn();",
        db.display()
    );
    let out = std::process::Command::new("php")
        .arg("-r")
        .arg(code)
        .output()
        .unwrap();
    let slow_rows = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(slow_rows, "1", "the CMS did commit the slow row");
    match e.state {
        EntryState::InDoubt => assert!(in_doubt.contains(&e.seq) || e.outcome.is_some()),
        EntryState::Accepted => {
            assert_eq!(e.outcome.as_ref().map(|o| o.status), Some(200));
        }
        other => panic!("entry 2 is {other:?} after the failed outcome fsync"),
    }
    eprintln!("outcome fsync EIO: entry 2 is {:?} after restart", e.state);
    let node = NodeProcess::start(&config, &data).await;
    let r = Client::new(node.public)
        .post_form("/articles", "title=restarted&body=b")
        .await;
    assert_eq!(
        r.status,
        303,
        "restart did not clear the latch: {}",
        r.text()
    );
    assert_eq!(r.seq(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_on_the_outcome_is_not_acknowledged() {
    outcome_fsync_eio(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_fsync_traced_without_injection_is_acknowledged() {
    outcome_fsync_eio(false).await;
}
