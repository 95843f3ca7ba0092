//! Envoy's Rate Limit Quota Service:
//! `envoy.service.rate_limit_quota.v3.RateLimitQuotaService/StreamRateLimitQuotas`.
//!
//! Each Envoy holds one stream per domain, reports per-bucket usage every
//! `reporting_interval` and enforces the assignments pushed back. The leader re-divides
//! every bucket's limit once per `rlqs.interval` ([`crate::quota::plan`]), **commits** the
//! shares as one [`Command::Assign`] entry, and only then pushes them: every share a proxy
//! holds is in the replicated grant table, which the next leader counts as spent until the
//! share expires.
//!
//! Only the leader serves streams. A follower (or a leader that lost its term) answers
//! `UNAVAILABLE` with the leader's gRPC address in `x-quorate-leader`; Envoy reconnects
//! (through its cluster's load balancing) and falls back to its configured
//! `no_assignment_behavior` / `expired_assignment_behavior` meanwhile. Proxying the stream
//! through a follower would add a hop to every push and a second place where a share
//! could outlive the leader that granted it.
//!
//! Hostile streams are bounded: unknown or changed domains, malformed bucket ids,
//! oversized reports and bucket floods end the stream with a status naming the problem;
//! per-stream and per-node bucket caps come from the policy, message size from
//! [`MAX_REPORT_BYTES`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy};
use envoy_types::pb::envoy::r#type::v3::{RateLimitStrategy, TokenBucket};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::{
    AbandonAction, BucketAction as Action, QuotaAssignmentAction,
};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::BucketAction;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::{
    RateLimitQuotaService, RateLimitQuotaServiceServer,
};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use quorate_algorithms::{Nanos, SECOND};
use quorate_policy::rlqs::{RlqsSettings, MAX_BUCKET_PAIRS, MAX_BUCKET_TEXT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::engine::{Engine, LeaderClock};
use crate::metrics::Metrics;
use crate::quota::{self, Demand, Grant, Pool, Share, ShareSettings};
use crate::raft::typ::Raft;
use crate::raft::{Command, NodeId};

/// Largest report message accepted (tonic refuses bigger ones with `RESOURCE_EXHAUSTED`).
pub const MAX_REPORT_BYTES: usize = 1 << 20;
/// Most usages in one report message.
pub const MAX_USAGES_PER_REPORT: usize = 1_000;
/// Most (stream, bucket) subscriptions the leader tracks, over all streams: the bucket
/// caps bound distinct buckets, this bounds many streams reporting the same ones.
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
/// Responses queued for a stream that reads slowly; a push that finds the queue full is
/// skipped (the proxy's share simply expires, which is safe).
const STREAM_QUEUE: usize = 8;

type Sender = mpsc::Sender<Result<RateLimitQuotaResponse, Status>>;

// The dashboard's read-only view of the hub and the grant table.
mod view;
pub use view::{RlqsView, MAX_VIEW_BUCKETS, MAX_VIEW_PROXIES};

/// The RLQS service of one node and, while it leads, the share rounds.
pub struct Rlqs {
    raft: Raft,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    clock: LeaderClock,
    hub: Mutex<Hub>,
    next_id: AtomicU64,
    /// Rings when a report asks for more (a new subscriber, a rise in demand): a round
    /// runs early instead of at the next interval.
    wake: tokio::sync::Notify,
    /// The term in which this process last committed an entry of its own as leader, so
    /// that everything committed before it (by any leader) is applied.
    linearized_term: AtomicU64,
    /// Recent rounds, for the dashboard's churn figures.
    rounds: Mutex<VecDeque<view::RoundSecond>>,
    /// The dashboard's last view, shared by every viewer for up to a second.
    view_cache: Mutex<Option<(std::time::Instant, Arc<RlqsView>)>>,
}

impl std::fmt::Debug for Rlqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rlqs")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// What the leader knows about its subscribers; soft state, rebuilt from reports.
#[derive(Debug, Default)]
struct Hub {
    /// Ordered, like the maps of pushes: the order of sends is the same in every run
    /// (the simulator replays a seed exactly).
    streams: BTreeMap<u64, Sender>,
    /// Each stream's remote address, as the dashboard shows it.
    peers: BTreeMap<u64, Option<SocketAddr>>,
    buckets: BTreeMap<String, BucketState>,
    /// Subscriptions in `buckets`: counted up on each new one, recounted exactly when
    /// streams end and at every round (so it may briefly over-count, never under).
    subscriptions: usize,
}

impl Hub {
    fn recount(&mut self) {
        self.subscriptions = self.buckets.values().map(|b| b.subscribers.len()).sum();
    }
}

#[derive(Debug)]
struct BucketState {
    domain: String,
    rule: String,
    /// Subscription id → its latest report.
    subscribers: BTreeMap<u64, Subscriber>,
    /// Fresh grants of recent rounds (leader time, count), for the dashboard.
    churn: VecDeque<(Nanos, u32)>,
}

#[derive(Debug)]
struct Subscriber {
    stream: u64,
    bucket_id: BucketId,
    demand: quota::MilliRate,
    /// The last report's allowed and denied requests per second, in milli.
    allowed: quota::MilliRate,
    denied: quota::MilliRate,
    last_report: Nanos,
}

/// One bucket of one stream, as the stream's reader tracks it.
#[derive(Debug)]
struct Subscription {
    id: u64,
    /// The bucket's key and rule; `None`: no rule matches, and the bucket is answered
    /// ALLOW_ALL, like an unmatched RLS descriptor.
    bucket: Option<(String, String)>,
}

impl Rlqs {
    /// The service for a node; call [`Rlqs::run_rounds`] once to share while leading.
    pub fn new(raft: Raft, engine: Arc<Engine>, metrics: Arc<Metrics>, node: NodeId) -> Arc<Rlqs> {
        // Ids are unique across nodes and restarts: the grant table outlives streams, and
        // a new stream must never inherit an old one's grants.
        let seed = (node << 48) ^ (rand::random::<u64>() >> 16);
        Rlqs::with_clock(raft, engine, metrics, LeaderClock::default(), seed)
    }

    /// [`Rlqs::new`] reading time from `clock` and numbering streams from `first_id`
    /// (the simulator: each node's skewable clock, ids unique per node incarnation).
    pub fn with_clock(
        raft: Raft,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        clock: LeaderClock,
        first_id: u64,
    ) -> Arc<Rlqs> {
        Arc::new(Rlqs {
            raft,
            engine,
            metrics,
            clock,
            hub: Mutex::new(Hub::default()),
            next_id: AtomicU64::new(first_id),
            wake: tokio::sync::Notify::new(),
            linearized_term: AtomicU64::new(0),
            rounds: Mutex::new(VecDeque::new()),
            view_cache: Mutex::new(None),
        })
    }

    pub fn server(self: &Arc<Self>) -> RateLimitQuotaServiceServer<RlqsService> {
        RateLimitQuotaServiceServer::new(RlqsService(Arc::clone(self)))
            .max_decoding_message_size(MAX_REPORT_BYTES)
    }

    fn settings(&self) -> RlqsSettings {
        self.engine.policy().set.rlqs.settings
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock cannot leave the hub inconsistent in a way that
        // matters: it is soft state, so take it back.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn not_leader(&self) -> Status {
        let mut status = Status::unavailable(
            "this node does not lead the cluster; RLQS streams are served by the leader",
        );
        if let Some(leader) = self.engine.leadership().leader_node() {
            if let Ok(v) = MetadataValue::try_from(leader.grpc.to_string()) {
                status
                    .metadata_mut()
                    .insert(quorate_proto::wire::LEADER_HEADER, v);
            }
        }
        status
    }

    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.rlqs.refused.with_label_values(&[reason]).inc();
        status
    }

    /// Reads one stream's reports until it ends or misbehaves.
    async fn read_stream(
        self: Arc<Self>,
        stream_id: u64,
        mut reports: Streaming<RateLimitQuotaUsageReports>,
        tx: Sender,
    ) {
        let mut domain: Option<String> = None;
        let mut subscriptions: HashMap<Vec<(String, String)>, Subscription> = HashMap::new();
        loop {
            let message = tokio::select! {
                m = reports.message() => m,
                _ = tx.closed() => break,
            };
            let report = match message {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(status) => {
                    if status.code() == Code::OutOfRange || status.code() == Code::ResourceExhausted
                    {
                        let _ = tx.send(Err(self.refuse("report_too_large", status))).await;
                    }
                    break;
                }
            };
            match self.on_report(stream_id, &mut domain, &mut subscriptions, report) {
                Ok(Some(answer)) => {
                    if tx.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            }
        }
        let mut hub = self.hub();
        hub.streams.remove(&stream_id);
        hub.peers.remove(&stream_id);
        hub.buckets.retain(|_, b| {
            b.subscribers.retain(|_, s| s.stream != stream_id);
            !b.subscribers.is_empty()
        });
        hub.recount();
    }

    /// Validates one report and records its demand. Returns an immediate answer for
    /// buckets no rule matches (ALLOW_ALL), or the status that ends the stream.
    fn on_report(
        &self,
        stream_id: u64,
        domain: &mut Option<String>,
        subscriptions: &mut HashMap<Vec<(String, String)>, Subscription>,
        report: RateLimitQuotaUsageReports,
    ) -> Result<Option<RateLimitQuotaResponse>, Status> {
        if !self.engine.leadership().is_leader() {
            return Err(self.refuse("not_leader", self.not_leader()));
        }
        let policy = self.engine.policy();
        let rlqs = &policy.set.rlqs;
        let settings = rlqs.settings;
        let domain = match (domain.as_deref(), report.domain.as_str()) {
            (None, "") => {
                return Err(self.refuse(
                    "malformed",
                    Status::invalid_argument("the first report of a stream must name its domain"),
                ))
            }
            (None, d) => {
                if !rlqs.has_domain(d) {
                    return Err(self.refuse(
                        "unknown_domain",
                        Status::not_found(format!(
                            "unknown RLQS domain {:?}: the policy's rlqs.domains do not name it",
                            truncate(d)
                        )),
                    ));
                }
                domain.insert(d.to_string()).clone()
            }
            (Some(d), "") => d.to_string(),
            (Some(d), new) if d == new => d.to_string(),
            (Some(d), new) => {
                return Err(self.refuse(
                    "domain_changed",
                    Status::invalid_argument(format!(
                        "domain changed mid-stream from {d:?} to {:?}; open a new stream for another domain",
                        truncate(new)
                    )),
                ))
            }
        };
        let usages = report.bucket_quota_usages;
        if usages.is_empty() || usages.len() > MAX_USAGES_PER_REPORT {
            return Err(self.refuse(
                "malformed",
                Status::invalid_argument(format!(
                    "bucket_quota_usages must hold 1 to {MAX_USAGES_PER_REPORT} usages, not {}",
                    usages.len()
                )),
            ));
        }
        let now = self.clock.now();
        let mut allow_all = Vec::new();
        let mut wake = false;
        let mut hub = self.hub();
        for (i, usage) in usages.into_iter().enumerate() {
            let bucket_id = usage.bucket_id.unwrap_or_default();
            let pairs = validate_bucket_id(&bucket_id).map_err(|e| {
                self.refuse(
                    "malformed",
                    Status::invalid_argument(format!("bucket_quota_usages[{i}].bucket_id: {e}")),
                )
            })?;
            let elapsed = usage
                .time_elapsed
                .and_then(|d| pb_nanos(&d))
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    self.refuse(
                        "malformed",
                        Status::invalid_argument(format!(
                            "bucket_quota_usages[{i}].time_elapsed must be a positive duration"
                        )),
                    )
                })?;
            let requests = usage
                .num_requests_allowed
                .saturating_add(usage.num_requests_denied);
            let per_second = |n: u64| {
                let rate = u128::from(n) * 1000 * u128::from(SECOND) / u128::from(elapsed);
                u64::try_from(rate).unwrap_or(u64::MAX)
            };
            let demand = per_second(requests);

            if !subscriptions.contains_key(&pairs) {
                if subscriptions.len() >= settings.max_buckets_per_stream {
                    return Err(self.refuse(
                        "too_many_buckets",
                        Status::resource_exhausted(format!(
                            "this stream reports more than {} buckets (rlqs.max_buckets_per_stream)",
                            settings.max_buckets_per_stream
                        )),
                    ));
                }
                let refs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let bucket = rlqs
                    .find(&domain, &refs)
                    .map(|m| (m.key, m.rule.name.clone()));
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                subscriptions.insert(pairs.clone(), Subscription { id, bucket });
            }
            let Some(sub) = subscriptions.get(&pairs) else {
                continue;
            };
            let Some((key, rule)) = &sub.bucket else {
                allow_all.push(BucketAction {
                    bucket_id: Some(bucket_id),
                    bucket_action: Some(assign(
                        Strategy::BlanketRule(BlanketRule::AllowAll as i32),
                        settings.ttl,
                    )),
                });
                continue;
            };
            if !hub.buckets.contains_key(key) && hub.buckets.len() >= settings.max_buckets {
                return Err(self.refuse(
                    "too_many_buckets",
                    Status::resource_exhausted(format!(
                        "the leader tracks {} buckets already (rlqs.max_buckets)",
                        settings.max_buckets
                    )),
                ));
            }
            let hub = &mut *hub;
            let state = hub
                .buckets
                .entry(key.clone())
                .or_insert_with(|| BucketState {
                    domain: domain.clone(),
                    rule: rule.clone(),
                    subscribers: BTreeMap::new(),
                    churn: VecDeque::new(),
                });
            let previous = state.subscribers.get(&sub.id).map(|s| s.demand);
            if previous.is_none() {
                if hub.subscriptions >= MAX_SUBSCRIPTIONS {
                    return Err(self.refuse(
                        "too_many_buckets",
                        Status::resource_exhausted(format!(
                            "the leader tracks {MAX_SUBSCRIPTIONS} subscriptions already"
                        )),
                    ));
                }
                hub.subscriptions += 1;
            }
            if previous.is_none_or(|p| demand > p.saturating_add(p / 4)) {
                wake = true;
            }
            state.subscribers.insert(
                sub.id,
                Subscriber {
                    stream: stream_id,
                    bucket_id,
                    demand: quota::smooth_demand(previous, demand),
                    allowed: per_second(usage.num_requests_allowed),
                    denied: per_second(usage.num_requests_denied),
                    last_report: now,
                },
            );
        }
        drop(hub);
        if wake {
            self.wake.notify_one();
        }
        Ok((!allow_all.is_empty()).then_some(RateLimitQuotaResponse {
            bucket_action: allow_all,
        }))
    }

    /// Runs share rounds forever while this node leads: every `rlqs.interval`, early when
    /// a report asks for more, and again as soon as an expiring share frees capacity a
    /// raise waits for (never closer together than a fifth of the interval).
    pub async fn run_rounds(self: Arc<Self>) {
        let mut next = tokio::time::Instant::now();
        loop {
            let settings = self.settings();
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => {}
            }
            let started = tokio::time::Instant::now();
            next = started + Duration::from_nanos(settings.interval);
            if !self.engine.leadership().is_leader() {
                self.close_all();
                continue;
            }
            if self.hub().buckets.is_empty() {
                // The last stream ended: nothing is subscribed or shared any more.
                self.metrics.rlqs.observe_hub(0, 0);
                self.metrics.rlqs.observe_rules(&BTreeMap::new());
                continue;
            }
            // Every grant committed before this process led must be in the table before
            // it is read: once per term, commit an entry of this process's own (an empty
            // `Assign`) and wait for it to apply; every earlier entry then has. Not
            // `ensure_linearizable`: a leader restarted within its term resumes without an
            // election or a new blank entry, so openraft's read index is only the last
            // commit index it saved (best effort) — grants the previous incarnation
            // committed and pushed after it may still be unapplied here (simulator seed
            // 200269: the shares proxies held reached twice the pool).
            let term = self.raft.metrics().borrow().current_term;
            if self.linearized_term.load(Ordering::Acquire) != term {
                let barrier = Command::Assign {
                    ts: self.clock.now(),
                    grants: Vec::new(),
                };
                if self.raft.client_write(barrier).await.is_err() {
                    self.close_all();
                    continue;
                }
                self.linearized_term.store(term, Ordering::Release);
            }
            match self.round(settings).await {
                Ok(Some(frees_at)) => {
                    let wait = frees_at
                        .saturating_sub(self.clock.now())
                        .saturating_add(1_000_000);
                    next = next.min(tokio::time::Instant::now() + Duration::from_nanos(wait));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "RLQS round not committed; shares will expire")
                }
            }
            let gap = Duration::from_nanos(settings.interval / 5);
            next = next.max(started + gap);
            // Early wake-ups arriving during this round were for it.
            tokio::time::sleep_until(started + gap).await;
        }
    }

    /// Ends every stream: this node no longer leads.
    fn close_all(&self) {
        let mut hub = self.hub();
        if hub.streams.is_empty() {
            return;
        }
        let status = self.not_leader();
        for tx in hub.streams.values() {
            let _ = tx.try_send(Err(status.clone()));
        }
        hub.streams.clear();
        hub.peers.clear();
        hub.buckets.clear();
        hub.subscriptions = 0;
        self.metrics.rlqs.observe_hub(0, 0);
        self.metrics.rlqs.observe_rules(&BTreeMap::new());
    }

    /// One round: plan every bucket, commit, push. Returns when capacity that a raise is
    /// waiting for frees up, if one is.
    async fn round(&self, settings: RlqsSettings) -> Result<Option<Nanos>, String> {
        let policy = self.engine.policy();
        let shared = Arc::clone(self.engine.shared());
        let now = self.clock.now();
        let share = ShareSettings {
            floor: settings.floor,
            ttl: settings.ttl,
            guard: guard(settings),
        };
        let silent_after = settings
            .interval
            .saturating_mul(u64::from(settings.abandon_after));
        // stream → actions to push once the grants are committed.
        let mut pushes: BTreeMap<u64, Vec<(BucketId, Share)>> = BTreeMap::new();
        let mut abandons: BTreeMap<u64, Vec<BucketId>> = BTreeMap::new();
        let mut grants = Vec::new();
        let mut frees_at = None;
        // (domain, rule) → (demand, assigned rate), for the per-rule gauges.
        let mut per_rule: BTreeMap<(String, String), (quota::MilliRate, quota::MilliRate)> =
            BTreeMap::new();
        {
            let mut hub = self.hub();
            let mut subscriptions = 0;
            let mut most = 0;
            let keys: Vec<String> = hub.buckets.keys().cloned().collect();
            for key in keys {
                let Some(state) = hub.buckets.get_mut(&key) else {
                    continue;
                };
                let limit = policy
                    .set
                    .rlqs
                    .domains
                    .get(&state.domain)
                    .and_then(|rules| rules.iter().find(|r| r.name == state.rule))
                    .map(|r| r.limit);
                // Silent subscribers, and every subscriber of a rule the policy dropped,
                // are abandoned.
                let gone: Vec<u64> = state
                    .subscribers
                    .iter()
                    .filter(|(_, s)| {
                        limit.is_none() || now.saturating_sub(s.last_report) > silent_after
                    })
                    .map(|(&id, _)| id)
                    .collect();
                for id in gone {
                    if let Some(s) = state.subscribers.remove(&id) {
                        abandons.entry(s.stream).or_default().push(s.bucket_id);
                        self.metrics.rlqs.abandoned.inc();
                    }
                }
                let Some(limit) = limit else {
                    hub.buckets.remove(&key);
                    continue;
                };
                if state.subscribers.is_empty() {
                    hub.buckets.remove(&key);
                    continue;
                }
                let demands: Vec<Demand> = state
                    .subscribers
                    .iter()
                    .map(|(&proxy, s)| Demand {
                        proxy,
                        rate: s.demand,
                    })
                    .collect();
                let pool = Pool::of(limit, settings.reserve);
                #[allow(unused_mut)]
                let mut charge = shared.assignment_charge(&key, now);
                #[cfg(feature = "sim-planted-bugs")]
                if crate::engine::planted::rlqs_forget_ended_streams() {
                    charge.held.retain(|p, _| state.subscribers.contains_key(p));
                    charge
                        .latest
                        .retain(|p, _| state.subscribers.contains_key(p));
                }
                let targets: HashMap<u64, quota::MilliRate> = demands
                    .iter()
                    .map(|d| d.proxy)
                    .zip(quota::targets(pool.rate, &demands, settings.floor))
                    .collect();
                let planned = quota::plan(&key, pool, &demands, &charge, share, now);
                // A share below its target waits for capacity (or tokens) to free up.
                let short = planned.iter().any(|(proxy, s)| {
                    let t = targets.get(proxy).copied().unwrap_or(0);
                    match s {
                        Share::Grant(g) => g.rate < t - t / 20,
                        _ => t > 0,
                    }
                });
                if short {
                    if let Some(e) = charge.lowered_until {
                        frees_at = Some(frees_at.map_or(e, |f: Nanos| f.min(e)));
                    }
                }
                let sums = per_rule
                    .entry((state.domain.clone(), state.rule.clone()))
                    .or_default();
                sums.0 = demands
                    .iter()
                    .fold(sums.0, |sum, d| sum.saturating_add(d.rate));
                let mut fresh_here = 0u32;
                for (proxy, share) in planned {
                    if let Share::Grant(g) = &share {
                        fresh_here += u32::from(g.fresh);
                        sums.1 = sums.1.saturating_add(g.rate);
                        grants.push(g.clone());
                    }
                    if let Some(s) = state.subscribers.get(&proxy) {
                        pushes
                            .entry(s.stream)
                            .or_default()
                            .push((s.bucket_id.clone(), share));
                    }
                }
                view::note_churn(&mut state.churn, now, fresh_here);
                subscriptions += state.subscribers.len();
                most = most.max(state.subscribers.len());
            }
            hub.subscriptions = subscriptions;
            self.metrics
                .rlqs
                .observe_hub(hub.buckets.len(), subscriptions);
            self.metrics.rlqs.max_proxies_per_bucket.set(most as i64);
        }
        let fresh = grants.iter().filter(|g| g.fresh).count();
        self.metrics.rlqs.rounds.inc();
        self.metrics.rlqs.observe_rules(&per_rule);
        self.note_round(now, fresh as u64, (grants.len() - fresh) as u64);
        self.metrics
            .rlqs
            .grants
            .with_label_values(&["fresh"])
            .inc_by(fresh as u64);
        self.metrics
            .rlqs
            .grants
            .with_label_values(&["extended"])
            .inc_by((grants.len() - fresh) as u64);
        if !grants.is_empty() {
            self.raft
                .client_write(Command::Assign { ts: now, grants })
                .await
                .map_err(|e| e.to_string())?;
        }
        self.push(pushes, abandons, settings);
        Ok(frees_at)
    }

    fn push(
        &self,
        pushes: BTreeMap<u64, Vec<(BucketId, Share)>>,
        abandons: BTreeMap<u64, Vec<BucketId>>,
        settings: RlqsSettings,
    ) {
        let now = self.clock.now();
        let guard = guard(settings);
        let hub = self.hub();
        for (stream, ids) in abandons {
            if let Some(tx) = hub.streams.get(&stream) {
                let actions = ids.into_iter().map(|id| BucketAction {
                    bucket_id: Some(id),
                    bucket_action: Some(Action::AbandonAction(AbandonAction {})),
                });
                let _ = tx.try_send(Ok(RateLimitQuotaResponse {
                    bucket_action: actions.collect(),
                }));
            }
        }
        for (stream, shares) in pushes {
            let Some(tx) = hub.streams.get(&stream) else {
                continue;
            };
            let actions: Vec<BucketAction> = shares
                .into_iter()
                .filter_map(|(id, share)| {
                    let action = match share {
                        Share::Grant(g) => {
                            // The proxy's copy must lapse before the committed one does.
                            let ttl = g.expires_at.checked_sub(now)?.checked_sub(guard)?;
                            assign(token_bucket(&g), ttl)
                        }
                        Share::Deny => assign(
                            Strategy::BlanketRule(BlanketRule::DenyAll as i32),
                            settings.ttl,
                        ),
                        Share::Wait => return None,
                    };
                    Some(BucketAction {
                        bucket_id: Some(id),
                        bucket_action: Some(action),
                    })
                })
                .collect();
            if !actions.is_empty() {
                let _ = tx.try_send(Ok(RateLimitQuotaResponse {
                    bucket_action: actions,
                }));
            }
        }
    }
}

