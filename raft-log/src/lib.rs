//! The durable Raft log and vote: an append-only, segmented log file of our own with
//! group commit, implementing openraft's `RaftLogStorage` (storage-v2).
//!
//! [`LogStore<C>`] is generic over openraft's `RaftTypeConfig`, so this crate knows
//! nothing of the application whose entries it stores: quorate's server uses
//! `LogStore<quorate_server::raft::TypeConfig>`. Entries are encoded with postcard
//! (openraft's `serde` feature). Writes that fsync run on tokio's blocking pool, so the
//! store must be used inside a tokio runtime. openraft's storage test suite
//! (`openraft::testing::Suite`) runs against it with quorate's state machine in
//! `server/tests/openraft_suite.rs`.
//!
//! # What it guarantees
//!
//! - **Nothing acknowledged is lost on `kill -9` or power loss.** An append is reported
//!   to openraft (`LogFlushed::log_io_completed(Ok)`) only after an `fdatasync` that
//!   covers its bytes has returned. A vote is durable before `save_vote` returns; a
//!   purge point before `purge` returns; a truncation before `truncate` returns.
//! - **Reads never touch the disk.** Every unpurged entry is also kept in memory; the
//!   files exist only for recovery.
//! - **Recovery is checked.** Each record is framed `[len u32 LE][crc32 u32 LE][postcard
//!   (Entry)]`. On [`LogStore::open`], a torn last record (a crash in the middle of an
//!   unacknowledged write) is cut off with a warning; a bad record anywhere else is an
//!   error ([`LogStoreError::Corrupt`]): acknowledged data is never silently dropped.
//! - **The committed log id** (`save_committed`) is best effort: written by atomic rename
//!   but not fsynced, at most once a second, and ignored at open unless it still names
//!   an entry of the log.
//!
//! # Layout of `dir`
//!
//! - `00000000000000000001.seg`: log segments, named by the index of their first record,
//!   rolled at [`LogStoreOptions::segment_bytes`] (64 MiB). A segment is fsynced in full
//!   before the next one receives a byte, so only the last segment can hold a torn tail.
//! - `vote`, `purged`, `committed`: one framed record each, replaced atomically
//!   (tmp + fsync + rename + fsync dir; `committed` skips the fsyncs).
//! - `truncating`: exists only while `truncate` removes whole segments (durably written
//!   first, removed and the directory fsynced after).
//!
//! The directory itself, and any parent `open` creates, is fsynced into its parent, so a
//! power loss right after the first start cannot lose the directory with the log in it.
//!
//! # Why this design (group commit on our own file)
//!
//! An fdatasync costs 0.14–4 ms on this machine class, far above everything else on the
//! write path, so the number of fsyncs decides throughput. `append` only writes into the
//! page cache and hands the callback to one flusher thread, which issues a single
//! `sync_data` for every callback queued since its last one. openraft pipelines appends
//! (it does not wait for a flush before the next `append`), so under load many entries
//! share one fsync, and no fsync ever runs on the tokio runtime.
//!
//! Measured (`bench/benches/log_store.rs`; command, date and earlier runs in
//! `docs/benchmarks.md`, "Raft log storage"): one 64-hit `Command::Hits` entry (2.7 KB)
//! per append, time per entry until durable:
//!
//! | store | 1 in flight | 16 in flight |
//! |---|---|---|
//! | this `LogStore` | 2.0 ms | 0.49 ms (9 entries per fsync) |
//! | redb 2, one `Durability::Immediate` commit per entry | 3.3 ms | 3.5 ms |
//! | redb 2, 16 entries per commit (group commit done by us) | | 0.28 ms |
//!
//! With one append in flight both pay one fsync and differ only by disk noise. redb
//! cannot share an fsync between independent commits, so a log on redb would still need
//! this group-commit stage in front of it, and would add a B-tree, page copies and MVCC
//! that a Raft log (append at the tail, truncate the tail, purge the head) never uses.
//! Our own file keeps recovery simple (sequential scan with per-record CRC) and adds no
//! dependency.

//! # Limits
//!
//! - Unsynced pages may reach the disk in any order, so a power loss can in principle
//!   leave a bad record *followed* by valid bytes in the never-acknowledged tail. Open
//!   reports that as [`LogStoreError::Corrupt`] rather than guess; the operator wipes
//!   the node's log and lets it re-replicate. (A bad record at the very end, or followed
//!   only by zeros, is recognised as torn and cut.)
//! - A crash inside `truncate` can leave segments detached from the log (their first
//!   index does not follow the previous segment); open removes them with a warning, but
//!   only those the `truncating` file says were being removed. Any other gap (a segment
//!   missing between two others, or before the first one after the purge point) is
//!   [`LogStoreError::Corrupt`] naming the segment after the gap: acknowledged entries
//!   are never dropped to make the log look whole. A bad record in a closed segment is
//!   the same error naming that segment; only the last segment's torn tail is cut.
//! - `save_vote` does not wait for appends still being flushed: an entry that is lost
//!   that way was never acknowledged, which Raft tolerates.

use std::collections::VecDeque;
use std::fmt::{self, Debug};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;

// openraft's generic types, for the application's type configuration `C`.
type LogId<C> = openraft::LogId<<C as RaftTypeConfig>::NodeId>;
type Vote<C> = openraft::Vote<<C as RaftTypeConfig>::NodeId>;
type StorageError<C> = openraft::StorageError<<C as RaftTypeConfig>::NodeId>;

/// Default segment size: large enough that rolling (one extra fsync) is rare, small
/// enough that purging frees disk space in useful steps.
const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// `[len u32 LE][crc32 u32 LE]`.
const HEADER_BYTES: usize = 8;
/// No single entry is anywhere near this; a larger length field is garbage.
const MAX_RECORD_BYTES: usize = 256 << 20;
const SEGMENT_EXT: &str = "seg";
const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
const COMMITTED_FILE: &str = "committed";
/// Present while a `truncate` removes segments: names the index truncated at, so that
/// recovery can tell segments a crashed truncate left behind from a missing segment.
const TRUNCATING_FILE: &str = "truncating";
/// How often, at most, the committed log id is written (see `run_flusher`).
const COMMITTED_INTERVAL: Duration = Duration::from_secs(1);
const TMP_EXT: &str = "tmp";
/// Longest the flusher delays an fsync to gather a burst of appends (only when its
/// previous fsync was shared). Small next to an fsync (0.14–4 ms here).
const GATHER_WINDOW: Duration = Duration::from_micros(250);

/// Tunables of a [`LogStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStoreOptions {
    /// A segment that has reached this size is closed (fsynced) and the next append
    /// starts a new one. A segment may exceed it by one append batch.
    pub segment_bytes: u64,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        LogStoreOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Why the log store could not open, read or write.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record that was once acknowledged no longer reads back. Never repaired
    /// automatically: an operator must decide (restore, or wipe and re-replicate).
    #[error("corrupt log file {} at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// openraft never leaves holes; this guards against a caller that would.
    #[error("log entry {got} appended where {expected} was expected: the log must be consecutive")]
    NotConsecutive { expected: u64, got: u64 },
    #[error("encode log record: {0}")]
    Encode(#[source] postcard::Error),
    /// After a failed fsync the page cache can no longer be trusted (dirty pages may
    /// have been dropped), so the store refuses all further writes.
    #[error("the log store failed an earlier flush and accepts no more writes")]
    Failed,
    #[error("a log store lock was poisoned by a panic")]
    Poisoned,
    #[error("log store background task: {0}")]
    Background(String),
}

