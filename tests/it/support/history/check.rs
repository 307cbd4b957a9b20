//! The checkers: a [`Snapshot`] of every node after quiescing, held to the invariants of
//! RELIABILITY.md. Each checker is a pure function of the snapshot (and the history), returns a
//! [`Check`] listing every problem it found, and [`Report`] prints them all on failure.
//!
//! | check | invariant | what it compares |
//! |---|---|---|
//! | `set` | ACK, UNKNOWN | Jepsen set: per node, ok values missing from `/dump` (lost), rows never sent (unexpected), fail values present; info values present are `recovered` (fine) |
//! | `duplicates` | ONCE | a value in two rows of one node's `/dump` |
//! | `acks` | ACK | each ok op's `X-Copyist-Seq` names a writer entry, accepted, with the op's row id and title |
//! | `wal` | WAL, UNKNOWN | every row in the writer's CMS has a log entry with its title; an in-doubt entry's client was told nothing (`info`) |
//! | `order` | ORDER | the writer's log has no gap and nothing pending, and its accepted entries' row ids increase with seq |
//! | `prefix` | ORDER, ONCE, HALT | each mirror's entries 1..=applied are finished, nothing past applied except the entry it halted at |
//! | `ids` | IDS | each applied entry's mirror `Location` equals the writer's for that seq |
//! | `converge` | CONVERGE | `/dump` of the writer and every non-halted mirror are byte-equal |
//! | `blobs` | BLOB | every blob an entry needs exists and hashes to its name (`GET /api/v1/blob/H`) |
//! | `halts` | HALT | a halted mirror names a machine-readable reason, halts at applied+1, and that entry says why |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;

use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use super::{location_id, History, Op, OpKind, Outcome};
use crate::support::cluster::Member;
use crate::support::process_cluster::ProcNode;
use crate::support::Client;

/// Where to read one node: its admin API and its CMS.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub name: String,
    pub admin: SocketAddr,
    pub cms: SocketAddr,
}

impl From<&ProcNode> for NodeHandle {
    fn from(n: &ProcNode) -> Self {
        NodeHandle {
            name: n.name.clone(),
            admin: n.admin(),
            cms: n.cms.addr,
        }
    }
}

impl From<&Member> for NodeHandle {
    fn from(m: &Member) -> Self {
        NodeHandle {
            name: m.name.clone(),
            admin: m.node.admin,
            cms: m.cms.addr,
        }
    }
}

/// What a blob read said.
#[derive(Clone, Debug, PartialEq)]
pub enum BlobState {
    /// Present, and blake3 of its bytes is its name.
    Verified,
    /// 404.
    Missing,
    /// Anything else: another status, or bytes that hash to something else.
    Bad(String),
}

/// One node, read after quiescing.
#[derive(Clone, Debug)]
pub struct NodeSnapshot {
    pub name: String,
    /// `GET /api/v1/status`.
    pub status: Value,
    /// `GET /dump` from its CMS, verbatim.
    pub dump: String,
    /// `GET /api/v1/log/N` for N in 1..=last_seq (missing ones are absent).
    pub entries: BTreeMap<u64, Value>,
    /// Every blob an entry names, by hash.
    pub blobs: BTreeMap<String, BlobState>,
}

impl NodeSnapshot {
    pub fn is_writer(&self) -> bool {
        self.status["role"] == "writer"
    }

    pub fn halt(&self) -> Option<&Value> {
        let h = &self.status["halt"];
        (!h.is_null()).then_some(h)
    }

    pub fn applied_seq(&self) -> u64 {
        self.status["applied_seq"].as_u64().unwrap_or(0)
    }

    pub fn last_seq(&self) -> u64 {
        self.status["last_seq"].as_u64().unwrap_or(0)
    }

    fn dump_json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.dump)
            .map_err(|e| format!("{}: /dump is not JSON: {e}", self.name))
    }
}

/// Every node, writer first.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub nodes: Vec<NodeSnapshot>,
}

impl Snapshot {
    /// Reads every node (writer first). Call it after quiescing: no client writing, mirrors
    /// caught up or halted.
    pub async fn take(nodes: &[NodeHandle]) -> Snapshot {
        let mut out = Vec::new();
        for n in nodes {
            out.push(read_node(n).await);
        }
        Snapshot { nodes: out }
    }

    pub fn writer(&self) -> &NodeSnapshot {
        self.nodes
            .iter()
            .find(|n| n.is_writer())
            .expect("the snapshot has no writer")
    }

