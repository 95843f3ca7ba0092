//! Hot reload of `--policy FILE` against a real in-process node: in-place writes, atomic
//! renames and Kubernetes-style symlink swaps are all picked up; an invalid file is
//! refused and the previous policy stays live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use quorate_server::config::Config;
use serde_json::Value;

mod support;

fn policy(limit: u64) -> String {
    format!("limits:\n  - name: l\n    limit: {limit}\n    window: minute\n")
}

/// The admin token the test node is configured with.
const ADMIN_TOKEN: &str = "policy-reload-test-token";

struct Node {
    http: String,
    _node: support::RunningNode,
}

async fn start(policy_path: &Path, data: &Path) -> Node {
    let mut config = Config::single_node(data.to_path_buf());
    config.policy_file = Some(policy_path.to_path_buf());
    config.policy_watch_interval = Duration::from_millis(50);
    config.admin_token = Some(ADMIN_TOKEN.into());
    let node = support::start_node(config).await;
    Node {
        http: format!("http://{}", node.http),
        _node: node,
    }
}

async fn live(node: &Node) -> Option<(u64, String)> {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/admin/v1/policy", node.http))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((v["version"].as_u64()?, v["source"].as_str()?.to_string()))
}

/// Polls until the live policy's source is `expected`; returns its version.
async fn wait_for(node: &Node, expected: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((version, source)) = live(node).await {
            if source == expected {
                return version;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "policy never became live: {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_place_write_and_atomic_rename_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy(1)).unwrap();
    let node = start(&path, &dir.path().join("data")).await;
    let v1 = wait_for(&node, &policy(1)).await;

    std::fs::write(&path, policy(2)).unwrap();
    let v2 = wait_for(&node, &policy(2)).await;
    assert!(v2 > v1);

    let tmp = dir.path().join(".policy.yaml.tmp");
    std::fs::write(&tmp, policy(3)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let v3 = wait_for(&node, &policy(3)).await;
    assert!(v3 > v2);
}

#[cfg(unix)]
#[tokio::test]
async fn kubernetes_configmap_symlink_swap_is_applied() {
    use std::os::unix::fs::symlink;
    // The kubelet's layout: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/.
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(mount.join("..v1")).unwrap();
    std::fs::write(mount.join("..v1/policy.yaml"), policy(10)).unwrap();
    symlink("..v1", mount.join("..data")).unwrap();
    symlink("..data/policy.yaml", mount.join("policy.yaml")).unwrap();
    let node = start(&mount.join("policy.yaml"), &dir.path().join("data")).await;
    wait_for(&node, &policy(10)).await;

    // Swap: new dir, new symlink, atomic rename over ..data, old dir removed.
    std::fs::create_dir_all(mount.join("..v2")).unwrap();
    std::fs::write(mount.join("..v2/policy.yaml"), policy(20)).unwrap();
    symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..v1")).unwrap();
    wait_for(&node, &policy(20)).await;
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_previous_policy_stays_live() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy(5)).unwrap();
    let node = start(&path, &dir.path().join("data")).await;
    let v1 = wait_for(&node, &policy(5)).await;

    std::fs::write(
        &path,
        "limits:\n  - name: l\n    limit: 0\n    window: minute\n",
    )
    .unwrap();
    // The watcher re-reads every 50 ms; give it many intervals to (wrongly) apply it.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(live(&node).await, Some((v1, policy(5))));
    }
    let metrics = reqwest::get(format!("{}/metrics", node.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("quorate_policy_reloads_total{result=\"refused\"} 1"),
        "{metrics}"
    );

    std::fs::write(&path, policy(6)).unwrap();
    assert!(wait_for(&node, &policy(6)).await > v1);
}
