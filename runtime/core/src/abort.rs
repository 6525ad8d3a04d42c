//! Why a run ends from the host's side: a limit the runner or a host
//! capability enforces, the store failing, the operator stopping it. Raised
//! as a trap (not a value the guest sees); the sandbox maps each to a run
//! status.

/// An error a host capability raises to end the run (a trap, not a value the
/// guest sees). The sandbox maps each to a run status.
#[derive(Debug, thiserror::Error)]
pub enum HostAbort {
    #[error("records emitted since the last commit exceed {limit} bytes; the connector must commit state more often")]
    UncommittedLimit { limit: u64 },
    #[error("the store failed: {0}")]
    Store(String),
    #[error(
        "the run's wall-clock deadline passed (while the host checked the connector's records)"
    )]
    Deadline,
    #[error("stopped by the operator at a commit")]
    Cancelled,
    #[error("the run's HTTP request budget of {limit} requests is spent")]
    HttpBudget { limit: u64 },
    #[error("the host refused more than {limit} of the run's HTTP requests (denied or invalid); the last: {last}")]
    HttpDeniedLimit { limit: u64, last: String },
    #[error("the run's responses exceed {limit} bytes in all")]
    HttpBytes { limit: u64 },
    #[error("the run's records exceed {limit} bytes in all")]
    EmitBytes { limit: u64 },
    #[error("a record of stream {stream} is {size} bytes, over the {limit}-byte record limit")]
    RecordTooLarge {
        stream: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "the state value of stream {stream} is {size} bytes, over the {limit}-byte state limit"
    )]
    StateTooLarge {
        stream: String,
        size: u64,
        limit: u64,
    },
}

impl HostAbort {
    /// The run status this abort ends a run with.
    pub fn status(&self) -> crate::run::RunStatus {
        use crate::run::RunStatus;
        match self {
            HostAbort::UncommittedLimit { .. } => RunStatus::UncommittedLimit,
            HostAbort::Store(_) => RunStatus::StoreError,
            HostAbort::Deadline => RunStatus::Deadline,
            HostAbort::Cancelled => RunStatus::Cancelled,
            HostAbort::HttpBudget { .. } => RunStatus::HttpBudget,
            HostAbort::HttpDeniedLimit { .. } => RunStatus::HttpDeniedLimit,
            HostAbort::HttpBytes { .. } => RunStatus::HttpBytesLimit,
            HostAbort::EmitBytes { .. } => RunStatus::EmitBytesLimit,
            HostAbort::RecordTooLarge { .. } => RunStatus::RecordTooLarge,
            HostAbort::StateTooLarge { .. } => RunStatus::StateTooLarge,
        }
    }
}