impl LogStoreError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogStoreError + 'a {
        move |source| LogStoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

// Conversions into openraft's error, by subject.
fn write_logs_err<C: RaftTypeConfig>(e: LogStoreError) -> StorageError<C> {
    StorageIOError::write_logs(&e).into()
}
fn read_logs_err<C: RaftTypeConfig>(e: LogStoreError) -> StorageError<C> {
    StorageIOError::read_logs(&e).into()
}
fn write_vote_err<C: RaftTypeConfig>(e: LogStoreError) -> StorageError<C> {
    StorageIOError::write_vote(&e).into()
}
fn read_vote_err<C: RaftTypeConfig>(e: LogStoreError) -> StorageError<C> {
    StorageIOError::read_vote(&e).into()
}

/// The durable Raft log and vote. Cheap to clone: clones share one store.
///
/// See the module documentation for the guarantees and the on-disk layout.
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    opts: LogStoreOptions,
    /// What readers need; held only for in-memory work, never across I/O.
    mem: Mutex<Mem<C>>,
    /// The writer side. Held during file I/O (including the rare fsyncs of roll,
    /// truncate, purge and vote, which run on the blocking pool), never by readers.
    /// Lock order: `files`, then `mem`.
    files: Mutex<Files>,
    shared: Arc<Shared>,
    /// `Some` until drop; dropping the sender stops the flusher.
    flusher: Option<mpsc::Sender<Job<C>>>,
    flusher_thread: Option<JoinHandle<()>>,
}

/// State shared with the flusher thread (which must not own `Inner`, or the store
/// would never drop).
struct Shared {
    dir: PathBuf,
    fsyncs: AtomicU64,
    failed: AtomicBool,
}

struct Mem<C: RaftTypeConfig> {
    /// Index of `entries[0]` (or of the next entry when empty).
    first: u64,
    entries: VecDeque<Slot<C>>,
    purged: Option<LogId<C>>,
    vote: Option<Vote<C>>,
    committed: Option<LogId<C>>,
}

struct Slot<C: RaftTypeConfig> {
    entry: C::Entry,
    /// Byte offset of this entry's record in its segment, so `truncate` can cut there.
    offset: u64,
}

struct Files {
    /// Ascending by `first`; the last one is the active segment.
    segments: Vec<Segment>,
    /// Open handle (O_APPEND) on the active segment.
    active: Option<Arc<File>>,
    /// Index the next record written to the files must carry; `None` with no segments.
    next_index: Option<u64>,
    /// Reused encode buffer.
    buf: Vec<u8>,
}

struct Segment {
    first: u64,
    len: u64,
}

/// Work for the flusher thread.
enum Job<C: RaftTypeConfig> {
    /// Make `file` durable, then complete `callback`. `file` is `None` for an empty
    /// append, whose callback must still wait its turn: openraft treats a completion as
    /// "everything up to here is flushed".
    Flush {
        file: Option<Arc<File>>,
        callback: LogFlushed<C>,
    },
    /// Best-effort write of the committed log id (latest one wins).
    Committed(Option<LogId<C>>),
}

impl<C: RaftTypeConfig> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.inner.dir)
            .field("fsyncs", &self.fsync_count())
            .finish_non_exhaustive()
    }
}

// === impl LogStore ===

impl<C: RaftTypeConfig> LogStore<C> {
    /// Opens (creating if needed) the log store in `dir` and recovers its content.
    pub fn open(dir: &Path) -> Result<LogStore<C>, LogStoreError> {
        LogStore::open_with(dir, LogStoreOptions::default())
    }

    /// [`LogStore::open`] with explicit options.
    pub fn open_with(dir: &Path, opts: LogStoreOptions) -> Result<LogStore<C>, LogStoreError> {
        create_dir_durably(dir).map_err(LogStoreError::io("create dir", dir))?;
        remove_tmp_files(dir)?;

        let purged: Option<LogId<C>> = read_meta(&dir.join(PURGED_FILE))?;
        let vote: Option<Vote<C>> = read_meta(&dir.join(VOTE_FILE))?;
        let committed: Option<LogId<C>> = match read_meta(&dir.join(COMMITTED_FILE)) {
            Ok(c) => c,
            Err(e) => {
                // Best effort by contract: a bad file only costs re-applying from the
                // state machine's own applied point.
                tracing::warn!(error = %e, "ignoring unreadable committed log id");
                None
            }
        };

        let recovered = recover_segments::<C>(dir, purged.as_ref())?;
        let (files, entries) = (recovered.files, recovered.entries);
        let first = match entries.front() {
            Some(slot) => slot.entry.get_log_id().index,
            None => purged.as_ref().map_or(0, |p| p.index + 1),
        };
        let mem = Mem {
            first,
            entries,
            purged,
            vote,
            committed: None,
        };
        let committed = committed.filter(|c| mem.holds_committed(c));
        let mem = Mem { committed, ..mem };

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fsyncs: AtomicU64::new(recovered.fsyncs),
            failed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let thread = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("raft-log-flusher".into())
                .spawn(move || run_flusher(rx, shared))
                .map_err(LogStoreError::io("spawn flusher for", dir))?
        };

        tracing::info!(
            dir = %dir.display(),
            first = mem.first,
            entries = mem.entries.len(),
            purged = ?mem.purged,
            vote = ?mem.vote,
            "raft log opened"
        );
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                opts,
                mem: Mutex::new(mem),
                files: Mutex::new(files),
                shared,
                flusher: Some(tx),
                flusher_thread: Some(thread),
            }),
        })
    }

    /// The directory holding the segments and the vote.
    pub fn log_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How many fsync/fdatasync calls this store has issued (log flushes, segment rolls,
    /// truncations, vote and purge-point writes, directory syncs).
    pub fn fsync_count(&self) -> u64 {
        self.inner.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Runs `f` on the blocking pool: it may fsync, which must not stall the runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T, LogStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner<C>) -> Result<T, LogStoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| LogStoreError::Background(e.to_string()))?
    }

    async fn append_inner(
        &self,
        mut entries: Vec<C::Entry>,
        callback: LogFlushed<C>,
    ) -> Result<(), LogStoreError> {
        if self.inner.shared.failed.load(Ordering::Acquire) {
            callback.log_io_completed(Err(failed_io_error()));
            return Err(LogStoreError::Failed);
        }
        // Entries at or below the purge point are already part of the state machine (a
        // purge follows a snapshot), so there is nothing to store: they are dropped and
        // only acknowledged. openraft's storage suite appends such entries after
        // `get_initial_state` purged up to the state machine's last applied id; writing
        // them would leave a hole before the purge point.
        let purged = self.inner.mem()?.purged.as_ref().map(|p| p.index);
        if let Some(purged) = purged {
            entries.retain(|e| e.get_log_id().index > purged);
        }
        let Some(first) = entries.first().map(|e| e.get_log_id().index) else {
            return self.inner.send_flush(None, callback);
        };
        // Opening or rolling a segment fsyncs; do it off the runtime. The common case
        // (room left in the active segment) returns without yielding.
        if self.inner.needs_new_segment(first)? {
            self.blocking(move |inner| inner.open_segment(first))
                .await?;
        }
        let file = self.inner.write_entries(entries)?;
        self.inner.send_flush(Some(file), callback)
    }
}

