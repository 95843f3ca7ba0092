//! A tower layer that rate-limits inbound HTTP requests with quorate: axum, hyper and
//! tonic servers put it in front of their handlers.
//!
//! ```no_run
//! # async fn demo(client: quorate_client::Client) {
//! use quorate_client::layer::QuorateLayer;
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(QuorateLayer::new(client, "per_ip"));
//! # }
//! ```
//!
//! Each request's key comes from the client IP (the default; see [`ClientIp`] for
//! trusted proxies), a header ([`QuorateLayer::key_from_header`]), or a closure
//! ([`QuorateLayer::key`]). A denied request gets `429 Too Many Requests` with
//! `Retry-After`; every answered request carries the IETF `RateLimit-Policy` and
//! `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-10). An allowed request
//! reaches the handler with its [`Decision`] in the request extensions.
//!
//! | situation | response |
//! |---|---|
//! | allowed (by the cluster or [`Fallback::Allow`](crate::Fallback)) | the handler's |
//! | denied | 429, `Retry-After` when the hit can pass later |
//! | denied by [`Fallback::Deny`](crate::Fallback) (cluster unreachable) | 503 |
//! | cluster unreachable, no fallback | 503 |
//! | no key (missing header, unknown peer), or a key over 512 bytes | 400 |
//! | the limit is not in the policy | 500 (a deployment error, logged) |

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use ipnet::IpNet;

use quorate_proto::wire::{ratelimit_item, ratelimit_policy_item};

use crate::{Client, Decision, Source};

/// Longest key the cluster accepts, in bytes (the server's `MAX_KEY_LEN`).
const MAX_KEY_LEN: usize = 512;
/// Most `X-Forwarded-For` hops examined: a long forged chain costs no more than this.
const MAX_FORWARDED_HOPS: usize = 32;

type KeyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;
type CostFn = dyn Fn(&Parts) -> u64 + Send + Sync;

/// Rate-limits requests under one quorate limit. See the [module docs](self).
#[derive(Clone)]
pub struct QuorateLayer {
    client: Client,
    limit: Arc<str>,
    key: Arc<KeyFn>,
    cost: Arc<CostFn>,
}

