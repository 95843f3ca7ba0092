//! The SDK's error: opaque, asked with `is_*` predicates. The message text is not API.

use std::fmt;

/// An error from a quorate call.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    InvalidArgument,
    UnknownLimit,
    Unavailable,
    Connect,
    Timeout,
    Protocol,
    Other,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Config,
            message: message.into(),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Protocol,
            message: message.into(),
        }
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Error {
        Error {
            kind: Kind::Timeout,
            message: message.into(),
        }
    }

    pub(crate) fn from_status(status: &tonic::Status) -> Error {
        use tonic::Code;
        let kind = match status.code() {
            Code::InvalidArgument => Kind::InvalidArgument,
            Code::NotFound => Kind::UnknownLimit,
            Code::DeadlineExceeded => Kind::Timeout,
            // tonic reports a refused or broken connection as UNAVAILABLE with a transport
            // source; a node answering "no leader / no quorum" carries no source.
            Code::Unavailable if std::error::Error::source(status).is_some() => Kind::Connect,
            Code::Unavailable => Kind::Unavailable,
            _ => Kind::Other,
        };
        Error {
            kind,
            message: format!("{:?}: {}", status.code(), status.message()),
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

    /// The cluster could not decide now (no leader, no quorum) even after following
    /// leader hints.
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// No member could be connected to.
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The call's deadline passed.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The client was misconfigured (e.g. no or invalid endpoint).
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
