//! `FileConfig` → [`Config`]: gives every key its meaning, applies defaults and checks the
//! rules that span keys. Every problem is recorded and validation carries on, so one run reports
//! them all.

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::defaults as d;
use super::error::Problems;
use super::file::{
    FileCapture, FileConfig, FileHealth, FileNode, FileOrigin, FilePublic, FileRule, Found, Key,
    Scalar,
};
use super::units::{parse_duration, parse_size, parse_status_range};
use super::{
    AdminConfig, CaptureConfig, Config, HealthConfig, LogConfig, MultipartLimits, NodeConfig,
    OriginConfig, PathPattern, PublicConfig, Role, Rule, RuleAction, StatusRange, TlsFiles,
};

mod compare;
mod replication;

/// Validates `file`, read from `path`. `None` means at least one problem was recorded.
pub(super) fn config(file: FileConfig, path: &Path, p: &mut Problems) -> Option<Config> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let node = match required_section(file.node, "node", p) {
        Some(f) => node(f, dir, p),
        None => NodeFields::default(),
    };
    let public = required_section(file.public, "public", p).and_then(|f| public(f, dir, p));
    let origin = required_section(file.origin, "origin", p).and_then(|f| origin(f, p));
    let admin = optional_section(file.admin, p, |f, p| {
        let listen = optional(f.listen, d::ADMIN_LISTEN, p, admin_addr);
        Some(AdminConfig { listen: listen? })
    });
    let capture = optional_section(file.capture, p, capture);
    let rules = capture.as_ref().map_or(&[][..], |c| &c.rules[..]);
    let health = optional_section(file.health, p, |f, p| health(f, dir, rules, p));
    let log = optional_section(file.log, p, |f, p| {
        let cache_capacity = optional(f.cache_capacity, d::LOG_CACHE_CAPACITY, p, size);
        let key_file = optional(f.encryption_key_file, None, p, |s| {
            path_in(dir, s).map(Some)
        });
        Some(LogConfig {
            cache_capacity: cache_capacity?,
            encryption_key_file: key_file?,
        })
    });
    let cluster = replication::cluster(
        replication::FileCluster {
            replication: file.replication,
            mirrors: file.mirrors,
            writer: file.writer,
        },
        &node,
        dir,
        p,
    );
    let compare = optional_section(file.compare, p, compare::compare);
    let cluster = cluster?;
    Some(Config {
        path: path.to_path_buf(),
        node: NodeConfig {
            name: node.name?,
            role: node.role?,
            data_dir: node.data_dir?,
        },
        public: public?,
        origin: origin?,
        admin: admin?,
        health: health?,
        capture: capture?,
        log: log?,
        replication: cluster.replication,
        mirrors: cluster.mirrors,
        writer: cluster.writer,
        compare: compare?,
    })
}

/// `[node]`'s keys, each `None` if missing or invalid: other sections' rules depend on the
/// role and the name even when another key of `[node]` is wrong.
#[derive(Debug, Default)]
struct NodeFields {
    name: Option<String>,
    role: Option<Role>,
    data_dir: Option<PathBuf>,
}

fn node(f: FileNode, dir: &Path, p: &mut Problems) -> NodeFields {
    NodeFields {
        name: required(f.name, p, node_name),
        role: required(f.role, p, role),
        data_dir: required(f.data_dir, p, |s| path_in(dir, s)),
    }
}

