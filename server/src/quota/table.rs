//! The replicated table of RLQS grants: every share a leader committed, kept until it no
//! longer counts against its bucket's pools. Part of the state machine and its snapshots,
//! so a new leader sees what earlier leaders handed out.

use std::collections::{BTreeMap, HashMap};

use quorate_algorithms::Nanos;
use serde::{Deserialize, Serialize};

use super::MilliRate;

/// One committed share: `proxy` (a stream) may admit at `rate` in `bucket` until
/// `expires_at`, leader time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The bucket's canonical key (`quorate_policy::rlqs::MatchedBucket::key`).
    pub bucket: String,
    /// The stream the grant was pushed on (unique across leaders).
    pub proxy: u64,
    /// Milli-tokens per second.
    pub rate: MilliRate,
    /// Capacity of the proxy's token bucket (it starts full).
    pub max_tokens: u32,
    /// Whether the proxy starts a new bucket with it (module docs of `quota`).
    pub fresh: bool,
    /// When the bucket this grant starts or extends was started: grants with the same
    /// proxy and `since` are one bucket at the proxy, whose `max_tokens` are charged once.
    pub since: Nanos,
    pub expires_at: Nanos,
    /// Until when its bucket's tokens are charged: `expires_at` plus one window.
    pub hold_until: Nanos,
}

/// What a bucket's live grants hold at an instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketCharge {
    /// Per proxy, the highest rate among its unexpired grants.
    pub held: HashMap<u64, MilliRate>,
    /// Per proxy, its most recent unexpired grant.
    pub latest: HashMap<u64, Grant>,
    /// Tokens of the proxies' buckets (live, or ended less than a window ago).
    pub tokens: u64,
    /// When the last grant above its proxy's current rate expires: by then every lowered
    /// share has freed its capacity for a waiting raise.
    pub lowered_until: Option<Nanos>,
}

/// Grants by bucket, each bucket's in commit order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignmentTable {
    buckets: BTreeMap<String, Vec<Grant>>,
}

impl AssignmentTable {
    /// Records committed `grants` at log time `now`, dropping every grant no longer
    /// charged. Deterministic: every replica holds the same table.
    pub fn apply(&mut self, now: Nanos, grants: Vec<Grant>) {
        self.buckets.retain(|_, list| {
            list.retain(|g| g.hold_until > now);
            !list.is_empty()
        });
        for g in grants {
            self.buckets.entry(g.bucket.clone()).or_default().push(g);
        }
    }

    /// What `bucket`'s grants hold at `now`.
    pub fn charge(&self, bucket: &str, now: Nanos) -> BucketCharge {
        let mut charge = BucketCharge::default();
        let mut buckets = std::collections::HashSet::new();
        for g in self.buckets.get(bucket).into_iter().flatten() {
            if g.hold_until > now && buckets.insert((g.proxy, g.since)) {
                charge.tokens += u64::from(g.max_tokens);
            }
            if g.expires_at > now {
                let held = charge.held.entry(g.proxy).or_insert(0);
                *held = (*held).max(g.rate);
                // Later in the list = committed later.
                charge.latest.insert(g.proxy, g.clone());
            }
        }
        for g in self.buckets.get(bucket).into_iter().flatten() {
            let lowered = charge.latest.get(&g.proxy).is_some_and(|l| l.rate < g.rate);
            if g.expires_at > now && lowered {
                charge.lowered_until = Some(
                    charge
                        .lowered_until
                        .map_or(g.expires_at, |e| e.max(g.expires_at)),
                );
            }
        }
        charge
    }

    /// Buckets with grants still charged.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Every grant, for a snapshot.
    pub fn export(&self) -> Vec<Grant> {
        self.buckets.values().flatten().cloned().collect()
    }

    /// The table a snapshot held.
    pub fn import(grants: Vec<Grant>) -> AssignmentTable {
        let mut table = AssignmentTable::default();
        for g in grants {
            table.buckets.entry(g.bucket.clone()).or_default().push(g);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(proxy: u64, rate: u64, fresh: bool, at: Nanos) -> Grant {
        Grant {
            bucket: "b".into(),
            proxy,
            rate,
            max_tokens: 1,
            fresh,
            since: at,
            expires_at: at + 10,
            hold_until: at + 15,
        }
    }

    #[test]
    fn a_proxy_is_charged_its_highest_live_grant_and_tokens_linger() {
        let mut t = AssignmentTable::default();
        t.apply(0, vec![grant(1, 500, true, 0)]);
        t.apply(5, vec![grant(1, 100, true, 5)]);
        let c = t.charge("b", 6);
        assert_eq!(c.held[&1], 500, "the higher grant is live until 10");
        assert_eq!(c.latest[&1].rate, 100);
        assert_eq!(c.tokens, 2);
        let c = t.charge("b", 12);
        assert_eq!(c.held[&1], 100);
        assert_eq!(c.tokens, 2, "the first token is charged until 15");
        t.apply(16, vec![]);
        assert_eq!(t.charge("b", 16).tokens, 1);
        assert_eq!(AssignmentTable::import(t.export()), t);
        t.apply(30, vec![]);
        assert_eq!(t.buckets(), 0);
    }
}
