//! The authorization surfaces attacked as a client would, against the real binary: Envoy
//! ext_authz over gRPC (a tonic client with Envoy's own proto types) and HTTP forward-auth
//! over real sockets (reqwest, and raw HTTP/1.1 where a client library would clean the
//! path first).
//!
//! Covered: encoded paths and dot segments (the probes of issue 8 are denied or matched
//! as `/admin/`, never allowed as `/api/`, and spend no quota), host tricks (case, port,
//! trailing dot, IPv6 literals, userinfo), identity headers forged on a public route
//! (stripped), `X-Forwarded-*` / `X-Original-*` from an untrusted peer (ignored or
//! refused), and header floods (refused before any per-header work, node still serving).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{
    socket_address, Address as EnvoyAddress, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use quorate_e2e::{Cluster, NodeOptions, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

const ALICE: &str = "alice-attack-key";
const BOB: &str = "bob-attack-key";

/// The policy of issue 8's probes: `/admin/` for group `staff`, `/api/` for any key
/// holder (one request a year, so a single spent unit shows), a public route, a
/// CIDR-guarded one and a host-bound one.
fn attack_policy(trusted: &str) -> String {
    format!(
        r#"
identities:
  - name: keys
    api_key: {{header: x-api-key}}
consumers:
  - id: alice
    groups: [staff]
    credentials:
      - api_key_sha256: a950a03c0ad2abddadd252102dcc46b5f20c072ac4a8ddf016e063a0b0d1e3dd
  - id: bob
    groups: [free]
    credentials:
      - api_key_sha256: ec88d820f9ecde1141c6063325fd26435a07416914579978095d7808ac98b46c
routes:
  - name: admin
    match: {{path_prefix: /admin/}}
    identities: [keys]
    allow: {{groups: [staff]}}
  - name: hosted
    match: {{host: api.example.com, path_prefix: /hosted/}}
    identities: []
  - name: public
    match: {{path_prefix: /public/}}
    identities: []
  - name: internal
    match: {{path_prefix: /internal/}}
    identities: []
    allow: {{cidrs: [10.0.0.0/8]}}
  - name: api
    match: {{path_prefix: /api/}}
    identities: [keys]
    limits:
      - {{name: per_consumer, limit: 1, window: 365d}}
defaults:
  trusted_proxies: {trusted}
"#
    )
}

async fn node(trusted: &str) -> Cluster {
    Cluster::single(NodeOptions {
        policy: Some(attack_policy(trusted)),
        ..NodeOptions::default()
    })
    .await
    .unwrap()
}

// === ext_authz ===

async fn authz_client(node: &TestNode) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{}", node.grpc))
        .await
        .unwrap()
}