fn public(f: FilePublic, dir: &Path, p: &mut Problems) -> Option<PublicConfig> {
    let listen = required(f.listen, p, socket_addr);
    let tls = tls(f.tls_cert, f.tls_key, dir, p);
    let trusted_proxies = optional_list(f.trusted_proxies, Vec::new(), p, ip_net);
    let header_read_timeout = optional(f.header_read_timeout, d::HEADER_READ_TIMEOUT, p, duration);
    let body_read_timeout = optional(f.body_read_timeout, d::BODY_READ_TIMEOUT, p, duration);
    let send_timeout = optional(f.send_timeout, d::SEND_TIMEOUT, p, duration);
    let max_header_bytes = optional(f.max_header_bytes, d::MAX_HEADER_BYTES, p, header_bytes);
    let max_headers = optional(f.max_headers, d::MAX_HEADERS, p, |n| count(n, 1));
    let max_body_bytes = optional(f.max_body_bytes, d::MAX_BODY_BYTES, p, nonzero_size);
    let access_log = optional(f.access_log, None, p, |s| path_in(dir, s).map(Some));
    Some(PublicConfig {
        listen: listen?,
        tls: tls?,
        trusted_proxies: trusted_proxies?,
        header_read_timeout: header_read_timeout?,
        body_read_timeout: body_read_timeout?,
        send_timeout: send_timeout?,
        max_header_bytes: max_header_bytes?,
        max_headers: max_headers?,
        max_body_bytes: max_body_bytes?,
        access_log: access_log?,
    })
}

/// `tls_cert` and `tls_key`: both or neither.
fn tls(
    cert: Key<String>,
    key: Key<String>,
    dir: &Path,
    p: &mut Problems,
) -> Option<Option<TlsFiles>> {
    match (cert.value, key.value) {
        (Found::Absent, Found::Absent) => Some(None),
        (Found::Present(cert_path), Found::Present(key_path)) => {
            let cert = checked(cert_path, &cert.name, p, |s| path_in(dir, s));
            let key = checked(key_path, &key.name, p, |s| path_in(dir, s));
            Some(Some(TlsFiles {
                cert: cert?,
                key: key?,
            }))
        }
        (Found::Present(cert_path), Found::Absent) => {
            let message = "tls_cert is set but tls_key is not (set both or neither)";
            p.push(cert_path.span(), &cert.name, message);
            None
        }
        (Found::Absent, Found::Present(key_path)) => {
            let message = "tls_key is set but tls_cert is not (set both or neither)";
            p.push(key_path.span(), &key.name, message);
            None
        }
        // A key of the wrong type has been recorded already.
        _ => None,
    }
}

fn origin(f: FileOrigin, p: &mut Problems) -> Option<OriginConfig> {
    let url = required(f.url, p, origin_url);
    let connect_timeout = optional(f.connect_timeout, d::CONNECT_TIMEOUT, p, duration);
    let response_timeout = optional(f.response_timeout, d::RESPONSE_TIMEOUT, p, duration);
    let idle_timeout = optional(f.idle_timeout, d::IDLE_TIMEOUT, p, duration);
    let max_idle_per_host = optional(f.max_idle_per_host, d::MAX_IDLE_PER_HOST, p, |n| {
        count(n, 0)
    });
    Some(OriginConfig {
        url: url?,
        connect_timeout: connect_timeout?,
        response_timeout: response_timeout?,
        idle_timeout: idle_timeout?,
        max_idle_per_host: max_idle_per_host?,
    })
}

fn health(f: FileHealth, dir: &Path, rules: &[Rule], p: &mut Problems) -> Option<HealthConfig> {
    let probe_path = optional(f.probe_path, d::HEALTH_PROBE_PATH.to_owned(), p, |s| {
        probe_path(s, rules)
    });
    let probe_interval = optional(f.probe_interval, d::HEALTH_PROBE_INTERVAL, p, duration);
    let probe_timeout = optional(f.probe_timeout, d::HEALTH_PROBE_TIMEOUT, p, duration);
    let maintenance_file = optional(f.maintenance_file, None, p, |s| path_in(dir, s).map(Some));
    let drain_status = optional(f.drain_status, d::HEALTH_DRAIN_STATUS, p, drain_status);
    let shutdown_delay = optional(f.shutdown_delay, d::HEALTH_SHUTDOWN_DELAY, p, duration);
    Some(HealthConfig {
        probe_path: probe_path?,
        probe_interval: probe_interval?,
        probe_timeout: probe_timeout?,
        maintenance_file: maintenance_file?,
        drain_status: drain_status?,
        shutdown_delay: shutdown_delay?,
    })
}

