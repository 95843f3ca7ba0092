//! envoyproxy/ratelimit conformance corpus: every case under
//! `tests/conformance/envoy-ratelimit/<case>/` is run against both `quorate policy test`'s
//! engine ([`simulate`], offline) and a live node over real gRPC (envoy-types' RLS client,
//! policy submitted through the admin API as `envoy_ratelimit`).
//!
//! A case is a config — `config.yaml`, or a `config/` directory of files loaded like
//! envoyproxy/ratelimit's runtime directory — and either `refused.txt` (the config must be
//! refused: `LOCATION: reason words`, e.g. `line 9: should not have an empty replaces
//! entry`) or `requests.txt`, a table of requests sent in order with their expected answer:
//!
//! ```text
//! # comment
//! [Nx ]key=value, key=value | key=value => STATUS STATUS [overall=OK|OVER_LIMIT] [meta=JSON]
//! ```
//!
//! One `STATUS` per descriptor: `OK` or `OVER`, then optionally `:N/unit` (the
//! `current_limit`; none means no limit attached), `~R` (`limit_remaining`), `#name` (the
//! limit's name) and `@metric` (the metric name, envoyproxy/ratelimit's stats key; checked
//! against the planner the server uses). A descriptor entry `%limit=N/unit` is Envoy's
//! per-descriptor limit override. `Nx` repeats a request N times; `~R` is checked on the
//! last. `meta=` is the `metadata` member of the response's `dynamic_metadata` (`null`:
//! none). `overall` defaults to OVER_LIMIT iff a status is OVER.
//!
//! Adding a case is adding a directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use quorate_server::decide::simulate;
use quorate_server::policy::{load, PolicyFormat, PolicySet};
use serde_json::Value;
use support::*;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/envoy-ratelimit")
}

/// One expected descriptor status.
#[derive(Debug, Clone, Default)]
struct Status {
    over: bool,
    limit: Option<(u32, String)>,
    remaining: Option<u32>,
    name: Option<String>,
    metric: Option<String>,
}

#[derive(Debug, Clone)]
struct Descriptor {
    entries: Vec<(String, String)>,
    limit: Option<(u32, String)>,
}

#[derive(Debug, Clone)]
struct Row {
    line: usize,
    repeat: usize,
    descriptors: Vec<Descriptor>,
    statuses: Vec<Status>,
    overall: Code,
    /// `Some(None)`: no metadata expected; `Some(Some(v))`: exactly `v`.
    meta: Option<Option<Value>>,
}

#[derive(Debug)]
enum Expect {
    Refused { location: String, reason: String },
    Requests(Vec<Row>),
}

#[derive(Debug)]
struct Case {
    name: String,
    config: PathBuf,
    expect: Expect,
}

fn parse_limit(text: &str, at: &str) -> (u32, String) {
    let (n, unit) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("{at}: limit {text:?} is not N/unit"));
    (
        n.parse()
            .unwrap_or_else(|_| panic!("{at}: bad count {n:?}")),
        unit.to_ascii_lowercase(),
    )
}

fn parse_status(token: &str, at: &str) -> Status {
    let mut s = Status::default();
    let mut rest = token;
    if let Some((head, metric)) = rest.split_once('@') {
        s.metric = Some(metric.to_string());
        rest = head;
    }
    if let Some((head, name)) = rest.split_once('#') {
        s.name = Some(name.to_string());
        rest = head;
    }
    if let Some((head, remaining)) = rest.split_once('~') {
        s.remaining = Some(remaining.parse().unwrap_or_else(|_| panic!("{at}: bad ~")));
        rest = head;
    }
    if let Some((head, limit)) = rest.split_once(':') {
        s.limit = Some(parse_limit(limit, at));
        rest = head;
    }
    s.over = match rest {
        "OK" => false,
        "OVER" => true,
        other => panic!("{at}: status must start with OK or OVER, got {other:?}"),
    };
    s
}

