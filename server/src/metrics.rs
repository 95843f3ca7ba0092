//! Prometheus metrics: one registry per node, served at `GET /metrics`.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use quorate_algorithms::Decision;

pub use crate::policy::redacted_value;

/// What the `quorate_raft_*` gauges show, read from Raft's metrics by the engine (so
/// this registry needs no Raft types).
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftGauges {
    pub term: u64,
    pub last_applied: u64,
    pub last_log_index: u64,
    pub is_leader: bool,
    /// 0: no leader known.
    pub leader_id: u64,
    pub voters: u64,
}

// The dashboard's rolling per-surface/per-limit traffic and hot keys: recorded on the
// decision path next to the Prometheus series, read by the dashboard.
pub mod hotkeys;
pub mod traffic;

/// Envoy RLQS (`grpc/rlqs.rs`): the leader's buckets, subscribers and share churn.
#[derive(Debug)]
pub struct RlqsMetrics {
    /// Buckets with subscribers on this leader.
    pub buckets: IntGauge,
    /// (stream, bucket) subscriptions on this leader: proxies per bucket, summed.
    pub subscriptions: IntGauge,
    /// The most proxies subscribed to one bucket.
    pub max_proxies_per_bucket: IntGauge,
    /// Committed shares by kind: `fresh` (a changed share: the churn) or `extended`.
    pub grants: IntCounterVec,
    /// Subscriptions abandoned (silent proxies, buckets the policy dropped).
    pub abandoned: IntCounter,
    /// Streams ended or refused, by reason.
    pub refused: IntCounterVec,
    /// Share rounds the leader ran (each re-divides every bucket).
    pub rounds: IntCounter,
    /// Reported demand per bucket rule (requests/s, summed over its buckets and proxies),
    /// labelled by the policy's domain and rule names only: never a bucket_id value or a
    /// proxy, so the series are bounded by the policy (and by [`MAX_RLQS_RULE_SERIES`]).
    pub demand: GaugeVec,
    /// Rate assigned in the last round per bucket rule (requests/s), labelled like `demand`.
    pub assigned: GaugeVec,
}

/// Most (domain, rule) series of the per-rule RLQS gauges.
pub const MAX_RLQS_RULE_SERIES: usize = 1_000;

impl RlqsMetrics {
    fn new(r: &Registry) -> prometheus::Result<RlqsMetrics> {
        Ok(RlqsMetrics {
            buckets: gauge(
                r,
                "rlqs_buckets",
                "RLQS buckets with subscribers on this leader",
            )?,
            subscriptions: gauge(
                r,
                "rlqs_subscriptions",
                "RLQS (stream, bucket) subscriptions on this leader",
            )?,
            max_proxies_per_bucket: gauge(
                r,
                "rlqs_proxies_per_bucket_max",
                "The most proxies subscribed to one RLQS bucket",
            )?,
            grants: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rlqs_grants_total",
                        "Committed RLQS shares by kind (fresh = changed)",
                    ),
                    &["kind"],
                )?,
            )?,
            abandoned: counter(r, "rlqs_abandoned_total", "RLQS subscriptions abandoned")?,
            refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rlqs_streams_refused_total",
                        "RLQS streams ended or refused, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            rounds: counter(
                r,
                "rlqs_rounds_total",
                "RLQS share rounds run by this leader",
            )?,
            demand: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "rlqs_demand_requests_per_second",
                        "Demand the proxies reported per RLQS bucket rule (allowed + denied)",
                    ),
                    &["domain", "rule"],
                )?,
            )?,
            assigned: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "rlqs_assigned_requests_per_second",
                        "Rate assigned to proxies in the last round per RLQS bucket rule",
                    ),
                    &["domain", "rule"],
                )?,
            )?,
        })
    }

    /// Sets the per-rule gauges to one round's sums ((domain, rule) → demand and assigned
    /// rate, milli-requests per second); rules absent from `rules` lose their series.
    pub fn observe_rules(&self, rules: &std::collections::BTreeMap<(String, String), (u64, u64)>) {
        self.demand.reset();
        self.assigned.reset();
        for ((domain, rule), (demand, assigned)) in rules.iter().take(MAX_RLQS_RULE_SERIES) {
            let labels = [domain.as_str(), rule.as_str()];
            self.demand
                .with_label_values(&labels)
                .set(*demand as f64 / 1000.0);
            self.assigned
                .with_label_values(&labels)
                .set(*assigned as f64 / 1000.0);
        }
    }

    pub fn observe_hub(&self, buckets: usize, subscriptions: usize) {
        self.buckets.set(i64::try_from(buckets).unwrap_or(i64::MAX));
        self.subscriptions
            .set(i64::try_from(subscriptions).unwrap_or(i64::MAX));
    }
}

