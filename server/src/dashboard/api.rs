//! The dashboard's JSON endpoints (`/dashboard/api/...`) and its SSE stream.
//!
//! Read-only endpoints take no token; everything they return is bounded (fixed-size
//! rings, top-N lists, capped diffs). `POST /policy/dry-run` compiles operator input, so it
//! sits behind the admin API's own authorization.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::cluster::{ClusterEvent, NodeInfo};
use super::explain::{explain, ExplainRequest};
use super::DashboardContext;
use crate::policy::{PolicyFormat, PolicySet, PolicySource};
use crate::policy_notes::PolicyOrigin;
use crate::raft::NodeId;

/// Most SSE streams open at once on one node.
pub const MAX_STREAMS: usize = 32;
/// Largest request body (an explain request or a pasted policy).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most lines a diff returns.
pub const MAX_DIFF_LINES: usize = 5_000;
/// Most hot keys per list.
pub const MAX_TOP: usize = 50;
/// How long a member gets to answer `/dashboard/api/node`.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(500);

pub fn router(ctx: DashboardContext) -> Router<DashboardContext> {
    let operations = Router::new().route("/policy/dry-run", post(dry_run)).layer(
        axum::middleware::from_fn_with_state(ctx.node, crate::http::admin::authorize),
    );
    Router::new()
        .route("/node", get(node))
        .route("/cluster", get(cluster))
        .route("/traffic", get(traffic))
        .route("/hotkeys", get(hotkeys))
        .route("/rlqs", get(super::rlqs::rlqs))
        .route("/policy", get(policy))
        .route("/policy/history", get(history))
        .route("/policy/versions/{version}", get(version_source))
        .route("/policy/diff", get(diff))
        .route("/explain", post(explain_handler))
        .route("/events", get(events))
        .merge(operations)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": message.into()})),
    )
        .into_response()
}

// === cluster ===

async fn node(State(ctx): State<DashboardContext>) -> Json<NodeInfo> {
    Json(node_info(&ctx))
}

fn node_info(ctx: &DashboardContext) -> NodeInfo {
    let m = ctx.raft.metrics().borrow().clone();
    let shared = ctx.engine.shared();
    ctx.dashboard.cluster.node_info(
        &m,
        shared.counters.load().len(),
        ctx.engine.policy().version.as_ref().map(|v| v.version),
    )
}

/// One member in `GET /dashboard/api/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub voter: bool,
    pub leader: bool,
    /// Whether the member answered its `/dashboard/api/node` just now.
    pub reachable: bool,
    /// Its own view (absent when unreachable).
    pub info: Option<NodeInfo>,
    /// The leader's view of its replication (absent for the leader itself).
    pub lag_entries: Option<u64>,
    pub lag_ms: Option<u64>,
}

/// `GET /dashboard/api/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// The node serving this page.
    pub this_node: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub committed: Option<u64>,
    pub members: Vec<MemberView>,
    pub events: Vec<ClusterEvent>,
}

async fn cluster(State(ctx): State<DashboardContext>) -> Json<ClusterView> {
    Json((*cluster_view(&ctx).await).clone())
}

/// The cluster view, computed at most once a second however many viewers ask.
async fn cluster_view(ctx: &DashboardContext) -> Arc<ClusterView> {
    let mut cache = ctx.dashboard.cluster_cache.lock().await;
    if let Some((at, view)) = cache.as_ref() {
        if at.elapsed() < Duration::from_millis(900) {
            return Arc::clone(view);
        }
    }
    let view = Arc::new(build_cluster_view(ctx).await);
    *cache = Some((Instant::now(), Arc::clone(&view)));
    view
}

async fn build_cluster_view(ctx: &DashboardContext) -> ClusterView {
    let m = ctx.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let own = node_info(ctx);
    let fetches = membership.nodes().map(|(id, n)| {
        let (id, http_addr) = (*id, n.http);
        let client = ctx.http.clone();
        let own = own.clone();
        async move {
            if id == own.id {
                return (id, Some(own));
            }
            let url = format!("http://{http_addr}/dashboard/api/node");
            let info = match client.get(&url).timeout(MEMBER_TIMEOUT).send().await {
                Ok(r) if r.status().is_success() => r.json::<NodeInfo>().await.ok(),
                _ => None,
            };
            (id, info)
        }
    });
    let infos: std::collections::BTreeMap<NodeId, Option<NodeInfo>> =
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .collect();
    // Replication as the leader sees it: our own view if we lead, else the leader's.
    let leader_view = m
        .current_leader
        .and_then(|l| infos.get(&l).cloned().flatten());
    let members = membership
        .nodes()
        .map(|(id, n)| {
            let info = infos.get(id).cloned().flatten();
            // Lag is known once the leader has matched something on that member.
            let rep = leader_view
                .as_ref()
                .and_then(|l| l.replication.get(id))
                .filter(|r| r.matched_index.is_some());
            MemberView {
                id: *id,
                grpc: n.grpc,
                http: n.http,
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
                reachable: info.is_some(),
                info,
                lag_entries: rep.map(|r| r.lag_entries),
                lag_ms: rep.map(|r| r.lag_ms),
            }
        })
        .collect();
    ClusterView {
        this_node: ctx.id,
        leader: m.current_leader,
        term: m.current_term,
        committed: leader_view.and_then(|l| l.committed),
        members,
        events: ctx.dashboard.cluster.events(),
    }
}

