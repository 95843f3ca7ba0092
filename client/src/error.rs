//! The SDK's error: opaque, asked with `is_*` predicates (hyper's style). The message
//! text is not API. A denied hit is not an error: it is a [`Decision`](crate::Decision)
//! with `allowed == false`.

/// An error from a quorate call.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Config,
    InvalidArgument,
    UnknownLimit,
    /// The cluster answered that it cannot decide now; the hits were not counted.
    Unavailable,
    /// No member could be connected to; nothing was sent.
    Connect,
    DeadlineExceeded,
    /// The request may have been counted, but its answer was lost.
    UnknownOutcome,
    Protocol,
    Other,
}

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(Kind::Config, message)
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::new(Kind::Protocol, message)
    }

    /// The same failure, now reported as "may have been counted".
    pub(crate) fn into_unknown_outcome(self) -> Error {
        Error {
            kind: Kind::UnknownOutcome,
            message: format!("outcome unknown (the hit may have been counted): {}", self),
        }
    }

    /// The request was malformed (a bad field); retrying will not help.
    pub fn is_invalid_argument(&self) -> bool {
        self.kind == Kind::InvalidArgument
    }

    /// A hit named a limit the live policy does not have.
    pub fn is_unknown_limit(&self) -> bool {
        self.kind == Kind::UnknownLimit
    }

    /// The cluster could not decide (no leader, no quorum, no member reachable) within
    /// the call's deadline. True for [`is_connect`](Self::is_connect) errors too; false for
    /// [`is_unknown_outcome`](Self::is_unknown_outcome), which is asked separately.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable | Kind::Connect)
    }

    /// No member could be connected to: nothing was sent.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The call's deadline passed before an answer (see
    /// [`Builder::timeout`](crate::Builder::timeout)).
    pub fn is_deadline_exceeded(&self) -> bool {
        self.kind == Kind::DeadlineExceeded
    }

    /// The hit may or may not have been counted: it was sent, and the answer was lost
    /// (a connection broke, a deadline passed, the leader lost its quorum). Under
    /// [`RetryPolicy::AtMostOnce`](crate::RetryPolicy::AtMostOnce) the client does not
    /// resend such a hit and reports this instead.
    pub fn is_unknown_outcome(&self) -> bool {
        self.kind == Kind::UnknownOutcome
    }

    /// The client was misconfigured (e.g. no or invalid endpoint).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The cluster could not be asked or did not answer: the cases a
    /// [`Fallback`](crate::Fallback) applies to.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self.kind,
            Kind::Unavailable | Kind::Connect | Kind::DeadlineExceeded | Kind::UnknownOutcome
        )
    }
}
