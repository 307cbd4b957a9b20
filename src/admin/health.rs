//! Health checks for load balancers, in Patroni's conventions, answered from cached state: an
//! endpoint never does I/O, so it answers in microseconds however slow the CMS or the writer is.
//! [`Health::probe`] (spawned by `node`) refreshes what the endpoints read.
//!
//! | endpoint | 200 when |
//! |---|---|
//! | `/liveness` | always: the process answers (nothing else is looked at) |
//! | `/health` | the log is writable (not fail-closed) and the CMS answered the last probe |
//! | `/readiness?lag=L` | healthy, not halted, not draining; on a mirror also within `L` |
//! | `/writer` | this node is the writer, healthy and not draining |
//! | `/mirror?lag=L` | this node is a mirror, healthy, not halted, not draining, within `L` |
//! | `/read-only?lag=L` | as `/writer` on the writer, as `/mirror?lag=L` on a mirror |
//!
//! Served on the admin listener and under `/.copyist/` on the public one. Every answer is 200 or
//! 503, except that a node whose only problem is draining answers `[health] drain_status` (404
//! for HAProxy's `disable-on-404`). The body is a [`HealthView`] on the admin listener and the
//! smaller [`PublicHealthView`] on the public one, which anyone who can reach the site can read:
//! no node name, sequence numbers, peer names, origin errors (they name the CMS's internal
//! address) or drain reasons there, only what a load balancer decides on. `HEAD` and `OPTIONS` get
//! the same status without a body. `L` is an entry count (`100`) or a duration (`10s`); without
//! it there is no lag limit; a malformed one fails the check (503, with the reason).
//!
//! Lag on a mirror: entries are the writer's last sequence number, asked at each probe over the
//! replication channel, minus the mirror's applied one. Seconds are the time since a probe last
//! saw the mirror caught up (the writer's entry times are not asked for), so they are accurate
//! to a probe interval, and unknown until the mirror has been caught up once since it started.
//! While the writer is unreachable lag is unknown: every check with a `lag` limit fails.
//!
//! The probe is the only I/O here, and it only reads: a GET to the local CMS, `GET state` to the
//! writer, and whether the maintenance file exists.
//!
//! `[health]` is read from [`Live`] at each answer and each probe round, so a reload applies
//! without a restart (a new `maintenance_file` or `probe_interval` from the next round).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::actions::ActionRequest;
use super::api::AdminState;
use crate::capture::Capture;
use crate::config::Role;
use crate::error::{full, json_response, text_response, ProxyBody};
use crate::log::{Halt, Log};
use crate::reload::Live;

mod probe;
pub use probe::{Prober, WriterPeer};

/// The question a load balancer asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `/health`: may this node's CMS be reached at all?
    Health,
    /// `/readiness`: may this node take traffic?
    Readiness,
    /// `/writer`: is this the node to send writes to?
    Writer,
    /// `/mirror`: is this a mirror fit to serve reads?
    Mirror,
    /// `/read-only`: may reads go here (the writer, or a fit mirror)?
    ReadOnly,
}

impl Check {
    /// The check an endpoint name asks (the path without `/` or `/.copyist/`).
    pub fn from_name(name: &str) -> Option<Check> {
        Some(match name {
            "health" => Check::Health,
            "readiness" => Check::Readiness,
            "writer" => Check::Writer,
            "mirror" => Check::Mirror,
            "read-only" => Check::ReadOnly,
            _ => return None,
        })
    }

    /// Whether `?lag=` means something to this check (the others ignore the query).
    fn takes_lag(self) -> bool {
        matches!(self, Check::Readiness | Check::Mirror | Check::ReadOnly)
    }
}

/// A `?lag=` limit: how far behind the writer a mirror may be and still take reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LagLimit {
    /// At most this many entries behind.
    Entries(u64),
    /// Caught up at most this long ago.
    Time(Duration),
}

impl LagLimit {
    /// The `lag` parameter of `query`: `None` when absent; `Err` (the 503's reason) when it is
    /// neither a count nor a duration.
    pub fn from_query(query: Option<&str>) -> Result<Option<LagLimit>, String> {
        let lag = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == "lag")
            .map(|(_, v)| v.into_owned());
        let Some(text) = lag else { return Ok(None) };
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Some(LagLimit::Entries(n)));
        }
        humantime::parse_duration(&text)
            .map(|d| Some(LagLimit::Time(d)))
            .map_err(|_| {
                format!("invalid lag {text:?}: expected entries (\"100\") or a duration (\"10s\")")
            })
    }
}

