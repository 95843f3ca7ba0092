//! The SDK against a real, in-process quorate node on loopback port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use quorate_client::{Client, DenyReason, Hit};
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
async fn check_many_answers_in_order_and_cost_beyond_limit_never_passes() {
    let (url, _stop, _dir) = start_node().await;
    let client = Client::builder().endpoint(url).connect().await.unwrap();
    ready(&client).await;
    let decisions = client
        .check_many(vec![
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
