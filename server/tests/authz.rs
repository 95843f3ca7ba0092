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
use reqwest::header::HeaderValue;
use serde_json::json;

mod support;

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
    _node: support::RunningNode,
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
        let running = support::start_node(config).await;
        let node = TestNode {
            grpc: running.grpc,
            http: running.http,
            data,
            _node: running,
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

fn h<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

// === forward-auth cases ===

/// What a forward-auth answer must carry besides its status.
#[derive(Debug, Clone)]
enum Want {
    /// The header has exactly this value.
    Header(&'static str, &'static str),
    /// The header is present.
    HasHeader(&'static str),
    /// The header contains this text.
    HeaderContains(&'static str, &'static str),
    /// `Retry-After` is a whole number of seconds, at least this many.
    RetryAfterAtLeast(u64),
    /// The JSON body's field has exactly this string value.
    Body(&'static str, &'static str),
    /// The JSON body's field is a string containing this text.
    BodyContains(&'static str, &'static str),
}

/// One forward-auth request (sent `times` times), the status every answer must have, and
/// what the last answer must carry.
#[derive(Debug, Clone)]
struct FwdCase {
    what: String,
    post: bool,
    path: &'static str,
    headers: Vec<(&'static str, HeaderValue)>,
    times: usize,
    status: u16,
    want: Vec<Want>,
}

fn value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}

impl FwdCase {
    /// A Caddy/Traefik-style call (`X-Forwarded-*`, host `api.example.com`, client IP
    /// 203.0.113.7 behind one trusted proxy) with extra `headers`.
    fn caddy(what: &str, method: &str, uri: &str, headers: &[(&'static str, &str)]) -> FwdCase {
        let mut all = vec![
            ("x-forwarded-method", value(method)),
            ("x-forwarded-uri", value(uri)),
            ("x-forwarded-host", value("api.example.com")),
            ("x-forwarded-for", value("203.0.113.7")),
        ];
        all.extend(headers.iter().map(|(k, v)| (*k, value(v))));
        FwdCase::raw(what, "/authz", all)
    }

    /// A GET to `path` on the HTTP port with exactly `headers`.
    fn raw(what: &str, path: &'static str, headers: Vec<(&'static str, HeaderValue)>) -> FwdCase {
        FwdCase {
            what: what.to_string(),
            post: false,
            path,
            headers,
            times: 1,
            status: 200,
            want: Vec::new(),
        }
    }

    fn post(mut self) -> FwdCase {
        self.post = true;
        self
    }

    fn times(mut self, n: usize) -> FwdCase {
        self.times = n;
        self
    }

    fn status(mut self, status: u16) -> FwdCase {
        self.status = status;
        self
    }

    fn want(mut self, want: Want) -> FwdCase {
        self.want.push(want);
        self
    }
}

/// Checks the last answer of `case` against its header and body expectations.
async fn check_answer(case: &FwdCase, r: reqwest::Response) {
    let what = &case.what;
    let shown = format!("{:?}", r.headers());
    for want in &case.want {
        let (ok, expected) = match want {
            Want::Header(name, v) => (h(&r, name) == Some(*v), format!("{name}: {v}")),
            Want::HasHeader(name) => (h(&r, name).is_some(), format!("a {name} header")),
            Want::HeaderContains(name, part) => (
                h(&r, name).is_some_and(|v| v.contains(part)),
                format!("{name} containing {part:?}"),
            ),
            Want::RetryAfterAtLeast(n) => (
                h(&r, "retry-after")
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v >= *n),
                format!("retry-after >= {n}"),
            ),
            Want::Body(..) | Want::BodyContains(..) => continue,
        };
        assert!(ok, "{what}: expected {expected} in {shown}");
    }
    let wants_body = case
        .want
        .iter()
        .any(|w| matches!(w, Want::Body(..) | Want::BodyContains(..)));
    if !wants_body {
        return;
    }
    let body: serde_json::Value = r.json().await.unwrap();
    for want in &case.want {
        match want {
            Want::Body(field, v) => assert_eq!(body[*field], *v, "{what}: body {body}"),
            Want::BodyContains(field, part) => assert!(
                body[*field].as_str().is_some_and(|s| s.contains(part)),
                "{what}: body.{field} should contain {part:?}: {body}"
            ),
            _ => {}
        }
    }
}

/// Runs the cases in order against one node (earlier cases spend quota later ones see).
async fn run_forward_auth(node: &TestNode, cases: &[FwdCase]) {
    let http = reqwest::Client::new();
    for case in cases {
        let mut last = None;
        for i in 0..case.times {
            let mut req = if case.post {
                http.post(node.url(case.path))
            } else {
                http.get(node.url(case.path))
            };
            for (k, v) in &case.headers {
                req = req.header(*k, v.clone());
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), case.status, "{} (call {})", case.what, i + 1);
            last = Some(r);
        }
        check_answer(case, last.unwrap()).await;
    }
}

#[tokio::test]
async fn forward_auth_allows_401s_403s_and_429s() {
    use Want::*;
    let node = TestNode::start().await;
    let alice = [("x-api-key", ALICE_KEY)];
    let bob = [("x-api-key", BOB_KEY)];
    let cases = [
        // Allowed, with the headers the proxy copies upstream.
        FwdCase::caddy("alice allowed", "GET", "/v1/items?x=1", &alice)
            .want(Header("x-consumer-id", "alice"))
            .want(Header("x-consumer-groups", "admins,paying"))
            .want(HasHeader("ratelimit")),
        // No credentials: 401 with a challenge and a JSON body.
        FwdCase::caddy("no credentials", "GET", "/v1/items", &[])
            .status(401)
            .want(HeaderContains(
                "www-authenticate",
                "Bearer realm=\"quorate\"",
            ))
            .want(Header("content-type", "application/json"))
            .want(Body("error", "unauthenticated")),
        // ACL: bob is not an admin.
        FwdCase::caddy("bob on an admin route", "GET", "/admin/users", &bob)
            .status(403)
            .want(Body("error", "forbidden")),
        // 3 per consumer per hour: alice has used 1.
        FwdCase::caddy("alice's 2nd and 3rd", "GET", "/v1/items", &alice).times(2),
        FwdCase::caddy("alice's 4th", "GET", "/v1/items", &alice)
            .status(429)
            .want(RetryAfterAtLeast(1))
            .want(HeaderContains("ratelimit-policy", "per_consumer")),
        // Bob still has his own quota.
        FwdCase::caddy("bob's own quota", "GET", "/v1/items", &bob),
    ];
    run_forward_auth(&node, &cases).await;
}

#[tokio::test]
async fn denied_identities_consume_no_quota() {
    let node = TestNode::start().await;
    let bob = [("x-api-key", BOB_KEY)];
    let cases = [
        // 3 per client IP per hour; five failed attempts from that IP first.
        FwdCase::caddy(
            "a guessed key",
            "GET",
            "/ip/x",
            &[("x-api-key", "guessed-key")],
        )
        .times(5)
        .status(401),
        FwdCase::caddy(
            "failed attempts must not have used the quota",
            "GET",
            "/ip/x",
            &bob,
        )
        .times(3),
        FwdCase::caddy("the 4th from that IP", "GET", "/ip/x", &bob).status(429),
        // The per-IP key reads the trusted X-Forwarded-For hop, not the peer (127.0.0.1).
        FwdCase::raw(
            "another X-Forwarded-For hop",
            "/authz",
            vec![
                ("x-forwarded-uri", value("/ip/x")),
                ("x-forwarded-for", value("203.0.113.8")),
                ("x-api-key", value(BOB_KEY)),
            ],
        ),
    ];
    run_forward_auth(&node, &cases).await;
}

#[tokio::test]
async fn forward_auth_speaks_nginx_caddy_and_envoy_http() {
    let node = TestNode::start().await;
    let cases = [
        // nginx: X-Original-URI / X-Original-Method, route named in the path.
        FwdCase::raw(
            "nginx, alice on the admin route",
            "/authz/admin",
            vec![
                ("x-original-uri", value("/whatever")),
                ("x-original-method", value("POST")),
                ("x-api-key", value(ALICE_KEY)),
            ],
        ),
        FwdCase::raw(
            "nginx, bob on the admin route",
            "/authz/admin",
            vec![
                ("x-original-uri", value("/whatever")),
                ("x-api-key", value(BOB_KEY)),
            ],
        )
        .status(403),
        // A client adding the other family to steer matching gets a 400.
        FwdCase::raw(
            "both header families",
            "/authz",
            vec![
                ("x-original-uri", value("/admin/users")),
                ("x-forwarded-uri", value("/v1/items")),
                ("x-api-key", value(BOB_KEY)),
            ],
        )
        .status(400),
        // Envoy HTTP-service mode: the original path follows /authz, with our Host.
        FwdCase::raw(
            "Envoy HTTP service",
            "/authz/v1/items?page=2",
            vec![
                ("host", value("api.example.com")),
                ("x-api-key", value(BOB_KEY)),
            ],
        )
        .post()
        .want(Want::Header("x-consumer-id", "bob")),
        // Unknown route name.
        FwdCase::raw(
            "unknown route name",
            "/authz/nope",
            vec![("x-forwarded-uri", value("/"))],
        )
        .status(403),
        // Invalid UTF-8 in a header is a clean 400.
        FwdCase::raw(
            "invalid UTF-8 in a header",
            "/authz",
            vec![
                ("x-forwarded-uri", value("/v1/items")),
                ("x-api-key", HeaderValue::from_bytes(b"\xff\xfe").unwrap()),
            ],
        )
        .status(400),
    ];
    run_forward_auth(&node, &cases).await;
}

#[tokio::test]
async fn forward_auth_with_jwts() {
    let node = TestNode::start().await;
    let bearer = |t: String| format!("Bearer {t}");
    let token = bearer(jwt(json!({
        "iss": ISSUER, "aud": "api", "sub": "carol", "org": "acme",
        "roles": ["admins"], "exp": now() + 600,
    })));
    let expired = bearer(jwt(
        json!({"iss": ISSUER, "aud": "api", "sub": "carol", "exp": now() - 600}),
    ));
    // HS256 partner tokens, secret from a file.
    let hs = bearer(
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"iss": "partner", "sub": "partner-1", "exp": now() + 600}),
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        )
        .unwrap(),
    );
    let mut cases = vec![
        FwdCase::caddy(
            "admins from the roles claim",
            "GET",
            "/admin/x",
            &[("authorization", &token)],
        )
        .want(Want::Header("x-consumer-id", "carol")),
        FwdCase::caddy(
            "an expired JWT",
            "GET",
            "/v1/x",
            &[("authorization", &expired)],
        )
        .status(401)
        .want(Want::HeaderContains("www-authenticate", "invalid_token"))
        .want(Want::BodyContains("reason", "expired")),
    ];
    for garbage in [
        "Bearer x.y.z",
        "Bearer ....",
        "Bearer eyJhbGciOiJub25lIn0.e30.",
    ] {
        cases.push(
            FwdCase::caddy(garbage, "GET", "/v1/x", &[("authorization", garbage)]).status(401),
        );
    }
    cases.push(
        FwdCase::caddy(
            "an HS256 partner token",
            "GET",
            "/v1/x",
            &[("authorization", &hs)],
        )
        .want(Want::Header("x-consumer-id", "partner-1")),
    );
    run_forward_auth(&node, &cases).await;
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

