//! The events workload's checker: partitions are lists that only grow, by appends that each
//! land once, at the offset their producer was told.
//!
//! A partition read is a list read and a produce is a list append, so the append checker's
//! rules apply unchanged (every read a prefix of every longer one, no element twice, nothing
//! invented, nothing from a failed append, nothing acknowledged lost). On top of them, offsets:
//! every acknowledged produce's element must sit at the offset its append returned, in the
//! final read of its partition.

use super::{Verdict, append};
use crate::history::{Event, HistoryError, Kind, Op, calls};
use std::collections::HashMap;

pub fn check(events: &[Event]) -> Result<Verdict, HistoryError> {
    // The same history seen as list operations; `positions` maps back to history indices.
    let mut positions = Vec::new();
    let mut as_lists = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let op = match &e.op {
            Op::Produce { key, element, .. } => Op::Append { key: key.clone(), element: *element },
            Op::ReadPartition { key, value } => {
                Op::ReadList { key: key.clone(), value: value.clone() }
            }
            _ => continue,
        };
        positions.push(i);
        as_lists.push(Event { op, ..e.clone() });
    }
    let mut verdict = append::check(&as_lists)?;
    verdict.checker = "events";
    verdict.events = verdict.events.iter().filter_map(|&i| positions.get(i).copied()).collect();

    let all = calls(events)?;
    let mut finals: HashMap<&str, (usize, &Vec<i64>)> = HashMap::new();
    for c in &all {
        if let (Op::ReadPartition { key, value: Some(v) }, Kind::Ok) = (&c.op, c.outcome) {
            let at = c.complete_index.unwrap_or(c.invoke_index);
            if finals.get(key.as_str()).is_none_or(|(prev, _)| at > *prev) {
                finals.insert(key, (at, v));
            }
        }
    }
    let mut misplaced = Vec::new();
    for c in &all {
        if let (Op::Produce { key, element, offset: Some(offset) }, Kind::Ok) = (&c.op, c.outcome)
            && let Some((at, list)) = finals.get(key.as_str())
        {
            let found = usize::try_from(*offset).ok().and_then(|o| list.get(o));
            if found != Some(element) {
                misplaced.push((
                    format!(
                        "partition {key}: element {element} was acknowledged at offset {offset}, but the final read (event {at}) has {found:?} there"
                    ),
                    c.complete_index.unwrap_or(c.invoke_index),
                ));
            }
        }
    }
    if !misplaced.is_empty() {
        misplaced.sort_by_key(|(s, _)| s.len());
        if verdict.valid {
            verdict.events = vec![misplaced[0].1];
        }
        verdict.valid = false;
        verdict.counterexamples.extend(misplaced.into_iter().map(|(s, _)| s));
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(process: u64, kind: Kind, op: Op) -> Event {
        Event { process, kind, op, time_ns: 0, error: None }
    }

    fn produce(process: u64, element: i64, offset: Option<u64>) -> [Event; 2] {
        let key = "e0.0".to_string();
        [
            ev(process, Kind::Invoke, Op::Produce { key: key.clone(), element, offset: None }),
            ev(process, Kind::Ok, Op::Produce { key, element, offset }),
        ]
    }

    fn read(process: u64, value: Vec<i64>) -> [Event; 2] {
        let key = "e0.0".to_string();
        [
            ev(process, Kind::Invoke, Op::ReadPartition { key: key.clone(), value: None }),
            ev(process, Kind::Ok, Op::ReadPartition { key, value: Some(value) }),
        ]
    }

    #[test]
    fn offsets_and_duplicates_are_checked() {
        let good: Vec<Event> =
            [produce(1, 10, Some(0)), produce(1, 11, Some(1)), read(2, vec![10, 11])].concat();
        assert!(check(&good).unwrap().valid);
        let moved: Vec<Event> =
            [produce(1, 10, Some(1)), produce(1, 11, Some(0)), read(2, vec![10, 11])].concat();
        let v = check(&moved).unwrap();
        assert!(!v.valid && v.counterexamples[0].contains("offset"), "{v:?}");
        let twice: Vec<Event> = [produce(1, 10, Some(0)), read(2, vec![10, 10])].concat();
        assert!(!check(&twice).unwrap().valid);
        let lost: Vec<Event> = [produce(1, 10, Some(0)), read(2, vec![])].concat();
        assert!(!check(&lost).unwrap().valid);
    }
}
