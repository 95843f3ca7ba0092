//! The `quorate` command line: `serve`, and the operator commands that talk to a node's
//! admin API (`cluster ...`, `policy ...`) or decision API (`check`).
//!
//! The client commands print for people by default and JSON with `--output json`, and end
//! with an exit code a script can branch on ([`EXIT_CODES`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use anyhow::Context;

use crate::config::{
    Config, RaftTiming, ADMIN_TOKEN_FILE, DEFAULT_GRPC, DEFAULT_HTTP, DEFAULT_MAX_SNAPSHOT_BYTES,
    DEFAULT_PEER, ENV_ADMIN_TOKEN, ENV_ADMIN_TOKEN_FILE, ENV_CLUSTER_SECRET_FILE,
};
use crate::engine::BatchSettings;
use crate::raft::peer_auth::{ClusterSecret, PeerAuth};
use crate::tls::{Role, Tls, TlsFiles};

/// The exit codes of the client commands, as `--help` shows them (the code's source of
/// truth is `ops::Exit`).
pub const EXIT_CODES: &str = "\
Exit codes (check, cluster, policy):
  0  allowed / done
  1  denied (check only)
  2  usage: bad flags or arguments
  3  unavailable: no node reachable, no leader, or the call timed out
  4  rejected: invalid argument, unknown limit, invalid policy, conflict, unreadable file
  5  unauthenticated: the admin token is missing or wrong
  6  any other failure (an internal error on the node, an unexpected answer)";

#[derive(Debug, Parser)]
#[command(
    name = "quorate",
    version,
    about = "Replicated rate limiting and authorization for gateways",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// How client commands print their result: `human` (default) or `json` (one JSON
    /// document on stdout, for scripts; errors too, as {"error": {...}}).
    #[arg(long, global = true, value_enum, default_value_t = Output::Human, env = "QUORATE_OUTPUT")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Human,
    /// One JSON document on stdout.
    Json,
}

/// Where the client commands find the cluster when neither `--endpoints` nor
/// `QUORATE_ENDPOINTS` is given.
pub const ENV_ENDPOINTS: &str = "QUORATE_ENDPOINTS";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node. With no flags: a single-node cluster on 127.0.0.1:8081 (gRPC),
    /// 127.0.0.1:8080 (HTTP) and 127.0.0.1:8071 (peers), data in ./quorate-data, the
    /// built-in example policy, an admin token generated into ./quorate-data/admin-token.
    Serve(Box<ServeArgs>),
    /// Manage cluster membership (talks to any node's HTTP admin API).
    #[command(subcommand, after_help = EXIT_CODES)]
    Cluster(ClusterCommand),
    /// Manage the live policy.
    #[command(subcommand, after_help = EXIT_CODES)]
    Policy(PolicyCommand),
    /// Ask for one decision through the gRPC API (exit code 0 allowed, 1 denied).
    #[command(after_help = EXIT_CODES)]
    Check(CheckArgs),
    /// Print a shell completion script: `quorate completions bash > /etc/bash_completion.d/quorate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
