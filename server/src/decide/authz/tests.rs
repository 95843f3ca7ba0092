//! Unit tests of the decision function against in-memory counters: every step of the
//! path (route, authenticate, authorize, limits, failure mode, dry run), and the policy
//! sections' validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use quorate_algorithms::CounterStore;

use super::*;
use crate::authz::credential::hash_key_hex;
use crate::policy::{PolicyFormat, PolicySet, PolicySource};
use crate::raft::state_machine::LivePolicy;
use crate::raft::state_machine::{counter_key as store_key, PolicyVersion};
use crate::raft::Hit;
use futures::future::BoxFuture;
use quorate_algorithms::Decision;

/// Counts hits in memory with the real algorithms; can be told to have no quorum.
struct MemCounter {
    policy: Arc<LivePolicy>,
    store: CounterStore,
    unavailable: AtomicBool,
    hits: Mutex<Vec<Hit>>,
}

impl Counter for MemCounter {
    fn policy(&self) -> Arc<LivePolicy> {
        Arc::clone(&self.policy)
    }

    fn check(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
    ) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>> {
        Box::pin(async move {
            if self.unavailable.load(Ordering::SeqCst) {
                return Err(EngineError::unavailable("no quorum (test)", None));
            }
            let now = wall_nanos();
            if atomic {
                let keys: Vec<String> = hits
                    .iter()
                    .map(|h| store_key(&h.hit.limit, &h.hit.key))
                    .collect();
                let group: Vec<quorate_algorithms::GroupHit<'_>> = hits
                    .iter()
                    .zip(&keys)
                    .map(|(h, key)| quorate_algorithms::GroupHit {
                        key,
                        cap: quorate_algorithms::KeyCap::NONE,
                        rate: &h.hit.rate,
                        cost: h.hit.cost,
                    })
                    .collect();
                let out = self.store.check_all(&group, now, &|_| None);
                self.hits
                    .lock()
                    .unwrap()
                    .extend(hits.into_iter().map(|h| h.hit));
                return Ok(out.into_iter().map(|c| c.decision).collect());
            }
            let mut out = Vec::new();
            for h in hits {
                out.push(self.store.check(
                    &store_key(&h.hit.limit, &h.hit.key),
                    &h.hit.rate,
                    now,
                    h.hit.cost,
                ));
                self.hits.lock().unwrap().push(h.hit);
            }
            Ok(out)
        })
    }
}

const ALICE_KEY: &str = "alice-secret-key-1";
const BOB_KEY: &str = "bob-secret-key-2";
const OLD_KEY: &str = "expired-key-3";

fn policy_text() -> String {
    format!(
        r#"
limits:
  - name: shared
    limit: 2
    window: hour
identities:
  - name: keys
    api_key: {{header: x-api-key, hide: true}}
  - name: qkeys
    api_key: {{query: api_key, hide: true}}
  - name: anon
    anonymous: {{consumer: anonymous}}
consumers:
  - id: alice
    groups: [admins, paying]
    credentials:
      - api_key_sha256: "{alice}"
    limits:
      - {{name: alice_daily, limit: 100, window: day}}
  - id: bob
    groups: [free]
    credentials:
      - api_key_sha256: "{bob}"
      - api_key_sha256: "{old}"
        expires: 2001-01-01T00:00:00Z
routes:
  - name: admin
    match: {{path_prefix: /admin/}}
    identities: [keys]
    allow: {{groups: [admins]}}
  - name: internal
    match: {{path_prefix: /internal/}}
    identities: []
    allow: {{cidrs: [10.0.0.0/8]}}
  - name: limited
    match: {{host: api.example.com, path_prefix: /v1/, methods: [GET, POST]}}
    identities: [keys, qkeys]
    deny: {{consumers: [mallory]}}
    limits:
      - {{name: per_consumer, key: consumer, limit: 3, window: hour}}
      - {{name: per_tenant, key: {{header: x-tenant}}, limit: 100, window: hour}}
      - {{use: shared, key: [consumer, route]}}
    headers:
      upstream: {{x-consumer-id: "{{consumer}}", x-consumer-groups: "{{groups}}", x-route: "{{route}}"}}
      client: {{x-served-by: quorate}}
  - name: shadow
    match: {{path_prefix: /shadow/}}
    identities: [keys]
    allow: {{groups: [admins]}}
    limits:
      - {{name: tiny, limit: 1, window: hour}}
    mode: dry_run
  - name: open
    match: {{path_prefix: /open/}}
    identities: [keys]
    limits:
      - {{name: l, limit: 10, window: hour}}
    failure_mode: open
  - name: public
    match: {{path_prefix: /public/}}
    identities: [keys, anon]
    limits:
      - {{name: per_ip, key: ip, limit: 2, window: hour}}
defaults:
  trusted_proxies: 1
"#,
        alice = hash_key_hex(ALICE_KEY),
        bob = hash_key_hex(BOB_KEY),
        old = hash_key_hex(OLD_KEY),
    )
}

fn compile(text: &str) -> Result<PolicySet, crate::policy::PolicyError> {
    PolicySet::compile(&PolicySource {
        format: PolicyFormat::Quorate,
        text: text.to_string(),
    })
}

