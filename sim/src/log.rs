//! A crashable Raft log: in memory, with an explicit fsynced prefix.
//!
//! `append` makes entries readable at once and queues their fsync; one flusher task per
//! node incarnation completes fsyncs in order after a seeded delay, copying the entries
//! to the node's [`Disk`] and only then telling openraft they are durable. A crash
//! keeps exactly what the disk holds: the fsynced prefix, the vote, truncations and
//! purges (which openraft awaits, so they are durable when they return). Entries whose
//! fsync had not completed are lost, and only those.
//!
//! Why not the real segmented log on a temp dir: its flusher is an OS thread doing real
//! fsyncs, which would make scheduling depend on the machine, and the page cache would
//! keep "lost" writes after a simulated crash; exact loss needs a disk we control.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use quorate_server::raft::typ::{Entry, LogId, StorageError, Vote};
use quorate_server::raft::TypeConfig;
use tokio::sync::mpsc;

use crate::rng::SimRng;

/// What survives a crash of one node, plus the volatile view of its log.
#[derive(Debug, Default)]
pub struct Disk {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    /// The log as the running node sees it (durable or not yet).
    entries: BTreeMap<u64, Entry>,
    /// What an fsync completed for.
    durable: BTreeMap<u64, Entry>,
    /// Bumped at every crash: flushes queued by an earlier incarnation never land.
    incarnation: u64,
}

/// A node's disk, kept across its crashes.
#[derive(Debug, Clone, Default)]
pub struct SharedDisk(Arc<Mutex<Disk>>);

impl SharedDisk {
    fn with<T>(&self, f: impl FnOnce(&mut Disk) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The node lost power: everything not fsynced is gone. Returns how many entries.
    pub fn crash(&self) -> usize {
        self.with(|d| {
            d.incarnation += 1;
            let lost = d
                .entries
                .iter()
                .filter(|(i, e)| d.durable.get(i).map(|x| x.log_id) != Some(e.log_id))
                .count();
            d.entries = d.durable.clone();
            lost
        })
    }

    /// The highest index whose entry is durable.
    pub fn durable_last(&self) -> Option<u64> {
        self.with(|d| d.durable.keys().next_back().copied())
    }
}

struct Flush {
    log_ids: Vec<LogId>,
    incarnation: u64,
    /// `None` once the callback was called early (a lying disk).
    callback: Option<LogFlushed<TypeConfig>>,
    /// When the write reaches the platter.
    durable_at: tokio::time::Instant,
}

/// How the disk behaves.
#[derive(Debug, Clone, Copy)]
pub enum DiskMode {
    /// fsync returns once the write is durable, after a delay in this range.
    Honest(Duration, Duration),
    /// Planted bug: fsync returns at once, but the write only becomes durable after a
    /// delay in this range (a write-back cache without power-loss protection).
    Lying(Duration, Duration),
}

/// One incarnation's handle on a [`SharedDisk`].
#[derive(Debug, Clone)]
pub struct MemLog {
    disk: SharedDisk,
    flusher: mpsc::UnboundedSender<Flush>,
    /// The incarnation this handle belongs to: once the node crashed, a handle still held
    /// by its shutting-down Raft writes nothing (a dead process cannot).
    incarnation: u64,
}

impl std::fmt::Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flush")
            .field("log_ids", &self.log_ids)
            .finish()
    }
}

impl MemLog {
    /// Runs `f` on the disk unless this incarnation has crashed.
    fn write(&self, f: impl FnOnce(&mut Disk)) {
        let incarnation = self.incarnation;
        self.disk.with(|d| {
            if d.incarnation == incarnation {
                f(d)
            }
        })
    }

    /// Opens `disk` for a new incarnation.
    pub fn open(disk: SharedDisk, rng: SimRng, mode: DiskMode) -> MemLog {
        let (tx, mut rx) = mpsc::unbounded_channel::<Flush>();
        let flush_disk = disk.clone();
        let (lo, hi) = match mode {
            DiskMode::Honest(lo, hi) | DiskMode::Lying(lo, hi) => (lo, hi),
        };
        let lying = matches!(mode, DiskMode::Lying(..));
        let (jobs, mut queued) = mpsc::unbounded_channel::<Flush>();
        // Stamps each write with the instant it becomes durable (and, on a lying disk,
        // acknowledges it right away), keeping arrival order.
        tokio::spawn(async move {
            while let Some(mut job) = rx.recv().await {
                job.durable_at = tokio::time::Instant::now() + rng.duration(lo, hi);
                if lying {
                    if let Some(cb) = job.callback.take() {
                        cb.log_io_completed(Ok(()));
                    }
                }
                if jobs.send(job).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(job) = queued.recv().await {
                tokio::time::sleep_until(job.durable_at).await;
                let landed = flush_disk.with(|d| {
                    if d.incarnation != job.incarnation {
                        return false;
                    }
                    for id in &job.log_ids {
                        // Truncated meanwhile: that write no longer exists.
                        if let Some(e) = d.entries.get(&id.index).filter(|e| e.log_id == *id) {
                            let e = e.clone();
                            d.durable.insert(id.index, e);
                        }
                    }
                    true
                });
                if let (true, Some(cb)) = (landed, job.callback) {
                    cb.log_io_completed(Ok(()));
                }
            }
        });
        let incarnation = disk.with(|d| d.incarnation);
        MemLog {
            disk,
            flusher: tx,
            incarnation,
        }
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .disk
            .with(|d| d.entries.range(range).map(|(_, e)| e.clone()).collect()))
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.disk.with(|d| {
            let last = d
                .entries
                .values()
                .next_back()
                .map(|e| e.log_id)
                .or(d.last_purged);
            LogState {
                last_purged_log_id: d.last_purged,
                last_log_id: last,
            }
        }))
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write(|d| d.vote = Some(*vote));
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.disk.with(|d| d.vote))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let log_ids = entries.iter().map(|e| e.log_id).collect();
        self.write(|d| {
            for e in entries {
                d.entries.insert(e.log_id.index, e);
            }
        });
        let incarnation = self.incarnation;
        // A send error means the flusher is gone with its runtime: never acknowledged.
        let _ = self.flusher.send(Flush {
            log_ids,
            incarnation,
            callback: Some(callback),
            durable_at: tokio::time::Instant::now(),
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(|d| {
            d.entries.split_off(&log_id.index);
            d.durable.split_off(&log_id.index);
        });
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(|d| {
            d.entries = d.entries.split_off(&(log_id.index + 1));
            d.durable = d.durable.split_off(&(log_id.index + 1));
            d.last_purged = Some(log_id);
        });
        Ok(())
    }
}
