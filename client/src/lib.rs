//! The quorate client SDK: ask a quorate cluster whether a hit may pass.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorate_client::Error> {
//! let client = quorate_client::Client::builder()
//!     .endpoint("http://127.0.0.1:8081")
//!     .connect()
//!     .await?;
//! let decision = client.check("per_minute", "user-42", 1).await?;
//! if !decision.allowed {
//!     println!("slow down for {:?}", decision.retry_after);
//! }
//! # Ok(()) }
//! ```
//!
//! # TLS
//! `https://` endpoints use TLS: the server's certificate is checked against
//! [`Builder::ca_file`] (a private CA) or, without one, the system's roots. A node started
//! with `--client-ca` also wants a client certificate: [`Builder::identity_files`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorate_client::Error> {
//! let client = quorate_client::Client::builder()
//!     .endpoint("https://quorate-0.example:8081")
//!     .ca_file("/etc/quorate/ca.crt")
//!     .identity_files("/etc/quorate/client.crt", "/etc/quorate/client.key")
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Leaders and failover
//! Any member answers (followers forward to the leader). When a member says it cannot
//! (`UNAVAILABLE` with a leader hint), the client goes to the hinted leader directly and
//! remembers it; when a member cannot be reached it tries the next configured endpoint.
//! Both are capped by [`Builder::max_attempts`], so a call never loops.
//!
//! A retried `strict` hit may have been counted by the first attempt even though its
//! answer was lost: retries can only over-count, never grant twice.

#![deny(missing_docs, missing_debug_implementations)]

mod error;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use tokio::sync::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use error::Error;

/// Metadata key in which a node names the leader's gRPC address.
const LEADER_HEADER: &str = "x-quorate-leader";

/// One hit to check: the limit, the counter key within it, and the cost (0 peeks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The limit's name in the policy.
    pub limit: String,
    /// The counter key (a user id, an IP, a tenant...).
    pub key: String,
    /// Quota the hit takes; 0 peeks without consuming.
    pub cost: u64,
}

impl Hit {
    /// A hit of `cost` on `key` under `limit`.
    pub fn new(limit: impl Into<String>, key: impl Into<String>, cost: u64) -> Hit {
        Hit {
            limit: limit.into(),
            key: key.into(),
            cost,
        }
    }
}

/// Why a hit was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// Not enough quota now; retry after `retry_after`.
    OverLimit,
    /// The cost is larger than the limit: it can never pass.
    CostExceedsLimit,
    /// The cluster's counter store is full and this key is new.
    StoreFull,
}

/// The answer for one hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the hit passed.
    pub allowed: bool,
    /// The limit's name.
    pub limit: String,
    /// Requests per window (or the bucket's burst).
    pub limit_value: u64,
    /// Quota left after this decision.
    pub remaining: u64,
    /// Until the counter is back to full quota.
    pub reset_after: Duration,
    /// For a denial that can pass later: when to retry.
    pub retry_after: Option<Duration>,
    /// Why the hit was denied; `None` when allowed.
    pub reason: Option<DenyReason>,
    /// The limit's window.
    pub window: Duration,
}

impl From<pb::Decision> for Decision {
    fn from(d: pb::Decision) -> Decision {
        let reason = match pb::DenyReason::try_from(d.reason) {
            Ok(pb::DenyReason::OverLimit) => Some(DenyReason::OverLimit),
            Ok(pb::DenyReason::CostExceedsLimit) => Some(DenyReason::CostExceedsLimit),
            Ok(pb::DenyReason::StoreFull) => Some(DenyReason::StoreFull),
            _ if !d.allowed => Some(DenyReason::OverLimit),
            _ => None,
        };
        Decision {
            allowed: d.allowed,
            limit: d.limit,
            limit_value: d.limit_value,
            remaining: d.remaining,
            reset_after: Duration::from_millis(d.reset_after_ms),
            retry_after: d.retry_after_ms.map(Duration::from_millis),
            reason,
            window: Duration::from_millis(d.window_ms),
        }
    }
}

/// Configures and connects a [`Client`].
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    max_attempts: usize,
    ca_file: Option<PathBuf>,
    identity_files: Option<(PathBuf, PathBuf)>,
    /// Built by `connect` from the files above; used for every `https://` channel.
    tls: Option<ClientTlsConfig>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            endpoints: Vec::new(),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            max_attempts: 4,
            ca_file: None,
            identity_files: None,
            tls: None,
        }
    }
}

impl Builder {
    /// Adds a member's gRPC address (`http://host:port`, or `https://host:port` for a
    /// node serving TLS). Give several for failover.
    pub fn endpoint(&mut self, uri: impl Into<String>) -> &mut Self {
        self.endpoints.push(uri.into());
        self
    }

