//! Configuration: reads `proxy.toml` into a validated, typed [`Config`], or a [`ConfigError`]
//! listing every problem in the file with its line, column and key.
//!
//! Two layers (STYLE habit 7): `file` mirrors the TOML as written (types and known keys only),
//! `validate` turns it into [`Config`] (addresses, durations, sizes, defaults from
//! [`defaults`], cross-field rules). Nothing past this module sees a raw string from the file.
//!
//! This module reads the config file and nothing else: it does not check that `data_dir` or the
//! TLS files (`[public]`, `[replication]`) exist, nor bind anything, nor contact peers. Those
//! failures belong to `node` and `tls`, at startup.
//! Every key, its meaning and its default are listed in `proxy.toml.example`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod compare;
pub mod defaults;
mod error;
mod file;
mod pattern;
mod units;
mod validate;

pub use compare::{CompareConfig, CompareRule, StatusCompare, Volatile};
pub use error::{ConfigError, Problem};
pub use pattern::{PathPattern, PatternError};

use error::Problems;
use file::FileConfig;

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration was read from, as given to [`Config::load`].
    pub path: PathBuf,
    /// `[node]`: who this node is.
    pub node: NodeConfig,
    /// `[public]`: the listener clients and the load balancer connect to.
    pub public: PublicConfig,
    /// `[origin]`: the local CMS.
    pub origin: OriginConfig,
    /// `[admin]`: health, metrics and the JSON API used by the CLI.
    pub admin: AdminConfig,
    /// `[health]`: the background probe behind the health endpoints, and draining.
    pub health: HealthConfig,
    /// `[capture]`: which requests are captured, and the limits while capturing.
    pub capture: CaptureConfig,
    /// `[log]`: the durable log.
    pub log: LogConfig,
    /// `[replication]`: this node's mTLS listener for peers, and the PEM files it (and its
    /// client side) uses. Always present on a mirror, and on a writer with `[[mirrors]]`.
    pub replication: Option<ReplicationConfig>,
    /// `[[mirrors]]`: where the writer ships, in file order. Empty on a mirror. Names are
    /// unique and differ from `node.name`.
    pub mirrors: Vec<MirrorConfig>,
    /// `[writer]`: where a mirror's writer is. `Some` exactly when the role is mirror.
    pub writer: Option<WriterConfig>,
    /// `[compare]`: how a mirror decides that its CMS answered like the writer's.
    pub compare: CompareConfig,
}

/// The part a node plays in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Captures state-changing requests, decides their order and ships them.
    Writer,
    /// Applies the writer's entries in order and serves reads.
    Mirror,
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Names this node in logs, metrics and peer certificates. A DNS name made of
    /// `[A-Za-z0-9_-]` labels joined by `.` (see `proxy.toml.example`), so it can be a
    /// certificate's subject name.
    pub name: String,
    /// The role this node starts in.
    pub role: Role,
    /// Holds the log and the blob store. A relative path in the file is resolved against the
    /// config file's directory, so this does not depend on the working directory.
    pub data_dir: PathBuf,
}

/// `[public]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Certificate and key to serve TLS with; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Peers whose inbound `X-Forwarded-*` headers are believed (the load balancer). A bare IP
    /// in the file is a single-host network. Empty: no one's are.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest wait for a request's complete head.
    pub header_read_timeout: Duration,
    /// Longest silence between two chunks of a request body.
    pub body_read_timeout: Duration,
    /// Longest a response write may make no progress (a client that stopped reading).
    pub send_timeout: Duration,
    /// Largest request head accepted. At least [`defaults::MIN_HEADER_BYTES`] (hyper's floor).
    pub max_header_bytes: usize,
    /// Most header fields accepted in one request. At least 1.
    pub max_headers: usize,
    /// Largest request body accepted. At least 1.
    pub max_body_bytes: u64,
    /// Where one line per request is appended in the combined log format; `None`: no access
    /// log. Relative paths in the file are resolved against the config file's directory.
    pub access_log: Option<PathBuf>,
}

/// PEM files for the public listener's TLS. Relative paths in the file are resolved against the
/// config file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate.
    pub key: PathBuf,
}

/// `[origin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginConfig {
    /// Where the CMS listens. Always of the form `http://HOST:PORT/`: the scheme is `http`, the
    /// port is explicit (80 filled in when the file omits it) and the path is `/`.
    pub url: http::Uri,
    /// Longest wait for a TCP connection to the origin.
    pub connect_timeout: Duration,
    /// Longest wait from sending a request until the origin's response headers.
    pub response_timeout: Duration,
    /// How long a pooled connection may stay idle before it is closed.
    pub idle_timeout: Duration,
    /// Most idle pooled connections kept to the origin (0 disables pooling).
    pub max_idle_per_host: usize,
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin listener. A bare IP in the file means port [`defaults::ADMIN_PORT`].
    pub listen: SocketAddr,
}

