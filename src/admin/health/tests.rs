//! The pure decisions of health: lag limits, verdicts, node state and the public body.

use super::*;
use crate::log::Seq;

fn mirror(lag_entries: Option<u64>, lag_seconds: Option<f64>) -> Facts {
    Facts {
        mirror: true,
        lag_entries,
        lag_seconds,
        ..Facts::default()
    }
}

fn halt() -> Halt {
    Halt {
        seq: Seq(7),
        reason: "status_mismatch".into(),
        detail: String::new(),
    }
}

fn lag(text: &str) -> Option<LagLimit> {
    LagLimit::from_query(Some(&format!("lag={text}"))).unwrap()
}

#[test]
fn lag_is_a_count_or_a_duration() {
    assert_eq!(LagLimit::from_query(None), Ok(None));
    assert_eq!(LagLimit::from_query(Some("x=1")), Ok(None));
    assert_eq!(lag("100"), Some(LagLimit::Entries(100)));
    assert_eq!(lag("10s"), Some(LagLimit::Time(Duration::from_secs(10))));
    assert_eq!(
        lag("1m%2030s"),
        Some(LagLimit::Time(Duration::from_secs(90)))
    );
    for bad in ["", "-1", "10 parsecs", "1.5"] {
        let err = LagLimit::from_query(Some(&format!("lag={bad}"))).unwrap_err();
        assert!(err.starts_with("invalid lag"), "{bad}: {err}");
    }
}

#[test]
fn verdict_table() {
    use Check::*;
    use Verdict::*;
    let writer = Facts::default();
    let unhealthy = Facts {
        unhealthy: Some("origin down".into()),
        ..mirror(Some(0), Some(0.0))
    };
    let halted = Facts {
        halt: Some(halt()),
        ..mirror(Some(0), Some(0.0))
    };
    let draining = Facts {
        draining: Some("draining: x".into()),
        ..writer.clone()
    };
    let lagging = mirror(Some(5), Some(30.0));
    let no_writer = mirror(None, None);
    let behind = mirror(Some(3), None);
    let cases: Vec<(&str, &Facts, Check, Option<LagLimit>, Verdict)> = vec![
        ("writer health", &writer, Health, None, Pass),
        ("writer writer", &writer, Writer, None, Pass),
        (
            "writer mirror",
            &writer,
            Mirror,
            None,
            fail("wrong-role", "this node is the writer"),
        ),
        (
            "writer read-only, lag ignored",
            &writer,
            ReadOnly,
            lag("0"),
            Pass,
        ),
        (
            "mirror writer",
            &lagging,
            Writer,
            None,
            fail("wrong-role", "this node is a mirror"),
        ),
        ("no limit", &lagging, Mirror, None, Pass),
        ("within", &lagging, Mirror, lag("5"), Pass),
        (
            "entries",
            &lagging,
            Readiness,
            lag("4"),
            fail("lag-exceeded", "lag of 5 entries exceeds 4"),
        ),
        ("seconds ok", &lagging, ReadOnly, lag("1m"), Pass),
        (
            "seconds",
            &lagging,
            Mirror,
            lag("10s"),
            fail("lag-exceeded", "lag of 30.0s exceeds 10s"),
        ),
        ("no writer, no limit", &no_writer, Mirror, None, Pass),
        (
            "no writer",
            &no_writer,
            Mirror,
            lag("1000"),
            fail("lag-unknown", "writer unreachable; lag unknown"),
        ),
        (
            "never caught up",
            &behind,
            Mirror,
            lag("1h"),
            fail(
                "lag-unknown",
                "3 entries behind and not caught up since start",
            ),
        ),
        ("never caught up, by count", &behind, Mirror, lag("3"), Pass),
        (
            "unhealthy",
            &unhealthy,
            Health,
            None,
            fail("unhealthy", "origin down"),
        ),
        (
            "unhealthy ready",
            &unhealthy,
            ReadOnly,
            None,
            fail("unhealthy", "origin down"),
        ),
        ("halted healthy", &halted, Health, None, Pass),
        (
            "halted",
            &halted,
            Mirror,
            None,
            fail("halted", "halted at entry 7 (status_mismatch)"),
        ),
        ("draining healthy", &draining, Health, None, Pass),
        (
            "draining",
            &draining,
            Readiness,
            None,
            Draining("draining: x".into()),
        ),
        (
            "draining writer",
            &draining,
            Writer,
            None,
            Draining("draining: x".into()),
        ),
    ];
    for (name, facts, check, limit, want) in cases {
        assert_eq!(verdict(facts, check, limit), want, "{name}");
    }
}

/// 404 (drain_status) is only for "draining and nothing else": a draining node that is also
/// down says 503, so HAProxy marks it down rather than in maintenance.
#[test]
fn draining_is_only_the_answer_when_nothing_else_is_wrong() {
    let f = Facts {
        draining: Some("draining: x".into()),
        halt: Some(halt()),
        ..mirror(Some(0), Some(0.0))
    };
    assert!(matches!(verdict(&f, Check::Mirror, None), Verdict::Fail(_)));
    let f = Facts {
        draining: Some("draining: x".into()),
        ..mirror(Some(9), Some(0.0))
    };
    assert!(matches!(
        verdict(&f, Check::Mirror, lag("1")),
        Verdict::Fail(_)
    ));
}

#[test]
fn the_state_names_the_most_serious_condition() {
    let up = OriginProbe {
        ok: true,
        at: Some(Instant::now()),
        error: None,
    };
    let down = OriginProbe {
        ok: false,
        ..up.clone()
    };
    let draining = Facts {
        draining: Some("draining: x".into()),
        ..Facts::default()
    };
    let halted = Facts {
        halt: Some(halt()),
        ..draining.clone()
    };
    let closed = Facts {
        fail_closed: true,
        ..halted.clone()
    };
    let cases = [
        (&Facts::default(), &up, NodeState::Healthy),
        (&draining, &up, NodeState::Draining),
        (&halted, &up, NodeState::Halted),
        (&halted, &down, NodeState::OriginDown),
        (&halted, &OriginProbe::default(), NodeState::Starting),
        (&closed, &down, NodeState::FailClosed),
    ];
    for (facts, origin, want) in cases {
        assert_eq!(node_state(facts, origin), want, "{facts:?} {origin:?}");
    }
}

/// The public body carries no name, sequence number, peer or origin error.
#[test]
fn the_public_body_keeps_only_what_a_load_balancer_needs() {
    let view = HealthView {
        node: "mirror-secret-name".into(),
        role: "mirror".into(),
        state: NodeState::OriginDown,
        healthy: false,
        draining: true,
        drain: Some("kernel update (by root@db-internal)".into()),
        halted: Some(halt()),
        applied_seq: 41,
        last_seq: Some(44),
        lag_entries: Some(3),
        lag_seconds: None,
        origin: OriginView {
            ok: false,
            checked_ms_ago: Some(5),
            error: Some("cannot connect to origin 10.9.8.7:8081".into()),
        },
        reason: Some("origin down: cannot connect to origin 10.9.8.7:8081".into()),
    };
    let public = public_view(&view, Some("unhealthy"));
    let json = serde_json::to_string(&public).unwrap();
    assert_eq!(
        json,
        r#"{"role":"mirror","ok":false,"state":"origin-down","draining":true,"reason":"unhealthy","lag":{"entries":3,"seconds":null}}"#
    );
    let writer = HealthView {
        role: "writer".into(),
        ..view
    };
    let json = serde_json::to_string(&public_view(&writer, None)).unwrap();
    assert!(!json.contains("lag"), "{json}");
    assert!(json.contains(r#""ok":true"#), "{json}");
}
