//! Criterion micro-benchmark: the authorization part of a decision.
//!
//! `Authorizer::decide` (quorate-server's decision function, the same one ext_authz and
//! forward-auth call) on in-memory counters (`MemCounter` below: the real algorithms in a
//! `CounterStore`, no Raft, no I/O), for three routes that differ only in how the caller
//! is identified, each with the same one limit:
//! - `public`: no identity (routing + the limit: the pure rate-limit decision);
//! - `api_key`: `x-api-key` looked up by its SHA-256 hash;
//! - `jwt_cached`: an EdDSA bearer token, verified once and then served from the
//!   verified-token cache (the steady state for a client that reuses its token).
//!
//! `api_key - public` and `jwt_cached - public` are the authorization part's cost
//! (issue 5's goal: < 20 µs at p50). Each iteration runs one `decide` future to completion
//! on a current-thread tokio runtime (the same cost in every case).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::future::BoxFuture;
use quorate_algorithms::{CounterStore, Decision};
use quorate_server::authz::credential::hash_key_hex;
use quorate_server::authz::jwt::JwtSettings;
use quorate_server::authz::RequestHeaders;
use quorate_server::decide::authz::{Authorizer, AuthzRequest, Surface, Verdict};
use quorate_server::decide::Counter;
use quorate_server::engine::{wall_nanos, EngineError, ResolvedHit};
use quorate_server::metrics::Metrics;
use quorate_server::policy::{PolicyFormat, PolicySet, PolicySource};
use quorate_server::raft::state_machine::{counter_key, LivePolicy};

/// The real algorithms in memory: what the engine's store does, minus Raft.
struct MemCounter {
    policy: Arc<LivePolicy>,
    store: CounterStore,
}

impl Counter for MemCounter {
    fn policy(&self) -> Arc<LivePolicy> {
        Arc::clone(&self.policy)
    }

    // Hit by hit whatever `atomic` says: the benchmarks time one-hit decisions.
    fn check(
        &self,
        hits: Vec<ResolvedHit>,
        _atomic: bool,
    ) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>> {
        Box::pin(async move {
            let now = wall_nanos();
            Ok(hits
                .into_iter()
                .map(|h| {
                    self.store.check(
                        &counter_key(&h.hit.limit, &h.hit.key),
                        &h.hit.rate,
                        now,
                        h.hit.cost,
                    )
                })
                .collect())
        })
    }
}

const API_KEY: &str = "bench-key";
/// Ed25519 test key pair of the server's JWT tests.
const ED_KEY: &str = include_str!("../../server/src/authz/testdata/ed1.key");
const ED_PUB: &str = include_str!("../../server/src/authz/testdata/ed1.pub");

fn policy_text() -> String {
    let pem = ED_PUB.trim_end().replace('\n', "\n            ");
    let limit = "{name: l, key: {header: x-bench-key}, limit: 1000000000000, window: hour}";
    format!(
        "identities:
  - name: keys
    api_key: {{header: x-api-key}}
  - name: tokens
    jwt:
      issuer: https://bench.issuer
      audiences: [bench]
      algorithms: [EdDSA]
      consumer_claim: sub
      keys:
        - pem: |
            {pem}
consumers:
  - id: bench
    credentials:
      - api_key_sha256: \"{hash}\"
routes:
  - name: public
    match: {{path_prefix: /public/}}
    identities: []
    limits: [{limit}]
  - name: key
    match: {{path_prefix: /key/}}
    identities: [keys]
    limits: [{limit}]
  - name: jwt
    match: {{path_prefix: /jwt/}}
    identities: [tokens]
    limits: [{limit}]
",
        hash = hash_key_hex(API_KEY)
    )
}

fn authorizer() -> Authorizer {
    let text = policy_text();
    let set = PolicySet::compile(&PolicySource {
        format: PolicyFormat::Quorate,
        text,
    })
    .expect("the bench policy compiles");
    let counter = Arc::new(MemCounter {
        policy: Arc::new(LivePolicy { version: None, set }),
        store: CounterStore::new(100_000),
    });
    Authorizer::new(
        counter as Arc<dyn Counter>,
        Arc::new(Metrics::new().expect("metrics")),
        reqwest::Client::new(),
        JwtSettings::default(),
    )
}

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://bench.issuer", "aud": "bench", "sub": "bench-user",
        "iat": now, "exp": now + 86_400,
    });
    let key = jsonwebtoken::EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims,
        &key,
    )
    .unwrap()
}

fn request(path: &str, credential: Option<(&str, &str)>, key: u64) -> AuthzRequest {
    let mut headers = vec![("x-bench-key".to_string(), format!("k{key}"))];
    if let Some((name, value)) = credential {
        headers.push((name.to_string(), value.to_string()));
    }
    AuthzRequest {
        surface: Surface::ExtAuthz,
        method: "GET".into(),
        target: path.into(),
        host: "bench.local".into(),
        headers: RequestHeaders::new(headers),
        peer: Some("192.0.2.1".parse().unwrap()),
        route: None,
        malformed: None,
        forwarded_by: None,
    }
}

/// (name, path, credential header).
type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);

fn decide(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let a = authorizer();
    let bearer = format!("Bearer {}", token());
    let cases: [Case; 3] = [
        ("public", "/public/x", None),
        ("api_key", "/key/x", Some(("x-api-key", API_KEY))),
        ("jwt_cached", "/jwt/x", Some(("authorization", &bearer))),
    ];
    // 1,000 counter keys, all warm before measuring; every decision must be an allow.
    let reqs: Vec<Vec<AuthzRequest>> = cases
        .iter()
        .map(|(_, path, cred)| (0..1000).map(|k| request(path, *cred, k)).collect())
        .collect();
    for r in reqs.iter().flatten() {
        let d = rt.block_on(a.decide(r.clone())).unwrap();
        assert!(
            matches!(d.verdict, Verdict::Allow(_)),
            "warm-up denied: {:?}",
            d.metadata.route
        );
    }
    let mut g = c.benchmark_group("decide");
    for ((name, _, _), reqs) in cases.iter().zip(&reqs) {
        let mut i = 0usize;
        g.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    i = (i + 1) % reqs.len();
                    reqs[i].clone()
                },
                |req| black_box(rt.block_on(a.decide(req)).unwrap()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
