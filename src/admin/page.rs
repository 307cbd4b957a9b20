//! The status page: `GET /` on the admin listener, one server-rendered HTML page for an operator's
//! browser. It shows this node, the nodes it knows, halted entries with both outcomes and the
//! most recent entries, and reloads itself every [`REFRESH_SECS`] seconds.
//!
//! No JavaScript, no build step and no external assets: inline CSS only, and a
//! `Content-Security-Policy` that forbids everything else, so the page works offline and an
//! escaping mistake cannot run script. Request targets, halt details, origin errors and drain
//! reasons come from clients, the CMS or operators, so every dynamic string goes through [`Esc`].
//! The data comes from the same functions as the JSON API ([`super::api`]); nothing here writes.
//! Stable hooks for tests and scrapers: `id="node"`, `id="nodes"`, `id="halted"`,
//! `id="recent"`, `data-mirror`, `data-writer`, `data-seq`, `data-state`, `class="halted"`.

use std::fmt::{self, Display, Write};
use std::time::{Duration, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};

use super::api::{self, AdminState, EntryDetail, EntrySummary, MirrorView};
use super::health::{HealthView, WriterLink};
use crate::config::Role;
use crate::error::{full, text_response, ProxyBody};
use crate::log::Halt;

/// Seconds between reloads (the `<meta http-equiv="refresh">`).
pub const REFRESH_SECS: u32 = 5;

/// How many of the newest entries the page lists.
const RECENT: usize = 20;

/// Only inline styles; no script, images, frames or forms at all.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
                   form-action 'none'; base-uri 'none'";

/// Everything the page shows, read once per request.
struct Page {
    node: String,
    role: Role,
    public_addr: String,
    fail_closed: bool,
    last_seq: u64,
    health: HealthView,
    /// The writer's mirrors (empty on a mirror).
    mirrors: Vec<MirrorView>,
    /// A mirror's writer (`None` on the writer).
    writer: Option<WriterLink>,
    halted: Vec<Halted>,
    recent: Vec<EntrySummary>,
}

/// A halted entry: where a mirror stopped, and what each side answered.
struct Halted {
    /// The mirror that stopped (this node, on a mirror).
    mirror: String,
    halt: Halt,
    /// The entry from this node's log (`None` if it cannot be read): its `outcome` is the
    /// writer's; on a mirror, `mirror_outcome` is this node's.
    entry: Option<EntryDetail>,
}