/// How much sooner than its committed expiry a proxy's copy of a share lapses: covers
/// the push's delivery and the clock difference between leaders.
fn guard(settings: RlqsSettings) -> Nanos {
    (settings.interval / 5).max(20_000_000)
}

fn assign(strategy: Strategy, ttl: Nanos) -> Action {
    Action::QuotaAssignmentAction(QuotaAssignmentAction {
        assignment_time_to_live: Some(nanos_pb(ttl)),
        rate_limit_strategy: Some(RateLimitStrategy {
            strategy: Some(strategy),
        }),
    })
}

/// A share as Envoy enforces it: a small token bucket refilled one token at a time at the
/// granted rate (the interval rounded up, so the proxy never refills faster than granted).
fn token_bucket(g: &Grant) -> Strategy {
    #[allow(unused_mut)]
    let mut rate = g.rate;
    #[cfg(feature = "sim-planted-bugs")]
    if crate::engine::planted::rlqs_double_share() {
        rate = rate.saturating_mul(2);
    }
    let interval = (u128::from(SECOND) * 1000).div_ceil(u128::from(rate.max(1)));
    Strategy::TokenBucket(TokenBucket {
        max_tokens: g.max_tokens,
        tokens_per_fill: Some(UInt32Value { value: 1 }),
        fill_interval: Some(nanos_pb(u64::try_from(interval).unwrap_or(u64::MAX))),
    })
}

