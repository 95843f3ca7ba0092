//! The authorization decision: one function, top to bottom, shared by every surface.
//!
//! [`Authorizer::decide`] takes a surface-neutral [`AuthzRequest`] (Envoy ext_authz and
//! HTTP forward-auth both convert into it) and runs, against one snapshot of the live
//! policy:
//!
//! 1. **bounds** — too many or too large headers are a 400, before anything is parsed;
//! 2. **route** — named by the proxy (`context_extensions`, `/authz/<route>`) or matched
//!    by host, path and method, first match wins; none ⇒ `defaults.unmatched`;
//! 3. **authenticate** — the route's identities in order; a credential that is present
//!    but wrong is a 401 at once (it never falls through to `anonymous`); none present ⇒
//!    401 with `WWW-Authenticate`;
//! 4. **authorize** — deny lists, then allow lists, by consumer, group and client CIDR ⇒
//!    `deny_status` (403);
//! 5. **resolve limits** — the route's and the consumer's, keyed by consumer, IP, route,
//!    header or claim, as [`ResolvedHit`]s. Only now, so a denied identity consumes no
//!    quota;
//! 6. **check** — one [`Counter::check`] call (strict or fast, replicated); over ⇒ 429 with
//!    `Retry-After` and RateLimit headers; no quorum ⇒ `failure_mode`;
//! 7. **record** — `dry_run` turns a denial (401, 403, 429, or 503 without quorum) into an
//!    allow (logged and counted), then the
//!    metric, then the [`AuthzDecision`].
//!
//! Nothing here panics on any input, and no credential leaves this module: denials name
//! the reason ("unknown API key", "token expired"), logs the consumer and route.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::headers::{answer_headers, shown, LimitState};
use super::{hit, Counter};
use crate::authz::credential::{self, Found};
use crate::authz::jwt::{Claims, JwtError, JwtSettings, JwtVerifier};
use crate::authz::matching::route_matches;
use crate::authz::net::{client_ip, client_ip_via, in_any};
use crate::authz::policy::{
    Acl, AuthzPolicy, CredentialSource, FailureMode, IdentityKind, KeyPart, Mode, Route,
    RouteLimit, Unmatched,
};
use crate::authz::request_target::{canonical_host, canonical_path};
use crate::authz::template::{claim_text, Context};
use crate::authz::{RequestHeaders, MAX_HEADERS, MAX_HEADER_BYTES};
use crate::engine::{wall_nanos, EngineError, ResolvedHit};
use crate::metrics::Metrics;

/// Longest request target (path and query) looked at.
pub const MAX_TARGET: usize = 16 * 1024;
pub use crate::authz::policy::FAILURE_MODE_HEADER;

/// Which surface a request came through (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    ExtAuthz,
    ForwardAuth,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::ExtAuthz => "ext_authz",
            Surface::ForwardAuth => "forward_auth",
        }
    }
}

/// A request to authorize, as any surface describes it.
#[derive(Debug, Clone)]
pub struct AuthzRequest {
    pub surface: Surface,
    /// The original request's method.
    pub method: String,
    /// The original request target: path and query.
    pub target: String,
    /// The original `Host` / `:authority`.
    pub host: String,
    pub headers: RequestHeaders,
    /// The connection peer (forward-auth) or the source Envoy reports (ext_authz).
    pub peer: Option<IpAddr>,
    /// A route named by the proxy; skips matching.
    pub route: Option<String>,
    /// The forwarded header that described this request for someone else
    /// (`x-original-uri`, ...), when one did: believed only from a trusted proxy.
    pub forwarded_by: Option<String>,
    /// Set by a surface that could not read the request faithfully (a header that is
    /// not UTF-8, conflicting forwarded headers): the request is denied with 400.
    pub malformed: Option<String>,
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NoRoute,
    RateLimited,
    Unavailable,
}

impl DenyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::BadRequest => "bad_request",
            DenyKind::Unauthenticated => "unauthenticated",
            DenyKind::Forbidden => "forbidden",
            DenyKind::NoRoute => "no_route",
            DenyKind::RateLimited => "rate_limited",
            DenyKind::Unavailable => "unavailable",
        }
    }
}

