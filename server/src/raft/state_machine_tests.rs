//! Tests of the state machine: log order, reservations, snapshots, and what a replica
//! decodes from the log.

use super::*;
use crate::raft::SettleItem;
use openraft::{CommittedLeaderId, EntryPayload};

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn policy(text: &str) -> Command {
    Command::SetPolicy {
        ts: 0,
        format: "quorate".into(),
        source: text.into(),
    }
}

fn hits(ts: Nanos, limit: &str, key: &str, n: usize) -> Command {
    Command::Hits {
        ts,
        hits: (0..n)
            .map(|_| Hit {
                limit: limit.into(),
                key: key.into(),
                cost: 1,
                rate: three_per_minute(),
            })
            .collect(),
    }
}

fn allowed(r: &CommandResponse) -> usize {
    match r {
        CommandResponse::Decisions(d) => d.iter().filter(|d| d.allowed).count(),
        other => panic!("not decisions: {other:?}"),
    }
}

fn three_per_minute() -> quorate_algorithms::Rate {
    quorate_algorithms::Rate::new(
        quorate_algorithms::Algorithm::FixedWindow,
        3,
        60 * SECOND,
        None,
    )
    .unwrap()
}

const THREE_PER_MINUTE: &str = "limits:\n  - name: l\n    limit: 3\n    window: minute\n";

#[tokio::test]
async fn decides_in_log_order_and_denies_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let r = sm
        .apply(vec![
            entry(1, policy(THREE_PER_MINUTE)),
            entry(2, hits(SECOND, "l", "k", 5)),
        ])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResponse::Policy(Ok(1)));
    assert_eq!(allowed(&r[1]), 3);
}

#[tokio::test]
async fn a_settle_gives_back_the_unused_part_of_a_reservation_in_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let reserve = Command::Reserve {
        ts: SECOND,
        items: vec![ReserveItem {
            limit: "l".into(),
            key: "k".into(),
            rate: three_per_minute(),
            request: quorate_algorithms::ReserveRequest {
                need: 1,
                extra_cap: 2,
                fraction_percent: 100,
                horizon: SECOND,
            },
        }],
    };
    let r = sm.apply(vec![entry(1, reserve)]).await.unwrap();
    let CommandResponse::Reserved { outcomes, .. } = &r[0] else {
        panic!("not reserved: {:?}", r[0]);
    };
    assert_eq!(outcomes[0].granted, 3);
    let settle = |unused| Command::Settle {
        ts: 2 * SECOND,
        items: vec![SettleItem {
            limit: "l".into(),
            key: "k".into(),
            rate: three_per_minute(),
            valid_until: outcomes[0].valid_until,
            unused,
        }],
    };
    // One of the three was spent: two come back, and only two more hits pass.
    let r = sm
        .apply(vec![
            entry(2, settle(2)),
            entry(3, hits(3 * SECOND, "l", "k", 3)),
        ])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResponse::Settled);
    assert_eq!(allowed(&r[1]), 2);
    // A settle naming a bucket the counter no longer holds changes nothing.
    let later = Command::Settle {
        ts: 4 * SECOND,
        items: vec![SettleItem {
            valid_until: 60 * SECOND * 5,
            unused: 3,
            ..match settle(0) {
                Command::Settle { items, .. } => items[0].clone(),
                _ => unreachable!(),
            }
        }],
    };
    let r = sm
        .apply(vec![
            entry(4, later),
            entry(5, hits(5 * SECOND, "l", "k", 1)),
        ])
        .await
        .unwrap();
    assert_eq!(allowed(&r[1]), 0);
}

#[tokio::test]
async fn hits_are_decided_by_the_rate_they_carry_not_the_live_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    // No policy at all: the hit's own rate (3 per minute) decides.
    let r = sm
        .apply(vec![entry(1, hits(SECOND, "gone", "k", 4))])
        .await
        .unwrap();
    assert_eq!(allowed(&r[0]), 3);
}

