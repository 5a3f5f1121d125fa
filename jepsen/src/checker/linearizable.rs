//! Linearizability of read / write / compare-and-swap registers, one per key.
//!
//! The search is Wing & Gong's, with Lowe's improvements (as in Porcupine): walk the history's
//! call and return events in order; at a call, try to linearize that operation now (if the
//! register allows it from the current state) and remember where we were; at the return of an
//! operation not yet linearized, the current path is impossible, so undo the last choice and
//! try the next one. A cache of (set of linearized operations, register state) prunes paths
//! already known to fail, which keeps the search fast on histories with little concurrency.
//!
//! Completed outcomes:
//! - `ok`: happened, between its invocation and its completion;
//! - `fail`: did not happen; dropped;
//! - `info` (or never completed): may have happened at any time after its invocation, or
//!   never. A read with an unknown result constrains nothing and is dropped; an unknown write
//!   or CAS is a call with no return, which the search may linearize or leave out.
//!
//! Keys are independent registers, so each key is checked on its own (exponentially cheaper
//! than checking them together).
//!
//! Unknown writes nobody saw are dropped before the search. The search may leave any unknown
//! operation out, so each one doubles the subsets it can explore; during a long outage a key
//! collects hundreds of them (a 6-minute campaign had a key with 362, and the search ran for
//! hours). An unknown write or CAS whose value no read returned and no CAS expected changes
//! nothing: in any linearization that includes it, the next kept operation cannot depend on
//! its value, so it is a blind write (or nothing), and removing the unknown operation leaves
//! a valid linearization; leaving it out is always allowed. This holds for a whole set of such
//! operations at once as long as only operations inside the set expect their values, so the
//! set is grown to a fixpoint. Values are unique per run, so "nobody saw it" is exact.
//!
//! What remains is still exponential in the worst case, so the search is bounded: past
//! [`SEARCH_STEPS_MAX`] steps or [`CACHE_WORDS_MAX`] words of cache a key is reported as
//! *unknown* (neither valid nor a counterexample) instead of running for hours.

use super::Verdict;
use crate::history::{Call, Event, HistoryError, Kind, Op, calls};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Steps (call or return events visited) the search takes for one key before giving up.
/// About a second per ten million steps; checks that pass take well under a million.
pub const SEARCH_STEPS_MAX: u64 = 50_000_000;

/// Memory the search's cache may hold for one key, in 64-bit words (2 GiB): each entry is a
/// bitset over the key's operations.
pub const CACHE_WORDS_MAX: usize = 256 << 20;

/// How far the search for one key may go before the key is reported undecided.
#[derive(Debug, Clone, Copy)]
pub struct SearchLimits {
    pub steps_max: u64,
    pub cache_words_max: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits { steps_max: SEARCH_STEPS_MAX, cache_words_max: CACHE_WORDS_MAX }
    }
}

/// Why a key failed to check.
enum KeyFailure {
    /// Not linearizable: why, and the history positions to show.
    Invalid(String, Vec<usize>),
    /// The search hit a limit before deciding.
    Undecided(String),
}

type State = Option<i64>;

/// Applies `op` to the register, or `None` if `op` cannot happen in `state`.
fn step(state: State, op: &Op) -> Option<State> {
    match op {
        Op::Read { value, .. } => (*value == state).then_some(state),
        Op::Write { value, .. } => Some(Some(*value)),
        Op::Cas { from, to, .. } => (state == Some(*from)).then_some(Some(*to)),
        Op::Append { .. }
        | Op::ReadList { .. }
        | Op::StaleRead { .. }
        | Op::Produce { .. }
        | Op::ReadPartition { .. } => None,
    }
}

/// Largest number of operations per key the search accepts; bounds its memory.
pub const OPS_PER_KEY_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    call: bool,
    op: usize,
    /// For a call: the index of its return entry, if it has one.
    ret: Option<usize>,
}

