//! Bad input never panics a node: malformed `Check` requests, unknown limits, zero and
//! huge costs get the documented answers, and an invalid policy is refused with its line
//! by both `quorate policy apply` and `quorate serve`, leaving the live policy in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use quorate_e2e::{bin, hit, pb, policy, Check, Cluster, NodeOptions, TestNode};
use tonic::Code;

const LIMIT: u64 = 10;

/// One limit per algorithm, all strict, plus a fast one.
fn every_algorithm() -> String {
    policy(&[
        ("fixed", "fixed_window", LIMIT, "strict"),
        ("sliding", "sliding_window", LIMIT, "strict"),
        ("log", "sliding_log", LIMIT, "strict"),
        ("bucket", "token_bucket", LIMIT, "strict"),
        ("fast", "fixed_window", LIMIT, "fast"),
    ])
}

const LIMITS: [&str; 5] = ["fixed", "sliding", "log", "bucket", "fast"];

async fn single() -> Cluster {
    Cluster::single(NodeOptions {
        policy: Some(every_algorithm()),
        ..NodeOptions::default()
    })
    .await
    .unwrap()
}

async fn check_raw(
    node: &TestNode,
    hits: Vec<pb::Hit>,
) -> Result<pb::CheckResponse, tonic::Status> {
    node.client()
        .check(pb::CheckRequest { hits, atomic: None })
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn assert_invalid(result: Result<pb::CheckResponse, tonic::Status>, field: &str) {
    match result {
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
            assert!(
                s.message().contains(field),
                "the message should name {field:?}: {:?}",
                s.message()
            );
        }
        Ok(r) => panic!("expected INVALID_ARGUMENT naming {field}, got {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_checks_are_invalid_argument_naming_the_field() {
    let cluster = single().await;
    let node = cluster.node(1);
    let good = || hit("fixed", "k", Some(1));

    assert_invalid(check_raw(node, vec![]).await, "hits");
    assert_invalid(check_raw(node, vec![good(); 257]).await, "hits");
    assert_invalid(
        check_raw(node, vec![good(), hit("", "k", Some(1))]).await,
        "hits[1].limit",
    );
    assert_invalid(
        check_raw(node, vec![good(), good(), hit("fixed", "", Some(1))]).await,
        "hits[2].key",
    );
    let long_key = "x".repeat(600);
    assert_invalid(
        check_raw(node, vec![hit("fixed", &long_key, Some(1))]).await,
        "hits[0].key",
    );
    // A refused request consumed nothing, not even its good hits.
    let d = node.check("fixed", "k", Some(0)).await.decided();
    assert_eq!(d.remaining, LIMIT);

    // 256 hits is the most allowed, and is fine.
    let r = check_raw(node, vec![hit("fixed", "many", Some(0)); 256])
        .await
        .unwrap();
    assert_eq!(r.decisions.len(), 256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_limit_is_not_found() {
    let cluster = single().await;
    let node = cluster.node(1);
    let err = node.check("no_such_limit", "k", None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no_such_limit"), "{err:?}");

    // One unknown limit among known ones fails the whole request and consumes nothing.
    let err = check_raw(
        node,
        vec![
            hit("fixed", "k", Some(1)),
            hit("no_such_limit", "k", Some(1)),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        node.check("fixed", "k", Some(0)).await.decided().remaining,
        LIMIT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_cost_peeks_and_huge_cost_is_denied_without_harm() {
    let cluster = single().await;
    let node = cluster.node(1);
    for limit in LIMITS {
        // Cost 0: allowed, and takes nothing, however often.
        for _ in 0..3 {
            let d = node.check(limit, "k", Some(0)).await.decided();
            assert!(d.allowed, "{limit}: a peek is allowed: {d:?}");
            assert_eq!(d.remaining, LIMIT, "{limit}: a peek consumes nothing");
        }
        // u64::MAX: denied as more than the limit could ever grant, never a panic.
        let d = node.check(limit, "k", Some(u64::MAX)).await.decided();
        assert!(!d.allowed, "{limit}: {d:?}");
        assert_eq!(
            d.reason,
            pb::DenyReason::CostExceedsLimit as i32,
            "{limit}: {d:?}"
        );
        assert_eq!(d.retry_after_ms, None, "{limit}: it can never pass: {d:?}");
        // Limit + 1 is just as impossible.
        let d = node.check(limit, "k", Some(LIMIT + 1)).await.decided();
        assert!(!d.allowed, "{limit}: {d:?}");
        assert_eq!(d.reason, pb::DenyReason::CostExceedsLimit as i32);
        // The node still answers, and the denied hits took nothing.
        let d = node.check(limit, "k", Some(1)).await.decided();
        assert!(d.allowed, "{limit}: {d:?}");
        assert_eq!(d.remaining, LIMIT - 1, "{limit}: {d:?}");
        // Exactly the limit in one hit is what remains possible... until it is not.
        let d = node.check(limit, "k", Some(LIMIT)).await.decided();
        assert!(!d.allowed, "{limit}: only {} left: {d:?}", LIMIT - 1);
        assert_eq!(d.reason, pb::DenyReason::OverLimit as i32, "{limit}: {d:?}");
    }
    // Still alive and consistent after all of that.
    let status = node.status().await.unwrap();
    assert!(status.is_leader(), "{status:?}");
}

/// Runs a `quorate` CLI command to completion (bounded in time).
async fn quorate(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(bin::quorate());
    command.args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the CLI finished in time")
        .expect("the CLI ran")
}

/// A policy whose second limit, `broken`, has the given `limit` and `window`.
fn bad_policy(limit: &str, window: &str) -> String {
    format!(
        "limits:\n  - name: good\n    limit: 5\n    window: 1h\n  - name: broken\n    limit: {limit}\n    window: {window}\n"
    )
}

/// The 1-based line of `text` holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[track_caller]
fn assert_names_a_line(stderr: &str, lines: [usize; 2]) {
    assert!(
        lines.iter().any(|n| stderr.contains(&format!("line {n}"))),
        "the error names line {} or {}: {stderr}",
        lines[0],
        lines[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policy_apply_is_refused_with_its_line_and_the_old_policy_stays() {
    let cluster = single().await;
    let node = cluster.node(1);
    let before = node.status().await.unwrap().policy_version.unwrap();
    let text = bad_policy("0", "1h");
    // Either the broken limit's line or its bad field's is a fine answer.
    let lines = [line_of(&text, "name: broken"), line_of(&text, "limit: 0")];
    let file = node.dir().join("bad.yaml");
    std::fs::write(&file, &text).unwrap();

    let out = quorate(&[
        "policy",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--node",
        &node.http_url(),
        "--admin-token-file",
        node.admin_token_file().to_str().unwrap(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply must fail: {stderr}");
    assert_names_a_line(&stderr, lines);
    assert!(
        stderr.contains("limit must be at least 1"),
        "the error gives the reason: {stderr}"
    );

    // The previous policy is still the live one, and still decides.
    let token_file = node.admin_token_file();
    let out = quorate(&[
        "policy",
        "get",
        "--node",
        &node.http_url(),
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("# version: {before}")),
        "still version {before}: {stdout}"
    );
    assert!(stdout.contains("name: fixed"), "{stdout}");
    assert!(!stdout.contains("broken"), "{stdout}");
    assert_eq!(node.status().await.unwrap().policy_version, Some(before));
    assert!(node.check("fixed", "k", None).await.decided().allowed);
    let err = node.check("broken", "k", None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_invalid_policy_exits_with_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = bad_policy("5", "3 fortnights");
    let lines = [line_of(&text, "name: broken"), line_of(&text, "fortnights")];
    let mut node = TestNode::spawn(
        1,
        dir.path(),
        &NodeOptions {
            policy: Some(text),
            ..NodeOptions::default()
        },
        None,
    )
    .unwrap();
    let status = node.wait_exit(Duration::from_secs(20)).await.unwrap();
    let stderr = node.stderr();
    assert!(!status.success(), "serve must refuse the policy: {stderr}");
    assert_names_a_line(&stderr, lines);
    assert!(
        stderr.contains("window") && stderr.contains("fortnights"),
        "gives the reason: {stderr}"
    );
}