#[tokio::test]
async fn bad_policy_is_refused_and_the_old_one_stays_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let r = sm
        .apply(vec![
            entry(1, policy(THREE_PER_MINUTE)),
            entry(2, policy("limits:\n  - name: l\n    limit: -1\n")),
            entry(3, hits(SECOND, "l", "k", 4)),
        ])
        .await
        .unwrap();
    assert!(
        matches!(r[1], CommandResponse::Policy(Err(_))),
        "{:?}",
        r[1]
    );
    assert_eq!(allowed(&r[2]), 3);
    assert_eq!(
        sm.shared()
            .policy
            .load()
            .version
            .as_ref()
            .map(|v| v.version),
        Some(1)
    );
}

#[tokio::test]
async fn time_going_backwards_grants_nothing_extra() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let minute = 60 * SECOND;
    let r = sm
        .apply(vec![
            entry(1, policy(THREE_PER_MINUTE)),
            // Late in window 10, then a leader whose clock says window 9.
            entry(2, hits(10 * minute + 59 * SECOND, "l", "k", 3)),
            entry(3, hits(9 * minute, "l", "k", 3)),
        ])
        .await
        .unwrap();
    assert_eq!(allowed(&r[1]), 3);
    assert_eq!(allowed(&r[2]), 0);
}

#[tokio::test]
async fn consumed_hits_are_forced_into_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let consumed = Command::Consumed {
        ts: SECOND,
        hits: vec![Hit {
            limit: "l".into(),
            key: "k".into(),
            cost: 2,
            rate: three_per_minute(),
        }],
    };
    let r = sm
        .apply(vec![
            entry(1, policy(THREE_PER_MINUTE)),
            entry(2, consumed),
            entry(3, hits(SECOND, "l", "k", 3)),
        ])
        .await
        .unwrap();
    assert_eq!(allowed(&r[2]), 1);
}

/// A fresh replica (in its own directory, kept alive by the caller) that installed a
/// snapshot `sm` builds now.
async fn replica_from_snapshot(sm: &mut StateMachine) -> (tempfile::TempDir, StateMachine) {
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut replica = StateMachine::open(dir.path()).unwrap();
    replica
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    (dir, replica)
}

#[tokio::test]
async fn snapshot_restores_the_same_future_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    sm.apply(vec![
        entry(1, policy(THREE_PER_MINUTE)),
        entry(2, hits(SECOND, "l", "k", 2)),
    ])
    .await
    .unwrap();
    // A fresh replica installs a snapshot; a restarted one reads it from disk.
    let (_other_dir, mut other) = replica_from_snapshot(&mut sm).await;
    let mut restarted = StateMachine::open(dir.path()).unwrap();

    for m in [&mut sm, &mut other, &mut restarted] {
        let r = m
            .apply(vec![entry(3, hits(2 * SECOND, "l", "k", 3))])
            .await
            .unwrap();
        assert_eq!(allowed(&r[0]), 1);
        assert_eq!(m.applied_state().await.unwrap().0.map(|l| l.index), Some(3));
    }
}

#[tokio::test]
async fn rlqs_grants_survive_snapshots_and_old_snapshots_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let grant = Grant {
        bucket: "b".into(),
        proxy: 7,
        rate: 5_000,
        max_tokens: 1,
        fresh: true,
        since: 0,
        expires_at: 10 * SECOND,
        hold_until: 11 * SECOND,
    };
    sm.apply(vec![entry(
        1,
        Command::Assign {
            ts: SECOND,
            grants: vec![grant],
        },
    )])
    .await
    .unwrap();
    let (_other_dir, other) = replica_from_snapshot(&mut sm).await;
    let charge = other.shared().assignment_charge("b", 2 * SECOND);
    assert_eq!(charge.held.get(&7), Some(&5_000));
    assert_eq!(charge.tokens, 1);

    // A body written before the grant table existed.
    #[derive(Serialize)]
    struct V1 {
        last_applied: Option<LogId>,
        membership: StoredMembership,
        clock: Nanos,
        next_sweep: Nanos,
        policy_history: Vec<PolicyVersion>,
        counters: Vec<(String, StoredCounter)>,
    }
    let old = postcard::to_stdvec(&V1 {
        last_applied: None,
        membership: StoredMembership::default(),
        clock: 42,
        next_sweep: 0,
        policy_history: Vec::new(),
        counters: Vec::new(),
    })
    .unwrap();
    let body = decode_body(&old).unwrap();
    assert_eq!(body.clock, 42);
    assert!(body.assignments.is_empty());
}

