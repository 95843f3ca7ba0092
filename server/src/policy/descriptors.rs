//! Envoy descriptor trees: envoyproxy/ratelimit's configuration model, with our extras.
//!
//! A domain holds a tree of descriptors. Each request descriptor (a list of `key=value`
//! entries) walks the tree one entry per level, exactly as envoyproxy/ratelimit does:
//! - at each level `key` + `value` is tried first, then a `value` ending in `*` as a prefix
//!   wildcard, then `key` alone (a key without value: one counter per distinct value);
//! - a limit applies only if the walk reaches the descriptor's last entry on a node that
//!   has a `rate_limit` (depth must match);
//! - a node without `rate_limit` is unlimited, as is `rate_limit: {unlimited: true}`.
//!
//! Our extras on `rate_limit`: `algorithm`, `window` (N×unit windows such as `10s`),
//! `burst` and `consistency`.

use std::collections::BTreeMap;

use quorate_algorithms::{Algorithm, OnFull, Rate, SECOND};
use serde::Deserialize;

use super::conditions::ConditionalLimit;
use super::limits::{Consistency, KeyCapDoc, LimitDef};
use super::parse_window;

/// One domain: its descriptor tree and its conditional limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Domain {
    pub name: String,
    pub root: Level,
    /// Limitador-style limits (conditions + variables over the whole request), in policy
    /// order; see [`super::conditions`].
    pub conditional: Vec<ConditionalLimit>,
}

/// The children of a node: how the next entry is matched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Level {
    exact: BTreeMap<(String, String), Node>,
    /// `(key, value prefix)` wildcards, in configuration order.
    prefix: Vec<(String, String, Node)>,
    key_only: BTreeMap<String, Node>,
}

/// One descriptor in the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub rule: Option<Rule>,
    pub shadow_mode: bool,
    pub detailed_metric: bool,
    pub children: Level,
}

/// What a matched node enforces.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Counted against the policy limit named `limit` (filled in by [`Domain::register`]).
    Limited {
        limit: String,
        spec: RuleSpec,
        display_name: Option<String>,
        replaces: Vec<String>,
    },
    /// `unlimited: true`: always OK, never counted.
    Unlimited,
    /// `requests_per_unit: 0`: every request is over the limit (envoyproxy/ratelimit's way
    /// to block a descriptor).
    Blocked { unit: RateUnit },
}

/// The rate part of a rule, before it has a name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleSpec {
    pub rate: Rate,
    pub consistency: Consistency,
    pub unit: RateUnit,
    /// `max_keys`, `on_full`, `expose` (a rule is not addressable via quorate.v1 unless
    /// it says `expose: true`).
    pub cap: KeyCapDoc,
}

/// How a window is reported to Envoy (`RateLimit.unit`): Envoy only knows whole units, so
/// an N×unit window is reported as its base unit with `multiplier` N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateUnit {
    pub base: EnvoyUnit,
    pub multiplier: u64,
}

/// Envoy's `RateLimitResponse.RateLimit.Unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyUnit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl EnvoyUnit {
    pub fn seconds(self) -> u64 {
        match self {
            EnvoyUnit::Second => 1,
            EnvoyUnit::Minute => 60,
            EnvoyUnit::Hour => 3_600,
            EnvoyUnit::Day => 86_400,
            EnvoyUnit::Week => 604_800,
            EnvoyUnit::Month => 2_592_000,
            EnvoyUnit::Year => 31_536_000,
        }
    }

    fn parse(text: &str) -> Option<EnvoyUnit> {
        Some(match text.to_ascii_lowercase().as_str() {
            "second" => EnvoyUnit::Second,
            "minute" => EnvoyUnit::Minute,
            "hour" => EnvoyUnit::Hour,
            "day" => EnvoyUnit::Day,
            "week" => EnvoyUnit::Week,
            "month" => EnvoyUnit::Month,
            "year" => EnvoyUnit::Year,
            _ => return None,
        })
    }
}

impl RateUnit {
    /// The largest Envoy unit that divides `window` evenly.
    pub fn for_window(window: u64) -> RateUnit {
        let secs = window / SECOND;
        for base in [
            EnvoyUnit::Year,
            EnvoyUnit::Month,
            EnvoyUnit::Week,
            EnvoyUnit::Day,
            EnvoyUnit::Hour,
            EnvoyUnit::Minute,
            EnvoyUnit::Second,
        ] {
            let s = base.seconds();
            if secs >= s && window.is_multiple_of(s * SECOND) {
                return RateUnit {
                    base,
                    multiplier: secs / s,
                };
            }
        }
        // Sub-second windows: reported as seconds.
        RateUnit {
            base: EnvoyUnit::Second,
            multiplier: 1,
        }
    }
}

// === YAML ===