// === traffic and hot keys ===

async fn traffic(State(ctx): State<DashboardContext>) -> Json<super::traffic::TrafficView> {
    Json(ctx.metrics.traffic.view())
}

#[derive(Debug, Deserialize)]
struct TopQuery {
    top: Option<usize>,
}

async fn hotkeys(
    State(ctx): State<DashboardContext>,
    Query(q): Query<TopQuery>,
) -> Json<super::hotkeys::HotKeysView> {
    Json(ctx.metrics.hot_keys.view(q.top.unwrap_or(20).min(MAX_TOP)))
}

// === policy ===

/// One configured limit, for the policy view.
#[derive(Debug, Serialize)]
struct LimitView {
    name: String,
    algorithm: &'static str,
    requests: u64,
    window: String,
    consistency: &'static str,
    shadow_mode: bool,
}

fn how(ctx: &DashboardContext, version: u64, rollback_of: Option<u64>) -> &'static str {
    if rollback_of.is_some() {
        return "rollback";
    }
    match ctx.policy_notes.origin(version) {
        Some(PolicyOrigin::File) => "file",
        Some(PolicyOrigin::Admin) => "admin",
        Some(PolicyOrigin::Example) => "example",
        // Applied through another node (the leader at the time).
        None => "file or admin, through another node",
    }
}

/// The policy source as a JSON tree (YAML documents parse as JSON values); `null` when
/// the source is not one YAML document (a directory bundle keeps its text only).
fn tree(source: &str) -> Value {
    serde_yaml_ng::from_str::<Value>(source).unwrap_or(Value::Null)
}

async fn policy(State(ctx): State<DashboardContext>) -> Json<Value> {
    let live = ctx.engine.policy();
    let limits: Vec<LimitView> = live
        .set
        .limits
        .values()
        .take(1_000)
        .map(|d| LimitView {
            name: d.name.clone(),
            algorithm: d.rate.algorithm().as_str(),
            requests: d.rate.limit(),
            window: crate::decide::simulate::window_text(d.rate.window()),
            consistency: d.consistency.as_str(),
            shadow_mode: d.shadow_mode,
        })
        .collect();
    let v = live.version.as_ref();
    Json(json!({
        "version": v.map(|v| v.version),
        "format": v.map(|v| v.source.format.as_str()),
        "applied_at_ms": v.map(|v| v.applied_at / 1_000_000),
        "rollback_of": v.and_then(|v| v.rollback_of),
        "how": v.map(|v| how(&ctx, v.version, v.rollback_of)),
        "source": v.map(|v| v.source.text.as_str()),
        "tree": v.map(|v| tree(&v.source.text)),
        "domains": live.set.domains.keys().collect::<Vec<_>>(),
        "limits": limits,
        "last_rejected": ctx.policy_notes.last_rejected(),
    }))
}

async fn history(State(ctx): State<DashboardContext>) -> Json<Vec<Value>> {
    Json(
        ctx.engine
            .shared()
            .policy_history()
            .iter()
            .map(|v| {
                json!({
                    "version": v.version,
                    "format": v.source.format.as_str(),
                    "applied_at_ms": v.applied_at / 1_000_000,
                    "rollback_of": v.rollback_of,
                    "how": how(&ctx, v.version, v.rollback_of),
                    "lines": v.source.text.lines().count(),
                })
            })
            .collect(),
    )
}

fn source_of(ctx: &DashboardContext, version: u64) -> Option<PolicySource> {
    ctx.engine
        .shared()
        .policy_history()
        .into_iter()
        .find(|v| v.version == version)
        .map(|v| v.source)
}

async fn version_source(State(ctx): State<DashboardContext>, Path(version): Path<u64>) -> Response {
    match source_of(&ctx, version) {
        Some(s) => Json(json!({"version": version, "format": s.format.as_str(), "source": s.text}))
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no policy version {version} in the history")})),
        )
            .into_response(),
    }
}

/// One line of a diff.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DiffLine {
    /// `=`, `-` or `+`.
    pub op: &'static str,
    pub text: String,
}

/// A line diff of two texts, at most [`MAX_DIFF_LINES`] lines.
pub fn line_diff(old: &str, new: &str) -> (Vec<DiffLine>, bool) {
    let diff = similar::TextDiff::configure()
        .timeout(Duration::from_millis(500))
        .diff_lines(old, new);
    let mut lines = Vec::new();
    let mut truncated = false;
    for change in diff.iter_all_changes() {
        if lines.len() == MAX_DIFF_LINES {
            truncated = true;
            break;
        }
        let op = match change.tag() {
            similar::ChangeTag::Equal => "=",
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
        };
        lines.push(DiffLine {
            op,
            text: change.value().trim_end_matches('\n').to_string(),
        });
    }
    (lines, truncated)
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    from: u64,
    /// A version, or absent for the live one.
    to: Option<u64>,
}

