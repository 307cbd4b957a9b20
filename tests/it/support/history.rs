//! Jepsen-style histories (RELIABILITY.md, "Common harness"): clients that record what they sent
//! and what they were told, and the checkers that hold a history and the nodes' final state to
//! the invariants.
//!
//! * [`History`] collects [`Op`]s: `{client, op, value, invoke, complete, outcome, seq, id}`.
//!   `outcome` is `ok` (the client got a 2xx/3xx), `fail` (the write certainly did not happen:
//!   no connection was made, a 4xx, or copyist said "origin not contacted") or `info` (nobody
//!   knows: a timeout, a reset after sending, any other 5xx). Values are unique per history.
//! * [`Recorder`] is one client aimed at one node; [`Workers`] are client loops.
//! * [`check`] takes a [`check::Snapshot`] of every node (status, `/dump`, log entries, blobs)
//!   and returns a [`check::Report`] a test asserts on; it prints itself on failure.
//! * [`vacuity`] runs a fault test with the fault on and off (null control), samples copyist's
//!   memory and fds, and appends the row `scripts/chaos.sh` summarises.

pub mod check;
pub mod vacuity;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use super::client::{multipart, SendError};
use super::{Client, Reply};

/// What one op told its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged (2xx or 3xx): it must be there.
    Ok,
    /// Certainly not applied: it must not be there.
    Fail,
    /// Unknown: it may or may not be there, and either is correct.
    Info,
}

/// The writes a history knows how to make and find again in a `/dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// `POST /articles` with `title=VALUE`: a row in `articles`.
    Add,
    /// `POST /upload`, multipart with `title=VALUE` and a file: a row in `uploads`.
    Upload,
}

impl OpKind {
    /// The `/dump` table its rows land in; rows are found by `title`.
    pub fn table(self) -> &'static str {
        match self {
            OpKind::Add => "articles",
            OpKind::Upload => "uploads",
        }
    }

    /// The prefix of the `Location` the CMS answers with (`/article/ID`, `/upload/ID`).
    pub fn location_prefix(self) -> &'static str {
        match self {
            OpKind::Add => "/article/",
            OpKind::Upload => "/upload/",
        }
    }
}

/// One completed operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// Which client sent it (numbered per history).
    pub client: usize,
    pub op: OpKind,
    /// Unique within the history.
    pub value: String,
    /// The node it was sent to.
    pub via: String,
    /// Microseconds since the history started.
    pub invoke_us: u64,
    pub complete_us: u64,
    pub outcome: Outcome,
    /// HTTP status, when an answer came.
    pub status: Option<u16>,
    /// `X-Copyist-Seq` of the answer.
    pub seq: Option<u64>,
    /// The created row's id, from `Location`.
    pub id: Option<u64>,
    /// Why it was not ok.
    pub error: Option<String>,
}

/// The id at the end of a `Location: /article/ID`.
pub fn location_id(location: &str) -> Option<u64> {
    location.rsplit('/').next().and_then(|id| id.parse().ok())
}

/// What an answer means for a write: see the module doc.
pub fn classify(reply: &Result<Reply, SendError>) -> Outcome {
    match reply {
        Ok(r) if (200..400).contains(&r.status) => Outcome::Ok,
        Ok(r) if (400..500).contains(&r.status) => Outcome::Fail,
        // copyist's own refusals before anything reached the CMS (fail-closed, log or blob
        // store unwritable) say so; any other 5xx may follow a forward to the CMS.
        Ok(r) if r.text().contains("origin not contacted") => Outcome::Fail,
        Ok(_) => Outcome::Info,
        Err(SendError::Connect(_)) => Outcome::Fail,
        Err(SendError::Other(_)) => Outcome::Info,
    }
}

struct Inner {
    start: Instant,
    prefix: String,
    ops: Mutex<Vec<Op>>,
    clients: AtomicUsize,
}

/// A shared, append-only history. Cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

