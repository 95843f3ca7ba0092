//! The one place errors become wire errors: every failure a surface answers has an
//! [`ErrorKind`], and [`ErrorKind::codes`] is the one mapping from a kind to its gRPC code
//! and HTTP status. Engine errors, authorization failures and admin errors each name
//! their kind; the adapters only encode.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::decide::authz::{AuthzError, DenyKind};
use crate::engine::EngineError;

pub use quorate_proto::wire::{LEADER_HEADER, NOT_APPLIED_HEADER};

/// What went wrong, as far as a client needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed.
    InvalidArgument,
    /// No valid credentials.
    Unauthenticated,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with the current state (membership, policy version).
    Conflict,
    /// The request body is larger than allowed.
    TooLarge,
    /// Well-formed, but its content is refused (a policy that does not validate).
    Unprocessable,
    /// No leader, no quorum.
    Unavailable,
    /// Another node did not answer usefully.
    BadGateway,
    /// Another node or Raft did not answer in time.
    Timeout,
    /// A bug or an unexpected state; logged where it happens.
    Internal,
}

impl ErrorKind {
    /// The one mapping: the gRPC code and HTTP status of each kind.
    pub fn codes(self) -> (Code, u16) {
        match self {
            ErrorKind::InvalidArgument => (Code::InvalidArgument, 400),
            ErrorKind::Unauthenticated => (Code::Unauthenticated, 401),
            ErrorKind::NotFound => (Code::NotFound, 404),
            ErrorKind::Conflict => (Code::FailedPrecondition, 409),
            ErrorKind::TooLarge => (Code::ResourceExhausted, 413),
            ErrorKind::Unprocessable => (Code::InvalidArgument, 422),
            ErrorKind::Internal => (Code::Internal, 500),
            ErrorKind::BadGateway => (Code::Unavailable, 502),
            ErrorKind::Unavailable => (Code::Unavailable, 503),
            ErrorKind::Timeout => (Code::DeadlineExceeded, 504),
        }
    }

    /// The HTTP status of this kind.
    pub fn http_status(self) -> axum::http::StatusCode {
        axum::http::StatusCode::from_u16(self.codes().1)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            EngineError::UnknownLimit(_) => ErrorKind::NotFound,
            EngineError::Unavailable { .. } => ErrorKind::Unavailable,
            EngineError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl AuthzError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthzError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// The gRPC code and HTTP status an engine error maps to.
pub fn codes(e: &EngineError) -> (Code, u16) {
    e.kind().codes()
}

/// A gRPC status for `e`, with the leader hint in metadata when there is one.
pub fn to_status(e: EngineError) -> Status {
    let (code, _) = codes(&e);
    if let EngineError::Internal(msg) = &e {
        tracing::error!(error = %msg, "internal error on the decision path");
    }
    let mut status = Status::new(code, e.to_string());
    if let EngineError::Unavailable {
        not_applied: true, ..
    } = &e
    {
        status
            .metadata_mut()
            .insert(NOT_APPLIED_HEADER, MetadataValue::from_static("true"));
    }
    if let EngineError::Unavailable {
        leader: Some(leader),
        ..
    } = &e
    {
        if let Ok(v) = MetadataValue::try_from(leader.grpc.to_string()) {
            status.metadata_mut().insert(LEADER_HEADER, v);
        }
    }
    status
}

/// The gRPC code an authorization denial carries (ext_authz `CheckResponse.status`).
/// The HTTP status is the decision's own (policies choose `deny_status`).
pub fn deny_code(kind: DenyKind) -> Code {
    match kind {
        DenyKind::BadRequest => Code::InvalidArgument,
        DenyKind::Unauthenticated => Code::Unauthenticated,
        DenyKind::Forbidden | DenyKind::NoRoute => Code::PermissionDenied,
        DenyKind::RateLimited => Code::ResourceExhausted,
        DenyKind::Unavailable => Code::Unavailable,
    }
}

/// A failure to decide an authorization request, logged here once: its gRPC status and
/// HTTP status (forward-auth answers the latter with the same message).
pub fn authz_error(e: AuthzError) -> (Status, u16) {
    tracing::error!(error = %e, "authorization could not be decided");
    let (code, http) = e.kind().codes();
    (Status::new(code, e.to_string()), http)
}

/// [`authz_error`]'s gRPC status.
pub fn authz_status(e: AuthzError) -> Status {
    authz_error(e).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_answers_known_not_counted_carry_the_not_applied_marker() {
        let marked = to_status(EngineError::not_applied("no leader elected yet", None));
        assert_eq!(marked.code(), Code::Unavailable);
        assert_eq!(
            marked
                .metadata()
                .get(NOT_APPLIED_HEADER)
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        let unknown = to_status(EngineError::unavailable("no quorum", None));
        assert!(unknown.metadata().get(NOT_APPLIED_HEADER).is_none());
        let bad = to_status(EngineError::InvalidArgument("key".into()));
        assert!(bad.metadata().get(NOT_APPLIED_HEADER).is_none());
    }
}
