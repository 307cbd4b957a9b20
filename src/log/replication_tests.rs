//! Tests of the replication state in the log: the mirror's ordered apply, halts, retry and
//! skip, the cookie map; the writer's cursors, pause flags, resolve and subscribe.
#![cfg(test)]

use super::tests::{open, sample_entry, sample_outcome, sample_request};
use super::*;

/// The writer's entry `seq` as the shipper sends it: accepted, with the writer's outcome.
fn shipped(seq: u64) -> Entry {
    Entry {
        request: sample_request(format!("v={seq}").as_bytes()),
        outcome: Some(sample_outcome(201)),
        ..sample_entry(seq)
    }
}

fn shipped_rejected(seq: u64) -> Entry {
    Entry {
        state: EntryState::Rejected,
        outcome: Some(sample_outcome(403)),
        ..shipped(seq)
    }
}

fn audit(action: &str) -> AuditRecord {
    AuditRecord {
        unix_ms: 1_700_000_001_000,
        action: action.into(),
        reason: format!("{action} because"),
        by: "cli".into(),
    }
}

fn mismatch(seq: u64) -> Halt {
    Halt {
        seq: Seq(seq),
        reason: "status_mismatch".into(),
        detail: format!("status_mismatch seq={seq} writer=201 mirror=500"),
    }
}

fn state_of(log: &Log, seq: u64) -> EntryState {
    log.get(Seq(seq)).unwrap().unwrap().state
}

/// Applies `1..=n` on a fresh mirror.
fn apply_all(log: &Log, n: u64) {
    for seq in 1..=n {
        log.begin_apply(shipped(seq)).unwrap();
        let state = log
            .finish_apply(Seq(seq), sample_outcome(201), Ok(()), Vec::new())
            .unwrap();
        assert_eq!(state, EntryState::Applied);
    }
}

/// Halts a mirror at `seq` (which must be next) with a status mismatch.
fn diverge(log: &Log, seq: u64) {
    log.begin_apply(shipped(seq)).unwrap();
    let state = log
        .finish_apply(
            Seq(seq),
            sample_outcome(500),
            Err(mismatch(seq)),
            Vec::new(),
        )
        .unwrap();
    assert_eq!(state, EntryState::Diverged);
}

// --- mirror: order ---

