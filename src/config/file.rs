//! `FileConfig`: the raw mirror of `proxy.toml`. Every key as written, with its byte span, checked
//! only for TOML type and for being a known key. Meaning (addresses, durations, sizes, required
//! keys, cross-field rules) is `validate`'s job.
//!
//! Why not `#[derive(Deserialize)] #[serde(deny_unknown_fields)]`: serde stops at the first error,
//! and an operator fixing a config one boot at a time is the failure habit 7 exists to prevent.
//! So the document is parsed once into `toml`'s spanned tree (`DeTable`) and walked by a small
//! [`Reader`] that records every unknown key and every type mismatch, then carries on.

use std::ops::Range;

use toml::de::DeTable;
use toml::Spanned;

use super::error::Problems;
use reader::{boolean, integer, scalar, string, Reader};

mod reader;

/// Byte offsets of something in the config text.
pub(super) type Span = Range<usize>;

/// A key or section as found in the file.
#[derive(Debug)]
pub(super) enum Found<T> {
    /// Not in the file: a default applies, or a required key is missing.
    Absent,
    /// Present but of the wrong TOML type; already recorded, so validation stays quiet about it.
    Invalid,
    /// Present and of the right type.
    Present(T),
}

/// One key of a table, as found in the file.
#[derive(Debug)]
pub(super) struct Key<T> {
    /// Dotted name for problems, e.g. `public.listen` or `capture.rule[2].path`.
    pub(super) name: String,
    /// Span of the table's header: a missing required key is reported there.
    pub(super) header: Span,
    /// The value, with its span when present.
    pub(super) value: Found<Spanned<T>>,
}

/// A value that may be written as a string or an integer (sizes: `"64MiB"` or `512`; statuses:
/// `"2xx"` or `201`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Scalar {
    Int(i64),
    Str(String),
}

/// The whole file.
#[derive(Debug)]
pub(super) struct FileConfig {
    pub(super) node: Found<FileNode>,
    pub(super) public: Found<FilePublic>,
    pub(super) origin: Found<FileOrigin>,
    pub(super) admin: Found<FileAdmin>,
    pub(super) health: Found<FileHealth>,
    pub(super) capture: Found<FileCapture>,
    pub(super) log: Found<FileLog>,
    pub(super) replication: Found<FileReplication>,
    pub(super) mirrors: Vec<FilePeer>,
    pub(super) writer: Found<FileWriter>,
    pub(super) compare: Found<FileCompare>,
}

/// `[node]`.
#[derive(Debug)]
pub(super) struct FileNode {
    pub(super) name: Key<String>,
    pub(super) role: Key<String>,
    pub(super) data_dir: Key<String>,
}

/// `[public]`.
#[derive(Debug)]
pub(super) struct FilePublic {
    pub(super) listen: Key<String>,
    pub(super) tls_cert: Key<String>,
    pub(super) tls_key: Key<String>,
    pub(super) trusted_proxies: Key<Vec<Spanned<String>>>,
    pub(super) header_read_timeout: Key<String>,
    pub(super) body_read_timeout: Key<String>,
    pub(super) send_timeout: Key<String>,
    pub(super) max_header_bytes: Key<Scalar>,
    pub(super) max_headers: Key<i64>,
    pub(super) max_body_bytes: Key<Scalar>,
    pub(super) access_log: Key<String>,
}

/// `[origin]`.
#[derive(Debug)]
pub(super) struct FileOrigin {
    pub(super) url: Key<String>,
    pub(super) connect_timeout: Key<String>,
    pub(super) response_timeout: Key<String>,
    pub(super) idle_timeout: Key<String>,
    pub(super) max_idle_per_host: Key<i64>,
}

/// `[admin]`.
#[derive(Debug)]
pub(super) struct FileAdmin {
    pub(super) listen: Key<String>,
}