// === impl Inner ===

impl<C: RaftTypeConfig> Inner<C> {
    fn mem(&self) -> Result<MutexGuard<'_, Mem<C>>, LogStoreError> {
        self.mem.lock().map_err(|_| LogStoreError::Poisoned)
    }

    fn files(&self) -> Result<MutexGuard<'_, Files>, LogStoreError> {
        self.files.lock().map_err(|_| LogStoreError::Poisoned)
    }

    fn count_fsync(&self) {
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        segment_path(&self.dir, first)
    }

    /// The index the next appended entry must carry, if anything constrains it.
    fn expected_next(&self, files: &Files) -> Result<Option<u64>, LogStoreError> {
        Ok(match files.next_index {
            Some(n) => Some(n),
            None => self.mem()?.purged.as_ref().map(|p| p.index + 1),
        })
    }

    fn needs_new_segment(&self, first: u64) -> Result<bool, LogStoreError> {
        let files = self.files()?;
        if let Some(expected) = self.expected_next(&files)? {
            if expected != first {
                return Err(LogStoreError::NotConsecutive {
                    expected,
                    got: first,
                });
            }
        }
        Ok(match (&files.active, files.segments.last()) {
            (Some(_), Some(seg)) => seg.len > 0 && seg.len >= self.opts.segment_bytes,
            _ => true,
        })
    }

    /// Closes the active segment (fsync) and starts a new one whose first record will be
    /// `first`. Blocking.
    fn open_segment(&self, first: u64) -> Result<(), LogStoreError> {
        let mut files = self.files()?;
        let full = match (&files.active, files.segments.last()) {
            (Some(_), Some(seg)) => seg.len > 0 && seg.len >= self.opts.segment_bytes,
            _ => true,
        };
        if !full {
            return Ok(()); // another clone rolled meanwhile
        }
        if let (Some(old), Some(seg)) = (&files.active, files.segments.last()) {
            // The old segment becomes durable before the new one gets a byte: only the
            // last segment can ever hold a torn record.
            let path = self.segment_path(seg.first);
            old.sync_data()
                .map_err(LogStoreError::io("fsync segment", &path))?;
            self.count_fsync();
        }
        let path = self.segment_path(first);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(LogStoreError::io("create segment", &path))?;
        // The new name must survive a crash before anything in it is acknowledged.
        sync_dir(&self.dir)?;
        self.count_fsync();
        tracing::debug!(segment = %path.display(), "raft log segment started");
        files.segments.push(Segment { first, len: 0 });
        files.active = Some(Arc::new(file));
        files.next_index = Some(first);
        Ok(())
    }

    /// Encodes and writes `entries` to the active segment (page cache only) and makes
    /// them readable. Returns the file the flusher must sync.
    fn write_entries(&self, entries: Vec<C::Entry>) -> Result<Arc<File>, LogStoreError> {
        let mut files = self.files()?;
        let files = &mut *files;
        let (Some(file), Some(seg)) = (files.active.clone(), files.segments.last_mut()) else {
            return Err(LogStoreError::Background("no active segment".into()));
        };
        let Some(mut next) = files.next_index else {
            return Err(LogStoreError::Background("no active segment".into()));
        };

        let buf = &mut files.buf;
        buf.clear();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in &entries {
            if entry.get_log_id().index != next {
                return Err(LogStoreError::NotConsecutive {
                    expected: next,
                    got: entry.get_log_id().index,
                });
            }
            offsets.push(seg.len + buf.len() as u64);
            encode_record(entry, buf)?;
            next += 1;
        }

        // One write for the whole batch. O_APPEND: it lands at the end of the segment.
        if let Err(e) = (&*file).write_all(buf) {
            // Cut off whatever part was written, or recovery would find garbage in the
            // middle of the log once later appends land after it.
            let path = self.segment_path(seg.first);
            if let Err(undo) = file.set_len(seg.len) {
                tracing::error!(error = %undo, segment = %path.display(), "cannot undo a partial log write");
                self.shared.failed.store(true, Ordering::Release);
            }
            return Err(LogStoreError::io("write segment", &path)(e));
        }
        seg.len += buf.len() as u64;
        files.next_index = Some(next);

        let mut mem = self.mem()?;
        if mem.entries.is_empty() {
            mem.first = offsets_first::<C>(&entries);
        }
        mem.entries.extend(
            entries
                .into_iter()
                .zip(offsets)
                .map(|(entry, offset)| Slot { entry, offset }),
        );
        Ok(file)
    }

    fn send_flush(
        &self,
        file: Option<Arc<File>>,
        callback: LogFlushed<C>,
    ) -> Result<(), LogStoreError> {
        let Some(tx) = &self.flusher else {
            callback.log_io_completed(Err(failed_io_error()));
            return Err(LogStoreError::Background("flusher stopped".into()));
        };
        if let Err(mpsc::SendError(job)) = tx.send(Job::Flush { file, callback }) {
            if let Job::Flush { callback, .. } = job {
                callback.log_io_completed(Err(failed_io_error()));
            }
            return Err(LogStoreError::Background("flusher stopped".into()));
        }
        Ok(())
    }

    /// Deletes entries with index >= `index`, durably. Blocking.
    fn truncate(&self, index: u64) -> Result<(), LogStoreError> {
        let mut files = self.files()?;
        let offset = {
            let mem = self.mem()?;
            if index >= mem.first + mem.entries.len() as u64 {
                return Ok(()); // nothing at or after `index`
            }
            if index < mem.first {
                return Err(LogStoreError::Background(format!(
                    "truncate at {index}, below the first unpurged entry {}",
                    mem.first
                )));
            }
            mem.entries
                .get((index - mem.first) as usize)
                .map_or(0, |s| s.offset)
        };

        // Later segments go first, newest first, so that a crash part-way leaves a prefix
        // of the log (plus at worst a detached segment, which recovery discards).
        let keep = files.segments.partition_point(|s| s.first <= index).max(1);
        if files.segments.len() > keep {
            // Durable before the first unlink: recovery removes segments past `index`
            // that a crash left behind only when this says they were being removed.
            write_atomic(&self.dir, TRUNCATING_FILE, &index, true)?;
            self.shared.fsyncs.fetch_add(2, Ordering::Relaxed);
        }
        let mut removed = false;
        while files.segments.len() > keep {
            if let Some(seg) = files.segments.pop() {
                let path = self.segment_path(seg.first);
                fs::remove_file(&path).map_err(LogStoreError::io("remove segment", &path))?;
                removed = true;
            }
        }
        let Some(seg) = files.segments.last_mut() else {
            return Err(LogStoreError::Background("no segment to truncate".into()));
        };
        let path = segment_path(&self.dir, seg.first);
        if removed {
            sync_dir(&self.dir)?;
            self.count_fsync();
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(LogStoreError::io("open segment", &path))?;
            files.active = Some(Arc::new(file));
        }
        let Some(file) = files.active.clone() else {
            return Err(LogStoreError::Background("no active segment".into()));
        };
        file.set_len(offset)
            .map_err(LogStoreError::io("truncate segment", &path))?;
        file.sync_data()
            .map_err(LogStoreError::io("fsync segment", &path))?;
        self.count_fsync();
        if let Some(seg) = files.segments.last_mut() {
            seg.len = offset;
        }
        files.next_index = Some(index);
        if removed {
            // Gone durably, so a later gap can't be mistaken for this truncation.
            let marker = self.dir.join(TRUNCATING_FILE);
            fs::remove_file(&marker).map_err(LogStoreError::io("remove", &marker))?;
            sync_dir(&self.dir)?;
            self.count_fsync();
        }

        let mut mem = self.mem()?;
        let keep_entries = (index - mem.first) as usize;
        mem.entries.truncate(keep_entries);
        tracing::debug!(index, "raft log truncated");
        Ok(())
    }

    /// Forgets entries with index <= `log_id.index`, durably. Blocking.
    fn purge(&self, log_id: LogId<C>) -> Result<(), LogStoreError> {
        let mut files = self.files()?;
        if self
            .mem()?
            .purged
            .as_ref()
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        // The purge point is durable before any segment disappears: recovery skips
        // entries at or below it, so a segment that survives a crash is harmless.
        write_atomic(&self.dir, PURGED_FILE, &log_id, true)?;
        self.shared.fsyncs.fetch_add(2, Ordering::Relaxed);
        {
            let mut mem = self.mem()?;
            mem.purged = Some(log_id.clone());
            while mem
                .entries
                .front()
                .is_some_and(|s| s.entry.get_log_id().index <= log_id.index)
            {
                mem.entries.pop_front();
            }
            mem.first = match mem.entries.front() {
                Some(s) => s.entry.get_log_id().index,
                None => log_id.index + 1,
            };
        }

        // Whole segments whose records are all purged.
        while files.segments.len() >= 2 && files.segments[1].first <= log_id.index + 1 {
            let seg = files.segments.remove(0);
            let path = self.segment_path(seg.first);
            if let Err(e) = fs::remove_file(&path) {
                // Harmless leftover: recovery skips purged entries and deletes it.
                tracing::warn!(error = %e, segment = %path.display(), "cannot remove purged segment");
            }
        }
        // Purging past the end of the log (after a snapshot install): the next append
        // starts at `log_id.index + 1`, so the old tail must go or it would leave a gap.
        if files.next_index.is_some_and(|n| n <= log_id.index) {
            for seg in files.segments.drain(..) {
                let path = segment_path(&self.dir, seg.first);
                fs::remove_file(&path).map_err(LogStoreError::io("remove segment", &path))?;
            }
            files.active = None;
            files.next_index = None;
        }
        tracing::debug!(%log_id, "raft log purged");
        Ok(())
    }

    fn save_vote(&self, vote: &Vote<C>) -> Result<(), LogStoreError> {
        // Serialized with the other writers.
        let _files = self.files()?;
        write_atomic(&self.dir, VOTE_FILE, vote, true)?;
        self.shared.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.mem()?.vote = Some(vote.clone());
        Ok(())
    }
}