fn nanos_pb(n: Nanos) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(n / SECOND).unwrap_or(i64::MAX),
        nanos: (n % SECOND) as i32,
    }
}

fn pb_nanos(d: &PbDuration) -> Option<Nanos> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u64::try_from(d.nanos).ok().filter(|&n| n < SECOND)?;
    secs.checked_mul(SECOND)?.checked_add(nanos)
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The bucket id's entries sorted by key, or why it is malformed.
fn validate_bucket_id(id: &BucketId) -> Result<Vec<(String, String)>, String> {
    if id.bucket.is_empty() || id.bucket.len() > MAX_BUCKET_PAIRS {
        return Err(format!(
            "must hold 1 to {MAX_BUCKET_PAIRS} entries, not {}",
            id.bucket.len()
        ));
    }
    let mut pairs = Vec::with_capacity(id.bucket.len());
    for (k, v) in &id.bucket {
        let ok = |s: &str| !s.is_empty() && s.len() <= MAX_BUCKET_TEXT;
        if !ok(k) || !ok(v) {
            return Err(format!(
                "keys and values must be 1 to {MAX_BUCKET_TEXT} bytes (key {:?})",
                truncate(k)
            ));
        }
        pairs.push((k.clone(), v.clone()));
    }
    pairs.sort();
    Ok(pairs)
}