/// What an ext_authz answer must carry besides its gRPC status code.
#[derive(Debug, Clone, Copy)]
enum ExtWant {
    /// An OK response setting this upstream header to this value.
    OkHeader(&'static str, &'static str),
    /// An OK response removing this header before the request goes upstream.
    OkRemoves(&'static str),
    /// An OK response adding this header to the client's response.
    OkResponseHeader(&'static str),
    /// Dynamic metadata for Envoy: this field holds this string.
    Metadata(&'static str, &'static str),
    /// A denied response with this HTTP status.
    DeniedStatus(u32),
    /// A denied response with this header.
    DeniedHeader(&'static str),
    /// A denied response whose JSON body's `error` is this.
    DeniedError(&'static str),
}

/// One ext_authz Check (sent `times` times; the last answer is checked).
struct ExtCase {
    what: &'static str,
    request: CheckRequest,
    times: usize,
    code: tonic::Code,
    want: Vec<ExtWant>,
}

fn check_ext(case: &ExtCase, r: &CheckResponse) {
    let what = case.what;
    assert_eq!(code(r), case.code as i32, "{what}: {r:?}");
    for want in &case.want {
        let ok = match (*want, &r.http_response) {
            (ExtWant::OkHeader(name, v), Some(HttpResponse::OkResponse(ok))) => {
                header_of(&ok.headers, name) == Some(v)
            }
            (ExtWant::OkRemoves(name), Some(HttpResponse::OkResponse(ok))) => {
                ok.headers_to_remove.contains(&name.to_string())
            }
            (ExtWant::OkResponseHeader(name), Some(HttpResponse::OkResponse(ok))) => {
                header_of(&ok.response_headers_to_add, name).is_some()
            }
            (ExtWant::Metadata(field, v), _) => r.dynamic_metadata.as_ref().is_some_and(|m| {
                matches!(
                    m.fields.get(field).and_then(|f| f.kind.as_ref()),
                    Some(Kind::StringValue(s)) if s == v
                )
            }),
            (ExtWant::DeniedStatus(status), Some(HttpResponse::DeniedResponse(d))) => {
                d.status.as_ref().map(|s| s.code) == Some(status as i32)
            }
            (ExtWant::DeniedHeader(name), Some(HttpResponse::DeniedResponse(d))) => {
                header_of(&d.headers, name).is_some()
            }
            (ExtWant::DeniedError(error), Some(HttpResponse::DeniedResponse(d))) => {
                serde_json::from_str::<serde_json::Value>(&d.body)
                    .is_ok_and(|body| body["error"] == error)
            }
            _ => false,
        };
        assert!(ok, "{what}: expected {want:?} in {r:?}");
    }
}

#[tokio::test]
async fn ext_authz_over_grpc() {
    use tonic::Code;
    use ExtWant::*;
    let node = TestNode::start().await;
    let mut client = node.ext_authz().await;
    let bob = [("x-api-key", BOB_KEY)];
    let cases = [
        // Allowed: OK, upstream headers overwrite, the key is hidden, metadata for Envoy.
        ExtCase {
            what: "alice allowed, a forged consumer header overwritten",
            request: check_request(
                "/v1/items?x=1",
                &[("x-api-key", ALICE_KEY), ("x-consumer-id", "forged")],
                None,
            ),
            times: 1,
            code: Code::Ok,
            want: vec![
                OkHeader("x-consumer-id", "alice"),
                OkRemoves("x-api-key"),
                OkResponseHeader("ratelimit"),
                Metadata("consumer", "alice"),
                Metadata("route", "api"),
            ],
        },
        // Unauthenticated: a successful RPC with status 16 and a 401 denied_response.
        ExtCase {
            what: "no credentials",
            request: check_request("/v1/items", &[], None),
            times: 1,
            code: Code::Unauthenticated,
            want: vec![
                DeniedStatus(401),
                DeniedHeader("www-authenticate"),
                DeniedError("unauthenticated"),
            ],
        },
        // Forbidden via a route named in context_extensions.
        ExtCase {
            what: "bob on the admin route named in context_extensions",
            request: check_request("/anything", &bob, Some("admin")),
            times: 1,
            code: Code::PermissionDenied,
            want: vec![DeniedStatus(403)],
        },
        // Over the limit: 3 per consumer per hour, then RESOURCE_EXHAUSTED, 429 with
        // Retry-After.
        ExtCase {
            what: "bob within his quota",
            request: check_request("/v1/items", &bob, None),
            times: 3,
            code: Code::Ok,
            want: vec![],
        },
        ExtCase {
            what: "bob over his quota",
            request: check_request("/v1/items", &bob, None),
            times: 1,
            code: Code::ResourceExhausted,
            want: vec![DeniedStatus(429), DeniedHeader("retry-after")],
        },
        // Garbage: an empty request is a clean 400 deny, not an RPC error.
        ExtCase {
            what: "an empty request",
            request: CheckRequest::default(),
            times: 1,
            code: Code::InvalidArgument,
            want: vec![],
        },
    ];
    for case in &cases {
        for _ in 1..case.times {
            let r = client
                .check(case.request.clone())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(code(&r), case.code as i32, "{}: {r:?}", case.what);
        }
        let r = client
            .check(case.request.clone())
            .await
            .unwrap()
            .into_inner();
        check_ext(case, &r);
    }
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
