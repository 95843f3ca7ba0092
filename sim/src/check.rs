//! The checker: every invariant quorate promises, evaluated over one run's history.
//!
//! Inputs are what the clients heard ([`Op`]s), what every node incarnation applied
//! ([`Applied`]), who claimed leadership of which term, and each node's final state.

use std::collections::BTreeMap;

use quorate_algorithms::{Algorithm, Decision, Nanos, Rate};
use quorate_server::policy::Consistency;
use quorate_server::raft::{Command, CommandResponse, NodeId};

use crate::cluster::Leadership;
use crate::fleet::FleetRecord;
use crate::sm::Applied;
use crate::workload::{consistency_of, Op};

/// One broken promise.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// A node's state once the run has quiesced.
#[derive(Debug, Clone)]
pub struct FinalState {
    pub node: NodeId,
    pub incarnation: u32,
    pub last_applied: Option<u64>,
    /// Counters, sorted, as text.
    pub counters: Vec<String>,
    pub policy_versions: Vec<u64>,
}

/// Everything the checker looks at.
#[derive(Debug)]
pub struct Evidence<'a> {
    pub ops: &'a [Op],
    pub applied: &'a [Applied],
    /// Every leadership (node incarnation under a leader id), when first seen.
    pub leaders: &'a [Leadership],
    pub finals: &'a [FinalState],
    /// The fast path's documented per-failover loss bound, besides the limit itself:
    /// `max_inflight × max_hits + CONSUMED_QUEUE`.
    pub fast_unreplicated_cap: u64,
}

type Multiset = BTreeMap<String, u64>;

/// One strict grant in the committed log: `(log time, cost, rate, log index)`.
type Grant = (Nanos, u64, Rate, u64);

fn take(set: &mut Multiset, key: &str) -> bool {
    match set.get_mut(key) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

fn decision_key(limit: &str, key: &str, cost: u64, d: &Decision) -> String {
    format!("{limit}/{key}/{cost}/{d:?}")
}

pub fn check(e: &Evidence<'_>) -> Vec<Violation> {
    let mut v = Vec::new();
    election_safety(e, &mut v);
    let canonical = replica_agreement(e, &mut v);
    policy_order(e, &mut v);
    let (strict_unmatched, fast_lost) = acknowledgements(e, &canonical, &mut v);
    let _ = strict_unmatched;
    fast_loss_bound(e, &fast_lost, &mut v);
    strict_window_bounds(&canonical, &mut v);
    convergence(e, &canonical, &mut v);
    v
}

/// Election safety as openraft defines it. quorate runs openraft's default "advanced"
/// leader ids: a leader id is `(term, node)`, and a voter grants a vote only to a greater
/// id than any it granted before. So two nodes may both lead in one term (openraft docs,
/// `leader_id.md`; standard Raft's "one leader per term" needs the `single-term-leader`
/// feature), and in either order as observers see it: a vote response can be delayed, so
/// `(t, 1)` may be established after `(t, 2)` although its votes were granted first (seeds
/// 100379, 103008, 108789). Committed entries never diverging is checked by log matching.
/// What must hold for each node is that it never leads under a smaller id than one it
/// led before, across restarts too: its vote is durable and only grows. A lost or
/// regressed vote shows up here.
fn election_safety(e: &Evidence<'_>, v: &mut Vec<Violation>) {
    let mut by_node: BTreeMap<u64, Vec<&crate::cluster::Leadership>> = BTreeMap::new();
    for l in e.leaders {
        by_node.entry(l.node).or_default().push(l);
    }
    for (node, mut led) in by_node {
        led.sort_by_key(|l| l.at_ms);
        let mut highest: Option<&crate::cluster::Leadership> = None;
        for l in led {
            if let Some(h) = highest {
                if l.term < h.term {
                    v.push(Violation {
                        invariant: "election safety",
                        detail: format!(
                            "n{node}#{} led term {} at {}ms after n{node}#{} led term {} at {}ms: \
                             its vote went backwards",
                            l.incarnation, l.term, l.at_ms, h.incarnation, h.term, h.at_ms
                        ),
                    });
                    continue;
                }
            }
            highest = Some(l);
        }
    }
}

/// Every node (and every incarnation of it) applied the same entry with the same result
/// at each index. Returns the agreed log, by index.
fn replica_agreement<'a>(e: &Evidence<'a>, v: &mut Vec<Violation>) -> BTreeMap<u64, &'a Applied> {
    let mut canonical: BTreeMap<u64, &Applied> = BTreeMap::new();
    for a in e.applied {
        match canonical.get(&a.log_id.index) {
            None => {
                canonical.insert(a.log_id.index, a);
            }
            Some(first) => {
                if first.log_id != a.log_id || first.command != a.command {
                    v.push(Violation {
                        invariant: "log matching",
                        detail: format!(
                            "index {}: n{}#{} applied {} but n{}#{} applied {}",
                            a.log_id.index,
                            first.node,
                            first.incarnation,
                            first.log_id,
                            a.node,
                            a.incarnation,
                            a.log_id
                        ),
                    });
                } else if first.response != a.response {
                    v.push(Violation {
                        invariant: "replica state",
                        detail: format!(
                            "index {}: n{}#{} answered {:?} but n{}#{} answered {:?}",
                            a.log_id.index,
                            first.node,
                            first.incarnation,
                            first.response,
                            a.node,
                            a.incarnation,
                            a.response
                        ),
                    });
                }
            }
        }
    }
    canonical
}