    pub fn mirrors(&self) -> impl Iterator<Item = &NodeSnapshot> {
        self.nodes.iter().filter(|n| !n.is_writer())
    }

    /// Names of the halted mirrors.
    pub fn halted(&self) -> Vec<String> {
        self.mirrors()
            .filter(|m| m.halt().is_some())
            .map(|m| m.name.clone())
            .collect()
    }
}

async fn get_json(c: &Client, path: &str) -> (u16, Value) {
    let r = c
        .try_send(c.request("GET", path).body(Default::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

async fn read_node(n: &NodeHandle) -> NodeSnapshot {
    let admin = Client::new(n.admin);
    let (code, status) = get_json(&admin, "/api/v1/status").await;
    assert_eq!(code, 200, "{}: status {code}", n.name);
    let dump = Client::new(n.cms).get("/dump").await;
    assert_eq!(dump.status, 200, "{} /dump: {}", n.name, dump.text());
    let last = status["last_seq"].as_u64().unwrap_or(0);
    // A few requests in flight: thousands of entries read in seconds, without flooding a node
    // that shares two cores with everything else.
    let entries: BTreeMap<u64, Value> = stream::iter(1..=last)
        .map(|seq| {
            let admin = admin.clone();
            async move {
                let (code, v) = get_json(&admin, &format!("/api/v1/log/{seq}")).await;
                (seq, code, v)
            }
        })
        .buffer_unordered(8)
        .filter_map(|(seq, code, v)| async move { (code == 200).then_some((seq, v)) })
        .collect()
        .await;
    let hashes: BTreeSet<String> = entries
        .values()
        .filter(|e| e["body_storage"] == "blob")
        .filter_map(|e| e["body_hash"].as_str().map(str::to_string))
        .collect();
    let mut blobs = BTreeMap::new();
    for h in hashes {
        let r = admin
            .try_send(
                admin
                    .request("GET", &format!("/api/v1/blob/{h}"))
                    .body(Default::default())
                    .unwrap(),
            )
            .await;
        let state = match r {
            Ok(r) if r.status == 200 => {
                let got = blake3::hash(&r.body).to_hex().to_string();
                if got == h {
                    BlobState::Verified
                } else {
                    BlobState::Bad(format!("{} bytes hash to {got}", r.body.len()))
                }
            }
            Ok(r) if r.status == 404 => BlobState::Missing,
            Ok(r) => BlobState::Bad(format!("{} {}", r.status, r.text().trim())),
            Err(e) => BlobState::Bad(e),
        };
        blobs.insert(h, state);
    }
    NodeSnapshot {
        name: n.name.clone(),
        status,
        dump: dump.text(),
        entries,
        blobs,
    }
}

/// One checker's verdict.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    /// The RELIABILITY.md invariants it stands for.
    pub invariants: &'static str,
    /// Empty when it held.
    pub problems: Vec<String>,
    /// What it looked at (counts), for the report.
    pub note: String,
}

impl Check {
    fn new(name: &'static str, invariants: &'static str) -> Check {
        Check {
            name,
            invariants,
            problems: Vec::new(),
            note: String::new(),
        }
    }

    pub fn held(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Jepsen's set-checker result, per node.
#[derive(Clone, Debug, Default)]
pub struct SetResult {
    pub node: String,
    pub halted: bool,
    /// ok, but missing (not counted on a halted mirror: it stopped before them).
    pub lost: Vec<String>,
    /// Present, never sent.
    pub unexpected: Vec<String>,
    /// info, and present: the unknown outcome turned out applied.
    pub recovered: Vec<String>,
    /// fail, but present: a "certain" failure that happened after all.
    pub failed_present: Vec<String>,
}

/// Every checker's verdict.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    pub set: Vec<SetResult>,
    /// The history's counts, when there was one.
    pub history: String,
}

impl Report {
    pub fn held(&self) -> bool {
        self.checks.iter().all(Check::held)
    }

    pub fn check(&self, name: &str) -> &Check {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"))
    }

    /// Names of the checks that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.held())
            .map(|c| c.name)
            .collect()
    }

    /// Values the writer's `/dump` recovered from info ops.
    pub fn recovered(&self) -> usize {
        self.set.first().map(|s| s.recovered.len()).unwrap_or(0)
    }

    /// Panics with the whole report unless every check held.
    #[track_caller]
    pub fn assert_held(&self, context: &str) {
        assert!(self.held(), "invariants broken ({context}):\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.history.is_empty() {
            writeln!(f, "history: {}", self.history)?;
        }
        for c in &self.checks {
            let verdict = if c.held() { "ok  " } else { "FAIL" };
            writeln!(f, "{verdict} {:<10} [{}] {}", c.name, c.invariants, c.note)?;
            for p in c.problems.iter().take(20) {
                writeln!(f, "       - {p}")?;
            }
            if c.problems.len() > 20 {
                writeln!(f, "       … and {} more", c.problems.len() - 20)?;
            }
        }
        Ok(())
    }
}

/// Every checker, against the history's ops.
pub fn check_all(history: &History, snap: &Snapshot) -> Report {
    let ops = history.ops();
    let (set_check, set) = check_set(&ops, snap);
    let mut checks = vec![
        set_check,
        check_duplicates(&ops, snap),
        check_acks(&ops, snap),
        check_wal(&ops, snap),
    ];
    checks.extend(cluster_checks(snap));
    Report {
        checks,
        set,
        history: history.summary(),
    }
}

/// The checkers that need no history (for tests whose writes are not unique values).
pub fn check_cluster(snap: &Snapshot) -> Report {
    Report {
        checks: cluster_checks(snap),
        ..Report::default()
    }
}

fn cluster_checks(snap: &Snapshot) -> Vec<Check> {
    vec![
        check_order(snap),
        check_prefix(snap),
        check_ids(snap),
        check_converge(snap),
        check_blobs(snap),
        check_halts(snap),
    ]
}

/// The `title`s of a table's rows in a dump, each with the ids of the rows that carry it.
fn titles(dump: &Value, table: &str) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for row in dump[table].as_array().into_iter().flatten() {
        if let Some(t) = row["title"].as_str() {
            out.entry(t.to_string())
                .or_default()
                .push(row["id"].as_u64().unwrap_or(0));
        }
    }
    out
}

fn kinds(ops: &[Op]) -> BTreeSet<OpKind> {
    ops.iter().map(|o| o.op).collect()
}

/// ACK / UNKNOWN: the Jepsen set check, per node. Every row of a table the history writes is
/// considered, so a test whose history holds all its writes learns of any row it never sent.
pub fn check_set(ops: &[Op], snap: &Snapshot) -> (Check, Vec<SetResult>) {
    let mut check = Check::new("set", "ACK UNKNOWN");
    let mut by_kind: HashMap<OpKind, HashMap<&str, &Op>> = HashMap::new();
    for o in ops {
        by_kind.entry(o.op).or_default().insert(&o.value, o);
    }
    let mut results = Vec::new();
    for node in &snap.nodes {
        let mut r = SetResult {
            node: node.name.clone(),
            halted: node.halt().is_some(),
            ..SetResult::default()
        };
        let dump = match node.dump_json() {
            Ok(d) => d,
            Err(e) => {
                check.problems.push(e);
                continue;
            }
        };
        for kind in kinds(ops) {
            let present = titles(&dump, kind.table());
            let sent = &by_kind[&kind];
            for (value, op) in sent {
                let here = present.get(*value);
                match (op.outcome, here) {
                    (Outcome::Ok, None) if !r.halted => r.lost.push(value.to_string()),
                    (Outcome::Ok, Some(ids))
                        if op.id.is_some() && !ids.contains(&op.id.unwrap_or(0)) =>
                    {
                        check.problems.push(format!(
                            "{}: {value:?} was answered with id {:?}, its row has id {ids:?}",
                            node.name, op.id
                        ))
                    }
                    (Outcome::Info, Some(_)) => r.recovered.push(value.to_string()),
                    (Outcome::Fail, Some(_)) => r.failed_present.push(value.to_string()),
                    _ => {}
                }
            }
            for value in present.keys() {
                if !sent.contains_key(value.as_str()) {
                    r.unexpected.push(format!("{} {value:?}", kind.table()));
                }
            }
        }
        for v in [
            &mut r.lost,
            &mut r.unexpected,
            &mut r.recovered,
            &mut r.failed_present,
        ] {
            v.sort();
        }
        for (what, list) in [
            ("lost (acknowledged, missing)", &r.lost),
            ("unexpected (present, never sent)", &r.unexpected),
            ("failed but present", &r.failed_present),
        ] {
            if !list.is_empty() {
                check.problems.push(format!(
                    "{}: {} {what}: {}",
                    node.name,
                    list.len(),
                    list.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        results.push(r);
    }
    let ok = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
    check.note = format!(
        "{} ops ({ok} ok) against {} nodes; recovered per node: {}",
        ops.len(),
        snap.nodes.len(),
        results
            .iter()
            .map(|r| format!("{}={}", r.node, r.recovered.len()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    (check, results)
}

/// ONCE: no value is in two rows of one node's dump.
pub fn check_duplicates(ops: &[Op], snap: &Snapshot) -> Check {
    let mut check = Check::new("duplicates", "ONCE");
    for node in &snap.nodes {
        let Ok(dump) = node.dump_json() else { continue };
        for kind in kinds(ops) {
            let mut dups: Vec<String> = titles(&dump, kind.table())
                .into_iter()
                .filter(|(_, ids)| ids.len() > 1)
                .map(|(t, ids)| format!("{t:?} in rows {ids:?}"))
                .collect();
            dups.sort();
            if !dups.is_empty() {
                check.problems.push(format!(
                    "{}: {} applied twice or more: {}",
                    node.name,
                    kind.table(),
                    dups.join(", ")
                ));
            }
        }
    }
    check.note = format!("{} nodes", snap.nodes.len());
    check
}

/// The field `name` of a logged entry: from its form (`form: [[k, v], …]`), or the preview of
/// its multipart text part (`multipart.parts[].{name, value}`).
fn logged_field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    if let Some(form) = entry["form"].as_array() {
        return form
            .iter()
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv[1].as_str());
    }
    entry["multipart"]["parts"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name && p["filename"].is_null())
        .and_then(|p| p["value"].as_str())
}

/// WAL / UNKNOWN on the writer: every row of the history's tables in the writer's CMS was
/// logged before it got there (some entry carries its title), and an entry left in doubt
/// belongs to a client that was told nothing (an `info` op), never to one told ok or fail.
pub fn check_wal(ops: &[Op], snap: &Snapshot) -> Check {
    let mut check = Check::new("wal", "WAL UNKNOWN");
    let w = snap.writer();
    let Ok(dump) = w.dump_json() else {
        check
            .problems
            .push(format!("{}: /dump is not JSON", w.name));
        return check;
    };
    let mut logged: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    for (seq, e) in &w.entries {
        if let Some(t) = logged_field(e, "title") {
            logged
                .entry(t)
                .or_default()
                .push((*seq, e["state"].as_str().unwrap_or("?")));
        }
    }
    // Entries whose best-effort multipart index failed carry no title: as many unlinked rows
    // are reported in the note, not failed (see `check_acks`).
    let mut unreadable = w
        .entries
        .values()
        .filter(|e| logged_field(e, "title").is_none() && e["multipart"]["error"].is_string())
        .count();
    let mut rows = 0;
    for kind in kinds(ops) {
        for title in titles(&dump, kind.table()).keys() {
            rows += 1;
            if !logged.contains_key(title.as_str()) && unreadable > 0 {
                unreadable -= 1;
                check.note.push_str(&format!(
                    "; row {title:?} unlinked (an entry's multipart index failed)"
                ));
            } else if !logged.contains_key(title.as_str()) {
                check.problems.push(format!(
                    "{}: row {title:?} in {} has no log entry: it reached the CMS unlogged",
                    w.name,
                    kind.table()
                ));
            }
        }
    }
    let mut in_doubt = 0;
    for o in ops {
        for (seq, state) in logged.get(o.value.as_str()).into_iter().flatten() {
            if *state == "in-doubt" {
                in_doubt += 1;
                if o.outcome != Outcome::Info {
                    check.problems.push(format!(
                        "{:?}: seq {seq} is in doubt, but its client was told {:?} ({:?})",
                        o.value, o.outcome, o.status
                    ));
                }
            }
        }
    }
    check.note =
        format!("{rows} rows traced to log entries; {in_doubt} in-doubt entries, all info");
    check
}

/// ACK: what each ok client was told matches the writer's log. Two clients never share a seq;
/// the entry is accepted, created the row the client was told about, and (for forms) carries
/// the client's title.
pub fn check_acks(ops: &[Op], snap: &Snapshot) -> Check {
    let mut check = Check::new("acks", "ACK");
    let writer = snap.writer();
    let mut owner: HashMap<u64, &str> = HashMap::new();
    let mut linked = 0;
    for o in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let Some(seq) = o.seq else {
            check
                .problems
                .push(format!("{:?} acknowledged without X-Copyist-Seq", o.value));
            continue;
        };
        if let Some(other) = owner.insert(seq, &o.value) {
            check.problems.push(format!(
                "seq {seq} was told to both {other:?} and {:?}",
                o.value
            ));
        }
        let Some(e) = writer.entries.get(&seq) else {
            check.problems.push(format!(
                "{:?}: acknowledged seq {seq} is not in the writer's log",
                o.value
            ));
            continue;
        };
        if e["state"] != "accepted" {
            check.problems.push(format!(
                "{:?}: acknowledged seq {seq} is {} on the writer",
                o.value, e["state"]
            ));
        }
        let logged = e["outcome"]["location"].as_str().and_then(location_id);
        if logged != o.id {
            check.problems.push(format!(
                "{:?}: told id {:?} for seq {seq}, the writer logged {:?}",
                o.value, o.id, logged
            ));
        }
        if logged_field(e, "title").is_none() && e["multipart"]["error"].is_string() {
            // The multipart index is best-effort (display only); when it failed, this entry
            // cannot be tied to its op by title. Reported, not failed: a known open finding
            // (README, "Chaos runs"), while every other check still covers the entry.
            check.note.push_str(&format!(
                "; {:?} at seq {seq} unlinked: multipart index error {}",
                o.value, e["multipart"]["error"]
            ));
        } else if logged_field(e, "title") != Some(o.value.as_str()) {
            check.problems.push(format!(
                "{:?}: seq {seq} holds another request (title {:?}; {} {}; multipart error {})",
                o.value,
                logged_field(e, "title"),
                e["method"],
                e["target"],
                e["multipart"]["error"]
            ));
        }
        linked += 1;
    }
    check.note = format!("{linked} acknowledged ops linked to writer entries");
    check
}

/// ORDER on the writer: entries 1..=last_seq all present, none left pending, and among the
/// accepted ones each table's row ids increase with the sequence number (the CMS saw them in
/// log order).
pub fn check_order(snap: &Snapshot) -> Check {
    let mut check = Check::new("order", "ORDER");
    let w = snap.writer();
    let last = w.last_seq();
    let mut last_id: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for seq in 1..=last {
        let Some(e) = w.entries.get(&seq) else {
            check.problems.push(format!("writer: gap at seq {seq}"));
            continue;
        };
        let state = e["state"].as_str().unwrap_or("?").to_string();
        *states.entry(state.clone()).or_insert(0) += 1;
        if state == "pending" {
            check
                .problems
                .push(format!("writer: seq {seq} still pending after quiescing"));
        }
        if state != "accepted" {
            continue;
        }
        let Some(loc) = e["outcome"]["location"].as_str() else {
            continue;
        };
        let Some(id) = location_id(loc) else { continue };
        let table = loc[..loc.len() - id.to_string().len()].to_string();
        if let Some((prev_seq, prev_id)) = last_id.get(&table) {
            if id <= *prev_id {
                check.problems.push(format!(
                    "writer: seq {seq} created {loc} after seq {prev_seq} created id {prev_id}: \
                     the CMS did not see the log's order"
                ));
            }
        }
        last_id.insert(table, (seq, id));
    }
    check.note = format!("writer last_seq {last}, states {states:?}");
    check
}

/// What may stand at seq on a mirror that has applied up to `applied`.
fn finished(state: &str) -> bool {
    matches!(state, "applied" | "skipped" | "rejected")
}

/// ORDER / ONCE / HALT on each mirror: entries 1..=applied_seq are all there and finished, and
/// nothing is stored past applied_seq except, on a halted mirror, the entry it stopped at.
pub fn check_prefix(snap: &Snapshot) -> Check {
    let mut check = Check::new("prefix", "ORDER ONCE HALT");
    let writer_last = snap.writer().last_seq();
    let mut notes = Vec::new();
    for m in snap.mirrors() {
        let applied = m.applied_seq();
        if applied > writer_last {
            check.problems.push(format!(
                "{}: applied_seq {applied} is past the writer's last_seq {writer_last}",
                m.name
            ));
        }
        for seq in 1..=applied {
            match m.entries.get(&seq) {
                None => check.problems.push(format!(
                    "{}: gap at {seq} below applied_seq {applied}",
                    m.name
                )),
                Some(e) if !finished(e["state"].as_str().unwrap_or("")) => {
                    check.problems.push(format!(
                        "{}: seq {seq} is {} below applied_seq {applied}",
                        m.name, e["state"]
                    ))
                }
                Some(_) => {}
            }
        }
        let halted_at = m.halt().and_then(|h| h["seq"].as_u64());
        for (seq, e) in m.entries.range(applied + 1..) {
            if Some(*seq) == halted_at {
                continue;
            }
            check.problems.push(format!(
                "{}: holds seq {seq} ({}) past applied_seq {applied}{}",
                m.name,
                e["state"],
                if halted_at.is_some() {
                    " and past its halt"
                } else {
                    ""
                }
            ));
        }
        notes.push(format!("{} applied {applied}", m.name));
    }
    check.note = notes.join(", ");
    check
}

/// IDS: for every entry a mirror applied, its CMS created the row the writer's CMS created.
pub fn check_ids(snap: &Snapshot) -> Check {
    let mut check = Check::new("ids", "IDS");
    let w = snap.writer();
    let mut compared = 0;
    for m in snap.mirrors() {
        for (seq, e) in &m.entries {
            if e["state"] != "applied" {
                continue;
            }
            let Some(we) = w.entries.get(seq) else {
                check.problems.push(format!(
                    "{}: applied seq {seq} the writer does not have",
                    m.name
                ));
                continue;
            };
            let want = &we["outcome"]["location"];
            if &e["mirror_outcome"]["location"] != want || &e["outcome"]["location"] != want {
                check.problems.push(format!(
                    "{}: seq {seq} created {} (shipped as {}), the writer created {want}",
                    m.name, e["mirror_outcome"]["location"], e["outcome"]["location"]
                ));
            }
            compared += 1;
        }
    }
    check.note = format!("{compared} applied entries compared");
    check
}

/// A short description of how two dumps differ: the first differing row per table.
fn dump_diff(a: &str, b: &str) -> String {
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) else {
        return "(not JSON)".into();
    };
    let mut out = Vec::new();
    for table in ["articles", "uploads", "randoms", "counters", "files"] {
        if a[table] == b[table] {
            continue;
        }
        match (a[table].as_array(), b[table].as_array()) {
            (Some(x), Some(y)) => {
                let i = x
                    .iter()
                    .zip(y)
                    .position(|(r, s)| r != s)
                    .unwrap_or(x.len().min(y.len()));
                out.push(format!(
                    "{table}: {} vs {} rows; first difference at row {i}: {} vs {}",
                    x.len(),
                    y.len(),
                    x.get(i).map_or("-".into(), Value::to_string),
                    y.get(i).map_or("-".into(), Value::to_string)
                ));
            }
            _ => out.push(format!("{table} differs")),
        }
    }
    out.join("; ")
}

/// CONVERGE: every non-halted mirror's `/dump` equals the writer's, byte for byte.
pub fn check_converge(snap: &Snapshot) -> Check {
    let mut check = Check::new("converge", "CONVERGE");
    let w = snap.writer();
    let mut compared = Vec::new();
    for m in snap.mirrors().filter(|m| m.halt().is_none()) {
        if m.dump != w.dump {
            check.problems.push(format!(
                "{} differs from {}: {}",
                m.name,
                w.name,
                dump_diff(&w.dump, &m.dump)
            ));
        }
        compared.push(m.name.as_str());
    }
    check.note = format!("{} bytes; compared {compared:?}", w.dump.len());
    check
}

/// BLOB: every blob an entry needs exists and verifies. The writer needs the blob of every
/// entry; a mirror needs those it applies (it never receives a rejected or skipped entry's blob).
pub fn check_blobs(snap: &Snapshot) -> Check {
    let mut check = Check::new("blobs", "BLOB");
    let mut verified = 0;
    for node in &snap.nodes {
        for (seq, e) in &node.entries {
            if e["body_storage"] != "blob" {
                continue;
            }
            let state = e["state"].as_str().unwrap_or("");
            if !node.is_writer() && matches!(state, "rejected" | "skipped") {
                continue;
            }
            let hash = e["body_hash"].as_str().unwrap_or("");
            match node.blobs.get(hash) {
                Some(BlobState::Verified) => verified += 1,
                Some(BlobState::Missing) | None => check.problems.push(format!(
                    "{}: seq {seq} ({state}) references missing blob {hash}",
                    node.name
                )),
                Some(BlobState::Bad(why)) => check.problems.push(format!(
                    "{}: seq {seq} ({state}) blob {hash} does not verify: {why}",
                    node.name
                )),
            }
        }
    }
    check.note = format!("{verified} blob references verified");
    check
}

/// A halt reason is a machine-readable code: lowercase words joined by `_`.
pub fn is_machine_reason(reason: &str) -> bool {
    !reason.is_empty()
        && reason.starts_with(|c: char| c.is_ascii_lowercase())
        && reason.chars().all(|c| c.is_ascii_lowercase() || c == '_')
}

/// HALT: a halted mirror says why in a machine-readable code, stopped right after what it
/// applied, and the entry it stopped at carries the same halt.
pub fn check_halts(snap: &Snapshot) -> Check {
    let mut check = Check::new("halts", "HALT");
    let mut halted = Vec::new();
    for m in snap.mirrors() {
        let Some(h) = m.halt() else { continue };
        let reason = h["reason"].as_str().unwrap_or("");
        halted.push(format!("{}@{}:{reason}", m.name, h["seq"]));
        if !is_machine_reason(reason) {
            check.problems.push(format!(
                "{}: halt reason {:?} is not a machine code",
                m.name, h["reason"]
            ));
        }
        let Some(seq) = h["seq"].as_u64() else {
            check
                .problems
                .push(format!("{}: halt without a seq: {h}", m.name));
            continue;
        };
        if seq != m.applied_seq() + 1 {
            check.problems.push(format!(
                "{}: halted at {seq} but applied_seq is {}",
                m.name,
                m.applied_seq()
            ));
        }
        match m.entries.get(&seq) {
            None => check.problems.push(format!(
                "{}: halted at {seq}, an entry it does not hold",
                m.name
            )),
            Some(e) => {
                if !matches!(e["state"].as_str(), Some("in-doubt" | "diverged")) {
                    check.problems.push(format!(
                        "{}: halted at {seq}, whose entry is {}",
                        m.name, e["state"]
                    ));
                }
                if e["halt"]["reason"] != h["reason"] {
                    check.problems.push(format!(
                        "{}: the entry at {seq} names halt {} but the mirror {}",
                        m.name, e["halt"], h
                    ));
                }
            }
        }
    }
    check.note = if halted.is_empty() {
        "no mirror halted".into()
    } else {
        format!("halted: {}", halted.join(", "))
    };
    check
}

#[cfg(test)]
mod tests {
    //! The checkers catch what they claim to: each broken snapshot below fails exactly the check
    //! named for it, and the clean one passes them all.

    use serde_json::json;

    use super::*;

    fn op(value: &str, outcome: Outcome, seq: Option<u64>, id: Option<u64>) -> Op {
        Op {
            client: 0,
            op: OpKind::Add,
            value: value.into(),
            via: "writer".into(),
            invoke_us: 0,
            complete_us: 1,
            outcome,
            status: None,
            seq,
            id,
            error: None,
        }
    }

    fn dump(titles: &[&str]) -> String {
        let rows: Vec<Value> = titles
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"body": "b", "id": i + 1, "title": t}))
            .collect();
        json!({"articles": rows, "counters": [], "files": {}, "randoms": [], "uploads": []})
            .to_string()
    }

    fn entry(state: &str, title: &str, id: u64) -> Value {
        json!({
            "state": state,
            "form": [["title", title], ["body", "b"]],
            "body_storage": "inline",
            "body_hash": "00",
            "outcome": {"location": format!("/article/{id}")},
            "mirror_outcome": {"location": format!("/article/{id}")},
            "halt": null,
        })
    }

    /// A writer and a mirror that both applied a then b; c was info and never arrived.
    fn clean() -> (Vec<Op>, Snapshot) {
        let ops = vec![
            op("a", Outcome::Ok, Some(1), Some(1)),
            op("b", Outcome::Ok, Some(2), Some(2)),
            op("c", Outcome::Info, None, None),
            op("d", Outcome::Fail, None, None),
        ];
        let writer = NodeSnapshot {
            name: "writer".into(),
            status: json!({"role": "writer", "last_seq": 2, "applied_seq": 2, "halt": null}),
            dump: dump(&["a", "b"]),
            entries: BTreeMap::from([
                (1, entry("accepted", "a", 1)),
                (2, entry("accepted", "b", 2)),
            ]),
            blobs: BTreeMap::new(),
        };
        let mut mirror = writer.clone();
        mirror.name = "mirror-1".into();
        mirror.status = json!({"role": "mirror", "last_seq": 2, "applied_seq": 2, "halt": null});
        for e in mirror.entries.values_mut() {
            e["state"] = json!("applied");
        }
        (
            ops,
            Snapshot {
                nodes: vec![writer, mirror],
            },
        )
    }

    fn run(ops: &[Op], snap: &Snapshot) -> Report {
        let (set, sets) = check_set(ops, snap);
        let mut checks = vec![
            set,
            check_duplicates(ops, snap),
            check_acks(ops, snap),
            check_wal(ops, snap),
        ];
        checks.extend(cluster_checks(snap));
        Report {
            checks,
            set: sets,
            history: String::new(),
        }
    }

    #[test]
    fn a_clean_history_passes_every_check() {
        let (ops, snap) = clean();
        let r = run(&ops, &snap);
        r.assert_held("clean");
        assert_eq!(r.recovered(), 0);
    }

    #[test]
    fn an_info_op_that_arrived_is_recovered_not_unexpected() {
        let (ops, mut snap) = clean();
        for n in &mut snap.nodes {
            n.dump = dump(&["a", "b", "c"]);
        }
        let r = run(&ops, &snap);
        assert!(r.check("set").held(), "{r}");
        assert_eq!(r.set[0].recovered, vec!["c".to_string()]);
    }

    #[test]
    fn each_broken_invariant_fails_its_own_check() {
        type Break = fn(&mut Vec<Op>, &mut Snapshot);
        let cases: Vec<(&str, Break)> = vec![
            ("set", |_, s| s.nodes[1].dump = dump(&["a"])), // lost on the mirror
            ("set", |_, s| s.nodes[0].dump = dump(&["a", "b", "zz"])), // unexpected
            ("set", |_, s| s.nodes[0].dump = dump(&["a", "b", "d"])), // failed, present
            ("set", |_, s| s.nodes[1].dump = dump(&["b", "a"])), // rows not the ids told
            ("duplicates", |_, s| {
                s.nodes[1].dump = dump(&["a", "b", "b"])
            }),
            ("acks", |o, _| o[1].seq = Some(1)), // two clients told one seq
            ("acks", |o, _| o[1].id = Some(7)),  // told another row
            ("acks", |_, s| {
                s.nodes[0].entries.insert(2, entry("accepted", "x", 2));
            }),
            ("wal", |o, s| {
                // A row in the CMS that no entry logged.
                o.push(op("e", Outcome::Info, None, None));
                s.nodes[0].dump = dump(&["a", "b", "e"]);
            }),
            ("wal", |o, s| {
                // In doubt, yet its client was told it failed.
                o.push(op("e", Outcome::Fail, None, None));
                s.nodes[0].entries.insert(3, entry("in-doubt", "e", 3));
                s.nodes[0].status["last_seq"] = json!(3);
            }),
            ("order", |_, s| {
                s.nodes[0].entries.remove(&1);
            }),
            ("order", |_, s| {
                s.nodes[0].entries.insert(3, entry("pending", "p", 3));
                s.nodes[0].status["last_seq"] = json!(3);
            }),
            ("order", |_, s| {
                s.nodes[0].entries.insert(3, entry("accepted", "q", 2));
                s.nodes[0].status["last_seq"] = json!(3);
            }),
            ("prefix", |_, s| {
                s.nodes[1].entries.remove(&1);
            }),
            ("prefix", |_, s| {
                s.nodes[1].entries.insert(3, entry("applied", "z", 3));
            }),
            ("ids", |_, s| {
                s.nodes[1].entries.get_mut(&2).unwrap()["mirror_outcome"]["location"] =
                    json!("/article/9");
            }),
            ("converge", |_, s| {
                s.nodes[1].dump = s.nodes[1].dump.replace("\"body\":\"b\"", "\"body\":\"c\"");
            }),
            ("blobs", |_, s| {
                s.nodes[0].entries.get_mut(&1).unwrap()["body_storage"] = json!("blob");
                s.nodes[0].entries.get_mut(&1).unwrap()["body_hash"] = json!("ab");
                s.nodes[0]
                    .blobs
                    .insert("ab".into(), BlobState::Bad("hash".into()));
            }),
            ("halts", |_, s| {
                s.nodes[1].status["halt"] = json!({"seq": 2, "reason": "Something went wrong"});
            }),
        ];
        for (i, (name, brk)) in cases.into_iter().enumerate() {
            let (mut ops, mut snap) = clean();
            brk(&mut ops, &mut snap);
            let r = run(&ops, &snap);
            assert!(
                !r.check(name).held(),
                "case {i}: {name} did not catch it:\n{r}"
            );
        }
    }

    #[test]
    fn a_halted_mirror_is_not_held_to_what_came_after_its_halt() {
        let (ops, mut snap) = clean();
        let m = &mut snap.nodes[1];
        m.status = json!({"role": "mirror", "last_seq": 2, "applied_seq": 1,
                          "halt": {"seq": 2, "reason": "in_doubt", "detail": "x"}});
        m.dump = dump(&["a"]);
        let e = m.entries.get_mut(&2).unwrap();
        e["state"] = json!("in-doubt");
        e["halt"] = json!({"seq": 2, "reason": "in_doubt"});
        let r = run(&ops, &snap);
        r.assert_held("halted mirror");
        assert_eq!(snap.halted(), vec!["mirror-1".to_string()]);
        assert!(is_machine_reason("ambiguous_writer_outcome"));
        assert!(!is_machine_reason("In doubt"));
    }
}