#[test]
fn begin_apply_takes_only_the_next_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    assert_eq!(log.applied_seq(), Seq(0));
    assert_eq!(log.halt(), None);

    // A gap, and seq 0, are refused.
    for got in [2, 0] {
        let err = log.begin_apply(shipped(got)).unwrap_err();
        assert!(
            matches!(err, LogError::OutOfOrder { expected: Seq(1), got: g } if g == Seq(got)),
            "{err}"
        );
    }
    log.begin_apply(shipped(1)).unwrap();
    let stored = log.get(Seq(1)).unwrap().unwrap();
    assert_eq!(stored.state, EntryState::Applying);
    assert_eq!(stored.writer_state, Some(EntryState::Accepted));
    assert_eq!(
        stored.outcome,
        Some(sample_outcome(201)),
        "writer's outcome kept"
    );
    assert_eq!(stored.request, shipped(1).request);
    assert_eq!(stored.mirror_outcome, None);
    assert_eq!(log.applied_seq(), Seq(0), "not applied yet");
    assert_eq!(log.last_seq(), Seq(1));

    // A resend racing the first attempt, and the next seq before this one finished.
    let err = log.begin_apply(shipped(1)).unwrap_err();
    assert!(matches!(err, LogError::ApplyInProgress(Seq(1))), "{err}");
    let err = log.begin_apply(shipped(2)).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: Seq(1),
            got: Seq(2)
        }
    ));

    let mut mine = sample_outcome(201);
    mine.fields = vec![("/id".into(), "7".into())];
    let state = log
        .finish_apply(Seq(1), mine.clone(), Ok(()), Vec::new())
        .unwrap();
    assert_eq!(state, EntryState::Applied);
    assert_eq!(log.applied_seq(), Seq(1));

    // A resend of an applied seq is detectable, and its stored result is in the log.
    let err = log.begin_apply(shipped(1)).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: Seq(2),
            got: Seq(1)
        }
    ));
    let stored = log.get(Seq(1)).unwrap().unwrap();
    assert_eq!(stored.state, EntryState::Applied);
    assert_eq!(stored.mirror_outcome, Some(mine));
    // It changed nothing, and finishing it again is refused.
    let again = log.finish_apply(Seq(1), sample_outcome(201), Ok(()), Vec::new());
    assert!(matches!(again, Err(LogError::Illegal(_))), "{again:?}");
    assert!(!log.is_poisoned());

    // Only accepted entries are applied; rejected ones are recorded.
    let err = log.begin_apply(shipped_rejected(2)).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::ShippedState {
                state: EntryState::Rejected,
                ..
            }
        ),
        "{err}"
    );
    let err = log.record_rejected(shipped(2)).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::ShippedState {
                state: EntryState::Accepted,
                ..
            }
        ),
        "{err}"
    );
    log.record_rejected(shipped_rejected(2)).unwrap();
    assert_eq!(state_of(&log, 2), EntryState::Rejected);
    assert_eq!(
        log.get(Seq(2)).unwrap().unwrap().writer_state,
        Some(EntryState::Rejected)
    );
    assert_eq!(log.applied_seq(), Seq(2));
    let err = log.record_rejected(shipped_rejected(2)).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: Seq(3),
            got: Seq(2)
        }
    ));
    let err = log.record_rejected(shipped_rejected(4)).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: Seq(3),
            got: Seq(4)
        }
    ));

    // Mirror entries are read like the writer's.
    apply_all_from(&log, 3, 5);
    let listed: Vec<_> = log
        .list(None, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect();
    assert_eq!(listed, [5, 4, 3, 2, 1]);
    let states: Vec<_> = log.iter_from(Seq(1)).map(|e| e.unwrap().state).collect();
    use EntryState::*;
    assert_eq!(states, [Applied, Rejected, Applied, Applied, Applied]);
    assert_eq!(log.last_seq(), Seq(5));
    assert!(!log.is_poisoned());
}

fn apply_all_from(log: &Log, from: u64, to: u64) {
    for seq in from..=to {
        log.begin_apply(shipped(seq)).unwrap();
        log.finish_apply(Seq(seq), sample_outcome(201), Ok(()), Vec::new())
            .unwrap();
    }
}

#[test]
fn applied_seq_and_seqs_survive_reopen_and_a_promoted_mirror_does_not_reuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    apply_all(&log, 3);
    log.record_rejected(shipped_rejected(4)).unwrap();
    drop(log);

    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(log.applied_seq(), Seq(4));
    assert_eq!(log.last_seq(), Seq(4));
    assert_eq!(log.halt(), None);
    log.begin_apply(shipped(5)).unwrap();
    log.finish_apply(Seq(5), sample_outcome(201), Ok(()), Vec::new())
        .unwrap();
    // Promoted: its own appends continue after the writer's seqs.
    assert_eq!(log.append_pending(sample_request(b"x")).unwrap(), Seq(6));
}

// --- mirror: halts ---

#[test]
fn divergence_halts_and_the_halt_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    apply_all(&log, 2);
    diverge(&log, 3);

    let halt = log.halt().unwrap();
    assert_eq!(halt, mismatch(3));
    assert_eq!(log.applied_seq(), Seq(2), "a diverged entry is not applied");
    let entry = log.get(Seq(3)).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::Diverged);
    assert_eq!(entry.halt, Some(mismatch(3)));
    assert_eq!(entry.mirror_outcome, Some(sample_outcome(500)));
    assert_eq!(entry.outcome, Some(sample_outcome(201)));

    // HALT: nothing after it, and not the halted seq either.
    for seq in [3, 4] {
        let err = log.begin_apply(shipped(seq)).unwrap_err();
        assert!(
            matches!(err, LogError::Halted(ref h) if *h == mismatch(3)),
            "{err}"
        );
    }
    let err = log.record_rejected(shipped_rejected(4)).unwrap_err();
    assert!(matches!(err, LogError::Halted(_)), "{err}");
    // ONCE still answers a resend of an applied seq while halted.
    let err = log.begin_apply(shipped(2)).unwrap_err();
    assert!(
        matches!(err, LogError::OutOfOrder { got: Seq(2), .. }),
        "{err}"
    );
    drop(log);

    // A restart does not resume.
    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(log.halt(), Some(mismatch(3)));
    assert_eq!(log.applied_seq(), Seq(2));
    let err = log.begin_apply(shipped(3)).unwrap_err();
    assert!(matches!(err, LogError::Halted(_)), "{err}");
}