// Any peer TLS flag needs all three files: a node with half a TLS setup would neither
// authenticate nor be reachable.
#[command(group(
    clap::ArgGroup::new("peer_tls")
        .args(["peer_tls_cert", "peer_tls_key", "peer_ca", "peer_server_name"])
        .multiple(true)
        .requires_all(["peer_tls_cert", "peer_tls_key", "peer_ca"])
))]
pub struct ServeArgs {
    /// This node's id in the cluster (unique, > 0).
    #[arg(long, default_value_t = 1, env = "QUORATE_NODE_ID")]
    pub id: u64,
    /// Public gRPC listen address (decisions, RLS, ext_authz, health, reflection).
    #[arg(long, default_value = DEFAULT_GRPC, env = "QUORATE_GRPC")]
    pub grpc: SocketAddr,
    /// HTTP listen address (admin, metrics, forward-auth).
    #[arg(long, default_value = DEFAULT_HTTP, env = "QUORATE_HTTP")]
    pub http: SocketAddr,
    /// Peer listen address: Raft and forwarding between members, nothing else. Off
    /// loopback it needs peer authentication (`--cluster-secret-file`).
    #[arg(long, default_value = DEFAULT_PEER, env = "QUORATE_PEER")]
    pub peer: SocketAddr,
    /// gRPC address clients are sent to as a leader hint (default: the bound address).
    #[arg(long)]
    pub advertise_grpc: Option<SocketAddr>,
    /// HTTP address the CLI is sent to as a leader hint (default: the bound address).
    #[arg(long)]
    pub advertise_http: Option<SocketAddr>,
    /// Peer address other members use to reach this node (default: the bound address).
    #[arg(long)]
    pub advertise_peer: Option<SocketAddr>,
    /// A file holding the cluster secret (the same on every member, at least 16
    /// printable characters), sent with every peer call and required from every peer.
    #[arg(long, env = ENV_CLUSTER_SECRET_FILE)]
    pub cluster_secret_file: Option<PathBuf>,
    /// PEM certificate (leaf first) this node presents to peers, for mutual TLS on the
    /// peer port and on outbound peer calls. Needs --peer-tls-key and --peer-ca; replaces
    /// --cluster-secret-file. Reloaded when the files change.
    #[arg(long, env = "QUORATE_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key for --peer-tls-cert.
    #[arg(long, env = "QUORATE_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM cluster CA: peers must present a certificate it signed, both ways.
    #[arg(long, env = "QUORATE_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// The name peers' certificates must carry (a DNS SAN). Default: the peer's IP
    /// address as advertised (an IP SAN).
    #[arg(long, env = "QUORATE_PEER_SERVER_NAME")]
    pub peer_server_name: Option<String>,
    /// The largest snapshot accepted from a peer, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_SNAPSHOT_BYTES)]
    pub max_snapshot_bytes: u64,
    /// Where the Raft log, vote and snapshots live.
    #[arg(long, default_value = "./quorate-data", env = "QUORATE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// A policy file to make live at startup.
    #[arg(long, env = "QUORATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Don't initialize a single-node cluster: wait for `quorate cluster init` or to be
    /// added to a cluster with `quorate cluster add-learner`.
    #[arg(long)]
    pub join: bool,
    /// A file holding the bearer token admin calls need (else QUORATE_ADMIN_TOKEN, else
    /// the token generated into `<data-dir>/admin-token` at first start).
    #[arg(long, env = ENV_ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Raft election timeout (minimum) in milliseconds; the maximum is 1.5× this. A
    /// follower waits out the old leader's lease (the maximum) plus one timeout before
    /// standing, so failover takes roughly 2.5× this value.
    #[arg(long, default_value_t = 300)]
    pub election_timeout_ms: u64,
    /// Take a snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 20_000)]
    pub snapshot_every: u64,
    /// Most hits per group-committed log entry.
    #[arg(long, default_value_t = 1024)]
    pub batch_max_hits: usize,
    /// Most hit entries in flight at once. 1 is fastest with openraft 0.9, which makes
    /// each entry durable (one fsync) before it takes the next (see `engine/batcher.rs`).
    #[arg(long, default_value_t = 1)]
    pub batch_inflight: usize,
    /// PEM certificate chain (leaf first): serve TLS on the gRPC and HTTP ports. Needs
    /// --tls-key. The files are re-read every second; a valid change is used by new
    /// connections without a restart.
    #[arg(long, env = "QUORATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "QUORATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): with TLS on, clients of both ports must present a
    /// certificate signed by one of them (mTLS). Reloaded like the certificate.
    #[arg(long, env = "QUORATE_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Stateless mode: keep counters in Redis instead of the Raft log. `redis://` or
    /// `rediss://` (TLS), `redis+cluster://host:port,host:port,…` for a Redis Cluster;
    /// `user:password@` in the URL for ACLs. Prefer the environment variable: the URL is
    /// never logged or shown with its password, but command lines are visible to `ps`.
    #[arg(long, env = "QUORATE_STORE")]
    pub store: Option<String>,
    /// Prefix of every Redis key, so deployments can share one Redis.
    #[arg(long, default_value = "quorate:", env = "QUORATE_STORE_PREFIX")]
    pub store_prefix: String,
    /// How long a decision waits for Redis before `failure_mode` applies, in ms.
    #[arg(long, default_value_t = 250)]
    pub store_timeout_ms: u64,
    /// PEM CA certificate(s) to trust for `rediss://` (default: the system's roots).
    #[arg(long, env = "QUORATE_STORE_CA")]
    pub store_ca_file: Option<PathBuf>,
    /// How many decisions are admitted at once: `adaptive` moves the limit between a few
    /// and --max-in-flight by the latency of admitted decisions; `fixed` is always
    /// --max-in-flight.
    #[arg(long, value_enum, default_value_t = crate::overload::LimitMode::default())]
    pub concurrency_limit: crate::overload::LimitMode,
    /// Decisions (gRPC and forward-auth together) admitted at once at most; more are
    /// answered at once with RESOURCE_EXHAUSTED / 503 instead of queueing. 0 = never shed.
    #[arg(long, default_value_t = crate::overload::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Longest an admitted decision may take (DEADLINE_EXCEEDED / 504 after it).
    #[arg(long, default_value_t = crate::overload::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64)]
    pub request_timeout_ms: u64,
}

