//! The Rust SDK (`quorate-client`) against real `quorate` processes: it keeps deciding
//! through a leader SIGKILL with every call bounded by its deadline, at-most-once never
//! counts a hit twice (checked afterwards with cost-0 peeks), and its tower layer in a
//! real axum app answers a real HTTP client with draft-10 rate-limit headers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorate_client::layer::{ClientIp, QuorateLayer};
use quorate_client::{Client, Decision, Hit, RetryPolicy};
use quorate_e2e::{api, policy, Cluster, NodeOptions};

/// Large enough that the limit never denies during a test: we count, not limit.
const L: u64 = 1_000_000;
/// Each call's deadline.
const DEADLINE: Duration = Duration::from_secs(2);
/// What a call may take beyond its deadline on this shared, slow CPU before we call it
/// a hang.
const SLACK: Duration = Duration::from_secs(1);
const WORKERS: usize = 4;

async fn three_nodes() -> Cluster {
    Cluster::three(NodeOptions {
        policy: Some(policy(&[("big", "fixed_window", L, "exact")])),
        ..NodeOptions::default()
    })
    .await
    .unwrap()
}

async fn sdk(cluster: &Cluster, retry: RetryPolicy) -> Client {
    Client::builder()
        .endpoints(cluster.nodes().iter().map(|n| format!("http://{}", n.grpc)))
        .timeout(DEADLINE)
        .retry_policy(retry)
        .connect()
        .await
        .unwrap()
}

/// What one hit's call returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// `is_unknown_outcome`: counted once or not at all.
    Unknown,
    /// Any other error: certainly not counted.
    NotCounted,
}

