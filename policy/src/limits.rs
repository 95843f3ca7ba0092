//! Named limits: a rate, its algorithm and its consistency mode.

use std::collections::BTreeMap;

use quorate_algorithms::{
    Algorithm, KeyCap, Nanos, OnFull, Rate, RateError, DEFAULT_SLIDING_PRECISION,
};
use serde::{Deserialize, Serialize};

use super::parse_window;

/// How a limit trades exactness for latency across the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// The leader answers from memory within a committed reservation ("key K may have
    /// been granted up to R"): never over the limit, even across leader failure; a
    /// failover may under-grant the unused part of the reservations then held.
    #[default]
    Strict,
    /// Answer after the hit itself is committed by a quorum: exact, even across leader
    /// failure (what `strict` meant before reservations).
    Exact,
    /// The leader answers from memory at once and replicates behind; a leader crash may
    /// lose the hits of its last unreplicated batch.
    Fast,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strict => "strict",
            Consistency::Exact => "exact",
            Consistency::Fast => "fast",
        }
    }
}

/// A compiled limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDef {
    /// The policy-wide unique name hits address it by.
    pub name: String,
    pub rate: Rate,
    pub consistency: Consistency,
    /// The name shown to clients (RateLimit headers, Envoy's `current_limit.name`), when
    /// it differs from `name`.
    pub display_name: Option<String>,
    /// Decide and count, but never deny (report OK).
    pub shadow_mode: bool,
    /// The most live counters (keys) this limit keeps, as written (`max_keys`).
    pub max_keys: Option<usize>,
    /// What a new key does when the limit holds `max_keys` keys (`on_full`).
    pub on_full: OnFull,
    /// `expose` as written: whether quorate.v1 clients may address this limit.
    pub expose: Option<bool>,
    /// Whether quorate.v1 clients may address this limit (see [`LimitDef::exposed`]).
    pub exposed: bool,
    /// The cap in force, filled in by [`assign_key_caps`] once every limit is known.
    pub key_cap: KeyCap,
    /// `reservation_percent` as written: this limit's share of a key's headroom one
    /// `strict` reservation may take, instead of the policy-wide
    /// `reservations.fraction_percent`.
    pub reservation_percent: Option<u8>,
}

/// What a limit may say besides its rate: `max_keys`, `on_full`, `expose` and
/// `reservation_percent` as written, wherever a limit can be written (named limits,
/// descriptor rules, route and consumer limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOptions {
    pub max_keys: Option<usize>,
    pub on_full: OnFull,
    pub expose: Option<bool>,
    pub reservation_percent: Option<u8>,
}

impl LimitOptions {
    /// Checks `max_keys` and `reservation_percent`; the error is the reason, without
    /// position.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_keys == Some(0) {
            return Err("max_keys must be at least 1".into());
        }
        if let Some(p) = self.reservation_percent.filter(|p| *p > 100) {
            return Err(format!("reservation_percent must be 0 to 100, got {p}"));
        }
        Ok(())
    }
}

/// Fills in every limit's [`LimitDef::key_cap`]: limits with `max_keys` keep theirs; the
/// others share what is left of `max_counters` equally, so that the caps never add up to
/// more than the store holds and a flood on one limit can never fill the store for the
/// others. Returns the cap a hit on a limit the policy no longer has gets (the same
/// share, `refuse`).
pub fn assign_key_caps(
    limits: &mut BTreeMap<String, LimitDef>,
    max_counters: usize,
) -> Result<KeyCap, String> {
    let explicit: usize = limits
        .values()
        .filter_map(|l| l.max_keys)
        .fold(0, usize::saturating_add);
    if explicit > max_counters {
        return Err(format!(
            "the limits' max_keys add up to {explicit}, more than max_counters ({max_counters}): \
             raise max_counters or lower max_keys"
        ));
    }
    let implicit = limits.values().filter(|l| l.max_keys.is_none()).count();
    let share = (max_counters - explicit) / implicit.max(1);
    if implicit > 0 && share == 0 {
        return Err(format!(
            "max_counters ({max_counters}) leaves no keys for the {implicit} limits without \
             max_keys: raise max_counters or give them max_keys"
        ));
    }
    for limit in limits.values_mut() {
        limit.key_cap = KeyCap {
            max_keys: limit.max_keys.unwrap_or(share),
            on_full: limit.on_full,
        };
    }
    Ok(KeyCap {
        max_keys: share.max(1),
        on_full: OnFull::Refuse,
    })
}