/// A denial: HTTP status, headers for the client, and a short reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenyKind,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl Denial {
    fn new(kind: DenyKind, status: u16, reason: impl Into<String>) -> Denial {
        Denial {
            kind,
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// The JSON body: `{"error": "...", "reason": "..."}`.
    pub fn body(&self) -> String {
        serde_json::json!({"error": self.kind.as_str(), "reason": self.reason}).to_string()
    }
}

/// What an allowed request carries on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Set on the request to the upstream (overwriting what the client sent).
    pub upstream_headers: Vec<(String, String)>,
    /// Removed from the request to the upstream: hidden credentials, and identity
    /// headers we did not set (so a client cannot forge them).
    pub remove_headers: Vec<String>,
    /// Query parameters removed (hidden credentials).
    pub remove_query: Vec<String>,
    /// Added to the response to the client.
    pub client_headers: Vec<(String, String)>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Allowed),
    Deny(Denial),
}

/// Who was recognised, for Envoy's `dynamic_metadata` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub route: Option<String>,
    pub consumer: Option<String>,
    pub groups: Vec<String>,
    pub identity: Option<String>,
}

/// The answer to an [`AuthzRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    pub verdict: Verdict,
    pub metadata: Metadata,
}

/// A failure to decide at all (not a denial): the surfaces turn it into an RPC error or
/// a 500.
#[derive(Debug, Error)]
pub enum AuthzError {
    #[error("internal error: {0}")]
    Internal(String),
}

/// The recognised caller.
#[derive(Debug, Clone)]
struct Principal {
    consumer: String,
    groups: Vec<String>,
    identity: String,
    claims: Option<Arc<Claims>>,
}

/// Decides authorization requests for one node.
pub struct Authorizer {
    engine: Arc<dyn Counter>,
    metrics: Arc<Metrics>,
    jwt: JwtVerifier,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

enum Selected<'p> {
    Route(&'p Route),
    Unmatched,
    UnknownName,
}

impl Authorizer {
    pub fn new(
        engine: Arc<dyn Counter>,
        metrics: Arc<Metrics>,
        http: reqwest::Client,
        jwt: JwtSettings,
    ) -> Authorizer {
        let jwt = JwtVerifier::new(http, jwt, Some(Arc::clone(&metrics)));
        Authorizer {
            engine,
            metrics,
            jwt,
        }
    }