/// `[health]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Origin-form target (`/path?query`, starts with `/`) the probe GETs on the local CMS;
    /// any answer below 500 counts as up.
    pub probe_path: String,
    /// Time between two background probes (origin, maintenance file and, on a mirror, the
    /// writer's position).
    pub probe_interval: Duration,
    /// Longest wait for the origin's (or the writer's) answer to one probe.
    pub probe_timeout: Duration,
    /// A file whose existence drains the node. Relative paths in the file are resolved
    /// against the config file's directory.
    pub maintenance_file: Option<PathBuf>,
    /// What a draining node answers where it would otherwise answer 200: 503 or 404.
    pub drain_status: http::StatusCode,
    /// On SIGTERM, how long the node keeps serving while draining (readiness failing) before
    /// it closes its listeners: time for load balancers to take it out of rotation.
    pub shutdown_delay: Duration,
}

/// `[capture]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Origin statuses that mark a captured request `accepted`; any other is `rejected`. Never
    /// empty.
    pub success_statuses: Vec<StatusRange>,
    /// Overrides of the default classification, in file order; the first rule whose method and
    /// path match decides.
    pub rules: Vec<Rule>,
    /// Request bodies up to this many bytes are stored inside the log entry; larger ones go to
    /// the blob store.
    pub inline_body_max: u64,
    /// Captured responses are held in memory up to this many bytes and spilled to disk beyond.
    pub max_response_buffer: u64,
    /// Limits for indexing `multipart/form-data` bodies.
    pub multipart: MultipartLimits,
    /// Lowercase substrings of form-field names whose values `log show` masks. Compare against
    /// the lowercased field name.
    pub mask_fields: Vec<String>,
}

/// An inclusive range of HTTP statuses, `lo <= hi`, both within 100..=599.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status in the range.
    pub lo: u16,
    /// Highest status in the range.
    pub hi: u16,
}

/// One `[[capture.rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Method the rule applies to; `None` (written `"*"`) for any.
    pub method: Option<http::Method>,
    /// Request paths the rule applies to.
    pub path: PathPattern,
    /// What happens to a matching request.
    pub action: RuleAction,
}

/// What a matching [`Rule`] does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// Capture it (log, forward under the write lock, ship).
    Capture,
    /// Pass it through to the origin without recording it.
    Pass,
}

/// `[capture.multipart]`: bounds on indexing a multipart body. The body itself is stored raw
/// whatever these say; they only bound the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultipartLimits {
    /// Most parts indexed in one body. At least 1.
    pub max_parts: usize,
    /// Largest text (non-file) field held in memory while indexing. At least 1.
    pub max_field_bytes: u64,
}

/// `[replication]`: this node's mTLS listener for peers, and the PEM files it (and its client
/// side) uses. Relative paths in the file are resolved against the config file's directory;
/// the files are read by `tls` at startup, not here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Address of the replication listener (`/_copyist/v1/…`, peers only).
    pub listen: SocketAddr,
    /// The cluster CA certificate: the only root trusted for peers, both ways.
    pub ca: PathBuf,
    /// This node's certificate chain, issued by the cluster CA for `node.name`.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// Entries in flight per mirror. At least 1.
    pub window: usize,
    /// Longest backoff between transport retries.
    pub retry_max: Duration,
    /// Longest wait for a mirror's answer to one entry.
    pub request_timeout: Duration,
}

/// One `[[mirrors]]` (writer only): a mirror the writer ships to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Must match the name in the mirror's certificate (its `node.name`); the writer checks it
    /// in the TLS handshake. A valid node name.
    pub name: String,
    /// The mirror's `[replication] listen`, always of the form `https://HOST:PORT/`.
    pub url: http::Uri,
}

