//! Envoy RLS v3 (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`): the
//! `rls` load mode, the `rls-frame` writer for h2load, and a do-nothing RLS server.
//!
//! Requests carry `descriptors` descriptors in `domain`; descriptor i has one entry
//! `k<i+1> = <key>` with the key drawn from the key space, so each descriptor names one
//! counter (a key-only rule per `k<i>` in the bench policy). Every answer is checked:
//! `overall_code` is OK or OVER_LIMIT, one status per descriptor (unless `--no-statuses`,
//! for servers such as Limitador that answer with the overall code only), each status
//! OK or OVER_LIMIT, and the overall code OVER_LIMIT exactly when a status is.

use std::net::SocketAddr;

use anyhow::Context;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use prost::Message;
use rand::rngs::StdRng;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::keys::KeySpace;
use crate::rpc::{Caller, Outcome};

/// The request: `n` descriptors, descriptor i = `[k<i+1> = <prefix><key>]`.
pub fn request(domain: &str, n: usize, prefix: &str, key: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: (1..=n)
            .map(|i| RateLimitDescriptor {
                entries: vec![Entry {
                    key: format!("k{i}"),
                    value: format!("{prefix}{key}"),
                }],
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// A gRPC message frame: 1 byte "not compressed", 4 bytes big-endian length, the message.
/// This is h2load's `-d` body for one unary call.
pub fn grpc_frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Checks one answer to a request with `n` descriptors; returns (OK, OVER_LIMIT) counts
/// over the statuses (or over the overall code when `statuses` is false).
pub fn verify(r: &RateLimitResponse, n: usize, statuses: bool) -> Result<(u64, u64), String> {
    let ok = Code::Ok as i32;
    let over = Code::OverLimit as i32;
    if r.overall_code != ok && r.overall_code != over {
        return Err(format!("overall_code {}", r.overall_code));
    }
    if !statuses {
        return Ok(if r.overall_code == ok { (1, 0) } else { (0, 1) });
    }
    if r.statuses.len() != n {
        return Err(format!("{} statuses for {n} descriptors", r.statuses.len()));
    }
    let (mut allowed, mut denied) = (0, 0);
    for (i, s) in r.statuses.iter().enumerate() {
        match s.code {
            c if c == ok => allowed += 1,
            c if c == over => denied += 1,
            c => return Err(format!("status {i} has code {c}")),
        }
    }
    if (r.overall_code == over) != (denied > 0) {
        return Err("overall_code disagrees with the statuses".into());
    }
    Ok((allowed, denied))
}

/// One `rls` worker.
pub struct RlsCaller {
    pub client: RateLimitServiceClient<Channel>,
    pub domain: String,
    pub descriptors: usize,
    pub prefix: String,
    pub keys: KeySpace,
    pub statuses: bool,
}

impl Caller for RlsCaller {
    async fn call(&mut self, rng: &mut StdRng) -> Outcome {
        let req = request(
            &self.domain,
            self.descriptors,
            &self.prefix,
            self.keys.sample(rng),
        );
        match self.client.should_rate_limit(req).await {
            Err(status) => Outcome::from_status(&status),
            Ok(resp) => match verify(resp.get_ref(), self.descriptors, self.statuses) {
                Ok((allowed, denied)) => Outcome::Verified { allowed, denied },
                Err(why) => Outcome::Bad(why),
            },
        }
    }
}

/// A do-nothing RLS: OK, with one OK status per descriptor, no state, no I/O.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullRls;

#[tonic::async_trait]
impl RateLimitService for NullRls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let n = request.get_ref().descriptors.len();
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: (0..n)
                .map(|_| DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }))
    }
}

/// Binds `addr`, prints one ready line, serves until Ctrl-C (as [`crate::null_server`]).
pub async fn serve_null(addr: SocketAddr) -> anyhow::Result<()> {
    let incoming = TcpIncoming::bind(addr)
        .with_context(|| format!("cannot bind {addr}"))?
        .with_nodelay(Some(true));
    let bound = incoming.local_addr()?;
    println!("quorate-bench null-rls ready: grpc={bound}");
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(NullRls))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("null RLS server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            ..Default::default()
        }
    }

    #[test]
    fn frames_have_the_grpc_prefix() {
        let req = request("bench1", 3, "k", 7);
        let f = grpc_frame(&req);
        assert_eq!(f[0], 0);
        let len = u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize;
        assert_eq!(len, f.len() - 5);
        let back = RateLimitRequest::decode(&f[5..]).expect("decodes");
        assert_eq!(back, req);
        assert_eq!(back.descriptors[2].entries[0].key, "k3");
        assert_eq!(back.descriptors[2].entries[0].value, "k7");
    }

    #[test]
    fn answers_are_verified() {
        let ok = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![status(Code::Ok), status(Code::Ok)],
            ..Default::default()
        };
        assert_eq!(verify(&ok, 2, true), Ok((2, 0)));
        // Wrong number of statuses.
        assert!(verify(&ok, 3, true).is_err());
        // A do-nothing default answer (UNKNOWN).
        assert!(verify(&RateLimitResponse::default(), 0, true).is_err());
        // Overall OK while a descriptor is over.
        let mixed = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![status(Code::Ok), status(Code::OverLimit)],
            ..Default::default()
        };
        assert!(verify(&mixed, 2, true).is_err());
        // Overall code only (Limitador).
        let bare = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            ..Default::default()
        };
        assert_eq!(verify(&bare, 3, false), Ok((0, 1)));
    }
}
