//! The end-to-end harness: real `quorate` processes over real sockets.
//!
//! Every test starts its own nodes as child processes, each with a fresh temporary data
//! directory and its own free ports, and talks to them the way users do: gRPC `Check`
//! on the decision port, JSON on the admin port, the `quorate` CLI.
//!
//! # Tour
//! - [`bin`] finds the `quorate` binary under test (building it once per test process
//!   with cargo, so the tests never run a stale binary; `QUORATE_BIN` overrides).
//! - [`node`]: one node process ([`TestNode`]): start, wait until ready (polling with a
//!   deadline), `kill -9`, restart on the same data dir and ports. Its stdout and stderr
//!   go to files in its directory, printed when a test fails.
//! - [`cluster`]: a group of nodes ([`Cluster`]): a single node, or three formed through
//!   the admin API (node 1 bootstraps, the others start with `--join` and are added as
//!   learners, then promoted), leader discovery through `/admin/v1/cluster/status`.
//! - [`net`]: a fault-injecting TCP proxy in front of each node's peer port, so a test can
//!   cut a node off from its peers (both directions) while still reaching it directly.
//! - [`load`]: concurrent clients on every node, tallied around a leader kill.
//! - [`certs`]: test CAs and certificates made in the test (rcgen), and the certificate
//!   a TLS port presents.
//! - [`api`]: gRPC `Check` helpers, the admin status document, and [`eventually`], the
//!   one way tests wait: poll a condition until a deadline, never sleep and hope.
//!
//! Every child process is killed when its [`TestNode`] drops, so no node outlives a test,
//! passed or failed.

// Test support: a failed expectation is a test failure, reported with its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod bin;
pub mod certs;
pub mod cluster;
pub mod load;
pub mod net;
pub mod node;

pub use api::{eventually, hit, Check, Member, Status};
pub use cluster::Cluster;
pub use load::{FailoverLoad, Tally};
pub use net::Net;
pub use node::{NodeOptions, TestNode, ADMIN_TOKEN, CLUSTER_SECRET};
pub use quorate_proto::v1 as pb;

/// A policy document with the given limits, each written as
/// `(name, algorithm, limit, window, consistency)`; the window is long so that counters
/// neither reset nor expire while a test runs.
pub fn policy(limits: &[(&str, &str, u64, &str)]) -> String {
    let mut text = String::from("limits:\n");
    for (name, algorithm, limit, consistency) in limits {
        text.push_str(&format!(
            "  - name: {name}\n    algorithm: {algorithm}\n    limit: {limit}\n    window: {LONG_WINDOW}\n    consistency: {consistency}\n"
        ));
    }
    text
}

/// The window tests use for counters that must not reset during a test. Fixed windows are
/// aligned to the Unix epoch, so a short one could roll over mid-test; a 365-day window
/// rolls over once a year.
pub const LONG_WINDOW: &str = "365d";
