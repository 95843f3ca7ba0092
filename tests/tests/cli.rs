//! The `quorate` CLI as a script sees it: the real binary against a real node. Every
//! client command's `--output json` parses (serde_json) with its documented fields, and
//! each case ends with the exit code README and `--help` promise (0 allowed / ok, 1 denied,
//! 2 usage, 3 unavailable, 4 rejected, 5 unauthenticated). `QUORATE_ENDPOINTS` is honoured
//! with its first endpoint dead, and the bash completion script parses (`bash -n`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use quorate_e2e::node::free_addrs;
use quorate_e2e::{policy, NodeOptions, TestNode};
use serde_json::Value;

/// Environment variables the CLI reads; each run starts without them, so the caller's
/// shell cannot change a case.
const CLI_ENV: &[&str] = &[
    "QUORATE_ENDPOINTS",
    "QUORATE_NODE",
    "QUORATE_GRPC_URL",
    "QUORATE_OUTPUT",
    "QUORATE_ADMIN_TOKEN",
    "QUORATE_ADMIN_TOKEN_FILE",
    "QUORATE_CA_FILE",
    "QUORATE_CLIENT_CERT",
    "QUORATE_CLIENT_KEY",
];

/// What one CLI run ended with.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout as one JSON document; fails the test, showing both streams, if it is not.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `quorate ARGS` in `cwd` with only `env` of the CLI's variables set.
async fn cli(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(quorate_e2e::bin::quorate());
    command.args(args).current_dir(cwd);
    for name in CLI_ENV {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().await.unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An address nothing listens on: bound to find a free port, then released.
fn dead_addr() -> SocketAddr {
    free_addrs(1)[0]
}

async fn start_node(dir: &Path) -> TestNode {
    let options = NodeOptions {
        policy: Some(policy(&[
            ("open", "fixed_window", 1_000, "strict"),
            ("two", "fixed_window", 2, "strict"),
        ])),
        ..NodeOptions::default()
    };
    let mut node = TestNode::spawn(1, &dir.join("node"), &options, None).unwrap();
    if let Err(e) = node.wait_ready().await {
        panic!("{e:#}\n{}", node.logs(40));
    }
    node
}

/// A check on a command's JSON output: `Err` says what was expected.
type JsonCheck = fn(&Value) -> Result<(), String>;

/// One CLI invocation and what must come of it.
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Extra environment (beyond the admin token file every case gets).
    env: Vec<(&'static str, String)>,
    code: i32,
    /// Checks on stdout parsed as JSON (`None`: stdout is not checked as JSON).
    json: Option<JsonCheck>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn expect(ok: bool, what: &str, v: &Value) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected {what} in {v:#}"))
    }
}

fn error_kind(v: &Value, kind: &str, code: u64) -> Result<(), String> {
    expect(
        v["error"]["kind"] == kind
            && v["error"]["exit_code"] == code
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
        &format!("error kind {kind}, exit_code {code} and a message"),
        v,
    )
}

/// Every client command against one live node, in order (the `two` limit's hits and the
/// policy versions build on the cases before them).
#[tokio::test]
async fn client_commands_json_output_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let grpc = format!("http://{}", node.grpc);
    let http = node.http_url();
    let dead_grpc = format!("http://{}", dead_addr());
    let dead_http = format!("http://{}", dead_addr());
    let token_file = node.admin_token_file().display().to_string();
    let good_policy = dir.path().join("good.yaml");
    std::fs::write(
        &good_policy,
        policy(&[
            ("open", "fixed_window", 1_000, "strict"),
            ("two", "fixed_window", 2, "strict"),
            ("three", "fixed_window", 3, "strict"),
        ]),
    )
    .unwrap();
    let bad_policy = dir.path().join("bad.yaml");
    std::fs::write(&bad_policy, "limits:\n  - name: broken\n    limit: -1\n").unwrap();
    let wrong_token_file = dir.path().join("wrong-token");
    std::fs::write(&wrong_token_file, "wrong-token-0123456789abcdef\n").unwrap();
    let wrong_token = wrong_token_file.display().to_string();
    let good = good_policy.display().to_string();
    let bad = bad_policy.display().to_string();
    let json = "--output=json";

    let cases = vec![
        Case {
            name: "check allowed",
            args: args(&[
                "check",
                "--limit",
                "open",
                "--key",
                "k",
                json,
                "--endpoints",
                &grpc,
            ]),
            env: vec![],
            code: 0,
            json: Some(|v| {
                expect(
                    v["allowed"] == true
                        && v["limit"] == "open"
                        && v["key"] == "k"
                        && v["cost"] == 1
                        && v["limit_value"] == 1_000
                        && v["remaining"] == 999
                        && v["reset_after_ms"].is_u64()
                        && v["window_ms"].is_u64()
                        && v["retry_after_ms"].is_null()
                        && v["reason"].is_null(),
                    "an allowed decision with every documented field",
                    v,
                )
            }),
        },
        Case {
            name: "check allowed, human output",
            args: args(&["check", "--limit", "two", "--key", "k", "--grpc", &grpc]),
            env: vec![],
            code: 0,
            json: None,
        },
        Case {
            name: "check allowed, second of two",
            args: args(&[
                "check",
                "--limit",
                "two",
                "--key",
                "k",
                json,
                "--endpoints",
                &grpc,
            ]),
            env: vec![],
            code: 0,
            json: Some(|v| expect(v["allowed"] == true && v["remaining"] == 0, "last hit", v)),
        },
        Case {
            name: "check denied",
            args: args(&[
                "check",
                "--limit",
                "two",
                "--key",
                "k",
                json,
                "--endpoints",
                &grpc,
            ]),
            env: vec![],
            code: 1,
            json: Some(|v| {
                expect(
                    v["allowed"] == false
                        && v["reason"] == "over_limit"
                        && v["remaining"] == 0
                        && v["retry_after_ms"].is_u64(),
                    "an over-limit denial with retry_after_ms",
                    v,
                )
            }),
        },
        Case {
            name: "check unknown limit",
            args: args(&[
                "check",
                "--limit",
                "nope",
                "--key",
                "k",
                json,
                "--endpoints",
                &grpc,
            ]),
            env: vec![],
            code: 4,
            json: Some(|v| error_kind(v, "rejected", 4)),
        },
        Case {
            name: "check: QUORATE_ENDPOINTS, first endpoint dead",
            args: args(&["check", "--limit", "open", "--key", "env", json]),
            env: vec![("QUORATE_ENDPOINTS", format!("{dead_grpc},{grpc}"))],
            code: 0,
            json: Some(|v| expect(v["allowed"] == true, "allowed", v)),
        },
        Case {
            name: "check: nothing listening",
            args: args(&[
                "check",
                "--limit",
                "open",
                "--key",
                "k",
                json,
                "--timeout",
                "1s",
            ]),
            env: vec![("QUORATE_ENDPOINTS", dead_grpc.clone())],
            code: 3,
            json: Some(|v| error_kind(v, "unavailable", 3)),
        },
        Case {
            name: "check: missing --key is a usage error",
            args: args(&["check", "--limit", "open", "--endpoints", &grpc]),
            env: vec![],
            code: 2,
            json: None,
        },
        Case {
            name: "unknown --output is a usage error",
            args: args(&["check", "--limit", "open", "--key", "k", "--output", "yaml"]),
            env: vec![],
            code: 2,
            json: None,
        },
        Case {
            name: "cluster status",
            args: args(&["cluster", "status", json, "--endpoints", &http]),
            env: vec![],
            code: 0,
            json: Some(|v| {
                let members = v["members"].as_array().map_or(0, Vec::len);
                expect(
                    v["id"] == 1
                        && v["leader"] == 1
                        && v["term"].is_u64()
                        && members == 1
                        && v["members"][0]["voter"] == true
                        && v["members"][0]["grpc"].is_string(),
                    "node 1 leading a one-member cluster",
                    v,
                )
            }),
        },
        Case {
            name: "cluster status, human output",
            args: args(&["cluster", "status", "--node", &http]),
            env: vec![],
            code: 0,
            json: None,
        },
        Case {
            name: "cluster status: QUORATE_ENDPOINTS, first endpoint dead",
            args: args(&["cluster", "status", json]),
            env: vec![("QUORATE_ENDPOINTS", format!("{dead_http},{http}"))],
            code: 0,
            json: Some(|v| expect(v["leader"] == 1, "a leader", v)),
        },
        Case {
            name: "cluster status: nothing listening",
            args: args(&["cluster", "status", json, "--endpoints", &dead_http]),
            env: vec![],
            code: 3,
            json: Some(|v| error_kind(v, "unavailable", 3)),
        },
        Case {
            name: "cluster status: wrong admin token",
            args: args(&["cluster", "status", json, "--endpoints", &http]),
            env: vec![("QUORATE_ADMIN_TOKEN_FILE", wrong_token.clone())],
            code: 5,
            json: Some(|v| error_kind(v, "unauthenticated", 5)),
        },
        Case {
            name: "cluster init on an initialized node",
            args: args(&["cluster", "init", json, "--endpoints", &http]),
            env: vec![],
            code: 4,
            json: Some(|v| error_kind(v, "rejected", 4)),
        },
        Case {
            name: "cluster promote a member that is no learner",
            args: args(&[
                "cluster",
                "promote",
                "--id",
                "7",
                json,
                "--endpoints",
                &http,
            ]),
            env: vec![],
            code: 4,
            json: Some(|v| error_kind(v, "rejected", 4)),
        },
        Case {
            name: "policy apply",
            args: args(&["policy", "apply", "-f", &good, json, "--endpoints", &http]),
            env: vec![],
            code: 0,
            json: Some(|v| {
                expect(
                    v["version"].as_u64().is_some_and(|n| n >= 2),
                    "a version",
                    v,
                )
            }),
        },
        Case {
            name: "policy apply, invalid policy",
            args: args(&["policy", "apply", "-f", &bad, json, "--endpoints", &http]),
            env: vec![],
            code: 4,
            json: Some(|v| error_kind(v, "rejected", 4)),
        },
        Case {
            name: "policy apply, missing file",
            args: args(&["policy", "apply", "-f", "/nonexistent/p.yaml", json]),
            env: vec![("QUORATE_ENDPOINTS", http.clone())],
            code: 4,
            json: Some(|v| error_kind(v, "rejected", 4)),
        },
        Case {
            name: "policy get",
            args: args(&["policy", "get", json, "--endpoints", &http]),
            env: vec![],
            code: 0,
            json: Some(|v| {
                let limits = v["limits"].as_array().map_or(0, Vec::len);
                expect(
                    v["version"].is_u64() && v["source"].is_string() && limits == 3,
                    "the applied policy: version, source, three limits",
                    v,
                )
            }),
        },
        Case {
            name: "policy history",
            args: args(&["policy", "history", json, "--endpoints", &http]),
            env: vec![],
            code: 0,
            json: Some(|v| {
                let entries = v.as_array().map_or(0, Vec::len);
                expect(
                    entries >= 2 && v[0]["version"].is_u64() && v[0]["format"].is_string(),
                    "at least two versions",
                    v,
                )
            }),
        },
        Case {
            name: "policy rollback to version 1",
            args: args(&[
                "policy",
                "rollback",
                "--version",
                "1",
                json,
                "--endpoints",
                &http,
            ]),
            env: vec![],
            code: 0,
            json: Some(|v| expect(v["version"].is_u64(), "the new version", v)),
        },
        Case {
            name: "policy rollback to a version that never was",
            args: args(&[
                "policy",
                "rollback",
                "--version",
                "999",
                json,
                "--endpoints",
                &http,
            ]),
            env: vec![],
            code: 4,
            json: Some(|v| error_kind(v, "rejected", 4)),
        },
        Case {
            name: "policy test, valid",
            args: args(&["policy", "test", "-f", &good, json]),
            env: vec![],
            code: 0,
            json: Some(|v| expect(v["valid"] == true && v["limits"] == 3, "valid", v)),
        },
        Case {
            name: "policy test, invalid: one JSON document, exit 4",
            args: args(&["policy", "test", "-f", &bad, json]),
            env: vec![],
            code: 4,
            json: Some(|v| {
                expect(
                    v["valid"] == false && v["error"]["reason"].is_string(),
                    "invalid",
                    v,
                )
            }),
        },
    ];

    for case in cases {
        let mut env: Vec<(&str, &str)> = vec![("QUORATE_ADMIN_TOKEN_FILE", token_file.as_str())];
        env.extend(case.env.iter().map(|(k, v)| (*k, v.as_str())));
        let argv: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let run = cli(dir.path(), &env, &argv).await;
        assert_eq!(
            run.code,
            Some(case.code),
            "{}: exit code\nstdout:\n{}\nstderr:\n{}",
            case.name,
            run.stdout,
            run.stderr
        );
        if let Some(check) = case.json {
            if let Err(why) = check(&run.json()) {
                panic!("{}: {why}\nstderr:\n{}", case.name, run.stderr);
            }
        }
    }

    // After the rollback, version 1's policy (two limits) is live again.
    let run = cli(
        dir.path(),
        &[("QUORATE_ADMIN_TOKEN_FILE", token_file.as_str())],
        &["policy", "get", "--output", "json", "--endpoints", &http],
    )
    .await;
    assert_eq!(run.json()["limits"].as_array().map(Vec::len), Some(2));
}

/// Exit code 3 also when no endpoint is configured at all and the default address is
/// dead, and human output says why on stderr (never a JSON document on stdout).
#[tokio::test]
async fn unavailable_human_output_goes_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://{}", dead_addr());
    let run = cli(
        dir.path(),
        &[("QUORATE_ENDPOINTS", &dead)],
        &["check", "--limit", "l", "--key", "k", "--timeout", "500ms"],
    )
    .await;
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");
}