/// Every metric this node exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Envoy RLQS.
    pub rlqs: RlqsMetrics,
    /// Decisions by outcome (`allowed`, `over_limit`, `cost_exceeds_limit`, `store_full`,
    /// `limit_keys_full`).
    pub decisions: IntCounterVec,
    /// `decisions` for each outcome, in `observe_decision`'s order.
    decision_outcomes: [IntCounter; 5],
    /// New keys refused because their limit held `max_keys` (`on_full: refuse`), by limit.
    pub counters_refused: IntCounterVec,
    /// Counters evicted to make room for a new key (`on_full: evict_idlest`), by limit.
    pub counters_evicted: IntCounterVec,
    /// Limit names seen in `counters_refused`/`counters_evicted`; capped like
    /// `detailed_series` (names come from the policy, but policies change).
    key_cap_series: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Hits naming a limit the live policy does not have.
    pub unknown_limits: IntCounter,
    /// Requests that got `UNAVAILABLE` because their batch did not commit in time.
    pub decision_timeouts: IntCounter,
    /// Decisions the Redis counter store could not make (down, slow, or failing):
    /// answered per `failure_mode`. Stateless mode (`--store redis://…`) only.
    pub store_errors: IntCounter,
    /// 1 while the Redis counter store answers, 0 after a failed call (stateless mode).
    pub store_up: IntGauge,
    /// Hits per strict batch entry (group commit effectiveness).
    pub batch_hits: Histogram,
    /// Fast-mode hits granted by a leader whose consumed quota never reached the log.
    pub fast_hits_unreplicated: IntCounter,
    /// Durable reservations for `strict` limits, by outcome (`granted`, `refused`).
    pub reservations: IntCounterVec,
    /// Quota reserved for `strict` limits (granted reservations' amounts).
    pub reserved_quota: IntCounter,
    /// Unused reserved quota given back by committed settles.
    pub settled_quota: IntCounter,
    pub raft_term: IntGauge,
    pub raft_last_applied: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_leader_id: IntGauge,
    pub raft_members: IntGauge,
    pub counters: IntGauge,
    pub policy_version: IntGauge,
    /// Decisions admitted at once right now (the adaptive limit, or `--max-in-flight`;
    /// 0: shedding off). Set by `overload.rs`.
    pub concurrency_limit: IntGauge,
    /// fsync/fdatasync calls of this node's Raft log store since it opened (brought up to
    /// date on scrape).
    pub raft_log_fsyncs: IntCounter,
    /// Policy file reloads by result (`applied`, `refused`).
    pub policy_reloads: IntCounterVec,
    /// Envoy RLS answers by overall code (`ok`, `over_limit`).
    pub rls_responses: IntCounterVec,
    /// RLS descriptors no rule applied to, by reason (`unknown_domain`, `no_rule`).
    pub rls_unmatched: IntCounterVec,
    /// Over-limit decisions reported as OK because the rule is in shadow mode.
    pub shadow_mode_over_limit: IntCounter,
    /// Per-descriptor-value decisions for rules with `detailed_metric: true`.
    pub rls_detailed: IntCounterVec,
    /// Authorization decisions by surface, route and outcome (`allowed`, `dry_run`,
    /// `failure_open`, `unauthenticated`, `forbidden`, `rate_limited`, `unavailable`,
    /// `bad_request`, `no_route`). Labels come from the policy, never from requests.
    pub authz_decisions: IntCounterVec,
    /// Denials a `dry_run` route let through, by route and the denial it would have been.
    pub authz_dry_run_denials: IntCounterVec,
    /// Time to decide an authorization request.
    pub authz_decision_seconds: Histogram,
    /// JWKS fetches by result (`ok`, `error`, `throttled`).
    pub authz_jwks_fetches: IntCounterVec,
    /// Verified-token cache lookups (`hit`, `miss`).
    pub authz_jwt_cache: IntCounterVec,
    /// Time to answer a decision request, by surface (`quorate_v1`, `rls`, `ext_authz`,
    /// `http_authz`).
    pub decision_seconds: HistogramVec,
    /// Time from proposing a strict batch to its decisions (leader side).
    pub batch_commit_seconds: Histogram,
    /// Entries each follower trails the leader by (leader side; labels are node ids).
    pub raft_replication_lag_entries: IntGaugeVec,
    /// How long ago the leader first held an entry each follower still lacks.
    pub raft_replication_lag_seconds: GaugeVec,
    /// Each configured limit's value (requests per window), set on scrape.
    pub limit_value: IntGaugeVec,
    /// Each configured limit's window in seconds, set on scrape.
    pub limit_window_seconds: GaugeVec,
    /// Snapshots this node built, the last one's size and build time (set on scrape).
    pub snapshots_built: IntCounter,
    pub snapshot_bytes: IntGauge,
    pub snapshot_build_seconds: prometheus::Gauge,
    /// Decisions per surface and outcome, per second, for the dashboard (not exported).
    pub traffic: traffic::Traffic,
    /// The hottest counter keys, for the dashboard (not exported).
    pub hot_keys: hotkeys::HotKeys,
    /// Label sets created in `rls_detailed`; capped so clients cannot grow it forever.
    detailed_series: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Latency buckets (seconds) of the decision and commit histograms: 50 µs to 2.5 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
];

