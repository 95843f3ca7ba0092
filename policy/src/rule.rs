//! The pieces of a descriptor policy that matching, conditions and planning all use:
//! Envoy's units, a rule's rate ([`RuleSpec`]), a request descriptor, and how entries
//! join into a counter key. A leaf, so those three modules depend on it and not on each
//! other in a circle.

use quorate_algorithms::{Rate, SECOND};

use super::limits::{Consistency, LimitOptions};

/// Separates entries inside a counter key; cannot appear in valid HTTP header values.
pub(crate) const ENTRY_SEPARATOR: char = '\u{1e}';

/// One descriptor of a request: its entries and, optionally, Envoy's per-descriptor limit
/// override (`requests_per_unit` per `unit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDescriptor {
    pub entries: Vec<(String, String)>,
    pub limit_override: Option<(u64, EnvoyUnit)>,
}

impl RequestDescriptor {
    /// A descriptor of `(key, value)` entries without a limit override.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> RequestDescriptor {
        RequestDescriptor {
            entries: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limit_override: None,
        }
    }
}

/// The rate part of a rule, before it has a name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleSpec {
    pub rate: Rate,
    pub consistency: Consistency,
    pub unit: RateUnit,
    /// `max_keys`, `on_full`, `expose` (a rule is not addressable via quorate.v1 unless
    /// it says `expose: true`).
    pub options: LimitOptions,
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

    pub(super) fn parse(text: &str) -> Option<EnvoyUnit> {
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
