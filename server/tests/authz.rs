//! Authorization against a real in-process node on loopback port 0: HTTP forward-auth
//! (nginx-, Caddy- and Envoy-HTTP-style requests) over real HTTP, and Envoy ext_authz v3
//! over real gRPC with envoy-types' generated client. API keys, a JWT issuer whose JWKS a
//! local axum server publishes, and an HS256 issuer whose secret sits in a file.
//!
//! The last test asserts that no secret — raw API key, JWT, HS secret — shows up in the
//! logs (captured from tracing), `/metrics`, the data directory (Raft log and snapshot)
//! or `GET /admin/v1/policy`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use quorate_server::authz::credential::hash_key_hex;
use quorate_server::config::Config;
use quorate_server::node::{self, Listeners};
use serde_json::json;

const ALICE_KEY: &str = "ak_live_alice_0123456789abcdef";
const BOB_KEY: &str = "ak_live_bob_fedcba9876543210";
const HS_SECRET: &str = "hs-secret-value-never-logged-42";
/// The admin token the test node is configured with.
const ADMIN_TOKEN: &str = "authz-test-admin-token";
const RSA1_KEY: &str = include_str!("../src/authz/testdata/rsa1.key");
const ISSUER: &str = "https://issuer.test";

/// Every log line of this test binary (all tests share the process).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer_buf = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,quorate_server=trace",
            ))
            .with_writer(move || LogWriter(Arc::clone(&writer_buf)))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A stand-in issuer publishing a JWKS document.
