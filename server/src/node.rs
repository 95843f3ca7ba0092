//! Assembles one node: storage, Raft, engine, the public gRPC, HTTP and peer servers;
//! runs until shutdown.
//!
//! [`run`] takes already-bound listeners (tests bind port 0 and read the address back)
//! and any shutdown future (the binary passes Ctrl-C / SIGTERM).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;
use thiserror::Error;
use tokio::net::TcpListener;
use tower::Layer;

use crate::config::Config;
use crate::engine::Engine;
use crate::grpc::ratelimiter::RateLimiterService;
use crate::metrics::Metrics;
use crate::policy::{PolicyFormat, PolicySource, EXAMPLE_POLICY};
use crate::raft::network::Network;
use crate::raft::peer::PeerService;
use crate::raft::peer_auth::{PeerAuth, PeerAuthError};
use crate::raft::state_machine::StateMachine;
use crate::raft::typ::Raft;
use crate::raft::LogStore;
use crate::raft::{Command, CommandResponse, Node};
use crate::tls::incoming::{spawn_grpc, spawn_http};
use crate::tls::{Role, Tls};

/// Why a node could not start or stopped abnormally.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot open storage in {path}: {source}")]
    Storage {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid raft configuration: {0}")]
    RaftConfig(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("policy file {path}: {reason}")]
    Policy { path: String, reason: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    PeerAuth(#[from] PeerAuthError),
    #[error("admin token: {0}")]
    AdminToken(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The node's bound sockets.
#[derive(Debug)]
pub struct Listeners {
    /// The public gRPC port: decisions, RLS, ext_authz, health, reflection.
    pub grpc: TcpListener,
    /// HTTP: admin, metrics, forward-auth.
    pub http: TcpListener,
    /// Peers only: Raft and forwarding between members.
    pub peer: TcpListener,
}

impl Listeners {
    pub async fn bind(
        grpc: SocketAddr,
        http: SocketAddr,
        peer: SocketAddr,
    ) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(grpc).await?,
            http: TcpListener::bind(http).await?,
            peer: TcpListener::bind(peer).await?,
        })
    }
}

pub use crate::context::NodeContext;

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let peer_addr = listeners.peer.local_addr()?;
    config.peer_auth.check_bind(peer_addr)?;
    let node = Node {
        grpc: config.advertise_grpc.unwrap_or(grpc_addr),
        http: config.advertise_http.unwrap_or(http_addr),
        peer: config.advertise_peer.unwrap_or(peer_addr),
    };
    // Certificates first: a bad file stops startup before anything is opened.
    let tls = match &config.tls {
        Some(files) => Some(Tls::load(files.clone(), Role::Public)?),
        None => None,
    };
    let startup_policy = match &config.policy_file {
        Some(path) => Some(
            crate::policy_watch::read_policy_file_off_runtime(path.clone(), config.redis.is_some())
                .await
                .map_err(|e| NodeError::Policy {
                    path: e.path,
                    reason: e.reason,
                })?,
        ),
        None => None,
    };

    let log_dir = config.data_dir.join("raft-log");
    let log_store = LogStore::open(&log_dir).map_err(|e| NodeError::Storage {
        path: log_dir.display().to_string(),
        source: Box::new(e),
    })?;
    let sm_dir = config.data_dir.join("state");
    let metrics = Arc::new(Metrics::new()?);
    let state_machine = StateMachine::open(&sm_dir)
        .map_err(|e| NodeError::Storage {
            path: sm_dir.display().to_string(),
            source: Box::new(e),
        })?
        .with_metrics(Arc::clone(&metrics));
    let shared = state_machine.shared();

    let raft_config = openraft::Config {
        cluster_name: "quorate".into(),
        heartbeat_interval: millis(config.raft.heartbeat),
        election_timeout_min: millis(config.raft.election_min),
        election_timeout_max: millis(config.raft.election_max),
        // openraft's 200 ms default can resend a large snapshot chunk forever.
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every),
        max_in_snapshot_log_to_keep: 1_000,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::RaftConfig(e.to_string()))?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        Network::new(config.peer_auth.clone()),
        log_store.clone(),
        state_machine,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;

    let engine = Arc::new(
        Engine::start(
            raft.clone(),
            config.id,
            shared,
            Arc::clone(&metrics),
            config.batch,
            config.peer_auth.clone(),
            config.raft.election_min,
            Arc::default(),
        )
        .with_redis(config.redis.clone()),
    );

    let admin_token = match config.admin_token.clone() {
        Some(token) => token,
        None => crate::http::admin::load_or_generate_token(&config.data_dir)
            .map_err(|e| NodeError::AdminToken(e.to_string()))?,
    };
    let http_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| NodeError::Io(std::io::Error::other(e)))?;
    let authz = Arc::new(crate::decide::authz::Authorizer::new(
        Arc::clone(&engine) as Arc<dyn crate::decide::Counter>,
        Arc::clone(&metrics),
        http_client.clone(),
        crate::authz::jwt::JwtSettings::default(),
    ));
    // RLQS streams live long: outside the per-decision overload budget; bounded by the
    // policy's bucket caps instead.
    let rlqs = crate::grpc::rlqs::Rlqs::new(
        raft.clone(),
        Arc::clone(&engine),
        Arc::clone(&metrics),
        config.id,
    );
    let ctx = NodeContext {
        id: config.id,
        node,
        raft: raft.clone(),
        engine: Arc::clone(&engine),
        metrics: Arc::clone(&metrics),
        log_store,
        admin_token,
        peer_auth: config.peer_auth.clone(),
        http: http_client.clone(),
        authz: Arc::clone(&authz),
        policy_notes: Arc::default(),
        rlqs: Arc::clone(&rlqs),
    };
    let dashboard = Arc::new(crate::dashboard::Dashboard::new(
        config.data_dir.clone(),
        Arc::clone(engine.shared()),
        http_client.clone(),
    )?);
    crate::dashboard::start(&dashboard, ctx.raft.clone(), Arc::clone(&ctx.metrics));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // Public gRPC: decisions, health, reflection. Never the peer transport.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quorate_proto::V1_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Io(std::io::Error::other(e)))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quorate_proto::V1_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| NodeError::Io(std::io::Error::other(e)))?;
    // Decisions on both public listeners share one budget; see `overload.rs`.
    let overload =
        crate::overload::Overload::new(config.overload, metrics.concurrency_limit.clone());
    let decisions = overload.grpc_layer();
    tokio::spawn(Arc::clone(&rlqs).run_rounds());
    let grpc = tonic::transport::Server::builder()
        .add_service(decisions.layer(RateLimiterService::server(Arc::clone(&engine))))
        .add_service(decisions.layer(crate::grpc::rls::RlsService::server(
            Arc::clone(&engine),
            Arc::clone(&metrics),
        )))
        .add_service(
            decisions.layer(crate::grpc::ext_authz::ExtAuthzService::server(Arc::clone(
                &authz,
            ))),
        )
        .add_service(rlqs.server())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let grpc_task = spawn_grpc(
        grpc,
        listeners.grpc,
        tls.clone(),
        wait_stop(stop_rx.clone()),
    );

    // Peers: Raft and forwarding, behind the peer credentials check.
    let peer_service = PeerService::new(
        raft.clone(),
        crate::engine::forward_handler(Arc::clone(&engine)),
        crate::http::admin::admin_handler(crate::http::admin::peer_router(ctx.clone())),
        config.max_snapshot_bytes,
    );
    let peer =
        tonic::transport::Server::builder().add_service(peer_service.server(&config.peer_auth));
    let peer_tls = match &config.peer_auth {
        PeerAuth::MutualTls(tls) => Some(Arc::clone(tls)),
        _ => None,
    };
    let peer_task = spawn_grpc(
        peer,
        listeners.peer,
        peer_tls.clone(),
        wait_stop(stop_rx.clone()),
    );
    if let Some(tls) = peer_tls {
        tokio::spawn(tls.watch(config.tls_watch_interval));
    }

    // HTTP: admin, metrics, health, forward-auth, and the dashboard.
    let app = crate::http::router(ctx.clone())
        .merge(crate::dashboard::router(ctx.clone(), dashboard))
        .layer(overload.http_layer());
    let http_task = spawn_http(app, listeners.http, tls.clone(), wait_stop(stop_rx.clone()))?;
    if let Some(tls) = tls {
        tokio::spawn(tls.watch(config.tls_watch_interval));
    }

    if config.bootstrap {
        bootstrap_single_node(&raft, config.id, node).await?;
    }
    if let Some(path) = config.policy_file.clone() {
        tokio::spawn(crate::policy_watch::watch(
            path,
            ctx.clone(),
            config.policy_watch_interval,
            startup_policy.as_ref().map(|p| p.text.clone()),
        ));
    }
    tokio::spawn(become_ready(
        ctx.clone(),
        health,
        startup_policy,
        [grpc_addr, http_addr, peer_addr],
        config.data_dir.display().to_string(),
    ));

    shutdown.await;
    tracing::info!("shutting down");
    engine.settle_reservations().await;
    let _ = stop_tx.send(true);
    let _ = raft.shutdown().await;
    let _ = grpc_task.await;
    let _ = peer_task.await;
    let _ = http_task.await;
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// On a fresh data dir, makes this node a single-node cluster.
async fn bootstrap_single_node(raft: &Raft, id: u64, node: Node) -> Result<(), NodeError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
    if !initialized {
        tracing::info!(id, "initializing a single-node cluster");
        raft.initialize(BTreeMap::from([(id, node)]))
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
    }
    Ok(())
}

