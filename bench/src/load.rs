//! The load generator: keeps C `quorate.v1.RateLimiter/Check` calls in flight for a fixed
//! time and measures what came back.
//!
//! C worker tasks each run one call at a time, so exactly C requests are in flight (a
//! closed loop: throughput is what the server sustains at that concurrency, latency is
//! what each caller waits). Workers share a few HTTP/2 connections (one tonic channel per
//! `per_channel` workers, spread round-robin over the targets), as a gateway would.
//!
//! Every answer is checked: one decision per hit, naming the hit's limit, self-consistent
//! (`allowed` agrees with the reason, `remaining` within the limit). A wrong answer is a
//! `bad answer`, not a success; failed calls are counted by gRPC code. Nothing is recorded
//! during the warm-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tonic::transport::{Channel, Endpoint};

use crate::keys::KeySpace;

/// What to send, where, and for how long.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// gRPC endpoints (`http://host:port`); connections are spread over them.
    pub targets: Vec<String>,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Workers sharing one HTTP/2 connection.
    pub per_channel: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it (connections warm, batches at steady size).
    pub warmup: Duration,
    /// Which counter keys hits name.
    pub keys: KeySpace,
    /// Prefix of every counter key (`<prefix><index>`).
    pub key_prefix: String,
    /// The limit every hit names.
    pub limit: String,
    /// The cost of every hit.
    pub cost: u64,
    /// Hits per request.
    pub hits_per_request: usize,
    /// A call not answered within this counts as `DEADLINE_EXCEEDED`.
    pub timeout: Duration,
    /// Seed of the key draws (worker i uses seed + i).
    pub seed: u64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub targets: Vec<String>,
    pub concurrency: usize,
    pub connections: usize,
    pub limit: String,
    pub hits_per_request: usize,
    /// Measured wall time: from the end of the warm-up to the last measured answer.
    pub elapsed: Duration,
    /// Calls answered with a verified decision in the measured window.
    pub ok: u64,
    /// Hits allowed / denied among them.
    pub allowed_hits: u64,
    pub denied_hits: u64,
    /// Failed calls in the measured window, by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls whose answer was not a valid decision.
    pub bad_answers: u64,
    /// The first failure or bad answer seen, for the report.
    pub first_problem: Option<String>,
    /// Failed calls during the warm-up (not in `errors`).
    pub warmup_errors: u64,
    /// Latency of verified answers, in microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    /// Verified calls per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// Failed calls plus bad answers.
    pub fn problems(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.bad_answers
    }

    /// Latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

/// One worker's tally, merged into the [`Report`].
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) allowed_hits: u64,
    pub(crate) denied_hits: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) bad_answers: u64,
    pub(crate) first_problem: Option<String>,
    pub(crate) warmup_errors: u64,
    pub(crate) last_answer: Option<Instant>,
    pub(crate) latency: Histogram<u64>,
}

impl Tally {
    /// An empty tally recording latencies into `latency`.
    pub(crate) fn new(latency: Histogram<u64>) -> Tally {
        Tally {
            ok: 0,
            allowed_hits: 0,
            denied_hits: 0,
            errors: BTreeMap::new(),
            bad_answers: 0,
            first_problem: None,
            warmup_errors: 0,
            last_answer: None,
            latency,
        }
    }

    /// Adds another worker's tally to this one.
    fn absorb(&mut self, t: Tally) -> anyhow::Result<()> {
        self.ok += t.ok;
        self.allowed_hits += t.allowed_hits;
        self.denied_hits += t.denied_hits;
        self.bad_answers += t.bad_answers;
        self.warmup_errors += t.warmup_errors;
        for (code, n) in t.errors {
            *self.errors.entry(code).or_default() += n;
        }
        if self.first_problem.is_none() {
            self.first_problem = t.first_problem;
        }
        self.last_answer = self.last_answer.max(t.last_answer);
        self.latency
            .add(&t.latency)
            .context("cannot merge latency histograms")
    }
}

/// What a run is before it starts: where it sends, how many callers, what they ask.
pub(crate) struct Run {
    pub(crate) targets: Vec<String>,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    pub(crate) limit: String,
    pub(crate) hits_per_request: usize,
}

