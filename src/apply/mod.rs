//! The replication listener and applying (mirror): entries from the writer are applied to the
//! local CMS exactly once, in order, and compared with the writer's outcome.
//!
//! * Only the next sequence number is applied. An applied one is answered with its recorded
//!   result without touching the CMS (a resend is harmless); one further ahead waits briefly for
//!   its turn (the writer pipelines) and is refused as a gap past [`MAX_AHEAD`].
//! * The entry is durable as `applying` before the request reaches the CMS; a crash there
//!   comes back `in-doubt` and halted (see `log`).
//! * The replayed request is the original: method, target, headers (with `Host`), the body whose
//!   blake3 is checked first, plus `X-Copyist-Replay: SEQ` and the original client address in
//!   `X-Forwarded-For`. Cookies pass unchanged except where the mirror's CMS chose its own value
//!   for a cookie the writer's CMS also set ([`sessions`]).
//! * Any difference ([`crate::compare`]), or an apply error, halts the mirror at that entry with
//!   both outcomes kept. Only an operator's `retry` or `skip` moves it on; a restart does not.
//!
//! Peers are authenticated before anything else: TLS with a client certificate from the cluster
//! CA whose name is the configured writer (on a mirror) or a configured mirror (on a writer).

pub mod sessions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio_rustls::TlsAcceptor;

use crate::admin::metrics::{Metrics, PathKind};
use crate::blobs::BlobStore;
use crate::body::GuardedBody;
use crate::capture::spool::{self, Stored};
use crate::config::{CompareConfig, Role};
use crate::error::{full, json_response, text_response, BoxError, ProxyBody};
use crate::log::{AuditRecord, BodyRef, Entry, EntryState, Halt, Log, LogError, Outcome, Seq};
use crate::origin::{response, Origin, OriginError};
use crate::proxy::classify::{classify, Route};
use crate::proxy::passthrough;
use crate::shutdown::Shutdown;
use crate::wire::{self, ApplyAnswer, Control, Gap, PeerState};

/// How far ahead of the next sequence number an entry may arrive and wait for its turn.
pub const MAX_AHEAD: u64 = 256;

/// Largest encoded entry accepted (bodies above `inline_max` travel as blobs).
const MAX_ENTRY_BYTES: usize = 64 << 20;

/// How long an early entry waits for its predecessors before the writer is told "gap".
const EARLY_WAIT: Duration = Duration::from_secs(30);

/// Everything the replication listener needs. Cheap to clone.
#[derive(Clone)]
pub struct Replication {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    role: Role,
    /// Certificate names allowed to connect (the writer, or the mirrors).
    peers: Vec<String>,
    log: Log,
    blobs: BlobStore,
    origin: Origin,
    compare: CompareConfig,
    /// `[public] max_body_bytes` (largest blob a peer may push, largest forwarded write),
    /// `body_read_timeout` and `[capture] max_response_buffer`, in force (reloadable).
    live: crate::reload::Live,
    spill_dir: PathBuf,
    capture: Option<crate::capture::Capture>,
    /// One apply at a time: the mirror's CMS sees replays in log order.
    apply_lock: Mutex<()>,
    /// The applied sequence number, for early entries waiting their turn.
    applied: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

/// What a [`Replication`] is built from.
pub struct Parts {
    /// This node's name.
    pub node: String,
    /// This node's role.
    pub role: Role,
    /// Certificate names allowed to connect.
    pub peers: Vec<String>,
    /// The log.
    pub log: Log,
    /// The blob store.
    pub blobs: BlobStore,
    /// The local CMS.
    pub origin: Origin,
    /// How replay outcomes are compared.
    pub compare: CompareConfig,
    /// The configuration in force: `[public] max_body_bytes` bounds a pushed blob and a
    /// forwarded write, `[public] body_read_timeout` a forwarded write's body, and
    /// `[capture] max_response_buffer` how much of a replay response stays in memory (and
    /// can be compared field by field).
    pub live: crate::reload::Live,
    /// Where large replay responses spill.
    pub spill_dir: PathBuf,
    /// Where replay latency, halts and skips are counted.
    pub metrics: Arc<Metrics>,
    /// On the writer: the capture pipeline that takes writes forwarded by mirrors.
    pub capture: Option<crate::capture::Capture>,
}

impl Replication {
    /// The replication service of one node.
    pub fn new(p: Parts) -> Replication {
        let applied = watch::Sender::new(p.log.applied_seq().0);
        Replication {
            inner: Arc::new(Inner {
                node: p.node,
                role: p.role,
                peers: p.peers,
                log: p.log,
                blobs: p.blobs,
                origin: p.origin,
                compare: p.compare,
                live: p.live,
                spill_dir: p.spill_dir,
                capture: p.capture,
                apply_lock: Mutex::new(()),
                applied,
                metrics: p.metrics,
            }),
        }
    }

