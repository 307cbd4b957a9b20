//! Who is at fault, and the one place an error becomes an HTTP status.
//!
//! Every module keeps its own small error type; this module owns the mapping from those errors to
//! the synthetic responses copyist sends (pingora's `ErrorSource`). Handlers are outer/inner pairs:
//! the inner one uses `?`, the outer one calls [`error_response`] once, which logs and answers with a
//! short reason in the `X-Copyist-Error` header so an operator can tell copyist's answers from the
//! CMS's.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// A boxed error that can cross task boundaries: the body error type of every response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response copyist produces (streamed from the origin, or synthetic).
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Who caused a failed request; decides the status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something we refuse (4xx).
    Client,
    /// The local CMS failed or did not answer in time (502/504).
    Origin,
    /// copyist itself cannot do its job safely, e.g. the log cannot be written (503).
    Copyist,
}

/// An error that knows its blame, status and a short reason for the response header.
pub trait HttpError: std::error::Error {
    /// Who is at fault.
    fn blame(&self) -> Blame;
    /// The exact status to answer with; must agree with [`HttpError::blame`].
    fn status(&self) -> StatusCode;
    /// Whether the client connection must be closed after answering (framing was unreliable).
    fn close_connection(&self) -> bool {
        false
    }
    /// The log entry the request got, if it got that far (sent as `X-Copyist-Seq`, so an
    /// operator can find an in-doubt entry from the client's side).
    fn seq(&self) -> Option<u64> {
        None
    }
}

/// Builds the synthetic response for `err`, logging it once with the whole `source()` chain.
pub fn error_response(err: &(dyn HttpError + Send + Sync)) -> Response<ProxyBody> {
    let status = err.status();
    debug_assert!(match err.blame() {
        Blame::Client => status.is_client_error(),
        Blame::Origin => status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT,
        Blame::Copyist => status.is_server_error(),
    });
    let chain = error_chain(err);
    match err.blame() {
        Blame::Client => tracing::debug!(%status, error = %chain, "refused request"),
        Blame::Origin => tracing::warn!(%status, error = %chain, "origin failed"),
        Blame::Copyist => tracing::error!(%status, error = %chain, "copyist cannot serve request"),
    }
    let mut resp = text_response(status, format!("{chain}\n"));
    let reason = HeaderValue::from_str(&header_safe(&err.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("error"));
    resp.headers_mut().insert("x-copyist-error", reason);
    if let Some(seq) = err.seq() {
        resp.headers_mut()
            .insert("x-copyist-seq", HeaderValue::from(seq));
    }
    if err.close_connection() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    resp
}

/// A small `text/plain` response.
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response (the admin API, the replication listener).
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// A complete in-memory body as a [`ProxyBody`].
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `err` and all its sources, joined by ": ", for logs and the CLI.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(source) = next {
        let text = source.to_string();
        // Many errors repeat their source in their own message; say it once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = source.source();
    }
    out
}

/// Keeps a reason fit for a header value: visible ASCII, bounded length.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("body too large")]
    struct TooLarge;
    impl HttpError for TooLarge {
        fn blame(&self) -> Blame {
            Blame::Client
        }
        fn status(&self) -> StatusCode {
            StatusCode::PAYLOAD_TOO_LARGE
        }
    }

    #[test]
    fn client_error_maps_to_its_status_with_a_reason_header() {
        let resp = error_response(&TooLarge);
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()["x-copyist-error"], "body too large");
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn header_safe_drops_control_characters() {
        assert_eq!(header_safe("a\r\nb"), "a??b");
    }
}
