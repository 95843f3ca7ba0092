//! JWT verification tests: claims and time checks, pinned algorithms, `alg: none`,
//! tampering, and JWKS refresh (unknown kid, rotation, rate limiting) against a local
//! axum server standing in for the issuer. Keys in `testdata/` were made with openssl
//! for these tests only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::authz::policy::{Credential, CredentialSource, InlineKey, JwtIdentity, JwtKeys};

pub const RSA1_KEY: &str = include_str!("testdata/rsa1.key");
pub const RSA1_PUB: &str = include_str!("testdata/rsa1.pub");
pub const RSA2_KEY: &str = include_str!("testdata/rsa2.key");
pub const EC1_KEY: &str = include_str!("testdata/ec1.key");
pub const EC1_PUB: &str = include_str!("testdata/ec1.pub");
pub const ED1_KEY: &str = include_str!("testdata/ed1.key");
pub const ED1_PUB: &str = include_str!("testdata/ed1.pub");

const ISS: &str = "https://issuer.test";

fn identity(algorithms: &[Algorithm], keys: JwtKeys) -> JwtIdentity {
    JwtIdentity {
        issuer: ISS.into(),
        audiences: vec!["api".into()],
        algorithms: algorithms.to_vec(),
        keys,
        consumer_claim: "sub".into(),
        groups_claim: None,
        leeway: 30,
        credential: Credential {
            source: CredentialSource::Header("authorization".into()),
            scheme: Some("Bearer".into()),
            hide: false,
        },
        require_consumer: false,
    }
}

fn inline(pem: &str, family: AlgorithmFamily, kid: Option<&str>) -> JwtKeys {
    let key = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
        _ => DecodingKey::from_ed_pem(pem.as_bytes()),
    }
    .unwrap();
    JwtKeys::Inline(vec![InlineKey::for_tests(kid, family, key)])
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let now = unix_now();
    let mut c = json!({"iss": ISS, "aud": "api", "sub": "alice", "exp": now + 600, "iat": now});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

pub(crate) fn sign(
    alg: Algorithm,
    pem: &str,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Ok(EncodingKey::from_secret(pem.as_bytes()))
        }
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

fn verifier(settings: JwtSettings) -> JwtVerifier {
    JwtVerifier::new(reqwest::Client::new(), settings, None)
}

#[tokio::test]
async fn accepts_a_valid_token_with_every_family() {
    let v = verifier(JwtSettings::default());
    let rs = identity(
        &[Algorithm::RS256],
        inline(RSA1_PUB, AlgorithmFamily::Rsa, None),
    );
    let t = sign(
        Algorithm::RS256,
        RSA1_KEY,
        None,
        &claims(json!({"org": "acme"})),
    );
    let ok = v.verify(1, "rs", &rs, &t).await.unwrap();
    assert_eq!(ok.claims["sub"], "alice");
    assert_eq!(ok.claims["org"], "acme");

    let es = identity(
        &[Algorithm::ES256],
        inline(EC1_PUB, AlgorithmFamily::Ec, None),
    );
    let t = sign(Algorithm::ES256, EC1_KEY, None, &claims(json!({})));
    assert!(v.verify(1, "es", &es, &t).await.is_ok());

    let ed = identity(
        &[Algorithm::EdDSA],
        inline(ED1_PUB, AlgorithmFamily::Ed, None),
    );
    let t = sign(Algorithm::EdDSA, ED1_KEY, None, &claims(json!({})));
    assert!(v.verify(1, "ed", &ed, &t).await.is_ok());

    let ps = identity(
        &[Algorithm::PS256],
        inline(RSA1_PUB, AlgorithmFamily::Rsa, None),
    );
    let t = sign(Algorithm::PS256, RSA1_KEY, None, &claims(json!({})));
    assert!(v.verify(1, "ps", &ps, &t).await.is_ok());
}

#[tokio::test]
async fn refuses_bad_times_issuers_and_audiences() {
    let v = verifier(JwtSettings::default());
    let es = identity(
        &[Algorithm::ES256],
        inline(EC1_PUB, AlgorithmFamily::Ec, None),
    );
    let now = unix_now();
    let cases = [
        (json!({"exp": now - 120}), JwtError::Expired),
        (json!({"nbf": now + 600}), JwtError::NotYetValid),
        (json!({"iss": "https://evil.test"}), JwtError::WrongIssuer),
        (json!({"aud": "other"}), JwtError::WrongAudience),
    ];
    for (extra, want) in cases {
        let t = sign(Algorithm::ES256, EC1_KEY, None, &claims(extra.clone()));
        assert_eq!(
            v.verify(1, "es", &es, &t).await.unwrap_err(),
            want,
            "{extra}"
        );
    }
    // Within the leeway both ways.
    let t = sign(
        Algorithm::ES256,
        EC1_KEY,
        None,
        &claims(json!({"exp": now - 10, "nbf": now + 10})),
    );
    assert!(v.verify(1, "es", &es, &t).await.is_ok());
    // No exp at all is refused.
    let mut c = claims(json!({}));
    c.as_object_mut().unwrap().remove("exp");
    let t = sign(Algorithm::ES256, EC1_KEY, None, &c);
    assert_eq!(
        v.verify(1, "es", &es, &t).await.unwrap_err(),
        JwtError::MissingClaim
    );
}