#[test]
fn an_ambiguous_apply_is_recorded_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    log.begin_apply(shipped(1)).unwrap();
    let halt = Halt {
        seq: Seq(1),
        reason: Halt::IN_DOUBT.into(),
        detail: "origin timed out after the request was sent".into(),
    };
    let mut none = sample_outcome(0);
    none.error = Some("timeout".into());
    let state = log
        .finish_apply(Seq(1), none, Err(halt.clone()), Vec::new())
        .unwrap();
    assert_eq!(state, EntryState::InDoubt);
    assert_eq!(log.halt(), Some(halt));
    assert_eq!(log.applied_seq(), Seq(0));
}

#[test]
fn crash_while_applying_comes_back_in_doubt_and_halted() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    apply_all(&log, 1);
    log.begin_apply(shipped(2)).unwrap();
    drop(log); // "kill -9" while the request is at the mirror's origin

    let (log, recovered) = open(&dir);
    assert_eq!(recovered, [Seq(2)]);
    let halt = log.halt().unwrap();
    assert_eq!(halt.seq, Seq(2));
    assert_eq!(halt.reason, "in_doubt");
    assert_eq!(
        halt.detail,
        "crashed while applying seq=2: the mirror's CMS may or may not have applied it"
    );
    let entry = log.get(Seq(2)).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::InDoubt);
    assert_eq!(entry.halt, Some(halt.clone()));
    assert_eq!(
        entry.settled_unix_ms,
        shipped(2).settled_unix_ms,
        "writer's, untouched"
    );
    assert_eq!(log.applied_seq(), Seq(1));
    // UNKNOWN: never re-applied on its own.
    let err = log.begin_apply(shipped(2)).unwrap_err();
    assert!(matches!(err, LogError::Halted(_)), "{err}");
    // Nor resolved as if this were the writer.
    let err = log
        .resolve(Seq(2), true, audit("resolve-applied"))
        .unwrap_err();
    assert!(matches!(err, LogError::ReplayedEntry(Seq(2))), "{err}");
    drop(log);

    // Reported once, halted for good.
    let (log, recovered) = open(&dir);
    assert!(recovered.is_empty());
    assert_eq!(log.halt(), Some(halt));
}

// --- mirror: operator ---