fn capture(f: FileCapture, p: &mut Problems) -> Option<CaptureConfig> {
    let base = CaptureConfig::default();
    // An empty set would reject every write: nothing would ever replicate.
    let success_statuses = match &f.success_status.value {
        Found::Present(list) if list.get_ref().is_empty() => {
            p.push(
                list.span(),
                &f.success_status.name,
                "must list at least one status",
            );
            None
        }
        _ => optional_list(f.success_status, base.success_statuses, p, status),
    };
    // Validate every rule before giving up on any of them.
    let rules: Vec<Option<Rule>> = f.rules.into_iter().map(|r| rule(r, p)).collect();
    let inline_body_max = optional(f.inline_max, base.inline_body_max, p, size);
    let max_response_buffer = optional(f.max_response_buffer, base.max_response_buffer, p, size);
    let multipart = optional_section(f.multipart, p, |f, p| {
        let max_parts = optional(f.max_parts, d::MULTIPART_MAX_PARTS, p, |n| count(n, 1));
        let max_field_bytes = optional(
            f.max_field_bytes,
            d::MULTIPART_MAX_FIELD_BYTES,
            p,
            nonzero_size,
        );
        Some(MultipartLimits {
            max_parts: max_parts?,
            max_field_bytes: max_field_bytes?,
        })
    });
    let mask_fields = optional_list(f.mask_fields, base.mask_fields, p, mask_field);
    Some(CaptureConfig {
        success_statuses: success_statuses?,
        rules: rules.into_iter().collect::<Option<_>>()?,
        inline_body_max: inline_body_max?,
        max_response_buffer: max_response_buffer?,
        multipart: multipart?,
        mask_fields: mask_fields?,
    })
}

fn rule(f: FileRule, p: &mut Problems) -> Option<Rule> {
    let method_at = match &f.method.value {
        Found::Present(m) => Some((m.span(), f.method.name.clone())),
        _ => None,
    };
    let method = required(f.method, p, method);
    let path = required(f.path, p, |s| {
        PathPattern::new(&s).map_err(|e| e.to_string())
    });
    let action = required(f.action, p, action);
    // The proxy never captures HEAD or OPTIONS (they must not change state); a rule saying
    // otherwise would be silently ignored, so refuse it here.
    if let (Some(Some(m)), Some(RuleAction::Capture), Some((span, key))) =
        (&method, action, method_at)
    {
        if m == http::Method::HEAD || m == http::Method::OPTIONS {
            p.push(span, &key, format!("{m} requests are never captured"));
            return None;
        }
    }
    Some(Rule {
        method: method?,
        path: path?,
        action: action?,
    })
}

// === presence: required, optional, lists, sections ===

/// A section that must be present; a missing one is reported at 1:1.
fn required_section<T>(section: Found<T>, name: &str, p: &mut Problems) -> Option<T> {
    match section {
        Found::Present(section) => Some(section),
        Found::Absent => {
            p.push(0..0, name, "missing required section");
            None
        }
        Found::Invalid => None,
    }
}

/// A section whose absence means "all defaults".
fn optional_section<F, T: Default>(
    section: Found<F>,
    p: &mut Problems,
    validate: impl FnOnce(F, &mut Problems) -> Option<T>,
) -> Option<T> {
    match section {
        Found::Present(section) => validate(section, p),
        Found::Absent => Some(T::default()),
        Found::Invalid => None,
    }
}

/// A key that must be present; a missing one is reported at its section's header.
fn required<T, U>(key: Key<T>, p: &mut Problems, check: impl FnOnce(T) -> Checked<U>) -> Option<U> {
    match key.value {
        Found::Present(value) => checked(value, &key.name, p, check),
        Found::Absent => {
            p.push(key.header, &key.name, "missing required key");
            None
        }
        Found::Invalid => None,
    }
}

/// A key with a default.
fn optional<T, U>(
    key: Key<T>,
    default: U,
    p: &mut Problems,
    check: impl FnOnce(T) -> Checked<U>,
) -> Option<U> {
    match key.value {
        Found::Present(value) => checked(value, &key.name, p, check),
        Found::Absent => Some(default),
        Found::Invalid => None,
    }
}

