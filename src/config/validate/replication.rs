//! `[replication]`, `[[mirrors]]` and `[writer]`, and the rules tying them to `[node] role`:
//! only the writer ships, so only it lists mirrors; a mirror needs its writer; and whoever
//! replicates needs the listener and certificates of `[replication]`.

use std::path::Path;

use super::super::defaults as d;
use super::super::error::Problems;
use super::super::file::{FilePeer, FileReplication, FileWriter, Found, Key, Span};
use super::super::units::parse_duration_or_zero;
use super::super::{MirrorConfig, PathPattern, ReplicationConfig, Role, WriterConfig};
use super::{count, duration, node_name, optional, optional_list, path_in, required, socket_addr};
use super::{Checked, NodeFields};

/// The cluster sections as read from the file.
pub(super) struct FileCluster {
    pub(super) replication: Found<FileReplication>,
    pub(super) mirrors: Vec<FilePeer>,
    pub(super) writer: Found<FileWriter>,
}

/// The cluster sections, validated.
pub(super) struct Cluster {
    pub(super) replication: Option<ReplicationConfig>,
    pub(super) mirrors: Vec<MirrorConfig>,
    pub(super) writer: Option<WriterConfig>,
}

/// Validates the cluster sections of a node whose `[node]` is `node`; the role rules are
/// checked only when the role itself is valid.
pub(super) fn cluster(
    f: FileCluster,
    node: &NodeFields,
    dir: &Path,
    p: &mut Problems,
) -> Option<Cluster> {
    if let Some(role) = node.role {
        roles(&f, role, p);
    }
    let own = node.name.as_deref();
    let replication = match f.replication {
        Found::Present(r) => replication(r, dir, p).map(Some),
        Found::Absent => Some(None),
        Found::Invalid => None,
    };
    let mirrors = mirrors(f.mirrors, own, p);
    let writer = match f.writer {
        Found::Present(w) => writer(w, own, p).map(Some),
        Found::Absent => Some(None),
        Found::Invalid => None,
    };
    Some(Cluster {
        replication: replication?,
        mirrors: mirrors?,
        writer: writer?,
    })
}

/// Which sections each role must have, and must not.
fn roles(f: &FileCluster, role: Role, p: &mut Problems) {
    let has_replication = !matches!(f.replication, Found::Absent);
    // Where `[writer]` and the first `[[mirrors]]` start; a misshapen one is reported already.
    let writer_at = match &f.writer {
        Found::Present(w) => Some(w.peer.name.header.clone()),
        _ => None,
    };
    let mirrors_at = f.mirrors.first().map(|m| m.name.header.clone());
    let missing = |p: &mut Problems, section: &str, why: &str| {
        p.push(0..0, section, format!("missing required section ({why})"));
    };
    match role {
        Role::Writer => {
            if mirrors_at.is_some() && !has_replication {
                let why = "a writer ships to its [[mirrors]] over the mTLS channel it configures";
                missing(p, "replication", why);
            }
            if let Some(at) = writer_at {
                let message = "only a mirror has a [writer] (this node's role is \"writer\")";
                p.push(at, "writer", message);
            }
        }
        Role::Mirror => {
            if let Some(at) = mirrors_at {
                let message = "only the writer ships: a mirror must not list [[mirrors]]";
                p.push(at, "mirrors", message);
            }
            if matches!(f.writer, Found::Absent) {
                missing(p, "writer", "a mirror accepts entries only from its writer");
            }
            if !has_replication {
                let why = "a mirror receives the writer's entries on its listener";
                missing(p, "replication", why);
            }
        }
    }
}

fn replication(f: FileReplication, dir: &Path, p: &mut Problems) -> Option<ReplicationConfig> {
    let listen = required(f.listen, p, socket_addr);
    let ca = required(f.ca, p, |s| path_in(dir, s));
    let cert = required(f.cert, p, |s| path_in(dir, s));
    let key = required(f.key, p, |s| path_in(dir, s));
    let window = optional(f.window, d::REPLICATION_WINDOW, p, |n| count(n, 1));
    let retry_max = optional(f.retry_max, d::RETRY_MAX, p, duration);
    let request_timeout = optional(f.request_timeout, d::REQUEST_TIMEOUT, p, duration);
    Some(ReplicationConfig {
        listen: listen?,
        ca: ca?,
        cert: cert?,
        key: key?,
        window: window?,
        retry_max: retry_max?,
        request_timeout: request_timeout?,
    })
}

/// `[writer]`: the peer, and what this mirror sends it besides writes.
fn writer(f: FileWriter, own: Option<&str>, p: &mut Problems) -> Option<WriterConfig> {
    let own_name = "is this node's own name ([node] name); a mirror cannot be its own writer";
    let (name, url) = peer(f.peer, own, own_name, p);
    let paths = optional_list(f.paths, Vec::new(), p, |s| {
        PathPattern::new(&s).map_err(|e| e.to_string())
    });
    let affinity = optional(f.affinity, d::WRITER_AFFINITY, p, |s| {
        parse_duration_or_zero(&s)
    });
    let affinity_cookie = optional(
        f.affinity_cookie,
        d::WRITER_AFFINITY_COOKIE.to_owned(),
        p,
        cookie_name,
    );
    let read_your_writes_wait =
        optional(f.read_your_writes_wait, d::READ_YOUR_WRITES_WAIT, p, |s| {
            parse_duration_or_zero(&s)
        });
    Some(WriterConfig {
        name: name?,
        url: url?,
        paths: paths?,
        affinity: affinity?,
        affinity_cookie: affinity_cookie?,
        read_your_writes_wait: read_your_writes_wait?,
    })
}

