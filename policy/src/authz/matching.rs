//! Route matching: host patterns and path patterns, compared against the canonical
//! request target of [`super::request_target`] (which keeps `/v1/../admin` and
//! `/v1/%2e%2e/admin` from matching a `/v1/` route while the upstream serves `/admin`).
//!
//! Routes are tried in document order and the first match wins. Path patterns are
//! themselves put in canonical form when the policy is compiled, so `/%7Euser/` and
//! `/~user/` are one pattern.

use super::request_target::canonical_path;
use super::Route;

/// A host a route answers for: exact, or `*.example.com` (one or more labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*`, including the leading dot.
    Suffix(String),
    Any,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let t = text.trim().to_ascii_lowercase();
        if t == "*" {
            return Ok(HostPattern::Any);
        }
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        };
        if let Some(rest) = t.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Suffix(format!(".{rest}")));
            }
        } else if valid(&t) {
            return Ok(HostPattern::Exact(t));
        }
        Err(format!(
            "{text:?} is not a host (example.com or *.example.com)"
        ))
    }

    /// Whether a canonical `host` (lower-cased, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// A path a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Any,
    Exact(String),
    /// A prefix. A prefix ending in `/` also matches the path without it (`/v1/` matches
    /// `/v1`); one not ending in `/` matches only at a segment boundary (`/v1` matches
    /// `/v1` and `/v1/x`, not `/v10`).
    Prefix(String),
    /// Segments: `*` matches one whole segment, `**` (last) any rest, including nothing.
    Glob(Vec<String>),
}

/// A pattern in canonical form; `?` (a query) is not part of a pattern.
fn check_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') || p.len() > 2048 || p.contains('?') {
        return Err(format!("path {p:?} must start with '/' and have no query"));
    }
    canonical_path(p).map_err(|e| format!("path {p:?}: {e}"))
}

impl PathPattern {
    pub fn exact(p: &str) -> Result<PathPattern, String> {
        Ok(PathPattern::Exact(check_path(p)?))
    }

    pub fn prefix(p: &str) -> Result<PathPattern, String> {
        Ok(PathPattern::Prefix(check_path(p)?))
    }

    pub fn glob(p: &str) -> Result<PathPattern, String> {
        let p = &check_path(p)?;
        let segments: Vec<String> = p[1..].split('/').map(str::to_string).collect();
        if let Some(pos) = segments.iter().position(|s| s == "**") {
            if pos + 1 != segments.len() {
                return Err(format!("{p:?}: `**` may only be the last segment"));
            }
        }
        if segments
            .iter()
            .any(|s| s.contains('*') && s != "*" && s != "**")
        {
            return Err(format!("{p:?}: `*` must be a whole segment (/v1/*/items)"));
        }
        Ok(PathPattern::Glob(segments))
    }

    /// Whether a canonical path (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => {
                if let Some(stem) = p.strip_suffix('/') {
                    path == stem || path.starts_with(p.as_str())
                } else {
                    path == p
                        || (path.starts_with(p.as_str())
                            && path.as_bytes().get(p.len()) == Some(&b'/'))
                }
            }
            PathPattern::Glob(segments) => {
                let mut parts = path[1.min(path.len())..].split('/');
                for seg in segments {
                    if seg == "**" {
                        return true;
                    }
                    match parts.next() {
                        Some(part) if seg == "*" && !part.is_empty() => {}
                        Some(part) if part == seg => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// Whether `route` takes this request (method upper-case, host and path canonical).
pub fn route_matches(route: &Route, method: &str, host: &str, path: &str) -> bool {
    (route.hosts.is_empty() || route.hosts.iter().any(|h| h.matches(host)))
        && (route.methods.is_empty() || route.methods.iter().any(|m| m == method))
        && route.path.matches(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::request_target::canonical_host;

    #[test]
    fn hosts() {
        let exact = HostPattern::parse("API.example.com").unwrap();
        assert!(exact.matches(&canonical_host("api.EXAMPLE.com.:443").unwrap()));
        assert!(!exact.matches("x.api.example.com"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("*").unwrap().matches("anything"));
    }

    #[test]
    fn prefixes_respect_segment_boundaries() {
        let p = PathPattern::prefix("/v1").unwrap();
        assert!(p.matches("/v1"));
        assert!(p.matches("/v1/x"));
        assert!(!p.matches("/v10"));
        let p = PathPattern::prefix("/v1/").unwrap();
        assert!(p.matches("/v1"));
        assert!(p.matches("/v1/items"));
        assert!(!p.matches("/v2/items"));
        assert!(PathPattern::prefix("/").unwrap().matches("/anything"));
    }

    #[test]
    fn globs() {
        let g = PathPattern::glob("/v1/*/items").unwrap();
        assert!(g.matches("/v1/abc/items"));
        assert!(!g.matches("/v1/abc/def/items"));
        assert!(!g.matches("/v1//items"));
        assert!(!g.matches("/v1/abc/items/1"));
        let g = PathPattern::glob("/static/**").unwrap();
        assert!(g.matches("/static/"));
        assert!(g.matches("/static/a/b/c.css"));
        assert!(!g.matches("/other"));
        assert!(PathPattern::glob("/a/**/b").is_err());
        assert!(PathPattern::glob("/a/b*").is_err());
        assert!(PathPattern::glob("no-slash").is_err());
        // Patterns are canonical too, and refused where a request would be.
        assert_eq!(PathPattern::glob("/%76%31/*"), PathPattern::glob("/v1/*"));
        assert!(PathPattern::prefix("/a%2fb/").is_err());
        assert!(PathPattern::prefix("/a;b/").is_err());
    }

    #[test]
    fn exact_paths_are_normalised_too() {
        let p = PathPattern::exact("/login").unwrap();
        assert!(p.matches(&canonical_path("/x/../login?next=/").unwrap()));
        assert!(!p.matches("/login/"));
    }
}