impl<C: RaftTypeConfig> Drop for Inner<C> {
    fn drop(&mut self) {
        // Closing the channel lets the flusher finish queued work and exit; joining
        // means a store reopened right after drop never races a late write.
        drop(self.flusher.take());
        if let Some(handle) = self.flusher_thread.take() {
            if handle.join().is_err() {
                tracing::error!("raft log flusher panicked");
            }
        }
    }
}

impl<C: RaftTypeConfig> Mem<C> {
    fn last_log_id(&self) -> Option<LogId<C>> {
        match self.entries.back() {
            Some(slot) => Some(slot.entry.get_log_id().clone()),
            None => self.purged.clone(),
        }
    }

    /// Whether a recovered committed id still names an entry of this log (it is
    /// written without fsync, so it may be ahead of what survived a crash).
    fn holds_committed(&self, c: &LogId<C>) -> bool {
        if self.purged.as_ref().is_some_and(|p| c.index <= p.index) {
            return true;
        }
        c.index
            .checked_sub(self.first)
            .and_then(|i| self.entries.get(i as usize))
            .is_some_and(|s| s.entry.get_log_id() == c)
    }
}

fn offsets_first<C: RaftTypeConfig>(entries: &[C::Entry]) -> u64 {
    entries.first().map_or(0, |e| e.get_log_id().index)
}

fn failed_io_error() -> io::Error {
    io::Error::other("raft log store failed an earlier flush")
}

// === the flusher ===

/// Group commit: take everything queued, one `sync_data` per distinct file (almost
/// always one), then complete every callback in arrival order.
fn run_flusher<C: RaftTypeConfig>(rx: mpsc::Receiver<Job<C>>, shared: Arc<Shared>) {
    let mut files: Vec<Arc<File>> = Vec::new();
    let mut callbacks: Vec<LogFlushed<C>> = Vec::new();
    let mut last_batch = 0;
    // The committed id is best effort (an older one is still correct: openraft learns
    // the rest from the leader), and replacing its file on every commit put a rename —
    // a journal write that the next fdatasync waits for — on the hot path. So it is
    // written at most once per COMMITTED_INTERVAL.
    let mut committed_written_at: Option<Instant> = None;
    let mut pending_committed = None;
    while let Ok(first) = rx.recv() {
        let mut committed = None;
        let mut take = |job, callbacks: &mut Vec<_>| match job {
            Job::Flush { file, callback } => {
                if let Some(file) = file {
                    if !files.iter().any(|f| Arc::ptr_eq(f, &file)) {
                        files.push(file);
                    }
                }
                callbacks.push(callback);
            }
            Job::Committed(c) => committed = Some(c),
        };
        take(first, &mut callbacks);
        while let Ok(job) = rx.try_recv() {
            take(job, &mut callbacks);
        }
        // Under pipelined load the callbacks of one fsync release a burst of new appends
        // that arrive over a few hundred microseconds. Syncing on the first of them
        // would spend a whole fsync on it and leave the rest for the next one; waiting
        // briefly, only when the last fsync was shared, lets the burst share one.
        if last_batch > 1 && callbacks.len() < last_batch {
            let deadline = Instant::now() + GATHER_WINDOW;
            while callbacks.len() < last_batch {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                match rx.recv_timeout(left) {
                    Ok(job) => take(job, &mut callbacks),
                    Err(_) => break,
                }
            }
        }
        last_batch = callbacks.len();

        let mut result: Result<(), io::Error> = Ok(());
        if shared.failed.load(Ordering::Acquire) {
            result = Err(failed_io_error());
        } else {
            for file in files.drain(..) {
                shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = file.sync_data() {
                    // Never retry: after a failed fsync the kernel may have dropped the
                    // dirty pages, so a later "successful" fsync would prove nothing.
                    tracing::error!(error = %e, "raft log fsync failed; the store stops accepting writes");
                    shared.failed.store(true, Ordering::Release);
                    result = Err(e);
                    break;
                }
            }
        }
        files.clear();
        for callback in callbacks.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(r);
        }

        if committed.is_some() {
            pending_committed = committed;
        }
        let due = committed_written_at.is_none_or(|t| t.elapsed() >= COMMITTED_INTERVAL);
        if let Some(c) = if due { pending_committed.take() } else { None } {
            committed_written_at = Some(Instant::now());
            let path = shared.dir.join(COMMITTED_FILE);
            let result = match c {
                Some(c) => write_atomic(&shared.dir, COMMITTED_FILE, &c, false),
                None => match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(LogStoreError::io("remove", &path)(e))
                    }
                    _ => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot record the committed log id");
            }
        }
    }
}

// === records and files ===

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.{SEGMENT_EXT}"))
}