impl Run {
    /// The report of this run: every worker's tally added up in `total`, measured for
    /// `elapsed`.
    fn report(self, elapsed: Duration, total: Tally) -> Report {
        Report {
            targets: self.targets,
            concurrency: self.concurrency,
            connections: self.connections,
            limit: self.limit,
            hits_per_request: self.hits_per_request,
            elapsed,
            ok: total.ok,
            allowed_hits: total.allowed_hits,
            denied_hits: total.denied_hits,
            errors: total.errors,
            bad_answers: total.bad_answers,
            first_problem: total.first_problem,
            warmup_errors: total.warmup_errors,
            latency: total.latency,
        }
    }
}

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("cannot build a latency histogram")
}

/// Opens `n` channels, spread round-robin over `targets`.
pub async fn connect(targets: &[String], n: usize) -> anyhow::Result<Vec<Channel>> {
    ensure!(!targets.is_empty(), "at least one --target is required");
    let mut channels = Vec::with_capacity(n);
    for i in 0..n {
        let url = &targets[i % targets.len()];
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid target {url:?}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs the load described by `config` and reports what it measured.
pub async fn run(config: &LoadConfig) -> anyhow::Result<Report> {
    Ok(run_observed(config, || async {}).await?.0)
}

/// [`run`], calling `at_measure_start` when the warm-up ends (the suite samples CPU time
/// and server metrics there) and returning what it produced.
pub async fn run_observed<F, Fut, T>(
    config: &LoadConfig,
    at_measure_start: F,
) -> anyhow::Result<(Report, T)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    ensure!(config.concurrency > 0, "--concurrency must be at least 1");
    ensure!(
        config.per_channel > 0,
        "--per-connection must be at least 1"
    );
    ensure!(
        (1..=256).contains(&config.hits_per_request),
        "--hits-per-request must be 1 to 256"
    );
    let connections = config.concurrency.div_ceil(config.per_channel);
    let channels = connect(&config.targets, connections).await?;
    let run = Run {
        targets: config.targets.clone(),
        concurrency: config.concurrency,
        connections,
        limit: config.limit.clone(),
        hits_per_request: config.hits_per_request,
    };
    let config = Arc::new(config.clone());
    let spawn = |i: usize, measure_from, stop_at, histogram| {
        let client = RateLimiterClient::new(channels[i % channels.len()].clone());
        tokio::spawn(worker(
            client,
            Arc::clone(&config),
            i as u64,
            measure_from,
            stop_at,
            histogram,
        ))
    };
    measure(run, config.warmup, config.duration, spawn, at_measure_start).await
}

/// One closed-loop run, whatever its workers call: spawns `run.concurrency` workers
/// (`spawn(i, measure_from, stop_at, histogram)`), calls `at_measure_start` when the
/// warm-up ends, and reports every worker's tally added up.
pub(crate) async fn measure<S, F, Fut, T>(
    run: Run,
    warmup: Duration,
    duration: Duration,
    mut spawn: S,
    at_measure_start: F,
) -> anyhow::Result<(Report, T)>
where
    S: FnMut(usize, Instant, Instant, Histogram<u64>) -> tokio::task::JoinHandle<Tally>,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let mut workers = Vec::with_capacity(run.concurrency);
    for i in 0..run.concurrency {
        workers.push(spawn(i, measure_from, stop_at, new_histogram()?));
    }

    tokio::time::sleep_until(measure_from.into()).await;
    let observed = at_measure_start().await;
    let mut total = Tally::new(new_histogram()?);
    for w in workers {
        total.absorb(w.await.context("a load worker panicked")?)?;
    }
    let last_answer = total.last_answer.unwrap_or(measure_from);
    let elapsed = last_answer.saturating_duration_since(measure_from);
    Ok((run.report(elapsed, total), observed))
}

