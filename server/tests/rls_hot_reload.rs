//! Hot reload under load: several Envoy RLS clients call an in-process node in a loop while
//! the policy is replaced through the admin API twenty times. No call may fail, and every
//! answer must come from exactly one policy version — never a mix of two.
//!
//! The policies alternate between two shapes whose rules are disjoint, so a half-applied
//! policy would be visible in a single response:
//! - even generations: `k=a` limited, `k=b` unlimited;
//! - odd generations: `k=a` unlimited, `k=b` limited.
//!
//! Each generation also names its limit `g<gen>_<key>` and sets `requests_per_unit` to
//! 1 000 000 + gen, so the limit's name, its rate and the headers must all agree on one
//! generation, and a client must never see an older generation after a newer one.
//!
//! Every generation, the first included, goes through the admin API; the node is started
//! without `--policy FILE`, so the file watcher plays no part here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use support::*;

/// Policy replacements made while the clients run.
const RELOADS: u64 = 20;
/// Concurrent RLS clients, each on its own connection.
const CLIENTS: usize = 4;
/// Responses the clients must receive under each policy before the next replacement.
const RESPONSES_PER_POLICY: u64 = 100;
/// How long one policy may take to collect those responses.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);

fn requests_per_unit(generation: u64) -> u32 {
    1_000_000 + u32::try_from(generation).unwrap()
}

/// The policy of one generation.
fn policy(generation: u64) -> String {
    let (limited, unlimited) = if generation.is_multiple_of(2) {
        ("a", "b")
    } else {
        ("b", "a")
    };
    format!(
        "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        value: {limited}\n        rate_limit: {{name: g{generation}_{limited}, unit: hour, requests_per_unit: {}}}\n      - key: k\n        value: {unlimited}\n        rate_limit: {{unlimited: true}}\n",
        requests_per_unit(generation)
    )
}

fn probe() -> RateLimitRequest {
    request(
        "d",
        vec![descriptor(&[("k", "a")]), descriptor(&[("k", "b")])],
        0,
    )
}

/// The generation a response was decided by, or why it matches no single generation.
fn generation_of(resp: &RateLimitResponse) -> Result<u64, String> {
    let fail = |why: &str| Err(format!("{why}: {resp:?}"));
    if resp.overall_code != Code::Ok as i32 {
        return fail("overall_code is not OK");
    }
    let [a, b] = resp.statuses.as_slice() else {
        return fail("expected two statuses");
    };
    let (limited, unlimited, key, parity): (&DescriptorStatus, &DescriptorStatus, &str, u64) =
        match (&a.current_limit, &b.current_limit) {
            (Some(_), None) => (a, b, "a", 0),
            (None, Some(_)) => (b, a, "b", 1),
            (Some(_), Some(_)) => return fail("both descriptors limited: mixed policies"),
            (None, None) => return fail("neither descriptor limited: mixed policies"),
        };
    let current = limited.current_limit.as_ref().unwrap();
    let Some(generation) = current
        .name
        .strip_prefix('g')
        .and_then(|rest| rest.strip_suffix(&format!("_{key}")))
        .and_then(|g| g.parse::<u64>().ok())
    else {
        return fail("limit name is not g<gen>_<key>");
    };
    if generation % 2 != parity {
        return fail("the limited key does not belong to the generation named");
    }
    if current.requests_per_unit != requests_per_unit(generation)
        || current.unit != Unit::Hour as i32
    {
        return fail("the limit's rate is not the named generation's");
    }
    if limited.code != Code::Ok as i32 || limited.duration_until_reset.is_none() {
        return fail("the limited descriptor's status is incomplete");
    }
    if unlimited.code != Code::Ok as i32 || unlimited.limit_remaining != u32::MAX {
        return fail("the unlimited descriptor's status is not unlimited");
    }
    let expected_policy = format!(
        "\"g{generation}_{key}\";q={};w=3600",
        requests_per_unit(generation)
    );
    if header(resp, "ratelimit-policy") != Some(expected_policy.as_str()) {
        return fail("RateLimit-Policy names another generation");
    }
    let ok_current = header(resp, "ratelimit")
        .is_some_and(|h| h.starts_with(&format!("\"g{generation}_{key}\";r=")));
    if !ok_current {
        return fail("RateLimit names another generation");
    }
    Ok(generation)
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Responses per generation.
    per_generation: Vec<u64>,
    /// Failed calls and inconsistent responses (first few).
    problems: Vec<String>,
    problem_count: u64,
}

impl Seen {
    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < 5 {
            self.problems.push(p);
        }
    }
}

