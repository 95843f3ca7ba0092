//! Envoy's external authorization v3: `envoy.service.auth.v3.Authorization/Check`, a thin
//! adapter over [`Authorizer::decide`].
//!
//! In: `attributes.request.http` (method, path with query, host, lower-cased headers —
//! or `header_map` when Envoy sends raw header bytes), the source address and
//! `context_extensions["route"]`. Out: a *successful* RPC either way. Allow = OK status
//! and `ok_response` (headers overwriting the upstream request's, headers removed,
//! client headers) plus `dynamic_metadata {consumer, groups, route, identity}` for later
//! filters such as the rate-limit filter. Deny = a non-OK `status` (UNAUTHENTICATED,
//! PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...) and `denied_response` with the HTTP status,
//! headers and a short JSON body. Only a failure to decide at all is an RPC error, which
//! Envoy's `failure_mode_allow` then governs.
//!
//! Header count and bytes are capped before any per-header work: over the caps is a
//! denial (INVALID_ARGUMENT, HTTP 431) — an answer, not an RPC error, so
//! `failure_mode_allow` cannot turn a header flood into an allow.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::authz::{within_caps, RequestHeaders};
use crate::decide::authz::{
    Authorizer, AuthzDecision, AuthzRequest, Denial, DenyKind, Metadata, Surface, Verdict,
};
use crate::error::{authz_status, deny_code};

/// The `context_extensions` key naming the route (set per Envoy route or vhost).
pub const ROUTE_EXTENSION: &str = "route";

#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    authz: Arc<Authorizer>,
}

impl ExtAuthzService {
    pub fn server(authz: Arc<Authorizer>) -> AuthorizationServer<ExtAuthzService> {
        AuthorizationServer::new(ExtAuthzService { authz })
    }
}

/// Header count and bytes of a check, counted without copying anything: both the
/// `headers` map and the raw `header_map` count.
fn header_caps(check: &CheckRequest) -> Result<(), String> {
    let Some(http) = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return Ok(());
    };
    let mut count = http.headers.len();
    let mut bytes: usize = http.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if let Some(map) = &http.header_map {
        count += map.headers.len();
        bytes += map
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.len() + h.raw_value.len())
            .sum::<usize>();
    }
    within_caps(count, bytes)
}

/// The surface-neutral request, or the cap a request is over. Otherwise never fails:
/// what is missing or unreadable makes the decision deny with 400.
pub fn to_request(check: CheckRequest) -> Result<AuthzRequest, String> {
    header_caps(&check)?;
    let attributes = check.attributes.unwrap_or_default();
    let peer: Option<IpAddr> = attributes
        .source
        .and_then(|s| s.address)
        .and_then(|a| a.address)
        .and_then(|a| match a {
            Address::SocketAddress(sa) => sa.address.parse().ok(),
            _ => None,
        });
    let route = attributes.context_extensions.get(ROUTE_EXTENSION).cloned();
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    let mut malformed = None;
    let mut pairs: Vec<(String, String)> = http.headers.into_iter().collect();
    if pairs.is_empty() {
        if let Some(map) = http.header_map {
            for h in map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value
                } else {
                    match String::from_utf8(h.raw_value) {
                        Ok(v) => v,
                        Err(_) => {
                            malformed = Some(format!("header {:?} is not valid UTF-8", h.key));
                            continue;
                        }
                    }
                };
                pairs.push((h.key, value));
            }
        }
    }
    // Envoy hands pseudo-headers over too; the decision reads method/path/host from
    // their own fields.
    pairs.retain(|(k, _)| !k.starts_with(':'));
    let mut target = http.path;
    if !http.query.is_empty() && !target.contains('?') {
        target.push('?');
        target.push_str(&http.query);
    }
    Ok(AuthzRequest {
        surface: Surface::ExtAuthz,
        method: http.method,
        target,
        host: http.host,
        headers: RequestHeaders::new(pairs),
        peer,
        route,
        forwarded_by: None,
        malformed,
    })
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: action as i32,
        keep_empty_value: false,
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// `{consumer, groups, route, identity}`, for Envoy's `dynamic_metadata`.
fn metadata(m: &Metadata) -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    if let Some(c) = &m.consumer {
        fields.insert("consumer".to_string(), string(c));
    }
    if let Some(r) = &m.route {
        fields.insert("route".to_string(), string(r));
    }
    if let Some(i) = &m.identity {
        fields.insert("identity".to_string(), string(i));
    }
    if m.consumer.is_some() {
        fields.insert(
            "groups".to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: m.groups.iter().map(|g| string(g)).collect(),
                })),
            },
        );
    }
    Struct {
        fields: fields.into_iter().collect(),
    }
}

/// The wire answer for a decision.
pub fn to_response(decision: AuthzDecision) -> CheckResponse {
    let dynamic_metadata = Some(metadata(&decision.metadata));
    match decision.verdict {
        Verdict::Allow(a) => {
            #[allow(deprecated)]
            let ok = OkHttpResponse {
                headers: a
                    .upstream_headers
                    .iter()
                    .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect(),
                headers_to_remove: a.remove_headers,
                dynamic_metadata: None,
                response_headers_to_add: a
                    .client_headers
                    .iter()
                    .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                    .collect(),
                query_parameters_to_set: Vec::new(),
                query_parameters_to_remove: a.remove_query,
            };
            CheckResponse {
                status: Some(rpc::Status {
                    code: tonic::Code::Ok as i32,
                    message: String::new(),
                    details: Vec::new(),
                }),
                dynamic_metadata,
                http_response: Some(HttpResponse::OkResponse(ok)),
            }
        }
        Verdict::Deny(d) => {
            let body = d.body();
            let mut headers: Vec<HeaderValueOption> = d
                .headers
                .iter()
                .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                .collect();
            headers.push(header(
                "content-type",
                "application/json",
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            ));
            CheckResponse {
                status: Some(rpc::Status {
                    code: deny_code(d.kind) as i32,
                    message: d.reason.clone(),
                    details: Vec::new(),
                }),
                dynamic_metadata,
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(d.status),
                    }),
                    headers,
                    body,
                })),
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = match to_request(request.into_inner()) {
            Ok(r) => r,
            Err(reason) => {
                let denial = Denial {
                    kind: DenyKind::BadRequest,
                    status: 431,
                    reason,
                    headers: Vec::new(),
                };
                return Ok(Response::new(to_response(AuthzDecision {
                    verdict: Verdict::Deny(denial),
                    metadata: Metadata::default(),
                })));
            }
        };
        let decision = self.authz.decide(request).await.map_err(authz_status)?;
        Ok(Response::new(to_response(decision)))
    }
}
