//! What a run did, in order: the readable trace a failing seed prints, the fault counts
//! the sweep reports, and the hash that proves two runs of one seed were identical.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Counts of injected faults, by kind.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl Faults {
    pub fn count(&self, kind: &'static str) {
        let mut guard = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *guard.entry(kind).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Timestamped events of one run (simulated milliseconds since the start).
#[derive(Debug, Clone)]
pub struct Trace {
    start: tokio::time::Instant,
    events: Arc<Mutex<Vec<String>>>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    /// A trace whose clock starts now (simulated time).
    pub fn new() -> Trace {
        Trace {
            start: tokio::time::Instant::now(),
            events: Arc::default(),
        }
    }

    /// Simulated milliseconds since the run started.
    pub fn millis(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn event(&self, text: impl Into<String>) {
        let line = format!("{:>7}ms {}", self.millis(), text.into());
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A stable hash (SipHash with fixed keys) of everything that happened.
pub fn hash_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for line in lines {
        line.hash(&mut h);
    }
    h.finish()
}
