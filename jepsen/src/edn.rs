//! Export of a history to Jepsen's EDN, so third-party checkers can re-check it.
//!
//! One map per line, as Jepsen writes `history.edn`, with `:index`, `:time` (ns),
//! `:process`, `:type` and:
//! - register operations in `jepsen.independent` form, for Knossos or Porcupine: `:f` is
//!   `:read`, `:write` or `:cas` and `:value` is `[key value]`, with `[from to]` as a CAS's
//!   value; keys are strings (`"r0"`);
//! - append operations as Elle list-append transactions of one micro-op: `:f :txn`,
//!   `:value [[:append key element]]` or `[[:r key [elements]]]`, keys as integers (`a2.7` →
//!   2000007);
//! - event appends and partition reads the same way (a partition is a list; keys `e<g>.<k>`
//!   become 10^12 + g × 1,000,000 + k);
//! - STALE reads with `:f :stale-read` and the reported `:staleness-ms`, for filtering (they
//!   do not promise linearizability, so a register checker must leave them out).

use crate::history::{Event, Kind, Op};
use std::fmt::Write;

fn opt(v: Option<i64>) -> String {
    v.map_or("nil".into(), |v| v.to_string())
}

/// `a<generation>.<k>` → generation × 1,000,000 + k (Elle wants integer keys); event
/// partitions `e<generation>.<k>` → 10^12 + the same; other keys unchanged, as strings.
fn list_key(key: &str) -> String {
    let (base, rest) = match (key.strip_prefix('a'), key.strip_prefix('e')) {
        (Some(rest), _) => (0, Some(rest)),
        (None, Some(rest)) => (1_000_000_000_000, Some(rest)),
        _ => (0, None),
    };
    let parsed = rest.and_then(|rest| {
        let (g, k) = rest.split_once('.').unwrap_or(("0", rest));
        Some(base + g.parse::<u64>().ok()? * 1_000_000 + k.parse::<u64>().ok()?)
    });
    parsed.map_or_else(|| format!("{key:?}"), |k| k.to_string())
}

fn value(op: &Op, kind: Kind) -> (&'static str, String) {
    // An invocation of a read does not know its result yet.
    let done = kind != Kind::Invoke;
    match op {
        Op::Read { key, value } => {
            ("read", format!("[{key:?} {}]", if done { opt(*value) } else { "nil".into() }))
        }
        Op::Write { key, value } => ("write", format!("[{key:?} {value}]")),
        Op::Cas { key, from, to } => ("cas", format!("[{key:?} [{from} {to}]]")),
        Op::StaleRead { key, value, .. } => {
            ("stale-read", format!("[{key:?} {}]", if done { opt(*value) } else { "nil".into() }))
        }
        Op::Append { key, element } | Op::Produce { key, element, .. } => {
            ("txn", format!("[[:append {} {element}]]", list_key(key)))
        }
        Op::ReadList { key, value } | Op::ReadPartition { key, value } => {
            let list = match value {
                Some(l) if done => {
                    format!("[{}]", l.iter().map(i64::to_string).collect::<Vec<_>>().join(" "))
                }
                _ => "nil".into(),
            };
            ("txn", format!("[[:r {} {list}]]", list_key(key)))
        }
    }
}

/// The history as EDN, one operation map per line.
pub fn export(events: &[Event]) -> String {
    let mut out = String::new();
    for (index, e) in events.iter().enumerate() {
        let kind = match e.kind {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        };
        let (f, v) = value(&e.op, e.kind);
        let _ = write!(
            out,
            "{{:index {index}, :time {}, :type :{kind}, :process {}, :f :{f}, :value {v}",
            e.time_ns, e.process
        );
        if let Op::StaleRead { staleness_ms: Some(ms), .. } = &e.op {
            let _ = write!(out, ", :staleness-ms {ms}");
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(process: u64, kind: Kind, op: Op) -> Event {
        Event { process, kind, op, time_ns: 5, error: None }
    }

    #[test]
    fn register_and_list_ops_in_jepsen_form() {
        let h = vec![
            ev(0, Kind::Invoke, Op::Read { key: "r1".into(), value: None }),
            ev(0, Kind::Ok, Op::Read { key: "r1".into(), value: Some(3) }),
            ev(1, Kind::Invoke, Op::Cas { key: "r1".into(), from: 3, to: 4 }),
            ev(2, Kind::Invoke, Op::Append { key: "a2.7".into(), element: 9 }),
            ev(3, Kind::Ok, Op::ReadList { key: "a2.7".into(), value: Some(vec![1, 9]) }),
        ];
        let lines: Vec<String> = export(&h).lines().map(String::from).collect();
        assert_eq!(
            lines[0],
            "{:index 0, :time 5, :type :invoke, :process 0, :f :read, :value [\"r1\" nil]}"
        );
        assert!(lines[1].ends_with(":f :read, :value [\"r1\" 3]}"));
        assert!(lines[2].ends_with(":f :cas, :value [\"r1\" [3 4]]}"));
        assert!(lines[3].ends_with(":f :txn, :value [[:append 2000007 9]]}"));
        assert!(lines[4].ends_with(":type :ok, :process 3, :f :txn, :value [[:r 2000007 [1 9]]]}"));
    }
}
