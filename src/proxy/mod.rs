//! The public listener: accepts connections (plain or TLS), checks each request's framing and
//! host, applies header hygiene, and routes it to pass-through, capture, copyist's own
//! reserved endpoints or, on a mirror, the writer (see `cluster` for which requests go there).
//!
//! It decides nothing about durability (that is `capture`) and never touches the log directly.
//!
//! Hostile clients meet deadlines at every stage: the TLS handshake and the request head
//! (`header_read_timeout`), the body (`body_read_timeout`, in `body`) and the response
//! (`send_timeout`, [`stall`]). A request that comes back from the origin carrying this node's
//! own request id is a forwarding loop and gets 508 (RFC 9110 7.6).
//!
//! Its settings (`[public]` limits and timeouts, `[[capture.rule]]`s) are read from
//! [`Live`] once per request, and hyper's own limits once per new connection, so a SIGHUP
//! reload applies to the next request (or connection) without a restart. With
//! `[public] access_log` set, every request is followed to the end of its response body by an
//! [`access_log::Entry`].

pub mod classify;
pub mod headers;
pub mod passthrough;
pub mod stall;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts as RequestParts;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access_log::{self, AccessLog};
use crate::admin::health::Listener;
use crate::admin::metrics::{Action, Metrics, PathKind};
use crate::admin::Health;
use crate::body::GuardedBody;
use crate::capture::{Capture, CaptureError, CaptureRequest};
use crate::cluster::ForwardError;
use crate::config::{Config, PublicConfig, Role};
use crate::error::{error_response, text_response, Blame, HttpError, ProxyBody};
use crate::origin::{Origin, OriginError};
use crate::reload::Live;
use crate::shutdown::Shutdown;
use classify::{classify, Route, RESERVED_PREFIX};

/// hyper's own limit on request headers when none is set (hyper's `DEFAULT_MAX_HEADERS`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Pause after a failed `accept` (EMFILE and friends resolve over time; spinning would not help).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a request was refused before reaching the origin, or failed on the way.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Framing or host that could be read two ways; refused and the connection closed.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The request headers exceed `max_header_bytes`.
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The declared body exceeds `max_body_bytes`.
    #[error("request body of {declared} bytes is larger than the limit of {limit}")]
    BodyTooLarge {
        /// What the client declared in `Content-Length`.
        declared: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A mirror never applies a client's write locally; it has no writer to forward to yet.
    #[error("this node is a mirror: writes must go to the writer")]
    WriteOnMirror,
    /// CONNECT and TRACE are not relayed.
    #[error("method {0} is not allowed through copyist")]
    MethodRefused(Method),
    /// The request carries the request id this process gave it: `[origin] url` leads back to
    /// this proxy, and forwarding it again would recurse until sockets or memory run out.
    #[error("forwarding loop: this request already passed through this node ([origin] url points back at copyist)")]
    Loop,
    /// A write forwarded from this mirror to the writer failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// Pass-through to the origin failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The capture pipeline failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

impl ProxyError {
    /// How the request counts in `copyist_requests_total`: refused when the client is at fault
    /// or the node refuses the route, an error when the origin or copyist failed.
    fn action(&self) -> Action {
        match self {
            ProxyError::WriteOnMirror => Action::Refused,
            e if e.blame() == Blame::Client => Action::Refused,
            _ => Action::Error,
        }
    }
}

impl HttpError for ProxyError {
    fn blame(&self) -> Blame {
        match self {
            ProxyError::Origin(e) => e.blame(),
            ProxyError::Capture(e) => e.blame(),
            ProxyError::WriteOnMirror | ProxyError::Forward(_) | ProxyError::Loop => Blame::Copyist,
            _ => Blame::Client,
        }
    }
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Malformed(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::MethodRefused(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::WriteOnMirror => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::Origin(e) => e.status(),
            ProxyError::Capture(e) => e.status(),
            ProxyError::Forward(e) => e.status(),
        }
    }
    fn seq(&self) -> Option<u64> {
        match self {
            ProxyError::Capture(e) => e.seq(),
            _ => None,
        }
    }
    fn close_connection(&self) -> bool {
        match self {
            ProxyError::Capture(e) => e.close_connection(),
            ProxyError::Origin(_)
            | ProxyError::MethodRefused(_)
            | ProxyError::WriteOnMirror
            | ProxyError::Loop
            | ProxyError::Forward(_) => false,
            // The body was not read: the rest of the connection cannot be trusted to be framed.
            _ => true,
        }
    }
}

/// The public-listener service: shared by every connection.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    /// `[public]` and `[[capture.rule]]`s in force (reloadable).
    live: Live,
    role: Role,
    origin: Origin,
    capture: Capture,
    metrics: Arc<Metrics>,
    /// Answers the health endpoints under the reserved prefix.
    health: Health,
    /// On a mirror: forwards client writes to the writer.
    forwarder: Option<crate::cluster::Forwarder>,
    /// Prefix of request ids: node name and start time, so ids stay unique across restarts.
    id_prefix: String,
    next_id: AtomicU64,
    /// Where request lines go when `[public] access_log` is set.
    access_log: AccessLog,
}