#[tokio::test]
async fn algorithm_is_pinned_and_none_is_never_accepted() {
    let v = verifier(JwtSettings::default());
    let rs = identity(
        &[Algorithm::RS256],
        inline(RSA1_PUB, AlgorithmFamily::Rsa, None),
    );
    // Another RSA algorithm than the pinned one.
    let t = sign(Algorithm::RS384, RSA1_KEY, None, &claims(json!({})));
    assert_eq!(
        v.verify(1, "rs", &rs, &t).await.unwrap_err(),
        JwtError::WrongAlgorithm
    );
    // Key confusion: HS256 signed with the RSA public key as the HMAC secret.
    let t = sign(Algorithm::HS256, RSA1_PUB, None, &claims(json!({})));
    assert_eq!(
        v.verify(1, "rs", &rs, &t).await.unwrap_err(),
        JwtError::WrongAlgorithm
    );
    // alg: none, no signature.
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    assert_eq!(
        v.verify(1, "rs", &rs, &none).await.unwrap_err(),
        JwtError::Malformed
    );
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "NONE"})),
        b64(&claims(json!({})))
    );
    assert_eq!(
        v.verify(1, "rs", &rs, &none).await.unwrap_err(),
        JwtError::Malformed
    );
}

#[tokio::test]
async fn tampered_and_garbage_tokens_are_refused() {
    let v = verifier(JwtSettings::default());
    let es = identity(
        &[Algorithm::ES256],
        inline(EC1_PUB, AlgorithmFamily::Ec, None),
    );
    let t = sign(Algorithm::ES256, EC1_KEY, None, &claims(json!({})));
    let parts: Vec<&str> = t.split('.').collect();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims(json!({"sub": "admin"})).to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(
        v.verify(1, "es", &es, &tampered).await.unwrap_err(),
        JwtError::BadSignature
    );
    for garbage in [
        "",
        "abc",
        "a.b.c",
        "....",
        "\u{0}.\u{1}.\u{2}",
        "eyJ.eyJ.sig",
        &"x".repeat(5000),
    ] {
        assert!(
            v.verify(1, "es", &es, garbage).await.is_err(),
            "{garbage:?}"
        );
    }
    // Signed by another key of the same family.
    let rs = identity(
        &[Algorithm::RS256],
        inline(RSA1_PUB, AlgorithmFamily::Rsa, None),
    );
    let other = sign(Algorithm::RS256, RSA2_KEY, None, &claims(json!({})));
    assert_eq!(
        v.verify(1, "rs", &rs, &other).await.unwrap_err(),
        JwtError::BadSignature
    );
}

#[tokio::test]
async fn hs_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cr3t-value\n").unwrap();
    let v = verifier(JwtSettings::default());
    let hs = identity(
        &[Algorithm::HS256],
        JwtKeys::Secret(SecretRef::File(path.display().to_string())),
    );
    let t = sign(Algorithm::HS256, "s3cr3t-value", None, &claims(json!({})));
    assert!(v.verify(1, "hs", &hs, &t).await.is_ok());
    let t = sign(Algorithm::HS256, "wrong", None, &claims(json!({})));
    assert_eq!(
        v.verify(1, "hs", &hs, &t).await.unwrap_err(),
        JwtError::BadSignature
    );
    let missing = identity(
        &[Algorithm::HS256],
        JwtKeys::Secret(SecretRef::File("/nonexistent/secret".into())),
    );
    assert_eq!(
        v.verify(1, "hs2", &missing, &t).await.unwrap_err(),
        JwtError::KeysUnavailable
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_but_expiry_is_rechecked() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let v = JwtVerifier::new(
        reqwest::Client::new(),
        JwtSettings::default(),
        Some(Arc::clone(&metrics)),
    );
    let es = identity(
        &[Algorithm::ES256],
        inline(EC1_PUB, AlgorithmFamily::Ec, None),
    );
    let t = sign(Algorithm::ES256, EC1_KEY, None, &claims(json!({})));
    v.verify(1, "es", &es, &t).await.unwrap();
    v.verify(1, "es", &es, &t).await.unwrap();
    assert_eq!(metrics.authz_jwt_cache.with_label_values(&["hit"]).get(), 1);
    // Another policy version does not reuse it.
    v.verify(2, "es", &es, &t).await.unwrap();
    assert_eq!(
        metrics.authz_jwt_cache.with_label_values(&["miss"]).get(),
        2
    );
    // A cached token past its exp (+ leeway) is refused without re-verifying.
    let cached = Verified {
        claims: Arc::new(Claims::new()),
        exp: Some(unix_now() - 100),
        nbf: None,
    };
    assert_eq!(
        cached.check_time(unix_now(), 30).unwrap_err(),
        JwtError::Expired
    );
}