impl ServeArgs {
    /// The node's configuration; reads the secret files named by the flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        let peer_auth = match (&self.cluster_secret_file, &self.peer_tls_cert) {
            (Some(_), Some(_)) => anyhow::bail!(
                "choose one peer authentication: --cluster-secret-file or --peer-tls-cert"
            ),
            (Some(path), None) => PeerAuth::Secret(ClusterSecret::from_file(path)?),
            (None, Some(cert)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: self.peer_tls_key.clone().unwrap_or_default(),
                    ca: self.peer_ca.clone(),
                };
                let role = Role::Peer {
                    server_name: self.peer_server_name.clone(),
                };
                PeerAuth::MutualTls(Tls::load(files, role)?)
            }
            (None, None) => PeerAuth::Unauthenticated,
        };
        let admin_token = match &self.admin_token_file {
            Some(path) => Some(read_token_file(path)?),
            None => std::env::var(ENV_ADMIN_TOKEN)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        Ok(Config {
            id: self.id,
            advertise_grpc: self.advertise_grpc,
            advertise_http: self.advertise_http,
            advertise_peer: self.advertise_peer,
            peer_auth,
            max_snapshot_bytes: self.max_snapshot_bytes,
            data_dir: self.data_dir.clone(),
            policy_file: self.policy.clone(),
            policy_watch_interval: crate::policy_watch::WATCH_INTERVAL,
            bootstrap: !self.join,
            admin_token,
            raft: RaftTiming {
                heartbeat: Duration::from_millis(self.heartbeat_ms),
                election_min: Duration::from_millis(self.election_timeout_ms),
                election_max: Duration::from_millis(self.election_timeout_ms.saturating_mul(3) / 2),
                snapshot_every: self.snapshot_every,
            },
            batch: BatchSettings {
                max_hits: self.batch_max_hits.max(1),
                max_inflight: self.batch_inflight.max(1),
                ..BatchSettings::default()
            },
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: self.client_ca.clone(),
                }),
                _ => None,
            },
            tls_watch_interval: crate::tls::WATCH_INTERVAL,
            redis: match &self.store {
                None => None,
                Some(url) => Some(quorate_redis::RedisStore::new(
                    quorate_redis::StoreUrl::parse(url)?,
                    quorate_redis::RedisSettings {
                        key_prefix: self.store_prefix.clone(),
                        timeout: Duration::from_millis(self.store_timeout_ms.max(1)),
                        ca_pem: match &self.store_ca_file {
                            Some(path) => Some(std::fs::read(path).map_err(|e| {
                                anyhow::anyhow!(
                                    "cannot read --store-ca-file {}: {e}",
                                    path.display()
                                )
                            })?),
                            None => None,
                        },
                        ..quorate_redis::RedisSettings::default()
                    },
                )?),
            },
            overload: crate::overload::OverloadSettings {
                mode: self.concurrency_limit,
                max_in_flight: self.max_in_flight,
                request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            },
        })
    }
}

/// Reads a token file: its content without surrounding whitespace, never empty. The
/// error names the file, never its content.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("the admin token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

