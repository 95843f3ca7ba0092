//! The operations dashboard: one page at `GET /` on the HTTP port, the JSON endpoints
//! behind it under `/dashboard/api/`, and a once-a-second SSE stream.
//!
//! Everything shown is bounded and pre-aggregated on the node: per-second traffic
//! ([`traffic`]), a heavy-hitters sketch of counter keys ([`hotkeys`]), the cluster and
//! its timeline ([`cluster`]), the policy and its history. Read-only endpoints need no
//! token and show nothing secret (the policy holds secret *references* only and counter
//! keys hold credentials hashed); the page's operations call the admin API
//! (`/admin/v1/...`) with the bearer token the operator types, kept in the page's memory.

pub mod api;
pub mod assets;
pub mod cluster;
pub mod explain;
pub mod rlqs;
// Recorded by the metrics registry on the decision path; shown here.
pub use crate::metrics::{hotkeys, traffic};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::decide::authz::Authorizer;
use crate::metrics::Metrics;
use crate::raft::state_machine::SharedState;
use crate::raft::typ::Raft;

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
struct PolicyNotes {
    origins: BTreeMap<u64, PolicyOrigin>,
    last_rejected: Option<RejectedReload>,
}

/// The dashboard's node-local state.
pub struct Dashboard {
    pub cluster: Arc<cluster::ClusterWatch>,
    notes: Mutex<PolicyNotes>,
    /// Decides explain requests over copies of the live counters; its metrics registry
    /// is private, so explaining never shows up as traffic.
    explain: Authorizer,
    /// Open SSE streams (bounded by [`api::MAX_STREAMS`]).
    streams: AtomicUsize,
    /// The cluster view, shared by every viewer for up to a second.
    cluster_cache: tokio::sync::Mutex<Option<(std::time::Instant, Arc<api::ClusterView>)>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

impl Dashboard {
    pub fn new(
        data_dir: PathBuf,
        shared: Arc<SharedState>,
        http: reqwest::Client,
    ) -> Result<Dashboard, prometheus::Error> {
        let explain = Authorizer::new(
            Arc::new(explain::PeekCounter {
                shared: Arc::clone(&shared),
            }),
            Arc::new(Metrics::new()?),
            http,
            crate::authz::jwt::JwtSettings::default(),
        );
        Ok(Dashboard {
            cluster: Arc::new(cluster::ClusterWatch::new(data_dir)),
            notes: Mutex::new(PolicyNotes::default()),
            explain,
            streams: AtomicUsize::new(0),
            cluster_cache: tokio::sync::Mutex::new(None),
        })
    }

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

    fn origin(&self, version: u64) -> Option<PolicyOrigin> {
        self.notes
            .lock()
            .ok()
            .and_then(|n| n.origins.get(&version).copied())
    }

    fn last_rejected(&self) -> Option<RejectedReload> {
        self.notes.lock().ok().and_then(|n| n.last_rejected.clone())
    }
}

/// Starts the dashboard's background work: the Raft metrics poll (timeline, lag) and the
/// once-a-second traffic sampler.
pub fn start(dashboard: &Dashboard, raft: Raft, metrics: Arc<Metrics>) {
    tokio::spawn(Arc::clone(&dashboard.cluster).run(raft, Arc::clone(&metrics)));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            let now = crate::engine::wall_nanos() / 1_000_000_000;
            metrics.traffic.sample(now, &metrics.decision_seconds);
        }
    });
}