fn check_request(path: &str, host: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(EnvoyAddress {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(50000)),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: host.into(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

async fn ext_authz(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> CheckResponse {
    client.check(request).await.unwrap().into_inner()
}

/// (gRPC status code, HTTP status of the denial or 200, denial body).
fn outcome(r: &CheckResponse) -> (Code, u16, String) {
    let code = Code::from(r.status.as_ref().map_or(0, |s| s.code));
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            code,
            d.status.as_ref().map_or(0, |s| s.code as u16),
            d.body.clone(),
        ),
        _ => (code, 200, String::new()),
    }
}

fn removed(r: &CheckResponse) -> Vec<String> {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok.headers_to_remove.clone(),
        other => panic!("expected OK, got {other:?}"),
    }
}

#[tokio::test]
async fn ext_authz_encoded_paths_are_denied_and_spend_no_quota() {
    let cluster = node("{forward_auth: [127.0.0.1/32]}").await;
    let mut client = authz_client(cluster.node(1)).await;
    let bob = [("x-api-key", BOB)];
    // The probes of issue 8 and their family: matched as /admin/ (403 for bob), or
    // refused (400, the reason named). Never allowed as /api/.
    let probes: &[(&str, Code, u16, &str)] = &[
        (
            "/api/%2e%2e/admin/users",
            Code::PermissionDenied,
            403,
            "allowed group",
        ),
        (
            "/api/..%2fadmin/users",
            Code::InvalidArgument,
            400,
            "encoded '/'",
        ),
        (
            "/api/%2E%2e/admin/users",
            Code::PermissionDenied,
            403,
            "allowed group",
        ),
        (
            "/api/.%2e/admin/users",
            Code::PermissionDenied,
            403,
            "allowed group",
        ),
        (
            "/api/%2e%2e%2fadmin/users",
            Code::InvalidArgument,
            400,
            "encoded '/'",
        ),
        ("/api/..%5cadmin/users", Code::InvalidArgument, 400, "%5C"),
        ("/api/..\\admin/users", Code::InvalidArgument, 400, "%5C"),
        (
            "/api/..;/admin/users",
            Code::InvalidArgument,
            400,
            "path parameter",
        ),
        (
            "/api%3b/../admin/users",
            Code::InvalidArgument,
            400,
            "path parameter",
        ),
        (
            "/api/%2e%2e%3f/admin",
            Code::InvalidArgument,
            400,
            "encoded '?'",
        ),
        (
            "/api/%23/../admin",
            Code::InvalidArgument,
            400,
            "encoded '?' or '#'",
        ),
        (
            "/api/%00/../admin/users",
            Code::InvalidArgument,
            400,
            "control byte",
        ),
        ("/api/%0d%0a/x", Code::InvalidArgument, 400, "control byte"),
        (
            "/api/%c0%ae%c0%ae/admin",
            Code::InvalidArgument,
            400,
            "UTF-8",
        ),
        (
            "/api/%%32e/admin",
            Code::InvalidArgument,
            400,
            "percent-escape",
        ),
        (
            "/api/../../admin/users",
            Code::InvalidArgument,
            400,
            "above the root",
        ),
        (
            "/api//../admin/users",
            Code::InvalidArgument,
            400,
            "after '//'",
        ),
        (
            "//admin/users",
            Code::PermissionDenied,
            403,
            "allowed group",
        ),
        (
            "/api/./../admin/users",
            Code::PermissionDenied,
            403,
            "allowed group",
        ),
        (
            "/%61dmin/users",
            Code::PermissionDenied,
            403,
            "allowed group",
        ),
    ];
    for (path, code, status, reason) in probes {
        let r = ext_authz(&mut client, check_request(path, "api.example.com", &bob)).await;
        let (got_code, got_status, body) = outcome(&r);
        assert_eq!((got_code, got_status), (*code, *status), "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }
    // Bob's one unit a year is still there: no probe spent it...
    let r = ext_authz(
        &mut client,
        check_request("/api/items", "api.example.com", &bob),
    )
    .await;
    assert_eq!(outcome(&r).0, Code::Ok);
    // ...and now it is gone (the limit is real).
    let r = ext_authz(
        &mut client,
        check_request("/api/items", "api.example.com", &bob),
    )
    .await;
    assert_eq!(outcome(&r).1, 429);
    // Staff reach /admin/ by its encoded spelling too: it is the same route.
    let r = ext_authz(
        &mut client,
        check_request(
            "/api/%2e%2e/admin/users",
            "api.example.com",
            &[("x-api-key", ALICE)],
        ),
    )
    .await;
    assert_eq!(outcome(&r).0, Code::Ok);
    assert_eq!(
        r.dynamic_metadata.unwrap().fields["route"],
        envoy_types::pb::google::protobuf::Value {
            kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                "admin".into()
            ))
        }
    );
}

#[tokio::test]
async fn ext_authz_host_tricks() {
    let cluster = node("{forward_auth: [127.0.0.1/32]}").await;
    let mut client = authz_client(cluster.node(1)).await;
    for host in [
        "api.example.com",
        "API.EXAMPLE.COM",
        "api.example.com.",
        "api.example.com:8443",
        "Api.Example.Com.:443",
    ] {
        let r = ext_authz(&mut client, check_request("/hosted/x", host, &[])).await;
        assert_eq!(outcome(&r).0, Code::Ok, "{host}");
    }
    // Look-alikes do not match the host-bound route (and nothing else matches).
    for host in [
        "api.example.com.evil.net",
        "xapi.example.com",
        "[::1]",
        "[0:0::1]:80",
    ] {
        let r = ext_authz(&mut client, check_request("/hosted/x", host, &[])).await;
        assert_eq!(
            outcome(&r),
            (
                Code::PermissionDenied,
                403,
                r#"{"error":"no_route","reason":"no route matches this request"}"#.into()
            ),
            "{host}"
        );
    }
    // IPv6 literals are hosts like any other: host-less routes take them.
    let r = ext_authz(
        &mut client,
        check_request("/public/x", "[0:0::1]:8080", &[]),
    )
    .await;
    assert_eq!(outcome(&r).0, Code::Ok);
    // Not a host at all: refused, the reason named.
    for host in [
        "evil.com@api.example.com",
        "api.example.com,evil",
        "[::1",
        "a b",
        "api%2eexample.com",
    ] {
        let r = ext_authz(&mut client, check_request("/hosted/x", host, &[])).await;
        let (code, status, body) = outcome(&r);
        assert_eq!((code, status), (Code::InvalidArgument, 400), "{host}");
        assert!(body.contains("refused host"), "{host}: {body}");
    }
}

#[tokio::test]
async fn ext_authz_strips_forged_identity_and_ignores_untrusted_forwarded_for() {
    let cluster = node("{forward_auth: [127.0.0.1/32]}").await;
    let mut client = authz_client(cluster.node(1)).await;
    let forged = [
        ("x-consumer-id", "alice"),
        ("x-consumer-groups", "staff"),
        ("x-forwarded-for", "10.1.2.3"),
    ];
    let r = ext_authz(&mut client, check_request("/public/x", "h", &forged)).await;
    assert_eq!(outcome(&r).0, Code::Ok);
    let gone = removed(&r);
    for h in [
        "x-consumer-id",
        "x-consumer-groups",
        "x-quorate-failure-mode",
    ] {
        assert!(gone.iter().any(|g| g == h), "{h} not removed: {gone:?}");
    }
    // Envoy's source (127.0.0.1) is not a trusted ext_authz proxy: the forged
    // X-Forwarded-For does not make the caller internal.
    let r = ext_authz(&mut client, check_request("/internal/x", "h", &forged)).await;
    assert_eq!(outcome(&r).1, 403);
}

#[tokio::test]
async fn ext_authz_header_floods_are_refused_before_any_work() {
    let cluster = node("{forward_auth: [127.0.0.1/32]}").await;
    let mut client = authz_client(cluster.node(1)).await;
    let many: Vec<(String, String)> = (0..5000).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let started = std::time::Instant::now();
    let r = ext_authz(&mut client, check_request("/public/x", "h", &many_ref)).await;
    let (code, status, body) = outcome(&r);
    assert_eq!((code, status), (Code::InvalidArgument, 431), "{body}");
    assert!(body.contains("more than 256 request headers"), "{body}");
    let big = "v".repeat(70 * 1024);
    let r = ext_authz(
        &mut client,
        check_request("/public/x", "h", &[("x-big", &big)]),
    )
    .await;
    let (code, status, body) = outcome(&r);
    assert_eq!((code, status), (Code::InvalidArgument, 431), "{body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");
    eprintln!("header floods answered in {:?}", started.elapsed());
    // Still serving.
    let r = ext_authz(&mut client, check_request("/public/x", "h", &[])).await;
    assert_eq!(outcome(&r).0, Code::Ok);
}

// === forward-auth ===

/// One raw HTTP/1.1 request (the target exactly as given), answered with (status, body).
async fn raw_http(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("GET {target} HTTP/1.1\r\nhost: api.example.com\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

async fn forward_auth(
    node: &TestNode,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(format!("http://{}/authz", node.http));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

#[tokio::test]
async fn forward_auth_encoded_paths_in_every_header_family_and_envoy_mode() {
    let cluster = node("{forward_auth: [127.0.0.1/32]}").await;
    let n = cluster.node(1);
    for family in ["x-original-uri", "x-forwarded-uri"] {
        for (uri, status) in [
            ("/api/%2e%2e/admin/users", 403),
            ("/api/..%2fadmin/users", 400),
            ("/api/..;/admin/users", 400),
            ("/api/%5c../admin", 400),
        ] {
            let (got, _, body) = forward_auth(n, &[(family, uri), ("x-api-key", BOB)]).await;
            assert_eq!(got, status, "{family} {uri}: {body}");
        }
    }
    // Envoy's HTTP-service mode: the original path follows /authz, taken raw.
    for (target, status, reason) in [
        ("/authz/api/%2e%2e/admin/users", 403, "allowed group"),
        ("/authz/api/..%2fadmin/users", 400, "encoded '/'"),
        ("/authz/api/..%2Fadmin/users", 400, "encoded '/'"),
        ("/authz/api/%2e%2e%5cadmin", 400, "%5C"),
    ] {
        let (got, body) = raw_http(n.http, target, &[("x-api-key", BOB)]).await;
        assert_eq!(got, status, "{target}: {body}");
        assert!(body.contains(reason), "{target}: {body}");
    }
    // None of that spent bob's one unit.
    let (got, _, body) =
        forward_auth(n, &[("x-original-uri", "/api/items"), ("x-api-key", BOB)]).await;
    assert_eq!(got, 200, "{body}");
    // Host tricks through X-Forwarded-Host.
    for (host, status) in [
        ("API.example.com.:443", 200),
        ("api.example.com.evil.net", 403),
        ("evil@api.example.com", 400),
    ] {
        let (got, _, body) = forward_auth(
            n,
            &[("x-forwarded-uri", "/hosted/x"), ("x-forwarded-host", host)],
        )
        .await;
        assert_eq!(got, status, "{host}: {body}");
    }
}

#[tokio::test]
async fn forward_auth_trusts_forwarded_headers_only_from_configured_proxies() {
    // This node trusts 127.0.0.1, where the test connects from.
    let trusting = node("{forward_auth: [127.0.0.1/32]}").await;
    let t = trusting.node(1);
    let (got, _, body) = forward_auth(
        t,
        &[
            ("x-original-uri", "/internal/x"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
    )
    .await;
    assert_eq!(got, 200, "the trusted proxy's X-Forwarded-For: {body}");
    // A forged entry to the left of what the trusted proxy appended is never read.
    let (got, _, _) = forward_auth(
        t,
        &[
            ("x-original-uri", "/internal/x"),
            ("x-forwarded-for", "10.1.2.3, 6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(got, 403);
    // Forged identity on a public route: nothing to copy comes back.
    let (got, headers, _) = forward_auth(
        t,
        &[("x-original-uri", "/public/x"), ("x-consumer-id", "alice")],
    )
    .await;
    assert_eq!(got, 200);
    assert!(headers.get("x-consumer-id").is_none());

    // This one trusts only 10.0.0.0/8: the same calls from 127.0.0.1 are refused or the
    // forwarded address ignored.
    let strict = node("{forward_auth: [10.0.0.0/8]}").await;
    let s = strict.node(1);
    let (got, _, body) = forward_auth(s, &[("x-original-uri", "/public/x")]).await;
    assert_eq!(got, 400, "{body}");
    assert!(body.contains("x-original-uri sent by 127.0.0.1"), "{body}");
    let (got, _, body) = forward_auth(s, &[("x-forwarded-uri", "/public/x")]).await;
    assert_eq!(got, 400, "{body}");
    let (got, body) = raw_http(
        s.http,
        "/authz/internal/x",
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(got, 403, "untrusted X-Forwarded-For ignored: {body}");
}

#[tokio::test]
async fn forward_auth_header_floods_are_431() {
    let cluster = node("{forward_auth: [127.0.0.1/32]}").await;
    let n = cluster.node(1);
    let value = "v".repeat(1000);
    let names: Vec<String> = (0..80).map(|i| format!("x-h{i}")).collect();
    let mut headers: Vec<(&str, &str)> =
        names.iter().map(|k| (k.as_str(), value.as_str())).collect();
    headers.push(("x-original-uri", "/public/x"));
    let (got, _, body) = forward_auth(n, &headers).await;
    assert_eq!(got, 431, "{body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");
    let (got, _, _) = forward_auth(n, &[("x-original-uri", "/public/x")]).await;
    assert_eq!(got, 200, "still serving");
}

// === quorate policy test ===

#[test]
fn policy_test_shows_the_canonical_form_and_route_the_surfaces_use() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, attack_policy("{forward_auth: [127.0.0.1/32]}")).unwrap();
    let out = std::process::Command::new(quorate_e2e::bin::quorate())
        .arg("policy")
        .arg("test")
        .arg("-f")
        .arg(&file)
        .args([
            "--authz",
            r#"{"path": "/api/%2e%2e/admin/users", "host": "api.example.com"}"#,
            "--authz",
            r#"{"path": "/api/..%2fadmin/users"}"#,
            "--authz",
            r#"{"path": "/hosted/x", "host": "API.Example.com.:443"}"#,
            "--authz",
            r#"{"path": "/nowhere"}"#,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "authz GET api.example.com /api/%2e%2e/admin/users: canonical /admin/users -> route admin",
        "authz GET  /api/..%2fadmin/users: canonical - -> refused (400): refused request path: encoded '/' (%2F) in path",
        "authz GET API.Example.com.:443 /hosted/x: canonical /hosted/x -> route hosted",
        "authz GET  /nowhere: canonical /nowhere -> no route",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}