/// `[writer]` (mirror only): the writer this mirror accepts entries from, and which client
/// requests this mirror sends to it instead of its own CMS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// The name in the writer's certificate (its `node.name`); a replication client with
    /// another name is refused. A valid node name.
    pub name: String,
    /// The writer's `[replication] listen`, always of the form `https://HOST:PORT/`.
    pub url: http::Uri,
    /// Requests whose path matches one of these go to the writer whatever their method (an
    /// admin area must see the writer's state, not a lagging copy). Empty: none.
    pub paths: Vec<PathPattern>,
    /// How long after writing through this mirror a client's requests all go to the writer
    /// (the writer-affinity cookie's lifetime). Zero: no cookie is issued and none is honoured.
    pub affinity: Duration,
    /// Name of the writer-affinity cookie: a cookie-name token (RFC 6265 section 4.1.1).
    pub affinity_cookie: String,
    /// Longest wait, after the writer answered a forwarded write, for this mirror to apply it
    /// before answering the client anyway. Zero: answer at once.
    pub read_your_writes_wait: Duration,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Upper bound of sled's page cache, in bytes.
    pub cache_capacity: u64,
    /// The node's at-rest key (`copyist key init`): when set, the log, the blobs and response
    /// spill files are encrypted. Named, not read: the node reads it at start.
    pub encryption_key_file: Option<PathBuf>,
}

// === impl Config ===

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
        Config::from_toml(&text, path)
    }

    /// Validates `text` as if read from `path`: `path` names the file in problems, and relative
    /// paths inside are resolved against its directory.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut problems = Problems::default();
        let config = FileConfig::parse(text, &mut problems)
            .and_then(|file| validate::config(file, path, &mut problems));
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                debug_assert!(!problems.is_empty(), "validation failed without a problem");
                Err(problems.into_error(text, path))
            }
        }
    }
}

/// Checks `name` the way `[node] name` is checked: it is the DNS name in the node's
/// certificate, so `[A-Za-z0-9_-]` parts joined by `.`, none beginning or ending with `-`, the
/// last not all digits. `tls::issue_node` uses it, so no certificate is issued for a name no
/// config would accept. The error is the message for the operator.
pub fn check_node_name(name: &str) -> Result<(), String> {
    validate::node_name(name.to_owned()).map(drop)
}

// === impl Role ===

impl Role {
    /// The role as written in the config file: `"writer"` or `"mirror"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Mirror => "mirror",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl PublicConfig, OriginConfig ===

impl PublicConfig {
    /// A plain-HTTP listener on `listen` with every other key at its default.
    pub fn new(listen: SocketAddr) -> PublicConfig {
        PublicConfig {
            listen,
            tls: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            body_read_timeout: defaults::BODY_READ_TIMEOUT,
            send_timeout: defaults::SEND_TIMEOUT,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_headers: defaults::MAX_HEADERS,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            access_log: None,
        }
    }
}

impl OriginConfig {
    /// An origin at `http://{addr}/` with every other key at its default.
    pub fn new(addr: SocketAddr) -> OriginConfig {
        // Rebuilt without the IPv6 scope id, which is not valid in a URI authority.
        let addr = SocketAddr::new(addr.ip(), addr.port());
        let url = http::Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            .expect("an IP address and port always form a valid authority");
        OriginConfig {
            url,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            response_timeout: defaults::RESPONSE_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            max_idle_per_host: defaults::MAX_IDLE_PER_HOST,
        }
    }
}

// === defaults for optional sections ===

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::ADMIN_LISTEN,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe_path: defaults::HEALTH_PROBE_PATH.to_owned(),
            probe_interval: defaults::HEALTH_PROBE_INTERVAL,
            probe_timeout: defaults::HEALTH_PROBE_TIMEOUT,
            maintenance_file: None,
            drain_status: defaults::HEALTH_DRAIN_STATUS,
            shutdown_delay: defaults::HEALTH_SHUTDOWN_DELAY,
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            success_statuses: defaults::SUCCESS_STATUSES.to_vec(),
            rules: Vec::new(),
            inline_body_max: defaults::INLINE_BODY_MAX,
            max_response_buffer: defaults::MAX_RESPONSE_BUFFER,
            multipart: MultipartLimits::default(),
            mask_fields: defaults::MASK_FIELDS
                .iter()
                .map(|f| f.to_string())
                .collect(),
        }
    }
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits {
            max_parts: defaults::MULTIPART_MAX_PARTS,
            max_field_bytes: defaults::MULTIPART_MAX_FIELD_BYTES,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            cache_capacity: defaults::LOG_CACHE_CAPACITY,
            encryption_key_file: None,
        }
    }
}

// === impl CaptureConfig, StatusRange, Rule ===

impl CaptureConfig {
    /// Whether the origin's `status` marks a captured request `accepted`.
    pub fn is_success(&self, status: u16) -> bool {
        self.success_statuses.iter().any(|r| r.contains(status))
    }
}

impl StatusRange {
    /// Whether `status` lies in the range (both ends included).
    pub fn contains(&self, status: u16) -> bool {
        self.lo <= status && status <= self.hi
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Rule {
    /// Whether this rule applies to a request with `method` and `path` (without the query).
    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.path.matches(path)
    }
}

#[cfg(test)]
mod tests;
