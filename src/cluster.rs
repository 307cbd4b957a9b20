//! Writes that reach a mirror: forwarded to the writer over the replication channel, and
//! answered only once this mirror has applied the writer's entry for them (read-your-writes),
//! so a user who just posted sees their own article on the mirror they are talking to.
//!
//! The wait is bounded ([`RYW_WAIT`]): past it the writer's answer is returned anyway, marked
//! `X-Copyist-Applied: timeout`. If the writer cannot be reached, the client gets 503 with
//! `Retry-After`; reads keep working.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::body::GuardedBody;
use crate::error::{Blame, BoxError, HttpError, ProxyBody};
use crate::ship::peer::{Peer, PeerError};
use crate::wire::{self, ForwardHead};

/// Longest wait for this mirror to apply a forwarded write before answering the client.
pub const RYW_WAIT: Duration = Duration::from_secs(10);

/// Why a forwarded write failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The writer could not be reached; nothing was written.
    #[error("the writer cannot be reached; try again")]
    WriterUnreachable(#[source] PeerError),
    /// The forward could not be encoded.
    #[error("cannot forward this request: {0}")]
    Encode(String),
}

impl HttpError for ForwardError {
    fn blame(&self) -> Blame {
        Blame::Copyist
    }
    fn status(&self) -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Forwards client writes from a mirror to its writer. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    peer: Arc<Peer>,
    applied: watch::Receiver<u64>,
}

impl Forwarder {
    /// A forwarder to `peer` (the writer), watching this mirror's applied sequence number.
    pub fn new(peer: Peer, applied: watch::Receiver<u64>) -> Forwarder {
        Forwarder {
            peer: Arc::new(peer),
            applied,
        }
    }

    /// Sends the write to the writer, waits (bounded) until this mirror applied it, and returns
    /// the writer's answer.
    pub async fn forward(
        &self,
        head: ForwardHead,
        body: GuardedBody,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let encoded = serde_json::to_vec(&head).map_err(|e| ForwardError::Encode(e.to_string()))?;
        let value =
            HeaderValue::from_bytes(&encoded).map_err(|e| ForwardError::Encode(e.to_string()))?;
        let mut req = Request::new(body.map_err(BoxError::from).boxed_unsync());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = format!("{}forward", wire::PREFIX)
            .parse()
            .map_err(|_| ForwardError::Encode("path".into()))?;
        req.headers_mut().insert(wire::FORWARD_HEADER, value);
        let resp = self
            .peer
            .send(req)
            .await
            .map_err(ForwardError::WriterUnreachable)?;
        let seq = resp
            .headers()
            .get("x-copyist-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (mut parts, body) = resp.into_parts();
        crate::proxy::headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(seq) = seq {
            let mut applied = self.applied.clone();
            let done = tokio::time::timeout(RYW_WAIT, applied.wait_for(|a| *a >= seq)).await;
            let mark = if matches!(done, Ok(Ok(_))) {
                "yes"
            } else {
                "timeout"
            };
            parts
                .headers
                .insert("x-copyist-applied", HeaderValue::from_static(mark));
        }
        Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed_unsync(),
        ))
    }
}
