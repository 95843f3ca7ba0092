//! The one seeded random source every simulated choice draws from.
//!
//! Shared by the network, the disks, the clocks, the nemesis and the clients. The runtime
//! is single-threaded with deterministic scheduling, so the order of draws — and hence
//! every choice — is a function of the seed alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SimRng {
    rng: Arc<Mutex<StdRng>>,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng {
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut guard = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// A number in `[lo, hi)` (`lo` when the range is empty).
    pub fn range(&self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        self.with(|r| r.random_range(lo..hi))
    }

    /// True with probability `p`/1000.
    pub fn per_mille(&self, p: u32) -> bool {
        p > 0 && self.range(0, 1000) < u64::from(p)
    }

    /// A duration in `[lo, hi]`, microsecond resolution.
    pub fn duration(&self, lo: Duration, hi: Duration) -> Duration {
        let lo_us = u64::try_from(lo.as_micros()).unwrap_or(u64::MAX);
        let hi_us = u64::try_from(hi.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.range(lo_us, hi_us.saturating_add(1)))
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&self, items: &'a [T]) -> &'a T {
        let i = self.range(0, items.len() as u64) as usize;
        &items[i.min(items.len().saturating_sub(1))]
    }
}