/// On every node incarnation, policy versions become live in order, one at a time.
fn policy_order(e: &Evidence<'_>, v: &mut Vec<Violation>) {
    let mut last: BTreeMap<(NodeId, u32), u64> = BTreeMap::new();
    for a in e.applied {
        if let CommandResponse::Policy(Ok(version)) = &a.response {
            let prev = last.entry((a.node, a.incarnation)).or_insert(0);
            if *version != *prev + 1 {
                v.push(Violation {
                    invariant: "policy order",
                    detail: format!(
                        "n{}#{} applied policy version {version} after {prev} (index {})",
                        a.node, a.incarnation, a.log_id.index
                    ),
                });
            }
            *prev = *version;
        }
    }
}

/// Acknowledged strict decisions must be committed decisions; acknowledged fast grants
/// should be committed consumption. Returns the unmatched strict count and, per
/// `(limit, key)`, the fast grants that never reached the log.
fn acknowledgements(
    e: &Evidence<'_>,
    canonical: &BTreeMap<u64, &Applied>,
    v: &mut Vec<Violation>,
) -> (usize, BTreeMap<(String, String), u64>) {
    let mut decided: Multiset = BTreeMap::new();
    let mut consumed: Multiset = BTreeMap::new();
    let mut reserved: BTreeMap<(String, String), u64> = BTreeMap::new();
    for a in canonical.values() {
        match (&a.command, &a.response) {
            (
                Some(command @ (Command::Hits { .. } | Command::Requests { .. })),
                CommandResponse::Decisions(ds),
            ) => {
                let hits = command
                    .decided_requests()
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|(_, hits)| hits);
                for (h, d) in hits.zip(ds) {
                    *decided
                        .entry(decision_key(&h.limit, &h.key, h.cost, d))
                        .or_default() += 1;
                }
            }
            (Some(Command::Reserve { items, .. }), CommandResponse::Reserved { outcomes, .. }) => {
                for (item, r) in items.iter().zip(outcomes) {
                    *reserved
                        .entry((item.limit.clone(), item.key.clone()))
                        .or_default() += r.granted;
                }
            }
            // A settle gives back reserved quota the leader took out of its memory.
            (Some(Command::Settle { items, .. }), _) => {
                for item in items {
                    let r = reserved
                        .entry((item.limit.clone(), item.key.clone()))
                        .or_default();
                    *r = r.saturating_sub(item.unused);
                }
            }
            (Some(Command::Consumed { hits, .. }), _) => {
                for h in hits {
                    *consumed
                        .entry(format!("{}/{}/{}", h.limit, h.key, h.cost))
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut unmatched = 0;
    let mut fast_lost: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut spent: BTreeMap<(String, String), u64> = BTreeMap::new();
    for op in e.ops {
        let Ok(decisions) = &op.outcome else { continue };
        if decisions.len() != op.hits.len() {
            v.push(Violation {
                invariant: "one decision per hit",
                detail: format!("{op:?}"),
            });
            continue;
        }
        // The workload's requests are all-or-nothing: a denied one consumed nothing, its
        // allowed decisions were peeks.
        let granted = decisions.iter().all(|d| d.allowed);
        for ((limit, key, cost), d) in op.hits.iter().zip(decisions) {
            let dk = decision_key(limit, key, *cost, d);
            match consistency_of(limit) {
                // From reservations: a grant is either a committed decision (the request
                // went down the exact path) or spent from a committed reservation.
                Consistency::Strict => {
                    if d.allowed && granted && *cost > 0 && !take(&mut decided, &dk) {
                        *spent.entry((limit.clone(), key.clone())).or_default() += cost;
                    }
                }
                Consistency::Exact => {
                    if !take(&mut decided, &dk) {
                        unmatched += 1;
                        v.push(Violation {
                            invariant: "strict acknowledged = committed",
                            detail: format!(
                                "client {} heard {} for {limit}/{key} cost {cost} from n{} at {}..{}ms, \
                                 but no committed entry made that decision",
                                op.client,
                                if d.allowed { "ALLOWED" } else { "DENIED" },
                                op.node,
                                op.start_ms,
                                op.end_ms
                            ),
                        });
                    }
                }
                Consistency::Fast => {
                    if !d.allowed || !granted || *cost == 0 || take(&mut decided, &dk) {
                        continue;
                    }
                    if !take(&mut consumed, &format!("{limit}/{key}/{cost}")) {
                        *fast_lost.entry((limit.clone(), key.clone())).or_default() += cost;
                    }
                }
            }
        }
    }
    for ((limit, key), n) in &spent {
        let covered = reserved
            .get(&(limit.clone(), key.clone()))
            .copied()
            .unwrap_or(0);
        if *n > covered {
            v.push(Violation {
                invariant: "strict grants covered by reservations",
                detail: format!(
                    "{limit}/{key}: clients heard {n} granted from memory, \
                     but committed reservations cover only {covered}"
                ),
            });
        }
    }
    (unmatched, fast_lost)
}

/// Fast grants lost to failover stay within the documented bound (docs/benchmarks.md,
/// "Fast mode: quota lost on leader failover"): per leader failure, at most min(limit,
/// inflight × max_hits + queue); none at all without one. A failure is any end of a
/// leadership: another leader, or the leader crashing (even if it resumes its leader id
/// after a restart).
fn fast_loss_bound(
    e: &Evidence<'_>,
    lost: &BTreeMap<(String, String), u64>,
    v: &mut Vec<Violation>,
) {
    let failovers = e.leaders.len().saturating_sub(1) as u64;
    for ((limit, key), n) in lost {
        let capacity = crate::workload::LIMITS
            .iter()
            .find(|l| &l.name == limit)
            .map_or(0, |l| l.capacity);
        let bound = failovers.saturating_mul(capacity.min(e.fast_unreplicated_cap));
        if *n > bound {
            v.push(Violation {
                invariant: "fast overshoot bound",
                detail: format!(
                    "{limit}/{key}: {n} acknowledged fast grants never reached the log; \
                     bound is {bound} ({failovers} leader changes)"
                ),
            });
        }
    }
}

/// Strict grants in the committed log never exceed what each algorithm allows, in log
/// time (the leaders' timestamps, clamped to be monotonic as the state machine does).
fn strict_window_bounds(canonical: &BTreeMap<u64, &Applied>, v: &mut Vec<Violation>) {
    // (limit, key) → [(log time, cost, rate, index)]
    let mut grants: BTreeMap<(String, String), Vec<Grant>> = BTreeMap::new();
    // (limit, key) → [(end of the bucket refunded, unused quota given back)]
    let mut settled: BTreeMap<(String, String), Vec<(Nanos, u64)>> = BTreeMap::new();
    let mut clock: Nanos = 0;
    for (index, a) in canonical {
        let Some(command) = &a.command else { continue };
        clock = clock.max(command.ts());
        if let (Some(requests), CommandResponse::Decisions(ds)) =
            (command.decided_requests(), &a.response)
        {
            // Each hit with whether it consumed: an atomic request's hits consume only
            // when every one of them was allowed (otherwise the allowed ones were peeks).
            let mut ds = ds.iter();
            let mut consumed = Vec::new();
            for (atomic, hits) in requests {
                let these: Vec<_> = ds.by_ref().take(hits.len()).collect();
                let granted = !atomic || these.iter().all(|d| d.allowed);
                consumed.extend(
                    hits.iter()
                        .zip(these)
                        .map(|(h, d)| (h, d.allowed && granted)),
                );
            }
            for (h, allowed) in consumed {
                if allowed && h.cost > 0 && consistency_of(&h.limit) != Consistency::Fast {
                    grants
                        .entry((h.limit.clone(), h.key.clone()))
                        .or_default()
                        .push((clock, h.cost, h.rate, *index));
                }
            }
        }
        // A reservation counts as granted at its log time (the state machine checked it
        // there; it records it no earlier).
        if let (Command::Reserve { items, .. }, CommandResponse::Reserved { outcomes, .. }) =
            (command, &a.response)
        {
            for (item, r) in items.iter().zip(outcomes) {
                if r.granted > 0 {
                    grants
                        .entry((item.limit.clone(), item.key.clone()))
                        .or_default()
                        .push((clock, r.granted, item.rate, *index));
                }
            }
        }
        if let Command::Settle { items, .. } = command {
            for item in items {
                settled
                    .entry((item.limit.clone(), item.key.clone()))
                    .or_default()
                    .push((item.valid_until, item.unused));
            }
        }
    }
    for ((limit, key), gs) in &grants {
        let refunds = settled
            .get(&(limit.clone(), key.clone()))
            .map_or(&[][..], Vec::as_slice);
        if let Some(detail) = over_limit(gs, refunds) {
            v.push(Violation {
                invariant: "strict limit",
                detail: format!("{limit}/{key}: {detail}"),
            });
        }
    }
}

/// The first place where `grants` (in log order) exceed their algorithm's bound, once
/// `refunds` (settled reservations: the end of the bucket each was recorded in, and the
/// quota given back) are taken out of windowed buckets.
fn over_limit(grants: &[Grant], refunds: &[(Nanos, u64)]) -> Option<String> {
    let (_, _, rate, _) = grants.first()?;
    let max_limit = grants.iter().map(|g| g.2.limit()).max().unwrap_or(0);
    let window = rate.window().max(1);
    match rate.algorithm() {
        Algorithm::FixedWindow | Algorithm::SlidingWindow => {
            // Fixed window: the sum per aligned window. Sliding window of precision p:
            // every p consecutive aligned slots (p = 1 is the two-counter form, whose
            // current window alone never exceeds the limit).
            let p = if rate.algorithm() == Algorithm::FixedWindow {
                1
            } else {
                u64::from(rate.precision().max(1))
            };
            let slot = (window / p).max(1);
            let mut per_slot: BTreeMap<u64, u64> = BTreeMap::new();
            for g in grants {
                *per_slot.entry(g.0 / slot).or_default() += g.1;
            }
            for (valid_until, unused) in refunds {
                let s = per_slot
                    .entry(valid_until.saturating_sub(1) / slot)
                    .or_default();
                *s = s.saturating_sub(*unused);
            }
            for (s, _) in per_slot.iter() {
                let sum: u64 = per_slot
                    .range(s.saturating_sub(p - 1)..=*s)
                    .map(|(_, c)| c)
                    .sum();
                if sum > max_limit {
                    let idx: Vec<u64> = grants
                        .iter()
                        .filter(|g| g.0 / slot + p > *s && g.0 / slot <= *s)
                        .map(|g| g.3)
                        .collect();
                    return Some(format!(
                        "{sum} granted in {p} slot(s) ending at slot {s} (limit {max_limit}); entries {idx:?}"
                    ));
                }
            }
            None
        }
        Algorithm::SlidingLog => {
            for (i, g) in grants.iter().enumerate() {
                let sum: u64 = grants[..=i]
                    .iter()
                    .filter(|h| h.0 + window > g.0)
                    .map(|h| h.1)
                    .sum();
                if sum > max_limit {
                    return Some(format!(
                        "{sum} granted within one window ending at entry {} (limit {max_limit})",
                        g.3
                    ));
                }
            }
            None
        }
        Algorithm::TokenBucket => {
            let burst = grants.iter().map(|g| g.2.burst()).max().unwrap_or(0);
            for a in 0..grants.len() {
                let mut sum = 0u64;
                for b in a..grants.len() {
                    sum += grants[b].1;
                    let elapsed = grants[b].0 - grants[a].0;
                    let refill =
                        (u128::from(elapsed) * u128::from(max_limit)).div_ceil(u128::from(window));
                    if u128::from(sum) > u128::from(burst) + refill {
                        return Some(format!(
                            "{sum} granted between entries {} and {} ({elapsed} ns apart; burst {burst}, refill {refill})",
                            grants[a].3, grants[b].3
                        ));
                    }
                }
            }
            None
        }
    }
}

/// Once faults heal, every node reaches the same applied index with the same state: a
/// restarted node equals the leader at the same index, and nothing committed was lost.
fn convergence(e: &Evidence<'_>, canonical: &BTreeMap<u64, &Applied>, v: &mut Vec<Violation>) {
    let committed = canonical.keys().next_back().copied();
    let Some(reference) = e.finals.iter().max_by_key(|f| f.last_applied) else {
        return;
    };
    for f in e.finals {
        if f.last_applied < committed {
            v.push(Violation {
                invariant: "convergence",
                detail: format!(
                    "n{}#{} stopped at index {:?} after faults healed; {:?} was applied somewhere",
                    f.node, f.incarnation, f.last_applied, committed
                ),
            });
        } else if f.last_applied == reference.last_applied
            && (f.counters != reference.counters || f.policy_versions != reference.policy_versions)
        {
            v.push(Violation {
                invariant: "replica state",
                detail: format!(
                    "at index {:?}, n{}#{} and n{}#{} hold different counters or policies",
                    f.last_applied, f.node, f.incarnation, reference.node, reference.incarnation
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quorate_algorithms::CounterState;

    const SECOND: Nanos = 1_000_000_000;
    const T0: Nanos = 1_750_000_000_000_000_000;

    fn rates() -> Vec<Rate> {
        vec![
            Rate::with_precision(Algorithm::FixedWindow, 7, SECOND, None, None).unwrap(),
            Rate::with_precision(Algorithm::SlidingWindow, 7, SECOND, None, Some(1)).unwrap(),
            Rate::with_precision(Algorithm::SlidingWindow, 8, 2 * SECOND, None, Some(4)).unwrap(),
            Rate::with_precision(Algorithm::SlidingLog, 7, SECOND, None, None).unwrap(),
            Rate::with_precision(Algorithm::TokenBucket, 3, SECOND, Some(6), None).unwrap(),
        ]
    }

    /// Grants the real algorithm makes for hits `(gap after the previous, cost)`.
    fn grants(rate: &Rate, hits: &[(u64, u64)]) -> Vec<Grant> {
        let mut state = CounterState::new(rate);
        let mut now = T0;
        let mut out = Vec::new();
        for (i, (gap, cost)) in hits.iter().enumerate() {
            now += gap;
            let d = state.check(rate, now, *cost);
            if d.allowed && *cost > 0 {
                out.push((now, *cost, *rate, i as u64));
            }
        }
        out
    }

    proptest! {
        /// The checker's bounds never flag what the real algorithms grant: a violation
        /// it reports is a real one.
        #[test]
        fn the_bounds_accept_every_real_algorithm_history(
            hits in proptest::collection::vec((0u64..400_000_000, 0u64..4), 1..200),
        ) {
            for rate in rates() {
                let g = grants(&rate, &hits);
                prop_assert_eq!(over_limit(&g, &[]), None, "{:?}", rate);
            }
        }
    }

    #[test]
    fn one_grant_too_many_is_flagged_for_every_algorithm() {
        for rate in rates() {
            let n = rate.capacity() + 1;
            let g: Vec<_> = (0..n).map(|i| (T0, 1, rate, i)).collect();
            assert!(
                over_limit(&g, &[]).is_some(),
                "{rate:?}: {n} grants at one instant passed"
            );
            assert_eq!(
                over_limit(&g[..g.len() - 1], &[]),
                None,
                "{rate:?}: a full quota was flagged"
            );
        }
    }

    #[test]
    fn two_leaders_may_share_a_term_but_no_node_leads_under_a_smaller_term() {
        let finals = [];
        let evidence = |leaders: &[(u64, NodeId, u64)]| {
            let leaders: Vec<Leadership> = leaders
                .iter()
                .map(|&(term, node, at_ms)| Leadership {
                    term,
                    node,
                    incarnation: 1,
                    at_ms,
                })
                .collect();
            let leaders = leaders.as_slice();
            let mut v = Vec::new();
            election_safety(
                &Evidence {
                    ops: &[],
                    applied: &[],
                    leaders,
                    finals: &finals,
                    fast_unreplicated_cap: 0,
                },
                &mut v,
            );
            v.len()
        };
        assert_eq!(evidence(&[(7, 2, 10), (7, 3, 20), (8, 1, 30)]), 0);
        assert_eq!(
            evidence(&[(7, 3, 10), (7, 2, 14)]),
            0,
            "a delayed vote response: (7, 2) established after (7, 3)"
        );
        assert_eq!(
            evidence(&[(7, 3, 10), (7, 3, 90)]),
            0,
            "a restarted leader resumes"
        );
        assert_eq!(
            evidence(&[(7, 3, 10), (9, 3, 40), (8, 3, 90)]),
            1,
            "n3 leads term 8 after it led term 9"
        );
    }
}

/// What the RLQS checks look at (Envoy RLQS, issue 16).
#[derive(Debug)]
pub struct RlqsEvidence<'a> {
    pub fleet: &'a FleetRecord,
    pub applied: &'a [Applied],
    /// Whether the run's node clocks stayed in step (no skew or jump injected): the
    /// real-time properties rely on a new leader reading an earlier leader's expiry
    /// times on the same clock, give or take the push guard.
    pub clocks_in_step: bool,
}

/// The RLQS promises:
/// - **committed pools** (always, also under clock faults): after every committed
///   `Assign` entry, at log time (leader timestamps clamped to be monotonic, as the
///   state machine does when it prunes the grant table), each bucket's unexpired grants
///   hold at most the rate pool (Σ per proxy of its highest live rate ≤ (limit − reserve
///   tokens) per second) and the charged token-bucket capacities at most the token pool.
/// - **held shares** (clocks in step): at every instant, the rates of the assignments the
///   proxies actually enforce sum to at most the rate pool.
/// - **fleet overshoot 0** (clocks in step): requests admitted by the whole fleet in any
///   1 s window (sliding, half-open) ≤ the limit; for a token-bucket limit, admitted over
///   any span `[a, b]` ≤ burst + rate · (b − a).
///
/// Returns the violations, and the real-time findings of a run whose clocks were not in
/// step (measured, not asserted: a new leader whose clock runs ahead of its predecessor's
/// by more than the push guard sees the predecessor's shares expire early).
pub fn check_rlqs(e: &RlqsEvidence<'_>) -> (Vec<Violation>, Vec<Violation>) {
    let mut v = Vec::new();
    committed_pools(e.applied, &mut v);
    let mut real_time = Vec::new();
    held_shares(e.fleet, &mut real_time);
    fleet_overshoot(e.fleet, &mut real_time);
    if e.clocks_in_step {
        v.append(&mut real_time);
    }
    (v, real_time)
}

fn fleet_bucket(key: &str) -> Option<usize> {
    let rule = key.split('\u{1f}').nth(1)?;
    crate::fleet::BUCKETS.iter().position(|b| b.rule == rule)
}

fn committed_pools(applied: &[Applied], v: &mut Vec<Violation>) {
    use quorate_server::quota::Grant as Share;
    let mut canonical: BTreeMap<u64, &Applied> = BTreeMap::new();
    for a in applied {
        canonical.entry(a.log_id.index).or_insert(a);
    }
    let mut grants: Vec<Vec<Share>> = vec![Vec::new(); crate::fleet::BUCKETS.len()];
    let mut clock: Nanos = 0;
    for (index, a) in canonical {
        let Some(command) = &a.command else { continue };
        clock = clock.max(command.ts());
        let Command::Assign { grants: new, .. } = command else {
            continue;
        };
        let ts = &clock;
        let mut touched = std::collections::BTreeSet::new();
        for g in new {
            match fleet_bucket(&g.bucket) {
                Some(b) => {
                    touched.insert(b);
                    grants[b].push(g.clone());
                }
                None => v.push(Violation {
                    invariant: "rlqs committed pools",
                    detail: format!("index {index}: a grant for unknown bucket {:?}", g.bucket),
                }),
            }
        }
        for b in touched {
            let bucket = &crate::fleet::BUCKETS[b];
            let (rate_pool, token_pool) = crate::fleet::pools(bucket);
            let mut held: BTreeMap<u64, u64> = BTreeMap::new();
            let mut charged: BTreeMap<(u64, Nanos), u64> = BTreeMap::new();
            for g in &grants[b] {
                if g.expires_at > *ts {
                    let h = held.entry(g.proxy).or_default();
                    *h = (*h).max(g.rate);
                }
                if g.hold_until > *ts {
                    let c = charged.entry((g.proxy, g.since)).or_default();
                    *c = (*c).max(u64::from(g.max_tokens));
                }
            }
            let rate: u64 = held.values().sum();
            let tokens: u64 = charged.values().sum();
            if rate > rate_pool || tokens > token_pool {
                v.push(Violation {
                    invariant: "rlqs committed pools",
                    detail: format!(
                        "index {index} (log time {ts}): bucket {} holds {rate} milli-req/s \
                         (pool {rate_pool}) and {tokens} tokens (pool {token_pool}) over {} proxies",
                        bucket.rule,
                        held.len()
                    ),
                });
            }
        }
    }
}

fn held_shares(fleet: &FleetRecord, v: &mut Vec<Violation>) {
    for (b, bucket) in crate::fleet::BUCKETS.iter().enumerate() {
        let (rate_pool, _) = crate::fleet::pools(bucket);
        // Ends before starts at the same instant: holdings are half-open.
        let mut events: Vec<(Nanos, bool, u64, usize)> = Vec::new();
        for h in fleet
            .holdings
            .iter()
            .filter(|h| h.bucket == b && h.until > h.from)
        {
            events.push((h.from, true, h.rate, h.proxy));
            events.push((h.until, false, h.rate, h.proxy));
        }
        events.sort_by_key(|&(t, start, _, _)| (t, start));
        let mut sum: u128 = 0;
        for (t, start, rate, proxy) in events {
            if start {
                sum += u128::from(rate);
                if sum > u128::from(rate_pool) {
                    v.push(Violation {
                        invariant: "rlqs held shares",
                        detail: format!(
                            "at {}ms proxy {proxy} took a {} share of {}: the fleet holds {sum} \
                             milli-req/s, pool {rate_pool}",
                            t / 1_000_000,
                            if rate == u64::MAX {
                                "allow-all".to_string()
                            } else {
                                format!("{rate}")
                            },
                            bucket.rule
                        ),
                    });
                    break;
                }
            } else {
                sum -= u128::from(rate);
            }
        }
    }
}

/// Per bucket: the most admitted in any 1 s window, and (token buckets) the most admitted
/// over any span beyond `rate · span`.
pub fn fleet_peaks(fleet: &FleetRecord) -> Vec<(u64, f64)> {
    crate::fleet::BUCKETS
        .iter()
        .enumerate()
        .map(|(b, bucket)| {
            let mut times = fleet.admitted[b].clone();
            times.sort_unstable();
            let mut most = 0u64;
            let mut lo = 0;
            for hi in 0..times.len() {
                while times[hi] - times[lo] >= SECOND_NS {
                    lo += 1;
                }
                most = most.max((hi - lo + 1) as u64);
            }
            // max over i ≤ j of (j − i + 1) − r·(t_j − t_i).
            let r = bucket.limit as f64 / SECOND_NS as f64;
            let mut best_start = f64::INFINITY;
            let mut beyond = 0f64;
            for (j, &t) in times.iter().enumerate() {
                best_start = best_start.min(j as f64 - r * t as f64);
                beyond = beyond.max(j as f64 - r * t as f64 - best_start + 1.0);
            }
            (most, beyond)
        })
        .collect()
}

const SECOND_NS: Nanos = 1_000_000_000;

fn fleet_overshoot(fleet: &FleetRecord, v: &mut Vec<Violation>) {
    for (bucket, (most, beyond)) in crate::fleet::BUCKETS.iter().zip(fleet_peaks(fleet)) {
        if most > bucket.limit {
            v.push(Violation {
                invariant: "rlqs fleet overshoot",
                detail: format!(
                    "bucket {}: the fleet admitted {most} requests within 1 s, limit {}",
                    bucket.rule, bucket.limit
                ),
            });
        }
        if let Some(burst) = bucket.burst {
            // A tolerance far below one request for the float sum.
            if beyond > burst as f64 + 1e-6 {
                v.push(Violation {
                    invariant: "rlqs fleet overshoot",
                    detail: format!(
                        "bucket {}: the fleet admitted {beyond:.3} requests beyond the refill \
                         over one span, burst {burst}",
                        bucket.rule
                    ),
                });
            }
        }
    }
}