impl History {
    /// A history whose values all start with `prefix` (so a reader of a dump can tell them
    /// from rows a test wrote by other means).
    pub fn new(prefix: &str) -> History {
        History {
            inner: Arc::new(Inner {
                start: Instant::now(),
                prefix: prefix.to_string(),
                ops: Mutex::new(Vec::new()),
                clients: AtomicUsize::new(0),
            }),
        }
    }

    /// A new client, numbered in this history, sending to `via` (named `name`).
    pub fn recorder(&self, name: &str, via: SocketAddr) -> Recorder {
        Recorder {
            history: self.clone(),
            client: self.inner.clients.fetch_add(1, Ordering::SeqCst),
            name: name.to_string(),
            http: Client::new(via),
            next: 0,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Every op so far, in completion order.
    pub fn ops(&self) -> Vec<Op> {
        self.inner.ops.lock().unwrap().clone()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.inner
            .ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.outcome == outcome)
            .count()
    }

    /// The row id of the latest op that got one.
    pub fn last_id(&self) -> Option<u64> {
        self.inner
            .ops
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|o| o.id)
    }

    pub fn len(&self) -> usize {
        self.inner.ops.lock().unwrap().len()
    }

    /// "N ops: a ok, b fail, c info".
    pub fn summary(&self) -> String {
        format!(
            "{} ops: {} ok, {} fail, {} info",
            self.len(),
            self.count(Outcome::Ok),
            self.count(Outcome::Fail),
            self.count(Outcome::Info)
        )
    }

    /// Writes the history as JSON lines (one op per line), for a post-mortem.
    pub fn write_jsonl(&self, path: &Path) {
        let mut text = String::new();
        for op in self.ops() {
            text.push_str(&serde_json::to_string(&op).unwrap());
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }

    fn since_start(&self, t: Instant) -> u64 {
        t.duration_since(self.inner.start).as_micros() as u64
    }

    fn push(&self, op: Op) {
        self.inner.ops.lock().unwrap().push(op);
    }
}

/// One client of a history, aimed at one node.
pub struct Recorder {
    history: History,
    client: usize,
    name: String,
    http: Client,
    next: u64,
}

impl Recorder {
    pub fn client(&self) -> usize {
        self.client
    }

    /// A fresh value, unique in the history.
    pub fn value(&mut self) -> String {
        self.next += 1;
        format!("{}c{}-{}", self.history.prefix(), self.client, self.next)
    }

    /// `POST /articles` with a fresh title.
    pub async fn add(&mut self) -> Op {
        let value = self.value();
        let req = self
            .http
            .request("POST", "/articles")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("title={value}&body=b"))))
            .unwrap();
        self.record(OpKind::Add, value, req).await
    }

    /// `POST /upload` of `file` with a fresh title.
    pub async fn upload(&mut self, file: &[u8]) -> Op {
        let value = self.value();
        let boundary = "history-boundary-7d1e";
        let body = multipart(
            boundary,
            &[("title", &value)],
            &[("file", &format!("{value}.bin"), file)],
        );
        let req = self
            .http
            .request("POST", "/upload")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.record(OpKind::Upload, value, req).await
    }

    /// Sends `req` (a write of `value` of kind `op`) and records what came back.
    pub async fn record(&self, op: OpKind, value: String, req: http::Request<Full<Bytes>>) -> Op {
        let invoke = Instant::now();
        let reply = self.http.try_send_classified(req).await;
        let complete = Instant::now();
        let outcome = classify(&reply);
        let (status, seq, id, error) = match &reply {
            Ok(r) => (
                Some(r.status),
                r.seq(),
                r.header("location").and_then(location_id),
                (outcome != Outcome::Ok).then(|| {
                    format!(
                        "{} {}",
                        r.status,
                        r.text().chars().take(200).collect::<String>()
                    )
                }),
            ),
            Err(e) => (None, None, None, Some(e.to_string())),
        };
        let op = Op {
            client: self.client,
            op,
            value,
            via: self.name.clone(),
            invoke_us: self.history.since_start(invoke),
            complete_us: self.history.since_start(complete),
            outcome,
            status,
            seq,
            id,
            error,
        };
        self.history.push(op.clone());
        op
    }
}

