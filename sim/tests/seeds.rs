//! The simulator as part of the ordinary test run: a fixed quick set of seeds must hold
//! every invariant, a seed must replay identically, and a planted bug must be caught.

use quorate_sim::{run_seed, Options, PlantedBug};

/// Seeds run on every `scripts/test.sh`. Regression seeds (ones that once exposed a bug)
/// are added here with a comment naming the bug.
const QUICK_SEEDS: &[u64] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    // Two leaders in term 7 (openraft's default leader ids): once flagged as an
    // election-safety violation; exposed that fast decisions keyed "caught up" on the
    // term alone (engine/leadership.rs).
    203,
    // n1 (7, 1) and n2 (7, 2) both elected in term 7 within one simulated millisecond;
    // their metrics watchers saw them in the opposite order. Checker regression: same-
    // instant leaderships are unordered.
    10204,
    // The leader crashed and, restarted, resumed its leader id (openraft restores a
    // committed self-vote as leader at once); fast grants lost in the crash were held to
    // a zero bound because no leader *change* was seen. A crash is a leader failure.
    10709, 10755,
    // Two leaders of one term established in the opposite order of their node ids (a
    // delayed vote response), 1–4 ms apart: flagged by the checker's first, time-ordered
    // definition of election safety; openraft allows it (checker regression).
    100379, 103008, 108789,
];

fn run(options: &Options) -> quorate_sim::Report {
    match run_seed(options) {
        Ok(r) => r,
        Err(e) => panic!("seed {} could not run: {e}", options.seed),
    }
}

