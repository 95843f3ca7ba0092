//! The Raft log's write path: how fast can a replica make one entry durable?
//!
//! Every entry is a typical hit batch (`Command::Hits`, 64 hits, keys of ~20 bytes) and
//! every measurement waits until the entry is on disk (fdatasync returned), because
//! that is when a follower may acknowledge it. Compared:
//!
//! - `logstore`: quorate's `LogStore`, through openraft's `RaftLogStorage` API. With
//!   16 in flight, up to 16 appends are outstanding at any time (a sliding window, as
//!   openraft pipelines appends) and share the flusher's fsyncs.
//! - `redb`: redb 2, one `Durability::Immediate` write transaction per entry (what a
//!   log store built on it does without its own batching); with 16 in flight, 16
//!   threads commit concurrently (redb serializes writers).
//! - `redb_batched`: redb with 16 entries per transaction, i.e. the best case if we
//!   built our own group commit on top of redb.
//!
//! Numbers are per entry. Run:
//! `cargo bench -p quorate-bench --bench log_store -- --warm-up-time 1 --measurement-time 3`
//! (results recorded in docs/benchmarks.md, "Raft log storage").

use std::path::Path;
use std::task::Poll;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use quorate_server::raft::typ::Entry;
use quorate_server::raft::LogStore;
use quorate_server::raft::{Command, Hit};
use redb::{Database, Durability, TableDefinition};

const HITS_PER_ENTRY: usize = 64;
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");

fn hit_batch_entry(index: u64) -> Entry {
    let rate = match quorate_algorithms::Rate::new(
        quorate_algorithms::Algorithm::FixedWindow,
        100,
        quorate_algorithms::SECOND,
        None,
    ) {
        Ok(rate) => rate,
        Err(e) => panic!("rate: {e:?}"),
    };
    let hits = (0..HITS_PER_ENTRY)
        .map(|i| Hit {
            limit: "api-per-user".into(),
            key: format!("user:{:015}", index * 64 + i as u64), // 20 bytes
            cost: 1,
            rate,
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Hits {
            ts: 1_700_000_000_000_000_000 + index,
            hits,
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    }
}

/// Appends `count` entries starting at `next`, keeping up to `depth` appends in flight
/// (a sliding window, as openraft pipelines appends), each awaited until durable.
async fn logstore_append(store: &LogStore, next: &mut u64, count: u64, depth: usize) {
    let mut in_flight = FuturesUnordered::new();
    let mut issued = 0;
    while issued < count || !in_flight.is_empty() {
        while issued < count && in_flight.len() < depth {
            let index = *next;
            let mut handle = store.clone();
            let entry = hit_batch_entry(index);
            let mut append = Box::pin(async move { handle.blocking_append([entry]).await });
            // The first poll runs `append` up to its wait for the flush, so the entry is
            // in the log before the next one is issued...
            match futures::poll!(&mut append) {
                Poll::Ready(result) => check(result),
                Poll::Pending => {
                    let mut s = store.clone();
                    let last = s.get_log_state().await.map(|st| st.last_log_id);
                    if last.ok().flatten().map(|l| l.index) == Some(index) {
                        in_flight.push(append);
                    } else {
                        // ...unless it is rolling a segment: let that one finish first.
                        check(append.await);
                    }
                }
            }
            *next += 1;
            issued += 1;
        }
        if let Some(result) = in_flight.next().await {
            check(result);
        }
    }
}

fn check<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        panic!("append: {e}");
    }
}

fn redb_commit(db: &Database, entries: &[(u64, Vec<u8>)]) {
    let result = (|| -> Result<(), Box<redb::Error>> {
        let mut txn = db.begin_write().map_err(|e| Box::new(e.into()))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn.open_table(LOG).map_err(|e| Box::new(e.into()))?;
            for (index, bytes) in entries {
                table
                    .insert(index, bytes.as_slice())
                    .map_err(|e| Box::new(e.into()))?;
            }
        }
        txn.commit().map_err(|e| Box::new(e.into()))?;
        Ok(())
    })();
    if let Err(e) = result {
        panic!("redb: {e}");
    }
}

fn encoded(index: u64) -> (u64, Vec<u8>) {
    match postcard::to_allocvec(&hit_batch_entry(index)) {
        Ok(bytes) => (index, bytes),
        Err(e) => panic!("encode: {e}"),
    }
}

fn open_redb(dir: &Path) -> Database {
    match Database::create(dir.join("log.redb")) {
        Ok(db) => db,
        Err(e) => panic!("redb: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("raft_log_durable_append");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);

    let entry_bytes = encoded(0).1.len();
    eprintln!("entry: {HITS_PER_ENTRY} hits, {entry_bytes} bytes encoded");

    for depth in [1u64, 16] {
        // --- ours ---
        let dir = tempdir();
        let store = match LogStore::open(dir.path()) {
            Ok(s) => s,
            Err(e) => panic!("open: {e}"),
        };
        let mut next = 0u64;
        let fsyncs_before = store.fsync_count();
        group.bench_function(BenchmarkId::new("logstore", depth), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(logstore_append(&store, &mut next, iters, depth as usize));
                start.elapsed()
            })
        });
        eprintln!(
            "logstore depth {depth}: {} entries, {} fsyncs",
            next,
            store.fsync_count() - fsyncs_before
        );
        drop(store);

        // --- redb, one transaction per entry ---
        let dir = tempdir();
        let db = open_redb(dir.path());
        let mut next = 0u64;
        group.bench_function(BenchmarkId::new("redb", depth), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut done = 0;
                while done < iters {
                    let wave = depth.min(iters - done);
                    let db = &db;
                    let base = next;
                    std::thread::scope(|s| {
                        for i in 0..wave {
                            s.spawn(move || redb_commit(db, &[encoded(base + i)]));
                        }
                    });
                    next += wave;
                    done += wave;
                }
                start.elapsed()
            })
        });
        drop(db);
    }

    // --- redb, 16 entries per transaction (group commit done by the caller) ---
    let dir = tempdir();
    let db = open_redb(dir.path());
    let mut next = 0u64;
    group.bench_function(BenchmarkId::new("redb_batched", 16), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0;
            while done < iters {
                let wave = 16.min(iters - done);
                let batch: Vec<_> = (next..next + wave).map(encoded).collect();
                redb_commit(&db, &batch);
                next += wave;
                done += wave;
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn tempdir() -> tempfile::TempDir {
    // On the real disk (not a tmpfs /tmp) so that fsync costs what it costs.
    match tempfile::Builder::new()
        .prefix("quorate-logbench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
    {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
