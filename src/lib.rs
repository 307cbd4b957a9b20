//! copyist: a transparent capture layer in front of an unmodified CMS.
//!
//! Every node runs copyist in front of its own copy of the CMS. On the writer, each
//! state-changing request is recorded durably in a log before the CMS sees it, the CMS decides,
//! and the outcome is recorded before the client hears it. Mirrors (a later step) replay the
//! accepted entries in order. Design: `ARCHITECTURE.md`; this page is the map.
//!
//! # Life of a read (pass-through)
//! [`proxy::Proxy::serve`] → `Proxy::handle_inner` (framing, host, limits) →
//! [`proxy::classify::classify`] (`Route::PassThrough`) → `Proxy::origin_headers`
//! ([`proxy::headers`]) → [`proxy::passthrough::forward`] → [`origin::Origin::send`] →
//! response streamed back, nothing buffered, nothing on disk.
//!
//! # Life of a captured request (writer)
//! [`proxy::Proxy::serve`] → [`proxy::classify::classify`] (`Route::Capture`) →
//! [`capture::Capture::capture`]:
//! [`capture::spool::spool`] (body → memory or [`blobs::BlobStore`], blake3) →
//! [`capture::multipart::index`] → write lock (FIFO) → [`log::Log::append_pending`] (durable) →
//! `Capture::forward` → [`origin::Origin::send`] → [`origin::response::collect`] →
//! [`log::Log::settle`] (accepted | rejected | in-doubt, durable) → unlock → response with
//! `X-Copyist-Seq`.
//!
//! # Life of a request a mirror sends to its writer
//! `Proxy::handle_inner` → [`cluster::Forwarder::take_affinity`] (the affinity cookie removed
//! whatever happens next) → a write, a `[writer] paths` path or a valid affinity cookie →
//! [`cluster::Forwarder::forward`] → [`ship::peer::Peer::send`] (`POST /_copyist/v1/forward`) →
//! writer: `Replication::forwarded` → [`proxy::classify::classify`] with the writer's rules →
//! the capture pipeline above, or [`proxy::passthrough::forward`] → back on the mirror: a logged
//! write waits (bounded) until this mirror applied it, and sets the affinity cookie.
//!
//! # Life of an entry on its way to a mirror
//! [`ship::Shipper::run`] (one per mirror) → `Shipper::session` (starts at the mirror's
//! `applied_seq` from [`ship::peer::Peer::state`]) → [`ship::peer::Peer::ensure_blob`] →
//! [`ship::peer::Peer::send_entry`] (window in flight) → mirror: [`apply::Replication::serve`]
//! (mTLS, peer name checked) → `Replication::apply` (next seq only) →
//! [`log::Log::begin_apply`] (durable `applying`) → `Replication::replay` →
//! [`origin::Origin::send`] → [`compare::observe`] + [`compare::compare`] →
//! [`log::Log::finish_apply`] (`applied`, or `diverged` and halted) → answer to the writer.
//!
//! # Layout
//! * [`config`] — `proxy.toml`: raw file → validated [`config::Config`], every problem at once.
//! * [`node`] — composition root: [`node::Node::build`] binds and opens, [`node::Node::run`] serves.
//! * [`proxy`] — public listener, request checks, classification, header hygiene, pass-through.
//! * [`body`] — reading a client body with a size limit and an idle deadline.
//! * [`capture`] — the capture pipeline and its write lock; fail-closed latch.
//! * [`cluster`] — what a mirror sends to its writer (writes, writer paths, writer affinity),
//!   read-your-writes, the affinity cookie.
//! * [`log`] — the durable log (the only module that names sled).
//! * [`blobs`] — content-addressed blob files (the only module that touches the blob dir).
//! * [`crypt`] — optional encryption at rest: the node key, sealed log values, sealed streams.
//! * [`origin`] — pooled client to the local CMS, every origin timeout, response collection.
//! * [`ship`] — writer side of replication: a shipper per mirror and its mTLS peer client.
//! * [`apply`] — mirror side: the replication listener, ordered apply, cookie sessions.
//! * [`compare`] — what of a response a mirror must match, and the comparison.
//! * [`wire`] — the replication protocol's paths and messages.
//! * [`admin`] — admin listener: the status page, health checks, the JSON API the CLI uses,
//!   Prometheus metrics.
//! * [`access_log`] — the optional combined-format access log and its writer task.
//! * [`reload`] — SIGHUP: re-read and validate the config, swap in the live settings
//!   ([`reload::Live`], read by `proxy`, `capture`, `apply`, `admin`).
//! * [`tls`] — rustls configuration.
//! * [`cli`] — subcommands; talks to a running node only through the admin API.
//! * [`error`] — who is to blame, and the one place errors become HTTP statuses.
//! * [`shutdown`] — SIGTERM/SIGINT and the shutdown receiver every task holds; SIGHUP.
//! * [`systemd`] — `Type=notify` readiness and status.
//!
//! # Invariants
//! * No request reaches the origin unless its entry is durably `Pending` first.
//! * Captured requests reach the origin one at a time, in sequence-number order.
//! * A client is answered only after its entry's outcome is durable.
//! * An outcome copyist cannot know (origin timed out after the request was sent, crash while
//!   pending) is recorded `in-doubt`, never guessed.
//! * Once the log or blob store fails to write, captured requests get 503 until restart (a
//!   mirror applies nothing more until restart).
//! * A log that sled recovers with fewer commits than `log/copyist.seal` counts refuses to open:
//!   a damaged or torn log is never silently shortened.
//! * A mirror applies a gap-free, strictly increasing prefix of sequence numbers, each at most
//!   once; it halts on any difference and only an audited operator action moves it on.
//! * With `[log] encryption_key_file` set, nothing copyist stores under `data_dir` (log values,
//!   blobs, response spills) holds client data in the clear; keys are per node.
//! * Only `log` touches sled; only `blobs` touches the blob directory; `ship` never calls the
//!   origin; `admin` writes nothing but audited operator actions.
//!
//! # Crash points
//! With the `failpoints` cargo feature (tests only: `scripts/check.sh` turns it on, a release
//! build never does) `copyist run` reads `FAILPOINTS=NAME=return` at start and aborts the
//! process (`std::process::abort`, SIGABRT: a panic would only end one tokio task) when it
//! reaches the point `NAME`. Without the feature every point compiles to nothing: fail 0.5's
//! `fail_point!` then expands to `{}` (checked: such a binary holds none of the names below).
//! `tests/it/crashpoints.rs` crashes a node at each point and checks what a restart finds.
//!
//! | Point | Where | The crash leaves |
//! |---|---|---|
//! | `before_append` | writer, [`capture`], write lock held, before `Log::append_pending` | no entry; the CMS saw nothing |
//! | `after_append_before_sync` | writer, [`log`], the new entry's sled transaction applied, before flush and fsync | no entry, or an `in-doubt` one (the CMS saw nothing) |
//! | `after_sync_before_cms` | writer, [`capture`], entry durably `pending`, before the CMS | `in-doubt` entry the CMS never saw; shipping waits for `resolve` |
//! | `after_cms_before_outcome` | writer, [`capture`], the CMS answered, before `Log::settle` | `in-doubt` entry the CMS did apply; shipping waits for `resolve` |
//! | `after_outcome_before_reply` | writer, [`capture`], outcome durable, before the client's answer | `accepted` entry (shipped); the client got no answer |
//! | `mid_replicate_send` | writer, [`ship`], a mirror's answer to an entry arrived, before it is handled | the mirror has it (once); the restarted writer ships from the mirror's position |
//! | `after_receive` | mirror, [`apply`], entry decoded, before anything is stored | nothing stored; the writer sends it again |
//! | `after_intent_before_cms` | mirror, [`apply`], entry durably `applying`, before the CMS | halted `in_doubt`, the CMS never saw it (operator: `retry`) |
//! | `after_cms_before_applied` | mirror, [`apply`], the CMS answered, before `Log::finish_apply` | halted `in_doubt`, the CMS applied it (operator: `skip`) |
//! | `after_applied_before_ack` | mirror, [`apply`], `applied` durable, before the writer's answer | applied once; a resend is answered from the record |
//! | `during_recovery` | either, [`log`], `Log::open` found unsettled entries, before it settles them | the same state as before that start: the next start recovers it |
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod access_log;
pub mod admin;
pub mod apply;
#[doc(hidden)]
pub mod bench_api;
pub mod blobs;
pub mod body;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod crypt;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod log;
pub mod node;
pub mod origin;
pub mod proxy;
pub mod reload;
pub mod ship;
pub mod shutdown;
pub mod systemd;
pub mod tls;
pub mod wire;