/// Which listener a health answer goes out on: it decides how much the body tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The admin listener (loopback by default): the full [`HealthView`].
    Admin,
    /// The public listener, under `/.copyist/`: the [`PublicHealthView`] only.
    Public,
}

/// A node's condition in a word, the most serious one when several hold: what the status page,
/// `copyist status` and both health bodies show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// The log or blob store failed to write: captured writes are refused until restart.
    FailClosed,
    /// The CMS has not answered a probe yet (just started).
    Starting,
    /// The CMS failed the last probe.
    OriginDown,
    /// This mirror stopped at an entry its CMS answered differently.
    Halted,
    /// Taken out of rotation (operator, maintenance file, or shutting down); traffic still flows.
    Draining,
    /// None of the above.
    Healthy,
}

impl NodeState {
    /// The name shown on the page and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::FailClosed => "fail-closed",
            NodeState::Starting => "starting",
            NodeState::OriginDown => "origin-down",
            NodeState::Halted => "halted",
            NodeState::Draining => "draining",
            NodeState::Healthy => "healthy",
        }
    }
}

/// The body of every health answer on the admin listener, whatever its status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthView {
    /// This node's name.
    pub node: String,
    /// "writer" or "mirror".
    pub role: String,
    /// The node's condition in a word (the most serious one).
    pub state: NodeState,
    /// Whether `/health` passes: the log is writable and the CMS answered the last probe.
    pub healthy: bool,
    /// Whether an operator (`copyist drain`) or the maintenance file takes the node out.
    pub draining: bool,
    /// Why it is draining: the operator's reason and who gave it, the maintenance file, or
    /// "shutting down".
    #[serde(default)]
    pub drain: Option<String>,
    /// Where and why this mirror is halted.
    pub halted: Option<Halt>,
    /// Highest sequence number applied here (mirror) or logged (writer).
    pub applied_seq: u64,
    /// The writer's highest sequence number: its log's on the writer; on a mirror, the writer's
    /// answer to the last probe (`None` while the writer is unreachable).
    pub last_seq: Option<u64>,
    /// `last_seq - applied_seq` (0 on the writer); `None` when unknown.
    pub lag_entries: Option<u64>,
    /// Seconds since the mirror was last seen caught up (0 when it is; always 0 on the
    /// writer); `None` when unknown.
    pub lag_seconds: Option<f64>,
    /// The last probe of the local CMS.
    pub origin: OriginView,
    /// Why this check failed, in a few words; `None` when it passed.
    pub reason: Option<String>,
}

/// The body of every health answer on the public listener: what a load balancer decides on
/// and nothing that helps map the cluster (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicHealthView {
    /// "writer" or "mirror".
    pub role: String,
    /// Whether this check passed.
    pub ok: bool,
    /// The node's condition in a word.
    pub state: NodeState,
    /// Whether the node is out of rotation.
    pub draining: bool,
    /// Why the check failed, as a code (`wrong-role`, `unhealthy`, `halted`, `lag-exceeded`,
    /// `lag-unknown`, `invalid-lag`, `draining`); `None` when it passed.
    pub reason: Option<String>,
    /// On a mirror: how far behind its writer it is (each `None` when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<PublicLag>,
}

/// A mirror's lag in the public health body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicLag {
    /// Entries behind the writer.
    pub entries: Option<u64>,
    /// Seconds since it was last caught up.
    pub seconds: Option<f64>,
}

/// What the last probe of the local CMS found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OriginView {
    /// Whether it answered below 500 within `probe_timeout`.
    pub ok: bool,
    /// How long ago it was probed (`None` before the first probe finished).
    pub checked_ms_ago: Option<u64>,
    /// What went wrong, when it did.
    pub error: Option<String>,
}

/// The health state the endpoints read and the probe writes. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    role: Role,
    log: Log,
    capture: Capture,
    /// `[health]` in force: `drain_status`, `maintenance_file` (reloadable).
    live: Live,
    /// Whether `maintenance_file` existed at the last probe.
    maintenance: AtomicBool,
    /// `copyist drain`'s reason and author, until `undrain` (not kept across restarts: the
    /// maintenance file is the drain that survives one).
    drained: Mutex<Option<String>>,
    origin: Mutex<OriginProbe>,
    writer: Mutex<WriterProbe>,
}

