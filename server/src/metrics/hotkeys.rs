//! Hot keys: the counters hit (and denied) most over the last minutes, with a bounded
//! space-saving sketch (Metwally et al.) instead of a scan of the counter store.
//!
//! A sketch of capacity `k` keeps at most `k` keys; a new key evicts the one with the
//! smallest count and inherits that count as its possible over-estimate (`error`), so any
//! key hit more than `n/k` times in the window is guaranteed to be listed. Windows rotate
//! every [`WINDOW`]; the page shows the current and the previous window together, so the
//! list covers the last 5 to 10 minutes and never empties at a rotation.
//!
//! Keys are counter keys: a credential-derived part was hashed by the decision path
//! before it became a key, so nothing here holds a secret.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Keys each sketch keeps.
pub const CAPACITY: usize = 128;
/// How long one window lasts.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Longest key kept (longer ones are cut, with a `…` mark).
const MAX_KEY_CHARS: usize = 200;

#[derive(Debug, Clone, Default)]
struct Slot {
    count: u64,
    error: u64,
    /// The last decision's remaining quota and reset time (unix ms).
    remaining: u64,
    reset_at_ms: u64,
}

/// One space-saving sketch.
#[derive(Debug, Default)]
struct Sketch {
    slots: HashMap<String, Slot>,
}

impl Sketch {
    fn add(&mut self, key: &str, weight: u64, remaining: u64, reset_at_ms: u64) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.count += weight;
            slot.remaining = remaining;
            slot.reset_at_ms = reset_at_ms;
            return;
        }
        let mut slot = Slot {
            count: weight,
            error: 0,
            remaining,
            reset_at_ms,
        };
        if self.slots.len() >= CAPACITY {
            // O(k) eviction of the minimum; k is small and new keys are the rare case
            // once the hot set is in the sketch.
            let min = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.count)
                .map(|(k, s)| (k.clone(), s.count));
            if let Some((victim, min_count)) = min {
                self.slots.remove(&victim);
                slot.count += min_count;
                slot.error = min_count;
            }
        }
        self.slots.insert(key.to_string(), slot);
    }
}

#[derive(Debug)]
struct Windows {
    started: Instant,
    hits: Sketch,
    denials: Sketch,
    previous_hits: Sketch,
    previous_denials: Sketch,
}

/// The hot-key sketches of one node.
#[derive(Debug)]
pub struct HotKeys {
    windows: Mutex<Windows>,
}

impl Default for HotKeys {
    fn default() -> Self {
        HotKeys {
            windows: Mutex::new(Windows {
                started: Instant::now(),
                hits: Sketch::default(),
                denials: Sketch::default(),
                previous_hits: Sketch::default(),
                previous_denials: Sketch::default(),
            }),
        }
    }
}

/// One listed key.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HotKey {
    pub limit: String,
    pub key: String,
    /// Hits (or denials) counted; at most `error` more than the truth.
    pub count: u64,
    pub error: u64,
    pub remaining: u64,
    pub reset_at_ms: u64,
}

/// `GET /dashboard/api/hotkeys`.
#[derive(Debug, Clone, Serialize)]
pub struct HotKeysView {
    pub window_seconds: u64,
    pub by_hits: Vec<HotKey>,
    pub by_denials: Vec<HotKey>,
}

/// Splits a store key (`limit \x1f key`) for display; the separator is not printable.
fn split(store_key: &str, slot: &Slot) -> HotKey {
    let (limit, key) = store_key
        .split_once(quorate_algorithms::KEY_SEPARATOR)
        .unwrap_or(("", store_key));
    HotKey {
        limit: limit.to_string(),
        key: key.replace('\u{1e}', ", "),
        count: slot.count,
        error: slot.error,
        remaining: slot.remaining,
        reset_at_ms: slot.reset_at_ms,
    }
}