    /// Decides one request. See the module docs for the steps.
    pub async fn decide(&self, req: AuthzRequest) -> Result<AuthzDecision, AuthzError> {
        let started = Instant::now();
        let live = self.engine.policy();
        let policy = &live.set.authz;
        let scope = live.version.as_ref().map_or(0, |v| v.version);
        let mut meta = Metadata::default();

        // 1. Bounds, and who may describe a request for someone else.
        if let Err(reason) = check_bounds(&req).and_then(|()| check_forwarder(policy, &req)) {
            let denial = Denial::new(DenyKind::BadRequest, 400, reason);
            return Ok(self.finish(&req, None, meta, Verdict::Deny(denial), started));
        }

        // 2. Route, matched on the canonical target; one that cannot be put in canonical
        // form is refused here, before any identity or quota is looked at.
        let target = match canonical_target(&req) {
            Ok(t) => t,
            Err(reason) => {
                let denial = Denial::new(DenyKind::BadRequest, 400, reason);
                return Ok(self.finish(&req, None, meta, Verdict::Deny(denial), started));
            }
        };
        let route = match select_route(policy, &req, &target) {
            Selected::Route(r) => r,
            Selected::Unmatched => {
                let verdict = match policy.defaults.unmatched {
                    // Nobody recognised: no identity header may reach the upstream.
                    Unmatched::Allow => Verdict::Allow(Allowed {
                        remove_headers: policy.identity_headers.clone(),
                        ..Allowed::default()
                    }),
                    Unmatched::Deny => Verdict::Deny(Denial::new(
                        DenyKind::NoRoute,
                        policy.defaults.deny_status,
                        "no route matches this request",
                    )),
                };
                return Ok(self.finish(&req, None, meta, verdict, started));
            }
            Selected::UnknownName => {
                let denial = Denial::new(
                    DenyKind::NoRoute,
                    policy.defaults.deny_status,
                    "the proxy named a route this policy does not have",
                );
                return Ok(self.finish(&req, None, meta, Verdict::Deny(denial), started));
            }
        };
        meta.route = Some(route.name.clone());
        let ip = client_address(policy, &req);

        // 3. Authenticate.
        let principal = match self.authenticate(policy, route, scope, &req).await {
            Ok(p) => p,
            Err(denial) => {
                return Ok(self.finish(&req, Some(route), meta, Verdict::Deny(denial), started))
            }
        };
        if let Some(p) = &principal {
            meta.consumer = Some(p.consumer.clone());
            meta.groups = p.groups.clone();
            meta.identity = Some(p.identity.clone());
        }

        // 4. Authorize.
        if let Err(reason) = authorize(route, principal.as_ref(), ip) {
            let denial = Denial::new(DenyKind::Forbidden, route.deny_status, reason);
            return Ok(self.finish(&req, Some(route), meta, Verdict::Deny(denial), started));
        }

        // 5. Resolve limits: the route's, then the consumer's own.
        let consumer_limits = principal
            .as_ref()
            .and_then(|p| policy.consumers.get(&p.consumer))
            .map(|c| c.limits.as_slice())
            .unwrap_or_default();
        let limits: Vec<&RouteLimit> = route.limits.iter().chain(consumer_limits).collect();
        let hits: Vec<ResolvedHit> = limits
            .iter()
            .map(|l| {
                let key = counter_key(policy, l, route, principal.as_ref(), ip, &req.headers);
                hit(&l.limit, key, l.cost, l.rate, l.consistency)
            })
            .collect();

        // 6. Check.
        let decisions = if hits.is_empty() {
            Vec::new()
        } else {
            // A route's limits (and its consumer's) are one all-or-nothing decision: a
            // request denied by one limit takes nothing from the others.
            let advisory: Vec<bool> = limits.iter().map(|l| l.shadow_mode).collect();
            match super::check_all_or_nothing(self.engine.as_ref(), hits, &advisory).await {
                Ok(d) => d,
                Err(EngineError::Unavailable { reason, .. }) => {
                    tracing::warn!(route = %route.name, %reason, "cannot decide: no quorum");
                    let verdict = without_quorum(policy, route, principal.as_ref(), ip);
                    return Ok(self.finish(&req, Some(route), meta, verdict, started));
                }
                Err(e) => return Err(AuthzError::Internal(e.to_string())),
            }
        };
        let mut states = Vec::with_capacity(decisions.len());
        let mut over = false;
        for (l, d) in limits.iter().zip(&decisions) {
            if !d.allowed && l.shadow_mode {
                self.metrics.shadow_mode_over_limit.inc();
            }
            let reported = shown(d, l.shadow_mode);
            over |= !reported.allowed;
            states.push(LimitState {
                name: l.shown.clone(),
                decision: reported,
                window: l.rate.window(),
            });
        }
        let rate_headers: Vec<(String, String)> = answer_headers(&states, live.set.headers, over)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();

        // 7. Verdict (recorded by `finish`): over any limit ⇒ 429.
        let verdict = if over {
            let mut d = Denial::new(DenyKind::RateLimited, 429, "rate limit exceeded");
            d.headers = rate_headers;
            Verdict::Deny(d)
        } else {
            Verdict::Allow(allowed(
                policy,
                route,
                principal.as_ref(),
                ip,
                &rate_headers,
            ))
        };
        Ok(self.finish(&req, Some(route), meta, verdict, started))
    }