/// The last origin probe.
#[derive(Clone, Debug, Default)]
struct OriginProbe {
    ok: bool,
    at: Option<Instant>,
    error: Option<String>,
}

/// What a mirror's probes learnt about the writer.
#[derive(Clone, Debug, Default)]
struct WriterProbe {
    /// The writer's name (known once the probe task has started).
    name: Option<String>,
    /// The writer's last sequence number at the last probe; `None` if that probe failed.
    last_seq: Option<u64>,
    /// When a probe last saw this mirror's applied seq reach the writer's last one.
    caught_up_at: Option<Instant>,
    /// Why the last probe failed (kept to log only the first failure of a run, and shown on
    /// the status page).
    error: Option<String>,
}

/// A mirror's writer as its health probes see it (for the status page).
#[derive(Clone, Debug, Default)]
pub struct WriterLink {
    /// The writer's name, as in `[writer] name`.
    pub name: Option<String>,
    /// Whether the last probe of it got an answer.
    pub reached: bool,
    /// Why the last probe of it failed, if it did.
    pub error: Option<String>,
}

/// What an answer depends on, read once per request.
#[derive(Clone, Debug, Default)]
struct Facts {
    mirror: bool,
    fail_closed: bool,
    /// Why `/health` fails, if it does.
    unhealthy: Option<String>,
    /// Why the node is draining, if it is.
    draining: Option<String>,
    halt: Option<Halt>,
    lag_entries: Option<u64>,
    lag_seconds: Option<f64>,
}

/// The outcome of a check.
#[derive(Debug, PartialEq)]
enum Verdict {
    Pass,
    Fail(Failure),
    /// Only draining stands in the way: answered with `drain_status`.
    Draining(String),
}

/// Why a check failed: a code for the public body, a sentence for the admin one.
#[derive(Debug, PartialEq)]
struct Failure {
    code: &'static str,
    text: String,
}

fn fail(code: &'static str, text: impl Into<String>) -> Verdict {
    Verdict::Fail(Failure {
        code,
        text: text.into(),
    })
}