#[tokio::test]
async fn cache_is_bounded() {
    let v = verifier(JwtSettings {
        cache_entries: 3,
        ..JwtSettings::default()
    });
    let es = identity(
        &[Algorithm::ES256],
        inline(EC1_PUB, AlgorithmFamily::Ec, None),
    );
    for i in 0..10 {
        let t = sign(Algorithm::ES256, EC1_KEY, None, &claims(json!({"n": i})));
        v.verify(1, "es", &es, &t).await.unwrap();
    }
    let cache = v.tokens.lock().unwrap();
    assert!(cache.map.len() <= 3);
    assert!(cache.order.len() <= 6);
}

/// A stand-in issuer serving a JWKS document that tests can change, counting fetches.
struct Issuer {
    url: String,
    jwks: Arc<Mutex<serde_json::Value>>,
    fetches: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn jwk(pem_private: &str, kid: &str) -> serde_json::Value {
    let key = EncodingKey::from_rsa_pem(pem_private.as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap()
}

async fn issuer(keys: Vec<serde_json::Value>) -> Issuer {
    let jwks = Arc::new(Mutex::new(json!({"keys": keys})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (j, f) = (Arc::clone(&jwks), Arc::clone(&fetches));
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (j, f) = (Arc::clone(&j), Arc::clone(&f));
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                let body = j.lock().unwrap().to_string();
                body
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Issuer {
        url,
        jwks,
        fetches,
        _stop: stop,
    }
}

#[tokio::test]
async fn jwks_unknown_kid_refreshes_and_rotation_works() {
    let iss = issuer(vec![jwk(RSA1_KEY, "k1")]).await;
    let v = verifier(JwtSettings {
        min_refresh: Duration::from_millis(200),
        ..JwtSettings::default()
    });
    let id = identity(
        &[Algorithm::RS256],
        JwtKeys::Jwks {
            url: iss.url.clone(),
        },
    );
    let t1 = sign(Algorithm::RS256, RSA1_KEY, Some("k1"), &claims(json!({})));
    v.verify(1, "jwks", &id, &t1).await.unwrap();
    assert_eq!(
        iss.fetches.load(Ordering::SeqCst),
        1,
        "fetched on first use"
    );

    // The issuer rotates: k2 is published, k1 withdrawn.
    *iss.jwks.lock().unwrap() = json!({"keys": [jwk(RSA2_KEY, "k2")]});
    tokio::time::sleep(Duration::from_millis(250)).await;
    let t2 = sign(Algorithm::RS256, RSA2_KEY, Some("k2"), &claims(json!({})));
    v.verify(1, "jwks", &id, &t2).await.unwrap();
    assert_eq!(
        iss.fetches.load(Ordering::SeqCst),
        2,
        "unknown kid refreshed"
    );

    // A new token with the withdrawn key is refused.
    let t1b = sign(
        Algorithm::RS256,
        RSA1_KEY,
        Some("k1"),
        &claims(json!({"n": 2})),
    );
    assert_eq!(
        v.verify(1, "jwks", &id, &t1b).await.unwrap_err(),
        JwtError::UnknownKey
    );

    // A token without kid is tried against the keys we have.
    let t2b = sign(Algorithm::RS256, RSA2_KEY, None, &claims(json!({"n": 3})));
    v.verify(1, "jwks", &id, &t2b).await.unwrap();
}

#[tokio::test]
async fn a_flood_of_bogus_kids_fetches_at_most_once_per_interval() {
    let iss = issuer(vec![jwk(RSA1_KEY, "k1")]).await;
    let metrics = Arc::new(Metrics::new().unwrap());
    let v = Arc::new(JwtVerifier::new(
        reqwest::Client::new(),
        JwtSettings {
            min_refresh: Duration::from_secs(3600),
            ..JwtSettings::default()
        },
        Some(Arc::clone(&metrics)),
    ));
    let id = Arc::new(identity(
        &[Algorithm::RS256],
        JwtKeys::Jwks {
            url: iss.url.clone(),
        },
    ));
    let good = sign(Algorithm::RS256, RSA1_KEY, Some("k1"), &claims(json!({})));
    v.verify(1, "jwks", &id, &good).await.unwrap();
    assert_eq!(iss.fetches.load(Ordering::SeqCst), 1);

    let mut tasks = Vec::new();
    for i in 0..50 {
        let (v, id) = (Arc::clone(&v), Arc::clone(&id));
        // Well-formed tokens, signed, naming a kid the issuer never published.
        let t = sign(
            Algorithm::RS256,
            RSA1_KEY,
            Some(&format!("bogus-{i}")),
            &claims(json!({})),
        );
        tasks.push(tokio::spawn(
            async move { v.verify(1, "jwks", &id, &t).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err(), JwtError::UnknownKey);
    }
    assert_eq!(
        iss.fetches.load(Ordering::SeqCst),
        1,
        "no fetch within the interval"
    );
    assert_eq!(
        metrics
            .authz_jwks_fetches
            .with_label_values(&["throttled"])
            .get(),
        50
    );
    // Known keys keep working meanwhile.
    let good2 = sign(
        Algorithm::RS256,
        RSA1_KEY,
        Some("k1"),
        &claims(json!({"n": 1})),
    );
    v.verify(1, "jwks", &id, &good2).await.unwrap();
}

#[tokio::test]
async fn concurrent_first_use_fetches_once_and_an_unreachable_issuer_is_keys_unavailable() {
    let iss = issuer(vec![jwk(RSA1_KEY, "k1")]).await;
    let v = Arc::new(verifier(JwtSettings::default()));
    let id = Arc::new(identity(
        &[Algorithm::RS256],
        JwtKeys::Jwks {
            url: iss.url.clone(),
        },
    ));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (v, id) = (Arc::clone(&v), Arc::clone(&id));
        let t = sign(
            Algorithm::RS256,
            RSA1_KEY,
            Some("k1"),
            &claims(json!({"n": i})),
        );
        tasks.push(tokio::spawn(
            async move { v.verify(1, "jwks", &id, &t).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(iss.fetches.load(Ordering::SeqCst), 1);

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", dead.local_addr().unwrap());
    drop(dead);
    let id = identity(&[Algorithm::RS256], JwtKeys::Jwks { url });
    let t = sign(Algorithm::RS256, RSA1_KEY, Some("k1"), &claims(json!({})));
    assert_eq!(
        v.verify(1, "dead", &id, &t).await.unwrap_err(),
        JwtError::KeysUnavailable
    );
}

/// The JWT decoder faces whatever a client puts in `Authorization`: arbitrary text,
/// arbitrary base64url segments, hostile headers (`alg: none`, unknown algorithms, huge
/// `kid`s) and valid tokens with one byte changed. None may panic, and none but an
/// untouched valid token may verify.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn verify(token: &str) -> Result<Verified, JwtError> {
        let verifier = JwtVerifier::new(reqwest::Client::new(), JwtSettings::default(), None);
        let ident = identity(
            &[Algorithm::ES256],
            inline(EC1_PUB, AlgorithmFamily::Ec, None),
        );
        runtime().block_on(verifier.verify(1, "fuzz", &ident, token))
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_verifies(token in "\\PC{0,300}") {
            prop_assert!(verify(&token).is_err());
        }

        #[test]
        fn arbitrary_segments_never_verify(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 3),
        ) {
            let token = format!("{}.{}.{}", b64(&parts[0]), b64(&parts[1]), b64(&parts[2]));
            prop_assert!(verify(&token).is_err());
        }

        #[test]
        fn hostile_headers_never_verify(
            alg in prop_oneof![
                Just("none".to_string()), Just("None".to_string()), Just("HS256".to_string()),
                Just("ES256".to_string()), Just("RS256".to_string()), "\\PC{0,20}",
            ],
            kid in "\\PC{0,2000}",
            body in proptest::collection::vec(any::<u8>(), 0..300),
            sig in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
            let payload = claims(serde_json::json!({}));
            for body in [payload.to_string().into_bytes(), body] {
                let token = format!(
                    "{}.{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(&body),
                    b64(&sig)
                );
                prop_assert!(verify(&token).is_err());
            }
        }

        #[test]
        fn one_changed_byte_never_verifies_as_someone_else(
            at in any::<prop::sample::Index>(),
            with in prop::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
                    .chars()
                    .collect::<Vec<_>>()
            ),
        ) {
            let valid = sign(Algorithm::ES256, EC1_KEY, None, &claims(serde_json::json!({})));
            let mut chars: Vec<char> = valid.chars().collect();
            let i = at.index(chars.len());
            chars[i] = with;
            let token: String = chars.into_iter().collect();
            // Base64url's last character can carry unused bits: a change there may decode
            // to the same bytes and still verify, as the same caller.
            if let Ok(v) = verify(&token) {
                prop_assert_eq!(v.claims.get("sub"), Some(&serde_json::json!("alice")));
            }
        }
    }
}
