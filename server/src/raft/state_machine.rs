//! The replicated state machine: every counter and the live policy.
//!
//! Applying a [`Command`] is a pure function of the state and the entry. The entry carries
//! the leader's timestamp and the state machine never reads a clock, so every replica
//! makes the same decisions in the same order. Time is clamped to be monotonic: an entry
//! stamped earlier than one already applied (a new leader with a slower clock) acts at the
//! later instant, which never grants extra quota.
//!
//! Idle counters are swept once per second of log time, deterministically, so snapshots
//! stay small. Snapshots carry the counters, the policy history and the membership; the
//! current one is kept on disk (`snapshot.bin`) so a restarted node resumes from it and
//! replays only the log after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use quorate_algorithms::{CounterStore, Nanos, StoredCounter, SECOND};
use serde::{Deserialize, Serialize};

use super::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use super::{Command, CommandResponse, Hit, ReserveItem, TypeConfig};
use crate::policy::{PolicyFormat, PolicySet, PolicySource};
use crate::quota::{AssignmentTable, Grant};
use quorate_algorithms::{Decision, DenyReason, Reserved};

/// How often, in log time, idle counters are swept.
const SWEEP_INTERVAL: Nanos = SECOND;

/// How many policy versions are kept for rollback.
const POLICY_HISTORY: usize = 32;

/// The file holding the current snapshot inside the state machine's directory.
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The store key of counter `key` under limit `limit` (`limit␟key`: the store caps keys
/// per limit by that prefix).
pub use quorate_algorithms::counter_key;

/// One version of the policy, as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub source: PolicySource,
    /// Leader time at which it became live.
    pub applied_at: Nanos,
    /// Set when this version re-activated an earlier one.
    pub rollback_of: Option<u64>,
}

/// The live policy: compiled, plus the version it came from (`None` before any policy).
#[derive(Debug, Default)]
pub struct LivePolicy {
    pub version: Option<PolicyVersion>,
    pub set: PolicySet,
}

/// The parts of the state machine other tasks read while it applies: the counters and
/// the live policy. Swapped whole on snapshot install or policy change.
#[derive(Debug)]
pub struct SharedState {
    pub counters: ArcSwap<CounterStore>,
    pub policy: ArcSwap<LivePolicy>,
    history: Mutex<Vec<PolicyVersion>>,
    /// Snapshots this node built (for `/metrics`).
    pub snapshots: SnapshotStats,
    /// Committed Envoy RLQS shares still charged (`crate::quota`).
    pub assignments: Mutex<AssignmentTable>,
}

/// Counts of the snapshots a node built, read by the metrics scrape.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub built: std::sync::atomic::AtomicU64,
    pub last_bytes: std::sync::atomic::AtomicU64,
    pub last_build_nanos: std::sync::atomic::AtomicU64,
}

impl SharedState {
    /// Every kept policy version, oldest first.
    pub fn policy_history(&self) -> Vec<PolicyVersion> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// What `bucket`'s committed RLQS grants hold at `now`.
    pub fn assignment_charge(&self, bucket: &str, now: Nanos) -> crate::quota::BucketCharge {
        self.assignments
            .lock()
            .map(|t| t.charge(bucket, now))
            .unwrap_or_default()
    }
}

/// A snapshot as kept in memory and on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The serialized body of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    clock: Nanos,
    next_sweep: Nanos,
    policy_history: Vec<PolicyVersion>,
    counters: Vec<(String, StoredCounter)>,
    /// RLQS grants (added later: [`decode_body`] reads snapshots written without it).
    #[serde(default)]
    assignments: Vec<Grant>,
}

/// [`SnapshotBody`] as written before RLQS grants existed.
#[derive(Debug, Deserialize)]
struct SnapshotBodyV1 {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    clock: Nanos,
    next_sweep: Nanos,
    policy_history: Vec<PolicyVersion>,
    counters: Vec<(String, StoredCounter)>,
}

/// Decodes a snapshot body of this version or of the one before it (postcard is not
/// self-describing: a missing trailing field is an error, not a default).
fn decode_body(bytes: &[u8]) -> Result<SnapshotBody, postcard::Error> {
    postcard::from_bytes::<SnapshotBody>(bytes).or_else(|e| {
        let v1: SnapshotBodyV1 = postcard::from_bytes(bytes).map_err(|_| e)?;
        Ok(SnapshotBody {
            last_applied: v1.last_applied,
            membership: v1.membership,
            clock: v1.clock,
            next_sweep: v1.next_sweep,
            policy_history: v1.policy_history,
            counters: v1.counters,
            assignments: Vec::new(),
        })
    })
}