/// Waits for a leader, makes the startup policy live, then reports ready: health turns
/// SERVING and one line goes to stdout with the addresses.
async fn become_ready(
    ctx: NodeContext,
    health: tonic_health::server::HealthReporter,
    startup_policy: Option<PolicySource>,
    [grpc, http, peer]: [SocketAddr; 3],
    data_dir: String,
) {
    let leadership = Arc::clone(ctx.engine.leadership());
    loop {
        if leadership.leader_id().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if leadership.is_leader() {
        let live = ctx.engine.policy();
        let wanted = match (&startup_policy, &live.version) {
            (Some(p), Some(v)) if v.source == *p => None,
            (Some(p), _) => Some(p.clone()),
            (None, None) => Some(PolicySource {
                format: PolicyFormat::Quorate,
                text: EXAMPLE_POLICY.to_string(),
            }),
            (None, Some(_)) => None,
        };
        if let Some(source) = wanted {
            let ts = crate::engine::wall_nanos();
            let format = source.format.as_str().to_string();
            let command = if startup_policy.is_some() {
                Command::SetPolicy {
                    ts,
                    format,
                    source: source.text,
                }
            } else {
                Command::InitPolicy {
                    ts,
                    format,
                    source: source.text,
                }
            };
            match ctx.raft.client_write(command).await {
                Ok(r) => match r.data {
                    CommandResponse::Policy(Ok(v)) => {
                        let origin = if startup_policy.is_some() {
                            crate::policy_notes::PolicyOrigin::File
                        } else {
                            crate::policy_notes::PolicyOrigin::Example
                        };
                        ctx.policy_notes.note_policy(v, origin);
                        tracing::info!(version = v, "startup policy is live")
                    }
                    other => tracing::error!(?other, "startup policy refused"),
                },
                Err(e) => tracing::warn!(error = %e, "could not apply the startup policy"),
            }
        }
    }
    // Health follows leadership from here on.
    let mut ready_said = false;
    loop {
        let serving = leadership.leader_id().is_some();
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health
            .set_service_status("quorate.v1.RateLimiter", status)
            .await;
        if serving && !ready_said {
            ready_said = true;
            let version = ctx
                .engine
                .policy()
                .version
                .as_ref()
                .map_or(0, |v| v.version);
            println!(
                "quorate ready: node {} grpc={grpc} http={http} peer={peer} data={data_dir} policy_version={version}",
                ctx.id
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
