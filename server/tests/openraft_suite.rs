//! openraft's own storage test suite (`openraft::testing::Suite::test_all`) against the
//! stores a quorate node runs on: the segmented log of `quorate-raft-log` and the
//! server's state machine, each on a fresh temporary directory per suite case.
//!
//! The suite checks what openraft relies on and cannot verify at runtime: log state
//! after appends, truncations and purges; vote persistence; membership recovered from
//! the log and the state machine; apply results; snapshot build, install and read back.

use openraft::testing::{StoreBuilder, Suite};
use quorate_server::raft::state_machine::StateMachine;
use quorate_server::raft::{LogStore, NodeId, TypeConfig};
use tempfile::TempDir;

/// Builds a log store and a state machine in one temporary directory, which the suite
/// keeps (the guard) until its case ends.
struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachine), openraft::StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(setup_failed)?;
        let log = LogStore::open(&dir.path().join("log")).map_err(setup_failed)?;
        let sm = StateMachine::open(&dir.path().join("sm")).map_err(setup_failed)?;
        Ok((dir, log, sm))
    }
}

/// A temporary directory or store that cannot be set up fails the suite case.
fn setup_failed(e: impl std::error::Error + 'static) -> openraft::StorageError<NodeId> {
    openraft::StorageIOError::write(&e).into()
}

#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(OnDisk) {
        panic!("openraft storage suite: {e}");
    }
}