    /// Serves the replication listener until shutdown.
    pub async fn serve(self, listener: TcpListener, tls: TlsAcceptor, mut shutdown: Shutdown) {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_connection(stream, peer, tls.clone(), &graceful),
                    Err(error) => {
                        tracing::warn!(%error, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = shutdown.recv() => break,
            }
        }
        drop(listener);
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    }

    fn spawn_connection(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        tls: TlsAcceptor,
        graceful: &GracefulShutdown,
    ) {
        let this = self.clone();
        let watcher = graceful.watcher();
        // Replies to pipelined entries must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, "replication TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            // The CA vouched for the certificate; now it must also name a configured peer.
            let allowed = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(|cert| {
                    this.inner
                        .peers
                        .iter()
                        .any(|n| crate::tls::peer_name(cert, n))
                });
            if !allowed {
                tracing::warn!(%peer, "replication peer's certificate names no configured peer; refused");
                return;
            }
            let service = service_fn(move |req| {
                let this = this.clone();
                async move { Ok::<_, Infallible>(this.route(req).await) }
            });
            let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http.timer(TokioTimer::new());
            let conn = http.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "replication connection ended");
            }
        });
    }

    async fn route(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix(wire::PREFIX) else {
            return text_response(StatusCode::NOT_FOUND, "not a replication path\n");
        };
        let method = req.method().clone();
        if rest == "state" && method == Method::GET {
            return json_response(StatusCode::OK, &self.state());
        }
        if rest == "forward" && method == Method::POST {
            return self.forwarded(req).await;
        }
        if self.inner.role != Role::Mirror {
            return text_response(StatusCode::FORBIDDEN, "this node is not a mirror\n");
        }
        match (method, rest) {
            (Method::HEAD, r) if r.starts_with("blobs/") => self.has_blob(&r[6..]),
            (Method::PUT, r) if r.starts_with("blobs/") => {
                let hash = r[6..].to_string();
                self.put_blob(&hash, req.into_body()).await
            }
            (Method::POST, r) if r.starts_with("entries/") => {
                let seq = r[8..].parse::<u64>();
                match seq {
                    Ok(seq) => self.entry(seq, req.into_body()).await,
                    Err(_) => text_response(StatusCode::BAD_REQUEST, "sequence number expected\n"),
                }
            }
            (Method::POST, "control") => self.control(req.into_body()).await,
            _ => text_response(StatusCode::NOT_FOUND, "no such replication endpoint\n"),
        }
    }

    /// A client's request forwarded by a mirror, handled exactly as if the client had come
    /// here (the mirror already cleaned its headers): this writer's own rules decide. A write
    /// goes through the capture pipeline; a read (a writer path, a client with writer
    /// affinity) streams to this CMS and back, unrecorded. Reserved paths and refused methods
    /// never reach the CMS.
    async fn forwarded(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(capture) = self.inner.capture.clone() else {
            return text_response(StatusCode::FORBIDDEN, "this node is not the writer\n");
        };
        let head = req
            .headers()
            .get(wire::FORWARD_HEADER)
            .and_then(|v| serde_json::from_slice::<wire::ForwardHead>(v.as_bytes()).ok());
        let Some(head) = head else {
            return text_response(
                StatusCode::BAD_REQUEST,
                "missing or malformed forward header\n",
            );
        };
        let (Ok(method), Ok(client)) = (
            Method::from_bytes(head.method.as_bytes()),
            head.client_addr.parse(),
        ) else {
            return text_response(StatusCode::BAD_REQUEST, "malformed forwarded request\n");
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &head.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        let path = head.target.split('?').next().unwrap_or("/");
        // One snapshot of the reloadable settings for the whole request.
        let settings = self.inner.live.current();
        let body = GuardedBody::new(
            req.into_body(),
            settings.public.max_body_bytes,
            settings.public.body_read_timeout,
        );
        match classify(&method, path, &settings.capture.rules) {
            Route::Capture => {}
            Route::PassThrough => {
                let is_head = method == Method::HEAD;
                let head = passthrough::Head {
                    method,
                    target: head.target,
                    headers,
                };
                return match passthrough::forward(&self.inner.origin, head, body).await {
                    Ok(mut resp) if is_head => {
                        // The mirror's client asked HEAD; on this channel it is the answer to
                        // a POST, whose body (empty) must match its Content-Length.
                        if let Some(length) = resp.headers_mut().remove(header::CONTENT_LENGTH) {
                            resp.headers_mut().insert(wire::HEAD_LENGTH_HEADER, length);
                        }
                        resp
                    }
                    Ok(resp) => resp,
                    Err(e) => crate::error::error_response(&e),
                };
            }
            Route::Reserved => {
                return text_response(StatusCode::NOT_FOUND, "no such copyist endpoint\n")
            }
            Route::Refused => {
                return text_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed through copyist\n",
                )
            }
        }
        let request = crate::capture::CaptureRequest {
            method,
            target: head.target,
            version: Version::HTTP_11,
            headers,
            client_addr: client,
            request_id: head.request_id,
        };
        match capture.capture(request, body).await {
            Ok(resp) => resp,
            Err(e) => crate::error::error_response(&e),
        }
    }

    /// The applied sequence number as it moves (a mirror's read-your-writes wait).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// This node's position.
    pub fn state(&self) -> PeerState {
        let log = &self.inner.log;
        PeerState {
            node: self.inner.node.clone(),
            role: self.inner.role.as_str().to_string(),
            applied_seq: match self.inner.role {
                Role::Mirror => log.applied_seq().0,
                Role::Writer => log.last_seq().0,
            },
            halt: log.halt(),
        }
    }

    fn has_blob(&self, hash: &str) -> Response<ProxyBody> {
        match hash.parse() {
            Ok(h) if self.inner.blobs.has(&h) => text_response(StatusCode::OK, ""),
            Ok(_) => text_response(StatusCode::NOT_FOUND, ""),
            Err(_) => text_response(StatusCode::BAD_REQUEST, "64 hex digits expected\n"),
        }
    }

    /// Stores a pushed blob; it is verified against its name, so a truncated or altered transfer
    /// never becomes a blob an entry could use.
    async fn put_blob(&self, hash: &str, body: Incoming) -> Response<ProxyBody> {
        let Ok(want) = hash.parse::<crate::blobs::BlobHash>() else {
            return text_response(StatusCode::BAD_REQUEST, "64 hex digits expected\n");
        };
        let max = self.inner.live.current().public.max_body_bytes;
        let body = GuardedBody::new(body, max, Duration::from_secs(30));
        match spool::spool(body, &self.inner.blobs, 0).await {
            Ok(stored) if stored.hash == want && matches!(stored.stored, Stored::Blob(_)) => {
                text_response(StatusCode::CREATED, "")
            }
            Ok(stored) => text_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("content hashes to {}, not {want}\n", stored.hash),
            ),
            Err(e) => text_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("blob transfer failed: {}\n", crate::error::error_chain(&e)),
            ),
        }
    }

    async fn entry(&self, seq: u64, body: Incoming) -> Response<ProxyBody> {
        let bytes = match http_body_util::Limited::new(body, MAX_ENTRY_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return text_response(StatusCode::BAD_REQUEST, format!("reading entry: {e}\n"))
            }
        };
        let entry = match wire::decode_entry(&bytes) {
            Ok(e) if e.seq.0 == seq => e,
            Ok(_) => {
                return text_response(StatusCode::BAD_REQUEST, "entry does not match its path\n")
            }
            Err(e) => {
                return text_response(StatusCode::BAD_REQUEST, format!("undecodable entry: {e}\n"))
            }
        };
        fail::fail_point!("after_receive", |_| std::process::abort());
        // Applying runs in its own task: a writer that disconnects (or is killed) mid-request
        // must not cancel it between `begin_apply` and `finish_apply`, which would leave the
        // entry `applying` with nobody finishing it.
        let this = self.clone();
        let applied = match tokio::spawn(async move { this.apply(entry).await }).await {
            Ok(result) => result,
            Err(e) => Err(ApplyRefusal::Invalid(format!("apply task failed: {e}"))),
        };
        match applied {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err(ApplyRefusal::Gap(expected)) => {
                json_response(StatusCode::CONFLICT, &Gap { expected })
            }
            Err(ApplyRefusal::Halted(halt)) => json_response(StatusCode::LOCKED, &halt),
            Err(ApplyRefusal::BlobMissing) => text_response(
                StatusCode::FAILED_DEPENDENCY,
                "body blob missing; push it first\n",
            ),
            Err(ApplyRefusal::Invalid(why)) => {
                text_response(StatusCode::BAD_REQUEST, format!("{why}\n"))
            }
            Err(ApplyRefusal::Conflict(seq)) => text_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "conflicting_record seq={seq}: another request was applied under that number\n"
                ),
            ),
            Err(ApplyRefusal::Log(e)) => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("mirror log: {}\n", crate::error::error_chain(&e)),
            ),
        }
    }

    /// Applies `entry` if it is the next one; see the module docs for the rules.
    async fn apply(&self, entry: Entry) -> Result<ApplyAnswer, ApplyRefusal> {
        let inner = &self.inner;
        let seq = entry.seq.0;
        self.wait_turn(seq).await?;
        let _lock = inner.apply_lock.lock().await;
        let applied = inner.log.applied_seq().0;
        if seq <= applied {
            return self.recorded(seq, &entry);
        }
        if let Some(halt) = inner.log.halt() {
            return Err(ApplyRefusal::Halted(halt));
        }
        if seq != applied + 1 {
            return Err(ApplyRefusal::Gap(applied + 1));
        }
        match entry.state {
            EntryState::Accepted => {}
            EntryState::Rejected => {
                let log = inner.log.clone();
                let shipped = entry.clone();
                blocking(move || log.record_rejected(entry)).await?;
                inner.applied.send_replace(seq);
                return self.recorded(seq, &shipped);
            }
            other => {
                return Err(ApplyRefusal::Invalid(format!(
                    "entry {seq} is {} on the writer; only settled entries are shipped",
                    other.as_str()
                )))
            }
        }
        let body = self.body_of(&entry)?;
        // An entry an operator resolved as applied after the writer lost its outcome (timeout,
        // crash) has nothing to compare with: then only the mirror's own status is judged.
        let writer_outcome = entry.outcome.clone().filter(|o| o.error.is_none());
        let log = inner.log.clone();
        let record = entry.clone();
        // The CMS is contacted only after the entry is durably `applying`.
        blocking(move || log.begin_apply(record)).await?;
        fail::fail_point!("after_intent_before_cms", |_| std::process::abort());
        let started = Instant::now();
        let result = self.replay(&entry, body).await;
        fail::fail_point!("after_cms_before_applied", |_| std::process::abort());
        let rule = inner.compare.rule_for(target_path(&entry.request.target));
        let (mirror_outcome, verdict) = match result {
            Ok(collected) => {
                inner
                    .metrics
                    .observe_origin(PathKind::Replay, started.elapsed());
                let observed = crate::compare::observe(rule, collected.memory.as_deref());
                let outcome = crate::compare::outcome(&collected, observed, elapsed_us(started));
                let verdict = judge(rule, writer_outcome.as_ref(), &outcome, seq);
                (outcome, verdict)
            }
            Err(e) => {
                let reason = if e.may_have_reached_origin() {
                    "in_doubt"
                } else {
                    "apply_error"
                };
                let text = crate::error::error_chain(&e);
                let outcome = Outcome {
                    status: 0,
                    location: None,
                    set_cookies: Vec::new(),
                    body_digest: crate::blobs::BlobHash::of_empty(),
                    body_len: 0,
                    duration_us: elapsed_us(started),
                    error: Some(text.clone()),
                    fields: Vec::new(),
                    masked_digest: None,
                };
                let halt = Halt {
                    seq: Seq(seq),
                    reason: reason.into(),
                    detail: format!("{reason} seq={seq}: {text}"),
                };
                (outcome, Err(halt))
            }
        };
        let cookies = match (&verdict, &writer_outcome) {
            (Ok(()), Some(w)) => {
                sessions::new_mappings(&w.set_cookies, &mirror_outcome.set_cookies)
            }
            _ => Vec::new(),
        };
        if let Err(halt) = &verdict {
            inner.metrics.halted();
            tracing::error!(seq, reason = %halt.reason, detail = %halt.detail, "mirror halted");
        }
        let log = inner.log.clone();
        let outcome = mirror_outcome.clone();
        let halt = verdict.clone().err();
        let state = blocking(move || log.finish_apply(Seq(seq), outcome, verdict, cookies)).await?;
        fail::fail_point!("after_applied_before_ack", |_| std::process::abort());
        if state == EntryState::Applied {
            inner.applied.send_replace(seq);
        }
        Ok(ApplyAnswer {
            seq,
            state: state.as_str().to_string(),
            mirror_outcome: Some(mirror_outcome),
            halt,
        })
    }

    /// Waits (bounded) until `seq` is next or already done.
    async fn wait_turn(&self, seq: u64) -> Result<(), ApplyRefusal> {
        let mut rx = self.inner.applied.subscribe();
        let deadline = tokio::time::Instant::now() + EARLY_WAIT;
        loop {
            let applied = *rx.borrow_and_update();
            if seq <= applied + 1 {
                return Ok(());
            }
            if seq > applied + MAX_AHEAD || self.inner.log.halt().is_some() {
                return Err(ApplyRefusal::Gap(applied + 1));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(ApplyRefusal::Gap(applied + 1)),
            }
        }
    }

    /// The recorded answer for an entry already finished here, if `resent` is the same request
    /// (a resend is harmless). Another request under the same number means a second or stale
    /// writer: refused as `conflicting_record`, and nothing reaches the CMS.
    fn recorded(&self, seq: u64, resent: &Entry) -> Result<ApplyAnswer, ApplyRefusal> {
        let entry = self.inner.log.get(Seq(seq)).map_err(ApplyRefusal::Log)?;
        let entry = entry
            .ok_or_else(|| ApplyRefusal::Invalid(format!("entry {seq} missing on the mirror")))?;
        let (a, b) = (&entry.request, &resent.request);
        if a.method != b.method || a.target != b.target || a.body_hash != b.body_hash {
            tracing::error!(
                seq,
                "conflicting_record: another request was sent under an applied sequence number"
            );
            return Err(ApplyRefusal::Conflict(seq));
        }
        Ok(ApplyAnswer {
            seq,
            state: entry.state.as_str().to_string(),
            mirror_outcome: entry.mirror_outcome,
            halt: entry.halt,
        })
    }

    /// The body bytes of an entry, verified against the recorded blake3.
    fn body_of(&self, entry: &Entry) -> Result<ReplayBody, ApplyRefusal> {
        let r = &entry.request;
        match &r.body {
            BodyRef::Inline(bytes) => {
                if crate::blobs::BlobHash::from(blake3::hash(bytes)) != r.body_hash {
                    return Err(ApplyRefusal::Invalid(format!(
                        "entry {} body does not match its hash",
                        entry.seq
                    )));
                }
                Ok(ReplayBody::Inline(Bytes::copy_from_slice(bytes)))
            }
            BodyRef::Blob(hash) => {
                if *hash != r.body_hash {
                    return Err(ApplyRefusal::Invalid(format!(
                        "entry {} names another blob",
                        entry.seq
                    )));
                }
                match self.inner.blobs.open_verified(hash) {
                    Ok(file) => Ok(ReplayBody::File(file)),
                    Err(_) => Err(ApplyRefusal::BlobMissing),
                }
            }
        }
    }

    /// Sends the original request to the local CMS and collects its answer.
    async fn replay(
        &self,
        entry: &Entry,
        body: ReplayBody,
    ) -> Result<response::Collected, OriginError> {
        let inner = &self.inner;
        let r = &entry.request;
        let mut headers = HeaderMap::new();
        for (name, value) in &r.headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        crate::proxy::headers::strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(HeaderName::from_static("x-copyist-replay"));
        if let Ok(v) = HeaderValue::from_str(&r.client_addr) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-copyist-replay", HeaderValue::from(entry.seq.0));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(r.body_len));
        if let Some(cookie) = headers.get(header::COOKIE).cloned() {
            let log = &inner.log;
            let rewritten = sessions::rewrite_cookie_header(cookie.as_bytes(), |name, value| {
                log.mapped_cookie(name, value).ok().flatten()
            });
            if let Ok(v) = HeaderValue::from_bytes(&rewritten) {
                headers.insert(header::COOKIE, v);
            }
        }
        let payload: ProxyBody = match body {
            ReplayBody::Inline(bytes) => full(bytes),
            ReplayBody::File(file) => {
                let frames = futures_util::StreamExt::map(file.into_stream(), |c| {
                    c.map(hyper::body::Frame::data).map_err(BoxError::from)
                });
                http_body_util::StreamBody::new(frames).boxed_unsync()
            }
        };
        let method = Method::from_bytes(r.method.as_bytes())
            .map_err(|_| OriginError::BadTarget(r.method.clone()))?;
        let mut req = Request::new(payload);
        *req.method_mut() = method;
        *req.uri_mut() = inner.origin.uri_for(&r.target)?;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        let deadline = inner.origin.response_timeout();
        let exchange = async {
            let resp = inner.origin.send(req).await?;
            let max = inner.live.current().capture.max_response_buffer;
            let seal = inner.blobs.is_encrypted();
            response::collect(resp, max, &inner.spill_dir, seal).await
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(OriginError::Timeout(deadline)),
        }
    }

    /// Applies an operator action relayed by the writer.
    async fn control(&self, body: Incoming) -> Response<ProxyBody> {
        let bytes = match http_body_util::Limited::new(body, 64 << 10).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let control: Control = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let _lock = self.inner.apply_lock.lock().await;
        let audit = AuditRecord {
            unix_ms: crate::capture::unix_ms(),
            action: control.action.clone(),
            reason: control.reason.clone(),
            by: control.by.clone(),
        };
        let log = self.inner.log.clone();
        let result = match (control.action.as_str(), control.seq) {
            ("retry", _) => blocking(move || log.retry(audit).map(|_| ())).await,
            ("skip", Some(seq)) => blocking(move || log.skip(Seq(seq), audit)).await,
            ("skip", None) => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    "skip needs the exact sequence number\n",
                )
            }
            _ => return text_response(StatusCode::BAD_REQUEST, "action must be retry or skip\n"),
        };
        match result {
            Ok(()) => {
                if control.action == "skip" {
                    self.inner.metrics.skipped();
                }
                tracing::warn!(action = %control.action, reason = %control.reason, by = %control.by, "operator action applied");
                self.inner
                    .applied
                    .send_replace(self.inner.log.applied_seq().0);
                json_response(StatusCode::OK, &self.state())
            }
            Err(ApplyRefusal::Log(e)) => text_response(
                StatusCode::CONFLICT,
                format!("{}\n", crate::error::error_chain(&e)),
            ),
            Err(_) => text_response(StatusCode::CONFLICT, "refused\n"),
        }
    }
}