/// Where and how to reach a node's admin API.
#[derive(Debug, Args, Clone)]
pub struct AdminTarget {
    /// Members' HTTP (admin) addresses, comma-separated, tried in order until one answers;
    /// a "not the leader" answer is followed to the leader it names. Any member will do:
    /// followers forward writes. `https://...` for nodes serving TLS. Default
    /// http://127.0.0.1:8080. (`--node` is an alias; QUORATE_NODE is read when
    /// QUORATE_ENDPOINTS is unset.)
    #[arg(
        long,
        alias = "node",
        global = true,
        value_delimiter = ',',
        env = ENV_ENDPOINTS
    )]
    pub endpoints: Vec<String>,
    /// A file holding the admin token (else QUORATE_ADMIN_TOKEN, else
    /// ./quorate-data/admin-token, where a node started with no flags keeps it).
    #[arg(long, global = true, env = ENV_ADMIN_TOKEN_FILE)]
    pub admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// How the CLI reaches a node that serves TLS (an `https://` address).
#[derive(Debug, Args, Clone, Default)]
#[command(group(
    clap::ArgGroup::new("client_identity")
        .args(["client_cert", "client_key"])
        .multiple(true)
        .requires_all(["client_cert", "client_key"])
))]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) to check the node's certificate against (instead of the
    /// system's roots).
    #[arg(long, global = true, env = "QUORATE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a node that requires one (--client-ca).
    #[arg(long, global = true, env = "QUORATE_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key for --client-cert.
    #[arg(long, global = true, env = "QUORATE_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
}

/// The addresses to use: the given ones (blank entries dropped), else the `legacy_env`
/// variable, else `default`.
fn endpoints_or(given: &[String], legacy_env: &str, default: &str) -> Vec<String> {
    let given: Vec<String> = given
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if !given.is_empty() {
        return given;
    }
    match std::env::var(legacy_env) {
        Ok(v) if !v.trim().is_empty() => vec![v.trim().to_string()],
        _ => vec![default.to_string()],
    }
}

impl AdminTarget {
    /// The HTTP addresses to try, in order.
    pub fn endpoints(&self) -> Vec<String> {
        endpoints_or(&self.endpoints, "QUORATE_NODE", "http://127.0.0.1:8080")
    }

