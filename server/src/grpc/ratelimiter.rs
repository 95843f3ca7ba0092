//! `quorate.v1.RateLimiter/Check`: decode → [`decide::named`] → encode.

use std::sync::Arc;

use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_server::{RateLimiter, RateLimiterServer};
use tonic::{Request, Response, Status};

use crate::decide::named::{self, NamedHit};
use crate::engine::Engine;
use crate::error::to_status;

#[derive(Debug, Clone)]
pub struct RateLimiterService {
    engine: Arc<Engine>,
}

impl RateLimiterService {
    pub fn server(engine: Arc<Engine>) -> RateLimiterServer<RateLimiterService> {
        RateLimiterServer::new(RateLimiterService { engine })
    }
}

/// The request's hits, and whether they are all-or-nothing (absent means yes).
fn decode(request: pb::CheckRequest) -> (Vec<NamedHit>, bool) {
    let atomic = request.atomic.unwrap_or(true);
    let hits = request
        .hits
        .into_iter()
        .map(|h| NamedHit {
            limit: h.limit,
            key: h.key,
            cost: h.cost.unwrap_or(1),
        })
        .collect();
    (hits, atomic)
}

#[tonic::async_trait]
impl RateLimiter for RateLimiterService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        use crate::metrics::traffic::{Outcome, Surface};
        let started = std::time::Instant::now();
        let answer = self.answer(request).await;
        let outcome = match &answer {
            Ok(r) if r.get_ref().allowed => Outcome::Allowed,
            Ok(_) => Outcome::Denied,
            Err(s) if s.code() == tonic::Code::NotFound => Outcome::Unmatched,
            Err(_) => Outcome::Error,
        };
        self.engine
            .metrics()
            .observe_surface(Surface::QuorateV1, outcome, started);
        answer
    }
}

impl RateLimiterService {
    async fn answer(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let (hits, atomic) = decode(request.into_inner());
        let hits = named::validate(hits).map_err(to_status)?;
        let decided = named::decide(self.engine.as_ref(), self.engine.metrics(), hits, atomic)
            .await
            .map_err(to_status)?;
        let decisions: Vec<pb::Decision> = decided
            .iter()
            .map(|d| super::decision_to_pb(&d.limit, d.window, &d.decision))
            .collect();
        Ok(Response::new(pb::CheckResponse {
            allowed: decisions.iter().all(|d| d.allowed),
            decisions,
        }))
    }
}
