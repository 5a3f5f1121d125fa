//! Checkers: each takes a history and returns a [`Verdict`].

pub mod append;
pub mod linearizable;

/// A checker's decision. `valid: false` always comes with a counterexample.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub valid: bool,
    /// Operations examined.
    pub ops: usize,
    /// What went wrong, smallest first, when invalid.
    pub counterexamples: Vec<String>,
}