#[test]
fn retry_releases_the_halted_seq_for_one_more_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let err = log.retry(audit("retry")).unwrap_err();
    assert!(matches!(err, LogError::NotHalted), "{err}");
    apply_all(&log, 1);
    diverge(&log, 2);

    assert_eq!(log.retry(audit("retry")).unwrap(), Seq(2));
    assert_eq!(log.halt(), None);
    let entry = log.get(Seq(2)).unwrap().unwrap();
    assert_eq!(
        entry.state,
        EntryState::Diverged,
        "until begin_apply takes it"
    );
    assert_eq!(entry.audit, [audit("retry")]);
    // Still only that seq; and retrying twice needs a halt in between.
    let err = log.begin_apply(shipped(3)).unwrap_err();
    assert!(matches!(
        err,
        LogError::OutOfOrder {
            expected: Seq(2),
            got: Seq(3)
        }
    ));
    assert!(matches!(
        log.retry(audit("retry")),
        Err(LogError::NotHalted)
    ));
    drop(log);

    // The release is durable.
    let (log, _) = open(&dir);
    // A different request under the same seq is not "the same entry".
    let mut other = shipped(2);
    other.request = sample_request(b"something else");
    let err = log.begin_apply(other).unwrap_err();
    assert!(matches!(err, LogError::ConflictingEntry(Seq(2))), "{err}");

    log.begin_apply(shipped(2)).unwrap();
    let entry = log.get(Seq(2)).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::Applying);
    assert_eq!(entry.audit, [audit("retry")]);
    assert_eq!(entry.halt, Some(mismatch(2)), "history kept");
    assert_eq!(entry.mirror_outcome, None, "the earlier answer is gone");
    // The release was used up.
    assert!(matches!(
        log.begin_apply(shipped(2)),
        Err(LogError::ApplyInProgress(Seq(2)))
    ));
    let state = log
        .finish_apply(Seq(2), sample_outcome(201), Ok(()), Vec::new())
        .unwrap();
    assert_eq!(state, EntryState::Applied);
    assert_eq!(log.applied_seq(), Seq(2));
    apply_all_from(&log, 3, 3);
}

#[test]
fn retry_of_a_crashed_apply_and_a_second_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    log.begin_apply(shipped(1)).unwrap();
    drop(log);
    let (log, _) = open(&dir);
    assert_eq!(state_of(&log, 1), EntryState::InDoubt);
    assert_eq!(log.retry(audit("retry")).unwrap(), Seq(1));
    log.begin_apply(shipped(1)).unwrap();
    assert_eq!(state_of(&log, 1), EntryState::Applying);
    // Diverges this time: halted again, with both operator actions' history.
    let state = log
        .finish_apply(Seq(1), sample_outcome(500), Err(mismatch(1)), Vec::new())
        .unwrap();
    assert_eq!(state, EntryState::Diverged);
    assert_eq!(log.halt(), Some(mismatch(1)));
}

#[test]
fn skip_only_at_the_halted_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    apply_all(&log, 1);
    let err = log.skip(Seq(2), audit("skip")).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::NotHaltedAt {
                seq: Seq(2),
                halted: None
            }
        ),
        "{err}"
    );
    diverge(&log, 2);
    for wrong in [1, 3] {
        let err = log.skip(Seq(wrong), audit("skip")).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::NotHaltedAt {
                    halted: Some(Seq(2)),
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(
        LogError::NotHaltedAt {
            seq: Seq(3),
            halted: Some(Seq(2))
        }
        .to_string(),
        "log: cannot skip 3: the mirror is halted at 2"
    );
    assert_eq!(state_of(&log, 2), EntryState::Diverged);

    log.skip(Seq(2), audit("skip")).unwrap();
    let entry = log.get(Seq(2)).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::Skipped);
    assert_eq!(entry.audit, [audit("skip")]);
    assert_eq!(log.applied_seq(), Seq(2));
    assert_eq!(log.halt(), None);
    let err = log.skip(Seq(2), audit("skip")).unwrap_err();
    assert!(
        matches!(err, LogError::NotHaltedAt { halted: None, .. }),
        "{err}"
    );
    // A resend of the skipped seq is a resend, not a re-apply.
    assert!(matches!(
        log.begin_apply(shipped(2)),
        Err(LogError::OutOfOrder { got: Seq(2), .. })
    ));
    drop(log);

    let (log, _) = open(&dir);
    assert_eq!(log.applied_seq(), Seq(2));
    assert_eq!(log.halt(), None);
    apply_all_from(&log, 3, 3);
}

#[test]
fn skip_after_retry_was_released_and_crashed() {
    // retry, then the re-apply crashes: halted in doubt at the same seq; skip must work and
    // must clear the release.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    diverge(&log, 1);
    log.retry(audit("retry")).unwrap();
    log.begin_apply(shipped(1)).unwrap();
    drop(log);
    let (log, recovered) = open(&dir);
    assert_eq!(recovered, [Seq(1)]);
    log.skip(Seq(1), audit("skip")).unwrap();
    let entry = log.get(Seq(1)).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::Skipped);
    assert_eq!(entry.audit, [audit("retry"), audit("skip")]);
    apply_all_from(&log, 2, 2);
}

