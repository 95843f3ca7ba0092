//! Envoy descriptor trees: envoyproxy/ratelimit's configuration model, with our extras.
//!
//! A domain holds a tree of descriptors. Each request descriptor (a list of `key=value`
//! entries) walks the tree one entry per level, exactly as envoyproxy/ratelimit does:
//! - at each level `key` + `value` is tried first, then the `value`s containing `*` in
//!   configuration order (each `*` matches zero or more characters, anywhere and any
//!   number of times; the first that matches wins), then `key` alone (a key without value:
//!   one counter per distinct value);
//! - a limit applies only if the walk reaches the descriptor's last entry on a node that
//!   has a `rate_limit` (depth must match);
//! - a node without `rate_limit` is unlimited, as is `rate_limit: {unlimited: true}`.
//!
//! A wildcard matched with `share_threshold: true` counts every matching value in one
//! counter (the pattern stands for the value in the counter key); without it each value
//! has its own. `value_to_metric`, `detailed_metric`, `metadata` and `quota_mode` are
//! carried to the plan (see [`super::plan`]).
//!
//! Our extras on `rate_limit`: `algorithm`, `window` (N×unit windows such as `10s`),
//! `burst`, `precision` (sliding window sub-windows) and `consistency`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metadata::{Metadata, MetadataValue};

use quorate_algorithms::{Algorithm, OnFull, SECOND};
use serde::Deserialize;

use super::conditions::ConditionalLimit;
use super::limits::{policy_rate, Consistency, LimitDef, LimitOptions};
use super::parse_window;
pub use super::rule::{EnvoyUnit, RateUnit, RuleSpec};

/// One domain: its descriptor tree and its conditional limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub name: String,
    pub root: Level,
    /// Limitador-style limits (conditions + variables over the whole request), in policy
    /// order; see [`super::conditions`].
    pub conditional: Vec<ConditionalLimit>,
    /// `all_or_nothing:` (default true): a request's descriptors are one decision — an
    /// OVER_LIMIT request consumes nothing from any of its limits. `false` keeps
    /// envoyproxy/ratelimit's default, each descriptor counted on its own even when
    /// another is over (what its `STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT=false` does).
    pub all_or_nothing: bool,
}

impl Default for Domain {
    fn default() -> Self {
        Domain {
            name: String::new(),
            root: Level::default(),
            conditional: Vec::new(),
            all_or_nothing: true,
        }
    }
}

/// The children of a node: how the next entry is matched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Level {
    exact: BTreeMap<(String, String), Node>,
    /// Values containing `*`, in configuration order: the first that matches wins.
    wildcard: Vec<Wildcard>,
    key_only: BTreeMap<String, Node>,
}

/// A descriptor whose value contains `*`.
#[derive(Debug, Clone, PartialEq)]
struct Wildcard {
    key: String,
    pattern: String,
    node: Node,
}

/// Whether `value` matches `pattern`, where each `*` matches zero or more characters
/// (envoyproxy/ratelimit's rule). Literal segments must appear in order; taking the
/// leftmost occurrence of each middle segment is enough, so this is linear-ish and
/// allocation-free.
pub fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let Some((head, last)) = pattern.rsplit_once('*') else {
        return pattern == value;
    };
    let mut segments = head.split('*');
    let first = segments.next().unwrap_or_default();
    let Some(rest) = value.strip_prefix(first) else {
        return false;
    };
    let Some(mut middle) = rest.strip_suffix(last) else {
        return false;
    };
    for segment in segments {
        match middle.find(segment) {
            Some(at) => middle = &middle[at + segment.len()..],
            None => return false,
        }
    }
    true
}

/// One descriptor in the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub rule: Option<Rule>,
    pub shadow_mode: bool,
    pub detailed_metric: bool,
    /// Metrics name this level by the request's value (envoyproxy/ratelimit's
    /// `value_to_metric`).
    pub value_to_metric: bool,
    /// All values matching this wildcard share one counter.
    pub share_threshold: bool,
    /// Over the limit here only denies when every quota-mode descriptor of the request is
    /// over (envoyproxy/ratelimit's `quota_mode`).
    pub quota_mode: bool,
    /// Returned to Envoy as dynamic metadata when this rule matches and passes.
    pub metadata: Option<Arc<Metadata>>,
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