/// `writer.affinity_cookie`: a cookie-name token (RFC 6265 4.1.1, RFC 9110 5.6.2), so the
/// `Set-Cookie` copyist sends is well formed and a browser sends the cookie back unchanged.
fn cookie_name(name: String) -> Checked<String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    match name.chars().find(|c| !tchar(*c)) {
        Some(c) => Err(format!(
            "invalid cookie name \"{name}\" ({c:?} is not allowed; use letters, digits and !#$%&'*+-.^_`|~)"
        )),
        None => Ok(name),
    }
}

/// Every `[[mirrors]]`; names must be unique (case-insensitively, as DNS names compare) and
/// differ from this node's own.
fn mirrors(list: Vec<FilePeer>, own: Option<&str>, p: &mut Problems) -> Option<Vec<MirrorConfig>> {
    let own_name = "is this node's own name ([node] name); the writer does not ship to itself";
    // (name, table) of each mirror with a valid name so far, for duplicates.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut out = Some(Vec::with_capacity(list.len()));
    for f in list {
        let key = f.name.name.clone();
        let table = key.strip_suffix(".name").unwrap_or(&key).to_owned();
        let at = value_span(&f.name);
        let (name, url) = peer(f, own, own_name, p);
        if let (Some(name), Some(at)) = (&name, at) {
            match seen.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, first)) => {
                    let message = format!("duplicate mirror name \"{name}\" (also in [{first}])");
                    p.push(at, &key, message);
                    out = None;
                    continue;
                }
                None => seen.push((name.clone(), table)),
            }
        }
        match (name, url, &mut out) {
            (Some(name), Some(url), Some(out)) => out.push(MirrorConfig { name, url }),
            _ => out = None,
        }
    }
    out
}

/// A peer's `name` and `url`, each checked on its own. `own_name` is the problem when the name
/// is this node's own.
fn peer(
    f: FilePeer,
    own: Option<&str>,
    own_name: &str,
    p: &mut Problems,
) -> (Option<String>, Option<http::Uri>) {
    let at = value_span(&f.name);
    let key = f.name.name.clone();
    let name = required(f.name, p, node_name);
    let url = required(f.url, p, peer_url);
    // DNS names compare case-insensitively, so "Writer-1" would match the same certificate.
    if let (Some(own), Some(name), Some(at)) = (own, &name, at) {
        if own.eq_ignore_ascii_case(name) {
            p.push(at, &key, format!("\"{name}\" {own_name}"));
            return (None, url);
        }
    }
    (name, url)
}

/// Where a key's value is, if it is there and of the right type.
fn value_span<T>(key: &Key<T>) -> Option<Span> {
    match &key.value {
        Found::Present(v) => Some(v.span()),
        _ => None,
    }
}

/// `https://HOST:PORT[/]`, returned as `https://HOST:PORT/`. The port is required: it is the
/// peer's `[replication] listen` port, which has no conventional default.
fn peer_url(text: String) -> Checked<http::Uri> {
    let bad = |why: &str| format!("invalid URL \"{text}\" ({why})");
    let expected = "expected https://HOST:PORT";
    let uri: http::Uri = text.parse().map_err(|_| bad(expected))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => return Err(bad("replication is mTLS only: use https://")),
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
    let Some(port) = uri.port_u16() else {
        return Err(bad(
            "missing port: give that node's [replication] listen port",
        ));
    };
    if port == 0 {
        return Err(bad("port must not be 0"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "must not have a path or query: replication paths are fixed",
        ));
    }
    format!("https://{}:{port}/", authority.host())
        .parse()
        .map_err(|_| bad(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_names() {
        for ok in [
            "copyist_writer",
            "a",
            "X-Writer.1",
            "__Host-w",
            "!#$%&'*+-.^_`|~",
        ] {
            assert_eq!(cookie_name(ok.to_owned()), Ok(ok.to_owned()), "{ok}");
        }
        assert_eq!(
            cookie_name(String::new()),
            Err("must not be empty".to_owned())
        );
        for (bad, c) in [
            ("a b", ' '),
            ("a=b", '='),
            ("a;b", ';'),
            ("\"a\"", '"'),
            ("é", 'é'),
        ] {
            let err = cookie_name(bad.to_owned()).unwrap_err();
            assert!(
                err.contains(&format!("{c:?} is not allowed")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn peer_urls() {
        let ok = [
            ("https://127.0.0.1:9444", "https://127.0.0.1:9444/"),
            (
                "https://mirror-1.internal:9444/",
                "https://mirror-1.internal:9444/",
            ),
            ("https://[::1]:9444", "https://[::1]:9444/"),
        ];
        for (text, want) in ok {
            assert_eq!(peer_url(text.to_owned()).unwrap(), want, "{text}");
        }
        let refused = [
            (
                "http://127.0.0.1:9444",
                "replication is mTLS only: use https://",
            ),
            (
                "https://127.0.0.1",
                "missing port: give that node's [replication] listen port",
            ),
            ("https://127.0.0.1:0", "port must not be 0"),
            (
                "https://h:1/x",
                "must not have a path or query: replication paths are fixed",
            ),
            (
                "https://h:1/?a=1",
                "must not have a path or query: replication paths are fixed",
            ),
            (
                "https://u:p@h:1",
                "must not contain a user name or password",
            ),
            ("127.0.0.1:9444", "expected https://HOST:PORT"),
            ("", "expected https://HOST:PORT"),
        ];
        for (text, why) in refused {
            assert_eq!(
                peer_url(text.to_owned()),
                Err(format!("invalid URL \"{text}\" ({why})")),
                "{text}"
            );
        }
    }
}