impl Health {
    /// The health state of one node; unhealthy until the first probe has answered.
    pub fn new(node: &str, role: Role, log: Log, capture: Capture, live: Live) -> Health {
        Health {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                role,
                log,
                capture,
                live,
                maintenance: AtomicBool::new(false),
                drained: Mutex::new(None),
                origin: Mutex::new(OriginProbe::default()),
                writer: Mutex::new(WriterProbe::default()),
            }),
        }
    }

    /// Answers the health endpoint `name` (its path without `/` or `/.copyist/`) on `listener`,
    /// or `None` when `name` is not one. Reads only cached state.
    pub fn respond(
        &self,
        listener: Listener,
        method: &Method,
        name: &str,
        query: Option<&str>,
    ) -> Option<Response<ProxyBody>> {
        let check = match name {
            "liveness" => None,
            other => Some(Check::from_name(other)?),
        };
        let mut resp =
            if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
                let mut resp =
                    text_response(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or OPTIONS\n");
                resp.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS"),
                );
                resp
            } else if let Some(check) = check {
                let (status, view, failure) = self.judge(check, query);
                match listener {
                    Listener::Admin => json_response(status, &view),
                    Listener::Public => json_response(status, &public_view(&view, failure)),
                }
            } else {
                text_response(StatusCode::OK, "ok\n")
            };
        if method == Method::HEAD || method == Method::OPTIONS {
            *resp.body_mut() = full("");
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(resp)
    }

    /// The status and (admin) body of `check`.
    pub fn evaluate(&self, check: Check, query: Option<&str>) -> (StatusCode, HealthView) {
        let (status, view, _) = self.judge(check, query);
        (status, view)
    }

    /// The node's health as `/readiness` without a lag limit sees it: the body's `reason` is
    /// the most serious problem, if any. For the status page and `copyist status`.
    pub fn summary(&self) -> HealthView {
        self.evaluate(Check::Readiness, None).1
    }

    /// The status, the admin body and the failure's code (`None` when it passed).
    fn judge(
        &self,
        check: Check,
        query: Option<&str>,
    ) -> (StatusCode, HealthView, Option<&'static str>) {
        let (facts, mut view) = self.snapshot();
        let limit = if check.takes_lag() {
            LagLimit::from_query(query)
        } else {
            Ok(None)
        };
        let verdict = match limit {
            Ok(limit) => verdict(&facts, check, limit),
            Err(why) => fail("invalid-lag", why),
        };
        let (status, reason, code) = match verdict {
            Verdict::Pass => (StatusCode::OK, None, None),
            Verdict::Fail(f) => (StatusCode::SERVICE_UNAVAILABLE, Some(f.text), Some(f.code)),
            Verdict::Draining(why) => (
                self.inner.live.current().health.drain_status,
                Some(why),
                Some("draining"),
            ),
        };
        view.reason = reason;
        (status, view, code)
    }

    /// A mirror's writer: its name and whether the last probe reached it.
    pub fn writer(&self) -> WriterLink {
        let w = lock(&self.inner.writer);
        WriterLink {
            name: w.name.clone(),
            reached: w.last_seq.is_some(),
            error: w.error.clone(),
        }
    }

    /// Drains the node (`Some(why)`) or ends an operator's drain (`None`). The maintenance
    /// file, if present, keeps draining it either way.
    pub fn set_drained(&self, why: Option<String>) {
        *lock(&self.inner.drained) = why;
    }

    /// Why the node is draining, if it is: `draining: ` and [`Health::drain_cause`].
    pub fn draining(&self) -> Option<String> {
        self.drain_cause().map(|why| format!("draining: {why}"))
    }

    /// What drains the node, if anything: the operator's reason and who gave it (or "shutting
    /// down"), else the maintenance file.
    pub fn drain_cause(&self) -> Option<String> {
        if let Some(why) = lock(&self.inner.drained).clone() {
            return Some(why);
        }
        let settings = self.inner.live.current();
        match &settings.health.maintenance_file {
            Some(path) if self.inner.maintenance.load(Ordering::Acquire) => {
                Some(format!("maintenance file {} exists", path.display()))
            }
            _ => None,
        }
    }

    /// Everything an answer depends on, and the body without its reason.
    fn snapshot(&self) -> (Facts, HealthView) {
        let i = &self.inner;
        let origin = lock(&i.origin).clone();
        let writer = lock(&i.writer).clone();
        // The log's poisoning covers a mirror, whose writes do not go through capture.
        let unhealthy = if i.capture.is_fail_closed() || i.log.is_poisoned() {
            Some("log not writable (fail-closed until restart)".to_owned())
        } else if origin.at.is_none() {
            Some("origin not probed yet".to_owned())
        } else if !origin.ok {
            Some(format!(
                "origin down: {}",
                origin.error.as_deref().unwrap_or("probe failed")
            ))
        } else {
            None
        };
        let (applied, last) = match i.role {
            Role::Writer => (i.log.last_seq().0, Some(i.log.last_seq().0)),
            Role::Mirror => (i.log.applied_seq().0, writer.last_seq),
        };
        let lag_entries = last.map(|last| last.saturating_sub(applied));
        let lag_seconds = match lag_entries {
            Some(0) => Some(0.0),
            Some(_) => writer.caught_up_at.map(|t| t.elapsed().as_secs_f64()),
            None => None,
        };
        let drain = self.drain_cause();
        let facts = Facts {
            mirror: i.role == Role::Mirror,
            fail_closed: i.capture.is_fail_closed(),
            unhealthy,
            draining: drain.as_ref().map(|why| format!("draining: {why}")),
            halt: i.log.halt(),
            lag_entries,
            lag_seconds,
        };
        let view = HealthView {
            node: i.node.clone(),
            role: i.role.as_str().to_owned(),
            state: node_state(&facts, &origin),
            healthy: facts.unhealthy.is_none(),
            draining: facts.draining.is_some(),
            drain,
            halted: facts.halt.clone(),
            applied_seq: applied,
            last_seq: last,
            lag_entries,
            lag_seconds,
            origin: OriginView {
                ok: origin.ok,
                checked_ms_ago: origin.at.map(|t| millis(t.elapsed())),
                error: origin.error,
            },
            reason: None,
        };
        (facts, view)
    }
}

