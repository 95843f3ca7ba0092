//! The `rlqs:` section: Envoy Rate Limit Quota Service buckets and the limits the leader
//! shares among the proxies that report them.
//!
//! A bucket rule matches an Envoy `BucketId` (a string map) entry by entry: `value` exact,
//! `value` with `*` wildcards (every matching value shares one bucket), or `key` alone (one
//! bucket per distinct value). The map must have exactly the rule's keys; the first rule of
//! the domain that matches, in file order, wins. A match yields the bucket's canonical
//! key, which names its share table on the leader.

use std::collections::BTreeSet;

use quorate_algorithms::{Nanos, SECOND};
use serde::Deserialize;

use crate::descriptors::wildcard_matches;
use crate::duration::parse_window;

/// Defaults, documented in the README ("Envoy RLQS").
pub const DEFAULT_INTERVAL: Nanos = SECOND;
pub const DEFAULT_RESERVE: f64 = 0.05;
pub const DEFAULT_FLOOR: f64 = 0.1;
pub const DEFAULT_ABANDON_AFTER: u32 = 3;
pub const DEFAULT_MAX_BUCKETS: usize = 10_000;
pub const DEFAULT_MAX_BUCKETS_PER_STREAM: usize = 1_000;
/// Longest key or value a rule may name (and a `BucketId` may carry).
pub const MAX_BUCKET_TEXT: usize = 256;
/// Most entries in a rule's `bucket_id` (and in a reported `BucketId`).
pub const MAX_BUCKET_PAIRS: usize = 16;

/// The compiled `rlqs:` section. Empty (no domains) when the policy has none: every
/// stream is then refused as an unknown domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RlqsPolicy {
    pub settings: RlqsSettings,
    /// Domain name → its bucket rules in file order.
    pub domains: std::collections::BTreeMap<String, Vec<BucketRule>>,
}

/// How the leader runs the sharing; one set for all buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RlqsSettings {
    /// How often the leader re-divides every bucket and pushes assignments. Set Envoy's
    /// `reporting_interval` to the same value.
    pub interval: Nanos,
    /// Lifetime of an assignment (at least `interval`; default 1.5 × `interval`).
    pub ttl: Nanos,
    /// Fraction of each limit never assigned as rate; it absorbs the one token each new
    /// per-proxy bucket starts with.
    pub reserve: f64,
    /// A proxy's share is at least `floor` × (the assignable rate / proxies), so a newly
    /// seen or idle proxy can still admit its first requests.
    pub floor: f64,
    /// A proxy silent for this many intervals is sent `abandon_action` for the bucket.
    pub abandon_after: u32,
    /// Most buckets with subscribers on the leader.
    pub max_buckets: usize,
    /// Most buckets one stream may subscribe to.
    pub max_buckets_per_stream: usize,
}

impl Default for RlqsSettings {
    fn default() -> Self {
        RlqsSettings {
            interval: DEFAULT_INTERVAL,
            ttl: DEFAULT_INTERVAL + DEFAULT_INTERVAL / 2,
            reserve: DEFAULT_RESERVE,
            floor: DEFAULT_FLOOR,
            abandon_after: DEFAULT_ABANDON_AFTER,
            max_buckets: DEFAULT_MAX_BUCKETS,
            max_buckets_per_stream: DEFAULT_MAX_BUCKETS_PER_STREAM,
        }
    }
}

/// One `bucket_id` entry of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketMatch {
    /// The value must equal this.
    Exact(String),
    /// The value must match this `*` pattern; all matching values share the bucket.
    Wildcard(String),
    /// Any value; each distinct value is its own bucket.
    PerValue,
}

/// The global limit of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLimit {
    /// At most `requests` in any window of length `window`, across all proxies.
    RequestsPerWindow { requests: u64, window: Nanos },
    /// A token bucket refilled with `requests` per `window`, holding at most `burst`.
    TokenBucket {
        requests: u64,
        window: Nanos,
        burst: u64,
    },
}

impl QuotaLimit {
    /// Tokens refilled per `window`, and the window.
    pub fn rate(&self) -> (u64, Nanos) {
        match *self {
            QuotaLimit::RequestsPerWindow { requests, window }
            | QuotaLimit::TokenBucket {
                requests, window, ..
            } => (requests, window),
        }
    }
}