/// What each [`Workers`] loop sends.
#[derive(Clone, Debug)]
pub struct Load {
    /// Every Nth op is an upload of `upload_bytes` (0: never).
    pub upload_every: u64,
    pub upload_bytes: usize,
    /// Stop a loop at its first op that is not `ok` (its node was killed under it).
    pub stop_on_error: bool,
    /// At most this many ops per second per loop (None: as fast as answered).
    pub rate: Option<f64>,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            upload_every: 0,
            upload_bytes: 64 << 10,
            stop_on_error: false,
            rate: None,
        }
    }
}

/// Client loops writing through recorders until told to stop.
pub struct Workers {
    history: History,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// `loops` client loops, loop i sending to `targets[i % len]` (name, address).
    pub fn spawn(
        history: &History,
        targets: &[(String, SocketAddr)],
        loops: usize,
        load: Load,
    ) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..loops)
            .map(|i| {
                let (name, addr) = &targets[i % targets.len()];
                let mut rec = history.recorder(name, *addr);
                let (stop, load) = (stop.clone(), load.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut pace = load.rate.map(|r| {
                        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                        // After a stall, carry on at the rate rather than bursting to catch up.
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    while !stop.load(Ordering::SeqCst) {
                        if let Some(p) = pace.as_mut() {
                            // Load shaping, not synchronisation: a fixed offered rate.
                            p.tick().await;
                        }
                        n += 1;
                        let op = if load.upload_every > 0 && n % load.upload_every == 0 {
                            let file =
                                pattern(rec.client() as u64 * 1_000_003 + n, load.upload_bytes);
                            rec.upload(&file).await
                        } else {
                            rec.add().await
                        };
                        if load.stop_on_error && op.outcome != Outcome::Ok {
                            return;
                        }
                    }
                })
            })
            .collect();
        Workers {
            history: history.clone(),
            stop,
            tasks,
        }
    }

    /// Whether every loop has ended (each hit an error, with `stop_on_error`).
    pub fn all_ended(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }

    /// Waits until the history holds at least `n` ok ops.
    pub async fn wait_ok(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.history.count(Outcome::Ok);
            if ok >= n {
                return;
            }
            assert!(
                !self.all_ended(),
                "every client loop ended before {n} writes were acknowledged ({})",
                self.history.summary()
            );
            assert!(
                Instant::now() < deadline,
                "writes stopped flowing: {ok} of {n} acknowledged ({})",
                self.history.summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loops and waits for their last ops to complete.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift; no `rand` dependency): distinct uploads
/// get distinct contents, so the blob store holds one blob per upload.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Result<Reply, SendError> {
        Ok(Reply {
            status,
            headers: http::HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        })
    }

    #[test]
    fn answers_are_classified_ok_fail_or_info() {
        assert_eq!(classify(&reply(303, "")), Outcome::Ok);
        assert_eq!(classify(&reply(201, "")), Outcome::Ok);
        assert_eq!(classify(&reply(422, "title required")), Outcome::Fail);
        assert_eq!(
            classify(&reply(503, "log cannot be written; origin not contacted")),
            Outcome::Fail
        );
        assert_eq!(classify(&reply(504, "origin timed out")), Outcome::Info);
        assert_eq!(
            classify(&reply(503, "entry 4 was sent to the origin")),
            Outcome::Info
        );
        assert_eq!(
            classify(&Err(SendError::Connect("refused".into()))),
            Outcome::Fail
        );
        assert_eq!(
            classify(&Err(SendError::Other("reset".into()))),
            Outcome::Info
        );
    }
}
