//! Shared by the server's integration tests: an in-process quorate node on loopback port
//! 0 ([`start_node`], for any [`Config`]; [`TestNode`], a node with a startup policy and
//! its admin calls), an Envoy RLS client (envoy-types' generated client over real gRPC),
//! request builders and assertions on RLS answers.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use quorate_server::config::Config;
use quorate_server::node::{self, Listeners};
use tonic::transport::Channel;

pub type Rls = RateLimitServiceClient<Channel>;

/// How long a node may take to elect itself and make its startup policy live.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A node running in this test process on loopback port 0; stops when dropped.
#[derive(Debug)]
pub struct RunningNode {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Binds gRPC, HTTP and peer on `127.0.0.1:0`, reads the bound addresses back, and runs a
/// node with `config` until the returned handle drops. Does not wait for readiness.
pub async fn start_node(config: Config) -> RunningNode {
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let grpc = listeners.grpc.local_addr().unwrap();
    let http = listeners.http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(node::run(config, listeners, async move {
        let _ = stopped.await;
    }));
    RunningNode {
        grpc,
        http,
        _stop: stop,
    }
}

/// A running in-process node with a startup policy; stops when dropped.
#[derive(Debug)]
pub struct TestNode {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    _node: RunningNode,
    dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a single node with `policy` (quorate YAML) as its startup policy file and
    /// waits until that policy is live.
    pub async fn start(policy: &str) -> TestNode {
        TestNode::start_with(Some(policy)).await
    }

    /// Starts a single node, with a startup policy file or (`None`) without one — then the
    /// node makes its built-in example policy live — and waits until that policy is live.
    pub async fn start_with(policy: Option<&str>) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::single_node(dir.path().join("data"));
        if let Some(policy) = policy {
            let policy_path = dir.path().join("policy.yaml");
            std::fs::write(&policy_path, policy).unwrap();
            config.policy_file = Some(policy_path);
        }
        let running = start_node(config).await;
        let node = TestNode {
            grpc: running.grpc,
            http: running.http,
            _node: running,
            dir,
        };
        node.wait_for_policy_version(1).await;
        node
    }

    /// An RLS client on its own HTTP/2 connection.
    pub async fn rls(&self) -> Rls {
        RateLimitServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}/admin/v1{path}", self.http)
    }

    /// The admin token file the node generated in its data directory at startup.
    pub fn admin_token_file(&self) -> std::path::PathBuf {
        self.dir.path().join("data").join("admin-token")
    }

    /// The admin token the node generated (`None` until it has).
    fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.admin_token_file())
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// The live policy version, if any (`GET /admin/v1/policy`).
    pub async fn policy_version(&self) -> Option<u64> {
        let resp = reqwest::Client::new()
            .get(self.admin_url("/policy"))
            .bearer_auth(self.admin_token()?)
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body.get("version")?.as_u64()
    }

    /// Polls until a policy of at least `version` is live, with a deadline.
    pub async fn wait_for_policy_version(&self, version: u64) {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if self.policy_version().await.is_some_and(|v| v >= version) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "policy version {version} never became live on {}",
                self.http
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits a policy in `format` through the admin API: the new version, or the
    /// refusal's HTTP status and error message.
    pub async fn try_put_policy(
        &self,
        http: &reqwest::Client,
        format: &str,
        source: &str,
    ) -> Result<u64, (u16, String)> {
        let resp = http
            .put(self.admin_url("/policy"))
            .bearer_auth(self.admin_token().unwrap_or_default())
            .json(&serde_json::json!({ "format": format, "source": source }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or_default().to_string();
            return Err((status.as_u16(), error));
        }
        Ok(body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {body}")))
    }

    /// Replaces the live policy through the admin API; returns the new version.
    pub async fn put_policy(&self, http: &reqwest::Client, source: &str) -> u64 {
        let resp = http
            .put(self.admin_url("/policy"))
            .bearer_auth(self.admin_token().unwrap_or_default())
            .json(&serde_json::json!({ "format": "quorate", "source": source }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(status.is_success(), "PUT /admin/v1/policy: {status} {body}");
        body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {body}"))
    }
}

/// A descriptor from `(key, value)` entries.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_string(),
                value: (*v).to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A descriptor with its own `hits_addend`.
pub fn descriptor_with_hits(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        ..descriptor(entries)
    }
}

/// A descriptor carrying Envoy's per-descriptor limit override.
pub fn descriptor_with_limit(
    entries: &[(&str, &str)],
    requests_per_unit: u32,
    unit: envoy_types::pb::envoy::r#type::v3::RateLimitUnit,
) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit,
            unit: unit as i32,
        }),
        ..descriptor(entries)
    }
}

/// A request for `domain` with `descriptors` and request-level `hits_addend`.
pub fn request(
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
    hits_addend: u32,
) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend,
    }
}

/// Calls ShouldRateLimit; a gRPC error fails the test.
pub async fn call(rls: &mut Rls, req: RateLimitRequest) -> RateLimitResponse {
    let shown = format!("{req:?}");
    match rls.should_rate_limit(req).await {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("ShouldRateLimit({shown}) failed: {e:?}"),
    }
}

/// One-descriptor shorthand.
pub async fn call_one(rls: &mut Rls, domain: &str, entries: &[(&str, &str)]) -> RateLimitResponse {
    call(rls, request(domain, vec![descriptor(entries)], 0)).await
}

/// A response header's value (keys compared case-insensitively, as HTTP does).
pub fn header<'a>(resp: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    let mut found = resp
        .response_headers_to_add
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(name));
    let first = found.next().map(|h| h.value.as_str());
    assert!(
        found.next().is_none(),
        "header {name} appears more than once: {:?}",
        resp.response_headers_to_add
    );
    first
}

/// What one descriptor status is expected to say about its limit.
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    pub name: &'a str,
    pub requests_per_unit: u32,
    pub unit: Unit,
}

/// Asserts a counted descriptor's status: code, limit, remaining and a pending reset.
#[track_caller]
pub fn assert_limited(s: &DescriptorStatus, code: Code, limit: Limit<'_>, remaining: u32) {
    assert_eq!(s.code, code as i32, "code of {s:?}");
    let current = s
        .current_limit
        .as_ref()
        .unwrap_or_else(|| panic!("no current_limit in {s:?}"));
    assert_eq!(current.name, limit.name, "current_limit.name of {s:?}");
    assert_eq!(
        current.requests_per_unit, limit.requests_per_unit,
        "current_limit.requests_per_unit of {s:?}"
    );
    assert_eq!(
        current.unit, limit.unit as i32,
        "current_limit.unit of {s:?}"
    );
    assert_eq!(s.limit_remaining, remaining, "limit_remaining of {s:?}");
    let reset = s
        .duration_until_reset
        .as_ref()
        .unwrap_or_else(|| panic!("no duration_until_reset in {s:?}"));
    assert!(
        reset.seconds > 0 || reset.nanos > 0,
        "duration_until_reset must be positive: {s:?}"
    );
}

/// Asserts a status is OK with no limit attached (no rule, unlimited or replaced).
#[track_caller]
pub fn assert_no_limit(s: &DescriptorStatus) {
    assert_eq!(s.code, Code::Ok as i32, "code of {s:?}");
    assert!(s.current_limit.is_none(), "unexpected current_limit: {s:?}");
}
