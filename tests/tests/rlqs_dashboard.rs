//! The dashboard's RLQS view (`GET /dashboard/api/rlqs`) against real `quorate` processes
//! and real RLQS streams built from Envoy's protos (envoy-types).
//!
//! Proves: a bucket and the proxies reporting it show up with their committed shares
//! (summing to at most the limit), their demand, expiry, reserve and churn; a follower
//! answers with the leader's view and says so, and a forwarded request is never forwarded
//! again; a value that makes its own bucket (here an API-key-like tenant) appears only as
//! a digest, in the view and in `/metrics`; the per-rule gauges exist. Hostile: the view
//! of a flood of buckets and of a crowded bucket is capped and says how many were left
//! out; the endpoint is read-only like the dashboard's other read endpoints (no token
//! needed, nothing secret, no other method), and the admin API behind it still refuses
//! a request without the token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{BucketId, RateLimitQuotaUsageReports};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use quorate_e2e::api::http;
use quorate_e2e::{eventually, Cluster, NodeOptions};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const INTERVAL: Duration = Duration::from_millis(250);
const SECRET_TENANT: &str = "sk_live_TENANT_SECRET_42";

const POLICY: &str = r#"
rlqs:
  interval: 250ms
  max_buckets_per_stream: 400
  max_buckets: 1000
  domains:
    - domain: fleet
      buckets:
        - name: api
          bucket_id: [{key: name, value: api}]
          rate_limit: {requests_per_unit: 100, unit: second}
        - name: per_tenant
          bucket_id: [{key: tenant}]
          rate_limit: {requests_per_unit: 10, unit: second}
"#;

fn options() -> NodeOptions {
    NodeOptions {
        policy: Some(POLICY.into()),
        election_timeout_ms: 300,
        ..NodeOptions::default()
    }
}

fn bucket(pairs: &[(&str, &str)]) -> BucketId {
    BucketId {
        bucket: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// One usage report of `ids`, each at `per_second` requests (three quarters allowed).
fn report(ids: &[BucketId], per_second: u64) -> RateLimitQuotaUsageReports {
    let requests = per_second * INTERVAL.as_millis() as u64 / 1000;
    RateLimitQuotaUsageReports {
        domain: "fleet".into(),
        bucket_quota_usages: ids
            .iter()
            .map(|id| BucketQuotaUsage {
                bucket_id: Some(id.clone()),
                time_elapsed: Some(PbDuration {
                    seconds: 0,
                    nanos: INTERVAL.as_nanos() as i32,
                }),
                num_requests_allowed: requests * 3 / 4,
                num_requests_denied: requests - requests * 3 / 4,
            })
            .collect(),
    }
}

/// A proxy: one stream reporting `ids` every interval until dropped; it reads (and
/// drops) what the leader pushes, as Envoy would enforce it.
struct Proxy(tokio::task::JoinHandle<()>);

impl Drop for Proxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn proxy(addr: SocketAddr, ids: Vec<BucketId>, per_second: u64) -> Proxy {
    Proxy(tokio::spawn(async move {
        let mut client = RateLimitQuotaServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(report(&ids, per_second)).await.unwrap();
        let mut pushes = client
            .stream_rate_limit_quotas(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if tx.send(report(&ids, per_second)).await.is_err() {
                        return;
                    }
                }
                m = pushes.message() => {
                    if !matches!(m, Ok(Some(_))) {
                        return;
                    }
                }
            }
        }
    }))
}