/// `[health]`.
#[derive(Debug)]
pub(super) struct FileHealth {
    pub(super) probe_path: Key<String>,
    pub(super) probe_interval: Key<String>,
    pub(super) probe_timeout: Key<String>,
    pub(super) maintenance_file: Key<String>,
    pub(super) drain_status: Key<i64>,
    pub(super) shutdown_delay: Key<String>,
}

/// `[capture]`, with its `[[capture.rule]]` and `[capture.multipart]` tables.
#[derive(Debug)]
pub(super) struct FileCapture {
    pub(super) success_status: Key<Vec<Spanned<Scalar>>>,
    pub(super) rules: Vec<FileRule>,
    pub(super) inline_max: Key<Scalar>,
    pub(super) max_response_buffer: Key<Scalar>,
    pub(super) multipart: Found<FileMultipart>,
    pub(super) mask_fields: Key<Vec<Spanned<String>>>,
}

/// One `[[capture.rule]]`.
#[derive(Debug)]
pub(super) struct FileRule {
    pub(super) method: Key<String>,
    pub(super) path: Key<String>,
    pub(super) action: Key<String>,
}

/// `[capture.multipart]`.
#[derive(Debug)]
pub(super) struct FileMultipart {
    pub(super) max_parts: Key<i64>,
    pub(super) max_field_bytes: Key<Scalar>,
}

/// `[log]`.
#[derive(Debug)]
pub(super) struct FileLog {
    pub(super) cache_capacity: Key<Scalar>,
    pub(super) encryption_key_file: Key<String>,
}

/// `[replication]`.
#[derive(Debug)]
pub(super) struct FileReplication {
    pub(super) listen: Key<String>,
    pub(super) ca: Key<String>,
    pub(super) cert: Key<String>,
    pub(super) key: Key<String>,
    pub(super) window: Key<i64>,
    pub(super) retry_max: Key<String>,
    pub(super) request_timeout: Key<String>,
}

/// One `[[mirrors]]`, or `[writer]`: another node by name and replication URL.
#[derive(Debug)]
pub(super) struct FilePeer {
    pub(super) name: Key<String>,
    pub(super) url: Key<String>,
}

/// `[writer]`: the writer as a peer, and what a mirror sends to it.
#[derive(Debug)]
pub(super) struct FileWriter {
    pub(super) peer: FilePeer,
    pub(super) paths: Key<Vec<Spanned<String>>>,
    pub(super) affinity: Key<String>,
    pub(super) affinity_cookie: Key<String>,
    pub(super) read_your_writes_wait: Key<String>,
}

/// `[compare]` with its `[[compare.rule]]`s.
#[derive(Debug)]
pub(super) struct FileCompare {
    pub(super) keys: FileCompareKeys,
    pub(super) rules: Vec<FileCompareRule>,
}

/// One `[[compare.rule]]`: a path, and the keys that differ from `[compare]`.
#[derive(Debug)]
pub(super) struct FileCompareRule {
    pub(super) path: Key<String>,
    pub(super) keys: FileCompareKeys,
}

/// The comparison keys shared by `[compare]` and `[[compare.rule]]`.
#[derive(Debug)]
pub(super) struct FileCompareKeys {
    pub(super) status: Key<String>,
    pub(super) location: Key<bool>,
    pub(super) json_fields: Key<Vec<Spanned<String>>>,
    pub(super) body: Key<bool>,
    pub(super) volatile: Key<Vec<Spanned<String>>>,
}

// What each kind of value should look like, for type-mismatch messages.
const ADDRESS: &str = "a socket address string such as \"127.0.0.1:8080\"";
const DURATION: &str = "a duration string such as \"30s\"";
const SIZE: &str = "a size such as \"64MiB\" or an integer number of bytes";
const COUNT: &str = "an integer";
const STRING: &str = "a string";
const PATH: &str = "a file path string";
const BOOLEAN: &str = "true or false";

