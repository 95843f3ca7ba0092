//! JWT verification: algorithms pinned per issuer, keys inline, from a JWKS URL or an HS
//! secret held outside the policy, and two node-local caches.
//!
//! - **JWKS cache**, one per URL. Keys are fetched on first use and again when a token
//!   names an unknown `kid` or no cached key verifies it (rotation) — but at most once per
//!   [`JwtSettings::min_refresh`] per URL, so a flood of tokens with bogus `kid`s costs the
//!   issuer one request per interval, not one per token. Concurrent refreshes of one URL
//!   are collapsed into one fetch. A failed fetch keeps the keys we had.
//! - **Verified-token cache**: signature checks are the expensive part, so a verified
//!   token's claims are kept (bounded, first-in-first-out eviction) under the SHA-256 of
//!   the policy version, identity and token. A hit re-checks `exp`/`nbf` against the
//!   clock; entries also age out after [`JwtSettings::cache_ttl`] so a key removed from a
//!   JWKS stops working soon even for tokens already seen.
//!
//! Neither cache is replicated: they are runtime state of this node. Tokens are never
//! logged; the cache holds their hash, not the token.
//!
//! The `alg` of a token only selects among the issuer's pinned algorithms; `none` is not
//! an algorithm the verifier knows, and a token asking for HS256 against an RSA issuer is
//! refused before any key is touched (the classic key-confusion attack).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::policy::{JwtIdentity, JwtKeys, SecretRef};
use crate::metrics::Metrics;

/// Claims of a verified token.
pub type Claims = Map<String, Value>;

/// Tunables of the verifier; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct JwtSettings {
    /// Least time between two JWKS fetches of one URL.
    pub min_refresh: Duration,
    /// Most verified tokens kept.
    pub cache_entries: usize,
    /// Longest a verified token is trusted without checking its signature again.
    pub cache_ttl: Duration,
    /// How long a JWKS fetch may take.
    pub fetch_timeout: Duration,
    /// Largest JWKS document accepted.
    pub max_jwks_bytes: usize,
    /// How long an HS secret read from the environment or a file is kept.
    pub secret_ttl: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            min_refresh: Duration::from_secs(10),
            cache_entries: 10_000,
            cache_ttl: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(5),
            max_jwks_bytes: 1024 * 1024,
            secret_ttl: Duration::from_secs(30),
        }
    }
}

/// Why a token was refused. The texts go into deny bodies and logs: they never quote
/// the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted for this issuer")]
    WrongAlgorithm,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("invalid token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    WrongIssuer,
    #[error("token audience not accepted")]
    WrongAudience,
    #[error("token lacks a required claim")]
    MissingClaim,
    #[error("issuer keys unavailable")]
    KeysUnavailable,
}

