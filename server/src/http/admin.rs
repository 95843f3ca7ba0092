//! The admin API (`/admin/v1/...`): cluster membership and policy, as JSON over HTTP.
//!
//! Every call needs `Authorization: Bearer <admin token>`, wherever it comes from: the
//! caller's address proves nothing (a sidecar or port-forward makes everyone look local).
//! A node without a configured token generates one into `<data-dir>/admin-token` at first
//! start. Writes go to the leader: a follower forwards them over the authenticated peer
//! channel (the `Admin` peer RPC, never the bearer token) and returns the leader's answer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::context::NodeContext;
use crate::error::ErrorKind;
use crate::policy::{PolicyFormat, PolicySet, PolicySource};
use crate::raft::peer_auth::peer_client;
use crate::raft::typ::{ClientWriteError, RaftError};
use crate::raft::{Command, CommandResponse, Node, NodeId};

/// A learner may be promoted only when it trails the leader by at most this many entries.
const MAX_PROMOTE_LAG: u64 = 1_000;

/// Largest admin request body (a policy document).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Writes that only the leader can make; a follower forwards them.
fn leader_writes(ctx: NodeContext) -> Router<NodeContext> {
    Router::new()
        .route("/cluster/learners", post(add_learner))
        .route("/cluster/promote", post(promote))
        .route("/cluster/remove", post(remove))
        .route("/policy", put(put_policy))
        .route("/policy/rollback", post(rollback))
        .layer(middleware::from_fn_with_state(ctx, forward_to_leader))
}

/// The admin calls a follower may forward over the peer channel: leader writes only, at
/// their paths under `/admin/v1`. The peer listener already authenticated the caller as a
/// cluster member.
pub fn peer_router(ctx: NodeContext) -> Router {
    leader_writes(ctx.clone()).with_state(ctx)
}

pub fn router(ctx: NodeContext) -> Router<NodeContext> {
    let leader_writes = leader_writes(ctx.clone());
    Router::new()
        .route("/cluster/init", post(init))
        .route("/cluster/status", get(status))
        .route("/policy", get(get_policy))
        .route("/policy/history", get(history))
        .route("/cluster/snapshot", post(snapshot))
        .merge(leader_writes)
        .layer(middleware::from_fn_with_state(ctx, authorize))
}

/// An admin error: status and a JSON body `{"error": ..., "line": ...}`.
#[derive(Debug)]
pub struct AdminError {
    kind: ErrorKind,
    message: String,
    line: Option<usize>,
    leader_http: Option<SocketAddr>,
}

impl AdminError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> AdminError {
        AdminError {
            kind,
            message: message.into(),
            line: None,
            leader_http: None,
        }
    }
}

/// The JSON body of every admin error.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_http: Option<SocketAddr>,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            line: self.line,
            leader_http: self.leader_http,
        };
        (self.kind.http_status(), Json(body)).into_response()
    }
}

fn raft_error<E: std::fmt::Display>(e: RaftError<E>) -> AdminError {
    AdminError::new(ErrorKind::Internal, e.to_string())
}

fn write_error(e: RaftError<ClientWriteError>) -> AdminError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError {
            kind: ErrorKind::Unavailable,
            message: "this node is not the leader; retry at the leader".into(),
            line: None,
            leader_http: f.leader_node.map(|n| n.http),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            AdminError::new(ErrorKind::Conflict, c.to_string())
        }
        other => AdminError::new(ErrorKind::Internal, other.to_string()),
    }
}

// === authorization ===

