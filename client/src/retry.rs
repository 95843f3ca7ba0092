//! Sending one request to the cluster within the call's deadline: which failures may be
//! resent ([`RetryPolicy`]), following leader hints, failing over between members, and
//! jittered exponential backoff ([`Backoff`]) between attempts.
//!
//! # What a failed attempt means
//! | failure | counted? | `AtMostOnce` | `AtLeastOnce` |
//! |---|---|---|---|
//! | connection refused (nothing sent) | no | resend | resend |
//! | `UNAVAILABLE` marked `x-quorate-not-applied` (not the leader, no leader yet, leadership moved before the entry committed, the leader refused the forward) | no | resend | resend |
//! | other `UNAVAILABLE` (no quorum in time, forward to the leader broke) | maybe | [`Error::is_unknown_outcome`] | resend |
//! | connection broken after sending, deadline passed | maybe | [`Error::is_unknown_outcome`] | resend / deadline error |
//! | `INVALID_ARGUMENT`, `NOT_FOUND` (unknown limit), anything else | no answer will differ | error | error |

use std::time::Duration;

use quorate_proto::v1 as pb;
use rand::Rng;
use tokio::time::Instant;

use crate::error::{Error, Kind};
use crate::Client;

use quorate_proto::wire::{connection_refused, LEADER_HEADER, NOT_APPLIED_HEADER};

/// Whether the client may resend a hit whose first answer was lost.
///
/// Neither policy can make the cluster grant more than a limit allows: a resent hit that
/// was already counted is counted again, which only uses up quota sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetryPolicy {
    /// Never resend a hit that may have been counted. When an attempt's outcome is
    /// unknown (the connection broke after sending, the leader lost its quorum, the
    /// deadline passed), the call fails with [`Error::is_unknown_outcome`]. Hits that
    /// certainly were not counted (connection refused, a node that says it did not
    /// apply them) are still resent. Choose it when a hit stands for something that must
    /// not be counted twice (billing credits, quotas users see).
    AtMostOnce,
    /// Resend until an answer or the deadline. A hit may be counted more than once
    /// across a failover, so a key may be denied slightly early; it is never granted
    /// more than the limit. The default.
    #[default]
    AtLeastOnce,
}

/// Jittered exponential backoff between attempts: the `n`th wait is drawn uniformly from
/// `[d/2, d]` with `d = min(initial * 2^n, max)`, and never runs past the call's deadline.
/// A leader hint naming a new member is followed at once, without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait's upper bound.
    pub initial: Duration,
    /// The largest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0-based).
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos < 2 {
            return ceiling;
        }
        Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
    }
}

/// What one failed attempt tells the retry loop.
#[derive(Debug)]
struct Failure {
    error: Error,
    /// The hits may have been counted.
    maybe_counted: bool,
    /// Worth another attempt (elsewhere or later).
    retryable: bool,
    leader_hint: Option<String>,
}

fn classify(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let message = format!("{:?}: {}", status.code(), status.message());
    let leader_hint = status
        .metadata()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (kind, maybe_counted, retryable) = match status.code() {
        Code::InvalidArgument => (Kind::InvalidArgument, false, false),
        Code::NotFound => (Kind::UnknownLimit, false, false),
        // tonic reports a refused connection as UNAVAILABLE with a transport source.
        Code::Unavailable if connection_refused(status) => (Kind::Connect, false, true),
        Code::Unavailable if is_marked_not_applied(status) => (Kind::Unavailable, false, true),
        // A broken connection after sending, or a node that lost its quorum: counted or not.
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
            (Kind::Unavailable, true, true)
        }
        _ => (Kind::Other, false, false),
    };
    Failure {
        error: Error::new(kind, message),
        maybe_counted,
        retryable,
        leader_hint,
    }
}

fn is_marked_not_applied(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(NOT_APPLIED_HEADER)
        .is_some_and(|v| v.as_bytes() == b"true")
}

impl Client {
    /// Sends `request` until a member answers, per the retry policy, within the deadline.
    pub(crate) async fn send(&self, request: pb::CheckRequest) -> Result<Vec<pb::Decision>, Error> {
        let settings = &self.inner.builder;
        let policy = settings.sdk.retry;
        let deadline = Instant::now() + settings.timeout;
        let mut last_error: Option<Error> = None;
        let mut retries = 0u32;
        for _ in 0..settings.max_attempts {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let (target, mut client) = self.pick().await;
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(remaining);
            let failure = match tokio::time::timeout(remaining, client.check(call)).await {
                Ok(Ok(response)) => return Ok(response.into_inner().decisions),
                Ok(Err(status)) => classify(&status),
                Err(_elapsed) => Failure {
                    error: Error::new(Kind::DeadlineExceeded, "no answer within the deadline"),
                    maybe_counted: true,
                    retryable: false,
                    leader_hint: None,
                },
            };
            if failure.retryable || failure.maybe_counted {
                // The member failed us either way: the next call starts elsewhere.
                let followed = self.fail_over(&target, failure.leader_hint).await?;
                if failure.maybe_counted && policy == RetryPolicy::AtMostOnce {
                    return Err(failure.error.into_unknown_outcome());
                }
                if !failure.retryable {
                    return Err(failure.error);
                }
                last_error = Some(failure.error);
                if !followed {
                    let wait = settings.sdk.backoff.delay(retries);
                    retries += 1;
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if wait >= remaining {
                        tokio::time::sleep(remaining).await;
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
            return Err(failure.error);
        }
        Err(match last_error {
            Some(e) if Instant::now() >= deadline => Error::new(
                Kind::DeadlineExceeded,
                format!("deadline passed; last error: {e}"),
            ),
            Some(e) => e,
            None => Error::new(Kind::DeadlineExceeded, "deadline passed before an answer"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let b = Backoff::default();
        for retry in 0..40 {
            let ceiling = (b.initial * 2u32.pow(retry.min(20))).min(b.max);
            let d = b.delay(retry);
            assert!(d <= ceiling && d >= ceiling / 2, "retry {retry}: {d:?}");
        }
        assert!(b.delay(40) <= b.max);
    }

    #[test]
    fn not_applied_unavailable_is_safe_and_the_rest_is_unknown() {
        let mut marked = tonic::Status::unavailable("this node is not the leader");
        marked.metadata_mut().insert(
            NOT_APPLIED_HEADER,
            "true".parse().unwrap_or_else(|_| unreachable!()),
        );
        let f = classify(&marked);
        assert!(f.retryable && !f.maybe_counted && f.error.is_unavailable());

        let f = classify(&tonic::Status::unavailable("no quorum"));
        assert!(f.retryable && f.maybe_counted);

        let f = classify(&tonic::Status::not_found("unknown limit"));
        assert!(!f.retryable && f.error.is_unknown_limit());
        let f = classify(&tonic::Status::invalid_argument("key"));
        assert!(!f.retryable && f.error.is_invalid_argument());
    }
}
