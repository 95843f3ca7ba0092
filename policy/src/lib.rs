//! The policy: what quorate enforces, as one versioned document replicated through Raft.
//!
//! A policy is submitted as text ([`PolicySource`]), parsed and validated by
//! [`PolicySet::compile`], and only then proposed to the cluster. Every replica compiles the
//! same text again when the entry applies, so all of them hold the same [`PolicySet`].
//! A document that fails validation is refused with its line and the reason; the live
//! policy is untouched.
//!
//! A policy is written in one of three formats ([`PolicyFormat`]): quorate's own YAML
//! (named limits and Envoy descriptor trees), envoyproxy/ratelimit's config files
//! ([`envoy`]) and Limitador's limits file ([`limitador`]). [`load::load_path`] reads a file
//! or a directory and detects the format.

pub mod authz;
mod conditions;
mod descriptors;
mod duration;
mod envoy;
mod limitador;
mod limits;
mod lines;
pub mod load;
pub mod metadata;
mod plan;
pub mod rlqs;
mod rule;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use conditions::{CompareOp, Comparison, ConditionalLimit, ConditionalRule, EntryRef};
pub use descriptors::{wildcard_matches, Domain, EnvoyUnit, RateUnit, Rule, RuleSpec};
pub use duration::parse_window;
pub(crate) use limits::policy_rate;
pub use limits::{assign_key_caps, Consistency, LimitDef, LimitOptions};
pub use plan::{plan_rls, redacted_value, DescriptorPlan, LimitedPlan, RequestDescriptor};

/// The default cap on live counters across the cluster. Part of the policy (not a node
/// flag) because every replica must refuse new keys at exactly the same point.
pub const DEFAULT_MAX_COUNTERS: usize = 1_000_000;

/// The built-in example policy `quorate serve` starts with when given no `--policy`.
pub const EXAMPLE_POLICY: &str = include_str!("example.yaml");

/// The format a policy document is written in.
///
/// New formats are appended: the variant index is part of snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyFormat {
    /// quorate's own YAML.
    Quorate,
    /// envoyproxy/ratelimit's config: one `domain:` + `descriptors:` document per domain
    /// (several documents, `---` separated, for a directory of files).
    EnvoyRatelimit,
    /// Limitador's limits file: a list of `{namespace, max_value, seconds, conditions,
    /// variables}`.
    Limitador,
}

impl PolicyFormat {
    /// Every format, in the order error messages list them.
    pub const ALL: [PolicyFormat; 3] = [
        PolicyFormat::Quorate,
        PolicyFormat::EnvoyRatelimit,
        PolicyFormat::Limitador,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyFormat::Quorate => "quorate",
            PolicyFormat::EnvoyRatelimit => "envoy_ratelimit",
            PolicyFormat::Limitador => "limitador",
        }
    }

    pub fn parse(name: &str) -> Result<PolicyFormat, PolicyError> {
        PolicyFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == name)
            .ok_or_else(|| {
                PolicyError::new(
                    None,
                    format!(
                        "unknown policy format {name:?} (known: quorate, envoy_ratelimit, limitador)"
                    ),
                )
            })
    }
}

/// A policy document as submitted: its format and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySource {
    pub format: PolicyFormat,
    pub text: String,
}

/// Why a policy document was refused: the file (for a policy assembled from a directory),
/// the line (1-based, within that file, when known) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct PolicyError {
    pub file: Option<String>,
    pub line: Option<usize>,
    pub reason: String,
}

impl PolicyError {
    pub fn new(line: Option<usize>, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            file: None,
            line,
            reason: reason.into(),
        }
    }

    /// The same error, located in `file`.
    pub fn in_file(mut self, file: impl Into<String>) -> PolicyError {
        self.file = Some(file.into());
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "file {file}, line {line}: {}", self.reason),
            (Some(file), None) => write!(f, "file {file}: {}", self.reason),
            (None, Some(line)) => write!(f, "line {line}: {}", self.reason),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