async fn view(http_addr: SocketAddr, query: &str) -> Value {
    let r = http()
        .get(format!("http://{http_addr}/dashboard/api/rlqs{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn find<'a>(v: &'a Value, rule: &str) -> Option<&'a Value> {
    v["buckets"].as_array()?.iter().find(|b| b["rule"] == rule)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test]
async fn the_view_shows_buckets_proxies_and_shares_within_the_limit() {
    let cluster = Cluster::three(options()).await.unwrap();
    let leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let (grpc, leader_http) = (cluster.node(leader).grpc, cluster.node(leader).http);

    // Before any stream: configured, no buckets.
    let empty = view(leader_http, "").await;
    assert_eq!(empty["configured"], true, "{empty}");
    assert_eq!(empty["buckets_total"], 0, "{empty}");
    assert_eq!(empty["served_by"], leader, "{empty}");

    // Three proxies with skewed demand (twice the limit in total) share `api`; one also
    // reports a tenant bucket whose value looks like a credential.
    let api = bucket(&[("name", "api")]);
    let tenant = bucket(&[("tenant", SECRET_TENANT)]);
    let _fleet = [
        proxy(grpc, vec![api.clone(), tenant], 120),
        proxy(grpc, vec![api.clone()], 60),
        proxy(grpc, vec![api.clone()], 20),
    ];

    let v = eventually(
        Duration::from_secs(20),
        "three proxies with shares",
        || async {
            let v = view(leader_http, "").await;
            let b = find(&v, "api")?;
            let proxies = b["proxies"].as_array()?;
            let shared = proxies
                .iter()
                .filter(|p| f(&p["share_per_second"]) > 0.0)
                .count();
            (proxies.len() == 3 && shared == 3 && f(&b["demand_per_second"]) > 150.0).then_some(v)
        },
    )
    .await
    .unwrap();
    let b = find(&v, "api").unwrap();
    assert_eq!(b["domain"], "fleet");
    assert_eq!(
        b["bucket_id"],
        serde_json::json!([{"key": "name", "value": "api", "matched": "exact"}])
    );
    assert_eq!(b["limit"]["requests"], 100);
    assert_eq!(f(&b["limit_per_second"]), 100.0);
    // Every share is committed and their sum stays within the limit less the reserve.
    let proxies = b["proxies"].as_array().unwrap();
    let shares: f64 = proxies.iter().map(|p| f(&p["share_per_second"])).sum();
    assert!(shares <= f(&b["assignable_per_second"]) + 1e-9, "{b}");
    assert!(
        f(&b["assigned_per_second"]) <= f(&b["assignable_per_second"]) + 1e-9,
        "{b}"
    );
    assert!(f(&b["assignable_per_second"]) < 100.0, "{b}");
    assert!(f(&b["reserve_tokens"]) >= 1.0, "{b}");
    assert!(
        f(&b["reserve_tokens_free"]) <= f(&b["reserve_tokens"]),
        "{b}"
    );
    // The largest share first, and it follows the largest demand.
    assert!(f(&proxies[0]["share_per_second"]) >= f(&proxies[2]["share_per_second"]));
    for p in proxies {
        assert!(p["expires_in_ms"].as_u64().unwrap() <= 375, "{p}");
        assert!(p["max_tokens"].as_u64().unwrap() >= 1, "{p}");
        assert!(p["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{p}");
        let (allowed, denied) = (f(&p["allowed_per_second"]), f(&p["denied_per_second"]));
        assert!(allowed > 0.0 && denied > 0.0 && allowed > denied, "{p}");
        assert!(p["last_report_ms_ago"].as_u64().unwrap() < 2_000, "{p}");
    }
    assert!(f(&v["churn"]["rounds"]) >= 1.0, "{v}");
    assert!(f(&v["churn"]["fresh_grants"]) >= 3.0, "{v}");
    assert!(b["fresh_grants_last_minute"].as_u64().unwrap() >= 3, "{b}");
    assert_eq!(v["streams"], 3, "{v}");
    assert_eq!(v["buckets_total"], 2, "{v}");
    assert_eq!(v["subscriptions_total"], 4, "{v}");

    // The tenant bucket shows its value only as a digest.
    let t = find(&v, "per_tenant").expect("the tenant bucket");
    let entry = &t["bucket_id"][0];
    assert_eq!(entry["matched"], "per_value");
    assert!(entry["value"].as_str().unwrap().starts_with('#'), "{t}");
    assert!(!v.to_string().contains(SECRET_TENANT));

    // A follower answers with the leader's view and says who made it.
    let follower_http = cluster.node(follower).http;
    let via = eventually(
        Duration::from_secs(10),
        "the leader's view via a follower",
        || async {
            let v = view(follower_http, "").await;
            (find(&v, "api").is_some()).then_some(v)
        },
    )
    .await
    .unwrap();
    assert_eq!(via["served_by"], leader, "{via}");
    assert_eq!(via["this_node"], follower, "{via}");
    assert_eq!(via["leader"], true, "{via}");
    // A forwarded request is answered locally: a follower has no shares, and says so.
    let local = view(follower_http, &format!("?from={leader}")).await;
    assert_eq!(local["served_by"], follower, "{local}");
    assert_eq!(local["leader"], false, "{local}");
    assert_eq!(local["buckets_total"], 0, "{local}");

    // Metrics: per-rule gauges labelled by policy names only.
    let metrics = quorate_e2e::api::metrics(leader_http).await.unwrap();
    assert!(!metrics.contains(SECRET_TENANT));
    let gauge = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let demand = gauge(r#"quorate_rlqs_demand_requests_per_second{domain="fleet",rule="api"}"#);
    assert!(demand.is_some_and(|d| d > 150.0), "{metrics}");
    let assigned = gauge(r#"quorate_rlqs_assigned_requests_per_second{domain="fleet",rule="api"}"#);
    assert!(assigned.is_some_and(|a| a > 0.0 && a < 100.0), "{metrics}");
    assert!(gauge("quorate_rlqs_rounds_total").is_some_and(|r| r >= 1.0));
    for line in metrics.lines().filter(|l| l.starts_with("quorate_rlqs_")) {
        assert!(
            !line.contains("tenant="),
            "a bucket_id value as a label: {line}"
        );
    }
}

#[tokio::test]
async fn a_flood_of_buckets_and_a_crowded_bucket_are_capped_in_the_view() {
    let cluster = Cluster::single(options()).await.unwrap();
    let node = cluster.node(1);
    // 300 tenant buckets over two streams, and 25 proxies on `api`.
    let tenants = |from: usize| -> Vec<BucketId> {
        (from..from + 150)
            .map(|i| bucket(&[("tenant", &format!("t{i}"))]))
            .collect()
    };
    let mut fleet = vec![
        proxy(node.grpc, tenants(0), 4),
        proxy(node.grpc, tenants(150), 4),
    ];
    for _ in 0..25 {
        fleet.push(proxy(node.grpc, vec![bucket(&[("name", "api")])], 8));
    }
    let v = eventually(
        Duration::from_secs(30),
        "every bucket subscribed",
        || async {
            let v = view(node.http, "").await;
            (v["buckets_total"] == 301 && v["subscriptions_total"] == 325).then_some(v)
        },
    )
    .await
    .unwrap();
    let listed = v["buckets"].as_array().unwrap();
    assert_eq!(listed.len(), 100, "at most MAX_VIEW_BUCKETS buckets");
    assert_eq!(v["buckets_left_out"], 201);
    // The busiest bucket first: `api` (25 × 8/s) beats every tenant (4/s).
    assert_eq!(listed[0]["rule"], "api", "{}", listed[0]);
    assert_eq!(listed[0]["proxies"].as_array().unwrap().len(), 20);
    assert_eq!(listed[0]["proxies_left_out"], 5);
    assert_eq!(listed[0]["proxies_total"], 25);
    let bytes = v.to_string().len();
    assert!(bytes < 512 * 1024, "the view is {bytes} bytes");

    // Read-only like the dashboard's other read endpoints: no token needed, no other
    // method, a malformed query refused; the admin API still wants its token.
    let url = format!("http://{}/dashboard/api/rlqs", node.http);
    let post = http().post(&url).send().await.unwrap();
    assert_eq!(post.status(), 405);
    let bad = http().get(format!("{url}?from=x")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let admin = http()
        .get(format!("http://{}/admin/v1/policy", node.http))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);

    // When the streams end, the view empties (and the node is still fine).
    drop(fleet);
    eventually(Duration::from_secs(10), "no buckets left", || async {
        let v = view(node.http, "").await;
        (v["buckets_total"] == 0 && v["streams"] == 0).then_some(())
    })
    .await
    .unwrap();
}