async fn jwks_server() -> (String, tokio::sync::oneshot::Sender<()>) {
    let key = EncodingKey::from_rsa_pem(RSA1_KEY.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let body = json!({"keys": [jwk]}).to_string();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

fn policy(jwks_url: &str, secret_file: &str) -> String {
    format!(
        r#"
identities:
  - name: keys
    api_key: {{header: x-api-key, hide: true}}
  - name: tokens
    jwt:
      issuer: {ISSUER}
      audiences: [api]
      algorithms: [RS256]
      jwks_url: {jwks_url}
      groups_claim: roles
  - name: partner
    jwt:
      issuer: partner
      algorithms: [HS256]
      secret: {{file: {secret_file}}}
consumers:
  - id: alice
    groups: [admins, paying]
    credentials:
      - api_key_sha256: "{alice}"
  - id: bob
    groups: [free]
    credentials:
      - api_key_sha256: "{bob}"
routes:
  - name: admin
    match: {{path_prefix: /admin/}}
    identities: [keys, tokens]
    allow: {{groups: [admins]}}
  - name: api
    match: {{host: api.example.com, path_prefix: /v1/}}
    identities: [keys, tokens, partner]
    limits:
      - {{name: per_consumer, key: consumer, limit: 3, window: hour}}
      - {{name: per_org, key: {{claim: org}}, limit: 100, window: hour}}
  - name: by_ip
    match: {{path_prefix: /ip/}}
    identities: [keys]
    limits:
      - {{name: per_ip, key: ip, limit: 3, window: hour}}
defaults:
  trusted_proxies: 1
"#,
        alice = hash_key_hex(ALICE_KEY),
        bob = hash_key_hex(BOB_KEY),
    )
}

struct TestNode {
    grpc: SocketAddr,
    http: SocketAddr,
    data: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
    _jwks_stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    async fn start() -> TestNode {
        logs();
        let (jwks_url, jwks_stop) = jwks_server().await;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hs.secret");
        std::fs::write(&secret, format!("{HS_SECRET}\n")).unwrap();
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(
            &policy_path,
            policy(&jwks_url, &secret.display().to_string()),
        )
        .unwrap();
        let data = dir.path().join("data");
        let mut config = Config::single_node(data.clone());
        config.policy_file = Some(policy_path);
        // Snapshot often, so the no-secrets test sees a snapshot file.
        config.raft.snapshot_every = 5;
        config.admin_token = Some(ADMIN_TOKEN.into());
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let grpc = listeners.grpc.local_addr().unwrap();
        let http = listeners.http.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(node::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        let node = TestNode {
            grpc,
            http,
            data,
            _stop: stop,
            _jwks_stop: jwks_stop,
            _dir: dir,
        };
        node.wait_ready().await;
        node
    }

    /// Polls until the policy is live and a decision goes through, with a deadline.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::new();
        loop {
            let ready = match http
                .get(format!("http://{}/admin/v1/policy", self.http))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
            {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["version"].as_u64())
                    .is_some(),
                Err(_) => false,
            };
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn ext_authz(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

fn jwt(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA1_KEY.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    encode(&header, &claims, &key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Caddy/Traefik-style forward-auth call.
async fn caddy(
    node: &TestNode,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(node.url("/authz"))
        .header("x-forwarded-method", method)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-host", "api.example.com")
        .header("x-forwarded-for", "203.0.113.7");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn h<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn forward_auth_allows_401s_403s_and_429s() {
    let node = TestNode::start().await;

    // Allowed, with the headers the proxy copies upstream.
    let r = caddy(&node, "GET", "/v1/items?x=1", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-consumer-id"), Some("alice"));
    assert_eq!(h(&r, "x-consumer-groups"), Some("admins,paying"));
    assert!(h(&r, "ratelimit").is_some());

    // No credentials: 401 with a challenge and a JSON body.
    let r = caddy(&node, "GET", "/v1/items", &[]).await;
    assert_eq!(r.status(), 401);
    let challenge = h(&r, "www-authenticate").unwrap().to_string();
    assert!(
        challenge.contains("Bearer realm=\"quorate\""),
        "{challenge}"
    );
    assert_eq!(h(&r, "content-type"), Some("application/json"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");

    // ACL: bob is not an admin.
    let r = caddy(&node, "GET", "/admin/users", &[("x-api-key", BOB_KEY)]).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");

    // 3 per consumer per hour: alice has used 1.
    for _ in 0..2 {
        let r = caddy(&node, "GET", "/v1/items", &[("x-api-key", ALICE_KEY)]).await;
        assert_eq!(r.status(), 200);
    }
    let r = caddy(&node, "GET", "/v1/items", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = h(&r, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(h(&r, "ratelimit-policy").unwrap().contains("per_consumer"));
    // Bob still has his own quota.
    let r = caddy(&node, "GET", "/v1/items", &[("x-api-key", BOB_KEY)]).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn denied_identities_consume_no_quota() {
    let node = TestNode::start().await;
    // 3 per client IP per hour; five failed attempts from that IP first.
    for _ in 0..5 {
        let r = caddy(&node, "GET", "/ip/x", &[("x-api-key", "guessed-key")]).await;
        assert_eq!(r.status(), 401);
    }
    for _ in 0..3 {
        let r = caddy(&node, "GET", "/ip/x", &[("x-api-key", BOB_KEY)]).await;
        assert_eq!(
            r.status(),
            200,
            "failed attempts must not have used the quota"
        );
    }
    let r = caddy(&node, "GET", "/ip/x", &[("x-api-key", BOB_KEY)]).await;
    assert_eq!(r.status(), 429);
    // The per-IP key reads the trusted X-Forwarded-For hop, not the peer (127.0.0.1).
    let r = reqwest::Client::new()
        .get(node.url("/authz"))
        .header("x-forwarded-uri", "/ip/x")
        .header("x-forwarded-for", "203.0.113.8")
        .header("x-api-key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn forward_auth_speaks_nginx_caddy_and_envoy_http() {
    let node = TestNode::start().await;
    let http = reqwest::Client::new();
    // nginx: X-Original-URI / X-Original-Method, route named in the path.
    let r = http
        .get(node.url("/authz/admin"))
        .header("x-original-uri", "/whatever")
        .header("x-original-method", "POST")
        .header("x-api-key", ALICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(node.url("/authz/admin"))
        .header("x-original-uri", "/whatever")
        .header("x-api-key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A client adding the other family to steer matching gets a 400.
    let r = http
        .get(node.url("/authz"))
        .header("x-original-uri", "/admin/users")
        .header("x-forwarded-uri", "/v1/items")
        .header("x-api-key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Envoy HTTP-service mode: the original path follows /authz, with our Host.
    let r = http
        .post(node.url("/authz/v1/items?page=2"))
        .header("host", "api.example.com")
        .header("x-api-key", BOB_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-consumer-id"), Some("bob"));
    // Unknown route name.
    let r = http
        .get(node.url("/authz/nope"))
        .header("x-forwarded-uri", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Invalid UTF-8 in a header is a clean 400.
    let r = http
        .get(node.url("/authz"))
        .header("x-forwarded-uri", "/v1/items")
        .header(
            "x-api-key",
            reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn forward_auth_with_jwts() {
    let node = TestNode::start().await;
    let token = jwt(json!({
        "iss": ISSUER, "aud": "api", "sub": "carol", "org": "acme",
        "roles": ["admins"], "exp": now() + 600,
    }));
    let bearer = format!("Bearer {token}");
    let r = caddy(&node, "GET", "/admin/x", &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), 200, "admins from the roles claim");
    assert_eq!(h(&r, "x-consumer-id"), Some("carol"));

    let expired = jwt(json!({"iss": ISSUER, "aud": "api", "sub": "carol", "exp": now() - 600}));
    let r = caddy(
        &node,
        "GET",
        "/v1/x",
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(h(&r, "www-authenticate").unwrap().contains("invalid_token"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    for garbage in [
        "Bearer x.y.z",
        "Bearer ....",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
    ] {
        let r = caddy(&node, "GET", "/v1/x", &[("authorization", garbage)]).await;
        assert_eq!(r.status(), 401, "{garbage}");
    }

    // HS256 partner tokens, secret from a file.
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "partner", "sub": "partner-1", "exp": now() + 600}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let r = caddy(
        &node,
        "GET",
        "/v1/x",
        &[("authorization", &format!("Bearer {hs}"))],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "x-consumer-id"), Some("partner-1"));
}

fn check_request(path: &str, headers: &[(&str, &str)], route: Option<&str>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "198.51.100.4".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "api.example.com".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .chain([(":path".to_string(), path.to_string())])
                        .collect::<HashMap<_, _>>(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: route
                .map(|r| HashMap::from([("route".to_string(), r.to_string())]))
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}

fn header_of<'a>(
    headers: &'a [envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

#[tokio::test]
async fn ext_authz_over_grpc() {
    let node = TestNode::start().await;
    let mut client = node.ext_authz().await;

    // Allowed: OK, upstream headers overwrite, the key is hidden, metadata for Envoy.
    let r = client
        .check(check_request(
            "/v1/items?x=1",
            &[("x-api-key", ALICE_KEY), ("x-consumer-id", "forged")],
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 0);
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(header_of(&ok.headers, "x-consumer-id"), Some("alice"));
    assert!(ok.headers_to_remove.contains(&"x-api-key".to_string()));
    assert!(header_of(&ok.response_headers_to_add, "ratelimit").is_some());
    let meta = r.dynamic_metadata.as_ref().unwrap();
    assert!(matches!(
        meta.fields["consumer"].kind.as_ref(),
        Some(Kind::StringValue(c)) if c == "alice"
    ));
    assert!(matches!(
        meta.fields["route"].kind.as_ref(),
        Some(Kind::StringValue(c)) if c == "api"
    ));

    // Unauthenticated: a successful RPC with status 16 and a 401 denied_response.
    let r = client
        .check(check_request("/v1/items", &[], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), tonic::Code::Unauthenticated as i32);
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 401);
    assert!(header_of(&denied.headers, "www-authenticate").is_some());
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["error"], "unauthenticated");

    // Forbidden via a route named in context_extensions.
    let r = client
        .check(check_request(
            "/anything",
            &[("x-api-key", BOB_KEY)],
            Some("admin"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), tonic::Code::PermissionDenied as i32);
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 403);

    // Over the limit: RESOURCE_EXHAUSTED, 429 with Retry-After.
    let mut last = None;
    for _ in 0..4 {
        last = Some(
            client
                .check(check_request("/v1/items", &[("x-api-key", BOB_KEY)], None))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let r = last.unwrap();
    assert_eq!(code(&r), tonic::Code::ResourceExhausted as i32);
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 429);
    assert!(header_of(&denied.headers, "retry-after").is_some());

    // Garbage: an empty request is a clean 400 deny, not an RPC error.
    let r = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), tonic::Code::InvalidArgument as i32);
}

fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn no_secret_appears_in_logs_metrics_storage_or_policy() {
    let node = TestNode::start().await;
    let token = jwt(json!({
        "iss": ISSUER, "aud": "api", "sub": "dave", "org": "acme", "exp": now() + 600,
    }));
    let expired = jwt(json!({"iss": ISSUER, "aud": "api", "sub": "dave", "exp": now() - 999}));
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "partner", "sub": "p", "exp": now() + 600}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let mut client = node.ext_authz().await;
    for _ in 0..3 {
        caddy(&node, "GET", "/v1/a", &[("x-api-key", ALICE_KEY)]).await;
        caddy(&node, "GET", "/v1/a", &[("x-api-key", "wrong-key-value")]).await;
        caddy(
            &node,
            "GET",
            "/v1/a",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        caddy(
            &node,
            "GET",
            "/v1/a",
            &[("authorization", &format!("Bearer {expired}"))],
        )
        .await;
        caddy(
            &node,
            "GET",
            "/v1/a",
            &[("authorization", &format!("Bearer {hs}"))],
        )
        .await;
        client
            .check(check_request("/v1/b", &[("x-api-key", BOB_KEY)], None))
            .await
            .unwrap();
        client
            .check(check_request(
                "/v1/b",
                &[("authorization", &format!("Bearer {token}"))],
                None,
            ))
            .await
            .unwrap();
    }
    // Let the strict batches commit and a snapshot be written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !files_under(&node.data)
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "snapshot.bin"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot was written"
        );
        caddy(&node, "GET", "/v1/a", &[("x-api-key", BOB_KEY)]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let secrets = [
        ("alice's API key", ALICE_KEY.to_string()),
        ("bob's API key", BOB_KEY.to_string()),
        ("a wrong API key", "wrong-key-value".to_string()),
        ("a JWT", token.clone()),
        (
            "a JWT signature",
            token.rsplit('.').next().unwrap().to_string(),
        ),
        ("an expired JWT", expired.clone()),
        ("an HS JWT", hs.clone()),
        ("the HS secret", HS_SECRET.to_string()),
    ];
    let metrics = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("quorate_authz_decisions_total"),
        "{metrics}"
    );
    let policy = reqwest::Client::new()
        .get(node.url("/admin/v1/policy"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        policy.contains(&hash_key_hex(ALICE_KEY)),
        "the policy holds the hash"
    );
    let logs = logs().lock().unwrap().clone();
    assert!(
        contains(&logs, "authz denied"),
        "trace logging was captured"
    );
    let stored: Vec<(PathBuf, Vec<u8>)> = files_under(&node.data)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p, bytes)
        })
        .collect();
    assert!(!stored.is_empty());
    for (what, secret) in &secrets {
        assert!(!contains(&logs, secret), "{what} appears in the logs");
        assert!(
            !metrics.contains(secret.as_str()),
            "{what} appears in /metrics"
        );
        assert!(
            !policy.contains(secret.as_str()),
            "{what} appears in the policy"
        );
        for (path, bytes) in &stored {
            assert!(
                !contains(bytes, secret),
                "{what} appears in {}",
                path.display()
            );
        }
    }
}