#[tokio::test]
async fn init_policy_never_overwrites_an_applied_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let init = |text: &str| Command::InitPolicy {
        ts: 0,
        format: "quorate".into(),
        source: text.into(),
    };
    let r = sm
        .apply(vec![
            entry(1, init(THREE_PER_MINUTE)),
            entry(
                2,
                policy("limits:\n  - name: l\n    limit: 1\n    window: minute\n"),
            ),
            entry(3, init(THREE_PER_MINUTE)),
        ])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResponse::Policy(Ok(1)));
    assert_eq!(
        r[2],
        CommandResponse::Policy(Ok(2)),
        "init after a set changes nothing"
    );
    let live = sm.shared().policy.load_full();
    assert_eq!(live.set.limit("l").map(|l| l.rate.limit()), Some(1));
}

#[tokio::test]
async fn rollback_reactivates_an_old_version_as_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let r = sm
        .apply(vec![
            entry(1, policy(THREE_PER_MINUTE)),
            entry(
                2,
                policy("limits:\n  - name: l\n    limit: 1\n    window: minute\n"),
            ),
            entry(3, Command::RollbackPolicy { ts: 0, version: 1 }),
            entry(4, hits(SECOND, "l", "k", 5)),
        ])
        .await
        .unwrap();
    assert_eq!(r[2], CommandResponse::Policy(Ok(3)));
    assert_eq!(allowed(&r[3]), 3);
    let live = sm.shared().policy.load_full();
    assert_eq!(live.set.limit("l").map(|l| l.rate.limit()), Some(3));
    assert_eq!(live.version.as_ref().and_then(|v| v.rollback_of), Some(1));
}

fn hit_on(limit: &str, key: &str, cost: u64, limit_value: u64) -> Hit {
    Hit {
        limit: limit.into(),
        key: key.into(),
        cost,
        rate: quorate_algorithms::Rate::new(
            quorate_algorithms::Algorithm::FixedWindow,
            limit_value,
            3600 * SECOND,
            None,
        )
        .unwrap(),
    }
}

fn requests(ts: Nanos, requests: Vec<(bool, Vec<Hit>)>) -> Command {
    Command::Requests {
        ts,
        requests: requests
            .into_iter()
            .map(|(atomic, hits)| crate::raft::HitRequest { atomic, hits })
            .collect(),
    }
}

fn decisions(r: &CommandResponse) -> &[Decision] {
    match r {
        CommandResponse::Decisions(d) => d,
        other => panic!("not decisions: {other:?}"),
    }
}

/// The scenario: `small` 1/hour and `big` 100/hour in one request, four
/// times. Atomic: `big` is consumed once; per hit (the old way): four times.
#[tokio::test]
async fn an_atomic_request_denied_by_one_limit_consumes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let request = |atomic| {
        (
            atomic,
            vec![hit_on("small", "k", 1, 1), hit_on("big", "k", 1, 100)],
        )
    };
    let entries: Vec<Entry> = (1..=4)
        .map(|i| entry(i, requests(SECOND, vec![request(true)])))
        .collect();
    let r = sm.apply(entries).await.unwrap();
    assert!(decisions(&r[0]).iter().all(|d| d.allowed));
    for later in &r[1..] {
        let [small, big] = decisions(later) else {
            panic!()
        };
        assert_eq!(small.denied, Some(DenyReason::OverLimit));
        assert!(big.allowed, "the innocent limit is answered as a peek");
        assert_eq!(big.remaining, 99, "big stays at 99");
    }
    let big = sm.shared().counters.load().get(&counter_key("big", "k"));
    let r = sm
        .apply(vec![entry(5, requests(SECOND, vec![request(false)]))])
        .await
        .unwrap();
    assert_eq!(
        decisions(&r[0])[1].remaining,
        98,
        "non-atomic: big consumed"
    );
    assert_ne!(
        sm.shared().counters.load().get(&counter_key("big", "k")),
        big
    );
}

