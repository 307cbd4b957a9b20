//! Prometheus metrics: the counters and histograms the request path bumps, and their text
//! exposition (format 0.0.4) at `GET /metrics` on the admin listener.
//!
//! Two kinds of numbers, kept apart on purpose:
//! * Events (requests by action, capture and origin latency, halts, skips) are counted where they
//!   happen, in [`Metrics`]: plain atomics, one `fetch_add` per event, never a lock on the
//!   request path.
//! * State (sequence numbers, mirror lag and state, halted, fail-closed) is read at scrape time
//!   from the log, the shippers and the capture latch, so it can never disagree with
//!   `copyist status`. The only cached value is the blob store's size, walked at most once per
//!   [`BLOB_REFRESH`] off the runtime.
//!
//! The format is hand-written: a few dozen lines, against the `metrics` + exporter stack's many
//! dependencies. Every metric and its labels are listed in the README's "Metrics" table; change
//! both together.

use std::fmt::{Display, Write as _};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Response, StatusCode};

use super::api::{self, AdminState};
use crate::config::Role;
use crate::error::{text_response, ProxyBody};

/// Upper bounds of the latency histograms, in seconds: from a fast local CMS (sub-millisecond)
/// to a request near the default origin timeout.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long a computed blob store size is reused: walking a large store on every scrape would
/// cost more than the scrape is worth.
pub const BLOB_REFRESH: Duration = Duration::from_secs(60);

/// `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Mirror states as the writer's shippers report them (`copyist_mirror_state{state}`).
const MIRROR_STATES: [&str; 6] = [
    "connecting",
    "streaming",
    "catching-up",
    "paused",
    "halted",
    "blocked",
];

/// What the public listener did with a request (`copyist_requests_total{action}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Streamed to the origin and answered.
    Pass,
    /// Captured: logged, sent to the origin, settled and answered.
    Capture,
    /// Sent by a mirror to its writer (a write, a writer path, a client with writer affinity)
    /// and answered with the writer's answer.
    Forward,
    /// Answered by copyist under its reserved prefix.
    Reserved,
    /// Refused before the origin: malformed, over a limit, a refused method, a write on a mirror.
    Refused,
    /// Failed at the origin or in copyist (unreachable or slow origin, storage, fail-closed).
    Error,
}

impl Action {
    /// Every action, in exposition order.
    pub const ALL: [Action; 6] = [
        Action::Pass,
        Action::Capture,
        Action::Forward,
        Action::Reserved,
        Action::Refused,
        Action::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Capture => "capture",
            Action::Forward => "forward",
            Action::Reserved => "reserved",
            Action::Refused => "refused",
            Action::Error => "error",
        }
    }
}

/// Which path sent a request to the origin (`copyist_origin_seconds{path_kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Pass-through: timed to the response headers (the body streams afterwards).
    Pass,
    /// Capture on the writer: timed until the whole response is collected.
    Capture,
    /// Replay on a mirror: timed until the whole response is collected.
    Replay,
}

impl PathKind {
    /// Every kind, in exposition order.
    pub const ALL: [PathKind; 3] = [PathKind::Pass, PathKind::Capture, PathKind::Replay];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Pass => "pass",
            PathKind::Capture => "capture",
            PathKind::Replay => "replay",
        }
    }
}

// === impl Histogram ===

/// A latency histogram over [`BUCKETS`]. Each observation bumps one bucket (made cumulative when
/// rendered) and the sum; the count is the buckets' total, so `_count` always equals the `+Inf`
/// bucket within one scrape.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last slot is above the largest bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations in nanoseconds (wraps only after centuries of total latency).
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last one is `+Inf`), and the sum in seconds.
    fn snapshot(&self) -> ([u64; BUCKETS.len() + 1], f64) {
        let mut cumulative = [0u64; BUCKETS.len() + 1];
        let mut total = 0u64;
        for (slot, count) in cumulative.iter_mut().zip(&self.counts) {
            total += count.load(Ordering::Relaxed);
            *slot = total;
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum)
    }
}