/// What the listener knows about a connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    peer: SocketAddr,
    tls: bool,
}

/// What a [`Proxy`] is built from.
pub struct Parts {
    /// The configuration in force: `[public]` and `[[capture.rule]]`s are read from it.
    pub live: Live,
    /// This node's role (a mirror refuses client writes).
    pub role: Role,
    /// The local CMS.
    pub origin: Origin,
    /// The capture pipeline.
    pub capture: Capture,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The health endpoints under the reserved prefix.
    pub health: Health,
    /// This node's name (prefix of request ids).
    pub node: String,
    /// On a mirror: where client writes go (the writer).
    pub forwarder: Option<crate::cluster::Forwarder>,
    /// The access log (written only while `[public] access_log` is set).
    pub access_log: AccessLog,
}

impl Proxy {
    /// The proxy for one node.
    pub fn new(p: Parts) -> Proxy {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Proxy {
            inner: Arc::new(Inner {
                live: p.live,
                role: p.role,
                origin: p.origin,
                capture: p.capture,
                metrics: p.metrics,
                health: p.health,
                forwarder: p.forwarder,
                id_prefix: format!("{}-{started:x}", p.node),
                next_id: AtomicU64::new(1),
                access_log: p.access_log,
            }),
        }
    }

    /// Serves `listener` until `shutdown` fires, then lets open connections finish for at most
    /// `grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        mut shutdown: Shutdown,
        grace: Duration,
    ) {
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_connection(&graceful, stream, peer, tls.clone()),
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                () = shutdown.recv() => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "connections still open after the grace period; closing them"
            );
        }
    }

    /// hyper's connection settings, built per connection from the settings in force (a few
    /// fields; cheap), so a reload applies to new connections. The timer matters: without one
    /// hyper silently ignores `header_read_timeout`, and slow-header clients would hold
    /// connections forever.
    fn connection_builder(c: &PublicConfig) -> auto::Builder<TokioExecutor> {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(c.header_read_timeout)
            .max_buf_size(c.max_header_bytes.max(8192))
            // A client may shut down its sending side while it waits for the answer
            // (`printf … | nc`); without this hyper would drop the request it already has.
            .half_close(true)
            .keep_alive(true);
        // hyper's default is the same 100 headers; setting it anyway makes hyper build and
        // fill a 100-slot header array on every request (issue 6: ~1.5k instructions).
        if c.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http.http1().max_headers(c.max_headers);
        }
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(c.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        http
    }

    fn spawn_connection(
        &self,
        graceful: &GracefulShutdown,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) {
        let _ = stream.set_nodelay(true);
        let proxy = self.clone();
        let conn = Conn {
            peer,
            tls: tls.is_some(),
        };
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
        });
        let settings = self.inner.live.current();
        // Under TLS too: a client that stops reading stalls the TLS writes just the same.
        let stream = stall::SendDeadline::new(stream, settings.public.send_timeout);
        let handshake_timeout = settings.public.header_read_timeout;
        let http = Self::connection_builder(&settings.public);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let result =
                match tls {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        // A client that stalls the handshake is dropped like a slow-header client.
                        let tls_stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = http.serve_connection(TokioIo::new(tls_stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    /// Outer handler: every error becomes exactly one logged, synthetic response; with an
    /// access log, every answer (or a client gone before it) becomes one line.
    async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<ProxyBody> {
        // One snapshot per request: a reload in the middle never mixes two configurations.
        let settings = self.inner.live.current();
        let entry = settings.public.access_log.is_some().then(|| {
            let trusted = &settings.public.trusted_proxies;
            let client = headers::client_addr(req.headers(), conn.peer.ip(), trusted);
            access_log::Entry::new(&self.inner.access_log, &req, client)
        });
        let resp = match self.handle_inner(req, conn, &settings).await {
            Ok(resp) => resp,
            Err(err) => {
                self.inner.metrics.request(err.action());
                error_response(&err)
            }
        };
        match entry {
            Some(entry) => entry.attach(resp),
            None => resp,
        }
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        conn: Conn,
        settings: &Config,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let c = &settings.public;
        let (mut parts, body) = req.into_parts();
        // RFC 9110 7.6: a proxy MUST NOT forward a message to itself. Checked first, before a
        // captured request would wait for the write lock its own first hop holds.
        if self.is_own_request(&parts.headers) {
            tracing::error!(
                "forwarding loop: a request came back carrying this node's own request id; \
                 [origin] url must point at the CMS, not at copyist"
            );
            return Err(ProxyError::Loop);
        }
        let host = check_head(&parts, c)?;
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let route = classify(&parts.method, parts.uri.path(), &settings.capture.rules);
        match route {
            Route::Reserved => {
                self.inner.metrics.request(Action::Reserved);
                return Ok(reserved(&self.inner.health, &parts));
            }
            Route::Refused => return Err(ProxyError::MethodRefused(parts.method)),
            // A mirror's CMS changes only through replay, or it would drift from the writer's:
            // its writes go to the writer, or are refused when it has no writer to send them to.
            Route::Capture if self.inner.role == Role::Mirror && self.inner.forwarder.is_none() => {
                return Err(ProxyError::WriteOnMirror)
            }
            Route::PassThrough | Route::Capture => {}
        }
        let request_id = self.next_request_id();
        let (mut headers, client) =
            self.origin_headers(&mut parts, host, conn, &c.trusted_proxies, &request_id);
        // Known before the body is wrapped: a read that cannot reach the writer is served here
        // only when there is no body that would have to be sent twice.
        let empty_body = body.is_end_stream();
        let body = GuardedBody::new(body, c.max_body_bytes, c.body_read_timeout);
        if let Some(forwarder) = &self.inner.forwarder {
            // Before any CMS sees the request, this mirror's or the writer's.
            let affinity = forwarder.take_affinity(&mut headers);
            let why = if route == Route::Capture {
                Some(ToWriter::Write)
            } else if forwarder.is_writer_path(parts.uri.path()) {
                Some(ToWriter::WriterPath)
            } else if affinity {
                Some(ToWriter::Affinity)
            } else {
                None
            };
            if let Some(why) = why {
                let head = crate::wire::ForwardHead {
                    method: parts.method.to_string(),
                    target: target.clone(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    client_addr: client.to_string(),
                    request_id,
                };
                // Boxed, like the capture below: `handle`'s future is moved into hyper's per-request
                // box on every request, and inline these paths made it several KiB of memcpy
                // for a pass-through that never runs them (issue 6, callgrind).
                match Box::pin(forwarder.forward(head, body)).await {
                    Ok(mut resp) => {
                        self.inner.metrics.request(Action::Forward);
                        // The writer logged it: this client now reads from the writer for a
                        // while, so it sees its write wherever it looks.
                        if resp.headers().contains_key("x-copyist-seq") {
                            if let Some(cookie) = forwarder.affinity_set_cookie(is_https(&headers))
                            {
                                resp.headers_mut().append(header::SET_COOKIE, cookie);
                            }
                        }
                        return Ok(resp);
                    }
                    Err(ForwardError::WriterUnreachable(error))
                        if why == ToWriter::Affinity && empty_body =>
                    {
                        // Affinity is a courtesy to a reader: a stale page beats a 503.
                        let error = crate::error::error_chain(&error);
                        tracing::debug!(%error, "writer unreachable; affinity read served locally");
                        let head = passthrough::Head {
                            method: parts.method,
                            target,
                            headers,
                        };
                        return self.pass(head, http_body_util::Empty::new()).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if route == Route::Capture {
            let req = CaptureRequest {
                method: parts.method,
                target,
                version: parts.version,
                headers,
                client_addr: client,
                request_id,
            };
            let resp = Box::pin(self.inner.capture.capture(req, body)).await?;
            self.inner.metrics.request(Action::Capture);
            return Ok(resp);
        }
        let head = passthrough::Head {
            method: parts.method,
            target,
            headers,
        };
        self.pass(head, body).await
    }

    /// Pass-through to this node's CMS, counted and timed.
    async fn pass<B>(
        &self,
        head: passthrough::Head,
        body: B,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        let started = std::time::Instant::now();
        let resp = passthrough::forward(&self.inner.origin, head, body).await?;
        let metrics = &self.inner.metrics;
        metrics.observe_origin(PathKind::Pass, started.elapsed());
        metrics.request(Action::Pass);
        Ok(resp)
    }

    /// The headers the origin gets (see [`prepare_origin_headers`]), taken out of `parts`: the
    /// request's own map is edited in place, no copy per request.
    fn origin_headers(
        &self,
        parts: &mut RequestParts,
        host: Option<HeaderValue>,
        conn: Conn,
        trusted: &[ipnet::IpNet],
        request_id: &str,
    ) -> (HeaderMap, std::net::IpAddr) {
        let mut h = std::mem::take(&mut parts.headers);
        let client = prepare_origin_headers(
            &mut h,
            parts.version,
            host,
            conn.peer.ip(),
            conn.tls,
            trusted,
            request_id,
        );
        (h, client)
    }

    /// Whether `headers` carry an `X-Copyist-Request-Id` this process minted: the request left
    /// this proxy for its origin and came straight back. Ids embed the node name and its start
    /// time, so another node's or an earlier run's ids never match; a client that guesses one
    /// only earns itself a 508.
    fn is_own_request(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all("x-copyist-request-id")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|id| {
                id.strip_prefix(self.inner.id_prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            })
    }

    fn next_request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Not `format!`: the formatting machinery was a measurable part of a pass-through
        // request (issue 6).
        let prefix = &self.inner.id_prefix;
        let mut id = String::with_capacity(prefix.len() + 21);
        id.push_str(prefix);
        id.push('-');
        push_decimal(&mut id, n);
        id
    }
}

/// The headers the origin gets: the client's, minus hop-by-hop and `X-Copyist-*`, with
/// `X-Forwarded-*` set, the original `Host`, and our request id. Returns the real client address.
/// Public to the crate for the micro-benchmarks (`benches/hot_paths.rs` via `bench_api`).
pub(crate) fn prepare_origin_headers(
    h: &mut HeaderMap,
    version: Version,
    host: Option<HeaderValue>,
    peer: std::net::IpAddr,
    tls: bool,
    trusted: &[ipnet::IpNet],
    request_id: &str,
) -> std::net::IpAddr {
    headers::strip_hop_by_hop(h);
    headers::strip_copyist(h);
    // Framing is re-derived from the body we actually send: exactly one normalised request.
    h.remove(header::CONTENT_LENGTH);
    if let Some(host) = host {
        h.insert(header::HOST, host);
    }
    if version == Version::HTTP_2 {
        join_cookies(h);
    }
    let client = headers::set_forwarded(h, peer, tls, trusted);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        h.insert("x-copyist-request-id", id);
    }
    client
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

/// Why a mirror sends a request to its writer rather than its own CMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ToWriter {
    /// The mirror's rules capture it: its CMS changes only through replay.
    Write,
    /// Its path is one of `[writer] paths`.
    WriterPath,
    /// Only the client's writer-affinity cookie sends it there.
    Affinity,
}

/// Whether the client reached us over TLS, as `X-Forwarded-Proto` says after
/// [`headers::set_forwarded`]: ours, or the first hop's from a trusted proxy (a load balancer
/// that terminates TLS).
fn is_https(h: &HeaderMap) -> bool {
    h.get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The checks on a request head before anything else looks at it: framing, header size, host,
/// declared body size. Returns the host to pass on.
pub(crate) fn check_head(
    parts: &RequestParts,
    c: &PublicConfig,
) -> Result<Option<HeaderValue>, ProxyError> {
    check_framing(&parts.headers)?;
    if header_bytes(&parts.headers) > c.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(c.max_header_bytes));
    }
    let host = request_host(parts)?;
    if let Some(declared) = declared_length(&parts.headers)? {
        if declared > c.max_body_bytes {
            return Err(ProxyError::BodyTooLarge {
                declared,
                limit: c.max_body_bytes,
            });
        }
    }
    Ok(host)
}

/// Refuses framing that two parsers could read differently (request smuggling, RFC 9112 6.1,
/// 6.3): `Transfer-Encoding` with `Content-Length`, any transfer coding but plain `chunked`, and
/// conflicting lengths. hyper rejects most of these itself; this is the belt to its braces.
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(ProxyError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let chunked_only = te.len() == 1 && te[0].as_bytes().eq_ignore_ascii_case(b"chunked");
        if !chunked_only {
            return Err(ProxyError::Malformed("unsupported Transfer-Encoding"));
        }
    }
    declared_length(headers).map(|_| ())
}

/// The single `Content-Length`, if any; several values or a non-number are malformed.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProxyError::Malformed("more than one Content-Length"));
    }
    let text = first
        .to_str()
        .map_err(|_| ProxyError::Malformed("invalid Content-Length"))?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::Malformed("invalid Content-Length"));
    }
    text.parse()
        .map(Some)
        .map_err(|_| ProxyError::Malformed("invalid Content-Length"))
}