/// Workers sending hits of cost 1, each on a key of its own, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    successes: Arc<AtomicU64>,
    outcomes: Arc<Mutex<HashMap<String, Outcome>>>,
    slowest: Arc<Mutex<Duration>>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Client) -> Load {
        let load = Load {
            stop: Arc::default(),
            successes: Arc::default(),
            outcomes: Arc::default(),
            slowest: Arc::default(),
            errors: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..WORKERS)
            .map(|w| {
                let client = client.clone();
                let (stop, successes, outcomes, slowest, errors) = (
                    Arc::clone(&load.stop),
                    Arc::clone(&load.successes),
                    Arc::clone(&load.outcomes),
                    Arc::clone(&load.slowest),
                    Arc::clone(&load.errors),
                );
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("w{w}-{n}");
                        n += 1;
                        let started = Instant::now();
                        let result = client.check("big", &key, 1).await;
                        let took = started.elapsed();
                        {
                            let mut s = slowest.lock().unwrap();
                            *s = (*s).max(took);
                        }
                        let outcome = match result {
                            Ok(d) => {
                                assert!(d.allowed, "{d:?}");
                                successes.fetch_add(1, Ordering::SeqCst);
                                Outcome::Allowed
                            }
                            Err(e) => {
                                errors.lock().unwrap().push(e.to_string());
                                assert!(
                                    e.is_unavailable()
                                        || e.is_deadline_exceeded()
                                        || e.is_unknown_outcome(),
                                    "unexpected error kind: {e}"
                                );
                                if e.is_unknown_outcome() {
                                    Outcome::Unknown
                                } else {
                                    Outcome::NotCounted
                                }
                            }
                        };
                        outcomes.lock().unwrap().insert(key, outcome);
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    async fn wait_successes(&self, n: u64, within: Duration) {
        let successes = Arc::clone(&self.successes);
        api::eventually(within, "calls succeed", || {
            let s = successes.load(Ordering::SeqCst);
            async move { (s >= n).then_some(()) }
        })
        .await
        .unwrap();
    }

    async fn stop(self) -> (HashMap<String, Outcome>, Duration, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let outcomes = self.outcomes.lock().unwrap().clone();
        let slowest = *self.slowest.lock().unwrap();
        let errors = self.errors.lock().unwrap().clone();
        (outcomes, slowest, errors)
    }
}

/// Runs the load on `client`, SIGKILLs the leader mid-run, and returns once the
/// survivors have decided 50 more calls.
async fn load_through_a_leader_kill(
    cluster: &mut Cluster,
    client: &Client,
) -> (HashMap<String, Outcome>, Duration, Vec<String>) {
    let leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();
    let load = Load::start(client);
    load.wait_successes(50, Duration::from_secs(10)).await;
    cluster.kill(leader);
    let at_kill = load.successes.load(Ordering::SeqCst);
    load.wait_successes(at_kill + 50, Duration::from_secs(20))
        .await;
    load.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_deciding_through_a_leader_kill_and_none_outlives_its_deadline() {
    let mut cluster = three_nodes().await;
    let client = sdk(&cluster, RetryPolicy::AtLeastOnce).await;
    let (outcomes, slowest, errors) = load_through_a_leader_kill(&mut cluster, &client).await;
    assert!(
        slowest <= DEADLINE + SLACK,
        "a call took {slowest:?} (deadline {DEADLINE:?})"
    );
    let allowed = outcomes
        .values()
        .filter(|o| **o == Outcome::Allowed)
        .count();
    eprintln!(
        "at least once: {} calls, {allowed} allowed, slowest {slowest:?}, errors: {:?}",
        outcomes.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    // At least once resends through the election: no call reports an unknown outcome.
    assert!(outcomes.values().all(|o| *o != Outcome::Unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_never_counts_a_hit_twice_across_a_leader_kill() {
    let mut cluster = three_nodes().await;
    let client = sdk(&cluster, RetryPolicy::AtMostOnce).await;
    let (outcomes, slowest, errors) = load_through_a_leader_kill(&mut cluster, &client).await;
    assert!(
        slowest <= DEADLINE + SLACK,
        "a call took {slowest:?} (deadline {DEADLINE:?})"
    );

    // Read every key's counter with cost-0 peeks through the surviving cluster.
    let reader = sdk(&cluster, RetryPolicy::AtLeastOnce).await;
    let keys: Vec<&String> = outcomes.keys().collect();
    let mut counted = HashMap::new();
    for chunk in keys.chunks(256) {
        let hits: Vec<Hit> = chunk.iter().map(|k| Hit::new("big", *k, 0)).collect();
        let decisions = reader.check_all(&hits).await.unwrap();
        for (key, d) in chunk.iter().zip(decisions) {
            counted.insert((*key).clone(), L - d.remaining);
        }
    }
    let mut unknown = 0;
    for (key, outcome) in &outcomes {
        let n = counted[key];
        match outcome {
            Outcome::Allowed => assert_eq!(n, 1, "{key}: allowed once, counted {n}"),
            Outcome::NotCounted => assert_eq!(n, 0, "{key}: reported not counted, counted {n}"),
            Outcome::Unknown => {
                unknown += 1;
                assert!(n <= 1, "{key}: unknown outcome, counted {n}");
            }
        }
    }
    eprintln!(
        "at most once: {} hits, {unknown} unknown outcomes, slowest {slowest:?}, errors: {:?}",
        outcomes.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
}

// ---- the tower layer in a real axum app ----

/// One list member: the name and its integer parameters.
type SfMember = (String, HashMap<String, u64>);

/// A draft-10 `RateLimit` / `RateLimit-Policy` field: a structured-field list whose
/// members are sf-string items with integer parameters (RFC 9651). Returns
/// `(name, params)` per member, or why the text is not one.
fn parse_sf_list(text: &str) -> Result<Vec<SfMember>, String> {
    let mut out = Vec::new();
    for member in text.split(',') {
        let member = member.trim_start_matches(' ');
        let rest = member
            .strip_prefix('"')
            .ok_or_else(|| format!("member {member:?} is not an sf-string"))?;
        let mut name = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, c @ ('"' | '\\'))) => name.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i + 1,
                Some((_, c)) if (' '..='~').contains(&c) => name.push(c),
                other => return Err(format!("bad string character {other:?}")),
            }
        };
        let mut params = HashMap::new();
        for param in rest[end..].split(';').skip(1) {
            let (key, value) = param
                .split_once('=')
                .ok_or_else(|| format!("parameter {param:?} has no value"))?;
            let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c));
            let value_ok =
                !value.is_empty() && value.len() <= 15 && value.chars().all(|c| c.is_ascii_digit());
            if !key_ok || !value_ok {
                return Err(format!("parameter {param:?} is not key=integer"));
            }
            params.insert(key.to_string(), value.parse().unwrap());
        }
        if !rest[end..].is_empty() && !rest[end..].starts_with(';') {
            return Err(format!("junk after the string in {member:?}"));
        }
        out.push((name, params));
    }
    Ok(out)
}

#[test]
fn the_structured_field_parser_rejects_what_the_draft_forbids() {
    assert!(parse_sf_list("\"a\";q=1;w=60").is_ok());
    for bad in [
        "a;q=1",
        "\"a\";q=-1",
        "\"a\";Q=1",
        "\"a\";q=1.5",
        "\"a\"x",
        "\"a\";q",
    ] {
        assert!(parse_sf_list(bad).is_err(), "{bad}");
    }
}

const SECONDS_PER_YEAR: u64 = 365 * 24 * 3600;

async fn serve(client: Client) -> SocketAddr {
    use axum::routing::get;
    use axum::{Extension, Router};

    let by_ip = QuorateLayer::new(client.clone(), "per_ip")
        .key_from_client_ip(ClientIp::trusting(["127.0.0.1/32".parse().unwrap()]));
    let by_header = QuorateLayer::new(client, "per_ip")
        .key_from_header(axum::http::HeaderName::from_static("x-api-key"))
        .cost(|parts| {
            parts
                .headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        });
    let handler = |Extension(d): Extension<Decision>| async move { format!("{}", d.remaining) };
    let app = Router::new()
        .route("/", get(handler))
        .layer(by_ip)
        .merge(Router::new().route("/api", get(handler)).layer(by_header));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

/// The draft-10 fields of a response, checked for syntax: `(q, w, r, t)`.
fn fields(response: &reqwest::Response) -> (u64, u64, u64, u64) {
    let get = |name: &str| {
        let text = response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap();
        let list = parse_sf_list(text).unwrap_or_else(|e| panic!("{name}: {text:?}: {e}"));
        assert_eq!(list.len(), 1, "{name}: {text}");
        assert_eq!(list[0].0, "per_ip");
        list[0].1.clone()
    };
    let policy = get("ratelimit-policy");
    let current = get("ratelimit");
    (policy["q"], policy["w"], current["r"], current["t"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_limits_a_real_axum_app_with_draft_10_headers() {
    let cluster = Cluster::single(NodeOptions {
        policy: Some(policy(&[("per_ip", "fixed_window", 3, "strict")])),
        ..NodeOptions::default()
    })
    .await
    .unwrap();
    let client = Client::builder()
        .endpoint(format!("http://{}", cluster.node(1).grpc))
        .connect()
        .await
        .unwrap();
    let addr = serve(client).await;
    let http = reqwest::Client::new();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut request = http.get(format!("http://{addr}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send()
    };

    // The client 203.0.113.1 behind the trusted proxy (loopback): 3 pass.
    let alice = [("x-forwarded-for", "203.0.113.1")];
    for remaining in [2, 1, 0] {
        let response = get("/", &alice).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            fields(&response),
            (3, SECONDS_PER_YEAR, remaining, fields(&response).3)
        );
        // The handler saw the decision as a request extension.
        assert_eq!(response.text().await.unwrap(), remaining.to_string());
    }
    // The 4th is refused: 429 with Retry-After (delta-seconds) and r=0, by the cluster
    // and then by the deny cache alike.
    for _ in 0..2 {
        let response = get("/", &alice).await.unwrap();
        assert_eq!(response.status(), 429);
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        let (q, w, r, t) = fields(&response);
        assert_eq!((q, w, r), (3, SECONDS_PER_YEAR, 0));
        assert!((1..=SECONDS_PER_YEAR).contains(&t), "{t}");
    }
    // Forging an address to the left of the real one does not change the key.
    let forged = [("x-forwarded-for", "198.51.100.66, 203.0.113.1")];
    assert_eq!(get("/", &forged).await.unwrap().status(), 429);
    // Another client has its own counter.
    let bob = [("x-forwarded-for", "203.0.113.2")];
    assert_eq!(get("/", &bob).await.unwrap().status(), 200);

    // Keyed by header, with the cost from the request: a missing or oversized key is a
    // 400, never a hit on some shared or server-rejected key.
    assert_eq!(get("/api", &[]).await.unwrap().status(), 400);
    let huge = "k".repeat(600);
    assert_eq!(
        get("/api", &[("x-api-key", &huge)]).await.unwrap().status(),
        400
    );
    let response = get("/api", &[("x-api-key", "key-1"), ("x-cost", "2")])
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(fields(&response).2, 1);
    let response = get("/api", &[("x-api-key", "key-1"), ("x-cost", "2")])
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}