/// A bucket rule.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRule {
    pub name: String,
    /// Key → how its value matches; sorted by key.
    pub bucket_id: Vec<(String, BucketMatch)>,
    pub limit: QuotaLimit,
}

/// What a reported `BucketId` resolved to.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedBucket<'a> {
    /// `domain␟rule␟key=value…` for the per-value entries: one share table per distinct key.
    pub key: String,
    pub rule: &'a BucketRule,
}

impl RlqsPolicy {
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain)
    }

    /// The bucket `bucket_id` (sorted by key, as a protobuf map arrives in a BTreeMap)
    /// falls into in `domain`; `None` when no rule matches.
    pub fn find(&self, domain: &str, bucket_id: &[(&str, &str)]) -> Option<MatchedBucket<'_>> {
        let rules = self.domains.get(domain)?;
        rules.iter().find_map(|rule| {
            if rule.bucket_id.len() != bucket_id.len() {
                return None;
            }
            let mut key = format!("{domain}\u{1f}{}", rule.name);
            for ((want_key, how), (got_key, value)) in rule.bucket_id.iter().zip(bucket_id) {
                if want_key != got_key {
                    return None;
                }
                match how {
                    BucketMatch::Exact(v) if v != value => return None,
                    BucketMatch::Wildcard(p) if !wildcard_matches(p, value) => return None,
                    BucketMatch::PerValue => {
                        key.push('\u{1f}');
                        key.push_str(want_key);
                        key.push('=');
                        key.push_str(value);
                    }
                    _ => {}
                }
            }
            Some(MatchedBucket { key, rule })
        })
    }
}

