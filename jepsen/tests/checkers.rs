//! The checkers on hand-made histories: valid ones pass, and each kind of anomaly the chaos
//! harness exists to find is caught.

use ringkv_jepsen::checker::{Outcome, append, linearizable, stale};
use ringkv_jepsen::history::{Event, Kind, Op};

/// Builds a history from (process, kind, op) in order.
fn h(events: &[(u64, Kind, Op)]) -> Vec<Event> {
    events
        .iter()
        .enumerate()
        .map(|(i, (p, k, op))| Event {
            process: *p,
            kind: *k,
            op: op.clone(),
            time_ns: i as u64,
            error: None,
        })
        .collect()
}

fn w(v: i64) -> Op {
    Op::Write { key: "x".into(), value: v }
}
fn r(v: Option<i64>) -> Op {
    Op::Read { key: "x".into(), value: v }
}
fn cas(from: i64, to: i64) -> Op {
    Op::Cas { key: "x".into(), from, to }
}
use Kind::{Fail, Info, Invoke, Ok};

#[test]
fn sequential_and_concurrent_valid_histories_pass() {
    let seq = h(&[
        (1, Invoke, w(1)),
        (1, Ok, w(1)),
        (2, Invoke, r(None)),
        (2, Ok, r(Some(1))),
        (1, Invoke, cas(1, 2)),
        (1, Ok, cas(1, 2)),
        (2, Invoke, r(None)),
        (2, Ok, r(Some(2))),
    ]);
    assert!(linearizable::check(&seq).unwrap().valid);
    // A read concurrent with a write may see either value.
    for seen in [None, Some(1)] {
        let conc = h(&[(1, Invoke, w(1)), (2, Invoke, r(None)), (2, Ok, r(seen)), (1, Ok, w(1))]);
        assert!(linearizable::check(&conc).unwrap().valid, "concurrent read of {seen:?}");
    }
}

#[test]
fn a_stale_read_is_caught() {
    // The write of 2 completed before the read began, yet the read saw 1.
    let stale = h(&[
        (1, Invoke, w(1)),
        (1, Ok, w(1)),
        (1, Invoke, w(2)),
        (1, Ok, w(2)),
        (2, Invoke, r(None)),
        (2, Ok, r(Some(1))),
    ]);
    let v = linearizable::check(&stale).unwrap();
    assert!(!v.valid);
    assert!(v.counterexamples[0].contains("read -> Some(1)"), "{:?}", v.counterexamples);
}

#[test]
fn a_lost_write_is_caught() {
    // Write 5 was acknowledged, then later reads see the value before it.
    let lost = h(&[
        (1, Invoke, w(4)),
        (1, Ok, w(4)),
        (2, Invoke, w(5)),
        (2, Ok, w(5)),
        (3, Invoke, r(None)),
        (3, Ok, r(Some(4))),
        (3, Invoke, r(None)),
        (3, Ok, r(Some(4))),
    ]);
    assert!(!linearizable::check(&lost).unwrap().valid);
}

#[test]
fn a_read_of_a_failed_write_is_caught_but_unknown_writes_may_go_either_way() {
    let uncommitted =
        h(&[(1, Invoke, w(7)), (1, Fail, w(7)), (2, Invoke, r(None)), (2, Ok, r(Some(7)))]);
    assert!(!linearizable::check(&uncommitted).unwrap().valid);
    // The same write with an unknown outcome may have happened...
    let maybe = h(&[(1, Invoke, w(7)), (1, Info, w(7)), (2, Invoke, r(None)), (2, Ok, r(Some(7)))]);
    assert!(linearizable::check(&maybe).unwrap().valid);
    // ...or not.
    let maybe_not =
        h(&[(1, Invoke, w(7)), (1, Info, w(7)), (2, Invoke, r(None)), (2, Ok, r(None))]);
    assert!(linearizable::check(&maybe_not).unwrap().valid);
    // But it cannot take effect before it was invoked.
    let early = h(&[(2, Invoke, r(None)), (2, Ok, r(Some(7))), (1, Invoke, w(7)), (1, Info, w(7))]);
    assert!(!linearizable::check(&early).unwrap().valid);
}

