//! The capture pipeline (writer): every state-changing request is durably logged before the
//! origin sees it, and its outcome is durably settled before the client hears it.
//!
//! One function per numbered step of ARCHITECTURE.md "Capture":
//! 1. [`spool::spool`]: the body to memory or the blob store, hashed; [`multipart::index`].
//! 2. [`Capture::capture`] takes the FIFO write lock: one captured request reaches the origin at
//!    a time, so the writer's execution order is the log order.
//! 3. `Log::append_pending`: next sequence number, durable before forwarding.
//! 4. `Capture::forward` to the origin; the response is collected and digested; then
//!    `Log::settle` (accepted / rejected / in-doubt), durable; the lock is released; the client is
//!    answered with `X-Copyist-Seq`.
//!
//! Fail closed: once the log or the blob store fails to write, every later captured request is
//! refused with 503 without reaching the origin, until restart. GETs are not affected.
//!
//! `[capture]` is read from [`Live`] once per captured request, so a reload applies to the
//! next one.

pub mod multipart;
pub mod spool;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::sync::Mutex;

use crate::admin::metrics::{Metrics, PathKind};
use crate::blobs::{BlobError, BlobStore};
use crate::body::BodyError;
use crate::config::{CaptureConfig, CompareConfig};
use crate::error::{full, Blame, BoxError, HttpError, ProxyBody};
use crate::log::{BodyRef, Event, Log, LogError, Outcome, RequestRecord, Seq};
use crate::origin::response::{self, Collected};
use crate::origin::{Origin, OriginError};
use crate::reload::Live;
use spool::{SpoolError, Stored, StoredBody};

