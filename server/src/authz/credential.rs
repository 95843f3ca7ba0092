//! Finding a credential in a request (header with optional scheme, query parameter or
//! cookie) and checking API keys against their stored SHA-256 hashes.
//!
//! Keys are never kept or compared in clear: the presented key is hashed and looked up
//! by its hash, and the stored hash is then compared in constant time. The lookup itself
//! only reveals timing about the hash of what the caller sent, which tells them nothing
//! about any stored key (finding a key from its hash prefix is a preimage search).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::policy::{AuthzPolicy, Credential, CredentialSource, KeyCredential};
use super::RequestHeaders;

/// Longest credential we look at; longer ones are refused without hashing or parsing.
pub const MAX_CREDENTIAL: usize = 8192;

/// What a request carries where a credential is expected.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Absent,
    Present(String),
    /// There, but unusable (wrong scheme, too long, bad encoding).
    Malformed(&'static str),
}

/// The SHA-256 of an API key, as stored in the policy (hex).
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Hex SHA-256 of `key`: what `api_key_sha256` holds.
pub fn hash_key_hex(key: &str) -> String {
    hex::encode(hash_key(key.as_bytes()))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` and `+` (form encoding) in a query component.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `name` in a request target (first occurrence).
pub fn query_param(target: &str, name: &str) -> Found {
    let Some((_, query)) = target.split_once('?') else {
        return Found::Absent;
    };
    let query = query.split('#').next().unwrap_or("");
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k).as_deref() == Some(name) {
            return match percent_decode(v) {
                Some(v) if v.is_empty() => Found::Absent,
                Some(v) => Found::Present(v),
                None => Found::Malformed("bad percent-encoding"),
            };
        }
    }
    Found::Absent
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie(header: &str, name: &str) -> Found {
    for pair in header.split(';') {
        if let Some((k, v)) = pair.trim().split_once('=') {
            if k.trim() == name {
                let v = v.trim().trim_matches('"');
                return if v.is_empty() {
                    Found::Absent
                } else {
                    Found::Present(v.to_string())
                };
            }
        }
    }
    Found::Absent
}

/// Finds the credential `spec` describes in a request.
pub fn find(spec: &Credential, headers: &RequestHeaders, target: &str) -> Found {
    let found = match &spec.source {
        CredentialSource::Header(h) => match headers.get(h) {
            None => Found::Absent,
            Some(v) => {
                let v = v.trim();
                match &spec.scheme {
                    None if v.is_empty() => Found::Absent,
                    None => Found::Present(v.to_string()),
                    Some(scheme) => match v.split_once(' ') {
                        Some((s, rest)) if s.eq_ignore_ascii_case(scheme) => {
                            let rest = rest.trim();
                            if rest.is_empty() {
                                Found::Malformed("empty credential")
                            } else {
                                Found::Present(rest.to_string())
                            }
                        }
                        // Another scheme (e.g. Basic where Bearer is expected) is not
                        // ours to judge: the next identity may take it.
                        _ => Found::Absent,
                    },
                }
            }
        },
        CredentialSource::Query(q) => query_param(target, q),
        CredentialSource::Cookie(c) => match headers.get("cookie") {
            Some(v) => cookie(v, c),
            None => Found::Absent,
        },
    };
    match found {
        Found::Present(v) if v.len() > MAX_CREDENTIAL => Found::Malformed("credential too long"),
        other => other,
    }
}

/// Why an API key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    Unknown,
    Expired,
}

impl KeyRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRejection::Unknown => "unknown API key",
            KeyRejection::Expired => "expired API key",
        }
    }
}

/// Checks an API key: known, and not expired at `now` (nanoseconds since the epoch).
pub fn check_key<'p>(
    policy: &'p AuthzPolicy,
    key: &str,
    now: u64,
) -> Result<&'p KeyCredential, KeyRejection> {
    let hash = hash_key(key.as_bytes());
    let (stored, cred) = policy
        .api_keys
        .get_key_value(&hash)
        .ok_or(KeyRejection::Unknown)?;
    if !bool::from(stored.ct_eq(&hash)) {
        return Err(KeyRejection::Unknown);
    }
    match cred.expires {
        Some(expires) if now >= expires => Err(KeyRejection::Expired),
        _ => Ok(cred),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_sha256sum() {
        // printf abc | sha256sum
        assert_eq!(
            hash_key_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn query_and_cookie() {
        assert_eq!(
            query_param("/x?a=1&api_key=k%2By+z", "api_key"),
            Found::Present("k+y z".into())
        );
        assert_eq!(query_param("/x?api_key=", "api_key"), Found::Absent);
        assert_eq!(query_param("/x", "api_key"), Found::Absent);
        assert_eq!(
            query_param("/x?api_key=%ff", "api_key"),
            Found::Malformed("bad percent-encoding")
        );
        assert_eq!(
            cookie("a=b; session=s3; c=d", "session"),
            Found::Present("s3".into())
        );
        assert_eq!(cookie("a=b", "session"), Found::Absent);
    }

    #[test]
    fn schemes() {
        let spec = Credential {
            source: CredentialSource::Header("authorization".into()),
            scheme: Some("Bearer".into()),
            hide: false,
        };
        let h = |v: &str| RequestHeaders::new(vec![("authorization".into(), v.into())]);
        assert_eq!(
            find(&spec, &h("bearer abc"), "/"),
            Found::Present("abc".into())
        );
        assert_eq!(find(&spec, &h("Basic abc"), "/"), Found::Absent);
        assert_eq!(find(&spec, &h("Bearer "), "/"), Found::Absent);
        assert!(matches!(
            find(
                &spec,
                &h(&format!("Bearer {}", "a".repeat(MAX_CREDENTIAL + 1))),
                "/"
            ),
            Found::Malformed(_)
        ));
    }
}
