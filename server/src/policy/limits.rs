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
    pub name: String,
    pub rate: Rate,
    pub consistency: Consistency,
}

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
}

/// Longest accepted limit name: names travel in every log entry.
const MAX_NAME_LEN: usize = 128;

impl LimitDoc {
    pub(super) fn compile(self) -> Result<LimitDef, String> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(format!(
                "limit name must be 1 to {MAX_NAME_LEN} bytes, got {:?}",
                self.name
            ));
        }
        let window =
            parse_window(&self.window).map_err(|e| format!("limit {:?}: {e}", self.name))?;
        let algorithm = self.algorithm.unwrap_or(Algorithm::FixedWindow);
        let rate = Rate::new(algorithm, self.limit, window, self.burst)
            .map_err(|e| format!("limit {:?}: {e}", self.name))?;
        Ok(LimitDef {
            name: self.name,
            rate,
            consistency: self.consistency,
        })
    }
}
