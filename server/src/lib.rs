//! quorate-server: one quorate node.
//!
//! A node runs a Raft replica whose state machine holds every counter and the live
//! policy, and answers decision requests over gRPC and HTTP.
//!
//! # Tour
//! - [`node::run`] assembles a node from a [`config::Config`] and bound listeners.
//! - [`engine`]: the decision path — resolve limits, group-commit hits through Raft
//!   (strict) or decide at the leader (fast), forward from followers.
//! - [`raft`]: openraft types, the durable log, the state machine, the peer network.
//! - [`policy`]: the replicated, versioned policy document.
//! - [`grpc`] and [`http`]: thin adapters from the wire to the engine; [`error`] maps
//!   engine errors to wire errors once.
//! - [`decision`]: the authorization decision (authenticate → authorize → limits →
//!   check), over [`authz`] (identities, consumers, routes, JWT/JWKS).
//! - [`tls`]: certificates for the listeners and peers, reloaded when their files change.
//! - [`cli`] and [`ops`]: the `quorate` command line.

pub mod authz;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod decision;
pub mod engine;
pub mod error;
pub mod file_watch;
pub mod grpc;
pub mod headers;
pub mod http;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod overload;
pub mod policy;
pub mod policy_watch;
pub mod raft;
pub mod tls;