/// Why a captured request was not completed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// An earlier log or blob write failed; writes are refused until restart.
    #[error("writes refused: an earlier log or blob store write failed (fail closed until restart); origin not contacted")]
    FailClosed,
    /// The client's body could not be read; nothing was logged or forwarded.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The blob store failed; nothing was logged or forwarded.
    #[error("blob store cannot be written; origin not contacted")]
    Blob(#[source] BlobError),
    /// The log could not record the request; the origin was not contacted.
    #[error("log cannot be written; origin not contacted")]
    LogBeforeOrigin(#[source] LogError),
    /// The origin answered but its outcome could not be recorded; the entry stays in doubt.
    #[error("entry {seq} was sent to the origin but its outcome cannot be logged")]
    LogAfterOrigin {
        /// The entry in doubt.
        seq: Seq,
        /// What the log said.
        #[source]
        source: LogError,
    },
    /// The origin failed; the entry was settled accordingly.
    #[error("entry {seq}: origin failed")]
    Origin {
        /// The entry.
        seq: Seq,
        /// What the origin did.
        #[source]
        source: OriginError,
    },
    /// A background task of the pipeline died.
    #[error("capture task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl HttpError for CaptureError {
    fn blame(&self) -> Blame {
        match self {
            CaptureError::Body(_) => Blame::Client,
            CaptureError::Origin { .. } => Blame::Origin,
            _ => Blame::Copyist,
        }
    }
    fn status(&self) -> StatusCode {
        match self {
            CaptureError::Body(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            CaptureError::Body(BodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            CaptureError::Body(BodyError::Client(_)) => StatusCode::BAD_REQUEST,
            CaptureError::Origin { source, .. } => source.status(),
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
    fn close_connection(&self) -> bool {
        // The body was not read to its end: the connection's framing is lost.
        matches!(self, CaptureError::Body(_))
    }
    fn seq(&self) -> Option<u64> {
        match self {
            CaptureError::Origin { seq, .. } | CaptureError::LogAfterOrigin { seq, .. } => {
                Some(seq.0)
            }
            _ => None,
        }
    }
}

impl From<SpoolError> for CaptureError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Body(b) => CaptureError::Body(b),
            SpoolError::Blob(b) => CaptureError::Blob(b),
            SpoolError::Task(t) => CaptureError::Task(t),
        }
    }
}

/// A request on its way into the log: everything but the body, headers already cleaned.
#[derive(Debug)]
pub struct CaptureRequest {
    /// Request method.
    pub method: Method,
    /// `path?query` as received.
    pub target: String,
    /// The client's HTTP version (recorded; the origin always gets HTTP/1.1).
    pub version: Version,
    /// The headers the origin gets (after hygiene), recorded for replay.
    pub headers: HeaderMap,
    /// The real client address.
    pub client_addr: IpAddr,
    /// The request id passed to the CMS in `X-Copyist-Request-Id`.
    pub request_id: String,
}

/// The capture pipeline of one writer. Cheap to clone.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<Inner>,
}

struct Inner {
    log: Log,
    blobs: BlobStore,
    origin: Origin,
    /// `[capture]` in force (reloadable).
    live: Live,
    /// What of a response mirrors must match: recorded with the outcome.
    compare: CompareConfig,
    /// Where response bodies larger than `max_response_buffer` are spilled.
    spill_dir: PathBuf,
    /// FIFO (tokio's Mutex is fair): captured requests reach the origin one at a time, in log order.
    write_lock: Mutex<()>,
    /// Latched by the first log or blob write failure: fail closed until restart.
    failed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Capture {
    /// A pipeline writing to `log` and `blobs` and forwarding to `origin`.
    pub fn new(
        log: Log,
        blobs: BlobStore,
        origin: Origin,
        live: Live,
        compare: CompareConfig,
        spill_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Capture {
        Capture {
            inner: Arc::new(Inner {
                log,
                blobs,
                origin,
                live,
                compare,
                spill_dir,
                write_lock: Mutex::new(()),
                failed: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// Whether writes are refused because storage failed (for health and status).
    pub fn is_fail_closed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire) || self.inner.log.is_poisoned()
    }

    /// Runs the whole pipeline for one request.
    #[tracing::instrument(name = "capture", skip_all, fields(method = %req.method, target = %req.target, seq = tracing::field::Empty))]
    pub async fn capture<B>(
        &self,
        req: CaptureRequest,
        body: B,
    ) -> Result<Response<ProxyBody>, CaptureError>
    where
        B: Body<Data = Bytes, Error = BodyError> + Unpin,
    {
        let inner = &self.inner;
        if self.is_fail_closed() {
            return Err(CaptureError::FailClosed);
        }
        let received = Instant::now();
        // One snapshot for the whole request: a reload meanwhile applies to the next one.
        let settings = inner.live.current();
        // Step 1, before the lock: a slow upload never blocks other writers.
        let body = spool::spool(body, &inner.blobs, settings.capture.inline_body_max)
            .await
            .map_err(|e| self.latch_spool(e))?;
        let record = self.record(&req, &body, &settings.capture).await;
        // Steps 2-4 run in their own task: a client that disconnects now must not cancel them
        // half-way (a Pending entry left behind would block shipping, an origin answer would go
        // unrecorded). The task finishes and settles whatever happens to the connection.
        let this = self.clone();
        let span = tracing::Span::current();
        let commit = tokio::spawn(tracing::Instrument::instrument(
            async move {
                this.commit(req, body, record, received, &settings.capture)
                    .await
            },
            span,
        ));
        commit.await.map_err(CaptureError::Task)?
    }

    /// Steps 2-4: write lock, durable Pending, origin, durable outcome, answer.
    async fn commit(
        &self,
        req: CaptureRequest,
        body: StoredBody,
        record: RequestRecord,
        received: Instant,
        config: &CaptureConfig,
    ) -> Result<Response<ProxyBody>, CaptureError> {
        let inner = &self.inner;
        // Step 2: the lock is held until the outcome is durable, so log order = origin order.
        let _lock = inner.write_lock.lock().await;
        if self.is_fail_closed() {
            return Err(CaptureError::FailClosed);
        }
        // Step 3: no request reaches the origin unless its entry is durably Pending first.
        fail::fail_point!("before_append", |_| std::process::abort());
        let seq = self.append_pending(record).await?;
        tracing::Span::current().record("seq", seq.0);
        fail::fail_point!("after_sync_before_cms", |_| std::process::abort());
        // Step 4.
        let started = Instant::now();
        let result = self.forward(&req, &body, config.max_response_buffer).await;
        fail::fail_point!("after_cms_before_outcome", |_| std::process::abort());
        if result.is_ok() {
            inner
                .metrics
                .observe_origin(PathKind::Capture, started.elapsed());
        }
        let rule = inner
            .compare
            .rule_for(crate::apply::target_path(&req.target));
        let observed = match &result {
            Ok(c) => crate::compare::observe(rule, c.memory.as_deref()),
            Err(_) => crate::compare::Observed::default(),
        };
        let (event, outcome, answer) = settle_decision(config, result, observed, started);
        let state = self.settle(seq, event, outcome).await?;
        fail::fail_point!("after_outcome_before_reply", |_| std::process::abort());
        drop(_lock);
        inner.metrics.observe_capture(received.elapsed());
        tracing::debug!(state = state.as_str(), "captured");
        match answer {
            Ok(collected) => Ok(respond(collected, seq)),
            Err(source) => Err(CaptureError::Origin { seq, source }),
        }
    }

    /// Builds the log record: request line, cleaned headers, body reference, multipart index.
    async fn record(
        &self,
        req: &CaptureRequest,
        body: &StoredBody,
        config: &CaptureConfig,
    ) -> RequestRecord {
        let inner = &self.inner;
        let content_type = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let multipart = match multipart::boundary(content_type) {
            Some(b) => Some(
                multipart::index(
                    body,
                    b,
                    &inner.blobs,
                    &config.multipart,
                    &config.mask_fields,
                )
                .await,
            ),
            None => None,
        };
        RequestRecord {
            method: req.method.to_string(),
            target: req.target.clone(),
            version: format!("{:?}", req.version),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            client_addr: req.client_addr.to_string(),
            request_id: req.request_id.clone(),
            received_unix_ms: unix_ms(),
            body: match &body.stored {
                Stored::Inline(b) => BodyRef::Inline(b.to_vec()),
                Stored::Blob(h) => BodyRef::Blob(*h),
            },
            body_len: body.len,
            body_hash: body.hash,
            multipart,
        }
    }

    async fn append_pending(&self, record: RequestRecord) -> Result<Seq, CaptureError> {
        let log = self.inner.log.clone();
        let result = tokio::task::spawn_blocking(move || log.append_pending(record))
            .await
            .map_err(CaptureError::Task)?;
        result.map_err(|e| {
            self.latch();
            CaptureError::LogBeforeOrigin(e)
        })
    }

    async fn settle(
        &self,
        seq: Seq,
        event: Event,
        outcome: Outcome,
    ) -> Result<crate::log::EntryState, CaptureError> {
        let log = self.inner.log.clone();
        let result = tokio::task::spawn_blocking(move || log.settle(seq, event, outcome))
            .await
            .map_err(CaptureError::Task)?;
        result.map_err(|source| {
            self.latch();
            CaptureError::LogAfterOrigin { seq, source }
        })
    }

    /// Sends the recorded request to the origin and collects the whole response (bounded by
    /// `response_timeout`, since the write lock is held meanwhile).
    async fn forward(
        &self,
        req: &CaptureRequest,
        body: &StoredBody,
        max_response_buffer: u64,
    ) -> Result<Collected, OriginError> {
        let inner = &self.inner;
        let payload: ProxyBody = match &body.stored {
            Stored::Inline(bytes) => full(bytes.clone()),
            Stored::Blob(hash) => {
                let file = inner.blobs.open_unverified(hash).map_err(|e| {
                    OriginError::BadTarget(format!("stored body {hash} unreadable: {e}"))
                })?;
                let frames = futures_util::StreamExt::map(file.into_stream(), |chunk| {
                    chunk.map(hyper::body::Frame::data).map_err(BoxError::from)
                });
                http_body_util::StreamBody::new(frames).boxed_unsync()
            }
        };
        let mut out = Request::new(payload);
        *out.method_mut() = req.method.clone();
        *out.uri_mut() = inner.origin.uri_for(&req.target)?;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = req.headers.clone();
        // The length is known exactly: the origin gets one unambiguous framing.
        out.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len));
        let deadline = inner.origin.response_timeout();
        let exchange = async {
            let resp = inner.origin.send(out).await?;
            let seal = inner.blobs.is_encrypted();
            response::collect(resp, max_response_buffer, &inner.spill_dir, seal).await
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(OriginError::Timeout(deadline)),
        }
    }

    fn latch(&self) {
        if !self.inner.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(
                "storage failed: refusing captured requests until restart (fail closed)"
            );
        }
    }

    fn latch_spool(&self, e: SpoolError) -> CaptureError {
        if matches!(e, SpoolError::Blob(_) | SpoolError::Task(_)) {
            self.latch();
        }
        e.into()
    }
}

/// Decides the entry's fate from the origin's answer: success statuses are accepted, others
/// rejected; a failure that may have reached the CMS is in doubt (never guessed); a failure that
/// provably did not is rejected (so it is never replayed).
fn settle_decision(
    config: &CaptureConfig,
    result: Result<Collected, OriginError>,
    observed: crate::compare::Observed,
    started: Instant,
) -> (Event, Outcome, Result<Collected, OriginError>) {
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(c) => {
            let event = if config.is_success(c.status.as_u16()) {
                Event::OriginAccepted
            } else {
                Event::OriginRejected
            };
            let outcome = crate::compare::outcome(&c, observed, duration_us);
            (event, outcome, Ok(c))
        }
        Err(e) => {
            let event = if e.may_have_reached_origin() {
                Event::OutcomeUnknown
            } else {
                Event::OriginRejected
            };
            let outcome = Outcome {
                status: e.status().as_u16(),
                location: None,
                set_cookies: Vec::new(),
                body_digest: crate::blobs::BlobHash::from(blake3::hash(b"")),
                body_len: 0,
                duration_us,
                error: Some(crate::error::error_chain(&e)),
                fields: Vec::new(),
                masked_digest: None,
            };
            (event, outcome, Err(e))
        }
    }
}

/// The client's answer: the origin's status, headers and body, plus `X-Copyist-Seq`.
fn respond(collected: Collected, seq: Seq) -> Response<ProxyBody> {
    let (mut headers, body) = (collected.headers, collected.body);
    crate::proxy::headers::strip_hop_by_hop(&mut headers);
    crate::proxy::headers::strip_copyist(&mut headers);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(collected.len));
    headers.insert("x-copyist-seq", HeaderValue::from(seq.0));
    let mut resp = Response::new(body);
    *resp.status_mut() = collected.status;
    *resp.headers_mut() = headers;
    resp
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
