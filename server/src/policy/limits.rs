//! Named limits: a rate, its algorithm and its consistency mode.

use std::collections::BTreeMap;

use quorate_algorithms::{Algorithm, KeyCap, OnFull, Rate};
use serde::{Deserialize, Serialize};

use super::parse_window;

/// How a limit trades exactness for latency across the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Answer after the hit is committed by a quorum: exact, even across leader failure.
    #[default]
    Strict,
    /// The leader answers from memory at once and replicates behind; a leader crash may
    /// lose the hits of its last unreplicated batch.
    Fast,
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
}

/// `max_keys`, `on_full` and `expose` as written, wherever a limit can be written (named
/// limits, descriptor rules, route and consumer limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCapDoc {
    pub max_keys: Option<usize>,
    pub on_full: OnFull,
    pub expose: Option<bool>,
}

impl KeyCapDoc {
    /// Checks `max_keys`; the error is the reason, without position.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_keys == Some(0) {
            return Err("max_keys must be at least 1".into());
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
    /// A limit with no name yet: `cap` as written, exposed to quorate.v1 when `cap.expose`
    /// says so, else when `exposed_by_default`.
    pub fn new(
        rate: Rate,
        consistency: Consistency,
        cap: KeyCapDoc,
        exposed_by_default: bool,
    ) -> LimitDef {
        LimitDef {
            name: String::new(),
            rate,
            consistency,
            display_name: None,
            shadow_mode: false,
            max_keys: cap.max_keys,
            on_full: cap.on_full,
            expose: cap.expose,
            exposed: cap.expose.unwrap_or(exposed_by_default),
            key_cap: KeyCap::NONE,
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
    #[serde(default)]
    algorithm: Option<Algorithm>,
    limit: u64,
    window: String,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    consistency: Consistency,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    max_keys: Option<usize>,
    #[serde(default)]
    on_full: OnFull,
    #[serde(default)]
    expose: Option<bool>,
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
        let algorithm = doc.algorithm.unwrap_or(Algorithm::FixedWindow);
        let rate = Rate::new(algorithm, doc.limit, window, doc.burst)
            .map_err(|e| format!("limit {:?}: {e}", doc.name))?;
        let cap = KeyCapDoc {
            max_keys: doc.max_keys,
            on_full: doc.on_full,
            expose: doc.expose,
        };
        cap.validate()
            .map_err(|e| format!("limit {:?}: {e}", doc.name))?;
        // A named limit is quorate.v1's own unless an authz route takes it with `use:`
        // (see `authz::policy`) and it does not say `expose: true`.
        Ok(LimitDef {
            name: doc.name,
            rate,
            consistency: doc.consistency,
            display_name: None,
            shadow_mode: doc.shadow_mode,
            ..LimitDef::new(rate, doc.consistency, cap, true)
        })
    }
}
