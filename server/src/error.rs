//! The one place engine errors and authorization denials become wire errors: a gRPC
//! status and an HTTP status.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::decision::{AuthzError, DenyKind};
use crate::engine::EngineError;

/// Metadata / header carrying the leader's gRPC address on `UNAVAILABLE`.
pub const LEADER_HEADER: &str = "x-quorate-leader";

/// Metadata set to `true` on an `UNAVAILABLE` whose hits were certainly not counted, so a
/// client may resend them without counting them twice. Absent: the outcome is unknown.
pub const NOT_APPLIED_HEADER: &str = "x-quorate-not-applied";

/// The gRPC code and HTTP status an engine error maps to.
pub fn codes(e: &EngineError) -> (Code, u16) {
    match e {
        EngineError::InvalidArgument(_) => (Code::InvalidArgument, 400),
        EngineError::UnknownLimit(_) => (Code::NotFound, 404),
        EngineError::Unavailable { .. } => (Code::Unavailable, 503),
        EngineError::Internal(_) => (Code::Internal, 500),
    }
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

/// A failure to decide an authorization request: an RPC error (and HTTP 500), logged
/// here once.
pub fn authz_status(e: AuthzError) -> Status {
    tracing::error!(error = %e, "authorization could not be decided");
    Status::new(Code::Internal, e.to_string())
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
