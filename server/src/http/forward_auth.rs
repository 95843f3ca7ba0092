//! HTTP forward-auth: `/authz` and `/authz/{*rest}`, any method — a thin adapter over
//! [`Authorizer::decide`] for nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth` and Envoy's ext_authz HTTP-service mode.
//!
//! The original request is read from the headers the proxy sets:
//! - Caddy / Traefik: `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`;
//! - nginx (by convention in its config): `X-Original-Method`, `X-Original-URI`,
//!   `X-Original-Host`.
//!
//! If both families are present they must agree, or the request is a 400: nginx passes
//! the client's own headers to the subrequest and Caddy its own, so a client could
//! otherwise add the family its proxy does not set and steer route matching.
//! These headers are believed only from a peer in `defaults.trusted_proxies.forward_auth`
//! (checked by the decision, which names the header it refused).
//! When neither URI header is present the call is Envoy's HTTP-service mode: the
//! original path is what follows `/authz` in our own request target, taken raw (not
//! percent-decoded, so it is put in canonical form exactly once), with our own method,
//! query and `Host`. Otherwise `rest`, when given, names the route.
//!
//! Header count and size are capped before any per-header work: over the caps is a 431.
//!
//! Credentials come from the forwarded request's own headers (the proxy copies them).
//! The client IP is the peer's unless the peer is a trusted proxy; then it is read from
//! `X-Forwarded-For`.
//!
//! Answers: 200 with the headers to copy upstream (`x-consumer-id`, ...) and the client
//! headers; or 401/403/429/503 with headers and a short JSON body. (nginx turns anything
//! but 2xx/401/403 into 500 unless its config maps it back; see examples/.)

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;

use crate::authz::{within_caps, RequestHeaders};
use crate::context::NodeContext;
use crate::decide::authz::{AuthzRequest, Surface, Verdict};
use crate::error::authz_error;

/// The forward-auth routes.
pub fn router() -> Router<NodeContext> {
    Router::new()
        .route("/authz", any(bare))
        .route("/authz/", any(bare))
        .route("/authz/{*rest}", any(with_rest))
}

async fn bare(
    State(ctx): State<NodeContext>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    handle(ctx, peer, method, uri, headers, None).await
}

async fn with_rest(
    State(ctx): State<NodeContext>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(ctx, peer, method, uri, headers, Some(rest)).await
}

/// Reads one of the two header families; `Err` when both are set and disagree. `Ok`
/// carries the value and the name of the header it came from.
fn forwarded<'h>(
    headers: &'h RequestHeaders,
    caddy: &'static str,
    nginx: &'static str,
) -> Result<Option<(&'h str, &'static str)>, String> {
    match (headers.get(caddy), headers.get(nginx)) {
        (Some(a), Some(b)) if a != b => Err(format!("conflicting {caddy} and {nginx} headers")),
        (Some(a), _) => Ok(Some((a, caddy))),
        (None, Some(b)) => Ok(Some((b, nginx))),
        (None, None) => Ok(None),
    }
}

/// The request target after the `/authz` prefix, raw: Envoy's HTTP-service mode puts the
/// original path there.
fn raw_rest(uri: &Uri) -> String {
    let path = uri.path();
    let rest = path.strip_prefix("/authz").unwrap_or(path);
    let mut t = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    if let Some(q) = uri.query() {
        t.push('?');
        t.push_str(q);
    }
    t
}

/// The 431 for a request over the header caps, before anything else is read.
fn too_large(reason: &str) -> Response {
    let body = serde_json::json!({"error": "bad_request", "reason": reason});
    respond(
        431,
        &[("content-type".into(), "application/json".into())],
        body.to_string(),
    )
}

/// The surface-neutral request.
pub fn to_request(
    peer: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    rest: Option<String>,
) -> AuthzRequest {
    let mut malformed = None;
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match value.to_str() {
            Ok(v) => pairs.push((name.as_str().to_string(), v.to_string())),
            Err(_) => malformed = Some(format!("header {:?} is not valid UTF-8", name.as_str())),
        }
    }
    let headers = RequestHeaders::new(pairs);
    let mut forwarded_by = None;
    let mut read =
        |caddy: &'static str, nginx: &'static str| match forwarded(&headers, caddy, nginx) {
            Ok(Some((v, from))) => {
                forwarded_by.get_or_insert(from);
                Some(v.to_string())
            }
            Ok(None) => None,
            Err(why) => {
                malformed = Some(why);
                None
            }
        };
    let fwd_method = read("x-forwarded-method", "x-original-method");
    let fwd_uri = read("x-forwarded-uri", "x-original-uri");
    let fwd_host = read("x-forwarded-host", "x-original-host");
    let own_host = headers.get("host").unwrap_or_default().to_string();
    let (target, route) = match fwd_uri {
        Some(u) => (u, rest.filter(|r| !r.is_empty())),
        // Envoy HTTP-service mode: the original path follows our prefix.
        None => (raw_rest(uri), None),
    };
    AuthzRequest {
        surface: Surface::ForwardAuth,
        method: fwd_method.unwrap_or_else(|| method.as_str().to_string()),
        target,
        host: fwd_host.unwrap_or(own_host),
        headers,
        peer: Some(peer.ip()),
        route,
        forwarded_by: forwarded_by.map(str::to_string),
        malformed,
    }
}

fn respond(status: u16, headers: &[(String, String)], body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let map = response.headers_mut();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v))
        {
            map.append(name, value);
        }
    }
    response
}

async fn handle(
    ctx: NodeContext,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    rest: Option<String>,
) -> Response {
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if let Err(reason) = within_caps(headers.len(), bytes) {
        return too_large(&reason);
    }
    let request = to_request(peer, &method, &uri, &headers, rest);
    match ctx.authz.decide(request).await {
        Ok(decision) => match decision.verdict {
            // The proxy copies the upstream headers it is told to; client headers ride
            // along for proxies that can add them to the response.
            Verdict::Allow(a) => {
                let mut h = a.upstream_headers;
                h.extend(a.client_headers);
                respond(200, &h, String::new())
            }
            Verdict::Deny(d) => {
                let mut h = d.headers.clone();
                h.push(("content-type".into(), "application/json".into()));
                respond(d.status, &h, d.body())
            }
        },
        Err(e) => {
            let (status, http) = authz_error(e);
            let body = serde_json::json!({"error": "internal", "reason": status.message()});
            respond(
                http,
                &[("content-type".into(), "application/json".into())],
                body.to_string(),
            )
        }
    }
}
