//! Stateless mode against real Redis: `quorate serve --store redis://…` nodes that share
//! one `redis-server` (or a 3-master Redis Cluster), each started by the test on free
//! loopback ports.
//!
//! - two nodes hammering one limit together never grant more than the limit;
//! - Redis killed mid-load: `failure_mode: open` routes pass (marked), `closed` ones
//!   answer 503, both within the store timeout; the password in the store URL never
//!   appears in logs; Redis restarted: decisions come from Redis again;
//! - a Redis Cluster: limits hold across masters, and a limit's slot migrated to another
//!   master mid-load (ASK while it moves, MOVED after) keeps its counter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_e2e::{eventually, Cluster, NodeOptions};
use quorate_redis::test_support::{RedisCluster, RedisServer};

/// Fixed windows are epoch-aligned; 30 days keeps a rollover mid-test unlikely while
/// staying within the Redis store's exact range (windows up to 52 days).
fn policy(limits: &[(&str, u64)]) -> String {
    let mut text = String::from("limits:\n");
    for (name, limit) in limits {
        text.push_str(&format!(
            "  - name: {name}\n    algorithm: fixed_window\n    limit: {limit}\n    window: 30d\n"
        ));
    }
    text
}

async fn stateless_node(policy: String, store: &str, timeout_ms: u64) -> Cluster {
    Cluster::single(NodeOptions {
        policy: Some(policy),
        extra_args: vec![
            "--store".into(),
            store.into(),
            "--store-timeout-ms".into(),
            timeout_ms.to_string(),
        ],
        ..NodeOptions::default()
    })
    .await
    .expect("stateless node starts")
}

#[derive(Debug, Default)]
struct Tally {
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
}

