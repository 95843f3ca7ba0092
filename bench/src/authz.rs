//! Envoy ext_authz v3 (`envoy.service.auth.v3.Authorization/Check`): the `ext-authz` load
//! mode.
//!
//! Each request is a `GET <path>` to `<host>` carrying `x-bench-key: <prefix><key>` (the
//! key the bench policy's route limit counts on, drawn from the key space like `rls`
//! draws descriptor values) and, by `--identity`, an API key header, a bearer JWT (signed
//! once at start with an EdDSA test key whose public half is inline in the policy), or no
//! credential (a public route). An answer is verified: status code 0 with an
//! `ok_response` is an allow; non-zero with a `denied_response` is a deny (a *successful*
//! RPC, as Envoy expects); anything else is a bad answer. With `--expect-allow` (the
//! default) a deny is a bad answer too, so a policy or credential mistake cannot pass for
//! a fast run.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use rand::rngs::StdRng;
use tonic::transport::Channel;

use crate::keys::KeySpace;
use crate::rpc::{Caller, Outcome};

/// How the caller identifies itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Identity {
    /// `x-api-key: <key>` (hashed lookup on the server).
    ApiKey,
    /// `authorization: Bearer <jwt>` (verified, then cached by the server).
    Jwt,
    /// No credential: a public route.
    None,
}

/// The fixed part of every request.
#[derive(Debug, Clone)]
pub struct Shape {
    pub host: String,
    pub path: String,
    /// Credential headers (lower-cased names).
    pub credential: Vec<(String, String)>,
    pub key_prefix: String,
    pub keys: KeySpace,
    pub expect_allow: bool,
}

/// Builds a request for counter key `key`.
pub fn request(shape: &Shape, key: u64) -> CheckRequest {
    let mut headers: HashMap<String, String> = shape.credential.iter().cloned().collect();
    headers.insert("x-bench-key".into(), format!("{}{key}", shape.key_prefix));
    headers.insert(":authority".into(), shape.host.clone());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: shape.path.clone(),
                    host: shape.host.clone(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Checks one answer; returns (allowed, denied).
pub fn verify(r: &CheckResponse, expect_allow: bool) -> Result<(u64, u64), String> {
    let code = r.status.as_ref().map(|s| s.code).unwrap_or(0);
    match (&r.http_response, code) {
        (Some(HttpResponse::OkResponse(_)), 0) => Ok((1, 0)),
        (Some(HttpResponse::DeniedResponse(d)), c) if c != 0 => {
            if expect_allow {
                let http = d.status.as_ref().map(|s| s.code).unwrap_or(0);
                Err(format!("denied (status {c}, HTTP {http}): {}", d.body))
            } else {
                Ok((0, 1))
            }
        }
        (None, _) => Err(format!("no http_response (status {code})")),
        (Some(_), c) => Err(format!("response kind disagrees with status code {c}")),
    }
}

/// One `ext-authz` worker.
pub struct AuthzCaller {
    pub client: AuthorizationClient<Channel>,
    pub shape: std::sync::Arc<Shape>,
}

impl Caller for AuthzCaller {
    async fn call(&mut self, rng: &mut StdRng) -> Outcome {
        let req = request(&self.shape, self.shape.keys.sample(rng));
        match self.client.check(req).await {
            Err(status) => Outcome::from_status(&status),
            Ok(resp) => match verify(resp.get_ref(), self.shape.expect_allow) {
                Ok((allowed, denied)) => Outcome::Verified { allowed, denied },
                Err(why) => Outcome::Bad(why),
            },
        }
    }
}

/// Signs one EdDSA token valid for a day: `iss`, `aud`, `sub`, `iat`, `exp`.
pub fn sign_jwt(key_pem: &Path, iss: &str, aud: &str, sub: &str) -> anyhow::Result<String> {
    let pem = std::fs::read(key_pem)
        .with_context(|| format!("cannot read the JWT signing key {}", key_pem.display()))?;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).map_err(|e| {
        anyhow!(
            "{} is not an Ed25519 private key PEM: {e}",
            key_pem.display()
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    let claims = serde_json::json!({
        "iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + 86_400,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .map_err(|e| anyhow!("cannot sign the JWT: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::{DeniedHttpResponse, OkHttpResponse};
    use envoy_types::pb::google::rpc;

    fn shape() -> Shape {
        Shape {
            host: "bench.local".into(),
            path: "/key/x".into(),
            credential: vec![("x-api-key".into(), "secret".into())],
            key_prefix: "k".into(),
            keys: KeySpace::new(crate::keys::Distribution::Uniform, 10, 1.0).expect("keys"),
            expect_allow: true,
        }
    }

    #[test]
    fn requests_carry_key_and_credential() {
        let r = request(&shape(), 3);
        let http = r.attributes.and_then(|a| a.request).and_then(|r| r.http);
        let http = http.expect("http attributes");
        assert_eq!(http.headers["x-bench-key"], "k3");
        assert_eq!(http.headers["x-api-key"], "secret");
        assert_eq!(http.host, "bench.local");
    }

    #[test]
    fn allow_and_deny_are_told_apart() {
        let allow = CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        };
        assert_eq!(verify(&allow, true), Ok((1, 0)));
        let deny = CheckResponse {
            status: Some(rpc::Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse::default())),
            ..Default::default()
        };
        assert!(verify(&deny, true).is_err());
        assert_eq!(verify(&deny, false), Ok((0, 1)));
        assert!(verify(&CheckResponse::default(), false).is_err());
    }
}