/// Checks one key's operations; returns a counterexample if they are not linearizable.
fn check_key(ops: &[Call], limits: SearchLimits) -> Result<(), KeyFailure> {
    // Events in history order: (position, is_return, op index).
    let mut points: Vec<(usize, bool, usize)> = Vec::new();
    for (i, c) in ops.iter().enumerate() {
        points.push((c.invoke_index, false, i));
        if c.outcome == Kind::Ok
            && let Some(done) = c.complete_index
        {
            points.push((done, true, i));
        }
    }
    points.sort();
    let n = points.len();
    let mut entries: Vec<Entry> =
        points.iter().map(|&(_, is_ret, op)| Entry { call: !is_ret, op, ret: None }).collect();
    let mut ret_of = vec![None; ops.len()];
    for (i, e) in entries.iter().enumerate() {
        if !e.call {
            ret_of[e.op] = Some(i);
        }
    }
    for e in entries.iter_mut() {
        if e.call {
            e.ret = ret_of[e.op];
        }
    }
    // A circular doubly linked list over the entries, with a sentinel head at index n.
    let head = n;
    let mut next: Vec<usize> =
        (0..=n).map(|i| if i == n { if n == 0 { n } else { 0 } } else { i + 1 }).collect();
    let mut prev: Vec<usize> = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
    if n == 0 {
        prev[n] = n;
    }
    let unlink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[i], next[i]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[i], next[i]);
        next[p] = i;
        prev[q] = i;
    };
    let must = ops.iter().filter(|c| c.outcome == Kind::Ok).count();
    let mut done_must = 0usize;
    // A bitset (64 operations a word): the cache holds one per step of the search, so its
    // size is what bounds the memory of checking long histories.
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let bit = |i: usize| (i / 64, 1u64 << (i % 64));
    let mut state: State = None;
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut steps = 0u64;
    // The operation at which the longest path (most operations linearized) got stuck: the
    // most useful counterexample, since everything before it was explainable.
    let mut stuck: (usize, usize) = (0, 0);
    let mut cur = next[head];
    while done_must < must {
        steps += 1;
        if steps > limits.steps_max || cache.len() * (linearized.len() + 2) > limits.cache_words_max
        {
            return Err(KeyFailure::Undecided(format!(
                "search gave up after {steps} steps with {} cached states ({} operations, {} of unknown outcome)",
                cache.len(),
                ops.len(),
                ops.len() - must
            )));
        }
        if cur == head {
            // Only unknown-outcome calls are left unlinked on this path but some ok operation is
            // not linearized: impossible, since every ok op has a return entry we would meet.
            return Err(KeyFailure::Invalid(
                "search ran past the end of the history".into(),
                Vec::new(),
            ));
        }
        let e = entries[cur];
        if e.call {
            if let Some(new_state) = step(state, &ops[e.op].op) {
                let mut set = linearized.clone();
                let (w, b) = bit(e.op);
                set[w] |= b;
                if cache.insert((set, new_state)) {
                    stack.push((cur, state));
                    state = new_state;
                    linearized[w] |= b;
                    if ops[e.op].outcome == Kind::Ok {
                        done_must += 1;
                    }
                    unlink(cur, &mut next, &mut prev);
                    if let Some(r) = e.ret {
                        unlink(r, &mut next, &mut prev);
                    }
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // The return of an operation we did not linearize before it: backtrack.
            if stack.len() >= stuck.0 {
                stuck = (stack.len(), e.op);
            }
            let Some((call_entry, old_state)) = stack.pop() else {
                let c = &ops[stuck.1];
                let concurrent: Vec<String> = ops
                    .iter()
                    .filter(|o| {
                        o.invoke_index < c.complete_index.unwrap_or(usize::MAX)
                            && o.complete_index.unwrap_or(usize::MAX) > c.invoke_index
                            && o.invoke_index != c.invoke_index
                    })
                    .take(8)
                    .map(describe)
                    .collect();
                let events =
                    [Some(c.invoke_index), c.complete_index].into_iter().flatten().collect();
                return Err(KeyFailure::Invalid(
                    format!(
                        "{} cannot be linearized with the operations before it; concurrent with: [{}]",
                        describe(c),
                        concurrent.join(", ")
                    ),
                    events,
                ));
            };
            let ce = entries[call_entry];
            if let Some(r) = ce.ret {
                relink(r, &mut next, &mut prev);
            }
            relink(call_entry, &mut next, &mut prev);
            let (w, b) = bit(ce.op);
            linearized[w] &= !b;
            if ops[ce.op].outcome == Kind::Ok {
                done_must -= 1;
            }
            state = old_state;
            cur = next[call_entry];
        }
    }
    Ok(())
}

fn describe(c: &Call) -> String {
    let what = match &c.op {
        Op::Read { value, .. } => format!("read -> {value:?}"),
        Op::Write { value, .. } => format!("write {value}"),
        Op::Cas { from, to, .. } => format!("cas {from}->{to}"),
        other => format!("{other:?}"),
    };
    let done = c
        .complete_index
        .map_or("never completed".to_string(), |i| format!("{:?} at event {i}", c.outcome));
    format!("process {} {what} (invoked at event {}, {done})", c.process, c.invoke_index)
}

/// Removes the unknown-outcome writes and CASes of one key whose value no read returned and
/// no remaining CAS expected (see the module comment for why the verdict cannot change).
///
/// Keeping a CAS makes its `from` value expected, which may keep the unknown operations that
/// wrote it, and so on: a worklist of expected values, each visited once (linear in the
/// key's operations), gives the largest set that can go.
fn drop_unseen_unknown_writes(calls: Vec<Call>) -> Vec<Call> {
    let mut keep: Vec<bool> = vec![true; calls.len()];
    // Unknown operations by the value they write; all start dropped.
    let mut writers: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, c) in calls.iter().enumerate() {
        if c.outcome != Kind::Ok
            && let Op::Write { value, .. } | Op::Cas { to: value, .. } = &c.op
        {
            writers.entry(*value).or_default().push(i);
            keep[i] = false;
        }
    }
    let mut expected: Vec<i64> = Vec::new();
    for (c, kept) in calls.iter().zip(&keep) {
        match (&c.op, c.outcome) {
            (Op::Read { value: Some(v), .. }, Kind::Ok) => expected.push(*v),
            (Op::Cas { from, .. }, _) if *kept => expected.push(*from),
            _ => {}
        }
    }
    while let Some(v) = expected.pop() {
        // `remove`: each value's writers are brought back at most once.
        for i in writers.remove(&v).unwrap_or_default() {
            keep[i] = true;
            if let Op::Cas { from, .. } = &calls[i].op {
                expected.push(*from);
            }
        }
    }
    calls.into_iter().zip(keep).filter(|(_, kept)| *kept).map(|(c, _)| c).collect()
}