/// The completion scripts: bash's parses with `bash -n`; zsh and fish name the binary.
#[tokio::test]
async fn completions_are_valid_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let run = cli(dir.path(), &[], &["completions", "bash"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("_quorate"), "{}", run.stdout);
    let script = dir.path().join("quorate.bash");
    std::fs::write(&script, &run.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let run = cli(dir.path(), &[], &["completions", shell]).await;
        assert_eq!(run.code, Some(0), "{shell}: {run:?}");
        assert!(run.stdout.contains("quorate"), "{shell}: {}", run.stdout);
    }
    let run = cli(dir.path(), &[], &["completions", "tcsh"]).await;
    assert_eq!(
        run.code,
        Some(2),
        "an unknown shell is a usage error: {run:?}"
    );
}

/// `--help` documents the exit codes.
#[tokio::test]
async fn help_lists_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for argv in [
        &["--help"][..],
        &["check", "--help"],
        &["cluster", "--help"],
    ] {
        let run = cli(dir.path(), &[], argv).await;
        assert_eq!(run.code, Some(0), "{argv:?}: {run:?}");
        for needle in [
            "Exit codes",
            "1  denied",
            "3  unavailable",
            "5  unauthenticated",
        ] {
            assert!(
                run.stdout.contains(needle),
                "{argv:?} lacks {needle:?}:\n{}",
                run.stdout
            );
        }
    }
}