// === raw document ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRlqs {
    interval: Option<String>,
    ttl: Option<String>,
    reserve: Option<f64>,
    floor: Option<f64>,
    abandon_after: Option<u32>,
    max_buckets: Option<usize>,
    max_buckets_per_stream: Option<usize>,
    #[serde(default)]
    domains: Vec<RawRlqsDomain>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRlqsDomain {
    domain: String,
    #[serde(default)]
    buckets: Vec<RawBucketRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucketRule {
    name: String,
    bucket_id: Vec<RawBucketEntry>,
    rate_limit: RawQuotaLimit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucketEntry {
    key: String,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotaLimit {
    requests_per_unit: u64,
    unit: Option<String>,
    window: Option<String>,
    algorithm: Option<String>,
    burst: Option<u64>,
}

/// A validation error at a document path (`rlqs.domains[0].buckets[1]`).
pub(crate) type PathError = (String, String);

impl RawRlqs {
    pub(crate) fn compile(self) -> Result<RlqsPolicy, PathError> {
        let at = |path: &str, reason: String| (path.to_string(), reason);
        let window = |field: &str, text: &Option<String>| -> Result<Option<Nanos>, PathError> {
            text.as_deref()
                .map(parse_window)
                .transpose()
                .map_err(|e| at(&format!("rlqs.{field}"), e))
        };
        let interval = window("interval", &self.interval)?.unwrap_or(DEFAULT_INTERVAL);
        if interval < 50_000_000 {
            return Err(at("rlqs.interval", "must be at least 50ms".into()));
        }
        let ttl = window("ttl", &self.ttl)?.unwrap_or(interval + interval / 2);
        if ttl < interval {
            return Err(at(
                "rlqs.ttl",
                "must be at least the interval (assignments would lapse between pushes)".into(),
            ));
        }
        let reserve = self.reserve.unwrap_or(DEFAULT_RESERVE);
        if !(0.0..=0.5).contains(&reserve) {
            return Err(at("rlqs.reserve", "must be between 0 and 0.5".into()));
        }
        let floor = self.floor.unwrap_or(DEFAULT_FLOOR);
        if !(0.0..=1.0).contains(&floor) {
            return Err(at("rlqs.floor", "must be between 0 and 1".into()));
        }
        let abandon_after = self.abandon_after.unwrap_or(DEFAULT_ABANDON_AFTER);
        if abandon_after == 0 {
            return Err(at("rlqs.abandon_after", "must be at least 1".into()));
        }
        let max_buckets = self.max_buckets.unwrap_or(DEFAULT_MAX_BUCKETS);
        let max_buckets_per_stream = self
            .max_buckets_per_stream
            .unwrap_or(DEFAULT_MAX_BUCKETS_PER_STREAM);
        if max_buckets == 0 || max_buckets_per_stream == 0 {
            return Err(at(
                "rlqs",
                "max_buckets and max_buckets_per_stream must be at least 1".into(),
            ));
        }
        let mut domains = std::collections::BTreeMap::new();
        for (i, raw) in self.domains.into_iter().enumerate() {
            let path = format!("rlqs.domains[{i}]");
            if raw.domain.is_empty() || raw.domain.len() > MAX_BUCKET_TEXT {
                return Err(at(
                    &path,
                    format!("domain must be 1 to {MAX_BUCKET_TEXT} bytes"),
                ));
            }
            if domains.contains_key(&raw.domain) {
                return Err(at(&path, format!("duplicate domain {:?}", raw.domain)));
            }
            let mut rules: Vec<BucketRule> = Vec::new();
            for (j, rule) in raw.buckets.into_iter().enumerate() {
                let path = format!("{path}.buckets[{j}]");
                if rules.iter().any(|r| r.name == rule.name) {
                    return Err(at(&path, format!("duplicate bucket name {:?}", rule.name)));
                }
                rules.push(rule.compile(&path)?);
            }
            domains.insert(raw.domain, rules);
        }
        Ok(RlqsPolicy {
            settings: RlqsSettings {
                interval,
                ttl,
                reserve,
                floor,
                abandon_after,
                max_buckets,
                max_buckets_per_stream,
            },
            domains,
        })
    }
}

impl RawBucketRule {
    fn compile(self, path: &str) -> Result<BucketRule, PathError> {
        let at = |p: String, reason: String| (p, reason);
        if self.name.is_empty() || self.name.len() > MAX_BUCKET_TEXT || self.name.contains('\u{1f}')
        {
            return Err(at(
                path.to_string(),
                format!("bucket name must be 1 to {MAX_BUCKET_TEXT} bytes"),
            ));
        }
        let id_path = format!("{path}.bucket_id");
        if self.bucket_id.is_empty() || self.bucket_id.len() > MAX_BUCKET_PAIRS {
            return Err(at(
                id_path,
                format!("must have 1 to {MAX_BUCKET_PAIRS} entries"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut bucket_id = Vec::new();
        for (k, entry) in self.bucket_id.into_iter().enumerate() {
            let p = format!("{id_path}[{k}]");
            let ok = |s: &str| !s.is_empty() && s.len() <= MAX_BUCKET_TEXT;
            if !ok(&entry.key) {
                return Err(at(p, format!("key must be 1 to {MAX_BUCKET_TEXT} bytes")));
            }
            if !seen.insert(entry.key.clone()) {
                return Err(at(p, format!("key {:?} appears twice", entry.key)));
            }
            let how = match entry.value {
                None => BucketMatch::PerValue,
                Some(v) if !ok(&v) => {
                    return Err(at(p, format!("value must be 1 to {MAX_BUCKET_TEXT} bytes")))
                }
                Some(v) if v.contains('*') => BucketMatch::Wildcard(v),
                Some(v) => BucketMatch::Exact(v),
            };
            bucket_id.push((entry.key, how));
        }
        bucket_id.sort_by(|a, b| a.0.cmp(&b.0));
        let limit = self
            .rate_limit
            .compile()
            .map_err(|reason| at(format!("{path}.rate_limit"), reason))?;
        Ok(BucketRule {
            name: self.name,
            bucket_id,
            limit,
        })
    }
}

impl RawQuotaLimit {
    fn compile(self) -> Result<QuotaLimit, String> {
        if self.requests_per_unit == 0 {
            return Err("requests_per_unit must be at least 1".into());
        }
        let window = match (&self.unit, &self.window) {
            (Some(_), Some(_)) => return Err("give unit or window, not both".into()),
            (Some(u), None) | (None, Some(u)) => parse_window(u)?,
            (None, None) => return Err("unit or window is required".into()),
        };
        match self.algorithm.as_deref() {
            None | Some("requests_per_unit") => {
                if self.burst.is_some() {
                    return Err("burst is for algorithm: token_bucket".into());
                }
                Ok(QuotaLimit::RequestsPerWindow {
                    requests: self.requests_per_unit,
                    window,
                })
            }
            Some("token_bucket") => {
                let burst = self.burst.unwrap_or(self.requests_per_unit);
                if burst == 0 {
                    return Err("burst must be at least 1".into());
                }
                Ok(QuotaLimit::TokenBucket {
                    requests: self.requests_per_unit,
                    window,
                    burst,
                })
            }
            Some(other) => Err(format!(
                "unknown algorithm {other:?} (requests_per_unit or token_bucket)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PolicyFormat, PolicySet, PolicySource};

    fn compile(text: &str) -> Result<PolicySet, crate::PolicyError> {
        PolicySet::compile(&PolicySource {
            format: PolicyFormat::Quorate,
            text: text.into(),
        })
    }

    const POLICY: &str = r#"
rlqs:
  interval: 250ms
  domains:
    - domain: envoy
      buckets:
        - name: gold
          bucket_id: [{key: tier, value: gold}, {key: tenant}]
          rate_limit: {requests_per_unit: 100, unit: second}
        - name: api
          bucket_id: [{key: path, value: "/v1/*"}]
          rate_limit: {requests_per_unit: 10, window: 500ms, algorithm: token_bucket, burst: 20}
"#;

    #[test]
    fn matches_exact_wildcard_and_per_value_entries() {
        let set = compile(POLICY).unwrap();
        let r = &set.rlqs;
        assert_eq!(r.settings.interval, 250_000_000);
        assert_eq!(r.settings.ttl, 375_000_000, "default ttl is 1.5 intervals");
        let a = r
            .find("envoy", &[("tenant", "a"), ("tier", "gold")])
            .unwrap();
        let b = r
            .find("envoy", &[("tenant", "b"), ("tier", "gold")])
            .unwrap();
        assert_eq!(a.rule.name, "gold");
        assert_ne!(a.key, b.key, "one bucket per distinct tenant");
        let x = r.find("envoy", &[("path", "/v1/x")]).unwrap();
        let y = r.find("envoy", &[("path", "/v1/y")]).unwrap();
        assert_eq!(x.key, y.key, "wildcard values share one bucket");
        assert!(matches!(
            x.rule.limit,
            QuotaLimit::TokenBucket { burst: 20, .. }
        ));
        assert!(r
            .find("envoy", &[("tenant", "a"), ("tier", "silver")])
            .is_none());
        assert!(
            r.find("envoy", &[("tier", "gold")]).is_none(),
            "keys must match exactly"
        );
        assert!(r.find("other", &[("path", "/v1/x")]).is_none());
    }

    #[test]
    fn the_policy_documented_in_the_envoy_example_compiles() {
        let example = include_str!("../../examples/envoy/rlqs.yaml");
        let policy: String = example
            .lines()
            .skip_while(|l| !l.starts_with("#   rlqs:"))
            .take_while(|l| l.starts_with("#   "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let set = compile(&policy).unwrap();
        let edge = &set.rlqs;
        assert_eq!(
            edge.settings.interval, SECOND,
            "reporting_interval in the example is 1s"
        );
        assert!(edge.find("edge", &[("name", "api")]).is_some());
        assert!(edge.find("edge", &[("tenant", "acme")]).is_some());
    }

    #[test]
    fn errors_name_their_line() {
        let bad = POLICY.replace("requests_per_unit: 10,", "requests_per_unit: 0,");
        let err = compile(&bad).unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(
            err.reason.contains("rlqs.domains[0].buckets[1].rate_limit"),
            "{err}"
        );
        let err = compile("rlqs:\n  interval: 1s\n  ttl: 500ms\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        let err = compile("rlqs:\n  reserve: 0.9\n").unwrap_err();
        assert!(err.reason.contains("reserve"), "{err}");
        let dup = "rlqs:\n  domains:\n    - domain: d\n      buckets:\n        - {name: a, bucket_id: [{key: k}, {key: k}], rate_limit: {requests_per_unit: 1, unit: second}}\n";
        let err = compile(dup).unwrap_err();
        assert!(err.reason.contains("twice"), "{err}");
    }
}