/// A `rate_limit` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<RawReplace>,
    #[serde(default)]
    algorithm: Option<Algorithm>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    consistency: Consistency,
    #[serde(default)]
    max_keys: Option<usize>,
    #[serde(default)]
    on_full: OnFull,
    #[serde(default)]
    expose: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: String,
}

/// A descriptor as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    #[serde(default)]
    descriptors: Vec<RawNode>,
}

/// A validation error: the document path of the offending node and the reason.
pub(super) type PathError = (String, String);

/// Longest key or value accepted in a policy.
const MAX_TEXT: usize = 256;

fn compile_rule(key: &str, raw: RawRateLimit) -> Result<Rule, String> {
    let what = format!("rate_limit of descriptor {key:?}");
    if raw.unlimited {
        if raw.requests_per_unit.is_some() || raw.unit.is_some() || raw.window.is_some() {
            return Err(format!(
                "{what}: `unlimited: true` cannot also set unit, window or requests_per_unit"
            ));
        }
        return Ok(Rule::Unlimited);
    }
    let window = match (&raw.unit, &raw.window) {
        (Some(_), Some(_)) => {
            return Err(format!("{what}: set either `unit` or `window`, not both"))
        }
        (Some(unit), None) => {
            let unit = EnvoyUnit::parse(unit).ok_or_else(|| {
                format!("{what}: unknown unit {unit:?} (use second, minute, hour, day, week, month or year)")
            })?;
            unit.seconds() * SECOND
        }
        (None, Some(window)) => parse_window(window).map_err(|e| format!("{what}: {e}"))?,
        (None, None) => return Err(format!("{what}: `unit` (or `window`) is required")),
    };
    let requests = raw
        .requests_per_unit
        .ok_or_else(|| format!("{what}: `requests_per_unit` is required"))?;
    let unit = RateUnit::for_window(window);
    if requests == 0 {
        return Ok(Rule::Blocked { unit });
    }
    let algorithm = raw.algorithm.unwrap_or(Algorithm::FixedWindow);
    let rate =
        Rate::new(algorithm, requests, window, raw.burst).map_err(|e| format!("{what}: {e}"))?;
    if let Some(name) = &raw.name {
        if name.is_empty() || name.len() > MAX_TEXT {
            return Err(format!("{what}: name must be 1 to {MAX_TEXT} bytes"));
        }
    }
    let cap = KeyCapDoc {
        max_keys: raw.max_keys,
        on_full: raw.on_full,
        expose: raw.expose,
    };
    cap.validate().map_err(|e| format!("{what}: {e}"))?;
    Ok(Rule::Limited {
        limit: String::new(),
        spec: RuleSpec {
            rate,
            consistency: raw.consistency,
            unit,
            cap,
        },
        display_name: raw.name,
        replaces: raw.replaces.into_iter().map(|r| r.name).collect(),
    })
}

impl RawNode {
    /// Validates this node and its subtree; `path` is its document path.
    fn compile(self, path: &str) -> Result<(String, Option<String>, Node), PathError> {
        let err = |reason: String| (path.to_string(), reason);
        if self.key.is_empty() || self.key.len() > MAX_TEXT {
            return Err(err(format!("descriptor key must be 1 to {MAX_TEXT} bytes")));
        }
        if let Some(v) = &self.value {
            if v.len() > MAX_TEXT {
                return Err(err(format!(
                    "descriptor {:?}: value longer than {MAX_TEXT} bytes",
                    self.key
                )));
            }
        }
        let rule = match self.rate_limit {
            Some(r) => {
                Some(compile_rule(&self.key, r).map_err(|e| (format!("{path}.rate_limit"), e))?)
            }
            None => None,
        };
        let children = Level::compile(self.descriptors, &format!("{path}.descriptors"))?;
        Ok((
            self.key,
            self.value,
            Node {
                rule,
                shadow_mode: self.shadow_mode,
                detailed_metric: self.detailed_metric,
                children,
            },
        ))
    }
}

impl Level {
    /// Validates a list of descriptors at document path `path`.
    pub(super) fn compile(nodes: Vec<RawNode>, path: &str) -> Result<Level, PathError> {
        let mut level = Level::default();
        for (i, raw) in nodes.into_iter().enumerate() {
            let item = format!("{path}[{i}]");
            let (key, value, node) = raw.compile(&item)?;
            let n = Entry { key, value, node };
            let duplicate = match n.value {
                Some(value) if value.ends_with('*') => {
                    let prefix = value.trim_end_matches('*').to_string();
                    let dup = level
                        .prefix
                        .iter()
                        .any(|(k, p, _)| *k == n.key && *p == prefix);
                    if !dup {
                        level.prefix.push((n.key.clone(), prefix, n.node));
                    }
                    dup.then(|| format!("{}={value}", n.key))
                }
                Some(value) => {
                    let id = format!("{}={value}", n.key);
                    let dup = level.exact.insert((n.key, value), n.node).is_some();
                    dup.then_some(id)
                }
                None => {
                    let id = n.key.clone();
                    let dup = level.key_only.insert(n.key, n.node).is_some();
                    dup.then_some(id)
                }
            };
            if let Some(id) = duplicate {
                return Err((item, format!("duplicate descriptor {id} at the same level")));
            }
        }
        Ok(level)
    }

