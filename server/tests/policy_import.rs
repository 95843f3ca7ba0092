//! Imported policies through a real in-process node: `quorate policy apply` (the CLI's
//! code) with an envoyproxy/ratelimit directory and a Limitador file, decisions over real
//! Envoy RLS gRPC, and bad policies refused through the admin API with file, line and
//! reason while the previous policy stays live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use quorate_server::cli::{AdminTarget, Output, PolicyCommand};
use quorate_server::ops;
use quorate_server::policy::load::load_path;
use serde_json::Value;
use support::{call, call_one, descriptor, request, TestNode};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn target(node: &TestNode) -> AdminTarget {
    AdminTarget {
        endpoints: vec![format!("http://{}", node.http)],
        admin_token_file: Some(node.admin_token_file()),
        tls: Default::default(),
    }
}

async fn apply(node: &TestNode, path: PathBuf) -> anyhow::Result<()> {
    ops::policy(
        PolicyCommand::Apply {
            file: path,
            format: "auto".into(),
            target: target(node),
        },
        Output::Human,
    )
    .await
    .map(drop)
    .map_err(|f| f.error)
}

async fn live(node: &TestNode) -> Value {
    reqwest::Client::new()
        .get(format!("http://{}/admin/v1/policy", node.http))
        .bearer_auth(
            std::fs::read_to_string(node.admin_token_file())
                .unwrap()
                .trim(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn imported_policies_decide_and_bad_ones_leave_the_live_policy_alone() {
    let node = TestNode::start("limits: []\n").await;
    let mut rls = node.rls().await;

    // An envoyproxy/ratelimit directory, applied as the CLI does.
    apply(&node, repo("examples/envoy-ratelimit"))
        .await
        .unwrap();
    let envoy = live(&node).await;
    assert_eq!(envoy["format"], "envoy_ratelimit");
    let envoy_version = envoy["version"].as_u64().unwrap();
    node.wait_for_policy_version(envoy_version).await;
    // rl: 3 per minute for 10.0.0.1 (key + value beats key only).
    for _ in 0..3 {
        let r = call_one(&mut rls, "rl", &[("remote_address", "10.0.0.1")]).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let r = call_one(&mut rls, "rl", &[("remote_address", "10.0.0.1")]).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);

    // A bad directory through the admin API: 422 naming the file and line.
    let bad = load_path(&repo("server/tests/policy_corpus/e_dir_bad_file"), None).unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("http://{}/admin/v1/policy", node.http))
        .bearer_auth(
            std::fs::read_to_string(node.admin_token_file())
                .unwrap()
                .trim(),
        )
        .json(&serde_json::json!({"format": bad.format.as_str(), "source": bad.text}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["line"], 8, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("file b_bad.yaml, line 8:"), "{error}");

    // A bad Limitador file through the CLI: refused with line and construct.
    let err = apply(&node, repo("server/tests/policy_corpus/l_or.yaml"))
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("line 6"), "{message}");
    assert!(message.contains("`||` is not supported"), "{message}");
    assert!(
        message.contains("the live policy is unchanged"),
        "{message}"
    );

    let after = live(&node).await;
    assert_eq!(after["version"].as_u64(), Some(envoy_version));
    assert_eq!(after["source"], envoy["source"]);
    let r = call_one(&mut rls, "rl", &[("remote_address", "10.0.0.1")]).await;
    assert_eq!(
        r.overall_code,
        Code::OverLimit as i32,
        "old counters, old policy"
    );

    // A Limitador file: conditional limits, every applying limit counted.
    apply(&node, repo("examples/limitador-limits.yaml"))
        .await
        .unwrap();
    let limitador = live(&node).await;
    assert_eq!(limitador["format"], "limitador");
    node.wait_for_policy_version(limitador["version"].as_u64().unwrap())
        .await;
    let post = || {
        request(
            "toystore",
            vec![descriptor(&[("req.method", "POST"), ("user_id", "alice")])],
            0,
        )
    };
    for remaining in (0..5).rev() {
        let r = call(&mut rls, post()).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        // Two limits apply (writes 5/min, all 100/min); the status shows the tighter.
        let status = &r.statuses[0];
        assert_eq!(
            status.current_limit.as_ref().unwrap().name,
            "writes_per_user"
        );
        assert_eq!(status.limit_remaining, remaining);
    }
    let r = call(&mut rls, post()).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    // GETs are not writes: only per_user applies. It counted the five allowed POSTs; the
    // sixth, over writes_per_user, took nothing (all-or-nothing, as Limitador does too).
    let r = call_one(
        &mut rls,
        "toystore",
        &[("req.method", "GET"), ("user_id", "alice")],
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    let status = &r.statuses[0];
    assert_eq!(status.current_limit.as_ref().unwrap().name, "per_user");
    assert_eq!(status.limit_remaining, 100 - 6);
    // The banned user is refused outright.
    let r = call_one(&mut rls, "toystore", &[("user_id", "mallory")]).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
}