/// `workers` tasks per node, each sending `per_worker` hits of `limit` (key "k").
async fn hammer(
    nodes: &[&Cluster],
    limits: &[&str],
    workers: usize,
    per_worker: usize,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for node in nodes {
        for w in 0..workers {
            let mut client = node.node(1).client();
            let tally = Arc::clone(&tally);
            let limits: Vec<String> = limits.iter().map(|l| l.to_string()).collect();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_worker {
                    let limit = &limits[(w + i) % limits.len()];
                    match quorate_e2e::api::check(&mut client, limit, "k", None).await {
                        Ok(d) if d.allowed => tally.allowed.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => tally.denied.fetch_add(1, Ordering::Relaxed),
                        Err(_) => tally.errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_sharing_one_redis_never_exceed_a_limit() {
    let redis = RedisServer::start().expect("redis-server starts");
    let text = policy(&[("shared", 100)]);
    let a = stateless_node(text.clone(), &redis.url(), 2_000).await;
    let b = stateless_node(text, &redis.url(), 2_000).await;

    // 2 nodes × 8 workers × 20 hits = 320 hits for a limit of 100.
    let tally = hammer(&[&a, &b], &["shared"], 8, 20).await;
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    assert_eq!(tally.allowed.load(Ordering::Relaxed), 100, "{tally:?}");
    assert_eq!(tally.denied.load(Ordering::Relaxed), 220, "{tally:?}");

    // Both nodes see the same counter.
    for node in [&a, &b] {
        let peek = node.node(1).check("shared", "k", Some(0)).await.unwrap();
        assert_eq!(peek.remaining, 0);
    }
}

const AUTHZ_POLICY: &str = r#"
identities:
  - name: anon
    anonymous: {consumer: anonymous}
routes:
  - name: open
    match: {path_prefix: /open/}
    identities: [anon]
    limits:
      - {name: open_limit, limit: 1000000, window: hour}
    failure_mode: open
  - name: closed
    match: {path_prefix: /closed/}
    identities: [anon]
    limits:
      - {name: closed_limit, limit: 1000000, window: hour}
    failure_mode: closed
"#;

/// `GET /authz/<path>` on the node: (status, whether the failure-mode mark is set, time).
async fn forward_auth(node: &Cluster, path: &str) -> (u16, bool, Duration) {
    let started = Instant::now();
    let url = format!("{}/authz/{path}", node.node(1).http_url());
    let response = quorate_e2e::api::http()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("forward-auth answers");
    let marked = response.headers().contains_key("x-quorate-failure-mode");
    (response.status().as_u16(), marked, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_load_applies_failure_mode_then_recovers() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    // A password in the URL: Redis here has none, so use an ACL user that exists by
    // default ("default") with no password check (nopass): AUTH default <anything> passes.
    let secret = "hunter2-store-password";
    let url = format!("redis://default:{secret}@127.0.0.1:{}", redis.port());
    let node = stateless_node(AUTHZ_POLICY.into(), &url, 300).await;

    // Healthy: decided by Redis, not marked.
    assert_eq!(forward_auth(&node, "open/x").await.0, 200);
    assert!(!forward_auth(&node, "open/x").await.1);
    assert_eq!(forward_auth(&node, "closed/x").await.0, 200);

    redis.kill();
    // Down: open passes marked, closed refuses; each answer within the store timeout
    // (plus slack for a shared CPU), never a hang.
    for _ in 0..5 {
        let (status, marked, took) = forward_auth(&node, "open/x").await;
        assert_eq!((status, marked), (200, true));
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let (status, _, took) = forward_auth(&node, "closed/x").await;
        assert_eq!(status, 503);
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    let metrics = quorate_e2e::api::metrics(node.node(1).http).await.unwrap();
    assert!(
        metrics.contains("quorate_store_up 0"),
        "store_up should be 0"
    );
    assert!(!metrics.contains("quorate_store_errors_total 0\n"));

    redis.restart().expect("redis-server restarts");
    eventually(
        Duration::from_secs(20),
        "decisions from Redis again",
        || async {
            let (status, marked, _) = forward_auth(&node, "closed/x").await;
            let (open_status, open_marked, _) = forward_auth(&node, "open/x").await;
            ((status, marked, open_status, open_marked) == (200, false, 200, false)).then_some(())
        },
    )
    .await
    .unwrap();

    let logs = node.node(1).logs(400);
    assert!(
        logs.contains("Redis counter store unavailable"),
        "outage logged"
    );
    assert!(
        logs.contains("Redis counter store is back"),
        "recovery logged"
    );
    assert!(
        !logs.contains(secret),
        "the store password leaked into the logs"
    );
    assert!(logs.contains("default:***@"), "the URL is logged redacted");
}

/// Moves `slot` from the master at `from` to the one at `to` key by key, pausing between
/// keys so that requests meet the slot mid-migration (ASK), then hands it over (MOVED).
fn migrate_slot(slot: u16, from: u16, to: u16, all: &[u16]) {
    let conn = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let (mut src, mut dst) = (conn(from), conn(to));
    let id = |c: &mut redis::Connection| -> String {
        redis::cmd("CLUSTER").arg("MYID").query(c).unwrap()
    };
    let (src_id, dst_id) = (id(&mut src), id(&mut dst));
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&src_id)
        .query(&mut dst)
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&dst_id)
        .query(&mut src)
        .unwrap();
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1)
            .query(&mut src)
            .unwrap();
        let Some(key) = keys.into_iter().next() else {
            break;
        };
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(key)
            .query(&mut src)
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    for port in all {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&dst_id)
            .query(&mut conn(*port))
            .unwrap();
    }
}

/// The master holding `pattern`'s keys, and their slot.
fn owner_of(pattern: &str, ports: &[u16]) -> (u16, u16) {
    for &port in ports {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
        if let Some(key) = keys.first() {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut c)
                .unwrap();
            return (port, slot);
        }
    }
    panic!("no master holds {pattern}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_limits_hold_and_survive_a_slot_migration() {
    let cluster = RedisCluster::start(3).expect("3-master Redis Cluster");
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port()).collect();
    let text = policy(&[("alpha", 300), ("beta", 300), ("gamma", 300)]);
    let a = stateless_node(text.clone(), &cluster.url(), 3_000).await;
    let b = stateless_node(text, &cluster.url(), 3_000).await;

    // Phase 1: 2 nodes × 3 workers × 50 = 300 hits over 3 limits: 100 of each, all pass.
    let first = hammer(&[&a, &b], &["alpha", "beta", "gamma"], 3, 50).await;
    assert_eq!(first.errors.load(Ordering::Relaxed), 0, "{first:?}");
    assert_eq!(first.allowed.load(Ordering::Relaxed), 300, "{first:?}");
    let owners: Vec<(u16, u16)> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|l| owner_of(&format!("quorate:*:c:{l}\u{1f}*"), &ports))
        .collect();
    let distinct: std::collections::BTreeSet<u16> = owners.iter().map(|(p, _)| *p).collect();
    eprintln!(
        "limit owners (port, slot): {owners:?}, {} distinct masters",
        distinct.len()
    );

    // Phase 2: alpha's slot moves to another master while 2 × 4 workers send 400 more
    // alpha hits: exactly 200 more may pass (100 were used before the move).
    let (from, slot) = owners[0];
    let to = *ports.iter().find(|p| **p != from).unwrap();
    let all = ports.clone();
    let load = tokio::spawn({
        let (a, b) = (a, b);
        async move {
            let tally = hammer(&[&a, &b], &["alpha"], 4, 50).await;
            (tally, a, b)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(move || migrate_slot(slot, from, to, &all))
        .await
        .unwrap();
    let (second, a, _b) = load.await.unwrap();
    eprintln!("during migration: {second:?}");
    let allowed = second.allowed.load(Ordering::Relaxed);
    let errors = second.errors.load(Ordering::Relaxed);
    assert!(
        allowed <= 200,
        "the limit was exceeded across the migration: {second:?}"
    );
    assert!(allowed + errors >= 200, "quota was lost: {second:?}");
    assert_eq!(
        owner_of("quorate:*:c:alpha\u{1f}*", &ports).0,
        to,
        "the slot moved"
    );

    // After the move the counter is where MOVED points: alpha is spent, beta is not.
    let alpha = a.node(1).check("alpha", "k", Some(0)).await.unwrap();
    assert_eq!(alpha.remaining, 200 - allowed);
    let beta = a.node(1).check("beta", "k", Some(0)).await.unwrap();
    assert_eq!(beta.remaining, 200);
}

/// `rediss://` with an ACL user and password: the node trusts the test CA
/// (`--store-ca-file`), authenticates, and decides over TLS; a node that does not trust
/// the CA cannot connect and fails closed instead of talking in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_with_an_acl_user_decides_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = quorate_e2e::certs::Ca::new("redis test CA");
    let ca_path = ca.write(&dir.path().join("ca.pem"));
    let leaf = ca.leaf("redis", 7);
    let (cert, key) = (dir.path().join("redis.pem"), dir.path().join("redis.key"));
    leaf.write(&cert, &key);
    let password = "s3cret-acl-password";
    let redis = RedisServer::start_with(
        [
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-auth-clients",
            "no",
            "--user",
            "quorate",
            "on",
            &format!(">{password}"),
            "~*",
            "+@all",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca_path.display().to_string(),
        ])
        .collect(),
    )
    .expect("redis-server with TLS starts");
    let url = format!("rediss://quorate:{password}@127.0.0.1:{}", redis.port());

    let node = Cluster::single(NodeOptions {
        policy: Some(policy(&[("tls", 2)])),
        extra_args: vec![
            "--store".into(),
            url.clone(),
            "--store-ca-file".into(),
            ca_path.display().to_string(),
        ],
        ..NodeOptions::default()
    })
    .await
    .unwrap();
    let decided: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(node.node(1).check("tls", "k", None).await.unwrap().allowed);
        }
        v
    };
    assert_eq!(decided, vec![true, true, false]);
    assert!(!node.node(1).logs(400).contains(password));

    // Without the CA the certificate is not trusted: no decision, UNAVAILABLE.
    let untrusting = stateless_node(policy(&[("tls", 2)]), &url, 500).await;
    let refused = untrusting.node(1).check("tls", "k", None).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);
    assert!(!untrusting.node(1).logs(400).contains(password));
}

