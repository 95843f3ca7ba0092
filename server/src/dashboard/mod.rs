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

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::context::NodeContext;
use crate::decide::authz::Authorizer;
use crate::metrics::Metrics;
use crate::raft::state_machine::SharedState;
use crate::raft::typ::Raft;

/// The dashboard's node-local state.
pub struct Dashboard {
    pub cluster: Arc<cluster::ClusterWatch>,
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
            explain,
            streams: AtomicUsize::new(0),
            cluster_cache: tokio::sync::Mutex::new(None),
        })
    }
}

/// What the dashboard's handlers read: the node's shared handles (through `Deref`, so a
/// handler writes `ctx.engine` as every other surface does) and the dashboard's own state.
/// The node builds it; the shared [`NodeContext`] does not know the dashboard exists.
#[derive(Clone, Debug)]
pub struct DashboardContext {
    pub node: NodeContext,
    pub dashboard: Arc<Dashboard>,
}

impl Deref for DashboardContext {
    type Target = NodeContext;

    fn deref(&self) -> &NodeContext {
        &self.node
    }
}

/// The dashboard's routes: the page at `/` and its files, and the JSON API under
/// `/dashboard/api`. The node merges them into its HTTP router.
pub fn router(node: NodeContext, dashboard: Arc<Dashboard>) -> Router {
    let ctx = DashboardContext { node, dashboard };
    Router::new()
        .nest("/dashboard/api", api::router(ctx.clone()))
        .merge(assets::router())
        .with_state(ctx)
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
