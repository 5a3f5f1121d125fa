//! STALE reads, checked against what they promise rather than against linearizability.
//!
//! A STALE read may be answered by any replica from what it has applied, with no quorum
//! round, and its response says how long ago that replica last heard from a leader
//! (`staleness_ms`). What it promises, and what this checker holds it to:
//!
//! 1. **Nothing invented**: the value read was written by some write or CAS invoked before the
//!    read completed (or the key was never written, for an empty read).
//! 2. **Nothing uncommitted**: the value was not written by an operation known to have failed.
//! 3. **Bounded staleness**: the value was still current at `read invocation − staleness_ms −
//!    slack`. A value `v` is *certainly overwritten* at time `T` when some successful write or
//!    CAS that began after `v`'s write had completed (so it is ordered after it in real time)
//!    itself completed by `T`; values are unique, so `v` can never come back. The slack covers
//!    what `staleness_ms` does not measure: the follower learns the commit index with the
//!    leader's next message (one heartbeat) and applies it a moment later.
//!
//! Reads by one client are not promised to be monotonic (the router may send consecutive
//! STALE reads to different replicas), so that is not checked.

use super::Verdict;
use crate::history::{Call, Event, HistoryError, Kind, Op, calls};
use std::collections::BTreeMap;

/// What the checker allows beyond the reported staleness: two heartbeats of the test tuning
/// and the apply of what they carried, with room for a loaded machine.
pub const SLACK_MS_DEFAULT: u64 = 1000;

struct Write {
    value: i64,
    outcome: Kind,
    invoke_ns: u64,
    /// `None` when it never completed or its outcome is unknown.
    complete_ns: Option<u64>,
}

pub fn check(events: &[Event], slack_ms: u64) -> Result<Verdict, HistoryError> {
    let all = calls(events)?;
    let time = |i: usize| events[i].time_ns;
    let mut writes: BTreeMap<&str, Vec<Write>> = BTreeMap::new();
    let mut reads: Vec<&Call> = Vec::new();
    for c in &all {
        let value = match &c.op {
            Op::Write { value, .. } => *value,
            Op::Cas { to, .. } => *to,
            Op::StaleRead { .. } if c.outcome == Kind::Ok => {
                reads.push(c);
                continue;
            }
            _ => continue,
        };
        writes.entry(c.op.key()).or_default().push(Write {
            value,
            outcome: c.outcome,
            invoke_ns: time(c.invoke_index),
            complete_ns: c.complete_index.filter(|_| c.outcome == Kind::Ok).map(time),
        });
    }
    let none: Vec<Write> = Vec::new();
    let mut bad: Vec<(String, Vec<usize>)> = Vec::new();
    for r in &reads {
        let Op::StaleRead { key, value, staleness_ms, replica } = &r.op else { continue };
        let ws = writes.get(key.as_str()).unwrap_or(&none);
        let read_invoke = time(r.invoke_index);
        let read_done = r.complete_index.map_or(u64::MAX, time);
        let at = [Some(r.invoke_index), r.complete_index].into_iter().flatten().collect();
        // When the value read was written: its writer's completion, 0 for the initial empty
        // register; None if the writer's completion is unknown (then it cannot be shown stale).
        let written_done: Option<u64> = match value {
            None => Some(0),
            Some(v) => {
                let Some(w) = ws.iter().find(|w| w.value == *v) else {
                    bad.push((
                        format!("key {key}: stale read returned {v}, which nobody wrote"),
                        at,
                    ));
                    continue;
                };
                if w.outcome == Kind::Fail {
                    bad.push((
                        format!("key {key}: stale read returned {v}, whose write failed"),
                        at,
                    ));
                    continue;
                }
                if w.invoke_ns > read_done {
                    bad.push((
                        format!("key {key}: stale read returned {v} before anyone wrote it"),
                        at,
                    ));
                    continue;
                }
                w.complete_ns
            }
        };
        let Some(written_done) = written_done else { continue };
        let overwritten = ws
            .iter()
            .filter(|w| w.outcome == Kind::Ok && w.invoke_ns > written_done)
            .filter_map(|w| w.complete_ns)
            .min();
        let allowed_ms = staleness_ms.unwrap_or(0) + slack_ms;
        if let Some(t) = overwritten
            && t.saturating_add(allowed_ms * 1_000_000) < read_invoke
        {
            bad.push((
                format!(
                    "key {key}: stale read (invoked at {} ms) returned {value:?}, certainly \
                     overwritten at {} ms: {} ms old, more than the reported staleness {} ms + \
                     slack {slack_ms} ms (replica node, term, applied index: {replica:?})",
                    read_invoke / 1_000_000,
                    t / 1_000_000,
                    (read_invoke - t) / 1_000_000,
                    staleness_ms.unwrap_or(0)
                ),
                at,
            ));
        }
    }
    bad.sort_by_key(|(s, _)| s.len());
    let events_at = bad.first().map(|(_, at)| at.clone()).unwrap_or_default();
    Ok(Verdict {
        checker: "stale-read",
        valid: bad.is_empty(),
        ops: reads.len(),
        counterexamples: bad.into_iter().map(|(s, _)| s).take(20).collect(),
        events: events_at,
        unknown: Vec::new(),
    })
}
