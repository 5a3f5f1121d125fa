//! Checkers: each takes a history and returns a [`Verdict`].

pub mod append;
pub mod events;
pub mod linearizable;
pub mod stale;

/// A checker's decision. `valid: false` always comes with a counterexample.
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
}
