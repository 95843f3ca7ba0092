//! `kill -9` loses no committed hit: a single node, and every node of a three-node
//! cluster at once, restarted on the same data dirs resume their counters exactly (`exact`
//! limits; a `strict` limit resumes with its unused reservation counted as used: never
//! more quota, possibly less, see `cluster.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use quorate_e2e::{policy, Check, Cluster, NodeOptions};

const LIMIT: u64 = 10;
const USED_BEFORE_CRASH: u64 = 7;

fn options() -> NodeOptions {
    NodeOptions {
        policy: Some(policy(&[
            ("fixed", "fixed_window", LIMIT, "exact"),
            ("bucket", "token_bucket", LIMIT, "exact"),
        ])),
        ..NodeOptions::default()
    }
}

/// Uses `USED_BEFORE_CRASH` of each limit through the given nodes, round-robin.
async fn use_quota(cluster: &Cluster, through: &[u64]) {
    for limit in ["fixed", "bucket"] {
        for i in 0..USED_BEFORE_CRASH {
            let id = through[i as usize % through.len()];
            let d = cluster.node(id).check(limit, "k", None).await.decided();
            assert!(d.allowed, "{limit} hit #{i} via node {id}: {d:?}");
            assert_eq!(d.remaining, LIMIT - i - 1);
        }
    }
}

/// After the restart: exactly the rest of the quota is left, then denials.
async fn assert_resumes(cluster: &Cluster, through: &[u64]) {
    for limit in ["fixed", "bucket"] {
        let left = LIMIT - USED_BEFORE_CRASH;
        for id in through {
            let d = cluster.node(*id).check(limit, "k", Some(0)).await.decided();
            assert_eq!(d.remaining, left, "{limit} peeked via node {id}: {d:?}");
        }
        let mut allowed = 0;
        for i in 0..left + 2 {
            let id = through[i as usize % through.len()];
            let d = cluster.node(id).check(limit, "k", None).await.decided();
            if d.allowed {
                allowed += 1;
            }
        }
        assert_eq!(
            allowed, left,
            "{limit}: exactly the unused quota is granted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_resumes_counters_after_kill_9() {
    // Snapshot every few entries, so recovery goes through a snapshot plus a log tail.
    let mut cluster = Cluster::single(NodeOptions {
        snapshot_every: Some(4),
        ..options()
    })
    .await
    .unwrap();
    use_quota(&cluster, &[1]).await;
    let before = cluster.status(1).await.unwrap();
    assert!(
        before.snapshot_index.is_some(),
        "a snapshot was taken: {before:?}"
    );

    cluster.kill(1);
    cluster.restart(1).unwrap();
    cluster.node_mut(1).wait_ready().await.unwrap();

    let after = cluster.status(1).await.unwrap();
    assert!(
        after.last_applied >= before.last_applied,
        "{before:?} → {after:?}"
    );
    assert_eq!(after.counters, before.counters);
    assert_resumes(&cluster, &[1]).await;

    // And once more, now that the log also holds the resumed hits.
    cluster.restart(1).unwrap();
    cluster.node_mut(1).wait_ready().await.unwrap();
    for limit in ["fixed", "bucket"] {
        let d = cluster.node(1).check(limit, "k", None).await.decided();
        assert!(!d.allowed, "{limit}: the quota stays used up: {d:?}");
        assert_eq!(d.remaining, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_resumes_counters_after_kill_9_of_every_node() {
    let mut cluster = Cluster::three(options()).await.unwrap();
    use_quota(&cluster, &[1, 2, 3]).await;

    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.restart(id).unwrap();
    }
    for id in [1, 2, 3] {
        cluster.node_mut(id).wait_ready().await.unwrap();
    }
    cluster.wait_leader(&[1, 2, 3]).await.unwrap();
    assert_resumes(&cluster, &[1, 2, 3]).await;
}