/// A list key with a default, each element checked and reported at its own position.
fn optional_list<T, U>(
    key: Key<Vec<Spanned<T>>>,
    default: Vec<U>,
    p: &mut Problems,
    check: impl Fn(T) -> Checked<U>,
) -> Option<Vec<U>> {
    match key.value {
        Found::Present(list) => {
            let items: Vec<Option<U>> = (list.into_inner().into_iter())
                .map(|v| checked(v, &key.name, p, &check))
                .collect();
            items.into_iter().collect()
        }
        Found::Absent => Some(default),
        Found::Invalid => None,
    }
}

/// Runs `check` on a present value, recording its error at the value.
fn checked<T, U>(
    value: Spanned<T>,
    key: &str,
    p: &mut Problems,
    check: impl FnOnce(T) -> Checked<U>,
) -> Option<U> {
    let span = value.span();
    match check(value.into_inner()) {
        Ok(v) => Some(v),
        Err(message) => {
            p.push(span, key, message);
            None
        }
    }
}

// === single values ===

/// What a check returns: the typed value, or the message for the operator.
type Checked<T> = Result<T, String>;

/// A node name: also the DNS name in the node's certificate, which peers check in the TLS
/// handshake, so it must be one that certificates and rustls accept.
pub(super) fn node_name(name: String) -> Checked<String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "invalid node name \"{name}\" ({c:?} is not allowed; use letters, digits, '_', '.', '-')"
        ));
    }
    match dns_name_problem(&name) {
        Some(why) => Err(format!(
            "invalid node name \"{name}\" (must be a DNS name, for the node's certificate: {why})"
        )),
        None => Ok(name),
    }
}

/// What keeps `name` (already restricted to `[A-Za-z0-9_.-]`) from being a DNS name that
/// rustls accepts as a server name and webpki matches against a certificate.
fn dns_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > 253 {
        return Some("at most 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("no empty part between dots, nor a dot at either end");
        }
        if label.len() > 63 {
            return Some("at most 63 characters between dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("no part may begin or end with '-'");
        }
    }
    // rustls would take an all-digit last part for an IPv4 address, not a DNS name.
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Some("the part after the last dot must not be all digits");
    }
    None
}

fn role(role: String) -> Checked<Role> {
    match role.as_str() {
        "writer" => Ok(Role::Writer),
        "mirror" => Ok(Role::Mirror),
        _ => Err(format!(
            "invalid role \"{role}\" (expected \"writer\" or \"mirror\")"
        )),
    }
}

/// A path from the file, resolved against the config file's directory when relative.
fn path_in(dir: &Path, path: String) -> Checked<PathBuf> {
    if path.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let path = Path::new(&path);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    // Drop a leading "./" so logs show "demo/writer", not "./demo/writer" or "dir/./demo".
    let clean: PathBuf = joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    Ok(if clean.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        clean
    })
}

fn socket_addr(text: String) -> Checked<SocketAddr> {
    text.parse()
        .map_err(|_| format!("invalid socket address \"{text}\" (expected IP:PORT)"))
}

/// `IP:PORT`, or a bare IP meaning the default admin port.
fn admin_addr(text: String) -> Checked<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, d::ADMIN_PORT));
    }
    text.parse()
        .map_err(|_| format!("invalid socket address \"{text}\" (expected IP:PORT or IP)"))
}

/// A network, or a bare IP meaning that one host (/32 or /128).
fn ip_net(text: String) -> Checked<IpNet> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    text.parse::<IpNet>().map(|net| net.trunc()).map_err(|_| {
        format!("invalid IP address or network \"{text}\" (expected e.g. \"10.0.0.0/8\" or \"127.0.0.1\")")
    })
}

/// `http://HOST[:PORT][/]`, returned as `http://HOST:PORT/`.
fn origin_url(text: String) -> Checked<http::Uri> {
    let bad = |why: &str| format!("invalid origin URL \"{text}\" ({why})");
    let expected = "expected http://HOST:PORT";
    let uri: http::Uri = text.parse().map_err(|_| bad(expected))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported: the origin is the local CMS, use http://",
            ))
        }
        _ => return Err(bad(expected)),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad(expected));
    };
    if authority.as_str().contains('@') {
        return Err(bad("must not contain a user name or password"));
    }
    if authority.host().is_empty() {
        return Err(bad("missing host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "must not have a path or query: each request keeps its own",
        ));
    }
    let port = uri.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(bad("port must not be 0"));
    }
    format!("http://{}:{port}/", authority.host())
        .parse()
        .map_err(|_| bad(expected))
}