async fn worker(
    mut client: RateLimiterClient<Channel>,
    config: Arc<LoadConfig>,
    index: u64,
    measure_from: Instant,
    stop_at: Instant,
    latency: Histogram<u64>,
) -> Tally {
    let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(index));
    let mut tally = Tally::new(latency);
    loop {
        let sent = Instant::now();
        if sent >= stop_at {
            break;
        }
        let hits = (0..config.hits_per_request)
            .map(|_| pb::Hit {
                limit: config.limit.clone(),
                key: format!("{}{}", config.key_prefix, config.keys.sample(&mut rng)),
                cost: Some(config.cost),
            })
            .collect();
        let call = client.check(pb::CheckRequest { hits, atomic: None });
        let result = tokio::time::timeout(config.timeout, call).await;
        let answered = Instant::now();
        let measured = sent >= measure_from;
        let outcome = match result {
            Err(_) => Err((
                "DEADLINE_EXCEEDED".to_string(),
                "client-side timeout".into(),
            )),
            Ok(Err(status)) => Err((
                code_name(status.code()).to_string(),
                status.message().to_string(),
            )),
            Ok(Ok(response)) => Ok(response.into_inner()),
        };
        if !measured {
            if outcome.is_err() {
                tally.warmup_errors += 1;
            }
            continue;
        }
        tally.last_answer = Some(answered);
        match outcome {
            Ok(response) => match verify(&response, &config.limit, config.hits_per_request) {
                Ok((allowed, denied)) => {
                    tally.ok += 1;
                    tally.allowed_hits += allowed;
                    tally.denied_hits += denied;
                    let us = u64::try_from(answered.duration_since(sent).as_micros())
                        .unwrap_or(u64::MAX);
                    tally.latency.saturating_record(us.max(1));
                }
                Err(why) => {
                    tally.bad_answers += 1;
                    tally
                        .first_problem
                        .get_or_insert(format!("bad answer: {why}"));
                }
            },
            Err((code, message)) => {
                *tally.errors.entry(code.clone()).or_default() += 1;
                tally
                    .first_problem
                    .get_or_insert_with(|| format!("{code}: {message}"));
            }
        }
    }
    tally
}

/// Checks that `response` is a real decision for `hits` hits on `limit`; returns the
/// numbers of allowed and denied hits.
pub fn verify(
    response: &pb::CheckResponse,
    limit: &str,
    hits: usize,
) -> Result<(u64, u64), String> {
    if response.decisions.len() != hits {
        return Err(format!(
            "{} decisions for {hits} hits",
            response.decisions.len()
        ));
    }
    let (mut allowed, mut denied) = (0, 0);
    for (i, d) in response.decisions.iter().enumerate() {
        if d.limit != limit {
            return Err(format!(
                "decision {i} names limit {:?}, not {limit:?}",
                d.limit
            ));
        }
        if d.limit_value == 0 {
            return Err(format!("decision {i} has limit_value 0"));
        }
        let unspecified = pb::DenyReason::Unspecified as i32;
        if d.allowed {
            if d.reason != unspecified {
                return Err(format!("decision {i} is allowed with a deny reason"));
            }
            if d.remaining > d.limit_value {
                return Err(format!(
                    "decision {i}: remaining {} above the limit {}",
                    d.remaining, d.limit_value
                ));
            }
            allowed += 1;
        } else {
            if d.reason == unspecified {
                return Err(format!("decision {i} is denied without a reason"));
            }
            denied += 1;
        }
    }
    if response.allowed != (denied == 0) {
        return Err("the overall verdict disagrees with the decisions".into());
    }
    Ok((allowed, denied))
}

/// The canonical name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(limit: &str, allowed: bool) -> pb::Decision {
        pb::Decision {
            allowed,
            limit: limit.into(),
            limit_value: 10,
            remaining: if allowed { 9 } else { 0 },
            reset_after_ms: 1000,
            retry_after_ms: None,
            reason: if allowed {
                pb::DenyReason::Unspecified as i32
            } else {
                pb::DenyReason::OverLimit as i32
            },
            window_ms: 1000,
        }
    }

    #[test]
    fn a_real_decision_passes() {
        let r = pb::CheckResponse {
            allowed: false,
            decisions: vec![decision("a", true), decision("a", false)],
        };
        assert_eq!(verify(&r, "a", 2), Ok((1, 1)));
    }

    #[test]
    fn wrong_answers_are_caught() {
        let one = |d: pb::Decision, allowed| pb::CheckResponse {
            allowed,
            decisions: vec![d],
        };
        // Missing decision.
        assert!(verify(&pb::CheckResponse::default(), "a", 1).is_err());
        // Wrong limit echoed.
        assert!(verify(&one(decision("b", true), true), "a", 1).is_err());
        // Empty decision (a do-nothing default answer).
        assert!(verify(&one(pb::Decision::default(), false), "", 1).is_err());
        // Overall verdict disagrees.
        assert!(verify(&one(decision("a", false), true), "a", 1).is_err());
        // Allowed with a reason.
        let mut d = decision("a", true);
        d.reason = pb::DenyReason::OverLimit as i32;
        assert!(verify(&one(d, true), "a", 1).is_err());
    }
}