impl FileConfig {
    /// Parses `src`. Returns `None` only for TOML syntax errors (all recorded in `problems`);
    /// otherwise every unknown key and type mismatch is recorded and the rest is returned.
    pub(super) fn parse(src: &str, problems: &mut Problems) -> Option<FileConfig> {
        let (document, errors) = DeTable::parse_recoverable(src);
        if !errors.is_empty() {
            // Semantic checks on a half-parsed document would only add noise.
            for error in errors {
                problems.push(error.span().unwrap_or(0..0), "", error.message());
            }
            return None;
        }
        let mut root = Reader::new(document.get_ref(), String::new(), 0..0, "section");
        let file = FileConfig {
            node: root.section("node", FileNode::read),
            public: root.section("public", FilePublic::read),
            origin: root.section("origin", FileOrigin::read),
            admin: root.section("admin", FileAdmin::read),
            health: root.section("health", FileHealth::read),
            capture: root.section("capture", FileCapture::read),
            log: root.section("log", FileLog::read),
            replication: root.section("replication", FileReplication::read),
            mirrors: root.sections("mirrors", FilePeer::read_mirror),
            writer: root.section("writer", FileWriter::read),
            compare: root.section("compare", FileCompare::read),
        };
        problems.append(root.finish());
        Some(file)
    }
}

impl FileNode {
    fn read(r: &mut Reader<'_, '_>) -> FileNode {
        FileNode {
            name: r.value("name", STRING, string),
            role: r.value("role", "\"writer\" or \"mirror\"", string),
            data_dir: r.value("data_dir", "a directory path string", string),
        }
    }
}

impl FilePublic {
    fn read(r: &mut Reader<'_, '_>) -> FilePublic {
        let networks = (
            "an array of IP addresses or networks",
            "an IP address or network string such as \"10.0.0.0/8\"",
        );
        FilePublic {
            listen: r.value("listen", ADDRESS, string),
            tls_cert: r.value("tls_cert", PATH, string),
            tls_key: r.value("tls_key", PATH, string),
            trusted_proxies: r.array("trusted_proxies", networks, string),
            header_read_timeout: r.value("header_read_timeout", DURATION, string),
            body_read_timeout: r.value("body_read_timeout", DURATION, string),
            send_timeout: r.value("send_timeout", DURATION, string),
            max_header_bytes: r.value("max_header_bytes", SIZE, scalar),
            max_headers: r.value("max_headers", COUNT, integer),
            max_body_bytes: r.value("max_body_bytes", SIZE, scalar),
            access_log: r.value("access_log", PATH, string),
        }
    }
}

impl FileOrigin {
    fn read(r: &mut Reader<'_, '_>) -> FileOrigin {
        FileOrigin {
            url: r.value(
                "url",
                "a URL string such as \"http://127.0.0.1:8081\"",
                string,
            ),
            connect_timeout: r.value("connect_timeout", DURATION, string),
            response_timeout: r.value("response_timeout", DURATION, string),
            idle_timeout: r.value("idle_timeout", DURATION, string),
            max_idle_per_host: r.value("max_idle_per_host", COUNT, integer),
        }
    }
}

impl FileAdmin {
    fn read(r: &mut Reader<'_, '_>) -> FileAdmin {
        FileAdmin {
            listen: r.value("listen", ADDRESS, string),
        }
    }
}

impl FileHealth {
    fn read(r: &mut Reader<'_, '_>) -> FileHealth {
        FileHealth {
            probe_path: r.value("probe_path", "a path string such as \"/\"", string),
            probe_interval: r.value("probe_interval", DURATION, string),
            probe_timeout: r.value("probe_timeout", DURATION, string),
            maintenance_file: r.value("maintenance_file", PATH, string),
            drain_status: r.value("drain_status", "an integer status, 503 or 404", integer),
            shutdown_delay: r.value("shutdown_delay", DURATION, string),
        }
    }
}