/// Most limits given their own `limit_value` series (a policy can name many).
pub const MAX_LIMIT_GAUGES: usize = 1_000;

/// Most distinct `rls_detailed` series; later values are counted under `key="(other)"`.
const MAX_DETAILED_SERIES: usize = 10_000;
/// Longest `rls_detailed` key label kept as is: names hold request values (up to 32 entries
/// of 1 KiB), so without it 10,000 series could hold hundreds of MB. Longer ones are
/// counted under `key="(other)"`.
const MAX_DETAILED_KEY: usize = 512;

/// Most distinct limits in the key-cap metrics; later ones count under `limit="(other)"`.
const MAX_KEY_CAP_SERIES: usize = 1_000;

fn register<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> prometheus::Result<T> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    register(registry, IntCounter::new(name, help)?)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    register(registry, IntGauge::new(name, help)?)
}

impl Metrics {
    /// Builds and registers every metric. Fails only on an invalid or duplicate name, a
    /// programming error caught by the tests.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("quorate".into()), None)?;
        let r = &registry;
        let decisions = register(
            r,
            IntCounterVec::new(
                Opts::new("decisions_total", "Decisions by outcome"),
                &["outcome"],
            )?,
        )?;
        let decision_outcomes = [
            "allowed",
            "over_limit",
            "cost_exceeds_limit",
            "store_full",
            "limit_keys_full",
        ]
        .map(|o| decisions.with_label_values(&[o]));
        Ok(Metrics {
            rlqs: RlqsMetrics::new(r)?,
            decisions,
            decision_outcomes,
            unknown_limits: counter(r, "unknown_limit_total", "Hits naming an unknown limit")?,
            decision_timeouts: counter(
                r,
                "decision_timeouts_total",
                "Decisions that timed out waiting for a quorum",
            )?,
            store_errors: counter(
                r,
                "store_errors_total",
                "Decisions the Redis counter store could not make (answered per failure_mode)",
            )?,
            store_up: gauge(
                r,
                "store_up",
                "1 while the Redis counter store answers, 0 after a failed call",
            )?,
            batch_hits: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("batch_hits", "Hits per strict log entry (group commit)")
                        .buckets(vec![
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                        ]),
                )?,
            )?,
            fast_hits_unreplicated: counter(
                r,
                "fast_hits_unreplicated_total",
                "Fast-mode hits granted whose consumed quota was not replicated",
            )?,
            reservations: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "reservations_total",
                        "Durable reservations for strict limits, by outcome",
                    ),
                    &["outcome"],
                )?,
            )?,
            reserved_quota: counter(
                r,
                "reserved_quota_total",
                "Quota reserved for strict limits by granted reservations",
            )?,
            settled_quota: counter(
                r,
                "settled_quota_total",
                "Unused reserved quota given back by committed settles",
            )?,
            raft_term: gauge(r, "raft_term", "Current Raft term")?,
            raft_last_applied: gauge(r, "raft_last_applied_index", "Last applied log index")?,
            raft_last_log_index: gauge(r, "raft_last_log_index", "Last log index")?,
            raft_is_leader: gauge(r, "raft_is_leader", "1 if this node is the leader")?,
            raft_leader_id: gauge(r, "raft_leader_id", "Current leader id (0 if none)")?,
            raft_members: gauge(r, "raft_voters", "Voting members")?,
            counters: gauge(r, "counters", "Live counters in the state machine")?,
            policy_version: gauge(r, "policy_version", "Live policy version (0 if none)")?,
            concurrency_limit: gauge(
                r,
                "concurrency_limit",
                "Decisions admitted at once right now (0: shedding off)",
            )?,
            raft_log_fsyncs: counter(
                r,
                "raft_log_fsyncs_total",
                "fsync calls of the Raft log store since the process started",
            )?,
            policy_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new("policy_reloads_total", "Policy file reloads by result"),
                    &["result"],
                )?,
            )?,
            rls_responses: register(
                r,
                IntCounterVec::new(
                    Opts::new("rls_responses_total", "Envoy RLS answers by overall code"),
                    &["code"],
                )?,
            )?,
            rls_unmatched: register(
                r,
                IntCounterVec::new(
                    Opts::new("rls_unmatched_total", "RLS descriptors no rule applied to"),
                    &["reason"],
                )?,
            )?,
            shadow_mode_over_limit: counter(
                r,
                "shadow_mode_over_limit_total",
                "Over-limit decisions reported OK because of shadow mode",
            )?,
            rls_detailed: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "rls_detailed_total",
                        "Decisions per metric name of rules whose name holds request values (detailed_metric, value_to_metric)",
                    ),
                    &["limit", "key", "code"],
                )?,
            )?,
            authz_decisions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "authz_decisions_total",
                        "Authorization decisions by surface, route and outcome",
                    ),
                    &["surface", "route", "outcome"],
                )?,
            )?,
            authz_dry_run_denials: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "authz_dry_run_denials_total",
                        "Denials let through by dry_run routes, by the denial they would be",
                    ),
                    &["route", "reason"],
                )?,
            )?,
            authz_decision_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "authz_decision_seconds",
                        "Time to decide an authorization request",
                    )
                    .buckets(vec![
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 1.0,
                    ]),
                )?,
            )?,
            authz_jwks_fetches: register(
                r,
                IntCounterVec::new(
                    Opts::new("authz_jwks_fetches_total", "JWKS fetches by result"),
                    &["result"],
                )?,
            )?,
            authz_jwt_cache: register(
                r,
                IntCounterVec::new(
                    Opts::new("authz_jwt_cache_total", "Verified-token cache lookups"),
                    &["result"],
                )?,
            )?,
            decision_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "decision_duration_seconds",
                        "Time to answer a decision request, by surface",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["surface"],
                )?,
            )?,
            batch_commit_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "batch_commit_duration_seconds",
                        "Time from proposing a strict batch to its decisions",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            raft_replication_lag_entries: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raft_replication_lag_entries",
                        "Entries each follower trails the leader by (leader only)",
                    ),
                    &["follower"],
                )?,
            )?,
            raft_replication_lag_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "raft_replication_lag_seconds",
                        "Age of the oldest entry each follower lacks (leader only)",
                    ),
                    &["follower"],
                )?,
            )?,
            limit_value: register(
                r,
                IntGaugeVec::new(
                    Opts::new("limit_value", "Each configured limit's value per window"),
                    &["limit"],
                )?,
            )?,
            limit_window_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new("limit_window_seconds", "Each configured limit's window"),
                    &["limit"],
                )?,
            )?,
            snapshots_built: counter(r, "snapshots_built_total", "Snapshots this node built")?,
            snapshot_bytes: gauge(r, "snapshot_bytes", "Size of the last snapshot built")?,
            snapshot_build_seconds: register(
                r,
                prometheus::Gauge::new(
                    "snapshot_build_seconds",
                    "Time the last snapshot took to serialize and write",
                )?,
            )?,
            traffic: Default::default(),
            hot_keys: Default::default(),
            counters_refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "counters_refused_total",
                        "New keys refused because their limit held max_keys (on_full: refuse)",
                    ),
                    &["limit"],
                )?,
            )?,
            counters_evicted: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "counters_evicted_total",
                        "Counters evicted for a new key of their limit (on_full: evict_idlest)",
                    ),
                    &["limit"],
                )?,
            )?,
            key_cap_series: std::sync::Mutex::new(std::collections::HashSet::new()),
            detailed_series: std::sync::Mutex::new(std::collections::HashSet::new()),
            registry,
        })
    }

    pub fn observe_decision(&self, d: &Decision) {
        // Resolved once at startup: `with_label_values` hashes and locks per call, and
        // this runs for every hit.
        let [allowed, over, cost, full, limit_full] = &self.decision_outcomes;
        match d.denied {
            None => allowed,
            Some(quorate_algorithms::DenyReason::OverLimit) => over,
            Some(quorate_algorithms::DenyReason::CostExceedsLimit) => cost,
            Some(quorate_algorithms::DenyReason::StoreFull) => full,
            Some(quorate_algorithms::DenyReason::LimitKeysFull) => limit_full,
        }
        .inc();
    }

    /// Counts what a limit's key cap did to a hit: a refused new key or an eviction.
    pub fn observe_key_cap(&self, limit: &str, refused: bool, evicted: bool) {
        if !refused && !evicted {
            return;
        }
        let tracked = match self.key_cap_series.lock() {
            Ok(mut known) => {
                known.contains(limit)
                    || (known.len() < MAX_KEY_CAP_SERIES && known.insert(limit.to_string()))
            }
            Err(_) => false,
        };
        let limit = if tracked { limit } else { "(other)" };
        if refused {
            self.counters_refused.with_label_values(&[limit]).inc();
        }
        if evicted {
            self.counters_evicted.with_label_values(&[limit]).inc();
        }
    }

    pub fn observe_rls(&self, over_limit: bool) {
        let code = if over_limit { "over_limit" } else { "ok" };
        self.rls_responses.with_label_values(&[code]).inc();
    }

    pub fn observe_unmatched(&self, reason: &str) {
        let reason = if reason.starts_with("unknown domain") {
            "unknown_domain"
        } else {
            "no_rule"
        };
        self.rls_unmatched.with_label_values(&[reason]).inc();
    }

    /// Counts a decision of a rule whose metric name holds request values. `key` is the
    /// plan's `metric_label`, where descriptor values (API keys, user ids, tokens: whatever
    /// Envoy was told to send) are already short digests ([`redacted_value`]).
    pub fn observe_detailed(&self, limit: &str, key: &str, allowed: bool) {
        let code = if allowed { "ok" } else { "over_limit" };
        let series = quorate_algorithms::counter_key(limit, key);
        let tracked = key.len() <= MAX_DETAILED_KEY
            && match self.detailed_series.lock() {
                Ok(mut known) => {
                    known.contains(&series)
                        || (known.len() < MAX_DETAILED_SERIES && known.insert(series))
                }
                Err(_) => false,
            };
        let key = if tracked { key } else { "(other)" };
        self.rls_detailed
            .with_label_values(&[limit, key, code])
            .inc();
    }

    pub fn observe_raft(&self, v: RaftGauges) {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(i(v.term));
        self.raft_last_applied.set(i(v.last_applied));
        self.raft_last_log_index.set(i(v.last_log_index));
        self.raft_is_leader.set(i64::from(v.is_leader));
        self.raft_leader_id.set(i(v.leader_id));
        self.raft_members.set(i(v.voters));
    }

    /// Counts one answered decision request for the dashboard and the latency histogram.
    pub fn observe_surface(
        &self,
        surface: traffic::Surface,
        outcome: traffic::Outcome,
        started: std::time::Instant,
    ) {
        self.traffic.record(surface, outcome);
        if let Ok(h) = self
            .decision_seconds
            .get_metric_with_label_values(&[surface.as_str()])
        {
            h.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Sets the per-limit gauges from the live policy.
    pub fn observe_policy(&self, policy: &crate::policy::PolicySet) {
        self.limit_value.reset();
        self.limit_window_seconds.reset();
        for (name, def) in policy.limits.iter().take(MAX_LIMIT_GAUGES) {
            self.limit_value
                .with_label_values(&[name])
                .set(i64::try_from(def.rate.limit()).unwrap_or(i64::MAX));
            self.limit_window_seconds
                .with_label_values(&[name])
                .set(def.rate.window() as f64 / 1e9);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// examples/grafana/quorate.json queries only metrics this registry exports.
    #[test]
    fn the_grafana_dashboard_uses_only_exported_metrics() {
        let m = Metrics::new().unwrap();
        // Vectors appear in the exposition once they have a child.
        for vec in [
            &m.decisions,
            &m.policy_reloads,
            &m.rls_responses,
            &m.rls_unmatched,
            &m.authz_jwks_fetches,
            &m.authz_jwt_cache,
        ] {
            vec.with_label_values(&["x"]).inc();
        }
        m.authz_decisions.with_label_values(&["x", "x", "x"]).inc();
        m.decision_seconds.with_label_values(&["x"]).observe(0.1);
        m.raft_replication_lag_entries
            .with_label_values(&["2"])
            .set(1);
        m.raft_replication_lag_seconds
            .with_label_values(&["2"])
            .set(1.0);
        m.limit_value.with_label_values(&["x"]).set(1);
        m.limit_window_seconds.with_label_values(&["x"]).set(1.0);
        let exported: std::collections::BTreeSet<String> = m
            .render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect();
        let dashboard = include_str!("../../examples/grafana/quorate.json");
        let mut used = 0;
        for (i, _) in dashboard.match_indices("quorate_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
                .unwrap_or(&name);
            assert!(
                exported.contains(family),
                "the dashboard queries {name}, which is not exported"
            );
            used += 1;
        }
        assert!(used > 20);
    }

    #[test]
    fn rlqs_rule_gauges_are_capped_and_follow_the_last_round() {
        let m = Metrics::new().unwrap();
        let mut rules = std::collections::BTreeMap::new();
        for i in 0..MAX_RLQS_RULE_SERIES + 5 {
            rules.insert(("edge".to_string(), format!("r{i}")), (1_500, 1_000));
        }
        m.rlqs.observe_rules(&rules);
        let series = |m: &Metrics| {
            m.render()
                .lines()
                .filter(|l| l.starts_with("quorate_rlqs_demand_requests_per_second{"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(series(&m).len(), MAX_RLQS_RULE_SERIES);
        assert!(series(&m)[0].ends_with(" 1.5"), "{:?}", series(&m)[0]);
        // A rule gone from the round loses its series.
        let one = std::collections::BTreeMap::from([(("edge".into(), "api".into()), (2_000, 0))]);
        m.rlqs.observe_rules(&one);
        assert_eq!(
            series(&m),
            [r#"quorate_rlqs_demand_requests_per_second{domain="edge",rule="api"} 2"#]
        );
    }

    #[test]
    fn redacted_values_are_short_distinct_digests() {
        let a = redacted_value("sk_live_SECRET");
        assert!(!a.contains("SECRET"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with('#'));
        assert_ne!(a, redacted_value("sk_live_SECRET2"));
    }

    #[test]
    fn key_cap_metrics_are_labelled_by_limit_and_capped() {
        let m = Metrics::new().unwrap();
        for i in 0..MAX_KEY_CAP_SERIES + 5 {
            m.observe_key_cap(&format!("l{i}"), true, i % 2 == 0);
        }
        let text = m.render();
        assert!(
            text.contains("quorate_counters_refused_total{limit=\"l0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("quorate_counters_evicted_total{limit=\"l0\"} 1"),
            "{text}"
        );
        assert!(text.contains("limit=\"(other)\""), "{text}");
    }

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new().unwrap();
        m.unknown_limits.inc();
        assert!(m.render().contains("quorate_unknown_limit_total 1"));
    }

    /// Metric names built from request values (`detailed_metric`, `value_to_metric`) come
    /// from clients: neither many distinct values nor huge ones grow the registry beyond
    /// its caps.
    #[test]
    fn per_value_series_are_capped_in_number_and_length() {
        let m = Metrics::new().unwrap();
        let huge = format!("d.user_{}", "x".repeat(MAX_DETAILED_KEY));
        m.observe_detailed("d/other", &huge, false);
        for i in 0..MAX_DETAILED_SERIES + 500 {
            m.observe_detailed("d/user", &format!("d.user_{i}"), true);
        }
        let families = m.registry.gather();
        let detailed = families
            .iter()
            .find(|f| f.name() == "quorate_rls_detailed_total")
            .unwrap();
        let series = detailed.get_metric();
        assert_eq!(
            series.len(),
            MAX_DETAILED_SERIES + 2,
            "the cap plus two (other) series"
        );
        let key_of = |s: &prometheus::proto::Metric| {
            s.get_label()
                .iter()
                .find(|l| l.name() == "key")
                .map(|l| l.value().to_string())
                .unwrap()
        };
        assert!(series.iter().all(|s| key_of(s).len() <= MAX_DETAILED_KEY));
        let other: u64 = series
            .iter()
            .filter(|s| key_of(s) == "(other)")
            .map(|s| s.get_counter().value() as u64)
            .sum();
        assert_eq!(other, 501);
    }
}