fn parse_row(line: usize, text: &str, case: &str) -> Row {
    let at = format!("{case}/requests.txt:{line}");
    let (request, expect) = text
        .split_once("=>")
        .unwrap_or_else(|| panic!("{at}: no `=>`"));
    let mut request = request.trim();
    let mut repeat = 1;
    if let Some((n, rest)) = request.split_once("x ") {
        if let Ok(n) = n.parse() {
            repeat = n;
            request = rest.trim();
        }
    }
    let descriptors = request
        .split(" | ")
        .map(|d| {
            let mut entries = Vec::new();
            let mut limit = None;
            for e in d.split(", ") {
                let (k, v) = e
                    .trim()
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{at}: entry {e:?} is not key=value"));
                if k == "%limit" {
                    limit = Some(parse_limit(v, &at));
                } else {
                    entries.push((k.to_string(), v.to_string()));
                }
            }
            Descriptor { entries, limit }
        })
        .collect::<Vec<_>>();
    let (expect, meta) = match expect.split_once(" meta=") {
        Some((e, m)) => {
            let v: Value = serde_json::from_str(m.trim())
                .unwrap_or_else(|e| panic!("{at}: meta is not JSON: {e}"));
            (e, Some(if v.is_null() { None } else { Some(v) }))
        }
        None => (expect, None),
    };
    let mut statuses = Vec::new();
    let mut overall = None;
    for token in expect.split_whitespace() {
        match token.strip_prefix("overall=") {
            Some("OK") => overall = Some(Code::Ok),
            Some("OVER_LIMIT") => overall = Some(Code::OverLimit),
            Some(other) => panic!("{at}: overall={other}?"),
            None => statuses.push(parse_status(token, &at)),
        }
    }
    assert_eq!(
        statuses.len(),
        descriptors.len(),
        "{at}: one status per descriptor"
    );
    let any_over = statuses.iter().any(|s| s.over);
    Row {
        line,
        repeat,
        descriptors,
        statuses,
        overall: overall.unwrap_or(if any_over { Code::OverLimit } else { Code::Ok }),
        meta,
    }
}

fn load_cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let config = if dir.join("config").is_dir() {
                dir.join("config")
            } else {
                dir.join("config.yaml")
            };
            assert!(config.exists(), "{name}: no config.yaml or config/");
            let expect = if let Ok(text) = std::fs::read_to_string(dir.join("refused.txt")) {
                let line = text
                    .lines()
                    .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .unwrap_or_else(|| panic!("{name}: refused.txt is empty"));
                let (location, reason) = line
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("{name}: refused.txt is LOCATION: reason"));
                Expect::Refused {
                    location: location.to_string(),
                    reason: reason.trim().to_string(),
                }
            } else {
                let text = std::fs::read_to_string(dir.join("requests.txt"))
                    .unwrap_or_else(|_| panic!("{name}: no requests.txt or refused.txt"));
                let rows = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .map(|(i, l)| parse_row(i + 1, l, &name))
                    .collect::<Vec<_>>();
                assert!(!rows.is_empty(), "{name}: requests.txt has no rows");
                Expect::Requests(rows)
            };
            Case {
                name,
                config,
                expect,
            }
        })
        .collect()
}

fn pb_unit(unit: &str) -> RateLimitUnit {
    RateLimitUnit::from_str_name(&unit.to_ascii_uppercase())
        .unwrap_or_else(|| panic!("unknown unit {unit:?}"))
}

fn request(domain: &str, row: &Row) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: row
            .descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                limit: d.limit.as_ref().map(|(n, unit)| RateLimitOverride {
                    requests_per_unit: *n,
                    unit: pb_unit(unit) as i32,
                }),
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// One descriptor status as answered.
#[derive(Debug)]
struct Got {
    over: bool,
    limit: Option<(u32, String)>,
    remaining: u32,
    name: Option<String>,
}

/// What one answer said, engine-independent.
#[derive(Debug)]
struct Answer {
    overall: Code,
    statuses: Vec<Got>,
    metrics: Vec<Option<String>>,
    meta: Option<Value>,
}

fn unit_name(unit: i32) -> String {
    Unit::try_from(unit)
        .map(|u| u.as_str_name().to_ascii_lowercase())
        .unwrap_or_else(|_| unit.to_string())
}