    /// The admin token to send: from `--admin-token-file`, QUORATE_ADMIN_TOKEN, or the
    /// default node's token file if it exists.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.admin_token_file {
            return read_token_file(path).map(Some);
        }
        if let Some(t) = std::env::var(ENV_ADMIN_TOKEN)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(t));
        }
        let default = std::path::Path::new("./quorate-data").join(ADMIN_TOKEN_FILE);
        if default.exists() {
            return read_token_file(&default).map(Some);
        }
        Ok(None)
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make an uninitialized node (started with --join) a one-member cluster.
    Init(AdminTarget),
    /// Add a running node as a learner; returns once it has caught up.
    AddLearner {
        #[arg(long)]
        id: u64,
        /// The learner's public gRPC address.
        #[arg(long)]
        grpc: SocketAddr,
        /// The learner's HTTP address.
        #[arg(long)]
        http: SocketAddr,
        /// The learner's peer address (its `--peer` or `--advertise-peer`).
        #[arg(long)]
        peer: SocketAddr,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make a caught-up learner a voter.
    Promote {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove a member (voter or learner).
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Leader, term, members, each member's matched log index and lag.
    Status(AdminTarget),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and make it live on the cluster.
    Apply {
        /// The policy file, or a directory of envoyproxy/ratelimit config files.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Its format: auto (detected from the file's shape), quorate, envoy_ratelimit or
        /// limitador.
        #[arg(long, default_value = "auto")]
        format: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Evaluate sample Envoy RLS requests against a policy file, offline: shows which rule
    /// matched each descriptor and why. Touches no server and no live counter (counters
    /// are private to the run and start empty).
    Test(PolicyTestArgs),
    /// Print the live policy and its version.
    Get(AdminTarget),
    /// List the kept versions.
    History(AdminTarget),
    /// Make an earlier version live again (as a new version).
    Rollback {
        #[arg(long)]
        version: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Args)]
pub struct PolicyTestArgs {
    /// The policy file, or a directory of envoyproxy/ratelimit config files.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Its format: auto, quorate, envoy_ratelimit or limitador.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// A sample request (repeatable), e.g.
    /// '{"domain":"rl","descriptors":[[{"key":"user","value":"bob"}]],"hits_addend":1}'
    /// (entries may also be written as ["user","bob"] pairs).
    #[arg(long = "request", value_name = "JSON")]
    pub requests: Vec<String>,
    /// A sample HTTP request for the authz routes (repeatable), e.g.
    /// '{"method":"GET","host":"api.example.com","path":"/api/%2e%2e/admin"}': shows its
    /// canonical form and the route it matches, or why it is refused, exactly as
    /// ext_authz and forward-auth decide it.
    #[arg(long = "authz", value_name = "JSON")]
    pub authz: Vec<String>,
    /// A sample Envoy RLQS bucket (repeatable), e.g.
    /// '{"domain":"edge","bucket_id":{"tenant":"acme"}}': shows the bucket rule it
    /// matches, its bucket key and limit, and what the leader divides among proxies.
    #[arg(long = "rlqs", value_name = "JSON")]
    pub rlqs: Vec<String>,
    /// A file of sample requests, one JSON per line (blank and `#` lines skipped).
    #[arg(long, value_name = "FILE")]
    pub requests_file: Option<PathBuf>,
    /// Print the report as JSON (the same as `--output json`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The limit's name.
    #[arg(long)]
    pub limit: String,
    /// The counter key.
    #[arg(long)]
    pub key: String,
    /// The cost (0 peeks).
    #[arg(long, default_value_t = 1)]
    pub cost: u64,
    /// Members' gRPC addresses, comma-separated: the SDK's seeds (it fails over between
    /// them and follows leader hints). `https://...` for nodes serving TLS. Default
    /// http://127.0.0.1:8081. (`--grpc` is an alias; QUORATE_GRPC_URL is read when
    /// QUORATE_ENDPOINTS is unset.)
    #[arg(long, alias = "grpc", value_delimiter = ',', env = ENV_ENDPOINTS)]
    pub endpoints: Vec<String>,
    /// Deadline for the whole call, failovers and retries included (e.g. 500ms, 3s).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

impl CheckArgs {
    /// The gRPC addresses to give the SDK.
    pub fn endpoints(&self) -> Vec<String> {
        endpoints_or(&self.endpoints, "QUORATE_GRPC_URL", "http://127.0.0.1:8081")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["quorate"].iter().chain(args))
    }

    /// Whether clap refuses `args` for a required argument they lack.
    fn refused_as_incomplete(args: &[&str]) -> bool {
        parse(args).is_err_and(|e| e.kind() == clap::error::ErrorKind::MissingRequiredArgument)
    }

    /// `quorate serve` with `flags`.
    fn serve<'a>(flags: &[&'a str]) -> Vec<&'a str> {
        [&["serve"][..], flags].concat()
    }

    #[test]
    fn any_peer_tls_flag_needs_the_certificate_its_key_and_the_ca() {
        let all = [
            "--peer-tls-cert",
            "c",
            "--peer-tls-key",
            "k",
            "--peer-ca",
            "a",
        ];
        assert!(parse(&serve(&all)).is_ok());
        assert!(parse(&serve(&[&all[..], &["--peer-server-name", "n"]].concat())).is_ok());
        for partial in [
            &["--peer-tls-cert", "c"][..],
            &["--peer-tls-key", "k"],
            &["--peer-ca", "a"],
            &["--peer-server-name", "n"],
            &["--peer-tls-cert", "c", "--peer-tls-key", "k"],
            &["--peer-tls-key", "k", "--peer-ca", "a"],
        ] {
            assert!(refused_as_incomplete(&serve(partial)), "{partial:?}");
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_its_certificate() {
        assert!(parse(&["policy", "get", "--client-cert", "c", "--client-key", "k"]).is_ok());
        assert!(parse(&[
            "cluster",
            "status",
            "--client-key",
            "k",
            "--client-cert",
            "c"
        ])
        .is_ok());
        for partial in [
            &["policy", "get", "--client-cert", "c"][..],
            &["policy", "get", "--client-key", "k"],
            &["cluster", "status", "--client-key", "k"],
        ] {
            assert!(refused_as_incomplete(partial), "{partial:?}");
        }
    }
}
