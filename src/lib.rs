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
//! * [`cluster`] — writes that reach a mirror: forwarded to the writer, read-your-writes.
//! * [`log`] — the durable log (the only module that names sled).
//! * [`blobs`] — content-addressed blob files (the only module that touches the blob dir).
//! * [`origin`] — pooled client to the local CMS, every origin timeout, response collection.
//! * [`ship`] — writer side of replication: a shipper per mirror and its mTLS peer client.
//! * [`apply`] — mirror side: the replication listener, ordered apply, cookie sessions.
//! * [`compare`] — what of a response a mirror must match, and the comparison.
//! * [`wire`] — the replication protocol's paths and messages.
//! * [`admin`] — admin listener: liveness, the JSON API the CLI uses, Prometheus metrics.
//! * [`tls`] — rustls configuration.
//! * [`cli`] — subcommands; talks to a running node only through the admin API.
//! * [`error`] — who is to blame, and the one place errors become HTTP statuses.
//! * [`shutdown`] — SIGTERM/SIGINT and the shutdown receiver every task holds.
//! * [`systemd`] — `Type=notify` readiness and status.
//!
//! # Invariants
//! * No request reaches the origin unless its entry is durably `Pending` first.
//! * Captured requests reach the origin one at a time, in sequence-number order.
//! * A client is answered only after its entry's outcome is durable.
//! * An outcome copyist cannot know (origin timed out after the request was sent, crash while
//!   pending) is recorded `in-doubt`, never guessed.
//! * Once the log or blob store fails to write, captured requests get 503 until restart.
//! * A mirror applies a gap-free, strictly increasing prefix of sequence numbers, each at most
//!   once; it halts on any difference and only an audited operator action moves it on.
//! * Only `log` touches sled; only `blobs` touches the blob directory; `ship` never calls the
//!   origin; `admin` writes nothing but audited operator actions.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod admin;
pub mod apply;
pub mod blobs;
pub mod body;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod log;
pub mod node;
pub mod origin;
pub mod proxy;
pub mod ship;
pub mod shutdown;
pub mod systemd;
pub mod tls;
pub mod wire;