/// quorate's [`RaftStateMachine`].
#[derive(Debug)]
pub struct StateMachine {
    shared: Arc<SharedState>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The latest leader timestamp applied; time never runs backwards past it.
    clock: Nanos,
    next_sweep: Nanos,
    dir: PathBuf,
    current_snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    snapshots_built: u64,
    /// Where refused and evicted keys are counted (absent in unit tests).
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl StateMachine {
    /// Counts key-cap refusals and evictions in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> StateMachine {
        self.metrics = Some(metrics);
        self
    }

    /// Opens the state machine kept in `dir`, restoring the snapshot found there.
    pub fn open(dir: &Path) -> Result<StateMachine, std::io::Error> {
        quorate_raft_log::create_dir_durably(dir)?;
        let mut sm = StateMachine {
            shared: Arc::new(SharedState {
                counters: ArcSwap::from_pointee(CounterStore::new(
                    crate::policy::DEFAULT_MAX_COUNTERS,
                )),
                policy: ArcSwap::from_pointee(LivePolicy::default()),
                history: Mutex::new(Vec::new()),
                snapshots: SnapshotStats::default(),
                assignments: Mutex::new(AssignmentTable::default()),
            }),
            last_applied: None,
            membership: StoredMembership::default(),
            clock: 0,
            next_sweep: 0,
            dir: dir.to_path_buf(),
            current_snapshot: Arc::new(Mutex::new(None)),
            snapshots_built: 0,
            metrics: None,
        };
        let path = dir.join(SNAPSHOT_FILE);
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            let stored: StoredSnapshot = postcard::from_bytes(&bytes).map_err(invalid_data)?;
            let body = decode_body(&stored.data).map_err(invalid_data)?;
            sm.restore(body);
            tracing::info!(last_applied = ?sm.last_applied, "restored state machine from snapshot");
            set_snapshot(&sm.current_snapshot, Some(stored));
        }
        Ok(sm)
    }

    /// The state other tasks read concurrently.
    pub fn shared(&self) -> Arc<SharedState> {
        Arc::clone(&self.shared)
    }

    fn restore(&mut self, body: SnapshotBody) {
        self.last_applied = body.last_applied;
        self.membership = body.membership;
        self.clock = body.clock;
        self.next_sweep = body.next_sweep;
        let live = live_policy(&body.policy_history);
        let max = live.set.max_counters;
        self.shared.policy.store(Arc::new(live));
        if let Ok(mut h) = self.shared.history.lock() {
            *h = body.policy_history;
        }
        self.shared
            .counters
            .store(Arc::new(CounterStore::import(body.counters, max)));
        if let Ok(mut t) = self.shared.assignments.lock() {
            *t = AssignmentTable::import(body.assignments);
        }
    }

    fn body(&self) -> SnapshotBody {
        SnapshotBody {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            clock: self.clock,
            next_sweep: self.next_sweep,
            policy_history: self.shared.policy_history(),
            counters: self.shared.counters.load().export(),
            assignments: self
                .shared
                .assignments
                .lock()
                .map(|t| t.export())
                .unwrap_or_default(),
        }
    }

    /// Applies one command at the leader's time `ts`, clamped to be monotonic.
    fn apply_command(&mut self, command: Command) -> CommandResponse {
        let now = command.ts().max(self.clock);
        self.clock = now;
        if now >= self.next_sweep {
            let swept = self.shared.counters.load().expire(now);
            if swept > 0 {
                tracing::debug!(swept, "expired idle counters");
            }
            self.next_sweep = now.saturating_add(SWEEP_INTERVAL);
        }
        match command {
            Command::Hits { hits, .. } => CommandResponse::Decisions(self.decide(now, &hits)),
            Command::Reserve { items, .. } => CommandResponse::Reserved {
                at: now,
                outcomes: self.reserve(now, &items),
            },
            Command::Requests { requests, .. } => {
                let mut decisions = Vec::with_capacity(requests.iter().map(|r| r.hits.len()).sum());
                for request in &requests {
                    if request.atomic && request.hits.len() > 1 {
                        decisions.extend(self.decide_atomic(now, &request.hits));
                    } else {
                        decisions.extend(self.decide(now, &request.hits));
                    }
                }
                CommandResponse::Decisions(decisions)
            }
            Command::Consumed { hits, .. } => {
                self.record_consumed(now, &hits);
                CommandResponse::Consumed
            }
            Command::InitPolicy { .. } if !self.shared.policy_history().is_empty() => {
                let live = self.shared.policy.load();
                CommandResponse::Policy(Ok(live.version.as_ref().map_or(0, |v| v.version)))
            }
            Command::SetPolicy { format, source, .. }
            | Command::InitPolicy { format, source, .. } => {
                let source = match PolicyFormat::parse(&format) {
                    Ok(format) => PolicySource {
                        format,
                        text: source,
                    },
                    Err(e) => return CommandResponse::Policy(Err(e.to_string())),
                };
                CommandResponse::Policy(self.activate(now, source, None))
            }
            Command::Assign { grants, .. } => {
                if let Ok(mut t) = self.shared.assignments.lock() {
                    t.apply(now, grants);
                }
                CommandResponse::Assigned
            }
            Command::Settle { items, .. } => {
                let counters = self.shared.counters.load();
                for item in &items {
                    counters.refund(
                        &counter_key(&item.limit, &item.key),
                        &item.rate,
                        item.valid_until,
                        item.unused,
                    );
                }
                CommandResponse::Settled
            }
            Command::RollbackPolicy { version, .. } => {
                let old = self
                    .shared
                    .policy_history()
                    .into_iter()
                    .find(|v| v.version == version);
                match old {
                    Some(old) => {
                        CommandResponse::Policy(self.activate(now, old.source, Some(version)))
                    }
                    None => CommandResponse::Policy(Err(format!(
                        "policy version {version} is not kept (only the last {POLICY_HISTORY} are)"
                    ))),
                }
            }
        }
    }

    /// Decides strict hits. Each limit's key cap comes from the live policy (replicated
    /// state), so refusals and evictions are the same on every replica.
    fn decide(&self, now: Nanos, hits: &[Hit]) -> Vec<Decision> {
        let counters = self.shared.counters.load();
        let policy = self.shared.policy.load();
        hits.iter()
            .map(|hit| {
                let cap = policy.set.key_cap(&hit.limit);
                let key = counter_key(&hit.limit, &hit.key);
                let checked = counters.check_capped(&key, cap, &hit.rate, now, hit.cost);
                let refused = checked.decision.denied == Some(DenyReason::LimitKeysFull);
                self.observe_key_cap(&hit.limit, refused, checked.evicted);
                checked.decision
            })
            .collect()
    }

    /// Applies reservations: each is checked at `now` and counted as consumed, under the
    /// same key caps as hits.
    fn reserve(&self, now: Nanos, items: &[ReserveItem]) -> Vec<Reserved> {
        let counters = self.shared.counters.load();
        let policy = self.shared.policy.load();
        items
            .iter()
            .map(|item| {
                let cap = policy.set.key_cap(&item.limit);
                let key = counter_key(&item.limit, &item.key);
                let (reserved, evicted) =
                    counters.reserve_capped(&key, cap, &item.rate, now, item.request);
                let refused = reserved.decision.denied == Some(DenyReason::LimitKeysFull);
                self.observe_key_cap(&item.limit, refused, evicted);
                reserved
            })
            .collect()
    }

    /// Decides one request's strict hits all-or-nothing ([`CounterStore::check_all`]):
    /// a denied request changes no counter, on every replica alike.
    fn decide_atomic(&self, now: Nanos, hits: &[Hit]) -> Vec<Decision> {
        let counters = self.shared.counters.load();
        let policy = self.shared.policy.load();
        let keys: Vec<String> = hits.iter().map(|h| counter_key(&h.limit, &h.key)).collect();
        let group = super::group_hits(hits, &keys, &policy.set);
        counters
            .check_all(&group, now, &|_| None)
            .into_iter()
            .zip(hits)
            .map(|(checked, hit)| {
                let refused = checked.decision.denied == Some(DenyReason::LimitKeysFull);
                self.observe_key_cap(&hit.limit, refused, checked.evicted);
                checked.decision
            })
            .collect()
    }

    fn record_consumed(&self, now: Nanos, hits: &[Hit]) {
        let counters = self.shared.counters.load();
        let policy = self.shared.policy.load();
        for hit in hits {
            let cap = policy.set.key_cap(&hit.limit);
            let key = counter_key(&hit.limit, &hit.key);
            // At a key cap the leader refused the hit already (or evicted for it, as this
            // replica does now); a refusal here leaves nothing to record.
            match counters.force_capped(&key, cap, &hit.rate, now, hit.cost) {
                Ok(evicted) => self.observe_key_cap(&hit.limit, false, evicted),
                Err(_) => self.observe_key_cap(&hit.limit, true, false),
            }
        }
    }

    fn observe_key_cap(&self, limit: &str, refused: bool, evicted: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.observe_key_cap(limit, refused, evicted);
        }
    }

    /// Compiles `source` and makes it the live policy; the previous one stays live on error.
    fn activate(
        &mut self,
        now: Nanos,
        source: PolicySource,
        rollback_of: Option<u64>,
    ) -> Result<u64, String> {
        let set = PolicySet::compile(&source).map_err(|e| e.to_string())?;
        let mut history = self.shared.policy_history();
        let version = history.last().map_or(1, |v| v.version.saturating_add(1));
        let entry = PolicyVersion {
            version,
            source,
            applied_at: now,
            rollback_of,
        };
        history.push(entry.clone());
        if history.len() > POLICY_HISTORY {
            let excess = history.len() - POLICY_HISTORY;
            history.drain(..excess);
        }
        let counters = self.shared.counters.load_full();
        if counters.max_keys() != set.max_counters {
            // Rare: rebuild the store with the new cap (the same on every replica).
            self.shared.counters.store(Arc::new(CounterStore::import(
                counters.export(),
                set.max_counters,
            )));
        }
        self.shared.policy.store(Arc::new(LivePolicy {
            version: Some(entry),
            set,
        }));
        if let Ok(mut h) = self.shared.history.lock() {
            *h = history;
        }
        tracing::info!(version, "policy is live");
        Ok(version)
    }
}