    /// Dry-run, metrics and the log line: the one exit of [`Authorizer::decide`].
    fn finish(
        &self,
        req: &AuthzRequest,
        route: Option<&Route>,
        metadata: Metadata,
        verdict: Verdict,
        started: Instant,
    ) -> AuthzDecision {
        let route_name = route.map_or("", |r| r.name.as_str());
        let mut outcome = match &verdict {
            Verdict::Allow(a)
                if a.upstream_headers
                    .iter()
                    .any(|(k, _)| k == FAILURE_MODE_HEADER) =>
            {
                "failure_open"
            }
            Verdict::Allow(_) => "allowed",
            Verdict::Deny(d) => d.kind.as_str(),
        };
        let verdict = match (verdict, route) {
            (Verdict::Deny(d), Some(r))
                if r.mode == Mode::DryRun
                    && matches!(
                        d.kind,
                        DenyKind::Unauthenticated
                            | DenyKind::Forbidden
                            | DenyKind::RateLimited
                            | DenyKind::Unavailable
                    ) =>
            {
                tracing::info!(
                    route = route_name,
                    consumer = metadata.consumer.as_deref().unwrap_or(""),
                    would = d.kind.as_str(),
                    reason = %d.reason,
                    "dry run: would deny"
                );
                self.metrics
                    .authz_dry_run_denials
                    .with_label_values(&[route_name, d.kind.as_str()])
                    .inc();
                outcome = "dry_run";
                // Never let a client-sent identity header through for a caller we did
                // not recognise.
                let policy = &self.engine.policy().set.authz;
                Verdict::Allow(Allowed {
                    remove_headers: policy.identity_headers.clone(),
                    ..Allowed::default()
                })
            }
            (v, _) => v,
        };
        self.metrics
            .authz_decisions
            .with_label_values(&[req.surface.as_str(), route_name, outcome])
            .inc();
        self.metrics
            .authz_decision_seconds
            .observe(started.elapsed().as_secs_f64());
        let surface = match req.surface {
            Surface::ExtAuthz => crate::metrics::traffic::Surface::ExtAuthz,
            Surface::ForwardAuth => crate::metrics::traffic::Surface::HttpAuthz,
        };
        self.metrics.observe_surface(
            surface,
            crate::metrics::traffic::Outcome::from_authz(outcome),
            started,
        );
        match &verdict {
            Verdict::Deny(d) => tracing::debug!(
                surface = req.surface.as_str(),
                route = route_name,
                consumer = metadata.consumer.as_deref().unwrap_or(""),
                status = d.status,
                reason = %d.reason,
                "authz denied"
            ),
            Verdict::Allow(_) => tracing::trace!(
                surface = req.surface.as_str(),
                route = route_name,
                consumer = metadata.consumer.as_deref().unwrap_or(""),
                outcome,
                "authz allowed"
            ),
        }
        AuthzDecision { verdict, metadata }
    }