/// Admits a call only with the admin token, compared in constant time. The caller's
/// address is never a credential.
pub(crate) async fn authorize(
    State(ctx): State<NodeContext>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.as_bytes().ct_eq(ctx.admin_token.as_bytes())));
    if !allowed {
        return AdminError::new(
            ErrorKind::Unauthenticated,
            "admin calls need `Authorization: Bearer <admin token>` (the CLI reads it from \
             --admin-token-file, QUORATE_ADMIN_TOKEN, or ./quorate-data/admin-token)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Reads the admin token a node keeps in `<data_dir>/admin-token`, generating a random
/// one (mode 0600) on first start. Logs the file's path, never the token.
pub fn load_or_generate_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(crate::config::ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(text.trim().to_string());
        }
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is empty; delete it to have a new admin token generated",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    tracing::info!(
        path = %path.display(),
        "generated an admin token (the CLI reads it with --admin-token-file)"
    );
    Ok(token)
}

// === forwarding writes to the leader ===

/// Marks a call that a follower forwarded over the peer channel (a request extension, so
/// no HTTP caller can set it).
#[derive(Debug, Clone, Copy)]
struct ForwardedByPeer;

/// An admin write a follower forwards to the leader (the `Admin` peer RPC's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedAdmin {
    pub method: String,
    /// The path under `/admin/v1` (e.g. `/policy`).
    pub path: String,
    pub body: Vec<u8>,
}

/// The leader's answer to a [`ForwardedAdmin`]: the HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How long a follower waits for the leader to answer a forwarded admin write (adding a
/// learner waits for it to catch up).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

/// The longest path a forwarded admin call may name.
const MAX_FORWARDED_PATH: usize = 256;

/// On a follower, sends the call to the leader over the peer channel and relays its
/// answer; on the leader, or for a call a follower already forwarded, handles it here.
async fn forward_to_leader(
    State(ctx): State<NodeContext>,
    request: Request,
    next: Next,
) -> Response {
    let leadership = ctx.engine.leadership();
    if leadership.is_leader() || request.extensions().get::<ForwardedByPeer>().is_some() {
        // Already forwarded once: let raft answer, with a leader hint if it moved again.
        return next.run(request).await;
    }
    let Some(leader) = leadership.leader_node() else {
        return AdminError::new(ErrorKind::Unavailable, "no leader elected yet").into_response();
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return AdminError::new(ErrorKind::TooLarge, e.to_string()).into_response(),
    };
    // Inside the `/admin/v1` nest the URI is already relative to it.
    let call = ForwardedAdmin {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        body: body.to_vec(),
    };
    let failed = |message: String| {
        AdminError {
            kind: ErrorKind::BadGateway,
            message: format!("forwarding to the leader failed: {message}"),
            line: None,
            leader_http: Some(leader.http),
        }
        .into_response()
    };
    let mut client = match peer_client(leader.peer, &ctx.peer_auth) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    let data = match postcard::to_stdvec(&call) {
        Ok(d) => d,
        Err(e) => return failed(e.to_string()),
    };
    let mut rpc = tonic::Request::new(quorate_proto::raft::RaftPayload { data: data.into() });
    rpc.set_timeout(FORWARD_TIMEOUT);
    let reply: AdminReply = match client.admin(rpc).await {
        Ok(r) => match postcard::from_bytes(&r.into_inner().data) {
            Ok(reply) => reply,
            Err(e) => return failed(format!("undecodable answer: {e}")),
        },
        Err(status) => return failed(status.message().to_string()),
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response()
}

/// The admin API's peer RPC (the node registers it with the peer service): a follower's
/// forwarded write, decoded as hostile and run through [`peer_router`].
pub fn admin_handler(router: Router) -> crate::raft::peer::PeerHandler {
    std::sync::Arc::new(move |data| {
        let router = router.clone();
        Box::pin(async move {
            let call: ForwardedAdmin = crate::raft::peer::decode_payload(&data)?;
            let reply = serve_forwarded(&router, call).await;
            crate::raft::peer::encode_payload(&reply)
        })
    })
}

/// Runs an admin write a follower forwarded, through [`peer_router`].
pub async fn serve_forwarded(router: &Router, call: ForwardedAdmin) -> AdminReply {
    let refuse = |kind: ErrorKind, error: String| AdminReply {
        status: kind.codes().1,
        body: serde_json::to_vec(&ErrorBody {
            error,
            line: None,
            leader_http: None,
        })
        .unwrap_or_default(),
    };
    if call.path.len() > MAX_FORWARDED_PATH || call.body.len() > MAX_BODY {
        return refuse(
            ErrorKind::InvalidArgument,
            "forwarded admin call too large".into(),
        );
    }
    let Ok(method) = axum::http::Method::from_bytes(call.method.as_bytes()) else {
        return refuse(ErrorKind::InvalidArgument, "invalid method".into());
    };
    let request = Request::builder()
        .method(method)
        .uri(&call.path)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .extension(ForwardedByPeer)
        .body(Body::from(call.body));
    let request = match request {
        Ok(r) => r,
        Err(e) => return refuse(ErrorKind::InvalidArgument, format!("invalid call: {e}")),
    };
    let response = match tower::ServiceExt::oneshot(router.clone(), request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), MAX_BODY)
        .await
        .unwrap_or_default();
    AdminReply {
        status,
        body: body.to_vec(),
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, AdminError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| AdminError::new(ErrorKind::InvalidArgument, e.to_string()));
    }
    serde_json::from_slice(body).map_err(|e| {
        AdminError::new(
            ErrorKind::InvalidArgument,
            format!("invalid JSON body: {e}"),
        )
    })
}

