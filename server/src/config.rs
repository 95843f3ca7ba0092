//! A node's configuration, typed and parsed once at startup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::engine::BatchSettings;
use crate::raft::peer_auth::PeerAuth;
use crate::raft::NodeId;

/// Default gRPC listen address: the port envoyproxy/ratelimit and Limitador use.
pub const DEFAULT_GRPC: &str = "127.0.0.1:8081";
/// Default HTTP listen address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default peer listen address (Raft and forwarding between members), loopback only.
pub const DEFAULT_PEER: &str = "127.0.0.1:8071";
/// Environment variable holding the admin bearer token.
pub const ENV_ADMIN_TOKEN: &str = "QUORATE_ADMIN_TOKEN";
/// Environment variable naming a file that holds the admin bearer token.
pub const ENV_ADMIN_TOKEN_FILE: &str = "QUORATE_ADMIN_TOKEN_FILE";
/// Environment variable naming the file that holds the cluster secret.
pub const ENV_CLUSTER_SECRET_FILE: &str = "QUORATE_CLUSTER_SECRET_FILE";
/// The file inside the data directory where a node keeps the admin token it generated.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Default cap on one snapshot received from a peer, in bytes.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 512 * 1024 * 1024;

/// How often `--policy FILE` is read for changes (hot reload).
pub const POLICY_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Everything one node needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// Where peers and clients reach this node's gRPC port (defaults to the bound address).
    pub advertise_grpc: Option<SocketAddr>,
    /// Where peers and the CLI reach this node's HTTP port (defaults to the bound address).
    pub advertise_http: Option<SocketAddr>,
    /// Where peers reach this node's peer port (defaults to the bound address).
    pub advertise_peer: Option<SocketAddr>,
    /// How peers prove they belong to the cluster.
    pub peer_auth: PeerAuth,
    /// The largest snapshot accepted from a peer, in bytes.
    pub max_snapshot_bytes: u64,
    pub data_dir: PathBuf,
    /// A policy file to make live at startup (else the live one, else the example), and
    /// to keep live: its changes are applied while this node leads.
    pub policy_file: Option<PathBuf>,
    /// How often the policy file is re-read.
    pub policy_watch_interval: Duration,
    /// Initialize a single-node cluster on a fresh data dir. Off for nodes that will join
    /// a cluster (`--join`).
    pub bootstrap: bool,
    /// Bearer token for admin calls. Without one, the node uses the token kept in
    /// `<data_dir>/admin-token`, generating it on first start.
    pub admin_token: Option<String>,
    pub raft: RaftTiming,
    pub batch: BatchSettings,
    /// TLS on the public gRPC and HTTP ports (`--tls-cert`, `--tls-key`, `--client-ca`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// How often the certificate files are re-read.
    pub tls_watch_interval: Duration,
    /// Stateless mode (`--store redis://…`): counters in this Redis, not in Raft.
    pub redis: Option<quorate_redis::RedisStore>,
    /// Load shedding and the request timeout on the decision surfaces.
    pub overload: crate::overload::OverloadSettings,
}

/// Raft timing and compaction.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(450),
            snapshot_every: 20_000,
        }
    }
}

impl Config {
    /// A single-node configuration with defaults, keeping data in `data_dir`.
    pub fn single_node(data_dir: PathBuf) -> Config {
        Config {
            id: 1,
            advertise_grpc: None,
            advertise_http: None,
            advertise_peer: None,
            peer_auth: PeerAuth::Unauthenticated,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            data_dir,
            policy_file: None,
            policy_watch_interval: POLICY_WATCH_INTERVAL,
            bootstrap: true,
            admin_token: None,
            raft: RaftTiming::default(),
            batch: BatchSettings::default(),
            tls: None,
            tls_watch_interval: crate::tls::WATCH_INTERVAL,
            redis: None,
            overload: crate::overload::OverloadSettings::default(),
        }
    }
}