/// A verified token: its claims and validity window (seconds since the epoch).
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Arc<Claims>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl Verified {
    fn check_time(&self, now: u64, leeway: u64) -> Result<(), JwtError> {
        if let Some(exp) = self.exp {
            if now > exp.saturating_add(leeway) {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = self.nbf {
            if now.saturating_add(leeway) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: Arc<DecodingKey>,
}

/// One JWKS URL's keys and refresh bookkeeping.
#[derive(Default)]
struct JwksSlot {
    keys: Mutex<Arc<Vec<Key>>>,
    /// Bumped by every successful fetch, so a waiter can tell keys changed meanwhile.
    generation: AtomicU64,
    /// Held while fetching: concurrent refreshes wait for the one in flight. Requests
    /// whose key is cached never touch it.
    fetch: tokio::sync::Mutex<FetchState>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
}

struct CachedToken {
    verified: Verified,
    until: Instant,
}

#[derive(Default)]
struct TokenCache {
    map: HashMap<[u8; 32], CachedToken>,
    order: VecDeque<[u8; 32]>,
}

/// An HS secret as last read (or its absence), and when.
type CachedSecret = (Instant, Option<Arc<DecodingKey>>);

/// Verifies tokens for every JWT identity of the live policy. One per node.
pub struct JwtVerifier {
    http: reqwest::Client,
    settings: JwtSettings,
    metrics: Option<Arc<Metrics>>,
    jwks: Mutex<HashMap<String, Arc<JwksSlot>>>,
    tokens: Mutex<TokenCache>,
    secrets: Mutex<HashMap<SecretRef, CachedSecret>>,
    /// Bounds concurrent public-key verifications on the blocking pool.
    verify_permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Seconds since the epoch, as JWT claims count.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn family_of(alg: Algorithm) -> AlgorithmFamily {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => AlgorithmFamily::Hmac,
        ES256 | ES384 => AlgorithmFamily::Ec,
        EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

/// Most keys tried for one token: bounds the work a token without `kid` can cause.
const MAX_CANDIDATES: usize = 8;

fn candidates(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Vec<Arc<DecodingKey>> {
    keys.iter()
        .filter(|k| k.family == family_of(alg))
        .filter(|k| k.alg.is_none_or(|a| a == alg))
        .filter(|k| match (kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        })
        .take(MAX_CANDIDATES)
        .map(|k| Arc::clone(&k.key))
        .collect()
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidAlgorithm => JwtError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(_) => JwtError::MissingClaim,
        _ => JwtError::Malformed,
    }
}

fn number_claim(claims: &Claims, name: &str) -> Option<u64> {
    match claims.get(name)? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

fn validation(ident: &JwtIdentity) -> Validation {
    let mut v = Validation::new(ident.algorithms[0]);
    v.algorithms = ident.algorithms.clone();
    v.leeway = ident.leeway;
    v.validate_nbf = true;
    v.set_issuer(&[ident.issuer.as_str()]);
    let mut required = vec!["exp", "iss"];
    if ident.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&ident.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// Verifies `token` with each candidate key until one accepts its signature.
fn verify_with(
    token: &str,
    keys: &[Arc<DecodingKey>],
    validation: &Validation,
) -> Result<Verified, JwtError> {
    let mut last = JwtError::UnknownKey;
    for key in keys {
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => {
                let claims = data.claims;
                return Ok(Verified {
                    exp: number_claim(&claims, "exp"),
                    nbf: number_claim(&claims, "nbf"),
                    claims: Arc::new(claims),
                });
            }
            Err(e) => {
                last = map_error(e.kind());
                // Anything but a signature mismatch is about the token, not the key.
                if last != JwtError::BadSignature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

impl JwtVerifier {
    pub fn new(
        http: reqwest::Client,
        settings: JwtSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> JwtVerifier {
        JwtVerifier {
            http,
            settings,
            metrics,
            jwks: Mutex::new(HashMap::new()),
            tokens: Mutex::new(TokenCache::default()),
            secrets: Mutex::new(HashMap::new()),
            verify_permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
                    .max(2),
            ),
        }
    }

    fn count(&self, which: &str, result: &str) {
        if let Some(m) = &self.metrics {
            match which {
                "jwks" => m.authz_jwks_fetches.with_label_values(&[result]).inc(),
                _ => m.authz_jwt_cache.with_label_values(&[result]).inc(),
            }
        }
    }

    /// Verifies a token for identity `name` of the policy version `scope` (cached
    /// verifications never outlive the policy they were made under).
    pub async fn verify(
        &self,
        scope: u64,
        name: &str,
        ident: &JwtIdentity,
        token: &str,
    ) -> Result<Verified, JwtError> {
        let now = unix_now();
        let cache_key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(scope.to_le_bytes());
            h.update(name.as_bytes());
            h.update([0]);
            h.update(token.as_bytes());
            h.finalize().into()
        };
        if let Some(hit) = self.cached(&cache_key) {
            self.count("cache", "hit");
            hit.check_time(now, ident.leeway)?;
            return Ok(hit);
        }
        self.count("cache", "miss");

        if token.split('.').count() != 3 {
            return Err(JwtError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !ident.algorithms.contains(&header.alg) {
            return Err(JwtError::WrongAlgorithm);
        }
        let validation = validation(ident);
        let verified = match &ident.keys {
            JwtKeys::Inline(keys) => {
                let keys: Vec<Key> = keys
                    .iter()
                    .map(|k| Key {
                        kid: k.kid.clone(),
                        alg: None,
                        family: k.family,
                        key: Arc::clone(&k.key),
                    })
                    .collect();
                let c = candidates(&keys, header.kid.as_deref(), header.alg);
                if c.is_empty() {
                    return Err(JwtError::UnknownKey);
                }
                self.verify_keys(token, c, &validation).await?
            }
            JwtKeys::Secret(secret) => {
                let key = self.secret(secret).await.ok_or(JwtError::KeysUnavailable)?;
                self.verify_keys(token, vec![key], &validation).await?
            }
            JwtKeys::Jwks { url } => {
                self.verify_jwks(url, token, header.kid.as_deref(), header.alg, &validation)
                    .await?
            }
        };
        self.remember(cache_key, verified.clone());
        Ok(verified)
    }

    /// Checks a signature with `keys`. HMAC is cheap and runs here; public-key checks
    /// (measured on this machine class, optimised build of the pure-Rust backend: RS256
    /// ≈ 190 µs, ES256 ≈ 320 µs, EdDSA ≈ 60 µs, HS256 ≈ 3.5 µs) would stall an async
    /// worker, so they run on the blocking pool, at most `verify_permits` at a time so a
    /// flood of uncacheable tokens queues instead of taking every thread.
    async fn verify_keys(
        &self,
        token: &str,
        keys: Vec<Arc<DecodingKey>>,
        validation: &Validation,
    ) -> Result<Verified, JwtError> {
        if keys.iter().all(|k| k.family() == AlgorithmFamily::Hmac) {
            return verify_with(token, &keys, validation);
        }
        let _permit = self
            .verify_permits
            .acquire()
            .await
            .map_err(|_| JwtError::KeysUnavailable)?;
        let token = token.to_string();
        let validation = validation.clone();
        tokio::task::spawn_blocking(move || verify_with(&token, &keys, &validation))
            .await
            // A panic inside the crypto library is a refused token, not a crashed node.
            .unwrap_or(Err(JwtError::Malformed))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verified> {
        let mut cache = self.tokens.lock().ok()?;
        let hit = cache.map.get(key)?;
        if hit.until <= Instant::now() {
            cache.map.remove(key);
            return None;
        }
        Some(hit.verified.clone())
    }

    fn remember(&self, key: [u8; 32], verified: Verified) {
        let Ok(mut cache) = self.tokens.lock() else {
            return;
        };
        if self.settings.cache_entries == 0 {
            return;
        }
        while cache.map.len() >= self.settings.cache_entries {
            match cache.order.pop_front() {
                Some(old) => {
                    cache.map.remove(&old);
                }
                None => break,
            }
        }
        // The order queue may hold keys already expired out of the map; keep it bounded.
        if cache.order.len() >= self.settings.cache_entries.saturating_mul(2) {
            let TokenCache { map, order } = &mut *cache;
            order.retain(|k| map.contains_key(k));
        }
        let until = Instant::now() + self.settings.cache_ttl;
        if cache
            .map
            .insert(key, CachedToken { verified, until })
            .is_none()
        {
            cache.order.push_back(key);
        }
    }

    async fn verify_jwks(
        &self,
        url: &str,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
        validation: &Validation,
    ) -> Result<Verified, JwtError> {
        let slot = self.slot(url);
        let generation = slot.generation.load(Ordering::Acquire);
        let keys = slot.keys.lock().map(|k| Arc::clone(&k)).unwrap_or_default();
        let first = candidates(&keys, kid, alg);
        if !first.is_empty() {
            match self.verify_keys(token, first.clone(), validation).await {
                Err(JwtError::BadSignature) => {}
                other => return other,
            }
        }
        // Unknown kid, or no key verified it: the issuer may have rotated. Refresh, at
        // most once per interval, and try again with what we have then.
        let refreshed = self.refresh(&slot, url, generation).await;
        let keys = slot.keys.lock().map(|k| Arc::clone(&k)).unwrap_or_default();
        if !refreshed {
            return Err(if keys.is_empty() {
                JwtError::KeysUnavailable
            } else if first.is_empty() {
                JwtError::UnknownKey
            } else {
                JwtError::BadSignature
            });
        }
        let second = candidates(&keys, kid, alg);
        if second.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        self.verify_keys(token, second, validation).await
    }

    fn slot(&self, url: &str) -> Arc<JwksSlot> {
        match self.jwks.lock() {
            Ok(mut map) => Arc::clone(map.entry(url.to_string()).or_default()),
            Err(_) => Arc::new(JwksSlot::default()),
        }
    }

    /// Fetches the JWKS unless one was fetched or attempted within `min_refresh`.
    /// Returns whether the keys are newer than generation `seen`.
    async fn refresh(&self, slot: &JwksSlot, url: &str, seen: u64) -> bool {
        let mut state = slot.fetch.lock().await;
        if slot.generation.load(Ordering::Acquire) != seen {
            // Another request refreshed while we waited.
            return true;
        }
        if let Some(last) = state.last_attempt {
            if last.elapsed() < self.settings.min_refresh {
                self.count("jwks", "throttled");
                return false;
            }
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(url).await {
            Ok(keys) => {
                tracing::info!(url, keys = keys.len(), "JWKS refreshed");
                self.count("jwks", "ok");
                if let Ok(mut k) = slot.keys.lock() {
                    *k = Arc::new(keys);
                }
                slot.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(reason) => {
                tracing::warn!(url, %reason, "JWKS fetch failed; keeping the keys we had");
                self.count("jwks", "error");
                false
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<Vec<Key>, String> {
        let response = self
            .http
            .get(url)
            .timeout(self.settings.fetch_timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.settings.max_jwks_bytes as u64)
        {
            return Err("JWKS document too large".into());
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > self.settings.max_jwks_bytes {
            return Err("JWKS document too large".into());
        }
        // Keys are parsed one by one: a key of a kind we do not know (an encryption key,
        // a new curve) must not make the whole set unusable.
        let set: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let entries = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JWKS document (no `keys` array)")?;
        let mut keys = Vec::new();
        for entry in entries {
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            // Symmetric keys have no place in a public key set: using one would let
            // anyone who can read the JWKS forge tokens.
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                family: key.family(),
                key: Arc::new(key),
            });
        }
        Ok(keys)
    }

    /// An HS secret from the environment or a file, re-read every `secret_ttl`.
    async fn secret(&self, secret: &SecretRef) -> Option<Arc<DecodingKey>> {
        if let Ok(map) = self.secrets.lock() {
            if let Some((at, key)) = map.get(secret) {
                if at.elapsed() < self.settings.secret_ttl {
                    return key.clone();
                }
            }
        }
        let bytes = match secret {
            SecretRef::Env(name) => std::env::var_os(name).map(|v| v.into_encoded_bytes()),
            SecretRef::File(path) => tokio::fs::read(path).await.ok(),
        };
        let key = bytes
            .map(|mut b| {
                // Files usually end in a newline that is not part of the secret.
                while b.last().is_some_and(|c| c.is_ascii_whitespace()) {
                    b.pop();
                }
                b
            })
            .filter(|b| !b.is_empty())
            .map(|b| Arc::new(DecodingKey::from_secret(&b)));
        if key.is_none() {
            // The reference (a variable name or path) is not secret; its value is.
            tracing::warn!(
                ?secret,
                "HS secret unavailable: tokens of this issuer are refused"
            );
        }
        if let Ok(mut map) = self.secrets.lock() {
            map.insert(secret.clone(), (Instant::now(), key.clone()));
        }
        key
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
pub(crate) mod tests;
