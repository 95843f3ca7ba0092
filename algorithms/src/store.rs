//! The keyed counter store: counter key → [`CounterState`], with idle expiry and a key cap.
//!
//! TO BE IMPLEMENTED (see the signatures below; keep them).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{CounterState, Nanos};

/// One stored counter and the instant it becomes idle (droppable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCounter {
    pub state: CounterState,
    pub idle_at: Nanos,
}

/// Errors from the store.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("counter store is full ({max_keys} keys): new keys are refused until idle ones expire")]
    Full { max_keys: usize },
}

/// Concurrent map from counter key to counter state.
#[derive(Debug)]
pub struct CounterStore {
    _private: (),
}