    /// Tries the route's identities in order. `Ok(None)`: a public route.
    async fn authenticate(
        &self,
        policy: &AuthzPolicy,
        route: &Route,
        scope: u64,
        req: &AuthzRequest,
    ) -> Result<Option<Principal>, Denial> {
        if route.identities.is_empty() {
            return Ok(None);
        }
        let invalid = |identity: &str, reason: &str| {
            let mut d = Denial::new(
                DenyKind::Unauthenticated,
                401,
                format!("{identity}: {reason}"),
            );
            d.headers
                .push(("www-authenticate".into(), challenges(policy, route, true)));
            d
        };
        let jwt_identities = route
            .identities
            .iter()
            .filter(|&&i| {
                matches!(
                    policy.identities.get(i).map(|x| &x.kind),
                    Some(IdentityKind::Jwt(_))
                )
            })
            .count();
        let shared_jwt_header = jwt_identities > 1;
        let mut foreign_token = false;
        for &i in &route.identities {
            let Some(identity) = policy.identities.get(i) else {
                continue;
            };
            match &identity.kind {
                IdentityKind::Anonymous { consumer } => {
                    // A token nobody here accepts is a bad credential, not an absent one.
                    if foreign_token {
                        return Err(invalid("token", "token issuer not accepted"));
                    }
                    return Ok(Some(Principal {
                        groups: policy
                            .consumers
                            .get(consumer)
                            .map(|c| c.groups.clone())
                            .unwrap_or_default(),
                        consumer: consumer.clone(),
                        identity: identity.name.clone(),
                        claims: None,
                    }));
                }
                IdentityKind::ApiKey(spec) => {
                    let key = match credential::find(spec, &req.headers, &req.target) {
                        Found::Absent => continue,
                        Found::Malformed(why) => return Err(invalid(&identity.name, why)),
                        Found::Present(k) => k,
                    };
                    let cred = credential::check_key(policy, &key, wall_nanos())
                        .map_err(|r| invalid(&identity.name, r.as_str()))?;
                    return Ok(Some(Principal {
                        groups: policy
                            .consumers
                            .get(&cred.consumer)
                            .map(|c| c.groups.clone())
                            .unwrap_or_default(),
                        consumer: cred.consumer.clone(),
                        identity: identity.name.clone(),
                        claims: None,
                    }));
                }
                IdentityKind::Jwt(jwt) => {
                    let token = match credential::find(&jwt.credential, &req.headers, &req.target) {
                        Found::Absent => continue,
                        Found::Malformed(why) => return Err(invalid(&identity.name, why)),
                        Found::Present(t) => t,
                    };
                    // Several issuers may share one header: a token whose (unverified)
                    // `iss` names another issuer is left to the identity it belongs to.
                    if shared_jwt_header && !claims_issuer(&token, &jwt.issuer) {
                        foreign_token = true;
                        continue;
                    }
                    let verified = self
                        .jwt
                        .verify(scope, &identity.name, jwt, &token)
                        .await
                        .map_err(|e| {
                            if e == JwtError::KeysUnavailable {
                                tracing::warn!(identity = %identity.name, "JWT keys unavailable");
                            }
                            invalid(&identity.name, &e.to_string())
                        })?;
                    let consumer = match verified.claims.get(&jwt.consumer_claim) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v @ serde_json::Value::Number(_)) => v.to_string(),
                        _ => return Err(invalid(&identity.name, "token lacks the consumer claim")),
                    };
                    // It becomes the x-consumer-id header: no list separator, no CR/LF.
                    if consumer.is_empty()
                        || consumer.len() > crate::authz::policy::MAX_NAME * 2
                        || consumer.chars().any(|c| c.is_control() || c == ',')
                    {
                        return Err(invalid(&identity.name, "unusable consumer claim"));
                    }
                    let record = policy.consumers.get(&consumer);
                    // A consumer record belongs to the issuers it lists (or, listing none,
                    // to the policy's only issuer): another issuer's token naming it is
                    // refused, never mapped onto its groups, limits and ACL entries.
                    if let Some(r) = record {
                        let bound = if r.issuers.is_empty() {
                            policy.jwt_issuers == 1
                        } else {
                            r.issuers.contains(&jwt.issuer)
                        };
                        if !bound {
                            return Err(invalid(
                                &identity.name,
                                "consumer belongs to another issuer",
                            ));
                        }
                    }
                    if jwt.require_consumer && record.is_none() {
                        return Err(invalid(&identity.name, "unknown consumer"));
                    }
                    let mut groups = record.map(|c| c.groups.clone()).unwrap_or_default();
                    if let Some(claim) = &jwt.groups_claim {
                        let from_token = token_groups(verified.claims.get(claim))
                            .map_err(|why| invalid(&identity.name, why))?;
                        for g in from_token {
                            if !groups.contains(&g) {
                                groups.push(g);
                            }
                        }
                    }
                    return Ok(Some(Principal {
                        consumer,
                        groups,
                        identity: identity.name.clone(),
                        claims: Some(verified.claims),
                    }));
                }
            }
        }
        if foreign_token {
            return Err(invalid("token", "token issuer not accepted"));
        }
        let mut d = Denial::new(DenyKind::Unauthenticated, 401, "credentials required");
        d.headers
            .push(("www-authenticate".into(), challenges(policy, route, false)));
        Err(d)
    }
}

/// Whether a token's payload names `issuer` in `iss`. Read without verifying: it only
/// picks which issuer's keys verify the token.
fn claims_issuer(token: &str, issuer: &str) -> bool {
    jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(token)
        .ok()
        .and_then(|c| c.get("iss").and_then(|i| i.as_str().map(|i| i == issuer)))
        .unwrap_or(false)
}

/// Caps on what a request may carry, checked before anything is parsed.
fn check_bounds(req: &AuthzRequest) -> Result<(), String> {
    if let Some(why) = &req.malformed {
        return Err(why.clone());
    }
    if req.headers.len() > MAX_HEADERS {
        return Err(format!("more than {MAX_HEADERS} headers"));
    }
    if req.headers.byte_len() > MAX_HEADER_BYTES {
        return Err(format!("headers larger than {MAX_HEADER_BYTES} bytes"));
    }
    if req.target.len() > MAX_TARGET {
        return Err(format!("request target longer than {MAX_TARGET} bytes"));
    }
    if req.method.is_empty()
        || req.method.len() > 32
        || !req.method.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return Err("invalid method".into());
    }
    if req.host.len() > 1024 {
        return Err("host too long".into());
    }
    Ok(())
}

