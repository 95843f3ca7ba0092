//! A new learner joining a node that holds 100 k counters and has compacted its log
//! receives them as a snapshot, and once promoted decides consistently with the leader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_e2e::{eventually, hit, pb, policy, Check, Cluster, NodeOptions};

const KEYS: usize = 100_000;
/// Hits per `Check` request (the most a request may carry).
const PER_REQUEST: usize = 256;
const CONCURRENCY: usize = 4;
const L: u64 = 5;

/// What the learner's log says when it installs a snapshot (`raft/state_machine.rs`).
const INSTALLED: &str = "installed snapshot";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_learner_receives_100k_counters_by_snapshot_and_decides_consistently() {
    let options = NodeOptions {
        policy: Some(policy(&[("wide", "fixed_window", L, "exact")])),
        snapshot_every: Some(200),
        ..NodeOptions::default()
    };
    let mut cluster = Cluster::single(options.clone()).await.unwrap();
    let leader = cluster.node(1);

    // 100 k distinct counters, 256 hits per request, several requests in flight.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = leader.client();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(PER_REQUEST, Ordering::Relaxed);
                    if first >= KEYS {
                        return;
                    }
                    let hits: Vec<pb::Hit> = (first..(first + PER_REQUEST).min(KEYS))
                        .map(|n| hit("wide", &format!("key-{n}"), None))
                        .collect();
                    let n = hits.len();
                    let response = client
                        .check(pb::CheckRequest { hits, atomic: None })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(response.allowed, "fresh counters allow their first hit");
                    assert_eq!(response.decisions.len(), n);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let fill_time = started.elapsed();
    let status = leader.status().await.unwrap();
    assert_eq!(status.counters, KEYS, "{status:?}");

    // More entries (peeks, which add no counters) until the log before the latest
    // snapshot has been compacted away: a newcomer can then only start from a snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let fillers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut client = leader.client();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    quorate_e2e::api::check(&mut client, "wide", "key-0", Some(0))
                        .await
                        .decided();
                }
            })
        })
        .collect();
    let compacted = eventually(
        Duration::from_secs(60),
        "the leader to compact its log",
        || async { leader.status().await.ok()?.purged_index },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for f in fillers {
        f.await.unwrap();
    }
    eprintln!(
        "{KEYS} counters in {fill_time:?}; log compacted up to {compacted} after {:?}",
        started.elapsed()
    );

    // A new node joins as a learner: it can only get the early entries from a snapshot.
    let learner = cluster
        .spawn(NodeOptions {
            join: true,
            ..options.clone()
        })
        .unwrap();
    cluster.node_mut(learner).wait_up().await.unwrap();
    let joined = Instant::now();
    cluster.add_learner(1, learner).await.unwrap();
    let statuses = cluster.wait_caught_up(1, &[learner]).await.unwrap();
    eprintln!("learner caught up in {:?}", joined.elapsed());
    assert_eq!(statuses[0].counters, KEYS, "{:?}", statuses[0]);
    assert!(
        statuses[0].snapshot_index >= Some(compacted),
        "{:?}",
        statuses[0]
    );
    let stderr = cluster.node(learner).stderr();
    assert!(
        stderr.contains(INSTALLED),
        "the learner says it installed a snapshot: {stderr}"
    );
    let leader_view = cluster.status(1).await.unwrap();
    let member = leader_view.member(learner).unwrap();
    assert!(!member.voter);
    assert!(
        member.matched_index >= statuses[0].last_applied,
        "{member:?} {leader_view:?}"
    );

    // Promoted, it decides consistently with the leader, in both directions.
    cluster.promote(1, learner).await.unwrap();
    for n in [0, KEYS / 2, KEYS - 1] {
        let key = format!("key-{n}");
        let via_learner = cluster
            .node(learner)
            .check("wide", &key, None)
            .await
            .decided();
        assert!(via_learner.allowed);
        assert_eq!(via_learner.remaining, L - 2, "{key}: {via_learner:?}");
        let via_leader = cluster.node(1).check("wide", &key, None).await.decided();
        assert_eq!(via_leader.remaining, L - 3, "{key}: {via_leader:?}");
        let peek = cluster
            .node(learner)
            .check("wide", &key, Some(0))
            .await
            .decided();
        assert_eq!(peek.remaining, L - 3, "{key}: {peek:?}");
    }
}