fn merged(current: &Sketch, previous: &Sketch, top: usize) -> Vec<HotKey> {
    let mut all: HashMap<&str, Slot> = HashMap::new();
    for (sketch, newer) in [(previous, false), (current, true)] {
        for (k, s) in &sketch.slots {
            let e = all.entry(k.as_str()).or_default();
            e.count += s.count;
            e.error += s.error;
            if newer || e.reset_at_ms == 0 {
                e.remaining = s.remaining;
                e.reset_at_ms = s.reset_at_ms;
            }
        }
    }
    let mut list: Vec<HotKey> = all.iter().map(|(k, s)| split(k, s)).collect();
    list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    list.truncate(top);
    list
}

impl HotKeys {
    /// Counts one decided hit on `store_key` (`limit \x1f key`).
    pub fn record(&self, limit: &str, key: &str, allowed: bool, remaining: u64, reset_at_ms: u64) {
        let mut store_key = String::with_capacity(limit.len() + 1 + key.len().min(MAX_KEY_CHARS));
        store_key.push_str(limit);
        store_key.push(quorate_algorithms::KEY_SEPARATOR);
        if key.chars().count() > MAX_KEY_CHARS {
            store_key.extend(key.chars().take(MAX_KEY_CHARS));
            store_key.push('…');
        } else {
            store_key.push_str(key);
        }
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        if w.started.elapsed() >= WINDOW {
            w.previous_hits = std::mem::take(&mut w.hits);
            w.previous_denials = std::mem::take(&mut w.denials);
            w.started = Instant::now();
        }
        w.hits.add(&store_key, 1, remaining, reset_at_ms);
        if !allowed {
            w.denials.add(&store_key, 1, remaining, reset_at_ms);
        }
    }

    /// The `top` keys by hits and by denials over the current and previous window.
    pub fn view(&self, top: usize) -> HotKeysView {
        let top = top.min(CAPACITY);
        let w = match self.windows.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        HotKeysView {
            window_seconds: WINDOW.as_secs() + w.started.elapsed().as_secs().min(WINDOW.as_secs()),
            by_hits: merged(&w.hits, &w.previous_hits, top),
            by_denials: merged(&w.denials, &w.previous_denials, top),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_the_hottest_keys_with_their_state() {
        let h = HotKeys::default();
        for _ in 0..10 {
            h.record("per_user", "alice", true, 5, 1_000);
        }
        h.record("per_user", "bob", false, 0, 2_000);
        let v = h.view(10);
        assert_eq!(v.by_hits[0].key, "alice");
        assert_eq!(v.by_hits[0].limit, "per_user");
        assert_eq!(v.by_hits[0].count, 10);
        assert_eq!(v.by_hits[0].remaining, 5);
        assert_eq!(v.by_denials.len(), 1);
        assert_eq!(v.by_denials[0].key, "bob");
    }

    proptest! {
        /// Bounded whatever the key stream, and every key hit more than n/k times is
        /// listed with a count no lower than its true count.
        #[test]
        fn space_saving_is_bounded_and_finds_heavy_hitters(
            keys in proptest::collection::vec(0u32..2_000, 0..4_000),
            heavy in 1usize..50,
        ) {
            let h = HotKeys::default();
            let mut truth: HashMap<String, u64> = HashMap::new();
            let heavy_key = "heavy".to_string();
            let mut n = 0u64;
            for (i, k) in keys.iter().enumerate() {
                let key = if i % heavy == 0 { heavy_key.clone() } else { k.to_string() };
                h.record("l", &key, true, 0, 0);
                *truth.entry(key).or_default() += 1;
                n += 1;
            }
            let v = h.view(CAPACITY);
            prop_assert!(v.by_hits.len() <= CAPACITY);
            let w = h.windows.lock().unwrap();
            prop_assert!(w.hits.slots.len() <= CAPACITY);
            drop(w);
            for (key, &count) in &truth {
                if count > n / CAPACITY as u64 {
                    let listed = v.by_hits.iter().find(|e| &e.key == key);
                    prop_assert!(listed.is_some(), "{key} hit {count} of {n} times is missing");
                    prop_assert!(listed.unwrap().count >= count);
                }
            }
        }
    }
}