/// A compiled, validated policy: what the state machine and the decision path read.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySet {
    /// Named limits that hits refer to (including every limited descriptor of every
    /// domain, named by its path).
    pub limits: BTreeMap<String, LimitDef>,
    /// Envoy RLS domains and their descriptor trees.
    pub domains: BTreeMap<String, Domain>,
    /// Which rate-limit headers to send.
    pub headers: HeaderSettings,
    /// The most counters the cluster keeps; new keys beyond it are refused.
    pub max_counters: usize,
    /// The key cap of a limit this policy does not have (a hit resolved under an older
    /// policy): an equal share, `refuse`. See [`limits::assign_key_caps`].
    pub retired_key_cap: quorate_algorithms::KeyCap,
    /// Identities, consumers, routes and their defaults (ext_authz and forward-auth).
    pub authz: crate::authz::AuthzPolicy,
    /// How `strict` limits size their durable reservations.
    pub reservations: ReservationSettings,
    /// Envoy Rate Limit Quota Service buckets (`rlqs:`).
    pub rlqs: crate::rlqs::RlqsPolicy,
}

/// How the leader sizes the reservations `strict` limits are answered from.
///
/// A reservation covers the key's recent demand over `horizon`, but never more than
/// `fraction` of the headroom left after the hit that asked for it, so it shrinks to
/// exactly that hit (a commit per hit) near the limit. What a leader crash can cost is
/// the unused part of the reservations it held: per key at most `fraction` of the limit
/// (and, for a token bucket, the refill of one reservation's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationSettings {
    /// Largest share of a key's remaining headroom one reservation takes, in percent
    /// (0–100; 0 commits every hit on its own, like `exact`). Default 10.
    #[serde(default = "default_fraction_percent")]
    pub fraction_percent: u8,
    /// How much of the key's recent demand one reservation covers, e.g. `1s`. Also the
    /// longest a token-bucket reservation stays usable. Default 1s.
    #[serde(default = "default_horizon", deserialize_with = "deserialize_window")]
    pub horizon: quorate_algorithms::Nanos,
}

fn default_fraction_percent() -> u8 {
    10
}

fn default_horizon() -> quorate_algorithms::Nanos {
    quorate_algorithms::SECOND
}

fn deserialize_window<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<quorate_algorithms::Nanos, D::Error> {
    let text = String::deserialize(d)?;
    parse_window(&text).map_err(serde::de::Error::custom)
}

impl Default for ReservationSettings {
    fn default() -> Self {
        ReservationSettings {
            fraction_percent: default_fraction_percent(),
            horizon: default_horizon(),
        }
    }
}

impl Default for PolicySet {
    /// The empty policy a fresh cluster holds before any policy is applied.
    fn default() -> Self {
        PolicySet {
            limits: BTreeMap::new(),
            domains: BTreeMap::new(),
            headers: HeaderSettings::default(),
            max_counters: DEFAULT_MAX_COUNTERS,
            retired_key_cap: quorate_algorithms::KeyCap {
                max_keys: DEFAULT_MAX_COUNTERS,
                on_full: quorate_algorithms::OnFull::Refuse,
            },
            authz: Default::default(),
            reservations: ReservationSettings::default(),
            rlqs: Default::default(),
        }
    }
}

/// Which rate-limit response headers quorate adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSettings {
    /// IETF `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
    #[serde(default = "yes")]
    pub ietf: bool,
    /// Legacy `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    #[serde(default)]
    pub legacy: bool,
}

fn yes() -> bool {
    true
}

impl Default for HeaderSettings {
    fn default() -> Self {
        HeaderSettings {
            ietf: true,
            legacy: false,
        }
    }
}

/// The top-level YAML document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    limits: Vec<limits::LimitDoc>,
    #[serde(default)]
    domains: Vec<descriptors::RawDomain>,
    #[serde(default)]
    headers: HeaderSettings,
    max_counters: Option<usize>,
    #[serde(default)]
    identities: Vec<crate::authz::RawIdentity>,
    #[serde(default)]
    consumers: Vec<crate::authz::RawConsumer>,
    #[serde(default)]
    routes: Vec<crate::authz::RawRoute>,
    #[serde(default)]
    defaults: crate::authz::RawDefaults,
    #[serde(default)]
    reservations: ReservationSettings,
    rlqs: Option<crate::rlqs::RawRlqs>,
}

