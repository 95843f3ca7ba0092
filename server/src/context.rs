//! The handles the HTTP surfaces, the dashboard and the policy-file watcher share: built
//! by [`crate::node::run`], passed down as axum state. It lives apart from `node` so those
//! modules depend on this list of handles, not on the module that assembles the node.

use std::sync::Arc;

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::raft::typ::Raft;
use crate::raft::Node;

/// Shared handles the HTTP surfaces need.
#[derive(Clone)]
pub struct NodeContext {
    pub id: u64,
    pub node: Node,
    pub raft: Raft,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// A handle on the Raft log store, for its fsync count on `/metrics`.
    pub log_store: crate::raft::LogStore,
    /// The bearer token every admin call needs.
    pub admin_token: String,
    /// This node's peer credentials (admin writes are forwarded over the peer channel).
    pub peer_auth: crate::raft::peer_auth::PeerAuth,
    /// Outbound HTTP (the dashboard asks every member for its own view).
    pub http: reqwest::Client,
    /// Authorization decisions (ext_authz and forward-auth).
    pub authz: Arc<crate::decide::authz::Authorizer>,
    /// How each policy version became live (written by whoever proposed it, shown on
    /// the dashboard).
    pub policy_notes: Arc<crate::policy_notes::PolicyNotes>,
    /// Envoy RLQS (the dashboard shows its buckets and shares).
    pub rlqs: Arc<crate::grpc::rlqs::Rlqs>,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("id", &self.id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}