/// The live policy implied by a history: its last version, compiled.
fn live_policy(history: &[PolicyVersion]) -> LivePolicy {
    match history.last() {
        Some(v) => match PolicySet::compile(&v.source) {
            Ok(set) => LivePolicy {
                version: Some(v.clone()),
                set,
            },
            // A stored version always compiled when it was applied; if a newer binary
            // refuses it, start empty rather than crash, and say so.
            Err(e) => {
                tracing::error!(version = v.version, error = %e, "stored policy no longer compiles");
                LivePolicy::default()
            }
        },
        None => LivePolicy::default(),
    }
}

fn invalid_data(e: postcard::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

fn set_snapshot(slot: &Mutex<Option<StoredSnapshot>>, snapshot: Option<StoredSnapshot>) {
    if let Ok(mut s) = slot.lock() {
        *s = snapshot;
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Builds a snapshot from a consistent copy taken when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    body: Option<SnapshotBody>,
    dir: PathBuf,
    slot: Arc<Mutex<Option<StoredSnapshot>>>,
    id: String,
    shared: Arc<SharedState>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let body = self.body.take().ok_or_else(|| {
            StorageIOError::read_state_machine(&std::io::Error::other("snapshot already built"))
        })?;
        let meta = SnapshotMeta {
            last_log_id: body.last_applied,
            last_membership: body.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let dir = self.dir.clone();
        let started = std::time::Instant::now();
        // Serializing millions of counters and fsyncing is blocking work.
        let stored = tokio::task::spawn_blocking(move || -> std::io::Result<StoredSnapshot> {
            let data = postcard::to_stdvec(&body).map_err(invalid_data)?;
            let stored = StoredSnapshot { meta, data };
            let bytes = postcard::to_stdvec(&stored).map_err(invalid_data)?;
            write_atomic(&dir.join(SNAPSHOT_FILE), &bytes)?;
            Ok(stored)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e)))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        tracing::info!(last_log_id = ?stored.meta.last_log_id, bytes = stored.data.len(), "built snapshot");
        {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = &self.shared.snapshots;
            stats.built.fetch_add(1, Relaxed);
            stats.last_bytes.store(stored.data.len() as u64, Relaxed);
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            stats.last_build_nanos.store(nanos, Relaxed);
        }
        let snapshot = Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        };
        set_snapshot(&self.slot, Some(stored));
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Empty,
                EntryPayload::Normal(command) => self.apply_command(command),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Empty
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshots_built += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshots_built),
            None => format!("0-0-{}", self.snapshots_built),
        };
        SnapshotBuilder {
            body: Some(self.body()),
            dir: self.dir.clone(),
            slot: Arc::clone(&self.current_snapshot),
            id,
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body = decode_body(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &invalid_data(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes = postcard::to_stdvec(&stored).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), &invalid_data(e))
        })?;
        let path = self.dir.join(SNAPSHOT_FILE);
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), &std::io::Error::other(e))
            })?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let counters = body.counters.len();
        self.restore(body);
        // The snapshot's meta is authoritative for what it covers.
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        set_snapshot(&self.current_snapshot, Some(stored));
        tracing::info!(last_log_id = ?meta.last_log_id, counters, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = self.current_snapshot.lock().ok().and_then(|s| s.clone());
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;