// --- mirror: cookies ---

#[test]
fn cookie_map_is_durable_and_written_with_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    log.begin_apply(shipped(1)).unwrap();
    log.finish_apply(
        Seq(1),
        sample_outcome(201),
        Ok(()),
        vec![
            ("SESS".into(), "writer-a".into(), "mirror-a".into()),
            ("SESS".into(), "writer-b".into(), "mirror-b".into()),
            // Names and values must not run into each other.
            ("SE".into(), "SSwriter-a".into(), "other".into()),
        ],
    )
    .unwrap();
    diverge_with_cookie(&log, 2);
    drop(log);

    let (log, _) = open(&dir);
    let mapped = |n: &str, v: &str| log.mapped_cookie(n, v).unwrap();
    assert_eq!(mapped("SESS", "writer-a").as_deref(), Some("mirror-a"));
    assert_eq!(mapped("SESS", "writer-b").as_deref(), Some("mirror-b"));
    assert_eq!(mapped("SE", "SSwriter-a").as_deref(), Some("other"));
    assert_eq!(mapped("SESS", "writer-c"), None);
    assert_eq!(mapped("OTHER", "writer-a"), None);
    assert_eq!(mapped("SESS", "writer-d").as_deref(), Some("mirror-d"));
}

fn diverge_with_cookie(log: &Log, seq: u64) {
    log.begin_apply(shipped(seq)).unwrap();
    log.finish_apply(
        Seq(seq),
        sample_outcome(500),
        Err(mismatch(seq)),
        vec![("SESS".into(), "writer-d".into(), "mirror-d".into())],
    )
    .unwrap();
}

// --- writer: cursors, pause, resolve, subscribe ---

#[test]
fn cursors_are_per_mirror_monotonic_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    assert_eq!(log.cursor("m1").unwrap(), Seq(0));
    log.set_cursor("m1", Seq(5)).unwrap();
    log.set_cursor("m1", Seq(5)).unwrap(); // an ack seen twice is fine
    log.set_cursor("m2", Seq(2)).unwrap();
    log.set_cursor("m1", Seq(7)).unwrap();

    let backwards = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        log.set_cursor("m1", Seq(3))
    }));
    if cfg!(debug_assertions) {
        assert!(backwards.is_err(), "debug builds flag a backwards cursor");
    } else {
        assert!(matches!(backwards, Ok(Ok(()))));
    }
    assert_eq!(log.cursor("m1").unwrap(), Seq(7), "never moves backwards");
    assert_eq!(log.cursor("m2").unwrap(), Seq(2));
    assert_eq!(
        log.cursor("m").unwrap(),
        Seq(0),
        "a prefix of a name is another mirror"
    );
    assert!(!log.is_poisoned());
    drop(log);

    let (log, _) = open(&dir);
    assert_eq!(log.cursor("m1").unwrap(), Seq(7));
    assert_eq!(log.cursor("m2").unwrap(), Seq(2));
}

#[test]
fn pause_is_durable_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    assert!(!log.paused("m1").unwrap());
    log.set_paused("m1", true, audit("pause")).unwrap();
    assert!(log.paused("m1").unwrap());
    assert!(!log.paused("m2").unwrap());
    drop(log);

    let (log, _) = open(&dir);
    assert!(log.paused("m1").unwrap());
    log.set_paused("m1", false, audit("resume")).unwrap();
    assert!(!log.paused("m1").unwrap());
    assert_eq!(
        log.mirror_audit("m1").unwrap(),
        [audit("pause"), audit("resume")]
    );
    assert!(log.mirror_audit("m2").unwrap().is_empty());
}