#[test]
fn cas_chains_are_checked_per_key() {
    let ok = h(&[
        (1, Invoke, w(0)),
        (1, Ok, w(0)),
        (1, Invoke, cas(0, 1)),
        (2, Invoke, cas(0, 2)),
        (1, Ok, cas(0, 1)),
        (2, Fail, cas(0, 2)),
        (3, Invoke, r(None)),
        (3, Ok, r(Some(1))),
    ]);
    assert!(linearizable::check(&ok).unwrap().valid);
    // Two successful CAS from the same value cannot both be linearizable.
    let both = h(&[
        (1, Invoke, w(0)),
        (1, Ok, w(0)),
        (1, Invoke, cas(0, 1)),
        (2, Invoke, cas(0, 2)),
        (1, Ok, cas(0, 1)),
        (2, Ok, cas(0, 2)),
    ]);
    assert!(!linearizable::check(&both).unwrap().valid);
    // The same two CAS on different keys (each key written first) are fine: keys are
    // independent registers.
    let y = |op: Op| match op {
        Op::Write { value, .. } => Op::Write { key: "y".into(), value },
        Op::Cas { from, to, .. } => Op::Cas { key: "y".into(), from, to },
        other => other,
    };
    let split = h(&[
        (1, Invoke, w(0)),
        (1, Ok, w(0)),
        (3, Invoke, y(w(0))),
        (3, Ok, y(w(0))),
        (1, Invoke, cas(0, 1)),
        (2, Invoke, y(cas(0, 2))),
        (1, Ok, cas(0, 1)),
        (2, Ok, y(cas(0, 2))),
    ]);
    let v = linearizable::check(&split).unwrap();
    assert!(v.valid, "{:?}", v.counterexamples);
}

/// An outage: `n` writes of unknown outcome, all concurrent with each other, then one read.
fn outage(n: i64, read: Option<i64>, read_first: bool) -> Vec<Event> {
    let mut ops = Vec::new();
    let reader = [(1000, Invoke, r(None)), (1000, Ok, r(read))];
    if read_first {
        ops.extend(reader.clone());
    }
    for v in 1..=n {
        ops.push((v as u64, Invoke, if v % 2 == 0 { w(v) } else { cas(v - 1, v) }));
    }
    for v in 1..=n {
        ops.push((v as u64, Info, if v % 2 == 0 { w(v) } else { cas(v - 1, v) }));
    }
    if !read_first {
        ops.extend(reader);
    }
    h(&ops)
}

#[test]
fn an_outage_of_unknown_writes_is_checked_quickly_and_anomalies_still_show() {
    // 400 unknown operations may be linearized in 2^400 subsets; the ones nobody saw are
    // dropped, so this takes milliseconds (it ran for hours before).
    let v = linearizable::check(&outage(400, Some(200), false)).unwrap();
    assert!(v.valid, "{:?} {:?}", v.counterexamples, v.unknown);
    let v = linearizable::check(&outage(400, Some(201), false)).unwrap();
    assert!(v.valid, "a CAS chain 200 -> 201 explains 201: {:?}", v.counterexamples);
    let v = linearizable::check(&outage(400, None, false)).unwrap();
    assert!(v.valid, "none of them happened: {:?}", v.counterexamples);
    // A value nobody wrote, or one read before any write of it was invoked, is still caught.
    let v = linearizable::check(&outage(400, Some(999), false)).unwrap();
    assert_eq!(v.outcome(), Outcome::Invalid, "{v:?}");
    let v = linearizable::check(&outage(400, Some(200), true)).unwrap();
    assert_eq!(v.outcome(), Outcome::Invalid, "{v:?}");
}

#[test]
fn a_search_past_its_limits_is_unknown_not_a_counterexample() {
    // Twenty unknown writes, each seen by one of twenty concurrent reads: valid (write, read,
    // write, read...), but nothing can be dropped, so the search has to work.
    let mut ops = Vec::new();
    for v in 1..=20 {
        ops.push((v as u64, Invoke, w(v)));
        ops.push((100 + v as u64, Invoke, r(None)));
    }
    for v in 1..=20 {
        ops.push((100 + v as u64, Ok, r(Some(v))));
        ops.push((v as u64, Info, w(v)));
    }
    let seen = h(&ops);
    assert!(linearizable::check(&seen).unwrap().valid);
    let limits = linearizable::SearchLimits { steps_max: 5, cache_words_max: usize::MAX };
    let v = linearizable::check_with(&seen, limits).unwrap();
    assert_eq!(v.outcome(), Outcome::Unknown, "{v:?}");
    assert!(!v.valid && v.counterexamples.is_empty());
    assert!(v.unknown[0].contains("gave up"), "{:?}", v.unknown);
    let limits = linearizable::SearchLimits { steps_max: u64::MAX, cache_words_max: 8 };
    let v = linearizable::check_with(&seen, limits).unwrap();
    assert_eq!(v.outcome(), Outcome::Unknown, "{v:?}");
}

