//! `quorate.v1.RateLimiter/Check`: validate, hand to the engine, shape the answer.

use std::sync::Arc;

use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_server::{RateLimiter, RateLimiterServer};
use tonic::{Request, Response, Status};

use crate::engine::{Engine, EngineError};
use crate::error::to_status;

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

/// Checks a request's shape; the message names the bad field. Returns `(limit, key, cost)`.
pub fn validate(request: pb::CheckRequest) -> Result<Vec<(String, String, u64)>, EngineError> {
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
        hits.push((h.limit, h.key, h.cost.unwrap_or(1)));
    }
    Ok(hits)
}

#[tonic::async_trait]
impl RateLimiter for RateLimiterService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let named = validate(request.into_inner()).map_err(to_status)?;
        let hits = self.engine.resolve_named(named).map_err(to_status)?;
        let shape: Vec<(String, u64)> = hits
            .iter()
            .map(|h| (h.hit.limit.clone(), h.hit.rate.window()))
            .collect();
        let decisions = self.engine.check(hits, false).await.map_err(to_status)?;
        let decisions: Vec<pb::Decision> = shape
            .iter()
            .zip(&decisions)
            .map(|((name, window), d)| super::decision_to_pb(name, *window, d))
            .collect();
        Ok(Response::new(pb::CheckResponse {
            allowed: decisions.iter().all(|d| d.allowed),
            decisions,
        }))
    }
}
