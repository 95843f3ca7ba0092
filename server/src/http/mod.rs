//! HTTP surfaces on the node's HTTP port: health, Prometheus metrics, the admin API,
//! and forward-auth (`/authz`). The node merges the dashboard's routes (`/` and
//! `/dashboard/...`, see [`crate::dashboard::router`]) next to these.

pub mod admin;
pub mod forward_auth;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::context::NodeContext;

/// The node's HTTP router.
pub fn router(ctx: NodeContext) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/admin/v1", admin::router(ctx.clone()))
        .merge(forward_auth::router())
        .with_state(ctx)
}

/// 200 once the node knows a leader and so can decide.
async fn readyz(State(ctx): State<NodeContext>) -> (StatusCode, &'static str) {
    if ctx.engine.leadership().leader_id().is_some() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no leader")
    }
}

async fn metrics(State(ctx): State<NodeContext>) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let shared = ctx.engine.shared();
    ctx.metrics
        .counters
        .set(i64::try_from(shared.counters.load().len()).unwrap_or(i64::MAX));
    ctx.metrics.observe_policy(&ctx.engine.policy().set);
    ctx.metrics.policy_version.set(
        ctx.engine
            .policy()
            .version
            .as_ref()
            .map_or(0, |v| i64::try_from(v.version).unwrap_or(i64::MAX)),
    );
    // A counter only the log store counts: add what happened since the last scrape (one
    // scrape at a time, so two concurrent ones cannot both add the same fsyncs).
    static CATCH_UP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Ok(_one) = CATCH_UP.lock() {
        let fsyncs = &ctx.metrics.raft_log_fsyncs;
        fsyncs.inc_by(ctx.log_store.fsync_count().saturating_sub(fsyncs.get()));
        let snapshots = &shared.snapshots;
        let built = &ctx.metrics.snapshots_built;
        built.inc_by(snapshots.built.load(Relaxed).saturating_sub(built.get()));
    }
    let snapshots = &shared.snapshots;
    ctx.metrics
        .snapshot_bytes
        .set(i64::try_from(snapshots.last_bytes.load(Relaxed)).unwrap_or(i64::MAX));
    ctx.metrics
        .snapshot_build_seconds
        .set(snapshots.last_build_nanos.load(Relaxed) as f64 / 1e9);
    ctx.metrics.render()
}