impl std::fmt::Debug for QuorateLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorateLayer")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl QuorateLayer {
    /// Limits requests under `limit` (a name in the cluster's policy), keyed by the
    /// peer's IP address and costing 1 each.
    pub fn new(client: Client, limit: impl Into<String>) -> QuorateLayer {
        let client_ip = ClientIp::default();
        QuorateLayer {
            client,
            limit: Arc::from(limit.into()),
            key: Arc::new(move |parts| client_ip.key(parts)),
            cost: Arc::new(|_| 1),
        }
    }

    /// Keys requests with `key`; `None` (no key) answers 400. To share one counter among
    /// keyless requests, return `Some` of a fixed key instead.
    pub fn key<F>(mut self, key: F) -> QuorateLayer
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.key = Arc::new(key);
        self
    }

    /// Keys requests by the value of header `name` (e.g. an API key); a request without
    /// it (or with a non-visible-ASCII value) answers 400.
    pub fn key_from_header(self, name: HeaderName) -> QuorateLayer {
        self.key(move |parts| {
            parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
    }

    /// Keys requests by client IP as `client_ip` determines it (trusted proxies).
    pub fn key_from_client_ip(self, client_ip: ClientIp) -> QuorateLayer {
        self.key(move |parts| client_ip.key(parts))
    }

    /// Charges each request `cost` (default 1), e.g. by route or by declared size.
    pub fn cost<F>(mut self, cost: F) -> QuorateLayer
    where
        F: Fn(&Parts) -> u64 + Send + Sync + 'static,
    {
        self.cost = Arc::new(cost);
        self
    }
}

impl<S> tower_layer::Layer<S> for QuorateLayer {
    type Service = Quorate<S>;

    fn layer(&self, inner: S) -> Quorate<S> {
        Quorate {
            inner,
            layer: self.clone(),
        }
    }
}

/// Who the client is: the peer address, or — when the peer is a trusted proxy — the
/// address that proxy put in `X-Forwarded-For`.
///
/// `X-Forwarded-For` is read from the right: each trusted proxy appended the address it
/// saw, so the first address from the right that is not a trusted proxy is the client.
/// Anything further left was written by the client and is ignored, so a client cannot
/// pick its own key by sending a forged header. With no trusted proxies (the default)
/// the header is never read.
///
/// The peer address is read from the request extensions: axum's
/// `ConnectInfo<SocketAddr>` (serve with `into_make_service_with_connect_info`) or a
/// plain [`SocketAddr`] (hyper: insert it yourself).
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    /// Trusts the proxies in `networks` (CIDR blocks, e.g. `"10.0.0.0/8".parse()?`) to
    /// report the client's address in `X-Forwarded-For`.
    pub fn trusting(networks: impl IntoIterator<Item = IpNet>) -> ClientIp {
        ClientIp {
            trusted: networks.into_iter().collect(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request, if its peer address is known.
    pub fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let mut current = canonical(peer_addr(parts)?.ip());
        if !self.is_trusted(current) {
            return Some(current);
        }
        let hops = parts
            .headers
            .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
            .iter()
            .rev()
            .flat_map(|value| value.to_str().unwrap_or("").rsplit(','))
            .take(MAX_FORWARDED_HOPS);
        for hop in hops {
            let Some(ip) = parse_hop(hop.trim()) else {
                // Not an address: what a trusted proxy saw last is the best we know.
                break;
            };
            current = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        Some(current)
    }

    fn key(&self, parts: &Parts) -> Option<String> {
        self.client_ip(parts).map(|ip| ip.to_string())
    }
}

/// An IPv4 address seen as IPv4-mapped IPv6 is the same client: one key for both.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` element: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

fn peer_addr(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| parts.extensions.get::<SocketAddr>().copied())
}

/// The service [`QuorateLayer`] wraps around `S`.
#[derive(Debug, Clone)]
pub struct Quorate<S> {
    inner: S,
    layer: QuorateLayer,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Quorate<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; the clone waits for
        // the next poll_ready (tower's documented pattern for async work before `call`).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let key = match (layer.key)(&parts) {
                Some(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => key,
                _ => return Ok(status_only(StatusCode::BAD_REQUEST)),
            };
            let cost = (layer.cost)(&parts);
            let decision = match layer.client.check(&layer.limit, &key, cost).await {
                Ok(decision) => decision,
                Err(e) if e.is_unknown_limit() || e.is_invalid_argument() => {
                    tracing::error!(limit = %layer.limit, error = %e, "rate limit misconfigured");
                    return Ok(status_only(StatusCode::INTERNAL_SERVER_ERROR));
                }
                Err(e) => {
                    tracing::warn!(limit = %layer.limit, error = %e, "rate limit unavailable");
                    return Ok(status_only(StatusCode::SERVICE_UNAVAILABLE));
                }
            };
            let headers = rate_limit_headers(&layer.limit, &decision);
            if !decision.allowed {
                let status = if decision.source == Source::FailClosed {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::TOO_MANY_REQUESTS
                };
                let mut response = status_only(status);
                response.headers_mut().extend(headers);
                if let Some(retry) = decision.retry_after {
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(secs_ceil(retry).max(1)));
                }
                return Ok(response);
            }
            parts.extensions.insert(decision);
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            response.headers_mut().extend(headers);
            Ok(response)
        })
    }
}

fn status_only<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