#[test]
fn resolve_settles_in_doubt_entries_only() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let accepted = log.append_pending(sample_request(b"a")).unwrap();
    log.settle(accepted, Event::OriginAccepted, sample_outcome(201))
        .unwrap();
    let unknown = log.append_pending(sample_request(b"b")).unwrap();
    log.settle(unknown, Event::OutcomeUnknown, sample_outcome(0))
        .unwrap();
    let pending = log.append_pending(sample_request(b"c")).unwrap();

    for seq in [accepted, pending] {
        let err = log
            .resolve(seq, true, audit("resolve-applied"))
            .unwrap_err();
        assert!(matches!(err, LogError::NotInDoubt(s) if s == seq), "{err}");
    }
    assert!(matches!(
        log.resolve(Seq(99), true, audit("resolve-applied")),
        Err(LogError::NotFound(Seq(99)))
    ));
    // The capture path cannot settle in its place.
    let err = log.settle(unknown, Event::OperatorApplied, sample_outcome(201));
    assert!(matches!(err, Err(LogError::Illegal(_))), "{err:?}");
    let err = log.settle(pending, Event::OperatorApplied, sample_outcome(201));
    assert!(matches!(err, Err(LogError::Illegal(_))), "{err:?}");

    let state = log
        .resolve(unknown, false, audit("resolve-not-applied"))
        .unwrap();
    assert_eq!(state, EntryState::Rejected);
    let entry = log.get(unknown).unwrap().unwrap();
    assert_eq!(entry.state, EntryState::Rejected);
    assert_eq!(entry.audit, [audit("resolve-not-applied")]);
    assert_eq!(
        entry.outcome,
        Some(sample_outcome(0)),
        "what the origin said is kept"
    );
    assert!(matches!(
        log.resolve(unknown, true, audit("resolve-applied")),
        Err(LogError::NotInDoubt(_))
    ));
    drop(log);

    let (log, recovered) = open(&dir);
    assert_eq!(recovered, [pending]);
    assert_eq!(state_of(&log, unknown.0), EntryState::Rejected);
    let state = log
        .resolve(pending, true, audit("resolve-applied"))
        .unwrap();
    assert_eq!(state, EntryState::Accepted);
}

#[tokio::test]
async fn subscribe_sees_settles_and_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    let mut rx = log.subscribe();
    assert_eq!(*rx.borrow_and_update(), Seq(0));

    let first = log.append_pending(sample_request(b"a")).unwrap();
    assert!(!rx.has_changed().unwrap(), "pending is not settled");
    log.settle(first, Event::OriginAccepted, sample_outcome(201))
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), Seq(1));

    let second = log.append_pending(sample_request(b"b")).unwrap();
    drop(log); // crash between logging and settling
    let (log, recovered) = open(&dir);
    assert_eq!(recovered, [second]);
    let mut rx = log.subscribe();
    assert_eq!(
        *rx.borrow_and_update(),
        Seq(2),
        "in-doubt counts as settled"
    );

    // A shipper parked at the in-doubt entry wakes when it is resolved, although the value
    // does not grow.
    let waiter = tokio::spawn(async move {
        rx.changed().await.unwrap();
        *rx.borrow_and_update()
    });
    tokio::task::yield_now().await;
    let resolver = log.clone();
    tokio::task::spawn_blocking(move || {
        resolver
            .resolve(second, true, audit("resolve-applied"))
            .unwrap()
    })
    .await
    .unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("subscriber was not woken")
        .unwrap();
    assert_eq!(seen, Seq(2));
    assert_eq!(state_of(&log, 2), EntryState::Accepted);
}

// --- durability cost and failure ---

/// fsyncs per durable write: sled's `db` (the seal is written, not fsynced: `durable.rs`).
const PER_COMMIT: u64 = 1;

/// Runs `f` and returns how many fsyncs it cost.
fn fsyncs<T>(log: &Log, f: impl FnOnce() -> T) -> (T, u64) {
    let before = log.fsync_count();
    let out = f();
    (out, log.fsync_count() - before)
}