/// The host to pass on. One `Host` at most; an absolute-form target or HTTP/2 `:authority` must
/// agree with it; HTTP/1.1 requires one (RFC 9112 3.2). The CMS never sees a second opinion.
fn request_host(parts: &RequestParts) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::Malformed("more than one Host header"));
    }
    if let Some(h) = &host {
        let valid = h
            .to_str()
            .ok()
            .and_then(|s| s.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@'));
        if !valid {
            return Err(ProxyError::Malformed("invalid Host header"));
        }
    }
    match (parts.uri.authority(), host) {
        (Some(authority), Some(h))
            if !authority
                .as_str()
                .eq_ignore_ascii_case(h.to_str().unwrap_or("")) =>
        {
            Err(ProxyError::Malformed("request target and Host disagree"))
        }
        (Some(authority), _) => HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| ProxyError::Malformed("invalid authority")),
        (None, Some(h)) => Ok(Some(h)),
        (None, None) if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 => {
            Ok(None)
        }
        (None, None) => Err(ProxyError::Malformed("missing Host header")),
    }
}

/// Approximate size of the header block as sent (names, values, separators).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// HTTP/2 may split `Cookie` into several fields; an HTTP/1.1 origin needs one (RFC 9113 8.2.3).
fn join_cookies(h: &mut HeaderMap) {
    let parts: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if parts.len() < 2 {
        return;
    }
    let joined = parts.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// copyist's own answers under the reserved prefix: the admin listener's health endpoints,
/// for load balancers that can only probe the traffic port, with the public body (no internals).
fn reserved(health: &Health, parts: &RequestParts) -> Response<ProxyBody> {
    let answer = (parts.uri.path().strip_prefix(RESERVED_PREFIX))
        .and_then(|name| health.respond(Listener::Public, &parts.method, name, parts.uri.query()));
    let mut resp = answer
        .unwrap_or_else(|| text_response(StatusCode::NOT_FOUND, "no such copyist endpoint\n"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let bad = [
            vec![("transfer-encoding", "chunked"), ("content-length", "5")],
            vec![("transfer-encoding", "chunked, identity")],
            vec![("transfer-encoding", "xchunked")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("content-length", "+5")],
            vec![("content-length", "5,5")],
            vec![("content-length", "")],
        ];
        for h in bad {
            let err = check_framing(&headers(&h)).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{h:?}");
            assert!(err.close_connection());
        }
        assert!(check_framing(&headers(&[("transfer-encoding", "Chunked")])).is_ok());
        assert!(check_framing(&headers(&[("content-length", "05")])).is_ok());
    }

    #[test]
    fn decimal_digits() {
        for n in [0, 7, 10, 48_213, u64::MAX] {
            let mut out = String::from("x-");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x-{n}"));
        }
    }

    #[test]
    fn too_large_maps_to_413_and_431() {
        let e = ProxyError::BodyTooLarge {
            declared: 10,
            limit: 5,
        };
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            ProxyError::HeadersTooLarge(1).status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn https_is_what_the_forwarded_proto_says_first() {
        assert!(is_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(is_https(&headers(&[("x-forwarded-proto", "HTTPS, http")])));
        assert!(!is_https(&headers(&[("x-forwarded-proto", "http, https")])));
        assert!(!is_https(&headers(&[])));
    }

    #[test]
    fn host_rules() {
        let req = |uri: &str, hosts: &[&str], v: Version| {
            let mut b = Request::builder().uri(uri).version(v);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let ok = request_host(&req("/", &["site.example"], Version::HTTP_11)).unwrap();
        assert_eq!(ok.unwrap(), "site.example");
        assert!(request_host(&req("/", &[], Version::HTTP_11)).is_err());
        assert!(request_host(&req("/", &["a", "b"], Version::HTTP_11)).is_err());
        assert!(request_host(&req("/", &["bad host"], Version::HTTP_11)).is_err());
        assert!(request_host(&req("/", &["u@site"], Version::HTTP_11)).is_err());
        assert!(request_host(&req("http://evil/", &["site"], Version::HTTP_11)).is_err());
        let abs = request_host(&req("http://site/", &[], Version::HTTP_11)).unwrap();
        assert_eq!(abs.unwrap(), "site");
        assert!(request_host(&req("/", &[], Version::HTTP_10))
            .unwrap()
            .is_none());
    }
}
