//! The JSON API the CLI uses: status, log entries (secrets masked) and blobs.
//!
//! Views are built here from log snapshots; nothing here writes. Masking happens on the way out:
//! the log keeps the exact bytes because replay needs them, but `log show` never prints a value
//! that looks like a password, a cookie or a credential.

use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::apply::Replication;
use crate::blobs::{BlobHash, BlobStore};
use crate::capture::multipart::{is_secret, MASK};
use crate::capture::Capture;
use crate::config::Role;
use crate::error::{json_response, text_response, BoxError, ProxyBody};
use crate::log::{AuditRecord, BodyRef, Entry, Halt, Log, MultipartIndex, Outcome, Seq};
use crate::ship::{MirrorStatus, Shipper};

use super::health::HealthView;

/// Longest list the API returns at once.
const MAX_LIST: usize = 1000;

/// Headers whose values are credentials: never shown.
const SECRET_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// What the admin API reads from. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    /// This node's name.
    pub node: String,
    /// This node's role.
    pub role: Role,
    /// The public listener's bound address.
    pub public_addr: std::net::SocketAddr,
    /// The log (read only here).
    pub log: Log,
    /// The blob store (read only here).
    pub blobs: BlobStore,
    /// The capture pipeline, for its fail-closed latch.
    pub capture: Capture,
    /// The configuration in force, for `[capture] mask_fields` (form-field name patterns whose
    /// values are masked; reloadable).
    pub live: crate::reload::Live,
    /// The writer's shippers, one per mirror (empty on a mirror).
    pub shippers: Vec<Shipper>,
    /// The replication service, when configured (its state: applied seq, halt).
    pub replication: Option<Replication>,
    /// Event counters and histograms for `GET /metrics`.
    pub metrics: std::sync::Arc<super::metrics::Metrics>,
    /// Cached health, for the health endpoints and draining.
    pub health: super::Health,
}

/// `GET /api/v1/status`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusView {
    /// Node name.
    pub node: String,
    /// "writer" or "mirror".
    pub role: String,
    /// The public listener's bound address (useful when the config says port 0).
    pub public_addr: String,
    /// Highest sequence number in the log (0 when empty).
    pub last_seq: u64,
    /// Whether storage failed: captured writes (writer) or applies (mirror) are refused until
    /// restart.
    pub fail_closed: bool,
    /// Highest sequence number applied here (mirror) or settled (writer).
    pub applied_seq: u64,
    /// The halt, when this mirror has stopped.
    pub halt: Option<Halt>,
    /// Every mirror, as the writer sees it (empty on a mirror).
    #[serde(default)]
    pub mirrors: Vec<MirrorView>,
    /// Health as `/readiness` sees it: state in a word, whether and why the node is draining,
    /// and the most serious problem as `reason`. `None` only from a node older than this field.
    #[serde(default)]
    pub health: Option<HealthView>,
}

/// One mirror in the writer's status.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct MirrorView {
    /// What the shipper knows (name, state, applied seq, halt, last error).
    #[serde(flatten)]
    pub status: MirrorStatus,
    /// Entries the writer has that the mirror has not finished.
    pub lag_entries: u64,
    /// Age of the oldest entry the mirror has not finished, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Whether an operator paused shipping to it.
    pub paused: bool,
}

/// One line of `copyist log list`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct EntrySummary {
    /// Sequence number.
    pub seq: u64,
    /// pending, accepted, rejected, in-doubt.
    pub state: String,
    /// Request method.
    pub method: String,
    /// `path?query`.
    pub target: String,
    /// Origin status, once settled.
    pub status: Option<u16>,
    /// Request body length.
    pub body_len: u64,
    /// Time the origin took, in microseconds.
    pub duration_us: Option<u64>,
    /// When copyist received the request (Unix ms).
    pub received_unix_ms: u64,
}

/// `copyist log show N`: one entry, secrets masked.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct EntryDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: EntrySummary,
    /// HTTP version the client used.
    pub version: String,
    /// Real client address.
    pub client_addr: String,
    /// Request id passed to the CMS.
    pub request_id: String,
    /// Headers as forwarded (credentials masked).
    pub headers: Vec<(String, String)>,
    /// blake3 of the body.
    pub body_hash: String,
    /// "inline" (in the entry) or "blob" (in the blob store).
    pub body_storage: String,
    /// URL-encoded form fields (values masked where they look like secrets).
    pub form: Option<Vec<(String, String)>>,
    /// Multipart parts.
    pub multipart: Option<MultipartIndex>,
    /// The origin's answer (on a mirror: the writer's origin).
    pub outcome: Option<OutcomeView>,
    /// On a mirror: this node's CMS's answer to the replay.
    pub mirror_outcome: Option<OutcomeView>,
    /// Why a mirror halted at this entry.
    pub halt: Option<Halt>,
    /// Operator actions on this entry: who, when, why.
    pub audit: Vec<AuditRecord>,
}