/// `GET /`: the status page.
pub async fn render(state: &AdminState) -> Response<ProxyBody> {
    let page = match gather(state).await {
        Ok(page) => page,
        Err(e) => {
            tracing::error!(error = %e, "status page failed");
            return text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
        }
    };
    let mut resp = Response::new(full(html(&page)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Reads what the page shows; the log reads run off the runtime, as the JSON API's do.
async fn gather(state: &AdminState) -> Result<Page, String> {
    let mirrors: Vec<MirrorView> = (state.shippers.iter())
        .map(|s| api::mirror_view(state, s))
        .collect();
    let mut halts: Vec<(String, Halt)> = (mirrors.iter())
        .filter_map(|m| Some((m.status.name.clone(), m.status.halt.clone()?)))
        .collect();
    if let Some(halt) = state.log.halt() {
        halts.push((state.node.clone(), halt));
    }
    let log = state.log.clone();
    let mask = state.live.current().capture.mask_fields.clone();
    let read = tokio::task::spawn_blocking(move || {
        let recent = log.list(None, RECENT)?;
        let mut halted = Vec::new();
        for (mirror, halt) in halts {
            let entry = log.get(halt.seq)?.map(|e| api::detail(&e, &mask));
            halted.push(Halted {
                mirror,
                halt,
                entry,
            });
        }
        Ok::<_, crate::log::LogError>((recent, halted))
    });
    let (recent, halted) = match read.await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return Err(crate::error::error_chain(&e)),
        Err(e) => return Err(format!("status page task failed: {e}")),
    };
    Ok(Page {
        node: state.node.clone(),
        role: state.role,
        public_addr: state.public_addr.to_string(),
        fail_closed: state.capture.is_fail_closed(),
        last_seq: state.log.last_seq().0,
        health: state.health.summary(),
        mirrors,
        writer: (state.role == Role::Mirror).then(|| state.health.writer()),
        halted,
        recent: recent.iter().map(api::summary).collect(),
    })
}

/// The whole document. Writing to a `String` cannot fail, so `write!`'s results are ignored.
fn html(p: &Page) -> String {
    let mut out = String::with_capacity(8 << 10);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>copyist · {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        Esc(&p.node)
    );
    node_section(&mut out, p);
    match &p.writer {
        Some(writer) => writer_section(&mut out, p, writer),
        None => mirrors_section(&mut out, &p.mirrors),
    }
    halted_section(&mut out, p);
    recent_section(&mut out, &p.recent);
    let _ = write!(
        out,
        "<footer>Reloads every {REFRESH_SECS} s. The same data as JSON: \
         <code>/api/v1/status</code>, <code>/api/v1/log</code>, <code>/readiness</code>.\
         </footer>\n</body>\n</html>\n"
    );
    out
}

/// `id="node"`: name, role, health and position.
fn node_section(out: &mut String, p: &Page) {
    let h = &p.health;
    let state = h.state.as_str();
    let _ = write!(
        out,
        "<header id=\"node\" data-node=\"{}\" data-role=\"{}\" data-state=\"{state}\">\n\
         <h1><span class=\"name\">{}</span> <span class=\"role\">{}</span> \
         <span class=\"badge s-{state}\">{state}</span></h1>\n",
        Esc(&p.node),
        p.role.as_str(),
        Esc(&p.node),
        p.role.as_str(),
    );
    if let Some(why) = &h.reason {
        let _ = writeln!(out, "<p class=\"reason\">{}</p>", Esc(why));
    }
    out.push_str("<dl>\n");
    let mut row = |term: &str, value: &dyn Display| {
        let _ = writeln!(out, "<dt>{term}</dt><dd>{value}</dd>");
    };
    match p.role {
        Role::Writer => row("last seq", &p.last_seq),
        Role::Mirror => {
            row("applied seq", &h.applied_seq);
            row("writer's last seq", &Opt(h.last_seq));
        }
    }
    let draining = match &h.drain {
        Some(why) => format!("yes: {}", Esc(why)),
        None => "no".into(),
    };
    row("draining", &draining);
    let origin = match (&h.origin.error, h.origin.ok) {
        (_, true) => "answering".to_owned(),
        (Some(e), false) => format!("down: {}", Esc(e)),
        (None, false) => "not probed yet".to_owned(),
    };
    row("origin", &origin);
    let writes = match (p.fail_closed, p.role) {
        (true, _) => "REFUSED: storage failed; restart after fixing it",
        (false, Role::Mirror) => "forwarded to the writer",
        (false, Role::Writer) => "accepted",
    };
    row("writes", &writes);
    row("public listener", &Esc(&p.public_addr));
    out.push_str("</dl>\n</header>\n");
}

/// `id="nodes"` on the writer: one row per mirror, `data-mirror="NAME"`,
/// `data-state="running|paused|halted"`.
fn mirrors_section(out: &mut String, mirrors: &[MirrorView]) {
    out.push_str("<section id=\"nodes\">\n<h2>Mirrors</h2>\n");
    if mirrors.is_empty() {
        out.push_str("<p class=\"none\">No mirrors configured.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table>\n<tr><th>mirror</th><th>state</th><th>applied seq</th><th>lag (entries)</th>\
         <th>lag (s)</th><th>note</th></tr>\n",
    );
    for m in mirrors {
        let s = &m.status;
        let state = match (&s.halt, m.paused) {
            (Some(_), _) => "halted",
            (None, true) => "paused",
            (None, false) => "running",
        };
        let note = match (&s.halt, s.blocked_at, &s.last_error) {
            (Some(h), _, _) => format!("halted at {}: {}", h.seq, Esc(&h.detail)),
            (None, Some(seq), _) => {
                format!("waiting for in-doubt entry {seq}: <code>copyist resolve {seq}</code>")
            }
            (None, None, Some(e)) => Esc(e).to_string(),
            (None, None, None) => String::new(),
        };
        // The shipper's own word when it says more (streaming, connecting, blocked).
        let detail = if s.state == state {
            String::new()
        } else {
            format!(" <small>({})</small>", Esc(&s.state))
        };
        let _ = writeln!(
            out,
            "<tr data-mirror=\"{name}\" data-state=\"{state}\" class=\"{state}\">\
             <td class=\"name\">{name}</td><td class=\"state\">{state}{detail}</td>\
             <td class=\"num\">{}</td><td class=\"num lag\">{}</td><td class=\"num\">{:.1}</td>\
             <td>{note}</td></tr>",
            s.applied_seq,
            m.lag_entries,
            m.lag_seconds,
            name = Esc(&s.name),
        );
    }
    out.push_str("</table>\n</section>\n");
}

/// `id="nodes"` on a mirror: its writer, `data-writer="NAME"`, and this mirror's lag.
fn writer_section(out: &mut String, p: &Page, writer: &WriterLink) {
    let h = &p.health;
    let name = writer.name.as_deref().unwrap_or("?");
    let reach = match (writer.reached, &writer.error) {
        (true, _) => "reachable",
        (false, Some(_)) => "unreachable",
        (false, None) => "not probed yet",
    };
    let seconds = h.lag_seconds.map(|s| format!("{s:.1}"));
    let _ = write!(
        out,
        "<section id=\"nodes\">\n<h2>Writer</h2>\n<table>\n<tr><th>writer</th><th>state</th>\
         <th>last seq</th><th>lag (entries)</th><th>lag (s)</th><th>note</th></tr>\n\
         <tr data-writer=\"{n}\" data-state=\"{reach}\"><td class=\"name\">{n}</td>\
         <td class=\"state\">{reach}</td><td class=\"num\">{}</td><td class=\"num lag\">{}</td>\
         <td class=\"num\">{}</td><td>{}</td></tr>\n</table>\n</section>\n",
        Opt(h.last_seq),
        Opt(h.lag_entries),
        Opt(seconds),
        Esc(writer.error.as_deref().unwrap_or("")),
        n = Esc(name),
    );
}

/// `id="halted"`: each halted entry with the writer's recorded outcome and the mirror's.
fn halted_section(out: &mut String, p: &Page) {
    out.push_str("<section id=\"halted\">\n<h2>Halted entries</h2>\n");
    if p.halted.is_empty() {
        out.push_str("<p class=\"none\">None.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table>\n<tr><th>mirror</th><th>seq</th><th>request</th><th>writer's outcome</th>\
         <th>mirror's outcome</th><th>reason</th></tr>\n",
    );
    for h in &p.halted {
        let request = match &h.entry {
            Some(e) => format!("{} {}", Esc(&e.summary.method), Esc(&e.summary.target)),
            None => "(not in this node's log)".into(),
        };
        let writer = h.entry.as_ref().and_then(|e| e.outcome.as_ref());
        let writer = match writer {
            Some(o) => outcome(o.status, o.location.as_deref(), o.error.as_deref()),
            None => "none recorded".into(),
        };
        // The writer keeps no copy of the mirror's answer: the halt's detail, which names both
        // sides, stands in for it (and is then not repeated under the reason).
        let (mirror, detail) = match h.entry.as_ref().and_then(|e| e.mirror_outcome.as_ref()) {
            Some(o) => (
                outcome(o.status, o.location.as_deref(), o.error.as_deref()),
                format!("<br><small>{}</small>", Esc(&h.halt.detail)),
            ),
            None => (Esc(&h.halt.detail).to_string(), String::new()),
        };
        let _ = writeln!(
            out,
            "<tr class=\"halted\" data-mirror=\"{}\" data-seq=\"{}\"><td class=\"name\">{}</td>\
             <td class=\"num\">{}</td><td class=\"target\">{request}</td>\
             <td class=\"writer-outcome\">{writer}</td><td class=\"mirror-outcome\">{mirror}</td>\
             <td class=\"reason\"><b>{}</b>{detail}</td></tr>",
            Esc(&h.mirror),
            h.halt.seq,
            Esc(&h.mirror),
            h.halt.seq,
            Esc(&h.halt.reason),
        );
    }
    out.push_str(
        "</table>\n<p class=\"hint\">Fix the cause, then <code>copyist mirror retry NAME</code> \
         (or <code>skip NAME --seq N</code>) on the writer.</p>\n</section>\n",
    );
}

/// `303 → /article/1`, with the error when the origin failed.
fn outcome(status: u16, location: Option<&str>, error: Option<&str>) -> String {
    let mut s = format!("<span class=\"status\">{status}</span>");
    if let Some(l) = location {
        let _ = write!(s, " → {}", Esc(l));
    }
    if let Some(e) = error {
        let _ = write!(s, "<br><small>{}</small>", Esc(e));
    }
    s
}

/// `id="recent"`: the newest entries, one row each, `data-seq="N"`, `data-state="STATE"`.
fn recent_section(out: &mut String, recent: &[EntrySummary]) {
    let _ = write!(out, "<section id=\"recent\">\n<h2>Recent entries</h2>\n");
    if recent.is_empty() {
        out.push_str("<p class=\"none\">No entries yet.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table>\n<tr><th>seq</th><th>received (UTC)</th><th>method</th><th>target</th>\
         <th>state</th><th>status</th></tr>\n",
    );
    for e in recent {
        let when = UNIX_EPOCH + Duration::from_millis(e.received_unix_ms);
        let _ = writeln!(
            out,
            "<tr data-seq=\"{seq}\" data-state=\"{state}\" class=\"{state}\">\
             <td class=\"num\">{seq}</td><td>{}</td><td>{}</td><td class=\"target\">{}</td>\
             <td class=\"state\">{state}</td><td class=\"num\">{}</td></tr>",
            humantime::format_rfc3339_seconds(when),
            Esc(&e.method),
            Esc(&e.target),
            Opt(e.status),
            seq = e.seq,
            state = Esc(&e.state),
        );
    }
    out.push_str("</table>\n</section>\n");
}

/// Text made safe for HTML element content and quoted attribute values.
struct Esc<'a>(&'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A value, or `–` when unknown.
struct Opt<T>(Option<T>);

impl<T: Display> Display for Opt<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("–"),
        }
    }
}

/// Plain, readable, and legible in both light and dark browser themes.
const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.5em 0 .4em}
.role{color:#666;font-weight:normal}
.badge{font-size:.7em;padding:.15em .5em;border-radius:.3em;vertical-align:middle;color:#fff;background:#777}
.s-healthy{background:#2a7d2a}.s-draining{background:#b07a00}
.s-halted,.s-origin-down,.s-fail-closed{background:#b52a2a}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0}
dt{color:#666}dd{margin:0}
table{border-collapse:collapse}th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{color:#666;font-weight:normal}.num{text-align:right;font-variant-numeric:tabular-nums}
.target{font-family:monospace;word-break:break-all;max-width:40em}
tr.halted td,.reason{color:#b52a2a}tr.paused td{color:#b07a00}
tr.diverged td,tr.in-doubt td{color:#b52a2a}
.none,.hint,footer{color:#666}footer{margin-top:2em;font-size:.9em}
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::health::{NodeState, OriginView};
    use crate::log::Seq;
    use crate::ship::MirrorStatus;

    fn health(state: NodeState) -> HealthView {
        HealthView {
            node: "w".into(),
            role: "writer".into(),
            state,
            healthy: true,
            draining: false,
            drain: None,
            halted: None,
            applied_seq: 3,
            last_seq: Some(3),
            lag_entries: Some(0),
            lag_seconds: Some(0.0),
            origin: OriginView {
                ok: true,
                checked_ms_ago: Some(1),
                error: None,
            },
            reason: None,
        }
    }

    fn page() -> Page {
        Page {
            node: "w".into(),
            role: Role::Writer,
            public_addr: "127.0.0.1:8080".into(),
            fail_closed: false,
            last_seq: 3,
            health: health(NodeState::Healthy),
            mirrors: vec![MirrorView {
                status: MirrorStatus {
                    name: "m1".into(),
                    state: "halted".into(),
                    applied_seq: 1,
                    halt: Some(Halt {
                        seq: Seq(2),
                        reason: "location_mismatch".into(),
                        detail: "location_mismatch writer=/a/\"><script>x</script> seq=2".into(),
                    }),
                    blocked_at: None,
                    last_error: None,
                },
                lag_entries: 2,
                lag_seconds: 1.5,
                paused: false,
            }],
            writer: None,
            halted: Vec::new(),
            recent: vec![EntrySummary {
                seq: 3,
                state: "accepted".into(),
                method: "POST".into(),
                target: "/x?<script>alert('1')</script>&a=\"b\"".into(),
                status: Some(303),
                body_len: 0,
                duration_us: Some(1),
                received_unix_ms: 0,
            }],
        }
    }

    #[test]
    fn escapes_the_five_characters_and_nothing_else() {
        assert_eq!(
            Esc("a<b>&\"c'd é").to_string(),
            "a&lt;b&gt;&amp;&quot;c&#39;d é"
        );
        assert_eq!(Esc("").to_string(), "");
    }

    #[test]
    fn every_dynamic_string_is_escaped() {
        let html = html(&page());
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("/x?&lt;script&gt;alert(&#39;1&#39;)&lt;/script&gt;&amp;a=&quot;b&quot;"),
            "{html}"
        );
        assert!(
            html.contains("writer=/a/&quot;&gt;&lt;script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn has_the_refresh_tag_and_stable_hooks() {
        let html = html(&page());
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("id=\"node\" data-node=\"w\" data-role=\"writer\""));
        assert!(html.contains("<tr data-mirror=\"m1\" data-state=\"halted\" class=\"halted\">"));
        assert!(html.contains("<tr data-seq=\"3\" data-state=\"accepted\""));
        assert!(html.contains("1970-01-01T00:00:00Z"));
    }
}
