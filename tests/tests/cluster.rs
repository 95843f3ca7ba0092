//! A three-node cluster: election, decisions through every node (followers forward to
//! the leader), and a leader killed with SIGKILL under load from concurrent clients on
//! every node: a new leader serves within the election bound and neither an `exact` nor a
//! `strict` (reservations) limit is ever exceeded across the failover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use quorate_e2e::{policy, Check, Cluster, FailoverLoad, NodeOptions};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_never_overshoots_an_exact_limit_nor_loses_quota() {
    // `exact` commits every hit: quota no client heard of can only be in failed requests.
    leader_kill_under_load("exact", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_never_overshoots_a_strict_limit_and_under_grants_one_reservation_at_most(
) {
    // `strict` answers from reservations: the unused part of the one the dead leader held
    // stays counted. It is at most a tenth of the headroom (the default sizing) beyond
    // the hits that asked for it, one per client in flight.
    leader_kill_under_load("strict", 500 / 10 + 3 * CLIENTS_PER_NODE).await;
}

const CLIENTS_PER_NODE: u64 = 2;

/// Kills the leader mid-window under load from every node: a new leader serves within
/// the election bound, the limit is never exceeded, and at most `under_grant` quota is
/// neither granted nor in a failed request.
async fn leader_kill_under_load(consistency: &str, under_grant: u64) {
    const L: u64 = 500;
    let mut cluster = Cluster::three(NodeOptions {
        policy: Some(policy(&[("limited", "fixed_window", L, consistency)])),
        election_timeout_ms: FAILOVER_ELECTION_TIMEOUT_MS,
        ..NodeOptions::default()
    })
    .await
    .unwrap();
    let old_leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();

    let load = FailoverLoad::start(&cluster, &[1, 2, 3], CLIENTS_PER_NODE, "limited");

    // Kill the leader mid-window, with a third of the quota used.
    load.wait_allowed(L / 3, Duration::from_secs(30)).await;
    cluster.kill(old_leader);
    let kill = load.mark_killed();

    // A new leader serves within the election bound.
    let (served_at, via) = load.first_served_after_kill(Duration::from_secs(20)).await;
    let failover = served_at - kill;
    assert!(
        failover <= FAILOVER_BOUND,
        "first decision after the kill took {failover:?} (through node {via})"
    );

    // Keep the load on until the quota is clearly exhausted on the surviving nodes.
    load.wait_denied_after_kill(20, Duration::from_secs(30))
        .await;
    let tally = load.stop().await;

    let allowed = tally.allowed.load(Ordering::SeqCst);
    let errors = tally.errors.load(Ordering::SeqCst);
    let denied = tally.denied.load(Ordering::SeqCst);
    eprintln!(
        "{consistency}: failover in {failover:?}; allowed {allowed}, denied {denied}, errors {errors} (limit {L})"
    );
    assert!(
        allowed <= L,
        "a {consistency} limit of {L} granted {allowed} hits across the failover"
    );
    // Quota not acknowledged to anyone can only come from requests that failed (their
    // hit may have committed without the answer arriving) or, for `strict`, from the dead
    // leader's unused reservation.
    assert!(
        allowed + errors + under_grant >= L,
        "only {allowed} allowed with {errors} failed requests: more than {under_grant} of the quota vanished"
    );

    // The survivors agree that the quota is gone.
    let survivors: Vec<u64> = cluster.running();
    let new_leader = cluster.wait_leader(&survivors).await.unwrap();
    assert_ne!(new_leader, old_leader);
    for id in survivors {
        let d = cluster
            .node(id)
            .check("limited", "k", Some(0))
            .await
            .decided();
        assert_eq!(d.remaining, 0, "through node {id}: {d:?}");
    }
}
