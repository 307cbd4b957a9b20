//! Which path a request takes: a pure function of method, path and the configured rules.

use http::Method;

use crate::config::{Rule, RuleAction};

/// The reserved prefix on the public listener: answered by copyist itself, never forwarded and
/// never captured (health for load balancers that can only probe the traffic port).
pub const RESERVED_PREFIX: &str = "/.copyist/";

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Streamed to the origin and back; nothing is recorded.
    PassThrough,
    /// Through the capture pipeline: logged durably before the origin sees it.
    Capture,
    /// Answered by copyist under [`RESERVED_PREFIX`].
    Reserved,
    /// Refused with 405: methods a reverse proxy in front of a CMS must not relay.
    Refused,
}

/// Classifies a request. Rules are tried in order and the first match wins; without a match,
/// safe methods pass through and every other method is captured. HEAD and OPTIONS are never
/// captured, whatever a rule says: they must not change state, and a load balancer's probes use them.
pub fn classify(method: &Method, path: &str, rules: &[Rule]) -> Route {
    // Replication paths live only on the mTLS listener; on the public port they are answered
    // by copyist (404) so no client can reach a CMS by naming them.
    if path.starts_with(RESERVED_PREFIX) || path.starts_with("/_copyist/") {
        return Route::Reserved;
    }
    if method == Method::CONNECT || method == Method::TRACE {
        // CONNECT would make us an open tunnel; TRACE echoes credentials (cross-site tracing).
        return Route::Refused;
    }
    if method == Method::HEAD || method == Method::OPTIONS {
        return Route::PassThrough;
    }
    let rule = rules
        .iter()
        .find(|r| r.method.as_ref().is_none_or(|m| m == method) && r.path.matches(path));
    match rule.map(|r| r.action) {
        Some(RuleAction::Capture) => Route::Capture,
        Some(RuleAction::Pass) => Route::PassThrough,
        None if method == Method::GET => Route::PassThrough,
        None => Route::Capture,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PathPattern;

    fn rule(method: Option<&str>, path: &str, action: RuleAction) -> Rule {
        Rule {
            method: method.map(|m| m.parse().unwrap()),
            path: PathPattern::new(path).unwrap(),
            action,
        }
    }

    #[test]
    fn classification_table() {
        let rules = vec![
            rule(Some("GET"), "/visit*", RuleAction::Capture),
            rule(Some("POST"), "/heartbeat", RuleAction::Pass),
            rule(None, "/probe", RuleAction::Capture),
        ];
        let cases = [
            ("GET", "/", Route::PassThrough),
            ("GET", "/visit", Route::Capture),
            ("GET", "/visit/3", Route::Capture),
            ("POST", "/articles", Route::Capture),
            ("PUT", "/x", Route::Capture),
            ("DELETE", "/x", Route::Capture),
            ("PATCH", "/x", Route::Capture),
            ("POST", "/heartbeat", Route::PassThrough),
            ("HEAD", "/visit", Route::PassThrough),
            ("OPTIONS", "/probe", Route::PassThrough),
            ("GET", "/.copyist/health", Route::Reserved),
            ("POST", "/.copyist/x", Route::Reserved),
            ("POST", "/_copyist/v1/entries/1", Route::Reserved),
            ("CONNECT", "/", Route::Refused),
            ("TRACE", "/", Route::Refused),
            ("PROPFIND", "/dav", Route::Capture),
        ];
        for (method, path, want) in cases {
            let got = classify(&method.parse().unwrap(), path, &rules);
            assert_eq!(got, want, "{method} {path}");
        }
    }
}