fn authorizer_with(text: &str) -> (Authorizer, Arc<MemCounter>, Arc<Metrics>) {
    let set = compile(text).unwrap();
    let counter = Arc::new(MemCounter {
        policy: Arc::new(LivePolicy {
            version: Some(PolicyVersion {
                version: 1,
                source: PolicySource {
                    format: PolicyFormat::Quorate,
                    text: text.to_string(),
                },
                applied_at: 0,
                rollback_of: None,
            }),
            set,
        }),
        store: CounterStore::new(10_000),
        unavailable: AtomicBool::new(false),
        hits: Mutex::new(Vec::new()),
    });
    let metrics = Arc::new(Metrics::new().unwrap());
    let a = Authorizer::new(
        Arc::clone(&counter) as Arc<dyn Counter>,
        Arc::clone(&metrics),
        reqwest::Client::new(),
        JwtSettings::default(),
    );
    (a, counter, metrics)
}

fn authorizer() -> (Authorizer, Arc<MemCounter>, Arc<Metrics>) {
    authorizer_with(&policy_text())
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> AuthzRequest {
    AuthzRequest {
        surface: Surface::ForwardAuth,
        method: method.into(),
        target: target.into(),
        host: "api.example.com".into(),
        headers: RequestHeaders::new(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        peer: Some("192.0.2.1".parse().unwrap()),
        route: None,
        forwarded_by: None,
        malformed: None,
    }
}

fn allowed(d: &AuthzDecision) -> &Allowed {
    match &d.verdict {
        Verdict::Allow(a) => a,
        Verdict::Deny(d) => panic!("expected allow, got {d:?}"),
    }
}

fn denied(d: &AuthzDecision) -> &Denial {
    match &d.verdict {
        Verdict::Deny(d) => d,
        Verdict::Allow(a) => panic!("expected deny, got {a:?}"),
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn api_key_allows_with_upstream_headers_and_metadata() {
    let (a, _, metrics) = authorizer();
    let d = a
        .decide(request("GET", "/v1/items", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    let ok = allowed(&d);
    assert_eq!(header(&ok.upstream_headers, "x-consumer-id"), Some("alice"));
    assert_eq!(
        header(&ok.upstream_headers, "x-consumer-groups"),
        Some("admins,paying")
    );
    assert_eq!(header(&ok.upstream_headers, "x-route"), Some("limited"));
    assert_eq!(header(&ok.client_headers, "x-served-by"), Some("quorate"));
    assert!(header(&ok.client_headers, "ratelimit").is_some(), "{ok:?}");
    assert!(
        ok.remove_headers.contains(&"x-api-key".to_string()),
        "hide: true"
    );
    assert!(ok.remove_query.contains(&"api_key".to_string()));
    assert_eq!(d.metadata.consumer.as_deref(), Some("alice"));
    assert_eq!(d.metadata.route.as_deref(), Some("limited"));
    assert_eq!(d.metadata.identity.as_deref(), Some("keys"));
    assert_eq!(
        metrics
            .authz_decisions
            .with_label_values(&["forward_auth", "limited", "allowed"])
            .get(),
        1
    );
    // Keys also come from the query.
    let d = a
        .decide(request(
            "POST",
            &format!("/v1/items?api_key={BOB_KEY}"),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(d.metadata.consumer.as_deref(), Some("bob"));
}

#[tokio::test]
async fn missing_wrong_and_expired_credentials_are_401_and_consume_nothing() {
    let (a, counter, _) = authorizer();
    let d = a.decide(request("GET", "/v1/items", &[])).await.unwrap();
    let no = denied(&d);
    assert_eq!((no.status, no.kind), (401, DenyKind::Unauthenticated));
    let challenge = header(&no.headers, "www-authenticate").unwrap();
    assert!(challenge.contains("realm=\"quorate\""), "{challenge}");
    assert!(no.body().contains("\"error\":\"unauthenticated\""));

    for key in ["wrong-key", OLD_KEY, ""] {
        let d = a
            .decide(request("GET", "/v1/items", &[("x-api-key", key)]))
            .await
            .unwrap();
        assert_eq!(denied(&d).status, 401, "{key}");
    }
    let d = a
        .decide(request("GET", "/v1/items", &[("x-api-key", OLD_KEY)]))
        .await
        .unwrap();
    assert!(denied(&d).reason.contains("expired"));
    // The denial never echoes the key.
    assert!(!denied(&d).body().contains(OLD_KEY));
    assert!(
        counter.hits.lock().unwrap().is_empty(),
        "denied identities consume no quota"
    );
}

#[tokio::test]
async fn acl_denials_are_403_and_consume_nothing() {
    let (a, counter, _) = authorizer();
    // (case, target, headers, 403 or allowed), in order: the first one also checks that a
    // denied caller consumed nothing before anything was allowed.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<u16>);
    let cases: [Case<'_>; 4] = [
        (
            "bob is not in the admin group",
            "/admin/users",
            &[("x-api-key", BOB_KEY)],
            Some(403),
        ),
        (
            "alice is",
            "/admin/users",
            &[("x-api-key", ALICE_KEY)],
            None,
        ),
        // CIDR: the client address comes from the trusted X-Forwarded-For hop.
        (
            "the trusted hop is inside the CIDR",
            "/internal/x",
            &[("x-forwarded-for", "6.6.6.6, 10.1.2.3")],
            None,
        ),
        (
            "a forged leftmost entry does not help",
            "/internal/x",
            &[("x-forwarded-for", "10.1.2.3, 6.6.6.6")],
            Some(403),
        ),
    ];
    for (i, (case, target, headers, want)) in cases.into_iter().enumerate() {
        let d = a.decide(request("GET", target, headers)).await.unwrap();
        match want {
            Some(status) => assert_eq!(
                (denied(&d).status, denied(&d).kind),
                (status, DenyKind::Forbidden),
                "{case}"
            ),
            None => {
                allowed(&d);
            }
        }
        if i == 0 {
            assert!(
                counter.hits.lock().unwrap().is_empty(),
                "a denied caller consumes no quota"
            );
        }
    }
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after() {
    let (a, _, _) = authorizer();
    for _ in 0..2 {
        let d = a
            .decide(request("GET", "/v1/items", &[("x-api-key", ALICE_KEY)]))
            .await
            .unwrap();
        allowed(&d);
    }
    // `shared` (limit 2, used via `use:`) is now spent for alice on this route.
    let d = a
        .decide(request("GET", "/v1/items", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    let over = denied(&d);
    assert_eq!((over.status, over.kind), (429, DenyKind::RateLimited));
    let retry: u64 = header(&over.headers, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(header(&over.headers, "ratelimit-policy")
        .unwrap()
        .contains("per_consumer"));
    // Bob has his own counters.
    let d = a
        .decide(request("GET", "/v1/items", &[("x-api-key", BOB_KEY)]))
        .await
        .unwrap();
    allowed(&d);
}

#[tokio::test]
async fn counter_keys_name_parts_and_never_hold_credentials() {
    let text = format!(
        "{}\n  - name: bykey\n    match: {{path_prefix: /bykey/}}\n    identities: [keys]\n    limits:\n      - {{name: k, key: [{{header: x-api-key}}, {{header: x-tenant}}, ip], limit: 5, window: hour}}\n",
        policy_text().replace("defaults:\n  trusted_proxies: 1\n", "")
    ) + "defaults:\n  trusted_proxies: 1\n";
    let (a, counter, _) = authorizer_with(&text);
    a.decide(request(
        "GET",
        "/bykey/x",
        &[("x-api-key", ALICE_KEY), ("x-tenant", "t|1")],
    ))
    .await
    .unwrap();
    a.decide(request("GET", "/v1/x", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    let hits = counter.hits.lock().unwrap();
    let keys: Vec<String> = hits
        .iter()
        .map(|h| format!("{} {}", h.limit, h.key))
        .collect();
    assert!(keys.iter().all(|k| !k.contains(ALICE_KEY)), "{keys:?}");
    assert!(
        keys[0].starts_with("route/bykey/k x-api-key=sha256:"),
        "{keys:?}"
    );
    assert!(
        keys[0].ends_with("|x-tenant=t%7C1|ip=192.0.2.1"),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"route/limited/per_consumer consumer=alice".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"route/limited/per_tenant x-tenant=-".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"shared consumer=alice|route=limited".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"consumer/alice/alice_daily consumer=alice".to_string()),
        "{keys:?}"
    );
}

#[tokio::test]
async fn dry_run_allows_but_counts_what_it_would_deny() {
    let (a, _, metrics) = authorizer();
    // Forbidden by ACL, allowed in dry run, with forged identity headers stripped.
    let d = a
        .decide(request(
            "GET",
            "/shadow/x",
            &[("x-api-key", BOB_KEY), ("x-consumer-id", "alice")],
        ))
        .await
        .unwrap();
    let ok = allowed(&d);
    assert!(ok.remove_headers.contains(&"x-consumer-id".to_string()));
    assert!(ok.upstream_headers.is_empty());
    // Over the limit (1/hour) on the second call, still allowed.
    for _ in 0..3 {
        let d = a
            .decide(request("GET", "/shadow/x", &[("x-api-key", ALICE_KEY)]))
            .await
            .unwrap();
        allowed(&d);
    }
    // No credential: would be 401.
    allowed(&a.decide(request("GET", "/shadow/x", &[])).await.unwrap());
    let count = |reason: &str| {
        metrics
            .authz_dry_run_denials
            .with_label_values(&["shadow", reason])
            .get()
    };
    assert_eq!(count("forbidden"), 1);
    assert_eq!(count("rate_limited"), 2);
    assert_eq!(count("unauthenticated"), 1);
}

#[tokio::test]
async fn failure_mode_closed_is_503_and_open_allows_marked() {
    let (a, counter, metrics) = authorizer();
    counter.unavailable.store(true, Ordering::SeqCst);
    let d = a
        .decide(request("GET", "/v1/items", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    let closed = denied(&d);
    assert_eq!((closed.status, closed.kind), (503, DenyKind::Unavailable));
    assert_eq!(header(&closed.headers, "retry-after"), Some("1"));
    let d = a
        .decide(request("GET", "/open/x", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    let open = allowed(&d);
    assert_eq!(
        header(&open.upstream_headers, FAILURE_MODE_HEADER),
        Some("open")
    );
    assert_eq!(
        header(&open.client_headers, FAILURE_MODE_HEADER),
        Some("open")
    );
    assert_eq!(
        header(&open.upstream_headers, "x-consumer-id"),
        Some("alice")
    );
    assert_eq!(
        metrics
            .authz_decisions
            .with_label_values(&["forward_auth", "open", "failure_open"])
            .get(),
        1
    );
    // A dry-run route never blocks traffic, not even without quorum.
    let d = a
        .decide(request("GET", "/shadow/x", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    allowed(&d);
    assert!(!format!("{:?}", request("GET", "/", &[("x-api-key", ALICE_KEY)])).contains(ALICE_KEY));
    // Authentication still applies when failing open.
    let d = a.decide(request("GET", "/open/x", &[])).await.unwrap();
    assert_eq!(denied(&d).status, 401);
}

#[tokio::test]
async fn routes_unmatched_named_and_public() {
    let (a, _, _) = authorizer();
    let d = a.decide(request("GET", "/nowhere", &[])).await.unwrap();
    assert_eq!(
        (denied(&d).status, denied(&d).kind),
        (403, DenyKind::NoRoute)
    );
    // Method and host are part of the match.
    let d = a
        .decide(request("DELETE", "/v1/items", &[("x-api-key", ALICE_KEY)]))
        .await
        .unwrap();
    assert_eq!(denied(&d).kind, DenyKind::NoRoute);
    // Dot segments cannot smuggle a request into another route.
    let d = a
        .decide(request(
            "GET",
            "/v1/../admin/users",
            &[("x-api-key", BOB_KEY)],
        ))
        .await
        .unwrap();
    assert_eq!(d.metadata.route.as_deref(), Some("admin"));
    // A proxy-named route skips matching; an unknown name is denied.
    let mut r = request("GET", "/anything", &[("x-api-key", ALICE_KEY)]);
    r.route = Some("admin".into());
    allowed(&a.decide(r.clone()).await.unwrap());
    r.route = Some("nope".into());
    assert_eq!(denied(&a.decide(r).await.unwrap()).kind, DenyKind::NoRoute);
    // Anonymous fallback, limited per IP; a wrong key does not fall through to it.
    let d = a.decide(request("GET", "/public/x", &[])).await.unwrap();
    assert_eq!(d.metadata.consumer.as_deref(), Some("anonymous"));
    let d = a
        .decide(request("GET", "/public/x", &[("x-api-key", "bad")]))
        .await
        .unwrap();
    assert_eq!(denied(&d).status, 401);
    allowed(&a.decide(request("GET", "/public/x", &[])).await.unwrap());
    let d = a.decide(request("GET", "/public/x", &[])).await.unwrap();
    assert_eq!(denied(&d).status, 429, "2 per IP per hour");

    let (allow_all, _, _) = authorizer_with(&(policy_text() + "  unmatched: allow\n"));
    allowed(
        &allow_all
            .decide(request("GET", "/nowhere", &[]))
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn hostile_input_is_a_clean_400_or_401() {
    let (a, _, _) = authorizer();
    let get = |target: &str, headers: &[(&str, &str)]| request("GET", target, headers);
    let mut too_many = get("/v1/items", &[]);
    too_many.headers =
        RequestHeaders::new((0..300).map(|i| (format!("h{i}"), "v".into())).collect());
    let mut not_utf8 = get("/v1/items", &[]);
    not_utf8.malformed = Some("header \"x\" is not valid UTF-8".into());
    let big = "x".repeat(MAX_HEADER_BYTES + 1);
    let long_key = "k".repeat(10_000);
    let long_method = "A".repeat(100);
    let long_target = format!("/v1/{}", "a".repeat(MAX_TARGET));
    let garbage_key = [("x-api-key", "\u{0}\u{7f}garbage")];
    // (case, request, the statuses it may be denied with)
    let mut cases: Vec<(String, AuthzRequest, &[u16])> = vec![
        ("300 headers".into(), too_many, &[400]),
        (
            "headers over the byte cap".into(),
            get("/v1/items", &[("x-big", &big)]),
            &[400],
        ),
        ("a header that is not UTF-8".into(), not_utf8, &[400]),
        (
            "a 10 kB API key".into(),
            get("/v1/x", &[("x-api-key", &long_key)]),
            &[401],
        ),
    ];
    for method in ["", "G E T", "GET\r\n", &long_method] {
        let r = request(method, "/v1/items", &[]);
        cases.push((format!("method {method:?}"), r, &[400]));
    }
    for target in ["", "*", "no-slash", "/v1/%ff%00", &long_target] {
        let r = get(target, &garbage_key);
        cases.push((format!("target {target:?}"), r, &[400, 401, 403]));
    }
    for (case, req, statuses) in cases {
        let d = a.decide(req).await.unwrap();
        assert!(statuses.contains(&denied(&d).status), "{case}");
    }
}

#[test]
fn policy_errors_name_lines_and_never_quote_secrets() {
    let secret = "hunter2-super-secret";
    let text = format!(
        "identities:\n  - name: t\n    jwt:\n      issuer: x\n      algorithms: [HS256]\n      secret: {secret}\n"
    );
    let e = compile(&text).unwrap_err();
    assert!(e.reason.contains("inline secrets are refused"), "{e}");
    assert!(!e.to_string().contains(secret), "{e}");
    assert_eq!(e.line, Some(6), "{e}");

    let e = compile(
        "identities:\n  - name: t\n    jwt: {issuer: x, algorithms: [none], jwks_url: http://x/}\n",
    )
    .unwrap_err();
    assert!(e.reason.contains("none"), "{e}");
    let e = compile("identities:\n  - name: t\n    jwt: {issuer: x, algorithms: [RS256, HS256], jwks_url: http://x/}\n").unwrap_err();
    assert!(e.reason.contains("family"), "{e}");
    let private = crate::authz::jwt::tests::RSA1_KEY.replace('\n', "\n            ");
    let e = compile(&format!(
        "identities:\n  - name: t\n    jwt:\n      issuer: x\n      algorithms: [RS256]\n      keys:\n        - pem: |\n            {private}\n"
    ))
    .unwrap_err();
    assert!(e.reason.contains("private keys are refused"), "{e}");
    assert!(!e.to_string().contains("MII"), "{e}");
    let e = compile("consumers:\n  - id: a\n    credentials:\n      - api_key_sha256: nothex\n")
        .unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    let e = compile("routes:\n  - name: r\n    identities: [ghost]\n").unwrap_err();
    assert!(e.reason.contains("unknown identity"), "{e}");
    assert_eq!(e.line, Some(3), "{e}");
    let e = compile("identities:\n  - name: a\n    anonymous: {consumer: x}\n  - name: k\n    api_key: {header: k}\nroutes:\n  - name: r\n    identities: [a, k]\n").unwrap_err();
    assert!(e.reason.contains("last"), "{e}");
    let e = compile(
        "routes:\n  - name: r\n    limits:\n      - {name: x, limit: 1, window: fortnight}\n",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    let e = compile("routes:\n  - name: r\n    limits:\n      - {use: nope}\n").unwrap_err();
    assert!(e.reason.contains("unknown limit"), "{e}");
    // The full example compiles, and registers its inline limits.
    let set = compile(&policy_text()).unwrap();
    assert!(set.limits.contains_key("route/limited/per_consumer"));
    assert!(set.limits.contains_key("consumer/alice/alice_daily"));
    assert_eq!(set.authz.routes.len(), 6);
}

#[tokio::test]
async fn several_issuers_share_the_authorization_header() {
    use crate::authz::jwt::tests::{sign, EC1_KEY, EC1_PUB, ED1_KEY, ED1_PUB};
    use jsonwebtoken::Algorithm;
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n            ");
    let text = format!(
        "identities:\n  - name: a\n    jwt:\n      issuer: A\n      algorithms: [ES256]\n      keys:\n        - pem: |\n            {}\n  - name: b\n    jwt:\n      issuer: B\n      algorithms: [EdDSA]\n      keys:\n        - pem: |\n            {}\n  - name: anon\n    anonymous: {{consumer: nobody}}\nroutes:\n  - name: r\n    identities: [a, b, anon]\n",
        indent(EC1_PUB),
        indent(ED1_PUB)
    );
    let (a, _, _) = authorizer_with(&text);
    let exp = crate::authz::jwt::unix_now() + 600;
    let bearer = |t: String| format!("Bearer {t}");
    let ta = sign(
        Algorithm::ES256,
        EC1_KEY,
        None,
        &serde_json::json!({"iss": "A", "sub": "from-a", "exp": exp}),
    );
    let tb = sign(
        Algorithm::EdDSA,
        ED1_KEY,
        None,
        &serde_json::json!({"iss": "B", "sub": "from-b", "exp": exp}),
    );
    let tc = sign(
        Algorithm::ES256,
        EC1_KEY,
        None,
        &serde_json::json!({"iss": "C", "sub": "from-c", "exp": exp}),
    );
    // B's issuer name on a token signed with A's key: B's keys refuse it.
    let forged = sign(
        Algorithm::ES256,
        EC1_KEY,
        None,
        &serde_json::json!({"iss": "B", "sub": "x", "exp": exp}),
    );
    for (token, want) in [
        (ta, Some("from-a")),
        (tb, Some("from-b")),
        (tc, None),
        (forged, None),
    ] {
        let d = a
            .decide(request("GET", "/", &[("authorization", &bearer(token))]))
            .await
            .unwrap();
        match want {
            Some(c) => assert_eq!(d.metadata.consumer.as_deref(), Some(c)),
            None => assert_eq!(denied(&d).status, 401, "never anonymous"),
        }
    }
    let d = a.decide(request("GET", "/", &[])).await.unwrap();
    assert_eq!(d.metadata.consumer.as_deref(), Some("nobody"));
}

#[tokio::test]
async fn the_shipped_example_compiles_and_decides() {
    let (a, _, _) = authorizer_with(include_str!("../../../../examples/authz.yaml"));
    let mut r = request("GET", "/v1/items", &[("x-api-key", "demo-key-alice")]);
    r.headers = RequestHeaders::new(vec![
        ("x-api-key".into(), "demo-key-alice".into()),
        ("x-tenant".into(), "t1".into()),
    ]);
    let d = a.decide(r).await.unwrap();
    assert_eq!(d.metadata.consumer.as_deref(), Some("alice"));
    allowed(&d);
    let d = a
        .decide(request("GET", "/admin/x", &[("x-api-key", "demo-key-bob")]))
        .await
        .unwrap();
    assert_eq!(denied(&d).status, 403);
}

#[tokio::test]
async fn inline_jwk_keys_verify_and_leeway_can_be_zero() {
    use crate::authz::jwt::tests::{sign, RSA1_KEY};
    use jsonwebtoken::{Algorithm, EncodingKey};
    let key = EncodingKey::from_rsa_pem(RSA1_KEY.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwk = serde_json::to_string(&jwk).unwrap();
    let text = format!(
        "identities:\n  - name: t\n    jwt:\n      issuer: A\n      algorithms: [RS256]\n      leeway: 0s\n      keys:\n        - {{kid: k1, jwk: {jwk}}}\nroutes:\n  - name: r\n"
    );
    let (a, _, _) = authorizer_with(&text);
    let token = sign(
        Algorithm::RS256,
        RSA1_KEY,
        Some("k1"),
        &serde_json::json!({"iss": "A", "sub": "alice", "exp": crate::authz::jwt::unix_now() + 60}),
    );
    let d = a
        .decide(request(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
        ))
        .await
        .unwrap();
    assert_eq!(d.metadata.consumer.as_deref(), Some("alice"));
    // A JWK with private parts is refused.
    let e = compile(&text.replace("\"kty\"", "\"d\": \"c2VjcmV0\", \"kty\"")).unwrap_err();
    assert!(e.reason.contains("private"), "{e}");
}

// === issue 8: one canonical request, decided as it will be served ===

/// The probes of issue 8: an `/admin/` route for `staff` and an `/api/` route for any key
/// holder; a non-staff key asking for encoded dot segments is never allowed as `/api/`
/// and spends no quota.
#[tokio::test]
async fn encoded_paths_never_reach_the_api_route_and_spend_nothing() {
    let text = format!(
        "identities:\n  - name: keys\n    api_key: {{header: x-api-key}}\nconsumers:\n  - id: bob\n    groups: [free]\n    credentials:\n      - api_key_sha256: \"{}\"\nroutes:\n  - name: admin\n    match: {{path_prefix: /admin/}}\n    identities: [keys]\n    allow: {{groups: [staff]}}\n  - name: api\n    match: {{path_prefix: /api/}}\n    identities: [keys]\n    limits:\n      - {{name: per_consumer, limit: 100, window: hour}}\n",
        hash_key_hex(BOB_KEY)
    );
    let (a, counter, _) = authorizer_with(&text);
    let key = [("x-api-key", BOB_KEY)];
    for (target, status, reason) in [
        ("/api/%2e%2e/admin/users", 403, "not in an allowed group"),
        ("/api/.%2E/admin/users", 403, "not in an allowed group"),
        (
            "/api/%2E%2e/%2e/admin/users?x=1",
            403,
            "not in an allowed group",
        ),
        ("/api/..%2fadmin/users", 400, "encoded '/'"),
        ("/api/..%5cadmin/users", 400, "or %5C"),
        ("/api/..;/admin/users", 400, "';' path parameter"),
        ("/api/%2e%2e%3fadmin", 400, "encoded '?'"),
        ("/api/%00/x", 400, "control byte"),
        ("/api/%ff", 400, "UTF-8"),
        ("/api/%zz", 400, "bad percent-escape"),
        ("/api/../../admin", 400, "climb above the root"),
        ("/api//../admin/users", 400, "after '//'"),
    ] {
        let d = a.decide(request("GET", target, &key)).await.unwrap();
        let denial = denied(&d);
        assert_eq!(denial.status, status, "{target}: {denial:?}");
        assert!(denial.reason.contains(reason), "{target}: {denial:?}");
        if status == 400 {
            assert_eq!(denial.kind, DenyKind::BadRequest);
            assert!(denial.body().contains("refused request path"), "{target}");
        } else {
            assert_eq!(d.metadata.route.as_deref(), Some("admin"), "{target}");
        }
    }
    assert!(counter.hits.lock().unwrap().is_empty(), "no quota spent");
    // The canonical spelling of an /api/ path still works and counts.
    let d = a
        .decide(request("GET", "/%61pi//v1/./items", &key))
        .await
        .unwrap();
    allowed(&d);
    assert_eq!(d.metadata.route.as_deref(), Some("api"));
    assert_eq!(counter.hits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn hosts_match_case_port_and_trailing_dot_insensitively() {
    let (a, _, _) = authorizer();
    for host in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "api.example.com:8443",
        "api.example.com.:443",
    ] {
        let mut r = request("GET", "/v1/items", &[("x-api-key", ALICE_KEY)]);
        r.host = host.into();
        let d = a.decide(r).await.unwrap();
        assert_eq!(d.metadata.route.as_deref(), Some("limited"), "{host}");
    }
    for host in ["evil.com@api.example.com", "api.example.com,evil", "[::1"] {
        let mut r = request("GET", "/v1/items", &[("x-api-key", ALICE_KEY)]);
        r.host = host.into();
        let d = a.decide(r).await.unwrap();
        let denial = denied(&d);
        assert_eq!(denial.status, 400, "{host}");
        assert!(denial.reason.contains("refused host"), "{host}");
    }
}

#[tokio::test]
async fn unmatched_allow_and_public_routes_strip_every_identity_header() {
    let text = "routes:\n  - name: public\n    match: {path_prefix: /public/}\n    identities: []\n  - name: custom\n    match: {path_prefix: /custom/}\n    identities: []\n    headers:\n      upstream: {x-tenant-id: \"{claim:tenant}\"}\ndefaults:\n  unmatched: allow\n";
    let (a, _, _) = authorizer_with(text);
    let want = [
        "x-consumer-id",
        "x-consumer-groups",
        FAILURE_MODE_HEADER,
        "x-tenant-id",
    ];
    for target in ["/public/x", "/custom/x", "/elsewhere"] {
        let d = a.decide(request("GET", target, &[])).await.unwrap();
        let ok = allowed(&d);
        for h in want {
            assert!(ok.remove_headers.iter().any(|r| r == h), "{target}: {h}");
        }
        assert!(ok.upstream_headers.is_empty(), "{target}");
    }
}

fn trusted_policy(trusted: &str) -> String {
    policy_text().replace(
        "defaults:\n  trusted_proxies: 1\n",
        &format!("defaults:\n  trusted_proxies: {trusted}\n"),
    )
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let (a, _, _) = authorizer_with(&trusted_policy(
        "{forward_auth: [192.0.2.0/24], ext_authz: [10.9.0.0/16]}",
    ));
    // A trusted forward-auth peer: the first untrusted X-Forwarded-For hop from the
    // right is the client.
    let mut r = request(
        "GET",
        "/internal/x",
        &[("x-forwarded-for", "6.6.6.6, 10.1.2.3")],
    );
    r.forwarded_by = Some("x-original-uri".into());
    allowed(&a.decide(r).await.unwrap());
    // An untrusted peer: its X-Forwarded-For is ignored...
    let mut r = request("GET", "/internal/x", &[("x-forwarded-for", "10.1.2.3")]);
    r.peer = Some("198.51.100.7".parse().unwrap());
    assert_eq!(denied(&a.decide(r).await.unwrap()).status, 403);
    // ...and it may not describe a request at all.
    let mut r = request("GET", "/public/x", &[]);
    r.peer = Some("198.51.100.7".parse().unwrap());
    r.forwarded_by = Some("x-forwarded-uri".into());
    let d = a.decide(r).await.unwrap();
    let denial = denied(&d);
    assert_eq!(denial.status, 400);
    assert!(denial
        .reason
        .contains("x-forwarded-uri sent by 198.51.100.7"));
    assert!(denial.reason.contains("trusted_proxies.forward_auth"));
    // ext_authz has its own list: the forward-auth one does not apply.
    let mut r = request("GET", "/internal/x", &[("x-forwarded-for", "10.1.2.3")]);
    r.surface = Surface::ExtAuthz;
    assert_eq!(denied(&a.decide(r).await.unwrap()).status, 403);
    let mut r = request("GET", "/internal/x", &[("x-forwarded-for", "10.1.2.3")]);
    r.surface = Surface::ExtAuthz;
    r.peer = Some("10.9.0.1".parse().unwrap());
    allowed(&a.decide(r).await.unwrap());
}

#[tokio::test]
async fn trusted_proxies_default_to_nobody_and_the_hop_count_still_loads() {
    // Absent: no forwarded description is believed.
    let (a, _, _) =
        authorizer_with(&policy_text().replace("defaults:\n  trusted_proxies: 1\n", ""));
    let mut r = request("GET", "/public/x", &[]);
    r.forwarded_by = Some("x-original-uri".into());
    assert_eq!(denied(&a.decide(r).await.unwrap()).status, 400);
    // The deprecated hop count keeps its meaning: any peer, N-th entry from the right.
    let (a, _, _) = authorizer_with(&trusted_policy("1"));
    let mut r = request(
        "GET",
        "/internal/x",
        &[("x-forwarded-for", "6.6.6.6, 10.1.2.3")],
    );
    r.peer = Some("198.51.100.7".parse().unwrap());
    r.forwarded_by = Some("x-original-uri".into());
    allowed(&a.decide(r).await.unwrap());
    // Bad shapes are refused with the expected one.
    for bad in [
        "[10.0.0.0/8]",
        "{forward_auth: [nope]}",
        "{proxies: []}",
        "17",
    ] {
        let err = compile(&trusted_policy(bad)).unwrap_err().to_string();
        assert!(err.contains("defaults.trusted_proxies"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_jwt_consumer_is_scoped_by_issuer_and_claims_cannot_smuggle_separators() {
    use crate::authz::jwt::tests::{sign, EC1_KEY, EC1_PUB, ED1_KEY, ED1_PUB};
    use jsonwebtoken::Algorithm;
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n            ");
    let text = format!(
        "identities:\n  - name: a\n    jwt:\n      issuer: A\n      algorithms: [ES256]\n      groups_claim: groups\n      keys:\n        - pem: |\n            {}\n  - name: b\n    jwt:\n      issuer: B\n      algorithms: [EdDSA]\n      keys:\n        - pem: |\n            {}\nconsumers:\n  - id: root\n    groups: [admins]\n    issuers: [B]\n  - id: legacy\n    groups: [admins]\nroutes:\n  - name: r\n    identities: [a, b]\n",
        indent(EC1_PUB),
        indent(ED1_PUB)
    );
    let (a, _, _) = authorizer_with(&text);
    let exp = crate::authz::jwt::unix_now() + 600;
    let from_a = |claims: serde_json::Value| {
        let mut c = claims;
        c["iss"] = "A".into();
        c["exp"] = exp.into();
        format!("Bearer {}", sign(Algorithm::ES256, EC1_KEY, None, &c))
    };
    let from_b = |sub: &str| {
        let c = serde_json::json!({"iss": "B", "sub": sub, "exp": exp});
        format!("Bearer {}", sign(Algorithm::EdDSA, ED1_KEY, None, &c))
    };
    let decide = |token: String| {
        let a = &a;
        async move {
            a.decide(request("GET", "/", &[("authorization", &token)]))
                .await
                .unwrap()
        }
    };
    // B's consumer is B's.
    let d = decide(from_b("root")).await;
    assert_eq!(d.metadata.consumer.as_deref(), Some("root"));
    assert_eq!(d.metadata.groups, vec!["admins".to_string()]);
    // A's token naming B's consumer, or a record bound to no issuer when there are two.
    for sub in ["root", "legacy"] {
        let d = decide(from_a(serde_json::json!({"sub": sub}))).await;
        let denial = denied(&d);
        assert_eq!(denial.status, 401, "{sub}");
        assert!(
            denial.reason.contains("another issuer"),
            "{sub}: {denial:?}"
        );
    }
    // A's own users pass, with their token groups.
    let d = decide(from_a(
        serde_json::json!({"sub": "carol", "groups": ["dev"]}),
    ))
    .await;
    assert_eq!(d.metadata.consumer.as_deref(), Some("carol"));
    assert_eq!(d.metadata.groups, vec!["dev".to_string()]);
    // Separators and control characters in what becomes a header are refused.
    for claims in [
        serde_json::json!({"sub": "carol", "groups": ["dev,admins"]}),
        serde_json::json!({"sub": "carol", "groups": ["dev\r\nx-consumer-id: root"]}),
        serde_json::json!({"sub": "carol,root"}),
        serde_json::json!({"sub": "carol\nroot"}),
    ] {
        let d = decide(from_a(claims.clone())).await;
        assert_eq!(denied(&d).status, 401, "{claims}");
    }
    // A space/comma-separated string claim is a list, split as such.
    let d = decide(from_a(
        serde_json::json!({"sub": "carol", "groups": "dev ops,qa"}),
    ))
    .await;
    assert_eq!(d.metadata.groups, vec!["dev", "ops", "qa"]);
    // A consumer may only list an issuer some identity has; group names are checked.
    let err = compile(&text.replace("issuers: [B]", "issuers: [Z]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no jwt identity has issuer"), "{err}");
    let err = compile(&text.replace(
        "groups: [admins]\n    issuers",
        "groups: [\"a,b\"]\n    issuers",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("separator"), "{err}");
}

#[tokio::test]
async fn a_single_issuer_still_maps_unbound_consumer_records() {
    use crate::authz::jwt::tests::{sign, EC1_KEY, EC1_PUB};
    use jsonwebtoken::Algorithm;
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n            ");
    let text = format!(
        "identities:\n  - name: a\n    jwt:\n      issuer: A\n      algorithms: [ES256]\n      keys:\n        - pem: |\n            {}\nconsumers:\n  - id: alice\n    groups: [admins]\nroutes:\n  - name: r\n    identities: [a]\n",
        indent(EC1_PUB)
    );
    let (a, _, _) = authorizer_with(&text);
    let exp = crate::authz::jwt::unix_now() + 600;
    let token = sign(
        Algorithm::ES256,
        EC1_KEY,
        None,
        &serde_json::json!({"iss": "A", "sub": "alice", "exp": exp}),
    );
    let d = a
        .decide(request(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {token}"))],
        ))
        .await
        .unwrap();
    assert_eq!(d.metadata.groups, vec!["admins".to_string()]);
}

#[tokio::test]
async fn ip_keys_mask_ipv6_to_a_64_and_honour_configured_prefixes() {
    let text = r#"
identities:
  - name: anon
    anonymous: {consumer: anonymous}
routes:
  - name: public
    match: {path_prefix: /}
    identities: [anon]
    limits:
      - {name: per_ip, key: ip, limit: 100, window: hour}
      - {name: per_net, key: {ip: {ipv4_prefix: 24, ipv6_prefix: 48}}, limit: 100, window: hour}
"#;
    let (a, counter, _) = authorizer_with(text);
    let key_for = |peer: &str| {
        let mut req = request("GET", "/x", &[]);
        req.peer = Some(peer.parse().unwrap());
        req
    };
    let mut keys = Vec::new();
    for peer in [
        "2001:db8:1:2::a",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
        "2001:db8:1:3::1",
        "192.0.2.7",
        "::ffff:192.0.2.8",
    ] {
        allowed(&a.decide(key_for(peer)).await.unwrap());
        let hits = std::mem::take(&mut *counter.hits.lock().unwrap());
        keys.push((hits[0].key.clone(), hits[1].key.clone()));
    }
    // One IPv6 host holds a whole /64: it gets one counter, not 2^64.
    assert_eq!(keys[0].0, "ip=2001:db8:1:2::/64");
    assert_eq!(keys[1].0, keys[0].0);
    assert_eq!(keys[2].0, "ip=2001:db8:1:3::/64");
    // IPv4 stays per address by default; a mapped IPv6 address counts as IPv4.
    assert_eq!(keys[3].0, "ip=192.0.2.7");
    assert_eq!(keys[4].0, "ip=192.0.2.8");
    // Configured prefixes.
    assert_eq!(keys[0].1, "ip=2001:db8:1::/48");
    assert_eq!(keys[2].1, keys[0].1);
    assert_eq!(keys[3].1, "ip=192.0.2.0/24");
    assert_eq!(keys[4].1, keys[3].1);

    let bad = compile(
        "routes:\n  - name: r\n    match: {path_prefix: /}\n    identities: []\n    limits:\n      - {limit: 1, window: hour, key: {ip: {ipv6_prefix: 129}}}\n",
    )
    .unwrap_err();
    assert!(bad.reason.contains("ipv6_prefix"), "{bad}");
}

/// A route's limits (and its consumer's) are one decision: the request the `shared`
/// limit (2 per hour) denies takes nothing from `per_consumer`, `per_tenant` or alice's
/// own daily limit.
#[tokio::test]
async fn a_route_request_denied_by_one_limit_consumes_none_of_the_others() {
    let (a, counter, _) = authorizer();
    let call = || {
        request(
            "GET",
            "/v1/items",
            &[("x-api-key", ALICE_KEY), ("x-tenant", "t1")],
        )
    };
    for _ in 0..2 {
        allowed(&a.decide(call()).await.unwrap());
    }
    let before = counter.store.export();
    for _ in 0..3 {
        let d = a.decide(call()).await.unwrap();
        assert_eq!(denied(&d).status, 429);
    }
    assert_eq!(counter.store.export(), before, "no counter moved");
}
