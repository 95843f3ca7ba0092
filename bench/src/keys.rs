//! Counter-key distributions for the load generator: which key each hit names.
//!
//! - `uniform`: every one of the N keys equally likely;
//! - `zipf`: key of rank k (1-based) drawn with probability ∝ 1/k^s (s = 1 by default),
//!   so a few keys take most hits, as real per-user or per-IP traffic does;
//! - `hot`: every hit on one key — the worst case for a counter store that shards or
//!   locks per key.
//!
//! Zipf is sampled by inverting a precomputed cumulative table (a binary search per draw):
//! exact for any N and s, O(N) memory once, shared by every worker.

use std::sync::Arc;

use anyhow::{bail, ensure};
use rand::Rng;

/// How keys are drawn, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Rank-k key with probability proportional to 1/k^s.
    Zipf,
    /// A single key.
    Hot,
}

impl Distribution {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipf => "zipf",
            Distribution::Hot => "hot",
        }
    }
}

/// A ready-to-sample key space; cheap to clone (the Zipf table is shared).
#[derive(Debug, Clone)]
pub enum KeySpace {
    /// Keys `0..n`, uniformly.
    Uniform { n: u64 },
    /// Keys `0..cdf.len()`; `cdf[k]` is P(rank ≤ k+1), the last entry is 1.0.
    Zipf { cdf: Arc<[f64]> },
    /// Key 0 only.
    Hot,
}

/// Most keys a Zipf table is built for (8 bytes each).
const MAX_ZIPF_KEYS: u64 = 50_000_000;

impl KeySpace {
    /// Builds the key space for `n` keys drawn by `dist` (`s` is Zipf's exponent).
    pub fn new(dist: Distribution, n: u64, s: f64) -> anyhow::Result<KeySpace> {
        ensure!(n > 0, "--keys must be at least 1");
        Ok(match dist {
            Distribution::Uniform => KeySpace::Uniform { n },
            Distribution::Hot => KeySpace::Hot,
            Distribution::Zipf => {
                ensure!(
                    s.is_finite() && s > 0.0,
                    "--zipf-s must be a positive number"
                );
                if n > MAX_ZIPF_KEYS {
                    bail!("--keys {n}: a zipf key space holds at most {MAX_ZIPF_KEYS} keys");
                }
                let mut cdf = Vec::with_capacity(usize::try_from(n)?);
                let mut total = 0.0_f64;
                for rank in 1..=n {
                    total += (rank as f64).powf(-s);
                    cdf.push(total);
                }
                for c in &mut cdf {
                    *c /= total;
                }
                if let Some(last) = cdf.last_mut() {
                    *last = 1.0;
                }
                KeySpace::Zipf { cdf: cdf.into() }
            }
        })
    }

    /// Draws one key index.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeySpace::Uniform { n } => rng.random_range(0..*n),
            KeySpace::Hot => 0,
            KeySpace::Zipf { cdf } => {
                let u: f64 = rng.random();
                // First rank whose cumulative probability exceeds u.
                let i = cdf.partition_point(|&c| c <= u);
                i.min(cdf.len().saturating_sub(1)) as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn histogram(space: &KeySpace, n: usize, draws: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut h = vec![0; n];
        for _ in 0..draws {
            h[space.sample(&mut rng) as usize] += 1;
        }
        h
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let h = histogram(
            &KeySpace::new(Distribution::Uniform, 10, 1.0).unwrap(),
            10,
            100_000,
        );
        assert!(h.iter().all(|&c| (9_000..11_000).contains(&c)), "{h:?}");
    }

    #[test]
    fn hot_is_one_key() {
        let h = histogram(
            &KeySpace::new(Distribution::Hot, 10, 1.0).unwrap(),
            10,
            1_000,
        );
        assert_eq!(h[0], 1_000);
    }

    #[test]
    fn zipf_follows_one_over_rank() {
        let n = 100;
        let h = histogram(
            &KeySpace::new(Distribution::Zipf, n, 1.0).unwrap(),
            n as usize,
            200_000,
        );
        // P(rank 1) / P(rank 2) = 2 and P(rank 1) / P(rank 10) = 10 for s = 1.
        let r2 = h[0] as f64 / h[1] as f64;
        let r10 = h[0] as f64 / h[9] as f64;
        assert!((1.8..2.2).contains(&r2), "{r2}");
        assert!((8.5..11.5).contains(&r10), "{r10}");
        // H(100) ≈ 5.187, so rank 1 takes ≈ 19.3 %.
        let p1 = h[0] as f64 / 200_000.0;
        assert!((0.185..0.201).contains(&p1), "{p1}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(KeySpace::new(Distribution::Uniform, 0, 1.0).is_err());
        assert!(KeySpace::new(Distribution::Zipf, 10, 0.0).is_err());
        assert!(KeySpace::new(Distribution::Zipf, 10, f64::NAN).is_err());
    }
}
