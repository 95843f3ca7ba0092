//! Unit tests of the decision function against in-memory counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
