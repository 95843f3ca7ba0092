//! A three-node cluster: election, decisions through every node (followers forward to
//! the leader), and a leader killed with SIGKILL under load from concurrent clients on
//! every node: a new leader serves within the election bound and a strict limit is never
//! exceeded across the failover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorate_e2e::{api, eventually, policy, Check, Cluster, NodeOptions};

/// How soon after the leader dies a new one must serve (issue 3: "within 2 s").
const FAILOVER_BOUND: Duration = Duration::from_secs(2);

/// Election timeout for the failover test. openraft 0.9 lets a follower stand for
/// election only after a leader lease (= the maximum election timeout, twice this) plus a
/// random election timeout without heartbeats: 0.6–0.8 s here, leaving room within
/// [`FAILOVER_BOUND`] for the vote, the new leader's first commit and a loaded machine.
const FAILOVER_ELECTION_TIMEOUT_MS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_decide_consistently_through_every_node() {
    const STRICT: u64 = 9;
    const FAST: u64 = 12;
    let cluster = Cluster::three(NodeOptions {
        policy: Some(policy(&[
            ("strict", "fixed_window", STRICT, "strict"),
            ("fast", "fixed_window", FAST, "fast"),
        ])),
        ..NodeOptions::default()
    })
    .await
    .unwrap();

    // One leader, known to all, in one term.
    let mut statuses = Vec::new();
    for id in [1, 2, 3] {
        statuses.push(cluster.status(id).await.unwrap());
    }
    let leader = statuses[0].leader.unwrap();
    assert_eq!(
        statuses.iter().filter(|s| s.is_leader()).count(),
        1,
        "{statuses:#?}"
    );
    for s in &statuses {
        assert_eq!(s.leader, Some(leader), "{statuses:#?}");
        assert_eq!(s.term, statuses[0].term, "{statuses:#?}");
        assert_eq!(s.members.len(), 3, "{s:?}");
        assert!(s.members.iter().all(|m| m.voter), "{s:?}");
    }

    // One counter, hit round-robin through every node: one sequence of decisions.
    for (limit, value) in [("strict", STRICT), ("fast", FAST)] {
        for i in 0..value + 3 {
            let node = cluster.node(i % 3 + 1);
            let d = node.check(limit, "k", None).await.decided();
            assert_eq!(d.limit_value, value);
            assert_eq!(
                d.allowed,
                i < value,
                "{limit}: hit #{i} through node {}: {d:?}",
                node.id
            );
            assert_eq!(d.remaining, value - (i + 1).min(value), "{limit}: {d:?}");
        }
        // Peeks agree everywhere.
        for id in [1, 2, 3] {
            let d = cluster.node(id).check(limit, "k", Some(0)).await.decided();
            assert_eq!(d.remaining, 0, "{limit} through node {id}: {d:?}");
        }
    }

    // Fast hits replicate behind: every replica ends up holding the counters.
    let all = cluster.wait_caught_up(leader, &[1, 2, 3]).await.unwrap();
    let counters: Vec<usize> = all.iter().map(|s| s.counters).collect();
    assert!(counters.iter().all(|c| *c == 2), "{counters:?}");
}

/// What the load clients saw.
#[derive(Debug, Default)]
struct Tally {
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
    /// Denials from requests sent after the kill.
    denied_after_kill: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_fails_over_fast_and_never_overshoots_a_strict_limit() {
    const L: u64 = 500;
    const CLIENTS_PER_NODE: u64 = 2;
    let mut cluster = Cluster::three(NodeOptions {
        policy: Some(policy(&[("strict", "fixed_window", L, "strict")])),
        election_timeout_ms: FAILOVER_ELECTION_TIMEOUT_MS,
        ..NodeOptions::default()
    })
    .await
    .unwrap();
    let old_leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    // When the leader was killed, and the first decision for a request sent after it.
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let served_after_kill: Arc<Mutex<Option<(Instant, u64)>>> = Arc::default();

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
                    match api::check(&mut client, "strict", "k", None).await {
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
                                let mut s = served.lock().unwrap();
                                if s.is_none() {
                                    *s = Some((Instant::now(), id));
                                }
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

    // Kill the leader mid-window, with a third of the quota used.
    eventually(
        Duration::from_secs(30),
        "a third of the quota to be used",
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

    // A new leader serves within the election bound.
    let (served_at, via) = eventually(
        Duration::from_secs(20),
        "a decision for a request sent after the kill",
        || {
            let s = *served_after_kill.lock().unwrap();
            async move { s }
        },
    )
    .await
    .unwrap();
    let failover = served_at - kill;
    assert!(
        failover <= FAILOVER_BOUND,
        "first decision after the kill took {failover:?} (through node {via})"
    );

    // Keep the load on until the quota is clearly exhausted on the surviving nodes.
    eventually(
        Duration::from_secs(30),
        "denials after the failover",
        || {
            let denied = tally.denied_after_kill.load(Ordering::SeqCst);
            async move { (denied >= 20).then_some(()) }
        },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let allowed = tally.allowed.load(Ordering::SeqCst);
    let errors = tally.errors.load(Ordering::SeqCst);
    let denied = tally.denied.load(Ordering::SeqCst);
    eprintln!(
        "failover in {failover:?}; allowed {allowed}, denied {denied}, errors {errors} (limit {L})"
    );
    assert!(
        allowed <= L,
        "a strict limit of {L} granted {allowed} hits across the failover"
    );
    // Quota not acknowledged to anyone can only come from requests that failed (their
    // hit may have committed without the answer arriving).
    assert!(
        allowed + errors >= L,
        "only {allowed} allowed with {errors} failed requests: quota vanished"
    );

    // The survivors agree that the quota is gone.
    let survivors: Vec<u64> = cluster.running();
    let new_leader = cluster.wait_leader(&survivors).await.unwrap();
    assert_ne!(new_leader, old_leader);
    for id in survivors {
        let d = cluster
            .node(id)
            .check("strict", "k", Some(0))
            .await
            .decided();
        assert_eq!(d.remaining, 0, "through node {id}: {d:?}");
    }
}