/// The origin's recorded answer.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct OutcomeView {
    /// Status code.
    pub status: u16,
    /// `Location` header.
    pub location: Option<String>,
    /// `Set-Cookie` headers, values masked.
    pub set_cookies: Vec<String>,
    /// blake3 of the response body.
    pub body_digest: String,
    /// Response body length.
    pub body_len: u64,
    /// Time the origin took, in microseconds.
    pub duration_us: u64,
    /// Why the origin failed, when it did.
    pub error: Option<String>,
    /// JSON fields recorded for comparison (pointer, value).
    #[serde(default)]
    pub fields: Vec<(String, String)>,
    /// When the entry was settled (Unix ms).
    pub settled_unix_ms: Option<u64>,
}

/// `GET /api/v1/status`.
pub async fn status(state: &AdminState) -> Response<ProxyBody> {
    json_response(
        StatusCode::OK,
        &StatusView {
            node: state.node.clone(),
            role: state.role.as_str().to_string(),
            public_addr: state.public_addr.to_string(),
            last_seq: state.log.last_seq().0,
            // A mirror has no capture latch; its log's poisoning is the same condition.
            fail_closed: state.capture.is_fail_closed() || state.log.is_poisoned(),
            applied_seq: state
                .replication
                .as_ref()
                .map(|r| r.state().applied_seq)
                .unwrap_or(0),
            halt: state.log.halt(),
            mirrors: state
                .shippers
                .iter()
                .map(|s| mirror_view(state, s))
                .collect(),
            health: Some(state.health.summary()),
        },
    )
}

/// One mirror as the writer sees it, with its lag (for status and metrics).
pub fn mirror_view(state: &AdminState, shipper: &Shipper) -> MirrorView {
    let status = shipper.status();
    let last = state.log.last_seq().0;
    let lag_entries = last.saturating_sub(status.applied_seq);
    let lag_seconds = if lag_entries == 0 {
        0.0
    } else {
        match state.log.get(Seq(status.applied_seq + 1)) {
            Ok(Some(e)) => {
                crate::capture::unix_ms().saturating_sub(e.request.received_unix_ms) as f64 / 1000.0
            }
            _ => 0.0,
        }
    };
    MirrorView {
        paused: state.log.paused(shipper.name()).unwrap_or(false),
        status,
        lag_entries,
        lag_seconds,
    }
}

/// `GET /api/v1/log?before=N&limit=M`.
pub async fn list(state: &AdminState, query: &str) -> Response<ProxyBody> {
    let mut before = None;
    let mut limit = 50usize;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match (k.as_ref(), v.parse::<u64>()) {
            ("before", Ok(n)) => before = Some(Seq(n)),
            ("limit", Ok(n)) => limit = usize::try_from(n).unwrap_or(MAX_LIST).min(MAX_LIST),
            _ => return text_response(StatusCode::BAD_REQUEST, "query: before=N&limit=M\n"),
        }
    }
    let log = state.log.clone();
    let entries = tokio::task::spawn_blocking(move || log.list(before, limit)).await;
    match entries {
        Ok(Ok(entries)) => json_response(
            StatusCode::OK,
            &entries.iter().map(summary).collect::<Vec<_>>(),
        ),
        Ok(Err(e)) => server_error(&e),
        Err(e) => server_error(&e),
    }
}

/// `GET /api/v1/log/N`.
pub async fn show(state: &AdminState, seq: &str) -> Response<ProxyBody> {
    let Ok(seq) = seq.parse::<u64>() else {
        return text_response(StatusCode::BAD_REQUEST, "sequence number expected\n");
    };
    let log = state.log.clone();
    match tokio::task::spawn_blocking(move || log.get(Seq(seq))).await {
        Ok(Ok(Some(entry))) => {
            let settings = state.live.current();
            json_response(
                StatusCode::OK,
                &detail(&entry, &settings.capture.mask_fields),
            )
        }
        Ok(Ok(None)) => text_response(StatusCode::NOT_FOUND, format!("no entry {seq}\n")),
        Ok(Err(e)) => server_error(&e),
        Err(e) => server_error(&e),
    }
}