    /// The child reached by `key=value` (exact, then prefix wildcard, then key only), the
    /// path segment it matched as, and how.
    fn step(&self, key: &str, value: &str) -> Option<(String, &Node, MatchKind)> {
        // BTreeMap lookups with a borrowed tuple need owned keys; descriptors are small.
        if let Some(n) = self.exact.get(&(key.to_string(), value.to_string())) {
            return Some((format!("{key}={value}"), n, MatchKind::Exact));
        }
        if let Some((_, p, n)) = self
            .prefix
            .iter()
            .find(|(k, p, _)| k == key && value.starts_with(p.as_str()))
        {
            return Some((format!("{key}={p}*"), n, MatchKind::Prefix));
        }
        self.key_only
            .get(key)
            .map(|n| (key.to_string(), n, MatchKind::KeyOnly))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty() && self.key_only.is_empty()
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = (String, &mut Node)> {
        let exact = self
            .exact
            .iter_mut()
            .map(|((k, v), n)| (format!("{k}={v}"), n));
        let prefix = self
            .prefix
            .iter_mut()
            .map(|(k, p, n)| (format!("{k}={p}*"), n));
        let key_only = self.key_only.iter_mut().map(|(k, n)| (k.clone(), n));
        exact.chain(prefix).chain(key_only)
    }
}

/// A compiled node with the key and value it is reached by.
struct Entry {
    key: String,
    value: Option<String>,
    node: Node,
}

/// How a request entry matched a descriptor of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// `key` and `value` both equal.
    Exact,
    /// `value: prefix*` and the entry's value starts with the prefix.
    Prefix,
    /// A descriptor with only `key`: one counter per distinct value.
    KeyOnly,
}

impl MatchKind {
    /// For explanations (`quorate policy test`).
    pub fn describe(self) -> &'static str {
        match self {
            MatchKind::Exact => "key and value matched exactly",
            MatchKind::Prefix => "value matched a `*` wildcard prefix",
            MatchKind::KeyOnly => "key-only descriptor: one counter per distinct value",
        }
    }
}

/// The result of matching one request descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched<'a> {
    pub node: &'a Node,
    /// The path in the tree that matched, e.g. `database=users/collection`.
    pub path: String,
    /// How the last entry matched.
    pub last: MatchKind,
}

impl Domain {
    /// Walks the tree with a request descriptor's entries (envoyproxy/ratelimit's rules).
    /// `None`: no rule applies.
    pub fn find(&self, entries: &[(String, String)]) -> Option<Matched<'_>> {
        let mut level = &self.root;
        let mut path = Vec::with_capacity(entries.len());
        for (i, (key, value)) in entries.iter().enumerate() {
            let (segment, node, how) = level.step(key, value)?;
            path.push(segment);
            if i + 1 == entries.len() {
                return node.rule.as_ref().map(|_| Matched {
                    node,
                    path: path.join("/"),
                    last: how,
                });
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }

    /// Names every limited rule by its path (`domain/key=value/key`) and registers it as a
    /// policy limit so the rest of quorate addresses it like any named limit.
    pub(super) fn register(
        &mut self,
        limits: &mut BTreeMap<String, LimitDef>,
    ) -> Result<(), String> {
        fn walk(
            prefix: &str,
            level: &mut Level,
            limits: &mut BTreeMap<String, LimitDef>,
        ) -> Result<(), String> {
            for (segment, node) in level.nodes_mut() {
                let path = format!("{prefix}/{segment}");
                if let Some(Rule::Limited {
                    limit,
                    spec,
                    display_name,
                    ..
                }) = &mut node.rule
                {
                    *limit = path.clone();
                    let name = display_name.clone().unwrap_or_else(|| path.clone());
                    if limits.contains_key(&path) {
                        return Err(format!("limit {path:?} is defined twice"));
                    }
                    limits.insert(
                        path.clone(),
                        LimitDef {
                            name: path.clone(),
                            display_name: Some(name),
                            shadow_mode: node.shadow_mode,
                            ..LimitDef::new(spec.rate, spec.consistency, spec.cap, false)
                        },
                    );
                }
                walk(&path, &mut node.children, limits)?;
            }
            Ok(())
        }
        let name = self.name.clone();
        walk(&name, &mut self.root, limits)
    }
}

/// A domain as written: envoyproxy/ratelimit's config file shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomain {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<RawNode>,
}

