//! The append workload's checker: lists that only grow by unique elements.
//!
//! For each key:
//! - every read is a prefix of every longer read (a list never loses or reorders elements);
//! - no element appears twice in a read (an append applied once);
//! - every element read was attempted by some append, and no failed append is ever read
//!   (nothing invented, nothing uncommitted);
//! - every acknowledged append is in the key's final read (nothing lost). The final read is the
//!   last successful read of the key in the history, which the harness takes after healing.

use super::Verdict;
use crate::history::{Event, HistoryError, Kind, Op, calls};
use std::collections::{BTreeMap, HashMap, HashSet};

pub fn check(events: &[Event]) -> Result<Verdict, HistoryError> {
    let all = calls(events)?;
    #[derive(Default)]
    struct KeyLog {
        acked: HashSet<i64>,
        failed: HashSet<i64>,
        attempted: HashSet<i64>,
        reads: Vec<(usize, Vec<i64>)>,
    }
    let mut keys: BTreeMap<String, KeyLog> = BTreeMap::new();
    let mut ops = 0;
    for c in &all {
        match &c.op {
            Op::Append { key, element } => {
                ops += 1;
                let k = keys.entry(key.clone()).or_default();
                k.attempted.insert(*element);
                match c.outcome {
                    Kind::Ok => {
                        k.acked.insert(*element);
                    }
                    Kind::Fail => {
                        k.failed.insert(*element);
                    }
                    _ => {}
                }
            }
            Op::ReadList { key, value } if c.outcome == Kind::Ok => {
                ops += 1;
                let at = c.complete_index.unwrap_or(c.invoke_index);
                keys.entry(key.clone())
                    .or_default()
                    .reads
                    .push((at, value.clone().unwrap_or_default()));
            }
            _ => {}
        }
    }
    let mut bad: Vec<(String, usize)> = Vec::new();
    for (key, k) in &keys {
        let mut reads = k.reads.clone();
        reads.sort_by_key(|(at, _)| *at);
        for (at, r) in &reads {
            let mut counts: HashMap<i64, usize> = HashMap::new();
            for e in r {
                *counts.entry(*e).or_default() += 1;
            }
            for (e, n) in counts {
                if n > 1 {
                    bad.push((
                        format!(
                            "key {key}: element {e} appears {n} times in the read completed at event {at}"
                        ),
                        *at,
                    ));
                }
                if !k.attempted.contains(&e) {
                    bad.push((
                        format!("key {key}: element {e} was read (event {at}) but never appended"),
                        *at,
                    ));
                }
                if k.failed.contains(&e) {
                    bad.push((
                        format!(
                            "key {key}: element {e} was read (event {at}) but its append failed"
                        ),
                        *at,
                    ));
                }
            }
        }
        let mut by_len = reads.clone();
        by_len.sort_by_key(|(_, r)| r.len());
        for w in by_len.windows(2) {
            let (short, long) = (&w[0].1, &w[1].1);
            if long[..short.len()] != short[..] {
                bad.push((
                    format!(
                        "key {key}: read at event {} ({short:?}) is not a prefix of read at event {} ({long:?})",
                        w[0].0, w[1].0
                    ),
                    w[1].0,
                ));
            }
        }
        let last_at = reads.last().map_or(0, |(at, _)| *at);
        let last = reads
            .last()
            .map(|(_, r)| r.iter().copied().collect::<HashSet<_>>())
            .unwrap_or_default();
        let mut lost: Vec<i64> = k.acked.iter().filter(|e| !last.contains(e)).copied().collect();
        lost.sort_unstable();
        if !lost.is_empty() {
            bad.push((
                format!("key {key}: acknowledged appends missing from the final read: {lost:?}"),
                last_at,
            ));
        }
    }
    bad.sort_by_key(|(s, _)| s.len());
    let events = bad.first().map(|(_, at)| vec![*at]).unwrap_or_default();
    Ok(Verdict {
        checker: "append",
        valid: bad.is_empty(),
        ops,
        counterexamples: bad.into_iter().map(|(s, _)| s).collect(),
        events,
        unknown: Vec::new(),
    })
}