/// Checks every key of a register history.
pub fn check(events: &[Event]) -> Result<Verdict, HistoryError> {
    check_with(events, SearchLimits::default())
}

/// [`check`] with explicit search limits.
pub fn check_with(events: &[Event], limits: SearchLimits) -> Result<Verdict, HistoryError> {
    let all = calls(events)?;
    let mut by_key: BTreeMap<&str, Vec<Call>> = BTreeMap::new();
    let mut ops = 0;
    for c in &all {
        let keep = match (&c.op, c.outcome) {
            (_, Kind::Fail) => false,
            // A read whose result is unknown says nothing.
            (Op::Read { .. }, k) => k == Kind::Ok,
            (Op::Write { .. } | Op::Cas { .. }, _) => true,
            _ => false,
        };
        if keep {
            by_key.entry(c.op.key()).or_default().push(c.clone());
            ops += 1;
        }
    }
    let mut counterexamples = Vec::new();
    let mut unknown = Vec::new();
    let mut events = Vec::new();
    for (key, calls) in by_key {
        let calls = drop_unseen_unknown_writes(calls);
        if calls.len() > OPS_PER_KEY_MAX {
            unknown.push(format!(
                "key {key}: {} operations exceed the checker's limit of {OPS_PER_KEY_MAX}",
                calls.len()
            ));
            continue;
        }
        match check_key(&calls, limits) {
            Ok(()) => {}
            Err(KeyFailure::Invalid(why, at)) => {
                counterexamples.push(format!("key {key}: {why}"));
                if events.is_empty() {
                    events = at;
                }
            }
            Err(KeyFailure::Undecided(why)) => unknown.push(format!("key {key}: {why}")),
        }
    }
    Ok(Verdict {
        checker: "linearizable-register",
        valid: counterexamples.is_empty() && unknown.is_empty(),
        ops,
        counterexamples,
        events,
        unknown,
    })
}