// === YAML ===

/// A `rate_limit` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<String>,
    requests_per_unit: Option<u64>,
    #[serde(default)]
    unlimited: bool,
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<RawReplace>,
    algorithm: Option<Algorithm>,
    window: Option<String>,
    burst: Option<u64>,
    precision: Option<u64>,
    #[serde(default)]
    consistency: Consistency,
    max_keys: Option<usize>,
    #[serde(default)]
    on_full: OnFull,
    expose: Option<bool>,
    reservation_percent: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: Option<String>,
}

/// A descriptor as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    #[serde(default)]
    value_to_metric: bool,
    #[serde(default)]
    share_threshold: bool,
    #[serde(default)]
    quota_mode: bool,
    metadata: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    descriptors: Vec<RawNode>,
}

/// A validation error: the document path of the offending node and the reason.
pub(super) type PathError = (String, String);

/// Longest key or value accepted in a policy.
const MAX_TEXT: usize = 256;

fn compile_rule(key: &str, raw: RawRateLimit) -> Result<Rule, String> {
    let what = format!("rate_limit of descriptor {key:?}");
    let replaces = replaces_of(&what, raw.name.as_deref(), raw.replaces)?;
    if raw.unlimited {
        if raw.requests_per_unit.is_some() || raw.unit.is_some() || raw.window.is_some() {
            return Err(format!(
                "{what}: `unlimited: true` cannot also set unit, window or requests_per_unit"
            ));
        }
        if !replaces.is_empty() {
            return Err(format!(
                "{what}: quorate does not apply `replaces` from an `unlimited: true` rule; \
                 give the replacing rule a limit"
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
        if !replaces.is_empty() {
            return Err(format!(
                "{what}: quorate does not apply `replaces` from a `requests_per_unit: 0` rule"
            ));
        }
        return Ok(Rule::Blocked { unit });
    }
    let rate = policy_rate(raw.algorithm, requests, window, raw.burst, raw.precision)
        .map_err(|e| format!("{what}: {e}"))?;
    if let Some(name) = &raw.name {
        if name.is_empty() || name.len() > MAX_TEXT {
            return Err(format!("{what}: name must be 1 to {MAX_TEXT} bytes"));
        }
    }
    let options = LimitOptions {
        max_keys: raw.max_keys,
        on_full: raw.on_full,
        expose: raw.expose,
        reservation_percent: raw.reservation_percent,
    };
    options.validate().map_err(|e| format!("{what}: {e}"))?;
    Ok(Rule::Limited {
        limit: String::new(),
        spec: RuleSpec {
            rate,
            consistency: raw.consistency,
            unit,
            options,
        },
        display_name: raw.name,
        replaces,
    })
}

/// The names a rule replaces, refused as envoyproxy/ratelimit refuses them (same words).
fn replaces_of(
    what: &str,
    name: Option<&str>,
    replaces: Vec<RawReplace>,
) -> Result<Vec<String>, String> {
    replaces
        .into_iter()
        .map(|r| match r.name {
            None => Err(format!("{what}: should not have an empty replaces entry")),
            Some(n) if n.is_empty() => {
                Err(format!("{what}: should not have an empty replaces entry"))
            }
            Some(n) if Some(n.as_str()) == name => Err(format!(
                "{what}: replaces should not contain name of same descriptor ({n:?})"
            )),
            Some(n) => Ok(n),
        })
        .collect()
}

/// Descriptor `metadata:` as Envoy receives it (a protobuf Struct). Keys are strings or
/// scalars (written as text, as envoyproxy/ratelimit does); values are any YAML but tags.
fn metadata_struct(yaml: serde_yaml_ng::Value) -> Result<Metadata, String> {
    fn key_text(k: &serde_yaml_ng::Value) -> Result<String, String> {
        use serde_yaml_ng::Value as Y;
        match k {
            Y::String(s) => Ok(s.clone()),
            Y::Bool(b) => Ok(b.to_string()),
            Y::Number(n) => Ok(n.to_string()),
            other => Err(format!("metadata: a key must be a scalar, got {other:?}")),
        }
    }
    fn mapping(m: serde_yaml_ng::Mapping) -> Result<Metadata, String> {
        let mut fields = std::collections::HashMap::new();
        for (k, v) in m {
            fields.insert(key_text(&k)?, value(v)?);
        }
        Ok(Metadata { fields })
    }
    fn value(v: serde_yaml_ng::Value) -> Result<MetadataValue, String> {
        use serde_yaml_ng::Value as Y;
        Ok(match v {
            Y::Null => MetadataValue::Null,
            Y::Bool(b) => MetadataValue::Bool(b),
            Y::Number(n) => MetadataValue::Number(n.as_f64().unwrap_or_default()),
            Y::String(s) => MetadataValue::String(s),
            Y::Sequence(items) => {
                MetadataValue::List(items.into_iter().map(value).collect::<Result<_, _>>()?)
            }
            Y::Mapping(m) => MetadataValue::Map(mapping(m)?),
            Y::Tagged(t) => {
                return Err(format!("metadata: tagged value {} is not supported", t.tag))
            }
        })
    }
    match yaml {
        serde_yaml_ng::Value::Mapping(m) => mapping(m),
        other => Err(format!("metadata must be a mapping, got {other:?}")),
    }
}

impl RawNode {
    /// Validates this node and its subtree; `path` is its document path.
    fn compile(self, path: &str) -> Result<(String, Option<String>, Node), PathError> {
        let err = |reason: String| (path.to_string(), reason);
        if self.key.is_empty() || self.key.len() > MAX_TEXT {
            return Err(err(format!("descriptor key must be 1 to {MAX_TEXT} bytes")));
        }
        // As envoyproxy/ratelimit: an empty value is no value (a key-only descriptor).
        let value = self.value.filter(|v| !v.is_empty());
        if let Some(v) = &value {
            if v.len() > MAX_TEXT {
                return Err(err(format!(
                    "descriptor {:?}: value longer than {MAX_TEXT} bytes",
                    self.key
                )));
            }
        }
        if self.share_threshold && !value.as_deref().is_some_and(|v| v.contains('*')) {
            return Err(err(format!(
                "descriptor {:?}: share_threshold can only be used with wildcard values \
                 (containing '*')",
                self.key
            )));
        }
        let rule = match self.rate_limit {
            Some(r) => {
                Some(compile_rule(&self.key, r).map_err(|e| (format!("{path}.rate_limit"), e))?)
            }
            None => None,
        };
        if self.quota_mode && matches!(rule, Some(Rule::Blocked { .. })) {
            return Err(err(format!(
                "descriptor {:?}: quorate does not support quota_mode on a \
                 `requests_per_unit: 0` rule",
                self.key
            )));
        }
        let metadata = match self.metadata {
            None | Some(serde_yaml_ng::Value::Null) => None,
            Some(m) => Some(Arc::new(
                metadata_struct(m).map_err(|e| (format!("{path}.metadata"), e))?,
            )),
        };
        let children = Level::compile(self.descriptors, &format!("{path}.descriptors"))?;
        Ok((
            self.key,
            value,
            Node {
                rule,
                shadow_mode: self.shadow_mode,
                detailed_metric: self.detailed_metric,
                value_to_metric: self.value_to_metric,
                share_threshold: self.share_threshold,
                quota_mode: self.quota_mode,
                metadata,
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
                Some(pattern) if pattern.contains('*') => {
                    let dup = level
                        .wildcard
                        .iter()
                        .any(|w| w.key == n.key && w.pattern == pattern);
                    let id = format!("{}={pattern}", n.key);
                    if !dup {
                        level.wildcard.push(Wildcard {
                            key: n.key,
                            pattern,
                            node: n.node,
                        });
                    }
                    dup.then_some(id)
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

    /// The child reached by `key=value` (exact, then the first wildcard that matches, then
    /// key only), the path segment it matched as, and how.
    fn step(&self, key: &str, value: &str) -> Option<(String, &Node, Step<'_>)> {
        // BTreeMap lookups with a borrowed tuple need owned keys; descriptors are small.
        if let Some(n) = self.exact.get(&(key.to_string(), value.to_string())) {
            return Some((format!("{key}={value}"), n, Step::Exact));
        }
        if let Some(w) = self
            .wildcard
            .iter()
            .find(|w| w.key == key && wildcard_matches(&w.pattern, value))
        {
            return Some((
                format!("{key}={}", w.pattern),
                &w.node,
                Step::Wildcard(&w.pattern),
            ));
        }
        self.key_only
            .get(key)
            .map(|n| (key.to_string(), n, Step::KeyOnly))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.key_only.is_empty()
    }

    /// Every node of this level, with its path segment.
    fn nodes(&self) -> impl Iterator<Item = (String, &Node)> {
        let exact = self.exact.iter().map(|((k, v), n)| (format!("{k}={v}"), n));
        let wildcard = self
            .wildcard
            .iter()
            .map(|w| (format!("{}={}", w.key, w.pattern), &w.node));
        let key_only = self.key_only.iter().map(|(k, n)| (k.clone(), n));
        exact.chain(wildcard).chain(key_only)
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = (String, &mut Node)> {
        let exact = self
            .exact
            .iter_mut()
            .map(|((k, v), n)| (format!("{k}={v}"), n));
        let wildcard = self
            .wildcard
            .iter_mut()
            .map(|w| (format!("{}={}", w.key, w.pattern), &mut w.node));
        let key_only = self.key_only.iter_mut().map(|(k, n)| (k.clone(), n));
        exact.chain(wildcard).chain(key_only)
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
pub enum Step<'a> {
    /// `key` and `value` both equal.
    Exact,
    /// The entry's value matched this `*` pattern.
    Wildcard(&'a str),
    /// A descriptor with only `key`: one counter per distinct value.
    KeyOnly,
}

impl Step<'_> {
    /// For explanations (`quorate policy test`).
    pub fn describe(self) -> &'static str {
        match self {
            Step::Exact => "key and value matched exactly",
            Step::Wildcard(_) => "value matched a `*` wildcard",
            Step::KeyOnly => "key-only descriptor: one counter per distinct value",
        }
    }
}

/// The result of matching one request descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched<'a> {
    pub node: &'a Node,
    /// The path in the tree that matched, e.g. `database=users/collection`.
    pub path: String,
    /// How each entry matched, and the node it reached, in request order.
    pub steps: Vec<(Step<'a>, &'a Node)>,
}

impl Matched<'_> {
    /// How the last entry matched.
    pub fn last(&self) -> Step<'_> {
        self.steps.last().map_or(Step::KeyOnly, |(s, _)| *s)
    }
}

impl Domain {
    /// Walks the tree with a request descriptor's entries (envoyproxy/ratelimit's rules).
    /// `None`: no rule applies.
    pub fn find(&self, entries: &[(String, String)]) -> Option<Matched<'_>> {
        let mut level = &self.root;
        let mut path = Vec::with_capacity(entries.len());
        let mut steps = Vec::with_capacity(entries.len());
        for (i, (key, value)) in entries.iter().enumerate() {
            let (segment, node, how) = level.step(key, value)?;
            path.push(segment);
            steps.push((how, node));
            if i + 1 == entries.len() {
                return node.rule.as_ref().map(|_| Matched {
                    node,
                    path: path.join("/"),
                    steps,
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
                            ..LimitDef::new(spec.rate, spec.consistency, spec.options, false)
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

    /// Where quorate knowingly behaves differently from envoyproxy/ratelimit for this
    /// domain (`quorate policy test` prints these on load; see the README's migration
    /// notes). Each warning names the rule by its path.
    pub fn warnings(&self) -> Vec<String> {
        fn walk<'a>(prefix: &str, level: &'a Level, out: &mut Vec<(String, &'a Node)>) {
            for (segment, node) in level.nodes() {
                let path = format!("{prefix}/{segment}");
                walk(&path, &node.children, out);
                out.push((path, node));
            }
        }
        let mut nodes = Vec::new();
        walk(&self.name, &self.root, &mut nodes);
        let names: Vec<String> = nodes
            .iter()
            .filter_map(|(path, n)| match &n.rule {
                Some(Rule::Limited { display_name, .. }) => {
                    Some(display_name.clone().unwrap_or_else(|| path.clone()))
                }
                _ => None,
            })
            .collect();
        let mut warnings = Vec::new();
        collisions(&self.name, &self.root, &mut warnings);
        for (path, node) in &nodes {
            if let Some(Rule::Limited { replaces, .. }) = &node.rule {
                for r in replaces.iter().filter(|r| !names.contains(r)) {
                    warnings.push(format!(
                        "{path}: replaces {r:?}, which names no counted rule of domain {:?} \
                         (unlimited and requests_per_unit: 0 rules cannot be replaced in \
                         quorate); it has no effect",
                        self.name
                    ));
                }
            }
            if node.metadata.is_some() {
                warnings.push(format!(
                    "{path}: metadata is returned to Envoy as dynamic metadata whenever this \
                     rule matches and passes (envoyproxy/ratelimit needs \
                     RESPONSE_DYNAMIC_METADATA=true)"
                ));
            }
        }
        warnings
    }
}

/// Descriptors of one level that envoyproxy/ratelimit, which joins key and value as
/// `key_value` text, would take for the same one (and refuse as duplicates); quorate keeps
/// them apart.
fn collisions(prefix: &str, level: &Level, out: &mut Vec<String>) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let exact = level
        .exact
        .keys()
        .map(|(k, v)| (format!("{k}_{v}"), format!("{k}={v}")));
    let wildcard = level.wildcard.iter().map(|w| {
        (
            format!("{}_{}", w.key, w.pattern),
            format!("{}={}", w.key, w.pattern),
        )
    });
    let key_only = level.key_only.keys().map(|k| (k.clone(), k.clone()));
    for (text, segment) in exact.chain(wildcard).chain(key_only) {
        if let Some(first) = seen.get(&text) {
            out.push(format!(
                "{prefix}/{segment}: envoyproxy/ratelimit reads it and {prefix}/{first} as the \
                 same descriptor {text:?} (and refuses the config); quorate keeps them apart"
            ));
        } else {
            seen.insert(text, segment);
        }
    }
    for (segment, node) in level.nodes() {
        collisions(&format!("{prefix}/{segment}"), &node.children, out);
    }
}

/// A domain as written: envoyproxy/ratelimit's config file shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDomain {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<RawNode>,
    /// quorate's addition to the format: see [`Domain::all_or_nothing`].
    #[serde(default = "all_or_nothing_default")]
    pub all_or_nothing: bool,
}

fn all_or_nothing_default() -> bool {
    true
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
            all_or_nothing: self.all_or_nothing,
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

    #[test]
    fn all_or_nothing_defaults_on_and_can_be_switched_off() {
        assert!(domain("domain: d\n").all_or_nothing);
        assert!(domain("domain: d\nall_or_nothing: true\n").all_or_nothing);
        assert!(!domain("domain: d\nall_or_nothing: false\n").all_or_nothing);
        assert!(Domain::default().all_or_nothing, "Limitador namespaces too");
        let bad: Result<RawDomain, _> = serde_yaml_ng::from_str("domain: d\nall_or_nothing: 3\n");
        assert!(bad.is_err());
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

    /// A reference matcher: `*` matches any run of characters (by backtracking).
    fn glob(pattern: &[u8], value: &[u8]) -> bool {
        match pattern.split_first() {
            None => value.is_empty(),
            Some((b'*', rest)) => (0..=value.len()).any(|i| glob(rest, &value[i..])),
            Some((c, rest)) => value.first() == Some(c) && glob(rest, &value[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn wildcards_match_exactly_what_a_glob_matches(
            pattern in "[ab*]{0,8}",
            value in "[ab]{0,10}",
        ) {
            proptest::prop_assert_eq!(
                wildcard_matches(&pattern, &value),
                glob(pattern.as_bytes(), value.as_bytes()),
                "pattern {:?} value {:?}", pattern, value
            );
        }
    }

    #[test]
    fn wildcards_anywhere_and_the_first_in_configuration_order_wins() {
        let d = domain(
            r#"
domain: d
descriptors:
  - key: p
    value: /api/*/action
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: p
    value: /api/*
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: p
    value: /api/v1/action
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: p
    rate_limit: {unit: hour, requests_per_unit: 4}
  - key: m
    value: a*b*c
    rate_limit: {unit: hour, requests_per_unit: 5}
"#,
        );
        let of = |k, v| limit_of(&d, &[(k, v)]);
        assert_eq!(
            of("p", "/api/v1/action").as_deref(),
            Some("d/p=/api/v1/action")
        );
        assert_eq!(
            of("p", "/api/v2/action").as_deref(),
            Some("d/p=/api/*/action")
        );
        assert_eq!(of("p", "/api/v2/other").as_deref(), Some("d/p=/api/*"));
        assert_eq!(of("p", "/static").as_deref(), Some("d/p"));
        assert_eq!(of("m", "abc").as_deref(), Some("d/m=a*b*c"));
        assert_eq!(of("m", "aXbYc").as_deref(), Some("d/m=a*b*c"));
        assert_eq!(of("m", "acb"), None);
        // A wildcard is compared with the key exactly, never as `key_value` text.
        assert_eq!(of("m_a", "bc"), None);
    }

    fn refusal(yaml: &str) -> (String, String) {
        let raw: RawDomain = serde_yaml_ng::from_str(yaml).unwrap();
        raw.compile("").unwrap_err()
    }

    #[test]
    fn replaces_refusals_match_upstream() {
        let rule = |extra: &str| {
            format!(
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: hour\n      requests_per_unit: 1\n{extra}"
            )
        };
        let (path, reason) = refusal(&rule("      name: me\n      replaces: [{name: me}]\n"));
        assert_eq!(path, "descriptors[0].rate_limit");
        assert!(reason.contains("replaces should not contain name of same descriptor"));
        for empty in ["[{name: }]", "[{name: ''}]", "[{}]"] {
            let (_, reason) = refusal(&rule(&format!("      replaces: {empty}\n")));
            assert!(
                reason.contains("should not have an empty replaces entry"),
                "{empty}: {reason}"
            );
        }
        let (_, reason) = refusal(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, replaces: [{name: x}]}\n",
        );
        assert!(reason.contains("unlimited"), "{reason}");
        let (_, reason) = refusal(
            &rule("      replaces: [{name: x}]\n")
                .replace("requests_per_unit: 1", "requests_per_unit: 0"),
        );
        assert!(reason.contains("requests_per_unit: 0"), "{reason}");
        let ok: RawDomain =
            serde_yaml_ng::from_str(&rule("      replaces: [{name: other}]\n")).unwrap();
        assert!(ok.compile("").is_ok());
    }

    #[test]
    fn share_threshold_needs_a_wildcard_and_quota_mode_a_count() {
        let (path, reason) = refusal(
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
        );
        assert_eq!(path, "descriptors[0]");
        assert!(reason.contains("share_threshold can only be used with wildcard values"));
        let (_, reason) = refusal(
            "domain: d\ndescriptors:\n  - key: k\n    quota_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 0}\n",
        );
        assert!(reason.contains("quota_mode"), "{reason}");
        let (path, reason) = refusal(
            "domain: d\ndescriptors:\n  - key: k\n    metadata: [1, 2]\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        );
        assert_eq!(path, "descriptors[0].metadata");
        assert!(reason.contains("mapping"), "{reason}");
    }

    #[test]
    fn an_empty_value_is_a_key_only_descriptor() {
        let d = domain("domain: d\ndescriptors:\n  - key: k\n    value: ''\n    rate_limit: {unit: hour, requests_per_unit: 1}\n");
        assert_eq!(limit_of(&d, &[("k", "anything")]).as_deref(), Some("d/k"));
    }

    #[test]
    fn warnings_name_inert_replaces_and_returned_metadata() {
        let d = domain(
            r#"
domain: d
descriptors:
  - key: a
    rate_limit: {name: a, unit: hour, requests_per_unit: 1, replaces: [{name: b}, {name: nowhere}]}
  - key: b
    rate_limit: {name: b, unit: hour, requests_per_unit: 0}
  - key: c
    rate_limit: {unit: hour, requests_per_unit: 1}
    metadata: {tier: gold}
"#,
        );
        let w = d.warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w
            .iter()
            .any(|w| w.contains("\"b\"") && w.contains("no effect")));
        assert!(w.iter().any(|w| w.contains("\"nowhere\"")));
        assert!(w
            .iter()
            .any(|w| w.starts_with("d/c:") && w.contains("dynamic metadata")));
        assert!(domain(TREE).warnings().is_empty());
        let d = domain(
            "domain: d\ndescriptors:\n  - key: a_b\n    value: c\n  - key: a\n    value: b_c\n",
        );
        let w = d.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"a_b_c\""), "{w:?}");
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