// === cluster ===

/// `POST /cluster/init`: make this (uninitialized) node a one-member cluster.
async fn init(State(ctx): State<NodeContext>) -> Result<Json<serde_json::Value>, AdminError> {
    let initialized = ctx
        .raft
        .is_initialized()
        .await
        .map_err(|e| AdminError::new(ErrorKind::Internal, e.to_string()))?;
    if initialized {
        return Err(AdminError::new(
            ErrorKind::Conflict,
            "this node is already part of an initialized cluster",
        ));
    }
    ctx.raft
        .initialize(BTreeMap::from([(ctx.id, ctx.node)]))
        .await
        .map_err(raft_error)?;
    Ok(Json(serde_json::json!({ "initialized": ctx.id })))
}

/// Body of `POST /cluster/learners`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddLearner {
    pub id: NodeId,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub peer: SocketAddr,
}

async fn add_learner(State(ctx): State<NodeContext>, body: Bytes) -> Result<Response, AdminError> {
    let req: AddLearner = parse_json(&body)?;
    let node = Node {
        grpc: req.grpc,
        http: req.http,
        peer: req.peer,
    };
    let resp = ctx
        .raft
        .add_learner(req.id, node, true)
        .await
        .map_err(write_error)?;
    // openraft's blocking add returns once the learner is within its lag threshold
    // (thousands of entries), possibly before it holds anything. Wait until it holds the
    // log up to its own membership entry, so that `promote` may follow at once.
    let (id, added_at) = (req.id, resp.log_id.index);
    ctx.raft
        .wait(Some(LEARNER_CATCH_UP))
        .metrics(
            move |m| matched_index(m, id).is_some_and(|i| i >= added_at),
            "learner caught up",
        )
        .await
        .map_err(|e| {
            AdminError::new(
                ErrorKind::Timeout,
                format!(
                    "node {id} was added as a learner but has not caught up yet ({e}); \
                     watch `cluster status` and promote it once its lag is small"
                ),
            )
        })?;
    Ok(
        Json(serde_json::json!({ "added_learner": req.id, "log_index": resp.log_id.index }))
            .into_response(),
    )
}

/// How long `POST /cluster/learners` waits for the new learner to catch up.
const LEARNER_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// The last log index the leader knows member `id` holds (`None`: not replicating to it,
/// or nothing matched yet).
fn matched_index(m: &crate::raft::typ::RaftMetrics, id: NodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned())
        .flatten()
        .map(|l| l.index)
}

/// Body of `POST /cluster/promote` and `POST /cluster/remove`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberId {
    pub id: NodeId,
}