impl FileCapture {
    fn read(r: &mut Reader<'_, '_>) -> FileCapture {
        let status = (
            "an array of statuses",
            "a status such as \"2xx\", \"201\" or \"200-299\"",
        );
        FileCapture {
            success_status: r.array("success_status", status, scalar),
            rules: r.sections("rule", FileRule::read),
            inline_max: r.value("inline_max", SIZE, scalar),
            max_response_buffer: r.value("max_response_buffer", SIZE, scalar),
            multipart: r.section("multipart", FileMultipart::read),
            mask_fields: r.array("mask_fields", ("an array of strings", STRING), string),
        }
    }
}

impl FileRule {
    fn read(r: &mut Reader<'_, '_>) -> FileRule {
        FileRule {
            method: r.value(
                "method",
                "a method string such as \"POST\" or \"*\"",
                string,
            ),
            path: r.value("path", "a path pattern string such as \"/visit*\"", string),
            action: r.value("action", "\"capture\" or \"pass\"", string),
        }
    }
}

impl FileMultipart {
    fn read(r: &mut Reader<'_, '_>) -> FileMultipart {
        FileMultipart {
            max_parts: r.value("max_parts", COUNT, integer),
            max_field_bytes: r.value("max_field_bytes", SIZE, scalar),
        }
    }
}

impl FileLog {
    fn read(r: &mut Reader<'_, '_>) -> FileLog {
        FileLog {
            cache_capacity: r.value("cache_capacity", SIZE, scalar),
            encryption_key_file: r.value("encryption_key_file", PATH, string),
        }
    }
}

impl FileReplication {
    fn read(r: &mut Reader<'_, '_>) -> FileReplication {
        FileReplication {
            listen: r.value("listen", ADDRESS, string),
            ca: r.value("ca", PATH, string),
            cert: r.value("cert", PATH, string),
            key: r.value("key", PATH, string),
            window: r.value("window", COUNT, integer),
            retry_max: r.value("retry_max", DURATION, string),
            request_timeout: r.value("request_timeout", DURATION, string),
        }
    }
}

impl FilePeer {
    fn read_mirror(r: &mut Reader<'_, '_>) -> FilePeer {
        Self::read(r, "a URL string such as \"https://127.0.0.1:9444\"")
    }

    fn read(r: &mut Reader<'_, '_>, url: &str) -> FilePeer {
        FilePeer {
            name: r.value("name", STRING, string),
            url: r.value("url", url, string),
        }
    }
}

impl FileWriter {
    fn read(r: &mut Reader<'_, '_>) -> FileWriter {
        let patterns = (
            "an array of path patterns",
            "a path pattern string such as \"/wp-admin/*\"",
        );
        FileWriter {
            peer: FilePeer::read(r, "a URL string such as \"https://127.0.0.1:9443\""),
            paths: r.array("paths", patterns, string),
            affinity: r.value("affinity", DURATION, string),
            affinity_cookie: r.value("affinity_cookie", STRING, string),
            read_your_writes_wait: r.value("read_your_writes_wait", DURATION, string),
        }
    }
}

impl FileCompare {
    fn read(r: &mut Reader<'_, '_>) -> FileCompare {
        FileCompare {
            keys: FileCompareKeys::read(r),
            rules: r.sections("rule", FileCompareRule::read),
        }
    }
}

impl FileCompareRule {
    fn read(r: &mut Reader<'_, '_>) -> FileCompareRule {
        FileCompareRule {
            path: r.value("path", "a path pattern string such as \"/api/*\"", string),
            keys: FileCompareKeys::read(r),
        }
    }
}

impl FileCompareKeys {
    fn read(r: &mut Reader<'_, '_>) -> FileCompareKeys {
        let pointers = (
            "an array of JSON pointers",
            "a JSON pointer string such as \"/id\"",
        );
        let regexes = (
            "an array of regular expressions",
            "a regular expression string",
        );
        FileCompareKeys {
            status: r.value("status", "\"exact\" or \"class\"", string),
            location: r.value("location", BOOLEAN, boolean),
            json_fields: r.array("json_fields", pointers, string),
            body: r.value("body", BOOLEAN, boolean),
            volatile: r.array("volatile", regexes, string),
        }
    }
}
