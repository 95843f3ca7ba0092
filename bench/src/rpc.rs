//! The closed-loop runner shared by the Envoy modes (`rls`, `ext-authz`): the same shape
//! as [`crate::load`] (C workers, one call in flight each, C/per_channel HTTP/2
//! connections, nothing recorded during the warm-up), generic over what one call sends and
//! how its answer is verified.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tonic::transport::Channel;

use crate::load::{code_name, connect, measure, Report, Run, Tally};

/// What one call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A verified answer: how many items (descriptors, requests) were allowed / denied.
    Verified { allowed: u64, denied: u64 },
    /// The RPC succeeded but the answer was not a valid decision.
    Bad(String),
    /// The RPC failed, by gRPC code name.
    Failed { code: String, message: String },
}

impl Outcome {
    /// A failed RPC from a tonic status.
    pub fn from_status(status: &tonic::Status) -> Outcome {
        Outcome::Failed {
            code: code_name(status.code()).to_string(),
            message: status.message().to_string(),
        }
    }
}

/// One worker's caller: makes one call and verifies its answer.
pub trait Caller: Send + 'static {
    fn call(&mut self, rng: &mut StdRng) -> impl Future<Output = Outcome> + Send;
}

/// Where and how long to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub targets: Vec<String>,
    pub concurrency: usize,
    pub per_channel: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub seed: u64,
    /// What the report names in its "limit" field (e.g. `rls bench1 ×3`).
    pub label: String,
    /// Items decided per request (descriptors), for the report.
    pub items_per_request: usize,
}

/// Runs `spec.concurrency` workers, each with a caller made by `make` from its channel.
pub async fn run<C, F>(spec: &RunSpec, make: F) -> anyhow::Result<Report>
where
    C: Caller,
    F: Fn(Channel) -> C,
{
    Ok(run_observed(spec, make, || async {}).await?.0)
}

/// [`run`], calling `at_measure_start` when the warm-up ends (the suite samples CPU time
/// and server metrics there) and returning what it produced, as
/// [`crate::load::run_observed`] does for `Check`.
pub async fn run_observed<C, F, O, Fut, T>(
    spec: &RunSpec,
    make: F,
    at_measure_start: O,
) -> anyhow::Result<(Report, T)>
where
    C: Caller,
    F: Fn(Channel) -> C,
    O: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    ensure!(spec.concurrency > 0, "--concurrency must be at least 1");
    ensure!(spec.per_channel > 0, "--per-connection must be at least 1");
    let connections = spec.concurrency.div_ceil(spec.per_channel);
    let channels = connect(&spec.targets, connections).await?;
    let run = Run {
        targets: spec.targets.clone(),
        concurrency: spec.concurrency,
        connections,
        limit: spec.label.clone(),
        hits_per_request: spec.items_per_request,
    };
    let spec_arc = Arc::new(spec.clone());
    let spawn = |i: usize, measure_from, stop_at, histogram| {
        let caller = make(channels[i % channels.len()].clone());
        tokio::spawn(worker(
            caller,
            Arc::clone(&spec_arc),
            i as u64,
            measure_from,
            stop_at,
            histogram,
        ))
    };
    measure(run, spec.warmup, spec.duration, spawn, at_measure_start).await
}

async fn worker<C: Caller>(
    mut caller: C,
    spec: Arc<RunSpec>,
    index: u64,
    measure_from: Instant,
    stop_at: Instant,
    latency: hdrhistogram::Histogram<u64>,
) -> Tally {
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_add(index));
    let mut t = Tally::new(latency);
    loop {
        let sent = Instant::now();
        if sent >= stop_at {
            break;
        }
        let outcome = match tokio::time::timeout(spec.timeout, caller.call(&mut rng)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed {
                code: "DEADLINE_EXCEEDED".into(),
                message: "client-side timeout".into(),
            },
        };
        let answered = Instant::now();
        if sent < measure_from {
            if !matches!(outcome, Outcome::Verified { .. }) {
                t.warmup_errors += 1;
            }
            continue;
        }
        t.last_answer = Some(answered);
        match outcome {
            Outcome::Verified { allowed, denied } => {
                t.ok += 1;
                t.allowed_hits += allowed;
                t.denied_hits += denied;
                let us =
                    u64::try_from(answered.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                t.latency.saturating_record(us.max(1));
            }
            Outcome::Bad(why) => {
                t.bad_answers += 1;
                t.first_problem.get_or_insert(format!("bad answer: {why}"));
            }
            Outcome::Failed { code, message } => {
                *t.errors.entry(code.clone()).or_default() += 1;
                t.first_problem
                    .get_or_insert_with(|| format!("{code}: {message}"));
            }
        }
    }
    t
}