/// The pure decision: which checks pass on which facts.
fn verdict(f: &Facts, check: Check, limit: Option<LagLimit>) -> Verdict {
    match check {
        Check::Writer if f.mirror => return fail("wrong-role", "this node is a mirror"),
        Check::Mirror if !f.mirror => return fail("wrong-role", "this node is the writer"),
        _ => {}
    }
    if let Some(why) = &f.unhealthy {
        return fail("unhealthy", why.clone());
    }
    if check == Check::Health {
        return Verdict::Pass;
    }
    if let Some(halt) = &f.halt {
        let why = format!("halted at entry {} ({})", halt.seq, halt.reason);
        return fail("halted", why);
    }
    if let Some(lag) = limit.filter(|_| f.mirror).and_then(|l| lag_problem(f, l)) {
        return Verdict::Fail(lag);
    }
    // Last, so that `drain_status` is only answered when draining is the sole reason.
    match &f.draining {
        Some(why) => Verdict::Draining(why.clone()),
        None => Verdict::Pass,
    }
}

/// Why a mirror is not within `limit`, if it is not.
fn lag_problem(f: &Facts, limit: LagLimit) -> Option<Failure> {
    let Some(entries) = f.lag_entries else {
        return Some(Failure {
            code: "lag-unknown",
            text: "writer unreachable; lag unknown".into(),
        });
    };
    let (code, text) = match (limit, f.lag_seconds) {
        (LagLimit::Entries(max), _) if entries > max => (
            "lag-exceeded",
            format!("lag of {entries} entries exceeds {max}"),
        ),
        (LagLimit::Time(_), None) => (
            "lag-unknown",
            format!("{entries} entries behind and not caught up since start"),
        ),
        (LagLimit::Time(max), Some(secs)) if secs > max.as_secs_f64() => (
            "lag-exceeded",
            format!(
                "lag of {secs:.1}s exceeds {}",
                humantime::format_duration(max)
            ),
        ),
        _ => return None,
    };
    Some(Failure { code, text })
}

/// The node's condition in a word: the most serious of what `f` and the origin probe say.
fn node_state(f: &Facts, origin: &OriginProbe) -> NodeState {
    if f.fail_closed {
        NodeState::FailClosed
    } else if origin.at.is_none() {
        NodeState::Starting
    } else if !origin.ok {
        NodeState::OriginDown
    } else if f.halt.is_some() {
        NodeState::Halted
    } else if f.draining.is_some() {
        NodeState::Draining
    } else {
        NodeState::Healthy
    }
}

/// The public body: `view` without what only the cluster's operators may read. `failure` is
/// the failed check's code.
fn public_view(view: &HealthView, failure: Option<&'static str>) -> PublicHealthView {
    PublicHealthView {
        role: view.role.clone(),
        ok: failure.is_none(),
        state: view.state,
        draining: view.draining,
        reason: failure.map(str::to_owned),
        lag: (view.role == Role::Mirror.as_str()).then_some(PublicLag {
            entries: view.lag_entries,
            seconds: view.lag_seconds,
        }),
    }
}

/// `POST /api/v1/drain` (`drain`) and `/api/v1/undrain`: an operator takes the node out of
/// rotation, or puts it back. Traffic keeps flowing either way; only the checks change.
pub fn drain(state: &AdminState, drain: bool, body: &[u8]) -> Response<ProxyBody> {
    let req: ActionRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return text_response(StatusCode::BAD_REQUEST, format!("action body: {e}\n")),
    };
    if req.reason.trim().is_empty() {
        return text_response(
            StatusCode::BAD_REQUEST,
            "a reason is required (--reason TEXT)\n",
        );
    }
    let by = if req.by.is_empty() {
        "admin-api"
    } else {
        req.by.as_str()
    };
    let action = if drain { "drain" } else { "undrain" };
    let health = &state.health;
    health.set_drained(drain.then(|| format!("{} (by {by})", req.reason)));
    tracing::warn!(action, reason = %req.reason, by, "operator action");
    let node = &state.node;
    let text = match (drain, health.draining()) {
        (true, _) => format!("{node}: draining; readiness checks fail, traffic still flows\n"),
        (false, Some(why)) => format!("{node}: operator drain ended, but still {why}\n"),
        (false, None) => format!("{node}: no longer draining\n"),
    };
    text_response(StatusCode::OK, text)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The state behind a mutex even if a panicking holder poisoned it: every field is valid at
/// all times (each is written whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