/// `health.probe_path`: a request target in origin form, sent as is to the CMS. The probe
/// bypasses capture, so a GET that `rules` capture (it changes the CMS) would change the
/// writer's CMS behind the log's back: refused.
fn probe_path(text: String, rules: &[Rule]) -> Checked<String> {
    let target = (text.parse::<http::uri::PathAndQuery>().ok()).filter(|_| text.starts_with('/'));
    let Some(target) = target else {
        return Err(format!(
            "invalid probe path \"{text}\" (expected a path such as \"/\" or \"/healthz\")"
        ));
    };
    let rule = rules
        .iter()
        .find(|r| r.matches(&http::Method::GET, target.path()));
    match rule {
        Some(r) if r.action == RuleAction::Capture => Err(format!(
            "GET {} is captured by [[capture.rule]] \"{}\": probing it would change the CMS without a log entry",
            target.path(),
            r.path.as_str()
        )),
        _ => Ok(text),
    }
}

/// `health.drain_status`: the two answers load balancers read as "out of rotation".
fn drain_status(n: i64) -> Checked<http::StatusCode> {
    match n {
        503 => Ok(http::StatusCode::SERVICE_UNAVAILABLE),
        404 => Ok(http::StatusCode::NOT_FOUND),
        _ => Err(format!(
            "must be 503 or 404 (for HAProxy's disable-on-404), got {n}"
        )),
    }
}

fn method(text: String) -> Checked<Option<http::Method>> {
    if text == "*" {
        return Ok(None);
    }
    // Methods are case-sensitive; "post" is a different (and surely unintended) method.
    if text.bytes().any(|b| b.is_ascii_lowercase()) {
        let upper = text.to_ascii_uppercase();
        return Err(format!(
            "invalid method \"{text}\" (methods are case-sensitive: did you mean \"{upper}\"?)"
        ));
    }
    http::Method::from_bytes(text.as_bytes())
        .map(Some)
        .map_err(|_| {
            format!("invalid method \"{text}\" (expected e.g. \"POST\", or \"*\" for any)")
        })
}

fn action(text: String) -> Checked<RuleAction> {
    match text.as_str() {
        "capture" => Ok(RuleAction::Capture),
        "pass" => Ok(RuleAction::Pass),
        _ => Err(format!(
            "invalid action \"{text}\" (expected \"capture\" or \"pass\")"
        )),
    }
}

fn mask_field(name: String) -> Checked<String> {
    if name.is_empty() {
        return Err("an empty name would mask every field".to_owned());
    }
    Ok(name.to_lowercase())
}

fn status(value: Scalar) -> Checked<StatusRange> {
    parse_status_range(&value)
}

fn duration(text: String) -> Checked<Duration> {
    parse_duration(&text)
}

fn size(value: Scalar) -> Checked<u64> {
    parse_size(&value)
}

fn nonzero_size(value: Scalar) -> Checked<u64> {
    match parse_size(&value)? {
        0 => Err("must be greater than 0".to_owned()),
        n => Ok(n),
    }
}

/// `public.max_header_bytes`: hyper panics below its minimum read buffer, so refuse it here.
fn header_bytes(value: Scalar) -> Checked<usize> {
    let n = parse_size(&value)?;
    let min = d::MIN_HEADER_BYTES;
    match usize::try_from(n) {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!(
            "must be at least {min} bytes (8KiB, hyper's minimum), got {n}"
        )),
        Err(_) => Err(format!("{n} bytes does not fit in memory")),
    }
}

/// A count from the file, at least `min`.
fn count(n: i64, min: usize) -> Checked<usize> {
    match usize::try_from(n) {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!("must be at least {min}, got {n}")),
        Err(_) => Err(format!("must not be negative, got {n}")),
    }
}