/// A limit with a window over ~52 days cannot be decided exactly by the Redis script, so
/// stateless mode refuses such a policy where it enters — the admin API (422 naming the
/// limit, the previous policy stays live) and the policy file at startup — rather than
/// failing each hit later.
#[tokio::test]
async fn a_policy_redis_cannot_decide_exactly_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().expect("redis-server starts");
    let node = stateless_node(policy(&[("fits", 5)]), &redis.url(), 2_000).await;
    let http = node.node(1).http;
    let live_version = || async {
        let policy = quorate_e2e::api::admin(
            reqwest::Method::GET,
            http,
            "/policy",
            serde_json::Value::Null,
        )
        .await
        .unwrap();
        policy["version"].clone()
    };
    let before = live_version().await;
    assert!(before.is_u64(), "{before}");

    let too_long = "limits:\n  - name: yearly\n    limit: 10\n    window: 365d\n";
    let refused = quorate_e2e::api::admin(
        reqwest::Method::PUT,
        http,
        "/policy",
        serde_json::json!({ "source": too_long }),
    )
    .await
    .expect_err("a 365-day window is refused in stateless mode");
    let message = format!("{refused:#}");
    assert!(message.contains("422"), "{message}");
    assert!(message.contains("yearly"), "names the limit: {message}");
    assert!(message.contains("52 days"), "says why: {message}");

    assert_eq!(
        live_version().await,
        before,
        "the previous policy stays live"
    );
    let d = node.node(1).check("fits", "k", None).await.unwrap();
    assert!(d.allowed);

    // The same policy as the startup file: the node refuses to start, and says why.
    let dir = tempfile::tempdir().unwrap();
    let options = NodeOptions {
        policy: Some(too_long.to_string()),
        extra_args: vec!["--store".into(), redis.url()],
        ..NodeOptions::default()
    };
    let mut refused_node = quorate_e2e::node::TestNode::spawn(1, dir.path(), &options, None)
        .expect("the process starts");
    assert!(refused_node.wait_ready().await.is_err(), "never ready");
    let stderr = refused_node.stderr();
    assert!(
        stderr.contains("yearly") && stderr.contains("52 days"),
        "{stderr}"
    );
}