impl LimitDef {
    /// A limit with no name yet: `options` as written, exposed to quorate.v1 when
    /// `options.expose` says so, else when `exposed_by_default`.
    pub fn new(
        rate: Rate,
        consistency: Consistency,
        options: LimitOptions,
        exposed_by_default: bool,
    ) -> LimitDef {
        LimitDef {
            name: String::new(),
            rate,
            consistency,
            display_name: None,
            shadow_mode: false,
            max_keys: options.max_keys,
            on_full: options.on_full,
            expose: options.expose,
            exposed: options.expose.unwrap_or(exposed_by_default),
            key_cap: KeyCap::NONE,
            reservation_percent: options.reservation_percent,
        }
    }

    /// The name shown to clients.
    pub fn shown_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }
}

/// Longest accepted limit name: names travel in every log entry.
pub const MAX_NAME_LEN: usize = 128;

/// A limit as written in YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitDoc {
    name: String,
    algorithm: Option<Algorithm>,
    limit: u64,
    window: String,
    burst: Option<u64>,
    precision: Option<u64>,
    #[serde(default)]
    consistency: Consistency,
    #[serde(default)]
    shadow_mode: bool,
    max_keys: Option<usize>,
    #[serde(default)]
    on_full: OnFull,
    expose: Option<bool>,
    reservation_percent: Option<u8>,
}

/// Builds the rate a policy writes, with the policy defaults: `fixed_window` when no
/// algorithm is named, and for `sliding_window` without `precision`,
/// [`DEFAULT_SLIDING_PRECISION`] sub-windows (the largest precision up to it that divides
/// the window; every window a policy can write is a whole number of milliseconds, which
/// the default divides). `precision: 1` is the two-counter form policies got before
/// precision existed. Shared by every policy format.
pub(crate) fn policy_rate(
    algorithm: Option<Algorithm>,
    limit: u64,
    window: Nanos,
    burst: Option<u64>,
    precision: Option<u64>,
) -> Result<Rate, RateError> {
    let algorithm = algorithm.unwrap_or(Algorithm::FixedWindow);
    let precision = match (algorithm, precision) {
        (Algorithm::SlidingWindow, None) => (1..=DEFAULT_SLIDING_PRECISION)
            .rev()
            .map(u64::from)
            .find(|p| window.is_multiple_of(*p)),
        (_, given) => given,
    };
    Rate::with_precision(algorithm, limit, window, burst, precision)
}

impl LimitDoc {
    /// Validates the limit; the error is the reason, without position.
    pub(super) fn compile(self) -> Result<LimitDef, String> {
        let doc = self;
        if doc.name.is_empty() || doc.name.len() > MAX_NAME_LEN {
            return Err(format!(
                "limit name must be 1 to {MAX_NAME_LEN} bytes, got {:?}",
                doc.name
            ));
        }
        if doc.name.chars().any(char::is_control) {
            return Err(format!(
                "limit name {:?} contains a control character",
                doc.name
            ));
        }
        let window = parse_window(&doc.window).map_err(|e| format!("limit {:?}: {e}", doc.name))?;
        let rate = policy_rate(doc.algorithm, doc.limit, window, doc.burst, doc.precision)
            .map_err(|e| format!("limit {:?}: {e}", doc.name))?;
        let options = LimitOptions {
            max_keys: doc.max_keys,
            on_full: doc.on_full,
            expose: doc.expose,
            reservation_percent: doc.reservation_percent,
        };
        options
            .validate()
            .map_err(|e| format!("limit {:?}: {e}", doc.name))?;
        // A named limit is quorate.v1's own unless an authz route takes it with `use:`
        // (see `authz::policy`) and it does not say `expose: true`.
        Ok(LimitDef {
            name: doc.name,
            rate,
            consistency: doc.consistency,
            display_name: None,
            shadow_mode: doc.shadow_mode,
            ..LimitDef::new(rate, doc.consistency, options, true)
        })
    }
}

#[cfg(test)]
mod tests {
    use quorate_algorithms::{CounterState, SlidingWindow, SECOND};

    use super::*;
    use crate::{PolicyFormat, PolicySet, PolicySource};

    fn compile(format: PolicyFormat, text: &str) -> PolicySet {
        PolicySet::compile(&PolicySource {
            format,
            text: text.to_string(),
        })
        .unwrap()
    }

    fn rate_of(text: &str, name: &str) -> Rate {
        compile(PolicyFormat::Quorate, text).limits[name].rate
    }

    /// A policy file written before `precision` existed.
    const OLD_POLICY: &str = "
limits:
  - name: fixed
    limit: 10
    window: 1s
  - name: sliding
    algorithm: sliding_window
    limit: 10
    window: 1s
  - name: log
    algorithm: sliding_log
    limit: 10
    window: 1s
  - name: bucket
    algorithm: token_bucket
    limit: 10
    window: 1s
    burst: 20
";

