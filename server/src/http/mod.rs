//! HTTP surfaces on the node's HTTP port: health, Prometheus metrics, the admin API,
//! forward-auth (`/authz`), and the dashboard (`/` and `/dashboard/...`).

pub mod admin;
pub mod forward_auth;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::node::NodeContext;

/// The node's HTTP router.
pub fn router(ctx: NodeContext) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/admin/v1", admin::router(ctx.clone()))
        .nest("/dashboard/api", crate::dashboard::api::router(ctx.clone()))
        .merge(crate::dashboard::assets::router())
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
    ctx.metrics
        .raft_log_fsyncs
        .set(i64::try_from(ctx.log_store.fsync_count()).unwrap_or(i64::MAX));
    ctx.metrics.render()
}