impl RawDomain {
    /// Validates the domain at document path `path` (`""` for a whole file).
    pub(super) fn compile(self, path: &str) -> Result<Domain, PathError> {
        if self.domain.is_empty() || self.domain.len() > MAX_TEXT {
            return Err((
                path.to_string(),
                format!("domain must be 1 to {MAX_TEXT} bytes"),
            ));
        }
        let descriptors = if path.is_empty() {
            "descriptors".to_string()
        } else {
            format!("{path}.descriptors")
        };
        Ok(Domain {
            root: Level::compile(self.descriptors, &descriptors)?,
            name: self.domain,
            conditional: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(yaml: &str) -> Domain {
        let raw: RawDomain = serde_yaml_ng::from_str(yaml).unwrap();
        let mut d = raw.compile("").unwrap();
        d.register(&mut BTreeMap::new()).unwrap();
        d
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn limit_of(d: &Domain, pairs: &[(&str, &str)]) -> Option<String> {
        d.find(&entries(pairs)).and_then(|m| match &m.node.rule {
            Some(Rule::Limited { limit, .. }) => Some(limit.clone()),
            Some(Rule::Unlimited) => Some("unlimited".into()),
            Some(Rule::Blocked { .. }) => Some("blocked".into()),
            None => None,
        })
    }

    const TREE: &str = r#"
domain: d
descriptors:
  - key: k1
    value: v1
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: k1
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: k2
    descriptors:
      - key: k3
        rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    value: /api/*
    rate_limit: {unit: hour, requests_per_unit: 4}
  - key: free
    rate_limit: {unlimited: true}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
"#;

    #[test]
    fn key_and_value_beat_key_only() {
        let d = domain(TREE);
        assert_eq!(limit_of(&d, &[("k1", "v1")]).as_deref(), Some("d/k1=v1"));
        assert_eq!(limit_of(&d, &[("k1", "other")]).as_deref(), Some("d/k1"));
    }

    #[test]
    fn depth_must_match() {
        let d = domain(TREE);
        assert_eq!(
            limit_of(&d, &[("k2", "x")]),
            None,
            "k2 has no rate_limit itself"
        );
        assert_eq!(
            limit_of(&d, &[("k2", "x"), ("k3", "y")]).as_deref(),
            Some("d/k2/k3")
        );
        assert_eq!(
            limit_of(&d, &[("k1", "v1"), ("k3", "y")]),
            None,
            "deeper than the tree"
        );
        assert_eq!(limit_of(&d, &[("nope", "x")]), None);
    }

    #[test]
    fn wildcard_values_match_prefixes() {
        let d = domain(TREE);
        assert_eq!(
            limit_of(&d, &[("path", "/api/users")]).as_deref(),
            Some("d/path=/api/*")
        );
        assert_eq!(limit_of(&d, &[("path", "/static/x")]), None);
    }

    #[test]
    fn unlimited_and_blocked() {
        let d = domain(TREE);
        assert_eq!(limit_of(&d, &[("free", "x")]).as_deref(), Some("unlimited"));
        assert_eq!(
            limit_of(&d, &[("blocked", "x")]).as_deref(),
            Some("blocked")
        );
    }

    #[test]
    fn errors_carry_the_path_of_the_bad_descriptor() {
        let yaml = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 1}\n  - key: b\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n";
        let raw: RawDomain = serde_yaml_ng::from_str(yaml).unwrap();
        let (path, reason) = raw.compile("").unwrap_err();
        assert_eq!(path, "descriptors[1].rate_limit");
        assert!(reason.contains("fortnight"), "{reason}");
    }

    #[test]
    fn duplicates_at_one_level_are_refused() {
        let yaml = "domain: d\ndescriptors:\n  - key: a\n    value: x\n  - key: a\n    value: x\n";
        let raw: RawDomain = serde_yaml_ng::from_str(yaml).unwrap();
        let (path, reason) = raw.compile("").unwrap_err();
        assert_eq!(path, "descriptors[1]");
        assert!(reason.contains("duplicate descriptor a=x"), "{reason}");
    }

    #[test]
    fn windows_are_reported_in_envoy_units() {
        assert_eq!(
            RateUnit::for_window(60 * SECOND),
            RateUnit {
                base: EnvoyUnit::Minute,
                multiplier: 1
            }
        );
        assert_eq!(
            RateUnit::for_window(10 * SECOND),
            RateUnit {
                base: EnvoyUnit::Second,
                multiplier: 10
            }
        );
        assert_eq!(
            RateUnit::for_window(900 * SECOND),
            RateUnit {
                base: EnvoyUnit::Minute,
                multiplier: 15
            }
        );
    }
}
