//! Operator actions (POST, loopback admin listener only): pause, resume, retry and skip a
//! mirror; resolve an in-doubt entry. Each carries a reason and is recorded in the log with its
//! time, so `copyist log show` can tell who moved the cluster and why.

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::api::AdminState;
use crate::error::{text_response, ProxyBody};
use crate::log::{AuditRecord, Seq};
use crate::wire::Control;

/// Body of every action request.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ActionRequest {
    /// Why (required: it goes into the audit record).
    pub reason: String,
    /// Who (the CLI sends `$USER@host`).
    #[serde(default)]
    pub by: String,
    /// For skip: the exact sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
    /// For resolve: whether the origin did apply the in-doubt entry.
    #[serde(default)]
    pub applied: Option<bool>,
}

/// `POST /api/v1/mirrors/NAME/ACTION`.
pub async fn mirror(
    state: &AdminState,
    name: &str,
    action: &str,
    body: Bytes,
) -> http::Response<ProxyBody> {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(text) => return text_response(StatusCode::BAD_REQUEST, text),
    };
    let Some(shipper) = state.shippers.iter().find(|s| s.name() == name) else {
        return text_response(
            StatusCode::NOT_FOUND,
            format!("no mirror named {name:?} on this node\n"),
        );
    };
    let audit = audit(action, &req);
    match action {
        "pause" | "resume" => {
            let log = state.log.clone();
            let mirror = name.to_string();
            let paused = action == "pause";
            let done =
                tokio::task::spawn_blocking(move || log.set_paused(&mirror, paused, audit)).await;
            match done {
                Ok(Ok(())) => {
                    shipper.wake();
                    tracing::warn!(mirror = name, action, reason = %req.reason, by = %req.by, "operator action");
                    text_response(StatusCode::OK, format!("{name}: {action}d\n"))
                }
                Ok(Err(e)) => text_response(
                    StatusCode::CONFLICT,
                    format!("{}\n", crate::error::error_chain(&e)),
                ),
                Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "retry" | "skip" => {
            if action == "skip" && req.seq.is_none() {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    "skip needs --seq N: the exact entry to skip\n",
                );
            }
            let control = Control {
                action: action.to_string(),
                seq: req.seq,
                reason: req.reason.clone(),
                by: req.by.clone(),
            };
            match shipper.control(&control).await {
                Ok(peer) => {
                    tracing::warn!(mirror = name, action, seq = ?req.seq, reason = %req.reason, by = %req.by, "operator action");
                    let what = if action == "retry" {
                        "halt cleared; the halted entry is applied again next"
                    } else {
                        "entry skipped; the mirror goes on from the next one"
                    };
                    text_response(
                        StatusCode::OK,
                        format!(
                            "{name}: {what} (applied seq {}); see `copyist status`\n",
                            peer.applied_seq
                        ),
                    )
                }
                Err(e) => text_response(
                    StatusCode::CONFLICT,
                    format!("{name}: {}\n", crate::error::error_chain(&e)),
                ),
            }
        }
        _ => text_response(
            StatusCode::NOT_FOUND,
            "actions: pause, resume, retry, skip\n",
        ),
    }
}

/// `POST /api/v1/resolve/SEQ`: settles an in-doubt entry on the writer.
pub async fn resolve(state: &AdminState, seq: &str, body: Bytes) -> http::Response<ProxyBody> {
    let req = match parse(&body) {
        Ok(r) => r,
        Err(text) => return text_response(StatusCode::BAD_REQUEST, text),
    };
    let (Ok(seq), Some(applied)) = (seq.parse::<u64>(), req.applied) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "resolve needs a sequence number and --applied or --not-applied\n",
        );
    };
    let action = if applied {
        "resolve-applied"
    } else {
        "resolve-not-applied"
    };
    let audit = audit(action, &req);
    let log = state.log.clone();
    match tokio::task::spawn_blocking(move || log.resolve(Seq(seq), applied, audit)).await {
        Ok(Ok(new_state)) => {
            tracing::warn!(seq, action, reason = %req.reason, by = %req.by, "operator resolved an in-doubt entry");
            for s in &state.shippers {
                s.wake();
            }
            text_response(
                StatusCode::OK,
                format!("entry {seq} is now {}\n", new_state.as_str()),
            )
        }
        Ok(Err(e)) => text_response(
            StatusCode::CONFLICT,
            format!("{}\n", crate::error::error_chain(&e)),
        ),
        Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Parses an action body; the error is the text of a 400 answer.
fn parse(body: &[u8]) -> Result<ActionRequest, String> {
    let req: ActionRequest =
        serde_json::from_slice(body).map_err(|e| format!("action body: {e}\n"))?;
    if req.reason.trim().is_empty() {
        return Err("a reason is required (--reason TEXT)\n".into());
    }
    Ok(req)
}

fn audit(action: &str, req: &ActionRequest) -> AuditRecord {
    AuditRecord {
        unix_ms: crate::capture::unix_ms(),
        action: action.to_string(),
        reason: req.reason.clone(),
        by: if req.by.is_empty() {
            "admin-api".into()
        } else {
            req.by.clone()
        },
    }
}
