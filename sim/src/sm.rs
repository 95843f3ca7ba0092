//! The real state machine, wrapped to record what every node applied.
//!
//! Every call goes to quorate's own [`StateMachine`]; `apply` additionally records, per
//! node incarnation, each entry's log id, command and response. The checker compares
//! these records across replicas and restarts.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use quorate_server::raft::state_machine::{SnapshotBuilder, StateMachine};
use quorate_server::raft::typ::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
};
use quorate_server::raft::{Command, CommandResponse, NodeId, TypeConfig};

/// One applied entry, as one node incarnation saw it.
#[derive(Debug, Clone)]
pub struct Applied {
    pub node: NodeId,
    pub incarnation: u32,
    pub log_id: LogId,
    /// `None` for blank and membership entries.
    pub command: Option<Command>,
    pub response: CommandResponse,
}

/// Every apply of every node, in the order they happened.
#[derive(Debug, Clone, Default)]
pub struct ApplyLog(Arc<Mutex<Vec<Applied>>>);

impl ApplyLog {
    fn push(&self, a: Applied) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(a);
    }

    pub fn all(&self) -> Vec<Applied> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug)]
pub struct RecordingStateMachine {
    pub inner: StateMachine,
    pub node: NodeId,
    pub incarnation: u32,
    pub log: ApplyLog,
}

impl RaftStateMachine<TypeConfig> for RecordingStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let seen: Vec<(LogId, Option<Command>)> = entries
            .iter()
            .map(|e| {
                let command = match &e.payload {
                    EntryPayload::Normal(c) => Some(c.clone()),
                    _ => None,
                };
                (e.log_id, command)
            })
            .collect();
        let responses = self.inner.apply(entries).await?;
        for ((log_id, command), response) in seen.into_iter().zip(&responses) {
            self.log.push(Applied {
                node: self.node,
                incarnation: self.incarnation,
                log_id,
                command,
                response: response.clone(),
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.get_current_snapshot().await
    }
}