/// Compares an answer with a row; the first difference, or `None`.
fn differs(row: &Row, answer: &Answer, last: bool, check_metric: bool) -> Option<String> {
    if answer.overall != row.overall {
        return Some(format!(
            "overall {:?}, expected {:?}",
            answer.overall, row.overall
        ));
    }
    for (i, (want, got)) in row.statuses.iter().zip(&answer.statuses).enumerate() {
        let Got {
            over,
            limit,
            remaining,
            name,
        } = got;
        if want.over != *over {
            return Some(format!(
                "descriptors[{i}]: over={over}, expected {}",
                want.over
            ));
        }
        if want.limit != *limit {
            return Some(format!(
                "descriptors[{i}]: current_limit {limit:?}, expected {:?}",
                want.limit
            ));
        }
        if let (Some(r), true) = (want.remaining, last) {
            if r != *remaining {
                return Some(format!(
                    "descriptors[{i}]: limit_remaining {remaining}, expected {r}"
                ));
            }
        }
        if want.name.is_some() && want.name != *name {
            return Some(format!(
                "descriptors[{i}]: limit name {name:?}, expected {:?}",
                want.name
            ));
        }
        if check_metric && want.metric.is_some() && want.metric != answer.metrics[i] {
            return Some(format!(
                "descriptors[{i}]: metric {:?}, expected {:?}",
                answer.metrics[i], want.metric
            ));
        }
    }
    if let Some(meta) = &row.meta {
        if *meta != answer.meta {
            return Some(format!(
                "dynamic metadata {:?}, expected {meta:?}",
                answer.meta
            ));
        }
    }
    None
}

fn load(case: &Case) -> Result<(String, PolicySet), quorate_server::policy::PolicyError> {
    let source = load::load_path(&case.config, Some(PolicyFormat::EnvoyRatelimit))?;
    let policy = PolicySet::compile(&source)?;
    Ok((source.text, policy))
}

fn domain_of(policy: &PolicySet, case: &str) -> String {
    assert_eq!(policy.domains.len(), 1, "{case}: one domain per case");
    policy.domains.keys().next().unwrap().clone()
}

fn check_refusal(case: &str, message: &str, location: &str, reason: &str) -> Option<String> {
    (!(message.starts_with(&format!("{location}: ")) && message.contains(reason)))
        .then(|| format!("{case}: refused with {message:?}, expected {location:?} and {reason:?}"))
}

