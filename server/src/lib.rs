//! quorate-server: one quorate node.
//!
//! A node runs a Raft replica whose state machine holds every counter and the live
//! policy, and answers decision requests over gRPC and HTTP.
//!
//! # Tour
//! - [`node::run`] assembles a node from a [`config::Config`] and bound listeners.
//! - [`engine`]: hits → decisions — group-commit hits through Raft (strict) or decide at
//!   the leader (fast), forward from followers; one propose loop.
//! - [`raft`]: openraft types, the durable log, the state machine, the peer network.
//! - [`policy`]: the replicated, versioned policy document (the `quorate-policy` crate).
//! - [`decide`]: every decision, one module per request kind (RLS, authorization, named
//!   hits), over a [`decide::Counter`]; shadow mode, headers and retry-after once.
//! - [`grpc`] and [`http`]: thin adapters, decode → [`decide`] → encode; [`error`] maps
//!   errors to wire errors once.
//! - [`authz`]: credentials, JWT/JWKS, client addresses — what [`decide::authz`] runs
//!   with the policy's routes and identities.
//! - [`context`]: the handles the HTTP surfaces, the dashboard and the policy watcher
//!   share; [`policy_notes`]: how each policy version became live; [`bounds`]: request
//!   caps; [`metrics`]: Prometheus and the dashboard's traffic.
//! - See `docs/architecture.md` for the layers and the path of a decision.
//! - [`tls`]: certificates for the listeners and peers, reloaded when their files change.
//! - [`quota`]: sharing a global limit among Envoy proxies (RLQS), pure.
//! - [`cli`] and [`ops`]: the `quorate` command line.

pub mod authz;
pub mod bounds;
pub mod cli;
pub mod config;
pub mod context;
pub mod dashboard;
pub mod decide;
pub mod engine;
pub mod error;
pub mod file_watch;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod node;
pub mod ops;
/// The policy model, its own crate (`policy/`): the server uses it, it cannot use the
/// server.
pub use quorate_policy as policy;
pub mod overload;
pub mod policy_notes;
pub mod policy_watch;
pub mod quota;
pub mod raft;
pub mod tls;
