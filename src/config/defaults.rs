//! Every default value of `proxy.toml`, and the hard limits the values are checked against.
//!
//! Each constant says why it has its value. `proxy.toml.example` repeats these values in its
//! `[default: …]` comments, and a test in `config` checks that the two agree.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::{StatusCompare, StatusRange};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

// === [public] ===

/// `public.header_read_timeout`: a real client sends its request head in one or two round trips;
/// 10 s covers a slow mobile link while bounding how long a slowloris client holds a connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `public.body_read_timeout`: the longest silence between two body chunks. Uploads stall
/// briefly on congested links, so this is looser than the header timeout, but a client that stops
/// sending must not pin a spool file and a connection forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `public.send_timeout`: the longest a response write may wait on a client that reads nothing
/// (nginx's `send_timeout` is also 60 s). A client that stops reading otherwise holds its
/// connection and, through back-pressure, the CMS worker producing the response, for ever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// `public.max_header_bytes`: CMS admin sessions carry several large cookies; 64 KiB is twice
/// what nginx accepts by default (4 × 8 KiB), so anything nginx passes, copyist passes too.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Lowest accepted `public.max_header_bytes`: hyper's HTTP/1 read buffer cannot be smaller
/// (hyper panics below 8 KiB), so a smaller value is refused at boot instead.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

/// `public.max_headers`: hyper's own default; browsers send 10–30 headers.
pub const MAX_HEADERS: usize = 100;

/// `public.max_body_bytes`: large enough for the media uploads a CMS accepts; bodies are
/// spooled to disk, so the cap bounds disk use per request, not memory.
pub const MAX_BODY_BYTES: u64 = GIB;

// === [origin] ===

/// `origin.connect_timeout`: the origin is the CMS on the same host; if a connect takes seconds,
/// it is down, and the client should get a 502 quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `origin.response_timeout`: time until the origin's response headers. CMS actions (image
/// resizing, imports) can take tens of seconds; PHP's default `max_execution_time` is 30 s, so
/// 60 s leaves room without holding the write lock indefinitely.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// `origin.idle_timeout`: hyper-util's own pool default. If the origin server's keep-alive
/// timeout is shorter, set this below it, so copyist never reuses a connection the origin is
/// closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// `origin.max_idle_per_host`: enough idle connections to absorb a burst of pass-through
/// requests without reconnecting, few enough not to exhaust PHP-FPM workers.
pub const MAX_IDLE_PER_HOST: usize = 64;

// === [admin] ===

/// Port used when `admin.listen` is a bare IP address.
pub const ADMIN_PORT: u16 = 9901;

/// `admin.listen`: loopback only, because the admin API can pause, skip and promote; exposing it
/// must be a deliberate choice.
pub const ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, ADMIN_PORT));

// === [health] ===

/// `health.probe_path`: the site's front page. If the CMS can render what a visitor gets
/// first, it is up; a dedicated cheap page (`/healthz`) can be named instead.
pub const HEALTH_PROBE_PATH: &str = "/";

/// `health.probe_interval`: load balancers typically probe every 2–5 s; refreshing the cached
/// answer as often means a probe never reports something older than one interval.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// `health.probe_timeout`: a CMS that needs more than a second for its front page is too slow
/// to send visitors to, and the probe must finish well within its interval.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `health.shutdown_delay`: a load balancer checking every second with a fall count of two or
/// three has taken the node out of rotation after about three seconds of failing readiness.
pub const HEALTH_SHUTDOWN_DELAY: Duration = Duration::from_secs(3);

/// `health.drain_status`: 503 is what every load balancer understands as "out of rotation";
/// HAProxy's `http-check disable-on-404` wants 404 to tell draining from down.
pub const HEALTH_DRAIN_STATUS: http::StatusCode = http::StatusCode::SERVICE_UNAVAILABLE;

// === [capture] ===

/// `capture.success_status`: a CMS answers an accepted form with 200 or a redirect (302/303);
/// 4xx/5xx mean the origin refused it, so the entry is `rejected` and never shipped.
pub const SUCCESS_STATUSES: &[StatusRange] = &[
    StatusRange { lo: 200, hi: 299 },
    StatusRange { lo: 300, hi: 399 },
];

/// `capture.inline_max`: typical form posts (login, comment, edit) fit in 16 KiB and stay inside
/// the log entry; larger bodies (uploads) go to the blob store so log entries stay small.
pub const INLINE_BODY_MAX: u64 = 16 * KIB;

