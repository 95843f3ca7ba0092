//! Named limits: a rate, its algorithm and its consistency mode.

use quorate_algorithms::{Algorithm, Rate};
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
}

impl LimitDef {
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
        Ok(LimitDef {
            name: doc.name,
            rate,
            consistency: doc.consistency,
            display_name: None,
            shadow_mode: doc.shadow_mode,
        })
    }
}
