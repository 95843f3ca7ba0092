//! Issue 3, `fast` mode: a leader killed with SIGKILL under load may lose the consumed
//! hits it granted but had not replicated yet, so the cluster may grant more than the
//! limit across the failover. This test measures that overshoot (granted − limit, as the
//! clients saw it) and checks it against the bound documented in
//! `server/src/engine/fast.rs`, derived from the batch settings the nodes run with.
//! docs/benchmarks.md ("Fast mode: quota lost on leader failover") records measurements.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorate_e2e::{api, eventually, policy, Check, Cluster, NodeOptions};

/// The fast limit, per hour-long (here: year-long) window.
const L: u64 = 2000;
/// `--batch-max-hits`: most consumed hits in one replicated entry.
const BATCH_MAX_HITS: u64 = 64;
/// `--batch-inflight`: most consumed entries proposed but not yet applied.
const BATCH_INFLIGHT: u64 = 2;
/// `CONSUMED_QUEUE` in `server/src/engine/fast.rs`: granted hits waiting to be batched
/// (beyond it they are dropped from replication and counted as lost at once).
const CONSUMED_QUEUE: u64 = 65_536;
const CLIENTS_PER_NODE: u64 = 3;
/// As in `cluster.rs`: failover within about a second.
const ELECTION_TIMEOUT_MS: u64 = 200;

/// What the load clients saw.
#[derive(Debug, Default)]
struct Tally {
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
    /// Denials from requests sent after the kill.
    denied_after_kill: AtomicU64,
}

/// `name`'s value in the node's Prometheus exposition, if present.
async fn metric(http: std::net::SocketAddr, name: &str) -> anyhow::Result<Option<f64>> {
    let text = api::http()
        .get(format!("http://{http}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .text()
        .await?;
    Ok(text.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_limit_overshoot_across_a_leader_kill_stays_within_the_unreplicated_bound() {
    let mut cluster = Cluster::three(NodeOptions {
        policy: Some(policy(&[("fast", "fixed_window", L, "fast")])),
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        extra_args: vec![
            "--batch-max-hits".into(),
            BATCH_MAX_HITS.to_string(),
            "--batch-inflight".into(),
            BATCH_INFLIGHT.to_string(),
        ],
        ..NodeOptions::default()
    })
    .await
    .unwrap();
    let old_leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();

    // What the dead leader can have granted without replicating it: its entries in
    // flight, plus its queue of consumed hits; and never more than it granted, which is
    // at most the limit.
    let bound = (BATCH_INFLIGHT * BATCH_MAX_HITS + CONSUMED_QUEUE).min(L);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let served_after_kill: Arc<Mutex<Option<Instant>>> = Arc::default();

    let mut clients = Vec::new();
    for id in [1, 2, 3] {
        for _ in 0..CLIENTS_PER_NODE {
            let mut client = cluster.node(id).client();
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            let (killed_at, served) = (Arc::clone(&killed_at), Arc::clone(&served_after_kill));
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let after_kill = killed_at.lock().unwrap().is_some_and(|k| sent > k);
                    match api::check(&mut client, "fast", "k", None).await {
                        Ok(d) => {
                            if d.allowed {
                                tally.allowed.fetch_add(1, Ordering::SeqCst);
                            } else {
                                tally.denied.fetch_add(1, Ordering::SeqCst);
                                if after_kill {
                                    tally.denied_after_kill.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            if after_kill {
                                served.lock().unwrap().get_or_insert_with(Instant::now);
                            }
                        }
                        Err(_) => {
                            tally.errors.fetch_add(1, Ordering::SeqCst);
                            // Back off a little so a dead node's clients don't spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }));
        }
    }

    // Kill the leader mid-window, with a third of the quota granted.
    eventually(
        Duration::from_secs(10),
        "a third of the quota to be granted",
        || {
            let used = tally.allowed.load(Ordering::SeqCst);
            async move { (used >= L / 3).then_some(()) }
        },
    )
    .await
    .unwrap();
    cluster.kill(old_leader);
    let kill = Instant::now();
    *killed_at.lock().unwrap() = Some(kill);
    let allowed_at_kill = tally.allowed.load(Ordering::SeqCst);

    // A new leader serves, then the quota runs out on the survivors.
    let served_at = eventually(
        Duration::from_secs(5),
        "a decision for a request sent after the kill",
        || {
            let s = *served_after_kill.lock().unwrap();
            async move { s }
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "denials after the failover", || {
        let denied = tally.denied_after_kill.load(Ordering::SeqCst);
        async move { (denied >= 20).then_some(()) }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let allowed = tally.allowed.load(Ordering::SeqCst);
    let denied = tally.denied.load(Ordering::SeqCst);
    let errors = tally.errors.load(Ordering::SeqCst);
    let overshoot = allowed as i64 - L as i64;
    eprintln!(
        "fast overshoot {overshoot} (bound {bound}): allowed {allowed} (at kill {allowed_at_kill}), \
         denied {denied}, errors {errors}, limit {L}, batch {BATCH_INFLIGHT} x {BATCH_MAX_HITS}, \
         first decision after the kill in {:?}",
        served_at - kill
    );
    assert!(
        overshoot <= bound as i64,
        "a fast limit of {L} granted {allowed} hits across the failover: overshoot \
         {overshoot} exceeds the bound {bound}"
    );
    // Quota not granted to anyone can only come from requests whose answer was lost.
    assert!(
        allowed + errors >= L,
        "only {allowed} allowed with {errors} failed requests: quota vanished"
    );

    // The survivors agree that the quota is gone, and lost nothing themselves: only the
    // dead leader could count losses, and its counter died with it.
    let survivors = cluster.running();
    let new_leader = cluster.wait_leader(&survivors).await.unwrap();
    assert_ne!(new_leader, old_leader);
    for id in survivors {
        let node = cluster.node(id);
        let d = node.check("fast", "k", Some(0)).await.decided();
        assert_eq!(d.remaining, 0, "through node {id}: {d:?}");
        let lost = metric(node.http, "quorate_fast_hits_unreplicated_total")
            .await
            .unwrap();
        assert_eq!(
            lost,
            Some(0.0),
            "node {id} (new leader {new_leader}): quorate_fast_hits_unreplicated_total"
        );
        // Every survivor made log entries durable.
        let fsyncs = metric(node.http, "quorate_raft_log_fsyncs_total")
            .await
            .unwrap();
        assert!(
            fsyncs.is_some_and(|n| n > 0.0),
            "node {id}: quorate_raft_log_fsyncs_total {fsyncs:?}"
        );
    }
}
