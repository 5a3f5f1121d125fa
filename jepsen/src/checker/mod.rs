//! Checkers: each takes a history and returns a [`Verdict`].

pub mod append;
pub mod events;
pub mod linearizable;
pub mod stale;

/// A checker's decision. `valid: false` comes with a counterexample, or, when the checker could
/// not decide within its limits, with the reason in `unknown` (not valid, but not proven
/// invalid either).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub valid: bool,
    /// Operations examined.
    pub ops: usize,
    /// What went wrong, smallest first, when invalid.
    pub counterexamples: Vec<String>,
    /// History positions (event indices) of the first counterexample's operations, so a
    /// report can show the faults around it.
    #[serde(default)]
    pub events: Vec<usize>,
    /// What could not be decided, and why (a search that hit its limit).
    #[serde(default)]
    pub unknown: Vec<String>,
}

impl Verdict {
    /// `VALID`, `INVALID` (a counterexample was found) or `UNKNOWN` (undecided, no
    /// counterexample).
    pub fn outcome(&self) -> &'static str {
        match (self.valid, self.counterexamples.is_empty()) {
            (true, _) => "VALID",
            (false, false) => "INVALID",
            (false, true) => "UNKNOWN",
        }
    }
}