/// The request's canonical host and path ([`crate::authz::request_target`]).
#[derive(Debug)]
pub struct CanonicalTarget {
    pub host: String,
    pub path: String,
}

/// Puts the request's host and path in canonical form, or names why it cannot be.
/// Checked even when the proxy names the route: the upstream serves the path either way.
pub fn canonical_target(req: &AuthzRequest) -> Result<CanonicalTarget, String> {
    let path = canonical_path(&req.target).map_err(|e| format!("refused request path: {e}"))?;
    let host = canonical_host(&req.host).map_err(|e| format!("refused host: {e}"))?;
    Ok(CanonicalTarget { host, path })
}

/// A forward-auth request described by `X-Forwarded-*` / `X-Original-*` headers must
/// come from a trusted proxy: anyone else could make quorate decide a request other
/// than the one the proxy will serve.
fn check_forwarder(policy: &AuthzPolicy, req: &AuthzRequest) -> Result<(), String> {
    let trusted = &policy.defaults.trusted_proxies;
    let Some(header) = &req.forwarded_by else {
        return Ok(());
    };
    if trusted.legacy_hops.is_some() || req.peer.is_some_and(|p| in_any(p, &trusted.forward_auth)) {
        return Ok(());
    }
    let peer = req
        .peer
        .map_or("an unknown peer".to_string(), |p| p.to_string());
    Err(format!(
        "{header} sent by {peer}, which is not in defaults.trusted_proxies.forward_auth"
    ))
}

/// The client address ([`crate::authz::net`]), by the surface's trusted proxies.
fn client_address(policy: &AuthzPolicy, req: &AuthzRequest) -> Option<IpAddr> {
    let trusted = &policy.defaults.trusted_proxies;
    let xff = req.headers.get("x-forwarded-for");
    if let Some(hops) = trusted.legacy_hops {
        return client_ip(xff, req.peer, hops);
    }
    let nets = match req.surface {
        Surface::ForwardAuth => &trusted.forward_auth,
        Surface::ExtAuthz => &trusted.ext_authz,
    };
    client_ip_via(xff, req.peer, nets)
}

/// Which route a request would take, as `quorate policy test --authz` shows it: the
/// canonical target and the route's name (`None`: unmatched), or why the target is
/// refused. The same functions [`Authorizer::decide`] runs.
pub fn route_for(
    policy: &AuthzPolicy,
    method: &str,
    host: &str,
    target: &str,
) -> Result<(CanonicalTarget, Option<String>), String> {
    let req = AuthzRequest {
        surface: Surface::ExtAuthz,
        method: method.to_string(),
        target: target.to_string(),
        host: host.to_string(),
        headers: RequestHeaders::default(),
        peer: None,
        route: None,
        forwarded_by: None,
        malformed: None,
    };
    check_bounds(&req)?;
    let canonical = canonical_target(&req)?;
    let route = match select_route(policy, &req, &canonical) {
        Selected::Route(r) => Some(r.name.clone()),
        _ => None,
    };
    Ok((canonical, route))
}

fn select_route<'p>(
    policy: &'p AuthzPolicy,
    req: &AuthzRequest,
    target: &CanonicalTarget,
) -> Selected<'p> {
    if let Some(name) = req.route.as_deref().filter(|n| !n.is_empty()) {
        return match policy.route(name) {
            Some(r) => Selected::Route(r),
            None => Selected::UnknownName,
        };
    }
    let method = req.method.to_ascii_uppercase();
    policy
        .routes
        .iter()
        .find(|r| route_matches(r, &method, &target.host, &target.path))
        .map_or(Selected::Unmatched, Selected::Route)
}