async fn promote(State(ctx): State<NodeContext>, body: Bytes) -> Result<Response, AdminError> {
    let req: MemberId = parse_json(&body)?;
    // A lagging learner would stall commits once it counts toward the quorum. Raft's own
    // metrics, not the engine's cached copy: a learner added a moment ago must show.
    {
        let m = ctx.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let matched = matched_index(&m, req.id);
        match matched {
            None => {
                return Err(AdminError::new(
                    ErrorKind::Conflict,
                    format!(
                        "node {} is not a learner replicating from this leader; add it first",
                        req.id
                    ),
                ))
            }
            Some(i) if last.saturating_sub(i) > MAX_PROMOTE_LAG => {
                return Err(AdminError::new(
                    ErrorKind::Conflict,
                    format!(
                        "learner {} lags {} entries behind; promote it once it has caught up",
                        req.id,
                        last - i
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let resp = ctx
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
        .await
        .map_err(write_error)?;
    Ok(
        Json(serde_json::json!({ "promoted": req.id, "log_index": resp.log_id.index }))
            .into_response(),
    )
}

async fn remove(State(ctx): State<NodeContext>, body: Bytes) -> Result<Response, AdminError> {
    let req: MemberId = parse_json(&body)?;
    let ids = BTreeSet::from([req.id]);
    let membership = ctx.raft.metrics().borrow().membership_config.clone();
    if membership.membership().voter_ids().any(|v| v == req.id) {
        ctx.raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(write_error)?;
    }
    let resp = ctx
        .raft
        .change_membership(ChangeMembers::RemoveNodes(ids), false)
        .await
        .map_err(write_error)?;
    Ok(
        Json(serde_json::json!({ "removed": req.id, "log_index": resp.log_id.index }))
            .into_response(),
    )
}

/// One member in `GET /cluster/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub voter: bool,
    /// The last log index the leader knows this member holds (leader's view only).
    pub matched_index: Option<u64>,
    /// How many entries it trails the leader's log by (leader's view only).
    pub lag: Option<u64>,
}

/// The body of `GET /cluster/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// The last log index removed by compaction: older entries live only in the snapshot,
    /// so a member that needs them gets the snapshot instead.
    pub purged_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub policy_version: Option<u64>,
    pub counters: usize,
}

async fn status(State(ctx): State<NodeContext>) -> Json<ClusterStatus> {
    let m = ctx.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned())
                .map(|l| l.map_or(0, |l| l.index));
            MemberStatus {
                id: *id,
                grpc: node.grpc,
                http: node.http,
                peer: node.peer,
                voter: voters.contains(id),
                matched_index: matched,
                lag: matched.map(|i| last.saturating_sub(i)),
            }
        })
        .collect();
    Json(ClusterStatus {
        id: ctx.id,
        state: format!("{:?}", m.state),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        members,
        policy_version: ctx.engine.policy().version.as_ref().map(|v| v.version),
        counters: ctx.engine.shared().counters.load().len(),
    })
}

// === policy ===

/// The live policy as `GET /policy` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyView {
    pub version: Option<u64>,
    pub format: Option<String>,
    pub source: Option<String>,
    pub applied_at_ms: Option<u64>,
    pub rollback_of: Option<u64>,
    pub limits: Vec<String>,
    /// Hex SHA-256 of `source`: nodes that each apply the policy file (stateless mode,
    /// `--store`) have their own version numbers, so operators compare this instead.
    pub sha256: Option<String>,
}

async fn get_policy(State(ctx): State<NodeContext>) -> Json<PolicyView> {
    let live = ctx.engine.policy();
    Json(PolicyView {
        version: live.version.as_ref().map(|v| v.version),
        format: live
            .version
            .as_ref()
            .map(|v| v.source.format.as_str().to_string()),
        source: live.version.as_ref().map(|v| v.source.text.clone()),
        applied_at_ms: live.version.as_ref().map(|v| v.applied_at / 1_000_000),
        rollback_of: live.version.as_ref().and_then(|v| v.rollback_of),
        limits: live.set.limits.keys().cloned().collect(),
        sha256: live.version.as_ref().map(|v| {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(v.source.text.as_bytes());
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }),
    })
}