/// The tonic service: one reader task per stream, pushes from the rounds.
#[derive(Debug, Clone)]
pub struct RlqsService(Arc<Rlqs>);

#[tonic::async_trait]
impl RateLimitQuotaService for RlqsService {
    type StreamRateLimitQuotasStream = ReceiverStream<Result<RateLimitQuotaResponse, Status>>;

    async fn stream_rate_limit_quotas(
        &self,
        request: Request<Streaming<RateLimitQuotaUsageReports>>,
    ) -> Result<Response<Self::StreamRateLimitQuotasStream>, Status> {
        let rlqs = &self.0;
        if !rlqs.engine.leadership().is_leader() {
            return Err(rlqs.refuse("not_leader", rlqs.not_leader()));
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let stream_id = rlqs.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = request.remote_addr();
        {
            let mut hub = rlqs.hub();
            hub.streams.insert(stream_id, tx.clone());
            hub.peers.insert(stream_id, peer);
        }
        tokio::spawn(Arc::clone(rlqs).read_stream(stream_id, request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_bucket_never_refills_faster_than_granted() {
        let g = Grant {
            bucket: "b".into(),
            proxy: 1,
            rate: 3_000, // 3 per second
            max_tokens: 2,
            fresh: true,
            since: 0,
            expires_at: 0,
            hold_until: 0,
        };
        let Strategy::TokenBucket(tb) = token_bucket(&g) else {
            panic!("not a token bucket")
        };
        let interval = tb.fill_interval.unwrap();
        assert_eq!(tb.max_tokens, 2);
        assert_eq!((interval.seconds, interval.nanos), (0, 333_333_334));
    }

    #[test]
    fn malformed_bucket_ids_are_named() {
        let mut id = BucketId::default();
        assert!(validate_bucket_id(&id).unwrap_err().contains("1 to 16"));
        id.bucket.insert("k".into(), String::new());
        assert!(validate_bucket_id(&id).unwrap_err().contains("bytes"));
        id.bucket
            .insert("k".into(), "x".repeat(MAX_BUCKET_TEXT + 1));
        assert!(validate_bucket_id(&id).is_err());
        id.bucket.insert("k".into(), "v".into());
        id.bucket.insert("a".into(), "w".into());
        assert_eq!(
            validate_bucket_id(&id).unwrap(),
            [("a".into(), "w".into()), ("k".into(), "v".into())]
        );
        assert_eq!(
            pb_nanos(&PbDuration {
                seconds: -1,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            pb_nanos(&PbDuration {
                seconds: 1,
                nanos: 5
            }),
            Some(SECOND + 5)
        );
    }
}