/// Deny lists first, then allow lists. The reason names the rule kind, not the values.
fn authorize(
    route: &Route,
    principal: Option<&Principal>,
    ip: Option<IpAddr>,
) -> Result<(), String> {
    let member = |acl: &Acl, p: &Principal| {
        acl.consumers.contains(&p.consumer) || p.groups.iter().any(|g| acl.groups.contains(g))
    };
    if let Some(deny) = &route.deny {
        if principal.is_some_and(|p| member(deny, p)) {
            return Err("consumer or group denied on this route".into());
        }
        if ip.is_some_and(|ip| in_any(ip, &deny.cidrs)) {
            return Err("client address denied on this route".into());
        }
    }
    if let Some(allow) = &route.allow {
        if (!allow.groups.is_empty() || !allow.consumers.is_empty())
            && !principal.is_some_and(|p| member(allow, p))
        {
            return Err("consumer not in an allowed group".into());
        }
        if !allow.cidrs.is_empty() && !ip.is_some_and(|ip| in_any(ip, &allow.cidrs)) {
            return Err("client address not allowed on this route".into());
        }
    }
    Ok(())
}

/// Groups from a token claim: an array of strings or a space/comma-separated string.
/// A group that would smuggle a separator into `x-consumer-groups` (a `,` inside an array
/// item, a control character such as CR/LF) refuses the token.
fn token_groups(v: Option<&serde_json::Value>) -> Result<Vec<String>, &'static str> {
    let groups: Vec<String> = match v {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .map(str::to_string)
            .take(64)
            .collect(),
        Some(serde_json::Value::String(s)) => s
            .split([' ', ','])
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .take(64)
            .collect(),
        _ => Vec::new(),
    };
    if groups.iter().any(|g| {
        g.len() > crate::authz::policy::MAX_NAME || g.chars().any(|c| c.is_control() || c == ',')
    }) {
        return Err("groups claim holds a separator or control character");
    }
    Ok(groups)
}

/// The `WWW-Authenticate` value: one challenge per identity kind of the route.
fn challenges(policy: &AuthzPolicy, route: &Route, invalid: bool) -> String {
    let realm = &policy.defaults.realm;
    let mut out: Vec<String> = Vec::new();
    for &i in &route.identities {
        let Some(identity) = policy.identities.get(i) else {
            continue;
        };
        let c = match &identity.kind {
            IdentityKind::Jwt(j) => match &j.credential.scheme {
                Some(s) if invalid => format!("{s} realm=\"{realm}\", error=\"invalid_token\""),
                Some(s) => format!("{s} realm=\"{realm}\""),
                None => format!("Bearer realm=\"{realm}\""),
            },
            IdentityKind::ApiKey(k) => match (&k.scheme, &k.source) {
                (Some(s), _) => format!("{s} realm=\"{realm}\""),
                (None, CredentialSource::Header(h)) => {
                    format!("ApiKey realm=\"{realm}\", header=\"{h}\"")
                }
                (None, _) => format!("ApiKey realm=\"{realm}\""),
            },
            IdentityKind::Anonymous { .. } => continue,
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push(format!("Bearer realm=\"{realm}\""));
    }
    out.join(", ")
}

/// Headers whose values are credentials: never used in clear as a counter key.
fn is_credential_header(policy: &AuthzPolicy, name: &str) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
        || policy.identities.iter().any(|i| match &i.kind {
            IdentityKind::ApiKey(c) => c.source == CredentialSource::Header(name.to_string()),
            IdentityKind::Jwt(j) => {
                j.credential.source == CredentialSource::Header(name.to_string())
            }
            IdentityKind::Anonymous { .. } => false,
        })
}

/// A key part's value: long values and credentials are replaced by their SHA-256 (so a
/// counter key, visible in admin listings and snapshots, never holds a secret).
fn key_value(value: &str, sensitive: bool) -> String {
    if sensitive || value.len() > 256 {
        return format!("sha256:{}", hex_prefix(value));
    }
    value.replace('%', "%25").replace('|', "%7C")
}

fn hex_prefix(value: &str) -> String {
    credential::hash_key_hex(value)[..32].to_string()
}