impl PolicySet {
    /// Parses and validates a document. Deterministic: the same text always compiles to
    /// the same policy or the same error.
    pub fn compile(source: &PolicySource) -> Result<PolicySet, PolicyError> {
        let mut set = match source.format {
            PolicyFormat::Quorate => compile_quorate(&source.text),
            PolicyFormat::EnvoyRatelimit => envoy::compile(&source.text),
            PolicyFormat::Limitador => limitador::compile(&source.text),
        }?;
        set.retired_key_cap = assign_key_caps(&mut set.limits, set.max_counters)
            .map_err(|reason| PolicyError::new(None, reason))?;
        Ok(set)
    }

    /// Looks up a named limit.
    pub fn limit(&self, name: &str) -> Option<&LimitDef> {
        self.limits.get(name)
    }

    /// Where this policy knowingly behaves differently from the format it was written in
    /// (printed by `quorate policy test`; the policy is valid regardless).
    pub fn warnings(&self) -> Vec<String> {
        self.domains.values().flat_map(Domain::warnings).collect()
    }

    /// Looks up a limit quorate.v1 clients may address: `None` for limits that belong to
    /// authorization routes and consumers or to RLS descriptor rules, unless the policy
    /// opts them in with `expose: true` (indistinguishable from an unknown limit, so
    /// their existence is not revealed either).
    pub fn exposed_limit(&self, name: &str) -> Option<&LimitDef> {
        self.limits.get(name).filter(|l| l.exposed)
    }

    /// Whether an RLS request to `domain` is one all-or-nothing decision (see
    /// [`Domain::all_or_nothing`]); true for a domain the policy does not have.
    pub fn rls_all_or_nothing(&self, domain: &str) -> bool {
        self.domains.get(domain).is_none_or(|d| d.all_or_nothing)
    }

    /// The key cap counters of limit `name` live under.
    pub fn key_cap(&self, name: &str) -> quorate_algorithms::KeyCap {
        self.limits
            .get(name)
            .map_or(self.retired_key_cap, |l| l.key_cap)
    }

    /// The share of a key's headroom one `strict` reservation of limit `name` may take,
    /// in percent: the limit's `reservation_percent`, else the policy-wide
    /// `reservations.fraction_percent`.
    pub fn reservation_percent(&self, name: &str) -> u8 {
        self.limits
            .get(name)
            .and_then(|l| l.reservation_percent)
            .unwrap_or(self.reservations.fraction_percent)
    }
}