/// `GET /api/v1/blob/HASH`: streams a blob after verifying it.
pub async fn blob(state: &AdminState, hash: &str) -> Response<ProxyBody> {
    let Ok(hash) = hash.parse::<BlobHash>() else {
        return text_response(StatusCode::BAD_REQUEST, "64 hex digits expected\n");
    };
    let blobs: BlobStore = state.blobs.clone();
    let file = tokio::task::spawn_blocking(move || blobs.open_verified(&hash)).await;
    let file = match file {
        Ok(Ok(f)) => f,
        Ok(Err(crate::blobs::BlobError::NotFound(_))) => {
            return text_response(StatusCode::NOT_FOUND, format!("no blob {hash}\n"))
        }
        Ok(Err(e)) => return server_error(&e),
        Err(e) => return server_error(&e),
    };
    let frames = futures_util::StreamExt::map(file.into_stream(), |c| {
        c.map(hyper::body::Frame::data).map_err(BoxError::from)
    });
    let mut resp = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// One line of `copyist log list` (and of the status page's recent entries).
pub fn summary(e: &Entry) -> EntrySummary {
    EntrySummary {
        seq: e.seq.0,
        state: e.state.as_str().to_string(),
        method: e.request.method.clone(),
        target: e.request.target.clone(),
        status: e.outcome.as_ref().map(|o| o.status),
        body_len: e.request.body_len,
        duration_us: e.outcome.as_ref().map(|o| o.duration_us),
        received_unix_ms: e.request.received_unix_ms,
    }
}

/// The full view of an entry with every secret-looking value masked.
pub fn detail(e: &Entry, mask_fields: &[String]) -> EntryDetail {
    let r = &e.request;
    let headers = r
        .headers
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v);
            let shown = if k == "cookie" {
                mask_cookie_pairs(&value, ';')
            } else if SECRET_HEADERS.contains(&k.as_str()) {
                MASK.to_string()
            } else {
                value.into_owned()
            };
            (k.clone(), shown)
        })
        .collect();
    let is_form = r
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with(b"application/x-www-form-urlencoded"));
    let form = match (&r.body, is_form) {
        (BodyRef::Inline(bytes), true) => Some(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| {
                    let v = if is_secret(&k, mask_fields) {
                        MASK.into()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect(),
        ),
        _ => None,
    };
    EntryDetail {
        summary: summary(e),
        version: r.version.clone(),
        client_addr: r.client_addr.clone(),
        request_id: r.request_id.clone(),
        headers,
        body_hash: r.body_hash.to_string(),
        body_storage: match r.body {
            BodyRef::Inline(_) => "inline".into(),
            BodyRef::Blob(_) => "blob".into(),
        },
        form,
        multipart: r.multipart.clone(),
        outcome: e
            .outcome
            .as_ref()
            .map(|o| outcome_view(o, e.settled_unix_ms)),
        mirror_outcome: e.mirror_outcome.as_ref().map(|o| outcome_view(o, None)),
        halt: e.halt.clone(),
        audit: e.audit.clone(),
    }
}

fn outcome_view(o: &Outcome, settled_unix_ms: Option<u64>) -> OutcomeView {
    OutcomeView {
        status: o.status,
        location: o.location.clone(),
        set_cookies: o.set_cookies.iter().map(|c| mask_set_cookie(c)).collect(),
        body_digest: o.body_digest.to_string(),
        body_len: o.body_len,
        duration_us: o.duration_us,
        error: o.error.clone(),
        fields: o.fields.clone(),
        settled_unix_ms,
    }
}

/// `a=1; b=2` → `a=********; b=********`: names help debugging, values are credentials.
fn mask_cookie_pairs(text: &str, sep: char) -> String {
    text.split(sep)
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{}={MASK}", name.trim()),
            None => pair.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(&format!("{sep} "))
}

/// `sid=abc; Path=/; HttpOnly` → `sid=********; Path=/; HttpOnly`.
fn mask_set_cookie(text: &str) -> String {
    match text.split_once(';') {
        Some((first, attrs)) => format!("{};{attrs}", mask_cookie_pairs(first, ';')),
        None => mask_cookie_pairs(text, ';'),
    }
}

fn server_error(e: &dyn std::error::Error) -> Response<ProxyBody> {
    tracing::error!(error = %crate::error::error_chain(e), "admin API failed");
    text_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{}\n", crate::error::error_chain(e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_keep_names_and_lose_values() {
        assert_eq!(
            mask_cookie_pairs("a=1; PHPSESSID=xyz", ';'),
            "a=********; PHPSESSID=********"
        );
        assert_eq!(
            mask_set_cookie("sid=abc; Path=/; HttpOnly"),
            "sid=********; Path=/; HttpOnly"
        );
    }
}