async fn client_loop(mut rls: Rls, stop: Arc<AtomicBool>, responses: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen {
        per_generation: vec![0; usize::try_from(RELOADS).unwrap() + 1],
        ..Default::default()
    };
    let mut newest = 0;
    while !stop.load(Ordering::Relaxed) {
        match rls.should_rate_limit(probe()).await {
            Ok(resp) => match generation_of(resp.get_ref()) {
                Ok(generation) if generation < newest => seen.problem(format!(
                    "generation {generation} seen after generation {newest}"
                )),
                Ok(generation) => {
                    newest = generation;
                    match seen
                        .per_generation
                        .get_mut(usize::try_from(generation).unwrap())
                    {
                        Some(n) => *n += 1,
                        None => seen.problem(format!("unknown generation {generation}")),
                    }
                }
                Err(why) => seen.problem(why),
            },
            Err(status) => seen.problem(format!("gRPC error: {status:?}")),
        }
        responses.fetch_add(1, Ordering::Relaxed);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_policy_under_load_fails_no_request_and_never_mixes_policies() {
    let started = std::time::Instant::now();
    let node = TestNode::start_with(None).await;
    let http = reqwest::Client::new();
    let mut version = node.put_policy(&http, &policy(0)).await;
    let mut rls = node.rls().await;
    let first = call(&mut rls, probe()).await;
    assert_eq!(generation_of(&first), Ok(0));

    let stop = Arc::new(AtomicBool::new(false));
    let responses = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(client_loop(
            node.rls().await,
            Arc::clone(&stop),
            Arc::clone(&responses),
        )));
    }

    for generation in 0..=RELOADS {
        if generation > 0 {
            let applied = node.put_policy(&http, &policy(generation)).await;
            assert!(
                applied > version,
                "version {applied} after {version}: not newer"
            );
            version = applied;
            // Once the admin call has answered, the new policy decides every request.
            let resp = call(&mut rls, probe()).await;
            assert_eq!(
                generation_of(&resp),
                Ok(generation),
                "first request after applying generation {generation}"
            );
        }
        // Let the clients run under this policy for a while (progress, not time).
        let target = responses.load(Ordering::Relaxed) + RESPONSES_PER_POLICY;
        let deadline = tokio::time::Instant::now() + PROGRESS_DEADLINE;
        while responses.load(Ordering::Relaxed) < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "clients made no progress under generation {generation}"
            );
            assert!(
                !clients.iter().any(|c| c.is_finished()),
                "a client stopped early"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = vec![0u64; usize::try_from(RELOADS).unwrap() + 1];
    let mut problems = Vec::new();
    let mut problem_count = 0;
    for c in clients {
        let seen = c.await.unwrap();
        for (t, n) in total.iter_mut().zip(&seen.per_generation) {
            *t += n;
        }
        problems.extend(seen.problems);
        problem_count += seen.problem_count;
    }
    assert!(
        problem_count == 0,
        "{problem_count} failed or inconsistent responses, e.g. {problems:#?}"
    );
    // The load really spanned the reloads: every generation answered clients (each ran
    // until the clients had received RESPONSES_PER_POLICY more answers).
    assert!(
        total.iter().all(|n| *n > 0),
        "a generation answered no client: {total:?}"
    );
    println!(
        "{} responses across {} policies in {:?}; per generation: {total:?}",
        total.iter().sum::<u64>(),
        RELOADS + 1,
        started.elapsed()
    );
}

/// The classifier itself: a response mixing two generations, or disagreeing with its own
/// headers, is never taken for a single generation.
#[tokio::test]
async fn mixed_responses_are_recognised() {
    let node = TestNode::start_with(None).await;
    let http = reqwest::Client::new();
    node.put_policy(&http, &policy(0)).await;
    let mut rls = node.rls().await;
    let a = call(&mut rls, probe()).await;
    assert_eq!(generation_of(&a), Ok(0));
    node.put_policy(&http, &policy(1)).await;
    let b = call(&mut rls, probe()).await;
    assert_eq!(generation_of(&b), Ok(1));
    node.put_policy(&http, &policy(2)).await;
    let c = call(&mut rls, probe()).await;
    assert_eq!(generation_of(&c), Ok(2));

    // Generation 0's first status with generation 1's second: both limited.
    let mut both = a.clone();
    both.statuses[1] = b.statuses[1].clone();
    assert!(generation_of(&both).is_err());
    // Generation 1's first status with generation 0's second: neither limited.
    let mut neither = b.clone();
    neither.statuses[1] = a.statuses[1].clone();
    assert!(generation_of(&neither).is_err());
    // Generation 2's statuses with generation 0's headers.
    let mut stale_headers = c.clone();
    stale_headers.response_headers_to_add = a.response_headers_to_add.clone();
    assert!(generation_of(&stale_headers).is_err());
    // Generation 2's name with generation 0's rate.
    let mut stale_rate = c.clone();
    stale_rate.statuses[0].current_limit = a.statuses[0].current_limit.clone().map(|mut l| {
        l.name = "g2_a".into();
        l
    });
    assert!(generation_of(&stale_rate).is_err());
}