fn encode_record<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), LogStoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    let mut out = postcard::to_extend(value, std::mem::take(buf)).map_err(LogStoreError::Encode)?;
    let payload_len = out.len() - start - HEADER_BYTES;
    let len = u32::try_from(payload_len)
        .ok()
        .filter(|_| payload_len <= MAX_RECORD_BYTES)
        .ok_or(LogStoreError::Encode(postcard::Error::SerializeBufferFull))?;
    let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    *buf = out;
    Ok(())
}

/// What lies at a position of a file.
enum Frame<'a> {
    Record {
        payload: &'a [u8],
        end: usize,
    },
    /// The file ends inside this record.
    Incomplete(&'static str),
    /// A complete but bad record; `end` is where it would end if its length is sane.
    Invalid {
        reason: &'static str,
        end: Option<usize>,
    },
}

fn read_frame(buf: &[u8], pos: usize) -> Frame<'_> {
    let Some(header) = buf.get(pos..pos + HEADER_BYTES) else {
        return Frame::Incomplete("partial record header");
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD_BYTES {
        return Frame::Invalid {
            reason: "impossible record length",
            end: None,
        };
    }
    let end = pos + HEADER_BYTES + len;
    let Some(payload) = buf.get(pos + HEADER_BYTES..end) else {
        return Frame::Incomplete("partial record");
    };
    if crc32fast::hash(payload) != crc {
        return Frame::Invalid {
            reason: "checksum mismatch",
            end: Some(end),
        };
    }
    Frame::Record { payload, end }
}

/// Reads a one-record metadata file; `None` if it does not exist.
fn read_meta<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, LogStoreError> {
    let buf = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogStoreError::io("read", path)(e)),
    };
    let corrupt = |reason: String| LogStoreError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    match read_frame(&buf, 0) {
        Frame::Record { payload, end } if end == buf.len() => postcard::from_bytes(payload)
            .map(Some)
            .map_err(|e| corrupt(e.to_string())),
        Frame::Record { .. } => Err(corrupt("trailing bytes".into())),
        Frame::Incomplete(reason) | Frame::Invalid { reason, .. } => Err(corrupt(reason.into())),
    }
}

