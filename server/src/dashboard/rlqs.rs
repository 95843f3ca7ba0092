//! `GET /dashboard/api/rlqs`: Envoy RLQS as the leader sees it — buckets, the proxies
//! subscribed to each with their share and demand, the unassigned rate and reserve, and
//! the churn ([`crate::grpc::rlqs::RlqsView`]).
//!
//! Only the leader serves RLQS streams, so only it knows the shares. A follower asks the
//! leader's HTTP port (as the cluster view asks every member) and says which node
//! answered; the request it sends carries `from=ID`, and a node asked that way never asks
//! further, so two nodes that each think the other leads cannot bounce a request. Like
//! the other read-only endpoints it takes no token and shows nothing secret (per-value
//! `bucket_id` values only as digests); its size is bounded by the view's caps.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::NodeContext;

/// How long a follower waits for the leader's view.
const LEADER_TIMEOUT: Duration = Duration::from_millis(800);
/// Largest view a follower accepts from the leader (the leader's is far smaller: at most
/// `MAX_VIEW_BUCKETS` × `MAX_VIEW_PROXIES` rows).
const MAX_LEADER_VIEW_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct RlqsQuery {
    /// The follower that forwarded this request: answer from this node, never forward.
    from: Option<u64>,
}

pub async fn rlqs(
    State(ctx): State<super::DashboardContext>,
    Query(q): Query<RlqsQuery>,
) -> Json<Value> {
    let leadership = ctx.engine.leadership();
    let leader = leadership.leader_id();
    if leadership.is_leader() || q.from.is_some() {
        return Json(local(&ctx, leader, None));
    }
    let Some(node) = leadership.leader_node() else {
        return Json(local(
            &ctx,
            None,
            Some("no leader is known; RLQS shares are made by the leader".into()),
        ));
    };
    let url = format!("http://{}/dashboard/api/rlqs?from={}", node.http, ctx.id);
    match fetch(&ctx, &url).await {
        Ok(mut view) => {
            // The leader's answer, labelled with the node serving the page.
            if let Some(map) = view.as_object_mut() {
                map.insert("this_node".into(), json!(ctx.id));
            }
            Json(view)
        }
        Err(e) => Json(local(
            &ctx,
            leader,
            Some(format!(
                "the leader (node {}) did not answer: {e}",
                leader.unwrap_or_default()
            )),
        )),
    }
}

/// This node's own view, with who serves it and who leads.
fn local(ctx: &NodeContext, leader: Option<u64>, error: Option<String>) -> Value {
    let mut view = serde_json::to_value(&*ctx.rlqs.dashboard_view()).unwrap_or(Value::Null);
    if let Some(map) = view.as_object_mut() {
        map.insert("this_node".into(), json!(ctx.id));
        map.insert("served_by".into(), json!(ctx.id));
        map.insert("leader_id".into(), json!(leader));
        map.insert("error".into(), json!(error));
    }
    view
}

async fn fetch(ctx: &NodeContext, url: &str) -> Result<Value, String> {
    let mut response = ctx
        .http
        .get(url)
        .timeout(LEADER_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_LEADER_VIEW_BYTES {
            return Err(format!("view larger than {MAX_LEADER_VIEW_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("invalid view: {e}"))
}