/// A member with no leader answers a write with 503 ("no leader elected yet"): nothing
/// was applied, so the CLI moves on to the next endpoint, and the write lands once.
#[tokio::test]
async fn admin_write_moves_past_a_member_without_a_leader() {
    let dir = tempfile::tempdir().unwrap();
    let live = start_node(dir.path()).await;
    let options = NodeOptions {
        join: true,
        ..NodeOptions::default()
    };
    let mut lonely = TestNode::spawn(2, &dir.path().join("lonely"), &options, None).unwrap();
    if let Err(e) = lonely.wait_up().await {
        panic!("{e:#}\n{}", lonely.logs(40));
    }
    let token_file = live.admin_token_file().display().to_string();
    let policy_file = dir.path().join("p.yaml");
    std::fs::write(
        &policy_file,
        policy(&[("only", "fixed_window", 5, "strict")]),
    )
    .unwrap();
    let policy_arg = policy_file.display().to_string();
    let env = [("QUORATE_ADMIN_TOKEN_FILE", token_file.as_str())];

    // Alone, the leaderless member refuses: unavailable.
    let alone = lonely.http_url();
    let run = cli(
        dir.path(),
        &env,
        &[
            "policy",
            "apply",
            "-f",
            &policy_arg,
            "--output",
            "json",
            "--endpoints",
            &alone,
        ],
    )
    .await;
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.json()["error"]["kind"], "unavailable", "{run:?}");

    // With the live node after it, the write goes there, once.
    let endpoints = format!("{alone},{}", live.http_url());
    let run = cli(
        dir.path(),
        &env,
        &[
            "policy",
            "apply",
            "-f",
            &policy_arg,
            "--output",
            "json",
            "--endpoints",
            &endpoints,
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let version = run.json()["version"].as_u64().unwrap();
    let run = cli(
        dir.path(),
        &env,
        &[
            "policy",
            "history",
            "--output",
            "json",
            "--endpoints",
            &live.http_url(),
        ],
    )
    .await;
    let versions: Vec<u64> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions.iter().max(), Some(&version), "{versions:?}");
    assert_eq!(
        versions.len(),
        2,
        "the startup policy and this one: {versions:?}"
    );
}
