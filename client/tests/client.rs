//! The SDK against a real, in-process quorate node on loopback port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use quorate_client::{Client, DenyReason, Fallback, Hit, RetryPolicy, Source};
use quorate_server::config::Config;
use quorate_server::node::{self, Listeners};

const POLICY: &str = "limits:\n  - name: three\n    limit: 3\n    window: hour\n  - name: bucket\n    algorithm: token_bucket\n    limit: 1\n    window: 1s\n    burst: 2\n";

/// Starts a single node with `POLICY`; returns its gRPC URL and a guard that stops it.
async fn start_node() -> (String, tokio::sync::oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut config = Config::single_node(dir.path().join("data"));
    config.policy_file = Some(policy);
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", listeners.grpc.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(node::run(config, listeners, async move {
        let _ = stopped.await;
    }));
    (url, stop, dir)
}

/// Polls until the node decides (the policy is live), with a deadline.
async fn ready(client: &Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.check("three", "probe", 0).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("node never became ready: {e}"),
        }
    }
}

#[tokio::test]
async fn allows_up_to_the_limit_then_denies_with_retry_after() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder().endpoint(url).connect().await.unwrap();
    ready(&client).await;
    for expected_remaining in [2, 1, 0] {
        let d = client.check("three", "alice", 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, expected_remaining);
        assert_eq!(d.limit_value, 3);
    }
    let d = client.check("three", "alice", 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, Some(DenyReason::OverLimit));
    assert!(d.retry_after.is_some());
    // Another key has its own counter.
    assert!(client.check("three", "bob", 1).await.unwrap().allowed);
}

#[tokio::test]
async fn check_all_answers_in_order_and_cost_beyond_limit_never_passes() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder().endpoint(url).connect().await.unwrap();
    ready(&client).await;
    let decisions = client
        .check_each(&[
            Hit::new("bucket", "k", 2),
            Hit::new("three", "k", 4),
            Hit::new("bucket", "k", 1),
        ])
        .await
        .unwrap();
    assert_eq!(decisions.len(), 3);
    assert!(decisions[0].allowed);
    assert_eq!(decisions[1].reason, Some(DenyReason::CostExceedsLimit));
    assert_eq!(decisions[1].retry_after, None);
    assert!(!decisions[2].allowed, "burst of 2 already spent");
}

#[tokio::test]
async fn check_all_is_all_or_nothing_and_check_each_is_not() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder().endpoint(url).connect().await.unwrap();
    ready(&client).await;
    let hits = [
        Hit::new("three", "fine", 1),
        Hit::new("three", "culprit", 4),
    ];
    let d = client.check_all(&hits).await.unwrap();
    assert!(d[0].allowed, "a peek");
    assert_eq!(d[0].remaining, 3);
    assert_eq!(d[1].reason, Some(DenyReason::CostExceedsLimit));
    let left = client.check("three", "fine", 0).await.unwrap().remaining;
    assert_eq!(left, 3, "a denied check_all takes nothing");
    let d = client.check_each(&hits).await.unwrap();
    assert!(d[0].allowed && !d[1].allowed);
    let left = client.check("three", "fine", 0).await.unwrap().remaining;
    assert_eq!(left, 2, "check_each counts the hit that passed");
}

#[tokio::test]
async fn errors_are_typed() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder().endpoint(url).connect().await.unwrap();
    ready(&client).await;
    let e = client.check("no-such-limit", "k", 1).await.unwrap_err();
    assert!(e.is_unknown_limit(), "{e}");
    let e = client.check("three", "", 1).await.unwrap_err();
    assert!(e.is_invalid_argument(), "{e}");
    assert!(e.to_string().contains("key"), "{e}");
}

#[tokio::test]
async fn fails_over_to_the_next_endpoint() {
    let (url, _stop, _dir) = start_node().await;
    // A port nothing listens on, then the real node.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let client = Client::builder()
        .endpoint(dead_url)
        .endpoint(url)
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    ready(&client).await;
    assert!(client.check("three", "carol", 1).await.unwrap().allowed);
}

#[tokio::test]
async fn no_endpoint_is_a_config_error() {
    let e = Client::builder().connect().await.unwrap_err();
    assert!(e.is_config());
}

#[tokio::test]
async fn an_over_limit_key_is_denied_locally_until_its_reset() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder().endpoint(url).connect().await.unwrap();
    ready(&client).await;
    // Burst 2, one token per second: two pass, the third is denied by the cluster.
    for _ in 0..2 {
        assert!(client.check("bucket", "hot", 1).await.unwrap().allowed);
    }
    let d = client.check("bucket", "hot", 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.source, Source::Cluster);
    let before = client.deny_cache_stats().unwrap();
    let d = client.check("bucket", "hot", 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.source, Source::DenyCache);
    assert!(d.retry_after.unwrap() <= Duration::from_secs(1));
    let after = client.deny_cache_stats().unwrap();
    assert_eq!(after.local_denials, before.local_denials + 1);
    // A token is back within a second: the cache lets the cluster decide again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let d = client.check("bucket", "hot", 1).await.unwrap();
        if d.allowed {
            assert_eq!(d.source, Source::Cluster);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never allowed again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port nothing listens on.
fn dead_endpoint() -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", dead.local_addr().unwrap())
}

#[tokio::test]
async fn an_unreachable_cluster_fails_open_or_closed_as_chosen_and_marks_it() {
    let open = Client::builder()
        .endpoint(dead_endpoint())
        .timeout(Duration::from_millis(300))
        .fallback(Fallback::Allow)
        .connect()
        .await
        .unwrap();
    let d = open.check("three", "k", 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.source, Source::FailOpen);

    let closed = Client::builder()
        .endpoint(dead_endpoint())
        .timeout(Duration::from_millis(300))
        .fallback(Fallback::Deny)
        .connect()
        .await
        .unwrap();
    let d = closed.check("three", "k", 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.source, Source::FailClosed);
    assert_eq!(d.reason, Some(DenyReason::Unavailable));

    // The default returns the error, within the deadline; refused connections are
    // resent even at most once (nothing was sent), so this is not an unknown outcome.
    let strict = Client::builder()
        .endpoint(dead_endpoint())
        .timeout(Duration::from_millis(300))
        .retry_policy(RetryPolicy::AtMostOnce)
        .connect()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let e = strict.check("three", "k", 1).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!e.is_unknown_outcome(), "{e}");
    assert!(e.is_unavailable() || e.is_deadline_exceeded(), "{e}");
}

#[tokio::test]
async fn bad_requests_are_errors_even_with_a_fallback() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder()
        .endpoint(url)
        .fallback(Fallback::Allow)
        .connect()
        .await
        .unwrap();
    ready(&client).await;
    assert!(client
        .check("no-such-limit", "k", 1)
        .await
        .unwrap_err()
        .is_unknown_limit());
}