/// A replay body: in memory, or a verified blob file.
enum ReplayBody {
    Inline(Bytes),
    File(crate::blobs::BlobReader),
}

/// Why an entry was not applied now.
#[derive(Debug)]
enum ApplyRefusal {
    Gap(u64),
    Conflict(u64),
    Halted(Halt),
    BlobMissing,
    Invalid(String),
    Log(LogError),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, ApplyRefusal> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApplyRefusal::Log),
        Err(e) => Err(ApplyRefusal::Invalid(format!("apply task failed: {e}"))),
    }
}

/// Compares the mirror's outcome with the writer's. Without a writer outcome (lost to a timeout
/// or crash, then resolved as applied by an operator) there is nothing to compare with, and only
/// the mirror's own status is judged: a success status is accepted.
fn judge(
    rule: &crate::config::CompareRule,
    writer: Option<&Outcome>,
    mirror: &Outcome,
    seq: u64,
) -> Result<(), Halt> {
    match writer {
        Some(w) => crate::compare::compare(rule, w, mirror).map_err(|d| Halt {
            seq: Seq(seq),
            reason: d.code().to_string(),
            detail: format!("{d} seq={seq}"),
        }),
        None if (200..400).contains(&mirror.status) => Ok(()),
        None => Err(Halt {
            seq: Seq(seq),
            reason: "status_mismatch".into(),
            detail: format!(
                "status_mismatch writer=unknown mirror={} seq={seq} (writer outcome lost; resolved as applied)",
                mirror.status
            ),
        }),
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The path part of a request target (for compare rules).
pub fn target_path(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}