#[tokio::test]
async fn requests_of_one_entry_are_decided_apart_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let r = sm
        .apply(vec![entry(
            1,
            requests(
                SECOND,
                vec![
                    // Denied (b over), so a is untouched for the next request.
                    (true, vec![hit_on("a", "k", 1, 1), hit_on("b", "k", 2, 1)]),
                    (true, vec![hit_on("a", "k", 1, 1)]),
                    // Non-atomic: c is consumed although d is denied.
                    (false, vec![hit_on("c", "k", 1, 1), hit_on("d", "k", 5, 1)]),
                    (true, vec![hit_on("c", "k", 1, 1), hit_on("e", "k", 1, 1)]),
                ],
            ),
        )])
        .await
        .unwrap();
    let allowed: Vec<bool> = decisions(&r[0]).iter().map(|d| d.allowed).collect();
    assert_eq!(
        allowed,
        [true, false, true, true, false, false, true],
        "{r:?}"
    );
}

/// Every replica applying the same entries holds the same counters (and snapshot).
#[tokio::test]
async fn replicas_agree_on_atomic_requests() {
    let entries = || {
        (1..=20)
            .map(|i| {
                let reqs = (0..3)
                    .map(|j| {
                        let hits = (0..3)
                            .map(|h| {
                                hit_on(
                                    &format!("l{h}"),
                                    &format!("k{}", (i + j) % 2),
                                    1 + (h as u64 % 2),
                                    3 + h as u64,
                                )
                            })
                            .collect();
                        (j % 2 == 0, hits)
                    })
                    .collect();
                entry(i, requests(SECOND * i, reqs))
            })
            .collect::<Vec<_>>()
    };
    let mut exports = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        answers.push(sm.apply(entries()).await.unwrap());
        exports.push(sm.shared().counters.load().export());
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(exports[0], exports[1]);
}

proptest::proptest! {
    /// For any batch of atomic requests over a few limits: a denied request leaves
    /// every counter exactly as it was before it, and a granted one allowed every hit.
    #[test]
    fn a_denied_atomic_request_leaves_every_counter_as_it_was(
        batch in proptest::collection::vec(
            proptest::collection::vec((0usize..3, 0usize..2, 0u64..4), 1..5),
            1..12,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = StateMachine::open(dir.path()).unwrap();
            for (i, request) in batch.iter().enumerate() {
                let hits: Vec<Hit> = request
                    .iter()
                    .map(|&(l, k, cost)| hit_on(&format!("l{l}"), &format!("k{k}"), cost, 2 + l as u64))
                    .collect();
                let before = sm.shared().counters.load().export();
                let r = sm
                    .apply(vec![entry(i as u64 + 1, requests(SECOND, vec![(true, hits)]))])
                    .await
                    .unwrap();
                let ds = decisions(&r[0]);
                if !ds.iter().all(|d| d.allowed) {
                    assert_eq!(sm.shared().counters.load().export(), before);
                }
            }
        });
    }
}

#[tokio::test]
async fn a_full_limit_refuses_only_its_own_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path()).unwrap();
    let two_keys = "limits:\n  - {name: l, limit: 3, window: minute, max_keys: 2}\n  - {name: m, limit: 3, window: minute, max_keys: 2}\n";
    let r = sm
        .apply(vec![
            entry(1, policy(two_keys)),
            entry(2, hits(SECOND, "l", "a", 1)),
            entry(3, hits(SECOND, "l", "b", 1)),
            entry(4, hits(SECOND, "l", "c", 1)),
            entry(5, hits(SECOND, "l", "a", 1)),
            entry(6, hits(SECOND, "m", "c", 1)),
        ])
        .await
        .unwrap();
    assert_eq!(allowed(&r[3]), 0, "a third key of l");
    match &r[3] {
        CommandResponse::Decisions(d) => {
            assert_eq!(d[0].denied, Some(DenyReason::LimitKeysFull))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(allowed(&r[4]), 1, "a key l already counts");
    assert_eq!(allowed(&r[5]), 1, "another limit");
}
