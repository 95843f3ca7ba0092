//! Pure, deterministic rate-limit algorithms and the keyed counter store.
//!
//! Everything in this crate is a function of its inputs: no I/O, no clock reads, no
//! randomness. Time is always an argument, [`Nanos`] since the Unix epoch. The Raft state
//! machine replays these calls from its log on every replica, so the same sequence of
//! `(now, cost)` must give the same [`Decision`]s everywhere, forever.
//!
//! # Tour
//! - [`Rate`] says what a limit allows: an [`Algorithm`], a `limit` per `window`, and for
//!   token buckets a `burst`. [`Rate::validate`] refuses configurations an algorithm
//!   cannot honour.
//! - [`CounterState`] is the per-key state of one limit; one module per algorithm:
//!   [`fixed_window`], [`sliding_window`] (precision 1: two counters) and
//!   [`sliding_slots`] (precision N: N sub-windows), [`sliding_log`], [`token_bucket`].
//!   The leaky bucket (gubernator's queue-less meter) is the same machine as the token
//!   bucket; see [`token_bucket`] for the equivalence.
//! - [`CounterStore`] maps counter keys to states, expires idle keys and caps memory, per
//!   limit ([`KeyCap`]: refuse new keys or evict the idlest) and store-wide.
//!   [`CounterStore::check_all`] ([`group`]) decides one request's hits all-or-nothing.
//!
//! # Time going backwards
//! A new Raft leader may have a slower clock than the old one. Every algorithm clamps:
//! a `now` earlier than the latest instant at which the counter consumed quota is treated
//! as that instant (or, where the algorithm allows it, as something stricter). Time never
//! runs backwards inside a counter, so a slow clock cannot mint extra quota. Only
//! consumption changes a state: a peek or a denial leaves it untouched, so a replica that
//! replays just the allowed hits (via `force`) holds exactly the leader's state.
//!
//! # Arithmetic
//! Products of user numbers are taken in `u128` and narrowed back saturating; sums
//! saturate. No input — zero, `u64::MAX`, or a hand-built [`Rate`] that skipped
//! [`Rate::new`] — makes any function here panic.

mod arith;
pub mod decision;
pub mod fixed_window;
pub mod group;
pub mod rate;
pub mod reservation;
pub mod sliding_log;
pub mod sliding_slots;
pub mod sliding_window;
pub mod state;
pub mod store;
pub mod token_bucket;

pub use decision::{Decision, DenyReason};
pub use fixed_window::FixedWindow;
pub use group::GroupHit;
pub use rate::{Algorithm, Rate, RateError, DEFAULT_SLIDING_PRECISION, MAX_SLIDING_PRECISION};
pub use reservation::{ReserveRequest, Reserved};
pub use sliding_log::SlidingLog;
pub use sliding_slots::SlidingSlots;
pub use sliding_window::SlidingWindow;
pub use state::CounterState;
pub use store::{
    counter_key, limit_of, Checked, CounterStore, KeyCap, OnFull, StoreError, StoredCounter,
    KEY_SEPARATOR,
};
pub use token_bucket::TokenBucket;

/// Nanoseconds since the Unix epoch (UTC). `u64` lasts until the year 2554.
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;
