//! What this node remembers about how each policy version became live (the policy file,
//! the admin API, the built-in example) and the last policy file it refused.
//!
//! Written by the paths that propose a policy (`node`, `policy_watch`, `http::admin`) and
//! read by the dashboard; it lives apart from all of them so none has to import another
//! to share it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// How a policy version became live, as far as this node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyOrigin {
    /// The node's `--policy` file (at startup or a hot reload).
    File,
    /// `PUT /admin/v1/policy` (the CLI's `policy apply`, or the page).
    Admin,
    /// The built-in example a fresh cluster starts with.
    Example,
}

/// The last policy file this node refused.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedReload {
    pub at_ms: u64,
    pub file: String,
    pub line: Option<usize>,
    pub reason: String,
}

/// Most policy versions whose origin is remembered.
const MAX_ORIGINS: usize = 1_000;

#[derive(Debug, Default)]
struct Notes {
    origins: BTreeMap<u64, PolicyOrigin>,
    last_rejected: Option<RejectedReload>,
}

/// Node-local notes on the policy's history (bounded: at most [`MAX_ORIGINS`] versions).
#[derive(Debug, Default)]
pub struct PolicyNotes {
    notes: Mutex<Notes>,
}

impl PolicyNotes {
    /// Remembers how `version` became live.
    pub fn note_policy(&self, version: u64, origin: PolicyOrigin) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.origins.insert(version, origin);
            while notes.origins.len() > MAX_ORIGINS {
                notes.origins.pop_first();
            }
        }
    }

    /// Remembers a refused policy file. `message` names the file and, when known, the
    /// line (`... line N: reason`).
    pub fn note_rejected(&self, file: &std::path::Path, message: &str) {
        let line = message.split("line ").nth(1).and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        });
        if let Ok(mut notes) = self.notes.lock() {
            notes.last_rejected = Some(RejectedReload {
                at_ms: crate::engine::wall_nanos() / 1_000_000,
                file: file.display().to_string(),
                line,
                reason: message.to_string(),
            });
        }
    }

    /// How `version` became live, if this node saw it happen.
    pub fn origin(&self, version: u64) -> Option<PolicyOrigin> {
        self.notes
            .lock()
            .ok()
            .and_then(|n| n.origins.get(&version).copied())
    }

    /// The last policy file this node refused, if any.
    pub fn last_rejected(&self) -> Option<RejectedReload> {
        self.notes.lock().ok().and_then(|n| n.last_rejected.clone())
    }
}