/// `capture.max_response_buffer`: captured responses are digested and relayed; HTML pages are
/// well under 8 MiB, so the common case never touches the disk, and memory per request stays
/// bounded.
pub const MAX_RESPONSE_BUFFER: u64 = 8 * MIB;

/// `capture.multipart.max_parts`: a CMS edit form has tens of fields; 1000 allows bulk forms while
/// stopping a body made of millions of tiny parts from exhausting the multipart index.
pub const MULTIPART_MAX_PARTS: usize = 1000;

/// `capture.multipart.max_field_bytes`: text fields (titles, article bodies) are held in memory
/// while indexing; 1 MiB fits a long article, and file parts are not limited by this.
pub const MULTIPART_MAX_FIELD_BYTES: u64 = MIB;

/// `capture.mask_fields`: substrings of form-field names that usually hold credentials or card
/// data, masked in `log show` so an operator inspecting the log does not see them.
pub const MASK_FIELDS: &[&str] = &[
    "pass", "pwd", "secret", "token", "csrf", "key", "auth", "card", "cvv",
];

// === [log] ===

/// `log.cache_capacity`: sled's page cache. The log is read mostly at its tail (shipping), so a
/// modest cache serves it; sled's own default (1 GiB) is too much for a sidecar.
pub const LOG_CACHE_CAPACITY: u64 = 64 * MIB;

// === [replication] ===

/// `replication.window`: entries in flight to one mirror. The mirror applies them one after
/// another anyway; the window only hides the round trip. 32 keeps a mirror 50 ms away busy
/// when its CMS applies an entry in 2 ms or more, while bounding what a resend after a broken
/// connection repeats (resends are harmless, but not free).
pub const REPLICATION_WINDOW: usize = 32;

/// `replication.retry_max`: the longest backoff between transport retries. Short, because a
/// mirror that comes back should catch up soon, and a retry costs one connection attempt.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// `replication.request_timeout`: the longest wait for a mirror's answer to one entry. The
/// answer waits on the mirror's CMS, which the mirror bounds with its own
/// `origin.response_timeout` ([`RESPONSE_TIMEOUT`], 60 s); waiting longer would only hide a
/// stuck connection. A timed-out entry is sent again, and a resend of an applied entry returns
/// its recorded result, so a timeout never applies anything twice.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// === [writer] ===

/// `writer.affinity`: long enough for an author to write, then look around the pages their
/// write touched (lists, feeds, search) while the mirror catches up, which takes well under a
/// second when it is healthy; short enough that a visitor who wrote once soon reads from their
/// own mirror again.
pub const WRITER_AFFINITY: Duration = Duration::from_secs(5 * 60);

/// `writer.affinity_cookie`: says whose cookie it is, and is unlikely to clash with a CMS's.
pub const WRITER_AFFINITY_COOKIE: &str = "copyist_writer";

/// `writer.read_your_writes_wait`: a healthy mirror applies a write within milliseconds of the
/// writer settling it; 10 s covers a busy one, while a client whose mirror is stuck or paused
/// still gets its answer (marked `X-Copyist-Applied: timeout`) before a browser gives up.
pub const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(10);

// === [compare] ===

/// Path pattern of the `[compare]` rule itself: it applies wherever no `[[compare.rule]]` does.
pub const COMPARE_PATH: &str = "/*";

/// `compare.status`: a replayed request must get the very status the writer's got; a CMS that
/// answers 201 on one node and 200 on another is already doing something different.
pub const COMPARE_STATUS: StatusCompare = StatusCompare::Exact;

/// `compare.location`: a redirect after a create names the new item (`/article/42`); comparing
/// it (without scheme and host, which differ per node) catches a mirror that made item 43.
pub const COMPARE_LOCATION: bool = true;

/// `compare.json_fields`: none by default, because which fields identify what a request
/// created depends on the application (`/id`, `/data/id`…).
pub const COMPARE_JSON_FIELDS: &[&str] = &[];

/// `compare.body`: off by default, because most pages carry something per-node or per-request
/// (dates, nonces, the host name) that must be listed in `volatile` first.
pub const COMPARE_BODY: bool = false;

/// `compare.volatile`: nothing is masked by default; what varies is application-specific.
pub const COMPARE_VOLATILE: &[&str] = &[];