async fn diff(State(ctx): State<DashboardContext>, Query(q): Query<DiffQuery>) -> Response {
    let live = ctx.engine.policy().version.as_ref().map(|v| v.version);
    let Some(to) = q.to.or(live) else {
        return bad_request("no live policy to compare with");
    };
    let (Some(from_src), Some(to_src)) = (source_of(&ctx, q.from), source_of(&ctx, to)) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "a version is not in the history"})),
        )
            .into_response();
    };
    let (lines, truncated) = line_diff(&from_src.text, &to_src.text);
    Json(json!({"from": q.from, "to": to, "lines": lines, "truncated": truncated})).into_response()
}

// === explain and dry run ===

async fn explain_handler(State(ctx): State<DashboardContext>, body: Bytes) -> Response {
    let request: ExplainRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid explain request: {e}")),
    };
    match explain(ctx.engine.shared(), &ctx.dashboard.explain, request).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => bad_request(e),
    }
}

/// Body of `POST /dashboard/api/policy/dry-run`.
#[derive(Debug, Deserialize)]
struct DryRun {
    format: Option<String>,
    source: String,
    /// RLS samples (`policy test --request` JSON objects) to evaluate.
    #[serde(default)]
    samples: Vec<Value>,
}

/// Compiles a pasted policy, evaluates samples against it (private counters, as
/// `policy test` does) and diffs it with the live policy. Nothing is applied.
async fn dry_run(State(ctx): State<DashboardContext>, body: Bytes) -> Response {
    let req: DryRun = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid JSON body: {e}")),
    };
    if req.samples.len() > 100 {
        return bad_request("at most 100 samples per dry run");
    }
    let format = match req.format.as_deref().map(PolicyFormat::parse) {
        None => PolicyFormat::Quorate,
        Some(Ok(f)) => f,
        Some(Err(e)) => return bad_request(e.to_string()),
    };
    let source = PolicySource {
        format,
        text: req.source,
    };
    let live_text = ctx
        .engine
        .policy()
        .version
        .as_ref()
        .map(|v| v.source.text.clone())
        .unwrap_or_default();
    let (diff, truncated) = line_diff(&live_text, &source.text);
    let policy = match PolicySet::compile(&source) {
        Ok(p) => p,
        Err(e) => {
            return Json(json!({
                "valid": false,
                "error": {"file": e.file, "line": e.line, "reason": e.reason},
                "diff": diff,
                "truncated": truncated,
            }))
            .into_response()
        }
    };
    let mut samples = Vec::new();
    for (i, s) in req.samples.iter().enumerate() {
        match crate::decide::simulate::parse_sample(&s.to_string()) {
            Ok(s) => samples.push(s),
            Err(e) => return bad_request(format!("samples[{i}]: {e}")),
        }
    }
    let reports = crate::decide::simulate::simulate(&policy, &samples);
    Json(json!({
        "valid": true,
        "domains": policy.domains.keys().collect::<Vec<_>>(),
        "limits": policy.limits.len(),
        "routes": policy.authz.routes.len(),
        "requests": reports,
        "diff": diff,
        "truncated": truncated,
    }))
    .into_response()
}

// === the live stream ===

/// Releases an SSE slot when the stream ends (the client went away).
struct StreamSlot(DashboardContext);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.dashboard.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /dashboard/api/events`: one `tick` event a second with the newest traffic
/// second, the cluster view, the hot keys and the live policy version.
async fn events(State(ctx): State<DashboardContext>) -> Response {
    let open = ctx.dashboard.streams.fetch_add(1, Ordering::SeqCst);
    let slot = StreamSlot(ctx.clone());
    if open >= MAX_STREAMS {
        drop(slot);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("at most {MAX_STREAMS} live dashboards per node")})),
        )
            .into_response();
    }
    Sse::new(tick_stream(slot))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn tick_stream(slot: StreamSlot) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (slot, tokio::time::interval(Duration::from_secs(1))),
        |(slot, mut interval)| async move {
            interval.tick().await;
            let ctx = &slot.0;
            let cluster = cluster_view(ctx).await;
            let data = json!({
                "traffic": ctx.metrics.traffic.view_last(1),
                "cluster": &*cluster,
                "hotkeys": ctx.metrics.hot_keys.view(10),
                "policy_version": ctx.engine.policy().version.as_ref().map(|v| v.version),
            });
            let event = Event::default().event("tick").data(data.to_string());
            Some((Ok(event), (slot, interval)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_changed_lines_and_is_bounded() {
        let (lines, truncated) = line_diff("a\nb\nc\n", "a\nB\nc\n");
        assert!(!truncated);
        let ops: Vec<&str> = lines.iter().map(|l| l.op).collect();
        assert_eq!(ops, ["=", "-", "+", "="]);
        assert_eq!(lines[1].text, "b");
        let big: String = (0..MAX_DIFF_LINES * 2).map(|i| format!("{i}\n")).collect();
        let (lines, truncated) = line_diff("", &big);
        assert!(truncated);
        assert_eq!(lines.len(), MAX_DIFF_LINES);
    }
}