#[test]
fn quick_seeds_hold_every_invariant_under_faults() {
    let mut failures = Vec::new();
    let mut settled = 0;
    for seed in QUICK_SEEDS {
        let report = run(&Options::new(*seed));
        settled += report.settled;
        assert!(
            report.ops > 100,
            "seed {seed}: the workload barely ran ({} ops)",
            report.ops
        );
        if !report.violations.is_empty() {
            failures.push(report.describe());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The checker saw reservations given back, not only taken.
    assert!(settled > 0, "no seed settled any reservation");
}

#[test]
fn the_same_seed_replays_to_the_same_trace_hash() {
    let a = run(&Options::new(42));
    let b = run(&Options::new(42));
    assert_eq!(a.trace, b.trace, "traces of seed 42 differ");
    assert_eq!(a.hash, b.hash, "seed 42 is not deterministic");
    let c = run(&Options::new(43));
    assert_ne!(a.hash, c.hash, "different seeds should differ");
}

#[test]
fn a_planted_strict_before_commit_bug_is_caught_within_three_seeds() {
    let caught = (0..3).find_map(|seed| {
        let mut options = Options::new(seed);
        options.plant = Some(PlantedBug::StrictBeforeCommit);
        let report = run(&options);
        report
            .violations
            .iter()
            .find(|v| v.invariant == "strict acknowledged = committed")
            .map(|v| (seed, v.detail.clone(), report.describe()))
    });
    let (seed, detail, description) = caught.expect("the checker missed a planted bug");
    assert!(detail.contains("no committed entry"), "{detail}");
    assert!(
        description.contains(&format!("--seed {seed}"))
            && description.contains("--plant strict-before-commit"),
        "the failure must print a replayable command: {description}"
    );
}

#[test]
fn a_fault_free_run_grants_and_denies() {
    let mut options = Options::new(5);
    options.faults = false;
    let report = run(&options);
    assert!(report.violations.is_empty(), "{}", report.describe());
    assert!(report.granted > 0 && report.granted < report.ops * 2);
    assert!(report.faults.is_empty(), "{:?}", report.faults);
}

#[test]
fn a_planted_lying_fsync_is_caught_within_six_seeds_and_only_with_crashes() {
    // A disk that acknowledges fsyncs before the data is durable loses committed entries
    // when nodes crash: the checker must see it as lost or divergent entries.
    let caught = (0..6).find_map(|seed| {
        let mut options = Options::new(seed);
        options.plant = Some(PlantedBug::LyingFsync);
        let report = run(&options);
        (!report.violations.is_empty()).then_some(report)
    });
    let report = caught.expect("the checker missed a lying fsync in six seeds");
    assert!(
        report.faults.get("crash").copied().unwrap_or(0) > 0,
        "a lying fsync only shows after a crash"
    );
    assert!(
        report.violations.iter().any(|v| matches!(
            v.invariant,
            "log matching" | "strict acknowledged = committed" | "convergence" | "replica state"
        )),
        "{}",
        report.describe()
    );
    // Without crashes the lie is invisible: nothing may be reported.
    let mut calm = report.options.clone();
    calm.faults = false;
    let calm = run(&calm);
    assert!(calm.violations.is_empty(), "{}", calm.describe());
}

#[test]
fn five_node_clusters_hold_every_invariant_under_faults() {
    let mut failures = Vec::new();
    for seed in 0..3 {
        let mut options = Options::new(seed);
        options.nodes = 5;
        let report = run(&options);
        if !report.violations.is_empty() {
            failures.push(report.describe());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RLQS seeds run on every `scripts/test.sh` (Envoy proxies sharing limits through the
/// cluster, `Options::rlqs`): odd seeds run without clock faults, so the real-time
/// properties (held shares, fleet overshoot 0) are asserted across crashes, partitions
/// and leader changes; even seeds add clock faults (committed pools asserted).
const RLQS_QUICK_SEEDS: &[u64] = &[1, 2, 3];

#[test]
fn rlqs_quick_seeds_hold_every_invariant_under_faults_and_replay() {
    let mut failures = Vec::new();
    let mut hashes = Vec::new();
    for seed in RLQS_QUICK_SEEDS {
        let report = run(&Options::rlqs(*seed));
        hashes.push(report.hash);
        let outcome = report.rlqs.as_ref().expect("an RLQS run reports its fleet");
        assert!(
            outcome.assignments > 50 && outcome.admitted.iter().all(|&n| n > 100),
            "seed {seed}: the fleet barely ran: {outcome:?}"
        );
        assert_eq!(outcome.clocks_in_step, seed % 2 == 1, "seed {seed}");
        if !report.violations.is_empty() {
            failures.push(report.describe());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let again = run(&Options::rlqs(RLQS_QUICK_SEEDS[0]));
    assert_eq!(again.hash, hashes[0], "RLQS runs are not deterministic");
    assert_ne!(hashes[0], hashes[1], "different seeds should differ");
}

/// RLQS seeds that once exposed a bug, each with a comment naming it. Some run under
/// faults heavy enough that the fleet barely admits anything; only the invariants are
/// asserted.
const RLQS_REGRESSION_SEEDS: &[u64] = &[
    // A leader crashed and, restarted, resumed its leader id; openraft's
    // `ensure_linearizable` then reads at the last commit index it saved, so grants the
    // previous incarnation committed and pushed were not yet in the table the first round
    // read: committed shares reached twice the pool (grpc/rlqs.rs, `run_rounds`). All
    // three fail with that fix reverted (checked with the demand rise in the workload).
    201064, 201363, 201558,
];

#[test]
fn rlqs_regression_seeds_hold_every_invariant() {
    let failures: Vec<String> = RLQS_REGRESSION_SEEDS
        .iter()
        .map(|seed| run(&Options::rlqs(*seed)))
        .filter(|report| !report.violations.is_empty())
        .map(|report| report.describe())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_fault_free_rlqs_fleet_uses_its_limits() {
    // Demand is twice each limit. Measured (seeds 0–3, 10 s): 95 % of the
    // requests-per-window limit and 90–94 % of the token-bucket limit in every second
    // after the warm-up (2-token shares; with 1-token shares, before `bucket_tokens` asked
    // for room for one change instead of two, the token-bucket limit got 66 %).
    let mut options = Options::rlqs(0);
    options.faults = false;
    let report = run(&options);
    assert!(report.violations.is_empty(), "{}", report.describe());
    let outcome = report.rlqs.expect("an RLQS run reports its fleet");
    assert!(outcome.clocks_in_step);
    assert!(
        outcome.utilisation_min[0] >= 0.9 && outcome.utilisation_min[1] >= 0.85,
        "utilisation per second after the warm-up: {:?}",
        outcome.utilisation_min
    );
    // At 3 s the smallest proxy's demand rises to the largest one's. Measured (seeds 0–3):
    // 1.8 intervals to 90 % of its fair share under the requests-per-window limit; 2.7–6.7
    // under the token-bucket limit, whose 25-token pool holds 6 proxies' 2-token shares
    // with room for only one change each per window — the rise shows over two reports,
    // and the second change waits for the first one's tokens to be released.
    let converged = &outcome.riser_converged;
    assert!(
        converged[0].is_some_and(|c| c <= 3.0) && converged[1].is_some_and(|c| c <= 8.0),
        "intervals until the riser held 90 % of its fair share: {converged:?}"
    );
}

#[test]
fn a_planted_rlqs_share_overflow_is_caught_in_the_first_seed() {
    // The leader pushes twice the rate it committed: the proxies then hold more than the
    // pool, and admit more than the limit.
    let mut options = Options::rlqs(1);
    options.plant = Some(PlantedBug::RlqsDoubleShare);
    let report = run(&options);
    let caught: Vec<_> = report.violations.iter().map(|v| v.invariant).collect();
    assert!(
        caught.contains(&"rlqs held shares"),
        "{}",
        report.describe()
    );
    assert!(
        report.describe().contains("--plant rlqs-double-share"),
        "the failure must print a replayable command"
    );
}

#[test]
fn a_planted_leader_forgetting_ended_streams_is_caught_within_two_seeds() {
    // Shares pushed on a stream that ended stay live at the proxy until they expire; a
    // leader that stops counting them hands the same capacity out twice.
    let caught = (0..2).find_map(|seed| {
        let mut options = Options::rlqs(seed);
        options.plant = Some(PlantedBug::RlqsForgetEndedStreams);
        let report = run(&options);
        report
            .violations
            .iter()
            .any(|v| v.invariant == "rlqs committed pools")
            .then_some(report)
    });
    assert!(
        caught.is_some(),
        "the checker missed a leader forgetting grants"
    );
}
