//! Authorization: who is calling, may they do this — the parts the decision function
//! ([`crate::decide::authz`]) composes with rate limiting.
//!
//! - [`policy`] (in [`crate::policy::authz`]): the `identities`, `consumers`, `routes` and
//!   `defaults` sections of the replicated policy document, validated with line numbers;
//!   with it [`request_target`] (the one canonical form of a request's path and host that
//!   routes are matched on), [`matching`] (which route a request belongs to) and
//!   [`template`].
//! - [`credential`]: finding credentials in a request; API keys checked by SHA-256.
//! - [`jwt`]: JWT verification with pinned algorithms, node-local JWKS and verified-token
//!   caches.
//! - [`net`]: the client IP from the peer or trusted `X-Forwarded-For` hops; CIDRs.
//!
//! Secrets stay out of everything replicated or observable: the policy holds key hashes
//! and secret *references* only; logs, metrics labels and counter keys carry consumer
//! ids, route and identity names, never a credential.

pub mod credential;
pub mod jwt;
pub mod net;

// The authorization policy model (routes, identities, ACLs, templates, canonical request
// targets) lives with the rest of the policy; these paths stay for the runtime modules.
pub use crate::policy::authz as policy;
pub use crate::policy::authz::{matching, request_target, template};
pub use policy::{AuthzPolicy, FailureMode, Mode, Unmatched};

/// Most request headers a decision looks at; more is a 400.
pub const MAX_HEADERS: usize = 256;
/// Most header bytes (names and values) a decision looks at; more is a 400.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Whether `count` headers of `bytes` total (names and values, as received) are within
/// [`MAX_HEADERS`] and [`MAX_HEADER_BYTES`]; the message names the cap that was passed.
/// The surfaces check this before any per-header work.
pub fn within_caps(count: usize, bytes: usize) -> Result<(), String> {
    if count > MAX_HEADERS {
        return Err(format!("more than {MAX_HEADERS} request headers"));
    }
    if bytes > MAX_HEADER_BYTES {
        return Err(format!(
            "request headers larger than {MAX_HEADER_BYTES} bytes"
        ));
    }
    Ok(())
}

/// A request's headers with lower-cased names, as both surfaces deliver them. Repeated
/// headers are joined (`, `, or `; ` for `cookie`) like Envoy does.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RequestHeaders {
    entries: Vec<(String, String)>,
}

/// Names only: values carry credentials, and a stray `?request` in a log line must not
/// print them.
impl std::fmt::Debug for RequestHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, _)| n))
            .finish()
    }
}

impl RequestHeaders {
    /// Builds from (name, value) pairs; names are lower-cased, repeats joined.
    /// Linear in the number of pairs (an index finds repeats), though the surfaces cap
    /// count and size before calling this ([`within_caps`]).
    pub fn new(pairs: Vec<(String, String)>) -> RequestHeaders {
        let mut entries: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        let mut index: std::collections::HashMap<String, usize> =
            std::collections::HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            let name = name.to_ascii_lowercase();
            match index.get(&name) {
                Some(&i) => {
                    let existing = &mut entries[i].1;
                    existing.push_str(if name == "cookie" { "; " } else { ", " });
                    existing.push_str(&value);
                }
                None => {
                    index.insert(name.clone(), entries.len());
                    entries.push((name, value));
                }
            }
        }
        RequestHeaders { entries }
    }

    /// The value of header `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names and values, summed.
    pub fn byte_len(&self) -> usize {
        self.entries.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}