// === impl Metrics ===

/// Event counters and histograms of one node, shared (in an `Arc`) by the proxy, the capture
/// pipeline, the replication service and the admin listener.
#[derive(Debug)]
pub struct Metrics {
    /// Indexed like [`Action::ALL`].
    requests: [AtomicU64; Action::ALL.len()],
    /// Whole capture: from the first body byte spooled to the outcome durable.
    capture: Histogram,
    /// Indexed like [`PathKind::ALL`].
    origin: [Histogram; PathKind::ALL.len()],
    /// Halts of this mirror since start.
    halts: AtomicU64,
    /// Operator skips applied to this node's log since start.
    skips: AtomicU64,
    /// Whether the last config (re)load succeeded.
    reload_success: AtomicBool,
    /// When the config was last loaded successfully (Unix ms).
    reload_unix_ms: AtomicU64,
    /// Access log lines dropped because the writer fell behind (or failed to write).
    access_log_dropped: AtomicU64,
    /// The blob store's directory, walked for `copyist_blob_bytes`.
    blob_dir: PathBuf,
    /// Last computed blob store size and when it was computed. A tokio mutex: held across the
    /// walk so concurrent scrapes wait for one walk instead of starting several.
    blob_bytes: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl Metrics {
    /// Fresh counters for a node whose blob store is at `blob_dir`, with the config just loaded.
    pub fn new(blob_dir: PathBuf) -> Metrics {
        Metrics {
            requests: Default::default(),
            capture: Histogram::default(),
            origin: Default::default(),
            halts: AtomicU64::new(0),
            skips: AtomicU64::new(0),
            reload_success: AtomicBool::new(true),
            reload_unix_ms: AtomicU64::new(crate::capture::unix_ms()),
            access_log_dropped: AtomicU64::new(0),
            blob_dir,
            blob_bytes: tokio::sync::Mutex::new(None),
        }
    }

    /// Counts one request answered on the public listener.
    pub fn request(&self, action: Action) {
        let i = Action::ALL.iter().position(|a| *a == action).unwrap_or(0);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one whole capture (spooled to settled).
    pub fn observe_capture(&self, d: Duration) {
        self.capture.observe(d);
    }

    /// Records how long the origin took to answer on `kind`'s path.
    pub fn observe_origin(&self, kind: PathKind, d: Duration) {
        let i = PathKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.origin[i].observe(d);
    }

    /// Counts a halt of this mirror.
    pub fn halted(&self) {
        self.halts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an operator skip applied to this node's log.
    pub fn skipped(&self) {
        self.skips.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a config reload: a failure keeps the old config (and its timestamp) and clears
    /// `copyist_config_reload_success`; a success sets it and the timestamp to now.
    pub fn config_reloaded(&self, success: bool) {
        if success {
            self.reload_unix_ms
                .store(crate::capture::unix_ms(), Ordering::Relaxed);
        }
        self.reload_success.store(success, Ordering::Relaxed);
    }

    /// Counts access log lines that were not written: the queue to the writer was full, or
    /// the write failed.
    pub fn access_log_dropped(&self, lines: u64) {
        self.access_log_dropped.fetch_add(lines, Ordering::Relaxed);
    }

    /// Access log lines dropped so far.
    pub fn access_log_dropped_total(&self) -> u64 {
        self.access_log_dropped.load(Ordering::Relaxed)
    }

    /// The blob store's total size: recomputed (off the runtime) when older than
    /// [`BLOB_REFRESH`]; the last known value when a walk fails; `None` before any succeeded.
    async fn blob_bytes(&self) -> Option<u64> {
        let mut cached = self.blob_bytes.lock().await;
        if let Some((at, bytes)) = *cached {
            if at.elapsed() < BLOB_REFRESH {
                return Some(bytes);
            }
        }
        let dir = self.blob_dir.clone();
        match tokio::task::spawn_blocking(move || dir_bytes(&dir)).await {
            Ok(Ok(bytes)) => {
                *cached = Some((Instant::now(), bytes));
                Some(bytes)
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, dir = %self.blob_dir.display(), "cannot size the blob store");
                cached.map(|(_, b)| b)
            }
            Err(error) => {
                tracing::warn!(%error, "blob store size task failed");
                cached.map(|(_, b)| b)
            }
        }
    }

    /// The event metrics (everything this struct counts itself).
    fn write_events(&self, out: &mut Text) {
        out.family(
            "copyist_requests_total",
            "counter",
            "Requests on the public listener by what copyist did with them.",
        );
        for (action, n) in Action::ALL.iter().zip(&self.requests) {
            out.sample(
                "copyist_requests_total",
                &[("action", action.as_str())],
                n.load(Ordering::Relaxed),
            );
        }
        out.family(
            "copyist_capture_seconds",
            "histogram",
            "Whole capture of a write, from spooling its body to its outcome being durable.",
        );
        out.histogram("copyist_capture_seconds", &[], &self.capture);
        out.family(
            "copyist_origin_seconds",
            "histogram",
            "Time the local CMS took to answer: headers for pass-through, the whole response for capture and replay.",
        );
        for (kind, h) in PathKind::ALL.iter().zip(&self.origin) {
            out.histogram("copyist_origin_seconds", &[("path_kind", kind.as_str())], h);
        }
        out.counter(
            "copyist_halts_total",
            "Times this mirror halted (a difference or an apply error) since start.",
            self.halts.load(Ordering::Relaxed),
        );
        out.counter(
            "copyist_skips_total",
            "Operator skips applied to this node's log since start.",
            self.skips.load(Ordering::Relaxed),
        );
        out.gauge(
            "copyist_config_reload_success",
            "Whether the last configuration load or reload succeeded (1) or was rejected (0).",
            u8::from(self.reload_success.load(Ordering::Relaxed)),
        );
        out.gauge(
            "copyist_config_reload_timestamp_seconds",
            "When the configuration in use was loaded (Unix time).",
            Float(self.reload_unix_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
        out.counter(
            "copyist_access_log_dropped_total",
            "Access log lines dropped because the log writer fell behind or could not write.",
            self.access_log_dropped.load(Ordering::Relaxed),
        );
        out.family(
            "copyist_build_info",
            "gauge",
            "Always 1; the labels say which copyist is running.",
        );
        out.sample(
            "copyist_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("commit", "")],
            1,
        );
    }
}

/// Total bytes of the stored blobs under `dir` (the two-hex-digit subdirectories; unfinished
/// blobs in `tmp/` are not stored yet). Files that vanish mid-walk are skipped.
///
/// Reads metadata only, never content. It belongs in `blobs` (the only module meant to touch
/// the blob directory) as a `BlobStore` method, and should move there when that file next
/// changes; until then it follows the layout `blobs` documents.
fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    for sub in std::fs::read_dir(dir)?.flatten() {
        let is_blob_dir = sub.file_name().len() == 2 && sub.file_type().is_ok_and(|t| t.is_dir());
        if !is_blob_dir {
            continue;
        }
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for file in files.flatten() {
            match file.metadata() {
                Ok(meta) if meta.is_file() => total = total.saturating_add(meta.len()),
                _ => {}
            }
        }
    }
    Ok(total)
}

/// The node's whole exposition: event metrics plus state read now.
pub async fn render(state: &AdminState) -> String {
    let blob_bytes = state.metrics.blob_bytes().await;
    let mut out = Text::default();
    state.metrics.write_events(&mut out);
    write_state(&mut out, state, blob_bytes);
    out.0
}

/// `GET /metrics`.
pub async fn scrape(state: &AdminState) -> Response<ProxyBody> {
    let mut resp = text_response(StatusCode::OK, render(state).await);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// Gauges read from the log, the capture latch and the shippers.
fn write_state(out: &mut Text, state: &AdminState, blob_bytes: Option<u64>) {
    let log = &state.log;
    out.gauge(
        "copyist_last_seq",
        "Highest sequence number in this node's log (0 when empty).",
        log.last_seq().0,
    );
    if state.role == Role::Mirror {
        out.gauge(
            "copyist_applied_seq",
            "Highest sequence number this mirror has finished (applied, rejected or skipped).",
            log.applied_seq().0,
        );
    }
    out.gauge(
        "copyist_halted",
        "Whether this mirror is halted at an entry (1) until an operator retries or skips it.",
        u8::from(log.halt().is_some()),
    );
    out.gauge(
        "copyist_fail_closed",
        "Whether captured writes (writer) or applies (mirror) are refused because the log or blob store failed (1) until restart.",
        u8::from(state.capture.is_fail_closed() || log.is_poisoned()),
    );
    if let Some(bytes) = blob_bytes {
        out.gauge(
            "copyist_blob_bytes",
            "Total size of the stored blobs (bodies above inline_max), recomputed at most once a minute.",
            bytes,
        );
    }
    write_mirrors(out, state);
}

/// Per-mirror gauges (writer only), one family at a time as the format requires.
fn write_mirrors(out: &mut Text, state: &AdminState) {
    if state.shippers.is_empty() {
        return;
    }
    let views: Vec<api::MirrorView> = state
        .shippers
        .iter()
        .map(|s| api::mirror_view(state, s))
        .collect();
    type Field = fn(&api::MirrorView) -> f64;
    let families: [(&str, &str, Field); 3] = [
        (
            "copyist_mirror_applied_seq",
            "Highest sequence number the mirror reported finished.",
            |v| v.status.applied_seq as f64,
        ),
        (
            "copyist_mirror_lag_entries",
            "Entries in the writer's log the mirror has not finished.",
            |v| v.lag_entries as f64,
        ),
        (
            "copyist_mirror_lag_seconds",
            "Age of the oldest entry the mirror has not finished (0 when caught up).",
            |v| v.lag_seconds,
        ),
    ];
    for (name, help, field) in families {
        out.family(name, "gauge", help);
        for v in &views {
            out.sample(name, &[("mirror", &v.status.name)], Float(field(v)));
        }
    }
    out.family(
        "copyist_mirror_state",
        "gauge",
        "The mirror's shipping state: 1 for the current one, 0 for the others.",
    );
    for v in &views {
        for s in MIRROR_STATES {
            let labels = [("mirror", v.status.name.as_str()), ("state", s)];
            out.sample(
                "copyist_mirror_state",
                &labels,
                u8::from(v.status.state == s),
            );
        }
    }
}

// === impl Text ===

/// An exposition being written. Callers keep each family's samples together, after its
/// `family` line, as the format requires.
#[derive(Debug, Default)]
struct Text(String);

/// A sample value printed the way Prometheus parses floats (`+Inf`, `-Inf`, `NaN`).
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

impl Text {
    /// `# HELP` and `# TYPE` lines opening a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line; label values escaped.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A whole unlabelled counter family.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// A whole unlabelled gauge family.
    fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// One histogram's `_bucket` (cumulative, `le` last), `_sum` and `_count` lines.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (cumulative, sum) = h.snapshot();
        let bucket = format!("{name}_bucket");
        let bounds = BUCKETS.iter().map(|b| Float(*b).to_string());
        for (le, count) in bounds.chain(["+Inf".to_string()]).zip(cumulative) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, Float(sum));
        self.sample(&format!("{name}_count"), labels, cumulative[BUCKETS.len()]);
    }
}

/// Label values escape `\`, `"` and newline (exposition format 0.0.4).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