    /// Deadline for one call, including leader hops.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Deadline for establishing a connection to one member.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Most attempts per call (leader hops and endpoint failovers together), at least 1.
    pub fn max_attempts(&mut self, attempts: usize) -> &mut Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// PEM CA certificate(s) that `https://` members' certificates must chain to,
    /// instead of the system's roots.
    pub fn ca_file(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.ca_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// A PEM client certificate and its key, presented to `https://` members that
    /// require one (mTLS).
    pub fn identity_files(&mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> &mut Self {
        self.identity_files = Some((cert.as_ref().to_path_buf(), key.as_ref().to_path_buf()));
        self
    }

    /// Reads the TLS files into the configuration every `https://` channel uses.
    fn load_tls(&mut self) -> Result<(), Error> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|e| Error::config(format!("cannot read {what} {}: {e}", path.display())))
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_file {
            Some(path) => config.ca_certificate(Certificate::from_pem(read(path, "CA file")?)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity_files {
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        self.tls = Some(config);
        Ok(())
    }

    /// Builds the client. Connections are made lazily, on first use.
    pub async fn connect(&mut self) -> Result<Client, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::config("no endpoint configured"));
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            self.load_tls()?;
        }
        let mut channels = Vec::with_capacity(self.endpoints.len());
        for uri in &self.endpoints {
            channels.push((uri.clone(), self.channel(uri)?));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                builder: self.clone(),
                members: channels,
                current: Mutex::new(0),
                leader: Mutex::new(None),
            }),
        })
    }

    fn channel(&self, uri: &str) -> Result<RateLimiterClient<Channel>, Error> {
        let mut endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|e| Error::config(format!("invalid endpoint {uri:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if uri.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| {
                Error::config(format!("{uri}: TLS is not configured for this client"))
            })?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::config(format!("TLS for {uri}: {e}")))?;
        }
        Ok(RateLimiterClient::new(endpoint.connect_lazy()))
    }
}

/// A handle to a quorate cluster. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    builder: Builder,
    members: Vec<(String, RateLimiterClient<Channel>)>,
    /// Index of the configured member to try first.
    current: Mutex<usize>,
    /// The leader, once a member named it: (address, channel).
    leader: Mutex<Option<(String, RateLimiterClient<Channel>)>>,
}

impl Client {
    /// A builder with defaults (3 s timeout, 4 attempts).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Checks one hit.
    pub async fn check(&self, limit: &str, key: &str, cost: u64) -> Result<Decision, Error> {
        let mut decisions = self.check_many(vec![Hit::new(limit, key, cost)]).await?;
        decisions
            .pop()
            .ok_or_else(|| Error::protocol("the server returned no decision"))
    }

    /// Checks several hits in one call; one decision each, in order.
    pub async fn check_many(&self, hits: Vec<Hit>) -> Result<Vec<Decision>, Error> {
        let request = pb::CheckRequest {
            hits: hits
                .into_iter()
                .map(|h| pb::Hit {
                    limit: h.limit,
                    key: h.key,
                    cost: Some(h.cost),
                })
                .collect(),
        };
        let expected = request.hits.len();
        let deadline = tokio::time::Instant::now() + self.inner.builder.timeout;
        let mut last_error = None;
        for _ in 0..self.inner.builder.max_attempts {
            let (target, mut client) = self.pick().await;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(remaining);
            match client.check(call).await {
                Ok(response) => {
                    let decisions = response.into_inner().decisions;
                    if decisions.len() != expected {
                        return Err(Error::protocol(format!(
                            "expected {expected} decisions, got {}",
                            decisions.len()
                        )));
                    }
                    return Ok(decisions.into_iter().map(Decision::from).collect());
                }
                Err(status) => {
                    let error = Error::from_status(&status);
                    if !error.is_unavailable() && !error.is_connect() {
                        return Err(error);
                    }
                    self.fail_over(&target, leader_hint(&status)).await?;
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::timeout("deadline passed before an answer")))
    }

    /// The member to ask: the known leader, else the current configured member.
    async fn pick(&self) -> (Target, RateLimiterClient<Channel>) {
        if let Some((addr, client)) = self.inner.leader.lock().await.as_ref() {
            return (Target::Leader(addr.clone()), client.clone());
        }
        let i = *self.inner.current.lock().await % self.inner.members.len();
        (Target::Member(i), self.inner.members[i].1.clone())
    }

    /// After `target` failed: go to the hinted leader, or move to the next member.
    async fn fail_over(&self, target: &Target, hint: Option<String>) -> Result<(), Error> {
        let mut leader = self.inner.leader.lock().await;
        if let Some(addr) = hint {
            // The hinted leader is reached the way the configured members are.
            let scheme = if self.inner.builder.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let uri = format!("{scheme}://{addr}");
            let same = leader.as_ref().is_some_and(|(a, _)| *a == uri);
            if !same {
                let channel = self.inner.builder.channel(&uri)?;
                *leader = Some((uri, channel));
                return Ok(());
            }
        }
        *leader = None;
        if let Target::Member(i) = target {
            let mut current = self.inner.current.lock().await;
            if *current == *i {
                *current = (i + 1) % self.inner.members.len();
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Target {
    Leader(#[allow(dead_code)] String),
    Member(usize),
}

fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