fn app(e: i64) -> Op {
    Op::Append { key: "l".into(), element: e }
}
fn rl(v: &[i64]) -> Op {
    Op::ReadList { key: "l".into(), value: Some(v.to_vec()) }
}

#[test]
fn append_histories() {
    let good = h(&[
        (1, Invoke, app(1)),
        (1, Ok, app(1)),
        (2, Invoke, app(2)),
        (2, Info, app(2)),
        (3, Invoke, rl(&[])),
        (3, Ok, rl(&[1])),
        (3, Invoke, rl(&[])),
        (3, Ok, rl(&[1, 2])),
    ]);
    assert!(append::check(&good).unwrap().valid);
    let dup =
        h(&[(1, Invoke, app(1)), (1, Ok, app(1)), (3, Invoke, rl(&[])), (3, Ok, rl(&[1, 1]))]);
    assert!(append::check(&dup).unwrap().counterexamples[0].contains("appears 2 times"));
    let lost = h(&[
        (1, Invoke, app(1)),
        (1, Ok, app(1)),
        (2, Invoke, app(2)),
        (2, Ok, app(2)),
        (3, Invoke, rl(&[])),
        (3, Ok, rl(&[2])),
    ]);
    let v = append::check(&lost).unwrap();
    assert!(
        !v.valid
            && v.counterexamples.iter().any(|c| c.contains("missing from the final read: [1]")),
        "{:?}",
        v.counterexamples
    );
    let reorder = h(&[
        (1, Invoke, app(1)),
        (1, Ok, app(1)),
        (2, Invoke, app(2)),
        (2, Ok, app(2)),
        (3, Invoke, rl(&[])),
        (3, Ok, rl(&[1, 2])),
        (3, Invoke, rl(&[])),
        (3, Ok, rl(&[2, 1])),
    ]);
    assert!(!append::check(&reorder).unwrap().valid);
    let failed =
        h(&[(1, Invoke, app(1)), (1, Fail, app(1)), (3, Invoke, rl(&[])), (3, Ok, rl(&[1]))]);
    assert!(append::check(&failed).unwrap().counterexamples[0].contains("append failed"));
}

