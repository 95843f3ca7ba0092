//! The dashboard's HTTP endpoints on a real node: JSON shapes after known traffic, the
//! admin token on operations, the bounds every endpoint keeps against a hostile client
//! (body size, top-N, SSE streams), explain at cost 0, and the Prometheus exposition
//! (strictly parsed) matching the traffic sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use quorate_e2e::api::check;
use quorate_e2e::{policy, Cluster, NodeOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-api-test-token";
const LIMIT: u64 = 5;
/// From `MAX_STREAMS` in server/src/dashboard/api.rs.
const MAX_STREAMS: usize = 32;

async fn node() -> Cluster {
    Cluster::single(NodeOptions {
        policy: Some(policy(&[("fixed", "fixed_window", LIMIT, "strict")])),
        admin_token: Some(TOKEN.into()),
        ..NodeOptions::default()
    })
    .await
    .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let r = http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(
    addr: SocketAddr,
    path: &str,
    body: Value,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut r = http().post(format!("http://{addr}{path}")).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Sums one outcome of one surface over the whole traffic history.
fn total(traffic: &Value, surface: &str, outcome: &str) -> u64 {
    let k = traffic["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o == outcome)
        .unwrap();
    traffic["surfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["surface"] == surface)
        .unwrap()["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["counts"][k].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn endpoints_show_known_traffic_and_keep_their_bounds() {
    let cluster = node().await;
    let n = cluster.node(1);
    let (addr, grpc) = (n.http, n.grpc);

    // Known traffic: LIMIT + 3 hits on one key (LIMIT allowed, 3 denied), 2 on another.
    let mut client = quorate_e2e::api::client(grpc);
    for _ in 0..LIMIT + 3 {
        check(&mut client, "fixed", "hot-user", None).await.ok();
    }
    for _ in 0..2 {
        check(&mut client, "fixed", "cold-user", None).await.ok();
    }
    let (allowed, denied) = (LIMIT + 2, 3);

    // Traffic: the sampler closes a second once a second.
    let traffic = quorate_e2e::eventually(Duration::from_secs(10), "traffic sampled", || async {
        let (_, t) = get(addr, "/dashboard/api/traffic").await;
        (total(&t, "quorate_v1", "allowed") == allowed).then_some(t)
    })
    .await
    .unwrap();
    assert_eq!(total(&traffic, "quorate_v1", "denied"), denied);
    assert_eq!(total(&traffic, "rls", "allowed"), 0);
    assert_eq!(
        traffic["outcomes"],
        json!(["allowed", "denied", "shadow", "error", "unmatched"])
    );
    for s in traffic["surfaces"].as_array().unwrap() {
        assert!(s["seconds"].as_array().unwrap().len() <= 900);
    }
    let fixed = traffic["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "fixed")
        .expect("per-limit series");
    let sums = fixed["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(a, d), s| {
            (a + s[0].as_u64().unwrap(), d + s[1].as_u64().unwrap())
        });
    assert_eq!(sums, (allowed, denied));

    // Hot keys: hits and denials, with the counter's state; `top` is capped.
    let (status, hot) = get(addr, "/dashboard/api/hotkeys?top=100000").await;
    assert_eq!(status, StatusCode::OK);
    let first = &hot["by_hits"][0];
    assert_eq!(first["key"], "hot-user");
    assert_eq!(first["limit"], "fixed");
    assert_eq!(first["count"], LIMIT + 3);
    assert_eq!(first["remaining"], 0);
    assert_eq!(hot["by_denials"][0]["key"], "hot-user");
    assert_eq!(hot["by_denials"][0]["count"], denied);
    assert!(hot["by_hits"].as_array().unwrap().len() <= 50);

    // Cluster: one member, the leader, reachable, with its own numbers.
    let (status, c) = get(addr, "/dashboard/api/cluster").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["this_node"], 1);
    assert_eq!(c["leader"], 1);
    let m = &c["members"][0];
    assert_eq!(
        (
            m["id"].as_u64(),
            m["leader"].as_bool(),
            m["reachable"].as_bool()
        ),
        (Some(1), Some(true), Some(true))
    );
    assert_eq!(m["info"]["state"], "Leader");
    assert!(m["info"]["data_bytes"].as_u64().unwrap() > 0);
    assert!(m["info"]["version"].is_string());
    assert!(c["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "leader"));

    // Policy: live version, how, tree and limits, history, diff.
    let (_, p) = get(addr, "/dashboard/api/policy").await;
    let v1 = p["version"].as_u64().unwrap();
    assert_eq!(p["how"], "file");
    assert_eq!(p["tree"]["limits"][0]["name"], "fixed");
    assert_eq!(p["limits"][0]["requests"], LIMIT);
    let source = p["source"].as_str().unwrap().to_string();
    let changed = source.replace(&format!("limit: {LIMIT}"), "limit: 7");
    let (status, put) = {
        let r = http()
            .put(format!("http://{addr}/admin/v1/policy"))
            .bearer_auth(TOKEN)
            .json(&json!({"format": "quorate", "source": changed}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK, "{put}");
    let v2 = put["version"].as_u64().unwrap();
    let (_, p) = get(addr, "/dashboard/api/policy").await;
    assert_eq!(
        (p["version"].as_u64(), p["how"].as_str()),
        (Some(v2), Some("admin"))
    );
    let (_, history) = get(addr, "/dashboard/api/policy/history").await;
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.contains(&v1) && versions.contains(&v2),
        "{history}"
    );
    let (status, d) = get(
        addr,
        &format!("/dashboard/api/policy/diff?from={v1}&to={v2}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let changes: Vec<(String, String)> = d["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["op"] != "=")
        .map(|l| {
            (
                l["op"].as_str().unwrap().into(),
                l["text"].as_str().unwrap().trim().into(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("-".into(), format!("limit: {LIMIT}")),
            ("+".to_string(), "limit: 7".to_string())
        ]
    );
    let (status, _) = get(addr, "/dashboard/api/policy/diff?from=999999&to=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(addr, "/dashboard/api/policy/diff?from=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Operations need the token: the dashboard's dry run and the admin snapshot.
    let bad = json!({"source": "limits:\n  - name: x\n    limit: -1\n    window: 1s\n"});
    assert_eq!(
        post(addr, "/dashboard/api/policy/dry-run", bad.clone(), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(
            addr,
            "/dashboard/api/policy/dry-run",
            bad.clone(),
            Some("wrong")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, dry) = post(addr, "/dashboard/api/policy/dry-run", bad, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dry["valid"], false);
    assert_eq!(dry["error"]["line"], 3, "{dry}");
    let (_, dry) = post(
        addr,
        "/dashboard/api/policy/dry-run",
        json!({"source": source}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(dry["valid"], true, "{dry}");
    assert!(dry["diff"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["op"] == "+"));
    let (_, after) = get(addr, "/dashboard/api/policy").await;
    assert_eq!(
        after["version"].as_u64(),
        Some(v2),
        "a dry run applies nothing"
    );
    assert_eq!(
        post(addr, "/admin/v1/cluster/snapshot", json!({}), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, snap) = post(addr, "/admin/v1/cluster/snapshot", json!({}), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    assert!(snap["snapshot_index"].as_u64().unwrap() > 0);

    // Bodies: bad JSON is a 400, an oversized one a 413, and neither changes anything.
    assert_eq!(
        post(
            addr,
            "/dashboard/api/explain",
            json!({"kind": "nope"}),
            None
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let huge = json!({"kind": "quorate", "limit": "fixed", "key": "x".repeat(2 * 1024 * 1024)});
    assert_eq!(
        post(addr, "/dashboard/api/explain", huge, None).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // The page and its assets: same-origin CSP, no reference to another host.
    let page = http().get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/app.js"));
    for asset in ["/", "/dashboard/app.js", "/dashboard/app.css"] {
        let text = http()
            .get(format!("http://{addr}{asset}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{asset} names another origin"
        );
    }
}

#[tokio::test]
async fn explain_answers_from_live_counters_without_spending() {
    let cluster = node().await;
    let n = cluster.node(1);
    let mut client = quorate_e2e::api::client(n.grpc);
    for _ in 0..LIMIT - 1 {
        check(&mut client, "fixed", "k", None).await.unwrap();
    }
    let ask = json!({"kind": "quorate", "limit": "fixed", "key": "k"});
    for _ in 0..3 {
        let (status, v) = post(n.http, "/dashboard/api/explain", ask.clone(), None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(
            (v["allowed"].as_bool(), v["remaining"].as_u64()),
            (Some(true), Some(0)),
            "{v}"
        );
    }
    // Explaining spent nothing: exactly one real hit is left.
    assert!(
        check(&mut client, "fixed", "k", None)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !check(&mut client, "fixed", "k", None)
            .await
            .unwrap()
            .allowed
    );
    let (_, v) = post(n.http, "/dashboard/api/explain", ask, None).await;
    assert_eq!(v["allowed"], false);
    let (status, v) = post(
        n.http,
        "/dashboard/api/explain",
        json!({"kind": "quorate", "limit": "nope", "key": "k"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // HTTP: no route in this policy, and the default lets unmatched requests through.
    let (status, v) = post(
        n.http,
        "/dashboard/api/explain",
        json!({"kind": "http", "method": "GET", "host": "a", "path": "/x", "headers": [["x-api-key", "k"]]}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["answer"]["route"], Value::Null);
    // Explain requests are not traffic.
    let (_, t) = get(n.http, "/dashboard/api/traffic").await;
    assert_eq!(
        total(&t, "http_authz", "allowed") + total(&t, "http_authz", "unmatched"),
        0
    );
}

#[tokio::test]
async fn sse_pushes_every_second_and_caps_streams() {
    let cluster = node().await;
    let addr = cluster.node(1).http;
    let url = format!("http://{addr}/dashboard/api/events");
    let mut first = http().get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let started = std::time::Instant::now();
    while text.matches("event: tick").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(3), first.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let tick: Value = serde_json::from_str(data).unwrap();
    for key in ["traffic", "cluster", "hotkeys", "policy_version"] {
        assert!(tick.get(key).is_some(), "{key} missing from {tick}");
    }
    assert_eq!(
        tick["traffic"]["surfaces"][0]["seconds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // At most MAX_STREAMS at once; a slot frees when a viewer goes away.
    let mut open = vec![first];
    while open.len() < MAX_STREAMS {
        let r = http().get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    open.pop();
    quorate_e2e::eventually(Duration::from_secs(10), "a slot freed", || async {
        let r = http().get(&url).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await
    .unwrap();
}

// === the Prometheus exposition ===

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict parser of the text format (0.0.4): every line is a HELP, a TYPE or a sample;
/// names and labels are valid, label values properly escaped, values numbers, each TYPE
/// comes before its samples, histogram buckets are cumulative and end with `+Inf`.
/// Returns the samples and each family's type.
fn parse_exposition(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(valid_name(name), "{at}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail),
                        "{at}"
                    );
                    assert!(
                        types.insert(name.to_string(), tail.to_string()).is_none(),
                        "{at}: TYPE twice"
                    );
                }
                _ => panic!("{at}: unknown comment"),
            }
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{at}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{at}: bad value")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("{at}: unclosed labels"));
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(valid_name(&key), "{at}: label {key:?}");
                    assert_eq!(chars.next(), Some('"'), "{at}");
                    let mut v = String::new();
                    loop {
                        match chars
                            .next()
                            .unwrap_or_else(|| panic!("{at}: unterminated value"))
                        {
                            '\\' => match chars.next() {
                                Some('\\') => v.push('\\'),
                                Some('"') => v.push('"'),
                                Some('n') => v.push('\n'),
                                other => panic!("{at}: bad escape {other:?}"),
                            },
                            '"' => break,
                            '\n' => panic!("{at}: raw newline"),
                            c => v.push(c),
                        }
                    }
                    assert!(labels.insert(key, v).is_none(), "{at}: label twice");
                    match chars.next() {
                        None => break,
                        Some(',') => {}
                        other => panic!("{at}: expected , got {other:?}"),
                    }
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "{at}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{at}: sample before its TYPE");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets ending in +Inf equal to _count.
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let mut key_labels = s.labels.clone();
        let le = key_labels.remove("le").expect("bucket without le");
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        series
            .entry(format!("{}{key_labels:?}", s.name))
            .or_default()
            .push((le, s.value));
    }
    for (key, buckets) in &series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key}: not cumulative"
        );
        assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{key}: no +Inf");
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[tokio::test]
async fn metrics_parse_and_match_known_traffic() {
    let cluster = node().await;
    let n = cluster.node(1);
    let mut client = quorate_e2e::api::client(n.grpc);
    for _ in 0..LIMIT + 2 {
        check(&mut client, "fixed", "m", None).await.unwrap();
    }
    // An unknown limit: a quorate.v1 request answered NOT_FOUND.
    check(&mut client, "nope", "m", None).await.unwrap_err();
    let text = quorate_e2e::api::metrics(n.http).await.unwrap();
    let (samples, types) = parse_exposition(&text);

    // Conventions: `_total` exactly on counters.
    for (name, kind) in &types {
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
    }
    let expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        let got = value(&samples, name, labels);
        assert_eq!(got, Some(want), "{name}{labels:?}");
    };
    expect(
        "quorate_decisions_total",
        &[("outcome", "allowed")],
        LIMIT as f64,
    );
    expect("quorate_decisions_total", &[("outcome", "over_limit")], 2.0);
    expect(
        "quorate_decision_duration_seconds_count",
        &[("surface", "quorate_v1")],
        (LIMIT + 3) as f64,
    );
    expect("quorate_limit_value", &[("limit", "fixed")], LIMIT as f64);
    expect(
        "quorate_limit_window_seconds",
        &[("limit", "fixed")],
        365.0 * 86_400.0,
    );
    // `strict` hits leave through reservations, or (before this leader may reserve)
    // through hit batches: either way something was committed for them.
    let batches = value(&samples, "quorate_batch_hits_count", &[]).unwrap();
    let reserved = value(
        &samples,
        "quorate_reservations_total",
        &[("outcome", "granted")],
    )
    .unwrap_or(0.0);
    assert!(
        batches + reserved >= 1.0,
        "batches {batches}, reservations {reserved}"
    );
    assert!(value(&samples, "quorate_reserved_quota_total", &[]).unwrap() >= reserved);
    let families: BTreeSet<&str> = types.keys().map(String::as_str).collect();
    for needed in [
        "quorate_decision_duration_seconds",
        "quorate_batch_commit_duration_seconds",
        "quorate_limit_value",
        "quorate_counters",
        "quorate_raft_term",
    ] {
        assert!(families.contains(needed), "{needed} missing");
    }
}