#[test]
fn corpus_through_policy_test_engine() {
    let cases = load_cases();
    assert!(cases.len() >= 40, "the corpus lost cases: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        match (&case.expect, load(case)) {
            (Expect::Refused { location, reason }, Err(e)) => {
                failures.extend(check_refusal(&case.name, &e.to_string(), location, reason));
            }
            (Expect::Refused { .. }, Ok(_)) => {
                failures.push(format!("{}: accepted, expected a refusal", case.name))
            }
            (Expect::Requests(_), Err(e)) => failures.push(format!("{}: refused: {e}", case.name)),
            (Expect::Requests(rows), Ok((_, policy))) => {
                // One run per case: its rows share counters, as on a live node.
                let domain = domain_of(&policy, &case.name);
                let mut samples = Vec::new();
                for row in rows {
                    let sample = quorate_server::grpc::rls::validate(request(&domain, row))
                        .unwrap_or_else(|e| panic!("{}:{}: {e}", case.name, row.line));
                    samples.extend(std::iter::repeat_n(sample, row.repeat));
                }
                let reports = simulate::simulate(&policy, &samples);
                let mut reports = reports.iter();
                'rows: for row in rows {
                    for n in 0..row.repeat {
                        let report = reports.next().unwrap();
                        let answer = sim_answer(report);
                        if let Some(d) = differs(row, &answer, n + 1 == row.repeat, true) {
                            failures.push(format!("{}:{} (policy test): {d}", case.name, row.line));
                            break 'rows;
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn sim_answer(report: &simulate::SampleReport) -> Answer {
    Answer {
        overall: if report.overall_code == "OVER_LIMIT" {
            Code::OverLimit
        } else {
            Code::Ok
        },
        statuses: report
            .descriptors
            .iter()
            .map(|d| {
                let s = &d.status;
                Got {
                    over: s.code == "OVER_LIMIT",
                    limit: s
                        .requests_per_unit
                        .map(|n| (n, s.unit.clone().unwrap_or_default().to_ascii_lowercase())),
                    remaining: s.limit_remaining,
                    name: s.limit_name.clone(),
                }
            })
            .collect(),
        metrics: report
            .descriptors
            .iter()
            .map(|d| d.limits.first().map(|l| l.metric.clone()))
            .collect(),
        meta: report
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.get("metadata").cloned()),
    }
}

/// The same corpus against a live node over RLS, the config submitted through the admin
/// API in the `envoy_ratelimit` format. One node serves every case (starting one per case
/// is slow on a loaded machine); each accepted case gets its own domain — the config's
/// `domain:` with a `-caseN` suffix — so its counters start at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_through_a_live_node_over_rls() {
    let cases = load_cases();
    let http = reqwest::Client::new();
    let node = TestNode::start_with(None).await;
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let mut source = load::load_path(&case.config, Some(PolicyFormat::EnvoyRatelimit)).unwrap();
        let suffix = format!("-case{index}");
        if matches!(case.expect, Expect::Requests(_)) {
            source.text = source
                .text
                .lines()
                .map(|l| match l.strip_prefix("domain: ") {
                    Some(d) => format!("domain: {}{suffix}", d.trim()),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        let put = node
            .try_put_policy(&http, "envoy_ratelimit", &source.text)
            .await;
        match (&case.expect, put) {
            (Expect::Refused { location, reason }, Err((status, message))) => {
                if status != 422 {
                    failures.push(format!("{}: refused with HTTP {status}", case.name));
                }
                failures.extend(check_refusal(&case.name, &message, location, reason));
            }
            (Expect::Refused { .. }, Ok(_)) => {
                failures.push(format!("{}: accepted, expected a refusal", case.name))
            }
            (Expect::Requests(_), Err((status, message))) => {
                failures.push(format!("{}: refused ({status}): {message}", case.name))
            }
            (Expect::Requests(rows), Ok(version)) => {
                node.wait_for_policy_version(version).await;
                let policy = PolicySet::compile(&source).unwrap();
                let domain = domain_of(&policy, &case.name);
                let original = domain.trim_end_matches(suffix.as_str());
                let mut rls = node.rls().await;
                'rows: for row in rows {
                    for n in 0..row.repeat {
                        let resp = call(&mut rls, request(&domain, row)).await;
                        let answer = Answer {
                            overall: Code::try_from(resp.overall_code).unwrap(),
                            statuses: resp
                                .statuses
                                .iter()
                                .map(|s| Got {
                                    over: s.code == Code::OverLimit as i32,
                                    limit: s
                                        .current_limit
                                        .as_ref()
                                        .map(|l| (l.requests_per_unit, unit_name(l.unit))),
                                    remaining: s.limit_remaining,
                                    name: s.current_limit.as_ref().map(|l| l.name.clone()),
                                })
                                .collect(),
                            metrics: vec![None; resp.statuses.len()],
                            meta: resp
                                .dynamic_metadata
                                .as_ref()
                                .map(simulate::struct_json)
                                .and_then(|m| m.get("metadata").cloned()),
                        };
                        let mut row = row.clone();
                        for s in &mut row.statuses {
                            if let Some(name) = &mut s.name {
                                if let Some(rest) = name.strip_prefix(&format!("{original}/")) {
                                    *name = format!("{domain}/{rest}");
                                }
                            }
                        }
                        if let Some(d) = differs(&row, &answer, n + 1 == row.repeat, false) {
                            failures.push(format!("{}:{} (live RLS): {d}", case.name, row.line));
                            break 'rows;
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn policy_test_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quorate"))
        .arg("policy")
        .arg("test")
        .args(args)
        .output()
        .unwrap()
}

/// `quorate policy test` on an envoyproxy/ratelimit file: deliberate differences are
/// printed as warnings on load, the dynamic metadata Envoy would get is shown, and a
/// refused config names its line and upstream's reason.
#[test]
fn policy_test_warns_about_differences_and_refuses_with_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rl.yaml");
    std::fs::write(
        &config,
        "domain: rl\ndescriptors:\n  - key: user\n    rate_limit: {name: per_user, unit: hour, requests_per_unit: 2, replaces: [{name: blocked}]}\n    metadata: {tier: gold}\n  - key: ban\n    rate_limit: {name: blocked, unit: hour, requests_per_unit: 0}\n",
    )
    .unwrap();
    let out = policy_test_cli(&[
        "-f",
        config.to_str().unwrap(),
        "--request",
        r#"{"domain":"rl","descriptors":[[["user","bob"]]]}"#,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("warning: rl/user: replaces \"blocked\"")
            && stdout.contains("warning: rl/user: metadata is returned"),
        "{stdout}"
    );
    assert!(stdout.contains("dynamic_metadata: {"), "{stdout}");
    assert!(stdout.contains("\"tier\":\"gold\""), "{stdout}");
    assert!(stdout.contains("metric: rl.user"), "{stdout}");

    let refused = corpus_dir().join("replaces-self/config.yaml");
    let out = policy_test_cli(&["-f", refused.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 8: ")
            && stderr.contains("replaces should not contain name of same descriptor"),
        "{stderr}"
    );
}