fn compile_quorate(text: &str) -> Result<PolicySet, PolicyError> {
    let doc: Document = serde_yaml_ng::from_str(text)
        .map_err(|e| PolicyError::new(lines::yaml_error_line(text, &e), e.to_string()))?;
    let lines = lines::LineMap::build(text);
    let at = |path: &str, reason: String| {
        PolicyError::new(lines.line(path), format!("{path}: {reason}"))
    };
    let mut limits = BTreeMap::new();
    for (i, raw) in doc.limits.into_iter().enumerate() {
        let path = format!("limits[{i}]");
        let def = raw.compile().map_err(|reason| at(&path, reason))?;
        if limits.contains_key(&def.name) {
            return Err(at(&path, format!("duplicate limit name {:?}", def.name)));
        }
        limits.insert(def.name.clone(), def);
    }
    let mut domains = BTreeMap::new();
    for (i, raw) in doc.domains.into_iter().enumerate() {
        let path = format!("domains[{i}]");
        let mut domain = raw.compile(&path).map_err(|(p, reason)| at(&p, reason))?;
        if domains.contains_key(&domain.name) {
            return Err(at(&path, format!("duplicate domain {:?}", domain.name)));
        }
        domain
            .register(&mut limits)
            .map_err(|reason| at(&path, reason))?;
        domains.insert(domain.name.clone(), domain);
    }
    let max_counters = doc.max_counters.unwrap_or(DEFAULT_MAX_COUNTERS);
    if max_counters == 0 {
        return Err(at("max_counters", "must be at least 1".into()));
    }
    let raw_authz = crate::authz::RawAuthz {
        identities: doc.identities,
        consumers: doc.consumers,
        routes: doc.routes,
        defaults: doc.defaults,
    };
    if doc.reservations.fraction_percent > 100 {
        return Err(at(
            "reservations",
            format!(
                "fraction_percent must be 0 to 100, got {}",
                doc.reservations.fraction_percent
            ),
        ));
    }
    let authz = crate::authz::compile(raw_authz, &mut limits, &|p| lines.line(p))?;
    let rlqs = match doc.rlqs {
        Some(raw) => raw.compile().map_err(|(p, reason)| at(&p, reason))?,
        None => Default::default(),
    };
    Ok(PolicySet {
        limits,
        domains,
        headers: doc.headers,
        max_counters,
        authz,
        reservations: doc.reservations,
        rlqs,
        ..PolicySet::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::compile(&PolicySource {
            format: PolicyFormat::Quorate,
            text: text.to_string(),
        })
    }

    #[test]
    fn example_policy_compiles() {
        let policy = compile(EXAMPLE_POLICY).unwrap();
        assert!(!policy.limits.is_empty());
    }

    #[test]
    fn error_names_the_line_of_the_bad_limit() {
        let text = "limits:\n  - name: a\n    limit: 10\n    window: 1s\n  - name: b\n    limit: 0\n    window: 1s\n";
        let err = compile(text).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.reason.contains("limit"), "{err}");
        assert!(err.reason.contains("\"b\""), "{err}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = compile("limits:\n  - name: a\n   bad: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = "limits:\n  - name: a\n    limit: 1\n    window: 1s\n  - name: a\n    limit: 2\n    window: 1s\n";
        let err = compile(text).unwrap_err();
        assert!(err.reason.contains("duplicate"), "{err}");
        assert_eq!(err.line, Some(5));
    }

    #[test]
    fn nested_descriptor_errors_name_their_line() {
        let text = "domains:\n  - domain: d\n    descriptors:\n      - key: a\n        descriptors:\n          - key: b\n            rate_limit: {unit: fortnight, requests_per_unit: 1}\n";
        let err = compile(text).unwrap_err();
        assert_eq!(err.line, Some(7), "{err}");
        assert!(
            err.reason
                .starts_with("domains[0].descriptors[0].descriptors[0].rate_limit"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = compile("limitz: []\n").unwrap_err();
        assert!(err.reason.contains("limitz"), "{err}");
    }

    #[test]
    fn limits_without_max_keys_share_what_the_explicit_ones_leave() {
        let policy = compile(
            "max_counters: 100\nlimits:\n  - {name: a, limit: 1, window: 1s, max_keys: 40, on_full: evict_idlest}\n  - {name: b, limit: 1, window: 1s}\n  - {name: c, limit: 1, window: 1s}\n",
        )
        .unwrap();
        let cap = |name: &str| policy.key_cap(name);
        assert_eq!(cap("a").max_keys, 40);
        assert_eq!(cap("a").on_full, quorate_algorithms::OnFull::EvictIdlest);
        assert_eq!(cap("b").max_keys, 30);
        assert_eq!(cap("c").on_full, quorate_algorithms::OnFull::Refuse);
        assert_eq!(cap("retired").max_keys, 30);
    }

    #[test]
    fn a_limit_can_size_its_reservations_apart_from_the_policy() {
        let set = compile(
            "reservations: {fraction_percent: 20}\nlimits:\n  - {name: a, limit: 10, window: 1s, reservation_percent: 0}\n  - {name: b, limit: 10, window: 1s}\ndomains:\n  - domain: d\n    descriptors:\n      - {key: k, rate_limit: {unit: second, requests_per_unit: 5, reservation_percent: 50}}\n",
        )
        .unwrap();
        assert_eq!(set.reservation_percent("a"), 0);
        assert_eq!(set.reservation_percent("b"), 20);
        assert_eq!(set.reservation_percent("d/k"), 50);
        // A limit the policy no longer has takes the policy-wide share.
        assert_eq!(set.reservation_percent("gone"), 20);
        let bad = compile(
            "limits:\n  - {name: a, limit: 10, window: 1s}\n  - {name: b, limit: 10, window: 1s, reservation_percent: 101}\n",
        )
        .unwrap_err();
        assert_eq!(bad.line, Some(3), "{bad}");
        assert!(
            bad.reason.contains("reservation_percent must be 0 to 100"),
            "{bad}"
        );
    }

    #[test]
    fn key_caps_that_cannot_fit_the_store_are_refused() {
        let over = compile(
            "max_counters: 10\nlimits:\n  - {name: a, limit: 1, window: 1s, max_keys: 6}\n  - {name: b, limit: 1, window: 1s, max_keys: 6}\n",
        )
        .unwrap_err();
        assert!(over.reason.contains("add up to 12"), "{over}");
        let none_left = compile(
            "max_counters: 10\nlimits:\n  - {name: a, limit: 1, window: 1s, max_keys: 10}\n  - {name: b, limit: 1, window: 1s}\n",
        )
        .unwrap_err();
        assert!(none_left.reason.contains("leaves no keys"), "{none_left}");
        let zero =
            compile("limits:\n  - {name: a, limit: 1, window: 1s, max_keys: 0}\n").unwrap_err();
        assert_eq!(zero.line, Some(2), "{zero}");
        let bad =
            compile("limits:\n  - {name: a, limit: 1, window: 1s, on_full: drop}\n").unwrap_err();
        assert!(
            bad.reason.contains("on_full") || bad.reason.contains("drop"),
            "{bad}"
        );
    }

    #[test]
    fn only_quorate_v1_limits_and_opted_in_ones_are_exposed() {
        let policy = compile(
            r#"
limits:
  - {name: mine, limit: 1, window: 1s}
  - {name: used, limit: 1, window: 1s}
  - {name: used_exposed, limit: 1, window: 1s, expose: true}
  - {name: hidden, limit: 1, window: 1s, expose: false}
domains:
  - domain: d
    descriptors:
      - key: k
        rate_limit: {unit: second, requests_per_unit: 1}
      - key: e
        rate_limit: {unit: second, requests_per_unit: 1, expose: true}
identities:
  - {name: anon, anonymous: {consumer: x}}
consumers:
  - id: alice
    limits: [{name: daily, limit: 1, window: day}]
routes:
  - name: r
    match: {path_prefix: /}
    identities: [anon]
    limits:
      - {name: inline, limit: 1, window: 1s}
      - {name: inline_exposed, limit: 1, window: 1s, expose: true}
      - {use: used}
      - {use: used_exposed}
"#,
        )
        .unwrap();
        let exposed: Vec<&str> = policy
            .limits
            .keys()
            .filter(|name| policy.exposed_limit(name).is_some())
            .map(String::as_str)
            .collect();
        assert_eq!(
            exposed,
            ["d/e", "mine", "route/r/inline_exposed", "used_exposed"]
        );
        assert!(policy.limit("consumer/alice/daily").is_some());

        let limitador = PolicySet::compile(&PolicySource {
            format: PolicyFormat::Limitador,
            text: "- {namespace: n, max_value: 1, seconds: 1, conditions: [], variables: [u]}\n"
                .into(),
        })
        .unwrap();
        assert!(limitador.limits.values().all(|l| !l.exposed));
    }

    #[test]
    fn a_second_yaml_document_is_refused_with_its_line() {
        let err = compile("limits: []\n---\nlimits: []\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        // Found by the fuzz test: an indented first line makes the parser see two
        // documents without saying where; line 3 is where the second one starts.
        let err = compile("  limits:\n# c\nmax_counters: 5\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }
}
