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

/// What a verdict, or a set of them, amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    /// A counterexample was found.
    Invalid,
    /// Undecided: no counterexample, but not shown valid either (or nothing was checked).
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "VALID",
            Outcome::Invalid => "INVALID",
            Outcome::Unknown => "UNKNOWN",
        }
    }

    /// Of several verdicts: invalid if any is, valid if there are some and all are, else
    /// unknown.
    pub fn of(verdicts: &[Verdict]) -> Outcome {
        if verdicts.iter().any(|v| v.outcome() == Outcome::Invalid) {
            Outcome::Invalid
        } else if !verdicts.is_empty() && verdicts.iter().all(|v| v.valid) {
            Outcome::Valid
        } else {
            Outcome::Unknown
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Verdict {
    pub fn outcome(&self) -> Outcome {
        match (self.valid, self.counterexamples.is_empty()) {
            (true, _) => Outcome::Valid,
            (false, false) => Outcome::Invalid,
            (false, true) => Outcome::Unknown,
        }
    }
}