/// Replaces `dir/name` with one record holding `value`: tmp, (fsync), rename, (fsync
/// dir). Readers see the old or the new value, never a mix.
fn write_atomic<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    durable: bool,
) -> Result<(), LogStoreError> {
    let mut buf = Vec::new();
    encode_record(value, &mut buf)?;
    let tmp = dir.join(format!("{name}.{TMP_EXT}"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(LogStoreError::io("create", &tmp))?;
    file.write_all(&buf)
        .map_err(LogStoreError::io("write", &tmp))?;
    if durable {
        file.sync_all().map_err(LogStoreError::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(LogStoreError::io("rename", &tmp))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// `create_dir_all`, then fsyncs each created directory's parent, so the new entries
/// survive a power loss (a file fsynced inside a directory whose own entry was not is
/// lost with it).
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.as_os_str().is_empty() || path.exists() {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), LogStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogStoreError::io("fsync dir", dir))
}

fn remove_tmp_files(dir: &Path) -> Result<(), LogStoreError> {
    let read = fs::read_dir(dir).map_err(LogStoreError::io("list", dir))?;
    for item in read {
        let path = item.map_err(LogStoreError::io("list", dir))?.path();
        if path.extension().is_some_and(|e| e == TMP_EXT) {
            fs::remove_file(&path).map_err(LogStoreError::io("remove", &path))?;
        }
    }
    Ok(())
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, LogStoreError> {
    let mut firsts = Vec::new();
    let read = fs::read_dir(dir).map_err(LogStoreError::io("list", dir))?;
    for item in read {
        let path = item.map_err(LogStoreError::io("list", dir))?.path();
        if path.extension().is_none_or(|e| e != SEGMENT_EXT) {
            continue;
        }
        match path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(first) => firsts.push(first),
            None => tracing::warn!(path = %path.display(), "ignoring oddly named segment"),
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

struct Recovered<C: RaftTypeConfig> {
    files: Files,
    entries: VecDeque<Slot<C>>,
    fsyncs: u64,
}

/// Reads every segment, checking each record, and rebuilds the in-memory log.
fn recover_segments<C: RaftTypeConfig>(
    dir: &Path,
    purged: Option<&LogId<C>>,
) -> Result<Recovered<C>, LogStoreError> {
    let firsts = list_segments(dir)?;
    let truncating: Option<u64> = read_meta(&dir.join(TRUNCATING_FILE))?;
    let mut segments: Vec<Segment> = Vec::new();
    let mut entries: VecDeque<Slot<C>> = VecDeque::new();
    let mut next: Option<u64> = None;
    let mut fsyncs = 0;
    let is_purged = |index: u64| purged.is_some_and(|p| index <= p.index);

    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        if let Some(n) = next.filter(|&n| n != first) {
            if entries.is_empty() && purged.is_some_and(|p| first == p.index + 1) {
                // The log was purged past its end and restarted at `first`; what came
                // before is all purged and only survived because its unlink was lost.
                for seg in segments.drain(..) {
                    let old = segment_path(dir, seg.first);
                    fs::remove_file(&old).map_err(LogStoreError::io("remove segment", &old))?;
                }
            } else if truncating.is_some_and(|t| t < first && t <= n) {
                // Left over from a truncate interrupted by a crash: truncate deletes
                // trailing segments newest first, so anything detached from the log
                // was being removed and was not acknowledged after the truncation.
                tracing::warn!(
                    segment = %path.display(),
                    expected = n,
                    "removing segments detached from the log (interrupted truncate)"
                );
                for &later in &firsts[i..] {
                    let p = segment_path(dir, later);
                    fs::remove_file(&p).map_err(LogStoreError::io("remove segment", &p))?;
                }
                sync_dir(dir)?;
                fsyncs += 1;
                break;
            } else {
                return Err(LogStoreError::Corrupt {
                    path,
                    offset: 0,
                    reason: format!(
                        "the log has a gap: the previous segment ends before entry {n} but \
                         this one starts at entry {first} (a segment is missing); restore \
                         the missing segment, or wipe this node's data directory and let \
                         it re-sync from the leader's snapshot"
                    ),
                });
            }
        }
        let is_last = i + 1 == firsts.len();
        let buf = fs::read(&path).map_err(LogStoreError::io("read", &path))?;
        let corrupt = |offset: usize, reason: String| LogStoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        let mut pos = 0;
        let mut index = first;
        while pos < buf.len() {
            let (reason, torn) = match read_frame(&buf, pos) {
                Frame::Record { payload, end } => {
                    let entry: C::Entry =
                        postcard::from_bytes(payload).map_err(|e| corrupt(pos, e.to_string()))?;
                    let found = entry.get_log_id().index;
                    if found != index {
                        return Err(corrupt(
                            pos,
                            format!("expected entry {index}, found {found}"),
                        ));
                    }
                    if !is_purged(index) {
                        entries.push_back(Slot {
                            entry,
                            offset: pos as u64,
                        });
                    }
                    index += 1;
                    pos = end;
                    continue;
                }
                Frame::Incomplete(reason) => (reason, true),
                // A bad record is a torn write only if nothing follows it: either it
                // runs to the end of the file, or the rest is zeros (size extended,
                // data never written back).
                Frame::Invalid { reason, end } => (
                    reason,
                    end == Some(buf.len()) || buf[pos..].iter().all(|&b| b == 0),
                ),
            };
            if !is_last {
                return Err(corrupt(
                    pos,
                    format!(
                        "{reason} in a closed segment (acknowledged entries are unreadable); \
                         restore the segment, or wipe this node's data directory and let it \
                         re-sync from the leader's snapshot"
                    ),
                ));
            }
            if !torn {
                return Err(corrupt(pos, format!("{reason}, followed by more data")));
            }
            tracing::warn!(
                segment = %path.display(),
                offset = pos,
                dropped_bytes = buf.len() - pos,
                reason,
                "dropping a torn record at the end of the log (crash mid-write; it was never acknowledged)"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(LogStoreError::io("open segment", &path))?;
            file.set_len(pos as u64)
                .and_then(|()| file.sync_data())
                .map_err(LogStoreError::io("truncate torn segment", &path))?;
            fsyncs += 1;
            break;
        }
        segments.push(Segment {
            first,
            len: pos as u64,
        });
        next = Some(index);
    }

    if let (Some(p), Some(first_entry)) = (purged, entries.front()) {
        if first_entry.entry.get_log_id().index != p.index + 1 {
            let first_segment = segments.first().map_or(0, |s| s.first);
            return Err(LogStoreError::Corrupt {
                path: segment_path(dir, first_segment),
                offset: 0,
                reason: format!(
                    "the log resumes at entry {} but was purged only up to {} (a segment \
                     before this one is missing); restore it, or wipe this node's data \
                     directory and let it re-sync from the leader's snapshot",
                    first_entry.entry.get_log_id().index,
                    p.index
                ),
            });
        }
    }
    if truncating.is_some() {
        // The truncate it names is complete now (its leftovers are gone).
        let marker = dir.join(TRUNCATING_FILE);
        fs::remove_file(&marker).map_err(LogStoreError::io("remove", &marker))?;
        sync_dir(dir)?;
        fsyncs += 1;
    }

    // Finish a purge a crash interrupted: drop segments whose records are all purged.
    if let Some(p) = purged {
        while segments.len() >= 2 && segments[1].first <= p.index + 1 {
            let seg = segments.remove(0);
            let path = segment_path(dir, seg.first);
            fs::remove_file(&path).map_err(LogStoreError::io("remove segment", &path))?;
        }
        if next.is_some_and(|n| n <= p.index) {
            for seg in segments.drain(..) {
                let path = segment_path(dir, seg.first);
                fs::remove_file(&path).map_err(LogStoreError::io("remove segment", &path))?;
            }
            next = None;
        }
    }

    let active = match segments.last() {
        Some(seg) => {
            let path = segment_path(dir, seg.first);
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(LogStoreError::io("open segment", &path))?;
            Some(Arc::new(file))
        }
        None => None,
    };
    Ok(Recovered {
        files: Files {
            segments,
            active,
            next_index: next,
            buf: Vec::new(),
        },
        entries,
        fsyncs,
    })
}

// === impl openraft traits ===

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C>> {
        let mem = self.inner.mem().map_err(read_logs_err::<C>)?;
        let end_of_log = mem.first + mem.entries.len() as u64;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(mem.first);
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => end_of_log,
        }
        .min(end_of_log);
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(mem
            .entries
            .range((start - mem.first) as usize..(end - mem.first) as usize)
            .map(|s| s.entry.clone())
            .collect())
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C>> {
        let mem = self.inner.mem().map_err(read_logs_err::<C>)?;
        Ok(LogState {
            last_purged_log_id: mem.purged.clone(),
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C>) -> Result<(), StorageError<C>> {
        let vote = vote.clone();
        self.blocking(move |inner| inner.save_vote(&vote))
            .await
            .map_err(write_vote_err::<C>)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C>>, StorageError<C>> {
        Ok(self.inner.mem().map_err(read_vote_err::<C>)?.vote.clone())
    }

    async fn save_committed(&mut self, committed: Option<LogId<C>>) -> Result<(), StorageError<C>> {
        self.inner.mem().map_err(write_logs_err::<C>)?.committed = committed.clone();
        // Written by the flusher, off the runtime; the latest value wins.
        if let Some(tx) = &self.inner.flusher {
            if tx.send(Job::Committed(committed)).is_err() {
                tracing::warn!("raft log flusher stopped; committed log id not recorded");
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C>>, StorageError<C>> {
        Ok(self
            .inner
            .mem()
            .map_err(read_logs_err::<C>)?
            .committed
            .clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        self.append_inner(entries, callback)
            .await
            .map_err(write_logs_err::<C>)
    }

    async fn truncate(&mut self, log_id: LogId<C>) -> Result<(), StorageError<C>> {
        self.blocking(move |inner| inner.truncate(log_id.index))
            .await
            .map_err(write_logs_err::<C>)
    }

    async fn purge(&mut self, log_id: LogId<C>) -> Result<(), StorageError<C>> {
        self.blocking(move |inner| inner.purge(log_id))
            .await
            .map_err(write_logs_err::<C>)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    use std::io::Cursor;

    openraft::declare_raft_types!(
        /// A type configuration for these tests: string payloads, `u64` node ids.
        pub TestConfig:
    );

    type LogStore = super::LogStore<TestConfig>;
    type Entry = openraft::Entry<TestConfig>;
    type LogId = super::LogId<TestConfig>;
    type Vote = super::Vote<TestConfig>;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// About the size of one quorate hit (limit, key, cost, rate), so that the small
    /// segments of these tests roll every few entries.
    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(format!(
                "hits ts={index} limit=api key=user-{index} cost=1"
            )),
        }
    }

    fn entries(term: u64, range: std::ops::Range<u64>) -> Vec<Entry> {
        range.map(|i| entry(term, i)).collect()
    }

    fn small_segments() -> LogStoreOptions {
        LogStoreOptions { segment_bytes: 100 }
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        list_segments(dir).unwrap()
    }

    async fn all(store: &mut LogStore) -> Vec<Entry> {
        store.try_get_log_entries(..).await.unwrap()
    }

    async fn state(store: &mut LogStore) -> (Option<LogId>, Option<LogId>) {
        let s = store.get_log_state().await.unwrap();
        (s.last_purged_log_id, s.last_log_id)
    }

    #[tokio::test]
    async fn append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(state(&mut store).await, (None, None));

        store.blocking_append(entries(1, 0..10)).await.unwrap();
        for i in 10..20 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }

        assert_eq!(all(&mut store).await, entries(1, 0..20));
        assert_eq!(
            store.try_get_log_entries(5..8).await.unwrap(),
            entries(1, 5..8)
        );
        assert_eq!(
            store.try_get_log_entries(..=3).await.unwrap(),
            entries(1, 0..4)
        );
        assert_eq!(
            store.try_get_log_entries(18..100).await.unwrap(),
            entries(1, 18..20)
        );
        assert!(store.try_get_log_entries(30..40).await.unwrap().is_empty());
        assert_eq!(state(&mut store).await, (None, Some(log_id(1, 19))));
        assert_eq!(store.log_dir(), dir.path());
    }

    #[tokio::test]
    async fn appends_must_be_consecutive() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries(1, 0..3)).await.unwrap();
        assert!(store.blocking_append([entry(1, 5)]).await.is_err());
        assert_eq!(all(&mut store).await, entries(1, 0..3));
    }

    #[tokio::test]
    async fn empty_append_completes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(Vec::new()).await.unwrap();
        store.blocking_append(entries(1, 0..2)).await.unwrap();
        store.blocking_append(Vec::new()).await.unwrap();
        assert_eq!(all(&mut store).await, entries(1, 0..2));
    }

    #[tokio::test]
    async fn reopen_recovers_entries_vote_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new_committed(3, 2);
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            assert_eq!(store.read_vote().await.unwrap(), None);
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
            store.save_vote(&vote).await.unwrap();
            store.blocking_append(entries(3, 0..50)).await.unwrap();
            store.save_committed(Some(log_id(3, 40))).await.unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, entries(3, 0..50));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(3, 40)));
        assert_eq!(state(&mut store).await, (None, Some(log_id(3, 49))));

        // And the log goes on where it stopped.
        store.blocking_append([entry(3, 50)]).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, entries(3, 0..51));
    }

    #[tokio::test]
    async fn committed_beyond_the_recovered_log_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(entries(1, 0..5)).await.unwrap();
            // As if the entries after 4 were lost in a crash but the (unsynced)
            // committed file survived.
            store.save_committed(Some(log_id(1, 9))).await.unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncate_then_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries(1, 0..10)).await.unwrap();

        store.truncate(log_id(1, 6)).await.unwrap();
        assert_eq!(all(&mut store).await, entries(1, 0..6));
        assert_eq!(state(&mut store).await, (None, Some(log_id(1, 5))));

        store.blocking_append(entries(2, 6..8)).await.unwrap();
        let mut expected = entries(1, 0..6);
        expected.extend(entries(2, 6..8));
        assert_eq!(all(&mut store).await, expected);

        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, expected);

        // Truncating past the end is a no-op; truncating everything leaves an empty log.
        store.truncate(log_id(2, 100)).await.unwrap();
        assert_eq!(all(&mut store).await, expected);
        store.truncate(log_id(1, 0)).await.unwrap();
        assert!(all(&mut store).await.is_empty());
        store.blocking_append(entries(3, 0..2)).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, entries(3, 0..2));
    }

    #[tokio::test]
    async fn truncate_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        for i in 0..40 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        let before = segment_files(dir.path());
        assert!(before.len() > 4, "{before:?}");

        store.truncate(log_id(1, 7)).await.unwrap();
        let after = segment_files(dir.path());
        assert!(after.iter().all(|&first| first <= 7), "{after:?}");
        store.blocking_append(entries(2, 7..9)).await.unwrap();

        let mut expected = entries(1, 0..7);
        expected.extend(entries(2, 7..9));
        assert_eq!(all(&mut store).await, expected);
        drop(store);
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        assert_eq!(all(&mut store).await, expected);
    }

    #[tokio::test]
    async fn segments_roll_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
            for i in 0..100 {
                store.blocking_append([entry(1, i)]).await.unwrap();
            }
        }
        let firsts = segment_files(dir.path());
        assert!(firsts.len() > 10, "{firsts:?}");
        assert_eq!(firsts[0], 0);
        for (seg, first) in firsts.iter().enumerate() {
            let len = fs::metadata(segment_path(dir.path(), *first))
                .unwrap()
                .len();
            let is_last = seg + 1 == firsts.len();
            assert!(
                is_last || len >= small_segments().segment_bytes,
                "segment {first} closed at {len} bytes"
            );
        }
        // Reopening with another segment size is fine: it only decides when to roll.
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, entries(1, 0..100));
    }

    #[tokio::test]
    async fn purge_then_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        for i in 0..60 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        let before = segment_files(dir.path());

        store.purge(log_id(1, 30)).await.unwrap();
        assert_eq!(
            state(&mut store).await,
            (Some(log_id(1, 30)), Some(log_id(1, 59)))
        );
        assert_eq!(all(&mut store).await, entries(1, 31..60));
        assert!(store.try_get_log_entries(0..31).await.unwrap().is_empty());
        let after = segment_files(dir.path());
        assert!(after.len() < before.len(), "{before:?} -> {after:?}");
        // The oldest remaining segment still holds entry 31.
        assert!(after[0] <= 31 && after.get(1).is_none_or(|&s| s > 31));

        // Purging the same point again, or an older one, changes nothing.
        store.purge(log_id(1, 10)).await.unwrap();
        assert_eq!(all(&mut store).await, entries(1, 31..60));

        drop(store);
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        assert_eq!(
            state(&mut store).await,
            (Some(log_id(1, 30)), Some(log_id(1, 59)))
        );
        assert_eq!(all(&mut store).await, entries(1, 31..60));
        store.blocking_append([entry(1, 60)]).await.unwrap();
        assert_eq!(all(&mut store).await, entries(1, 31..61));
    }

    #[tokio::test]
    async fn purge_everything_and_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append(entries(1, 0..5)).await.unwrap();

        // As after installing a snapshot that is ahead of this log.
        store.purge(log_id(2, 9)).await.unwrap();
        assert_eq!(
            state(&mut store).await,
            (Some(log_id(2, 9)), Some(log_id(2, 9)))
        );
        assert!(all(&mut store).await.is_empty());
        // Entries at or below the purge point are in the state machine already: they
        // are acknowledged and dropped, and leave no hole before the next entry.
        store.blocking_append([entry(2, 5)]).await.unwrap();
        store.blocking_append(entries(2, 8..10)).await.unwrap();
        assert!(all(&mut store).await.is_empty());
        assert_eq!(
            state(&mut store).await,
            (Some(log_id(2, 9)), Some(log_id(2, 9)))
        );
        assert!(store.blocking_append([entry(2, 11)]).await.is_err());
        // A batch across the purge point keeps only what follows it.
        store.blocking_append(entries(2, 9..12)).await.unwrap();
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, entries(2, 10..12));
        assert_eq!(
            state(&mut store).await,
            (Some(log_id(2, 9)), Some(log_id(2, 11)))
        );

        // Purge exactly up to the last entry, reopen, and continue.
        store.purge(log_id(2, 11)).await.unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            state(&mut store).await,
            (Some(log_id(2, 11)), Some(log_id(2, 11)))
        );
        store.blocking_append([entry(2, 12)]).await.unwrap();
        assert_eq!(all(&mut store).await, entries(2, 12..13));
    }

    /// Appends `garbage` to the last segment of a log holding entries 0..10, then
    /// reopens it.
    async fn reopen_with_tail(garbage: &[u8]) -> Result<LogStore, LogStoreError> {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(entries(1, 0..10)).await.unwrap();
        }
        let last = *segment_files(dir.path()).last().unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(segment_path(dir.path(), last))
            .unwrap();
        file.write_all(garbage).unwrap();
        drop(file);
        let result = LogStore::open(dir.path());
        // Keep the directory alive as long as the store.
        std::mem::forget(dir);
        result
    }

    #[tokio::test]
    async fn torn_last_record_is_dropped() {
        let mut next_record = Vec::new();
        encode_record(&entry(1, 10), &mut next_record).unwrap();
        let mut bad_crc = next_record.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("partial header", next_record[..3].to_vec()),
            (
                "partial payload",
                next_record[..next_record.len() - 2].to_vec(),
            ),
            ("checksum mismatch at the end", bad_crc),
            ("zeros", vec![0; 4096]),
        ];
        for (name, garbage) in cases {
            let mut store = reopen_with_tail(&garbage).await.unwrap();
            assert_eq!(all(&mut store).await, entries(1, 0..10), "{name}");
            // The tail is gone from disk, so new appends land right after entry 9.
            store.blocking_append([entry(1, 10)]).await.unwrap();
            let dir = store.log_dir().to_path_buf();
            drop(store);
            let mut store = LogStore::open(&dir).unwrap();
            assert_eq!(all(&mut store).await, entries(1, 0..11), "{name}");
            drop(store);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[tokio::test]
    async fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.blocking_append(entries(1, 0..10)).await.unwrap();
        }
        let path = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 2] ^= 0x01; // inside entry 0's payload
        fs::write(&path, &bytes).unwrap();
        match LogStore::open(dir.path()) {
            Err(LogStoreError::Corrupt { offset: 0, .. }) => {}
            other => panic!("expected corruption at offset 0, got {other:?}"),
        }
    }

    /// A log of entries 0..40 in many small segments, closed (the store dropped).
    async fn segmented_log(dir: &Path) -> Vec<u64> {
        let mut store = LogStore::open_with(dir, small_segments()).unwrap();
        for i in 0..40 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        drop(store);
        let firsts = segment_files(dir);
        assert!(firsts.len() > 4, "{firsts:?}");
        firsts
    }

    #[tokio::test]
    async fn a_bad_record_in_a_closed_segment_stops_recovery_naming_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let firsts = segmented_log(dir.path()).await;
        let middle = segment_path(dir.path(), firsts[2]);
        let mut bytes = fs::read(&middle).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01; // the segment's last record: a "torn tail", but not the log's
        fs::write(&middle, &bytes).unwrap();
        let err = LogStore::open_with(dir.path(), small_segments()).unwrap_err();
        match &err {
            LogStoreError::Corrupt { path, .. } => assert_eq!(*path, middle),
            other => panic!("expected corruption in {}, got {other:?}", middle.display()),
        }
        let message = err.to_string();
        assert!(
            message.contains("closed segment") && message.contains("re-sync"),
            "{message}"
        );
        // Nothing was cut or removed.
        assert_eq!(segment_files(dir.path()), firsts);
        assert_eq!(fs::read(&middle).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_missing_segment_stops_recovery_naming_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        let firsts = segmented_log(dir.path()).await;
        fs::remove_file(segment_path(dir.path(), firsts[2])).unwrap();
        let err = LogStore::open_with(dir.path(), small_segments()).unwrap_err();
        let after_gap = segment_path(dir.path(), firsts[3]);
        match &err {
            LogStoreError::Corrupt { path, reason, .. } => {
                assert_eq!(*path, after_gap);
                assert!(
                    reason.contains(&format!("before entry {}", firsts[2]))
                        && reason.contains("missing"),
                    "{reason}"
                );
            }
            other => panic!("expected a gap error, got {other:?}"),
        }
        // The segments after the gap hold acknowledged entries: still there.
        let mut left = firsts.clone();
        left.remove(2);
        assert_eq!(segment_files(dir.path()), left);
    }

    #[tokio::test]
    async fn a_missing_first_segment_after_a_purge_stops_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let firsts = segmented_log(dir.path()).await;
        {
            let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
            store.purge(log_id(1, firsts[1])).await.unwrap();
        }
        let firsts = segment_files(dir.path());
        fs::remove_file(segment_path(dir.path(), firsts[0])).unwrap();
        match LogStore::open_with(dir.path(), small_segments()) {
            Err(LogStoreError::Corrupt { path, reason, .. }) => {
                assert_eq!(path, segment_path(dir.path(), firsts[1]));
                assert!(reason.contains("missing"), "{reason}");
            }
            other => panic!("expected a gap error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_torn_tail_of_the_last_segment_is_cut_and_earlier_segments_kept() {
        let dir = tempfile::tempdir().unwrap();
        let firsts = segmented_log(dir.path()).await;
        let last = segment_path(dir.path(), *firsts.last().unwrap());
        let mut bytes = fs::read(&last).unwrap();
        let mut next = Vec::new();
        encode_record(&entry(1, 40), &mut next).unwrap();
        bytes.extend_from_slice(&next[..next.len() / 2]);
        fs::write(&last, &bytes).unwrap();
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        assert_eq!(all(&mut store).await, entries(1, 0..40));
        assert_eq!(segment_files(dir.path()), firsts);
    }

    #[tokio::test]
    async fn segments_an_interrupted_truncate_left_behind_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let firsts = segmented_log(dir.path()).await;
        // A truncate at the first segment's last entry that crashed after only one of its
        // unlinks reached the disk: the gap is its own doing, and the marker says so.
        let at = firsts[1] - 1;
        write_atomic(dir.path(), TRUNCATING_FILE, &at, true).unwrap();
        fs::remove_file(segment_path(dir.path(), firsts[1])).unwrap();
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        assert_eq!(all(&mut store).await, entries(1, 0..firsts[1]));
        assert_eq!(segment_files(dir.path()), vec![firsts[0]]);
        assert!(!dir.path().join(TRUNCATING_FILE).exists());
        // openraft then truncates for real and appends on.
        store.truncate(log_id(1, at)).await.unwrap();
        store.blocking_append([entry(2, at)]).await.unwrap();
        drop(store);
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        let mut expected = entries(1, 0..at);
        expected.push(entry(2, at));
        assert_eq!(all(&mut store).await, expected);
    }

    #[tokio::test]
    async fn a_completed_truncate_leaves_no_marker_so_a_later_gap_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let firsts = segmented_log(dir.path()).await;
        let mut store = LogStore::open_with(dir.path(), small_segments()).unwrap();
        let at = firsts[3] + 1;
        store.truncate(log_id(1, at)).await.unwrap();
        assert!(!dir.path().join(TRUNCATING_FILE).exists());
        for i in at..40 {
            store.blocking_append([entry(2, i)]).await.unwrap();
        }
        drop(store);
        let firsts = segment_files(dir.path());
        fs::remove_file(segment_path(dir.path(), firsts[firsts.len() - 2])).unwrap();
        assert!(matches!(
            LogStore::open_with(dir.path(), small_segments()),
            Err(LogStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn created_directories_exist_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_durably(&nested).unwrap();
        assert!(nested.is_dir());
        // Existing directories are fine too.
        create_dir_durably(&nested).unwrap();
    }

    #[tokio::test]
    async fn corrupt_vote_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            store.save_vote(&Vote::new(1, 1)).await.unwrap();
        }
        let path = dir.path().join(VOTE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            LogStore::open(dir.path()),
            Err(LogStoreError::Corrupt { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        store.blocking_append([entry(1, 0)]).await.unwrap();

        let before = store.fsync_count();
        let (waves, per_wave) = (8u64, 16u64);
        for wave in 0..waves {
            // Futures are first polled in order, and an append that does not roll a
            // segment finishes its write before yielding, so indexes stay consecutive;
            // then all of them wait for the flusher together.
            let appends = (0..per_wave).map(|i| {
                let mut store = store.clone();
                let index = 1 + wave * per_wave + i;
                async move { store.blocking_append([entry(1, index)]).await }
            });
            for result in futures::future::join_all(appends).await {
                result.unwrap();
            }
        }
        let fsyncs = store.fsync_count() - before;
        let appends = waves * per_wave;
        assert!(fsyncs < appends, "{fsyncs} fsyncs for {appends} appends");

        assert_eq!(all(&mut store).await, entries(1, 0..appends + 1));
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(all(&mut store).await, entries(1, 0..appends + 1));
    }
}