/// Body of `PUT /policy`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutPolicy {
    #[serde(default = "default_format")]
    pub format: String,
    pub source: String,
}

fn default_format() -> String {
    PolicyFormat::Quorate.as_str().to_string()
}

async fn put_policy(State(ctx): State<NodeContext>, body: Bytes) -> Result<Response, AdminError> {
    let req: PutPolicy = parse_json(&body)?;
    // Validate before anything is proposed: a bad policy never reaches the log.
    let format = PolicyFormat::parse(&req.format)
        .map_err(|e| AdminError::new(ErrorKind::Unprocessable, e.to_string()))?;
    let source = PolicySource {
        format,
        text: req.source.clone(),
    };
    let set = match PolicySet::compile(&source) {
        Ok(set) => set,
        Err(e) => {
            return Err(AdminError {
                kind: ErrorKind::Unprocessable,
                message: e.to_string(),
                line: e.line,
                leader_http: None,
            })
        }
    };
    ctx.engine
        .accepts(&set)
        .map_err(|message| AdminError::new(ErrorKind::Unprocessable, message))?;
    let resp = ctx
        .raft
        .client_write(Command::SetPolicy {
            ts: crate::engine::wall_nanos(),
            format: req.format,
            source: req.source,
        })
        .await
        .map_err(write_error)?;
    if let CommandResponse::Policy(Ok(version)) = &resp.data {
        ctx.policy_notes
            .note_policy(*version, crate::policy_notes::PolicyOrigin::Admin);
    }
    policy_response(resp.data)
}

/// `POST /cluster/snapshot`: builds a snapshot on this node now and waits (up to 30 s)
/// until it covers everything applied when asked.
async fn snapshot(State(ctx): State<NodeContext>) -> Result<Json<serde_json::Value>, AdminError> {
    let applied = ctx
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    ctx.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| AdminError::new(ErrorKind::Internal, e.to_string()))?;
    let m = ctx
        .raft
        .wait(Some(std::time::Duration::from_secs(30)))
        .metrics(
            move |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "snapshot built",
        )
        .await
        .map_err(|e| AdminError::new(ErrorKind::Timeout, e.to_string()))?;
    Ok(Json(serde_json::json!({
        "node": ctx.id,
        "snapshot_index": m.snapshot.map(|s| s.index),
    })))
}

fn policy_response(data: CommandResponse) -> Result<Response, AdminError> {
    match data {
        CommandResponse::Policy(Ok(version)) => {
            Ok(Json(serde_json::json!({ "version": version })).into_response())
        }
        CommandResponse::Policy(Err(e)) => Err(AdminError::new(ErrorKind::Unprocessable, e)),
        other => Err(AdminError::new(
            ErrorKind::Internal,
            format!("unexpected response {other:?}"),
        )),
    }
}

/// Body of `POST /policy/rollback`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Rollback {
    pub version: u64,
}

async fn rollback(State(ctx): State<NodeContext>, body: Bytes) -> Result<Response, AdminError> {
    let req: Rollback = parse_json(&body)?;
    let resp = ctx
        .raft
        .client_write(Command::RollbackPolicy {
            ts: crate::engine::wall_nanos(),
            version: req.version,
        })
        .await
        .map_err(write_error)?;
    policy_response(resp.data)
}

/// One entry of `GET /policy/history`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub format: String,
    pub applied_at_ms: u64,
    pub rollback_of: Option<u64>,
}

async fn history(State(ctx): State<NodeContext>) -> Json<Vec<HistoryEntry>> {
    Json(
        ctx.engine
            .shared()
            .policy_history()
            .into_iter()
            .map(|v| HistoryEntry {
                version: v.version,
                format: v.source.format.as_str().to_string(),
                applied_at_ms: v.applied_at / 1_000_000,
                rollback_of: v.rollback_of,
            })
            .collect(),
    )
}