/// The counter key of `limit` for this request, e.g. `consumer=alice|ip=10.0.0.1`.
/// A missing part counts as `-`: leaving a header out must not escape its limit.
fn counter_key(
    policy: &AuthzPolicy,
    limit: &RouteLimit,
    route: &Route,
    principal: Option<&Principal>,
    ip: Option<IpAddr>,
    headers: &RequestHeaders,
) -> String {
    let parts: Vec<String> = limit
        .key
        .iter()
        .map(|part| match part {
            KeyPart::Consumer => format!(
                "consumer={}",
                principal.map_or("-".to_string(), |p| key_value(&p.consumer, false))
            ),
            KeyPart::Ip(prefix) => {
                format!("ip={}", ip.map_or("-".to_string(), |ip| prefix.key_of(ip)))
            }
            KeyPart::Route => format!("route={}", route.name),
            KeyPart::Identity => format!(
                "identity={}",
                principal.map_or("-", |p| p.identity.as_str())
            ),
            KeyPart::Header(h) => format!(
                "{h}={}",
                headers.get(h).map_or("-".to_string(), |v| key_value(
                    v,
                    is_credential_header(policy, h)
                ))
            ),
            KeyPart::Claim(c) => format!(
                "claim.{c}={}",
                principal
                    .and_then(|p| p.claims.as_ref())
                    .and_then(|cl| cl.get(c))
                    .map_or("-".to_string(), |v| key_value(&claim_text(v), false))
            ),
        })
        .collect();
    parts.join("|")
}

/// What `failure_mode` answers when the cluster cannot decide the route's limits.
fn without_quorum(
    policy: &AuthzPolicy,
    route: &Route,
    principal: Option<&Principal>,
    ip: Option<IpAddr>,
) -> Verdict {
    match route.failure_mode {
        FailureMode::Closed => {
            let mut d = Denial::new(
                DenyKind::Unavailable,
                503,
                "rate limits cannot be decided right now",
            );
            d.headers.push(("retry-after".into(), "1".into()));
            Verdict::Deny(d)
        }
        FailureMode::Open => {
            let mut a = allowed(policy, route, principal, ip, &[]);
            let mark = (FAILURE_MODE_HEADER.to_string(), "open".to_string());
            a.upstream_headers.push(mark.clone());
            a.client_headers.push(mark);
            Verdict::Allow(a)
        }
    }
}

/// The allow answer: identity headers upstream (and removal of those we leave unset, so
/// clients cannot forge them), hidden credentials stripped, client headers.
fn allowed(
    policy: &AuthzPolicy,
    route: &Route,
    principal: Option<&Principal>,
    ip: Option<IpAddr>,
    rate_headers: &[(String, String)],
) -> Allowed {
    let ctx = Context {
        consumer: principal.map(|p| p.consumer.as_str()),
        groups: principal.map_or(&[], |p| p.groups.as_slice()),
        route: Some(&route.name),
        identity: principal.map(|p| p.identity.as_str()),
        ip: ip.map(|ip| ip.to_string()),
        claims: principal.and_then(|p| p.claims.as_deref()),
    };
    let mut out = Allowed::default();
    for (name, template) in &route.upstream_headers {
        match template.render(&ctx) {
            Some(v) => out.upstream_headers.push((name.clone(), v)),
            None => out.remove_headers.push(name.clone()),
        }
    }
    for &i in &route.identities {
        let Some(identity) = policy.identities.get(i) else {
            continue;
        };
        let cred = match &identity.kind {
            IdentityKind::ApiKey(c) => c,
            IdentityKind::Jwt(j) => &j.credential,
            IdentityKind::Anonymous { .. } => continue,
        };
        if cred.hide {
            match &cred.source {
                CredentialSource::Header(h) => out.remove_headers.push(h.clone()),
                CredentialSource::Query(q) => out.remove_query.push(q.clone()),
                CredentialSource::Cookie(_) => {}
            }
        }
    }
    // Every identity header not set above goes too (a public route, a route with its own
    // header names, a consumer without groups): only quorate writes them.
    for name in &policy.identity_headers {
        if !out.upstream_headers.iter().any(|(n, _)| n == name)
            && !out.remove_headers.contains(name)
        {
            out.remove_headers.push(name.clone());
        }
    }
    for (name, template) in &route.client_headers {
        if let Some(v) = template.render(&ctx) {
            out.client_headers.push((name.clone(), v));
        }
    }
    out.client_headers.extend(rate_headers.iter().cloned());
    out
}

#[cfg(test)]
mod tests;