    #[test]
    fn old_policies_load_unchanged_except_the_sliding_window_default() {
        let policy = compile(PolicyFormat::Quorate, OLD_POLICY);
        let rate = |name: &str| policy.limits[name].rate;
        // What these compiled to before precision existed: precision 1, same numbers.
        assert_eq!(
            rate("fixed"),
            Rate::new(Algorithm::FixedWindow, 10, SECOND, None).unwrap()
        );
        assert_eq!(
            rate("log"),
            Rate::new(Algorithm::SlidingLog, 10, SECOND, None).unwrap()
        );
        assert_eq!(
            rate("bucket"),
            Rate::new(Algorithm::TokenBucket, 10, SECOND, Some(20)).unwrap()
        );
        // The documented change: `sliding_window` without `precision` now runs the default
        // number of sub-windows instead of the two-counter form.
        let sliding = rate("sliding");
        assert_eq!(sliding.algorithm(), Algorithm::SlidingWindow);
        assert_eq!(sliding.precision(), DEFAULT_SLIDING_PRECISION);
        assert!(matches!(
            CounterState::new(&sliding),
            CounterState::SlidingSlots(_)
        ));
    }

    #[test]
    fn precision_one_is_exactly_what_old_policies_ran() {
        let text = "limits:\n  - name: s\n    algorithm: sliding_window\n    limit: 10\n    window: 1s\n    precision: 1\n";
        let rate = rate_of(text, "s");
        assert_eq!(
            rate,
            Rate::new(Algorithm::SlidingWindow, 10, SECOND, None).unwrap()
        );
        assert!(matches!(
            CounterState::new(&rate),
            CounterState::SlidingWindow(_)
        ));
    }

    /// What the change means: 10 hits at the end of one second, then half a second later.
    /// The two-counter form assumes the 10 were spread over the first second and lets 5
    /// more through (15 within 0.51 s); the default precision knows they are all in the
    /// last sub-window and lets none through until they slide out.
    #[test]
    fn the_default_precision_holds_the_limit_where_two_counters_did_not() {
        let default = rate_of(OLD_POLICY, "sliding");
        let two_counter = Rate::new(Algorithm::SlidingWindow, 10, SECOND, None).unwrap();
        let mut old = SlidingWindow::default();
        let mut new = CounterState::new(&default);
        let burst_at = 990_000_000;
        assert!(old.check(&two_counter, burst_at, 10).allowed);
        assert!(new.check(&default, burst_at, 10).allowed);
        let later = 1_500_000_000;
        assert_eq!(old.check(&two_counter, later, 0).remaining, 5);
        assert_eq!(new.check(&default, later, 0).remaining, 0);
        // Their slot ends at 1.0 s (0.99 s is in the last sub-window of the first second),
        // so they have all slid out at 2.0 s.
        assert_eq!(new.check(&default, 2_000_000_000, 0).remaining, 10);
    }

    #[test]
    fn descriptor_rules_take_precision() {
        let text = "
domains:
  - domain: edge
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 100, algorithm: sliding_window, precision: 20}
      - key: ip
        rate_limit: {unit: minute, requests_per_unit: 100, algorithm: sliding_window}
      - key: path
        rate_limit: {unit: minute, requests_per_unit: 100}
";
        for (format, text) in [
            (PolicyFormat::Quorate, text.to_string()),
            // envoyproxy/ratelimit's format: one domain per document, same rule syntax.
            (
                PolicyFormat::EnvoyRatelimit,
                text.replace(
                    "domains:\n  - domain: edge\n    descriptors:",
                    "domain: edge\ndescriptors:",
                )
                .replace("\n      ", "\n  "),
            ),
        ] {
            let policy = compile(format, &text);
            let precision = |key: &str| {
                let found: Vec<_> = policy
                    .limits
                    .values()
                    .filter(|l| l.name.contains(key))
                    .collect();
                assert_eq!(found.len(), 1, "{key}: {found:?}");
                (found[0].rate.algorithm(), found[0].rate.precision())
            };
            assert_eq!(precision("user"), (Algorithm::SlidingWindow, 20));
            assert_eq!(
                precision("ip"),
                (Algorithm::SlidingWindow, DEFAULT_SLIDING_PRECISION)
            );
            assert_eq!(precision("path"), (Algorithm::FixedWindow, 1));
        }
    }

    #[test]
    fn the_default_precision_divides_every_window_a_policy_can_write() {
        for window in ["1ms", "7ms", "1s", "13s", "1m", "1h", "1d", "month", "year"] {
            let w = crate::parse_window(window).unwrap();
            let rate = policy_rate(Some(Algorithm::SlidingWindow), 5, w, None, None).unwrap();
            assert_eq!(rate.precision(), DEFAULT_SLIDING_PRECISION, "{window}");
        }
    }
}
