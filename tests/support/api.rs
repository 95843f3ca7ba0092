//! Talking to nodes: gRPC `Check`, the admin API's status document, and waiting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use serde::Deserialize;
use tonic::transport::Channel;

/// How often [`eventually`] re-checks its condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` every [`POLL`] until it returns `Some`, or fails after `timeout` naming
/// `what` was awaited. The only way tests wait for something to happen.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A shared HTTP client for the admin API.
pub fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client")
    })
}

/// The Prometheus exposition a node serves at `GET /metrics` on its HTTP port `addr`.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    Ok(http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// The value of `series` (its name with labels, exactly as exposed) in an exposition.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// A lazily connecting gRPC client for `addr`. Needs a tokio runtime.
pub fn client(addr: SocketAddr) -> RateLimiterClient<Channel> {
    RateLimiterClient::new(crate::node::endpoint(addr).connect_lazy())
}

/// A hit; `cost: None` leaves the cost absent (which means 1).
pub fn hit(limit: &str, key: &str, cost: Option<u64>) -> pb::Hit {
    pb::Hit {
        limit: limit.to_string(),
        key: key.to_string(),
        cost,
    }
}

/// One `Check` with one hit; its one decision.
pub async fn check(
    client: &mut RateLimiterClient<Channel>,
    limit: &str,
    key: &str,
    cost: Option<u64>,
) -> Result<pb::Decision, tonic::Status> {
    let response = client
        .check(pb::CheckRequest {
            hits: vec![hit(limit, key, cost)],
            atomic: None,
        })
        .await?
        .into_inner();
    match <[pb::Decision; 1]>::try_from(response.decisions) {
        Ok([d]) => Ok(d),
        Err(v) => Err(tonic::Status::internal(format!(
            "expected one decision, got {}",
            v.len()
        ))),
    }
}

/// Shorthand assertions on a `Check` outcome.
pub trait Check {
    /// The decision, or a panic naming the error.
    fn decided(self) -> pb::Decision;
}

impl Check for Result<pb::Decision, tonic::Status> {
    #[track_caller]
    fn decided(self) -> pb::Decision {
        match self {
            Ok(d) => d,
            Err(s) => panic!("expected a decision, got {:?}: {}", s.code(), s.message()),
        }
    }
}

/// `GET /admin/v1/cluster/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// The last log index removed by compaction (entries up to it only live in the
    /// snapshot now).
    #[serde(default)]
    pub purged_index: Option<u64>,
    pub members: Vec<Member>,
    pub policy_version: Option<u64>,
    pub counters: usize,
}

/// One member in [`Status`].
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    pub id: u64,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub peer: SocketAddr,
    pub voter: bool,
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.state == "Leader" && self.leader == Some(self.id)
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// `GET /admin/v1/cluster/status` on the node whose HTTP port is `http`.
pub async fn status(http: SocketAddr) -> anyhow::Result<Status> {
    let url = format!("http://{http}/admin/v1/cluster/status");
    let response = self::http()
        .get(&url)
        .bearer_auth(crate::node::ADMIN_TOKEN)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    Ok(response.json().await?)
}

/// An admin call (`POST`/`PUT` with a JSON body); the JSON answer, or an error with the
/// status and body.
pub async fn admin(
    method: reqwest::Method,
    http: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{http}/admin/v1{path}");
    let response = self::http()
        .request(method.clone(), &url)
        .bearer_auth(crate::node::ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{method} {url}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))
}