#[test]
fn histories_roundtrip_as_json_lines() {
    let events = h(&[(1, Invoke, w(1)), (1, Ok, w(1)), (2, Invoke, r(None)), (2, Ok, r(Some(1)))]);
    let text: String = events.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
    assert!(text.contains(r#""kind":"invoke""#) && text.contains(r#""f":"write""#));
    assert_eq!(ringkv_jepsen::history::parse(&text).unwrap(), events);
    assert!(ringkv_jepsen::history::parse("{not json}").is_err());
    let unmatched = h(&[(1, Ok, w(1))]);
    assert!(linearizable::check(&unmatched).is_err());
}

mod generated {
    use super::*;
    use proptest::prelude::*;

    /// A history produced by a real register: each operation takes effect at a point inside
    /// its [invoke, complete] window; events are emitted in time order. Such a history is
    /// linearizable by construction, so the checker must accept it (no false alarms).
    fn simulate(spec: &[(u64, u8, i64, u64, u64)]) -> Vec<Event> {
        // (process, kind 0=read 1=write 2=cas, value, start, length)
        let mut busy_until = std::collections::HashMap::new();
        let mut ops = Vec::new();
        for &(p, kind, v, start, len) in spec {
            let start = start.max(*busy_until.get(&p).unwrap_or(&0));
            let point = start + len / 2;
            let end = start + len;
            busy_until.insert(p, end + 1);
            ops.push((p, kind, v, start * 3, point * 3 + 1, end * 3 + 2));
        }
        // Apply in linearization-point order to compute results.
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|&i| ops[i].4);
        let mut state: Option<i64> = None;
        let mut done: Vec<(Op, Kind)> = vec![(r(None), Ok); ops.len()];
        for i in order {
            let (_, kind, v, ..) = ops[i];
            done[i] = match kind {
                0 => (r(state), Ok),
                1 => {
                    state = Some(v);
                    (w(v), Ok)
                }
                _ => match state {
                    Some(cur) => {
                        state = Some(v);
                        (cas(cur, v), Ok)
                    }
                    None => (cas(-1, v), Fail),
                },
            };
        }
        let mut events: Vec<(u64, Event)> = Vec::new();
        for (i, &(p, _, _, start, _, end)) in ops.iter().enumerate() {
            let (op, kind) = done[i].clone();
            events.push((
                start,
                Event { process: p, kind: Invoke, op: op.clone(), time_ns: start, error: None },
            ));
            events.push((end, Event { process: p, kind, op, time_ns: end, error: None }));
        }
        events.sort_by_key(|(t, _)| *t);
        events.into_iter().map(|(_, e)| e).collect()
    }

    proptest! {
        #[test]
        fn real_register_histories_are_accepted(
            spec in proptest::collection::vec((0u64..4, 0u8..3, 0i64..1000, 0u64..60, 1u64..20), 1..30)
        ) {
            let history = simulate(&spec);
            let v = linearizable::check(&history).unwrap();
            prop_assert!(v.valid, "{:?}", v.counterexamples);
        }

        /// Changing one successful read to a value never written makes the history invalid.
        #[test]
        fn a_read_of_a_value_never_written_is_rejected(
            spec in proptest::collection::vec((0u64..4, 0u8..3, 0i64..1000, 0u64..60, 1u64..20), 1..30)
        ) {
            let mut history = simulate(&spec);
            let target = history.iter().rposition(|e| e.kind == Ok && matches!(e.op, Op::Read { .. }));
            prop_assume!(target.is_some());
            if let Some(i) = target {
                history[i].op = r(Some(-42));
            }
            prop_assert!(!linearizable::check(&history).unwrap().valid);
        }
    }
}

/// A history with explicit times in milliseconds: (process, kind, op, ms).
fn timed(events: &[(u64, Kind, Op, u64)]) -> Vec<Event> {
    events
        .iter()
        .map(|(p, k, op, ms)| Event {
            process: *p,
            kind: *k,
            op: op.clone(),
            time_ns: ms * 1_000_000,
            error: None,
        })
        .collect()
}

fn sr(v: Option<i64>, staleness_ms: u64) -> Op {
    Op::StaleRead { key: "x".into(), value: v, staleness_ms: Some(staleness_ms), replica: None }
}

#[test]
fn stale_reads_within_their_bound_pass() {
    let hist = timed(&[
        (1, Invoke, w(1), 0),
        (1, Ok, w(1), 10),
        (1, Invoke, w(2), 20),
        (1, Ok, w(2), 30),
        // Overwritten at 30 ms, read at 500 ms with 0 ms reported: within the 1 s slack.
        (2, Invoke, sr(None, 0), 500),
        (2, Ok, sr(Some(1), 0), 510),
        // Read at 5 s, reporting 4.5 s without a leader: still within the bound.
        (3, Invoke, sr(None, 0), 5000),
        (3, Ok, sr(None, 4500), 5010),
        // A value being written concurrently may be seen.
        (1, Invoke, w(3), 6000),
        (4, Invoke, sr(None, 0), 6001),
        (4, Ok, sr(Some(3), 0), 6002),
        (1, Ok, w(3), 6003),
    ]);
    let v = stale::check(&hist, stale::SLACK_MS_DEFAULT).unwrap();
    assert!(v.valid, "{:?}", v.counterexamples);
    assert_eq!(v.ops, 3);
}

#[test]
fn stale_reads_beyond_their_bound_or_of_bad_values_fail() {
    let base = [
        (1, Invoke, w(1), 0),
        (1, Ok, w(1), 10),
        (1, Invoke, w(2), 20),
        (1, Ok, w(2), 30),
        (1, Invoke, w(5), 40),
        (1, Fail, w(5), 50),
    ];
    let with = |read: Op, at: u64| {
        let mut e = base.to_vec();
        e.push((2, Invoke, sr(None, 0), at));
        e.push((2, Ok, read, at + 1));
        timed(&e)
    };
    let too_old = stale::check(&with(sr(Some(1), 100), 3000), stale::SLACK_MS_DEFAULT).unwrap();
    assert!(!too_old.valid);
    assert!(too_old.counterexamples[0].contains("certainly overwritten"), "{:?}", too_old);
    assert!(!too_old.events.is_empty(), "the report needs the read's position");
    let empty_too_old = stale::check(&with(sr(None, 0), 3000), stale::SLACK_MS_DEFAULT).unwrap();
    assert!(!empty_too_old.valid, "the initial empty value was overwritten at 10 ms");
    let invented = stale::check(&with(sr(Some(9), 0), 100), stale::SLACK_MS_DEFAULT).unwrap();
    assert!(!invented.valid && invented.counterexamples[0].contains("nobody wrote"));
    let failed = stale::check(&with(sr(Some(5), 0), 100), stale::SLACK_MS_DEFAULT).unwrap();
    assert!(!failed.valid && failed.counterexamples[0].contains("failed"));
}
