//! `quorate.v1.RateLimiter/Check`: validate, hand to the engine, shape the answer.

use std::sync::Arc;

use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_server::{RateLimiter, RateLimiterServer};
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError, FORWARDED_HEADER};
use crate::error::to_status;
use crate::raft::Hit;

/// Most hits in one request.
pub const MAX_HITS: usize = 256;
/// Longest counter key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest limit name, in bytes.
pub const MAX_LIMIT_LEN: usize = 128;

#[derive(Debug, Clone)]
pub struct RateLimiterService {
    engine: Arc<Engine>,
}

impl RateLimiterService {
    pub fn server(engine: Arc<Engine>) -> RateLimiterServer<RateLimiterService> {
        RateLimiterServer::new(RateLimiterService { engine })
    }
}

/// Checks a request's shape; the message names the bad field.
pub fn validate(request: pb::CheckRequest) -> Result<Vec<Hit>, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidArgument(m));
    if request.hits.is_empty() {
        return bad("hits: at least one hit is required".into());
    }
    if request.hits.len() > MAX_HITS {
        return bad(format!(
            "hits: {} hits, at most {MAX_HITS} are allowed",
            request.hits.len()
        ));
    }
    let mut hits = Vec::with_capacity(request.hits.len());
    for (i, h) in request.hits.into_iter().enumerate() {
        if h.limit.is_empty() || h.limit.len() > MAX_LIMIT_LEN {
            return bad(format!(
                "hits[{i}].limit: must be 1 to {MAX_LIMIT_LEN} bytes"
            ));
        }
        if h.key.is_empty() || h.key.len() > MAX_KEY_LEN {
            return bad(format!("hits[{i}].key: must be 1 to {MAX_KEY_LEN} bytes"));
        }
        hits.push(Hit {
            limit: h.limit,
            key: h.key,
            cost: h.cost.unwrap_or(1),
        });
    }
    Ok(hits)
}

#[tonic::async_trait]
impl RateLimiter for RateLimiterService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        let hits = validate(request.into_inner()).map_err(to_status)?;
        let names: Vec<String> = hits.iter().map(|h| h.limit.clone()).collect();
        let decisions = self
            .engine
            .check(hits, forwarded)
            .await
            .map_err(to_status)?;
        let policy = self.engine.policy();
        let decisions: Vec<pb::Decision> = names
            .iter()
            .zip(&decisions)
            .map(|(name, d)| {
                let window = policy.set.limit(name).map_or(0, |l| l.rate.window);
                super::decision_to_pb(name, window, d)
            })
            .collect();
        Ok(Response::new(pb::CheckResponse {
            allowed: decisions.iter().all(|d| d.allowed),
            decisions,
        }))
    }
}
