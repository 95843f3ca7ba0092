//! A do-nothing `quorate.v1.RateLimiter`: every hit allowed at once, no state, no I/O.
//!
//! This is the ceiling every quorate figure is compared with (the brief's "do-nothing
//! tonic server"): same tonic version, same runtime defaults and `TCP_NODELAY` as
//! `quorate serve`, so the ratio shows what counters, Raft and fsync cost on top of gRPC
//! itself. Its answers have the same shape as quorate's (one decision per hit, the limit
//! echoed), so the load generator's checks pass and the response bytes are comparable.

use std::net::SocketAddr;

use anyhow::Context;
use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_server::{RateLimiter, RateLimiterServer};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The limit every answer reports (a benchmark-sized quota).
const LIMIT: u64 = 1_000_000_000_000;
/// One hour, the benchmark policy's window.
const WINDOW_MS: u64 = 3_600_000;

/// The service: answers every hit "allowed".
#[derive(Debug, Default, Clone, Copy)]
pub struct NullRateLimiter;

#[tonic::async_trait]
impl RateLimiter for NullRateLimiter {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let decisions = request
            .into_inner()
            .hits
            .into_iter()
            .map(|hit| pb::Decision {
                allowed: true,
                limit: hit.limit,
                limit_value: LIMIT,
                remaining: LIMIT.saturating_sub(hit.cost.unwrap_or(1)),
                reset_after_ms: WINDOW_MS,
                retry_after_ms: None,
                reason: pb::DenyReason::Unspecified as i32,
                window_ms: WINDOW_MS,
            })
            .collect();
        Ok(Response::new(pb::CheckResponse {
            allowed: true,
            decisions,
        }))
    }
}

/// Binds `addr`, prints one ready line with the bound address, and serves until Ctrl-C.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    // Set TCP_NODELAY on the incoming stream itself: `Server::tcp_nodelay` is ignored by
    // `serve_with_incoming*`.
    let incoming = TcpIncoming::bind(addr)
        .with_context(|| format!("cannot bind {addr}"))?
        .with_nodelay(Some(true));
    let bound = incoming.local_addr()?;
    println!("quorate-bench null-server ready: grpc={bound}");
    tonic::transport::Server::builder()
        .add_service(RateLimiterServer::new(NullRateLimiter))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("null server failed")
}
