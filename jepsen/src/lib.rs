//! ringkv's chaos harness: histories of concurrent operations, and checkers that decide
//! whether a history is allowed by the consistency model ringkv promises.
//!
//! A history is what clients saw: for each operation an `invoke` event when it was sent and
//! one completion: `ok` (it happened, with its result), `fail` (it certainly did not happen)
//! or `info` (unknown: a timeout or a lost connection; it may have happened at any point after
//! its invocation, or never). Checkers take a history and return a verdict with, when it is
//! invalid, a counterexample small enough to read.

pub mod checker;
pub mod clients;
pub mod edn;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod runner;
pub mod workload;

pub use checker::Verdict;
pub use history::{Event, Kind, Op};
