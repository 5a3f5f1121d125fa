//! Errors of the routing core. A node's own error (with its status details) is passed through
//! unchanged; the routing core adds only what it decides itself.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A node's answer that retrying cannot change (bad input, a failed precondition...), or
    /// the last answer when retries ran out.
    #[error("{0}")]
    Node(Status),
    #[error("no seed node answered with a shard map: {0}")]
    NoMap(String),
    #[error("deadline of {deadline_ms} ms exceeded after {attempts} attempts; last error: {last}")]
    Deadline { deadline_ms: u64, attempts: u32, last: String },
    #[error("retry budget exhausted after {attempts} attempts; last error: {last}")]
    BudgetExhausted { attempts: u32, last: String },
    #[error("invalid request: {0}")]
    InvalidArgument(String),
}

impl RoutingError {
    /// The status to return to a caller of the router.
    pub fn to_status(&self) -> Status {
        match self {
            RoutingError::Node(s) => s.clone(),
            RoutingError::NoMap(_) | RoutingError::BudgetExhausted { .. } => {
                Status::unavailable(self.to_string())
            }
            RoutingError::Deadline { .. } => Status::deadline_exceeded(self.to_string()),
            RoutingError::InvalidArgument(_) => {
                Status::new(Code::InvalidArgument, self.to_string())
            }
        }
    }
}

impl From<RoutingError> for Status {
    fn from(e: RoutingError) -> Status {
        e.to_status()
    }
}