#[test]
fn exactly_one_fsync_per_durable_method() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    for round in 0..5u64 {
        let base = round * 4;
        let (r, n) = fsyncs(&log, || log.begin_apply(shipped(base + 1)));
        assert_eq!((r.unwrap(), n), ((), PER_COMMIT), "begin_apply");
        let cookies = vec![("S".into(), format!("w{round}"), format!("m{round}"))];
        let (r, n) = fsyncs(&log, || {
            log.finish_apply(Seq(base + 1), sample_outcome(201), Ok(()), cookies)
        });
        assert_eq!(
            (r.unwrap(), n),
            (EntryState::Applied, PER_COMMIT),
            "finish_apply ok"
        );
        let (r, n) = fsyncs(&log, || log.record_rejected(shipped_rejected(base + 2)));
        assert_eq!((r.unwrap(), n), ((), PER_COMMIT), "record_rejected");

        log.begin_apply(shipped(base + 3)).unwrap();
        let (r, n) = fsyncs(&log, || {
            log.finish_apply(
                Seq(base + 3),
                sample_outcome(500),
                Err(mismatch(base + 3)),
                vec![],
            )
        });
        assert_eq!(
            (r.unwrap(), n),
            (EntryState::Diverged, PER_COMMIT),
            "finish_apply halt"
        );
        let (r, n) = fsyncs(&log, || log.retry(audit("retry")));
        assert_eq!((r.unwrap(), n), (Seq(base + 3), PER_COMMIT), "retry");
        let (r, n) = fsyncs(&log, || log.begin_apply(shipped(base + 3)));
        assert_eq!((r.unwrap(), n), ((), PER_COMMIT), "begin_apply after retry");
        log.finish_apply(
            Seq(base + 3),
            sample_outcome(500),
            Err(mismatch(base + 3)),
            vec![],
        )
        .unwrap();
        let (r, n) = fsyncs(&log, || log.skip(Seq(base + 3), audit("skip")));
        assert_eq!((r.unwrap(), n), ((), PER_COMMIT), "skip");
        log.record_rejected(shipped_rejected(base + 4)).unwrap();

        let (r, n) = fsyncs(&log, || {
            log.set_paused("m1", round % 2 == 0, audit("pause"))
        });
        assert_eq!((r.unwrap(), n), ((), PER_COMMIT), "set_paused");
        let (r, n) = fsyncs(&log, || log.set_cursor("m1", Seq(base + 4)));
        assert_eq!((r.unwrap(), n), ((), 0), "set_cursor is not fsynced");
    }

    // Writer side: resolve. (A separate log: a node is one or the other.)
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    for _ in 0..5 {
        let seq = log.append_pending(sample_request(b"x")).unwrap();
        log.settle(seq, Event::OutcomeUnknown, sample_outcome(0))
            .unwrap();
        let (r, n) = fsyncs(&log, || log.resolve(seq, true, audit("resolve-applied")));
        assert_eq!(
            (r.unwrap(), n),
            (EntryState::Accepted, PER_COMMIT),
            "resolve"
        );
    }
    // Reads never fsync.
    let (_, n) = fsyncs(&log, || {
        log.cursor("m1").unwrap();
        log.paused("m1").unwrap();
        log.mapped_cookie("S", "w0").unwrap();
        log.halt();
        log.applied_seq();
    });
    assert_eq!(n, 0);
}

#[test]
fn a_poisoned_log_refuses_every_replication_write() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&dir);
    diverge(&log, 1);
    log.fail_next_fsync();
    assert!(matches!(
        log.retry(audit("retry")),
        Err(LogError::Io { .. })
    ));
    assert!(log.is_poisoned());
    let fsyncs = log.fsync_count();
    assert!(matches!(log.retry(audit("retry")), Err(LogError::Poisoned)));
    assert!(matches!(
        log.skip(Seq(1), audit("skip")),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(
        log.begin_apply(shipped(2)),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(
        log.set_paused("m1", true, audit("pause")),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(
        log.set_cursor("m1", Seq(1)),
        Err(LogError::Poisoned)
    ));
    assert_eq!(log.fsync_count(), fsyncs);
    // The in-memory halt was not cleared by the failed retry.
    assert_eq!(log.halt(), Some(mismatch(1)));
}
