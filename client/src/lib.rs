//! The quorate client SDK: ask a quorate cluster whether a hit may pass.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quorate_client::Error> {
//! let client = quorate_client::Client::builder()
//!     .endpoints(["http://10.0.0.1:8081", "http://10.0.0.2:8081", "http://10.0.0.3:8081"])
//!     .connect().await?;
//! let decision = client.check("per_minute", "user-42", 1).await?;
//! if !decision.allowed { println!("slow down for {:?}", decision.retry_after); }
//! # Ok(()) }
//! ```
//!
//! For HTTP servers, [`layer::QuorateLayer`] does this for every request (axum, hyper,
//! tonic: any tower stack); see `examples/axum_app.rs`.
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
//! # Decisions and errors
//! A denied hit is an answer, not an error: [`Decision::allowed`] is false and
//! [`Decision::retry_after`] says when it can pass. [`Error`] is for calls the cluster
//! could not decide; ask it with `is_*` predicates ([`Error::is_unavailable`],
//! [`Error::is_invalid_argument`], [`Error::is_unknown_limit`],
//! [`Error::is_deadline_exceeded`], [`Error::is_unknown_outcome`]).
//!
//! # Leaders, failover, deadlines
//! Give every member as a seed endpoint. Any member answers (followers forward to the
//! leader). When a member says it cannot (`UNAVAILABLE` with a leader hint), the client
//! goes to the hinted leader at once and remembers it; when a member cannot be reached or
//! has no leader, the client tries the next endpoint after a jittered exponential
//! [`Backoff`]. Everything — hops, retries, waits — fits in one per-call deadline
//! ([`Builder::timeout`], default 3 s), so no call hangs through an election: it
//! answers, or fails when the deadline passes.
//!
//! # Retries: at most once or at least once
//! A hit whose answer was lost may or may not have been counted. [`RetryPolicy`] says
//! what the client does then:
//! - [`RetryPolicy::AtMostOnce`] never resends such a hit; the call fails with
//!   [`Error::is_unknown_outcome`]. Hits that certainly were not counted are still
//!   resent: a refused connection (nothing was sent), and an `UNAVAILABLE` the server
//!   marks `x-quorate-not-applied` (this node is not the leader, no leader elected yet,
//!   leadership moved before the entry committed, the leader refused the forward).
//! - [`RetryPolicy::AtLeastOnce`] (the default) resends until an answer or the
//!   deadline. A hit may be counted twice across a failover, so a key can run out of
//!   quota a little early; no policy can make the cluster grant more than the limit.
//!
//! Why at-least-once is the default: both policies are safe for the limit (neither ever
//! over-grants), but at-most-once turns every leader failover into failed calls, and
//! an application then has to allow (over-granting, which is what a rate limiter
//! exists to prevent) or deny (refusing users who had quota). Counting a hit twice
//! during a rare failover costs one unit of quota instead. Choose at-most-once when a
//! hit stands for something users must not be charged twice for.
//!
//! # The local deny cache
//! Once the cluster denies a key for lack of quota, the client answers later hits on it
//! "denied" itself, with no network call, until the time the cluster said the hit could
//! pass ([`Decision::source`] is [`Source::DenyCache`]). It never allows anything and
//! stops at the reset; see [`deny_cache`] for the argument. On by default, bounded
//! ([`Builder::deny_cache_capacity`]); [`Client::deny_cache_stats`] gives counters to
//! export.
//!
//! # When the cluster is unreachable
//! [`Builder::fallback`] chooses: return the error (default), fail open
//! ([`Fallback::Allow`], marked [`Source::FailOpen`]) or fail closed ([`Fallback::Deny`],
//! marked [`Source::FailClosed`]).
//!
//! # Several limits in one call
//! [`Client::check_all`] sends several hits in one call as one all-or-nothing decision
//! and returns one decision per hit: granted only if every hit passes, and a denied call
//! consumes nothing (its hits that would have passed come back allowed, with `remaining`
//! unchanged). [`Client::check_each`] decides each hit on its own.

#![deny(missing_docs, missing_debug_implementations)]

mod check;
pub mod deny_cache;
mod error;
#[cfg(feature = "layer")]
pub mod layer;
mod options;
mod retry;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use tokio::sync::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use deny_cache::{DenyCache, DenyCacheStats};
pub use error::Error;
pub use options::{Fallback, Source};
pub use retry::{Backoff, RetryPolicy};

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
    /// The limit holds its most keys (`max_keys`) and this key is new.
    LimitKeysFull,
    /// The cluster could not be asked and the client fails closed
    /// ([`Fallback::Deny`]).
    Unavailable,
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
    /// Who decided: the cluster, the local deny cache, or a fallback.
    pub source: Source,
}

impl From<pb::Decision> for Decision {
    fn from(d: pb::Decision) -> Decision {
        let reason = match pb::DenyReason::try_from(d.reason) {
            Ok(pb::DenyReason::OverLimit) => Some(DenyReason::OverLimit),
            Ok(pb::DenyReason::CostExceedsLimit) => Some(DenyReason::CostExceedsLimit),
            Ok(pb::DenyReason::StoreFull) => Some(DenyReason::StoreFull),
            Ok(pb::DenyReason::LimitKeysFull) => Some(DenyReason::LimitKeysFull),
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
            source: Source::Cluster,
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
    /// Retries, deny cache, fallback: see `options.rs`.
    sdk: options::Options,
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
            max_attempts: 32,
            sdk: options::Options::default(),
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

    /// Adds several members' gRPC addresses: the seeds the client starts from.
    pub fn endpoints<I, S>(&mut self, uris: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints.extend(uris.into_iter().map(Into::into));
        self
    }

    /// Deadline for one call, including leader hops, retries and backoff (default 3 s).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Deadline for establishing a connection to one member.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// Most attempts per call (leader hops and endpoint failovers together), at least 1
    /// (default 32); the deadline usually ends a call first.
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
        let deny_cache = self.sdk.deny_cache();
        Ok(Client {
            inner: Arc::new(Inner {
                builder: self.clone(),
                members: channels,
                current: Mutex::new(0),
                leader: Mutex::new(None),
                deny_cache,
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
    /// Keys known to be denied; `None` when turned off.
    deny_cache: Option<DenyCache>,
}

impl Client {
    /// A builder with defaults (3 s deadline, at-least-once retries, deny cache on,
    /// errors returned when the cluster is unreachable).
    pub fn builder() -> Builder {
        Builder::default()
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
    /// Returns whether a newly hinted leader is to be tried next.
    async fn fail_over(&self, target: &Target, hint: Option<String>) -> Result<bool, Error> {
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
                return Ok(true);
            }
        }
        *leader = None;
        if let Target::Member(i) = target {
            let mut current = self.inner.current.lock().await;
            if *current == *i {
                *current = (i + 1) % self.inner.members.len();
            }
        }
        Ok(false)
    }
}

#[derive(Debug, Clone)]
enum Target {
    Leader(#[allow(dead_code)] String),
    Member(usize),
}