/// Whole seconds, rounded up: a client told to wait never comes back too early.
fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `RateLimit-Policy: "name";q=100;w=60` and `RateLimit: "name";r=50;t=30`
/// (draft-ietf-httpapi-ratelimit-headers-10), the same format as the server's
/// `server/src/decide/headers.rs` (both use `quorate_proto::wire`). None for a fallback decision: the cluster said nothing.
pub fn rate_limit_headers(limit: &str, d: &Decision) -> Vec<(HeaderName, HeaderValue)> {
    if matches!(d.source, Source::FailOpen | Source::FailClosed) {
        return Vec::new();
    }
    let policy = ratelimit_policy_item(limit, d.limit_value, secs_ceil(d.window).max(1));
    let current = ratelimit_item(limit, d.remaining, secs_ceil(d.reset_after));
    [("ratelimit-policy", policy), ("ratelimit", current)]
        .into_iter()
        .filter_map(|(n, v)| Some((HeaderName::from_static(n), HeaderValue::try_from(v).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, xff: &[&str]) -> Parts {
        let mut builder = Request::builder();
        for v in xff {
            builder = builder.header("x-forwarded-for", *v);
        }
        let (mut parts, ()) = builder
            .body(())
            .unwrap_or_else(|_| unreachable!())
            .into_parts();
        let peer: SocketAddr = peer.parse().unwrap_or_else(|_| unreachable!());
        parts.extensions.insert(peer);
        parts
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let c = ClientIp::trusting([net("10.0.0.0/8")]);
        assert_eq!(
            c.client_ip(&parts("203.0.113.9:5000", &["1.1.1.1"])),
            ip("203.0.113.9")
        );
        let none = ClientIp::default();
        assert_eq!(
            none.client_ip(&parts("10.0.0.1:5000", &["1.1.1.1"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies_only() {
        let c = ClientIp::trusting([net("10.0.0.0/8"), net("192.168.0.0/16")]);
        // The client forged "6.6.6.6"; proxies appended 198.51.100.7 then 192.168.1.1.
        let p = parts("10.0.0.1:5000", &["6.6.6.6, 198.51.100.7", "192.168.1.1"]);
        assert_eq!(c.client_ip(&p), ip("198.51.100.7"));
        // Every hop trusted: the leftmost is the best we know.
        let p = parts("10.0.0.1:5000", &["10.1.1.1, 10.2.2.2"]);
        assert_eq!(c.client_ip(&p), ip("10.1.1.1"));
        // Garbage stops the walk at the last trusted hop's view.
        let p = parts("10.0.0.1:5000", &["1.2.3.4, not-an-ip, 10.9.9.9"]);
        assert_eq!(c.client_ip(&p), ip("10.9.9.9"));
        // Ports and IPv6 brackets are accepted; mapped IPv4 is IPv4.
        let p = parts("[::ffff:10.0.0.1]:5000", &["[2001:db8::1]:443"]);
        assert_eq!(c.client_ip(&p), ip("2001:db8::1"));
    }

    #[test]
    fn a_long_forged_chain_is_cut_off() {
        let c = ClientIp::trusting([net("0.0.0.0/0")]);
        let chain = vec!["10.0.0.2"; 10_000].join(",");
        let p = parts("10.0.0.1:5000", &[&chain]);
        assert_eq!(c.client_ip(&p), ip("10.0.0.2"));
    }

    #[test]
    fn headers_follow_draft_10() {
        let d = Decision {
            allowed: true,
            limit: "per_ip".into(),
            limit_value: 100,
            remaining: 50,
            reset_after: Duration::from_millis(29_001),
            retry_after: None,
            reason: None,
            window: Duration::from_secs(60),
            source: Source::Cluster,
        };
        let h = rate_limit_headers("per_ip", &d);
        assert_eq!(h[0].1, "\"per_ip\";q=100;w=60");
        assert_eq!(h[1].1, "\"per_ip\";r=50;t=30");
        assert_eq!(
            quorate_proto::wire::sf_string("a\"b\\c\u{e9}"),
            "\"a\\\"b\\\\c?\""
        );
    }
}
