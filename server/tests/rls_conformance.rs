//! Envoy RLS v3 conformance: the behaviours envoyproxy/ratelimit documents (its README's
//! example configurations and what they do), checked against a real in-process quorate node
//! over gRPC on loopback with envoy-types' generated client.
//!
//! Each test starts its own node, so counters start at zero and exact `limit_remaining`
//! values can be asserted. Counted limits use hour or day windows so a test never straddles
//! a window boundary in practice; per-second limits are only hit once per counter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use support::*;

/// The README's examples, one domain each, plus the documented matching rules.
const POLICY: &str = r#"
domains:
  # Two values of one key, each with its own limit.
  - domain: mongo_cps
    descriptors:
      - key: database
        value: users
        rate_limit: {unit: second, requests_per_unit: 500}
      - key: database
        value: default
        rate_limit: {unit: second, requests_per_unit: 500}

  # Nested descriptors: marketing messages per number, and any message per number.
  - domain: messaging
    descriptors:
      - key: message_type
        value: marketing
        descriptors:
          - key: to_number
            rate_limit: {unit: day, requests_per_unit: 5}
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 100}

  # Per-IP limits (key only: one counter per address) and a blocked address.
  - domain: edge_proxy_per_ip
    descriptors:
      - key: remote_address
        rate_limit: {unit: hour, requests_per_unit: 3}
      - key: remote_address
        value: 50.0.0.5
        rate_limit: {unit: second, requests_per_unit: 0}

  # `replaces`: a matched account limit replaces the per-cluster limit named bkthomps.
  - domain: rl
    descriptors:
      - key: category
        value: account
        rate_limit:
          name: account
          unit: hour
          requests_per_unit: 4
          replaces:
            - name: bkthomps
      - key: source_cluster
        value: proxy
        descriptors:
          - key: destination_cluster
            value: bkthomps
            rate_limit: {name: bkthomps, unit: hour, requests_per_unit: 2}

  # The matching rules.
  - domain: rules
    descriptors:
      - key: client
        value: internal
        rate_limit: {unlimited: true}
      - key: client
        rate_limit: {unit: hour, requests_per_unit: 2}
      - key: foo
        value: foo*
        rate_limit: {unit: hour, requests_per_unit: 2}
      - key: shadow
        rate_limit: {unit: hour, requests_per_unit: 1}
        shadow_mode: true
      - key: parent
        value: p
        rate_limit: {unit: hour, requests_per_unit: 10}
        descriptors:
          - key: child
            rate_limit: {unit: minute, requests_per_unit: 3}
      - key: no_limit
"#;

fn limit(name: &str, requests_per_unit: u32, unit: Unit) -> Limit<'_> {
    Limit {
        name,
        requests_per_unit,
        unit,
    }
}

fn overall(resp: &RateLimitResponse) -> Code {
    Code::try_from(resp.overall_code).unwrap()
}

/// Parses one structured-field list member `"name";a=1;b=2` into its name and parameters.
fn sf_member(member: &str) -> (String, Vec<(String, u64)>) {
    let mut parts = member.trim().split(';');
    let name = parts.next().unwrap();
    assert!(
        name.starts_with('"') && name.ends_with('"') && name.len() >= 2,
        "not a structured-field string: {member:?}"
    );
    let params = parts
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("bad parameter {p:?}"));
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    (name[1..name.len() - 1].to_string(), params)
}

/// A structured-field list header, parsed.
fn sf_list(value: &str) -> Vec<(String, Vec<(String, u64)>)> {
    value.split(',').map(sf_member).collect()
}

fn param(params: &[(String, u64)], key: &str) -> u64 {
    params
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in {params:?}"))
        .1
}

// === the step table ===

/// What one descriptor status must say.
#[derive(Debug, Clone, Copy)]
enum St<'a> {
    /// Counted: code, limit, remaining, a pending reset ([`assert_limited`]).
    Limited(Code, Limit<'a>, u32),
    /// OK with no limit attached ([`assert_no_limit`]).
    NoLimit,
    /// No limit, and `u32::MAX` remaining, as envoyproxy/ratelimit reports unlimited.
    Unlimited,
    /// Only this code.
    Code(Code),
    /// Only this remaining count.
    Remaining(u32),
    /// A limit that is not a policy rule (blocked value, Envoy's override): code,
    /// requests per unit, unit, remaining, and whether a reset must be reported.
    Raw {
        code: Code,
        requests_per_unit: u32,
        unit: Unit,
        remaining: u32,
        reset: bool,
    },
}

/// What the response's headers must (not) hold.
#[derive(Debug, Clone, Copy)]
enum Hdr {
    /// No header at all.
    NoHeaders,
    Present(&'static str),
    Absent(&'static str),
}

/// One `ShouldRateLimit` call (made `times` times, every answer checked).
#[derive(Debug, Clone)]
struct Step<'a> {
    what: String,
    request: RateLimitRequest,
    times: usize,
    overall: Option<Code>,
    /// When not empty: the statuses, in request order (their number must match).
    statuses: Vec<St<'a>>,
    headers: Vec<Hdr>,
}

fn step<'a>(what: impl Into<String>, request: RateLimitRequest) -> Step<'a> {
    Step {
        what: what.into(),
        request,
        times: 1,
        overall: None,
        statuses: Vec::new(),
        headers: Vec::new(),
    }
}

/// A one-descriptor step.
fn step_one<'a>(what: impl Into<String>, domain: &str, entries: &[(&str, &str)]) -> Step<'a> {
    step(what, request(domain, vec![descriptor(entries)], 0))
}

impl<'a> Step<'a> {
    fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    fn overall(mut self, code: Code) -> Self {
        self.overall = Some(code);
        self
    }

    fn status(mut self, s: St<'a>) -> Self {
        self.statuses.push(s);
        self
    }

    fn header(mut self, h: Hdr) -> Self {
        self.headers.push(h);
        self
    }
}

#[track_caller]
fn check_status(what: &str, i: usize, s: &DescriptorStatus, want: St<'_>) {
    match want {
        St::Limited(code, limit, remaining) => assert_limited(s, code, limit, remaining),
        St::NoLimit => assert_no_limit(s),
        St::Unlimited => {
            assert_no_limit(s);
            assert_eq!(
                s.limit_remaining,
                u32::MAX,
                "{what}: unlimited reports u32::MAX remaining, as envoyproxy/ratelimit does"
            );
        }
        St::Code(code) => assert_eq!(s.code, code as i32, "{what}: status {i}: {s:?}"),
        St::Remaining(n) => assert_eq!(s.limit_remaining, n, "{what}: status {i}: {s:?}"),
        St::Raw {
            code,
            requests_per_unit,
            unit,
            remaining,
            reset,
        } => {
            assert_eq!(s.code, code as i32, "{what}: status {i}: {s:?}");
            let current = s
                .current_limit
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: status {i} reports no limit: {s:?}"));
            assert_eq!(
                (current.requests_per_unit, current.unit),
                (requests_per_unit, unit as i32),
                "{what}: status {i}: {s:?}"
            );
            assert_eq!(s.limit_remaining, remaining, "{what}: status {i}: {s:?}");
            if reset {
                assert!(
                    s.duration_until_reset.is_some(),
                    "{what}: status {i}: {s:?}"
                );
            }
        }
    }
}

/// Runs the steps in order on one connection (earlier steps spend quota later ones see).
async fn run_steps(rls: &mut Rls, steps: Vec<Step<'_>>) {
    for step in steps {
        let what = &step.what;
        for _ in 0..step.times {
            let resp = call(rls, step.request.clone()).await;
            if let Some(code) = step.overall {
                assert_eq!(overall(&resp), code, "{what}: {resp:?}");
            }
            if !step.statuses.is_empty() {
                assert_eq!(resp.statuses.len(), step.statuses.len(), "{what}: {resp:?}");
            }
            for (i, (s, want)) in resp.statuses.iter().zip(&step.statuses).enumerate() {
                check_status(what, i, s, *want);
            }
            for h in &step.headers {
                match h {
                    Hdr::NoHeaders => {
                        assert!(resp.response_headers_to_add.is_empty(), "{what}: {resp:?}")
                    }
                    Hdr::Present(name) => {
                        assert!(header(&resp, name).is_some(), "{what}: no {name}: {resp:?}")
                    }
                    Hdr::Absent(name) => {
                        assert!(header(&resp, name).is_none(), "{what}: {name}: {resp:?}")
                    }
                }
            }
        }
    }
}

/// Starts a node with [`POLICY`] and runs `steps` against it.
async fn conformance(steps: Vec<Step<'_>>) {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    run_steps(&mut rls, steps).await;
}

#[tokio::test]
async fn mongo_cps_each_value_has_its_own_limit() {
    conformance(vec![
        // Fresh counters: the first hit in any window leaves 499.
        step(
            "two values, each its own limit",
            request(
                "mongo_cps",
                vec![
                    descriptor(&[("database", "users")]),
                    descriptor(&[("database", "default")]),
                ],
                0,
            ),
        )
        .overall(Code::Ok)
        .status(St::Limited(
            Code::Ok,
            limit("mongo_cps/database=users", 500, Unit::Second),
            499,
        ))
        .status(St::Limited(
            Code::Ok,
            limit("mongo_cps/database=default", 500, Unit::Second),
            499,
        )),
        // A value with no descriptor of its own and no key-only fallback: no limit.
        step_one(
            "a value with no rule",
            "mongo_cps",
            &[("database", "other")],
        )
        .overall(Code::Ok)
        .status(St::NoLimit)
        .header(Hdr::NoHeaders),
    ])
    .await;
}

#[tokio::test]
async fn nested_descriptors_match_by_depth_and_count_separately() {
    let marketing = [("message_type", "marketing"), ("to_number", "2061234567")];
    let any = [("to_number", "2061234567")];
    let both = || {
        request(
            "messaging",
            vec![descriptor(&marketing), descriptor(&any)],
            0,
        )
    };
    let nested = limit("messaging/message_type=marketing/to_number", 5, Unit::Day);
    let general = limit("messaging/to_number", 100, Unit::Day);
    let mut steps: Vec<Step> = (1..=5u32)
        .map(|i| {
            step(format!("marketing message {i}"), both())
                .overall(Code::Ok)
                .status(St::Limited(Code::Ok, nested, 5 - i))
                .status(St::Limited(Code::Ok, general, 100 - i))
        })
        .collect();
    steps.extend([
        // The sixth marketing message to that number is over; the general limit is not.
        step("the sixth marketing message", both())
            .overall(Code::OverLimit)
            .status(St::Limited(Code::OverLimit, nested, 0))
            .status(St::Code(Code::Ok)),
        // Another number has its own counters.
        step_one(
            "another number",
            "messaging",
            &[("message_type", "marketing"), ("to_number", "2069999999")],
        )
        .status(St::Limited(Code::Ok, nested, 4)),
        // `message_type=marketing` alone reaches a descriptor without a limit: unlimited.
        step_one(
            "a descriptor without a limit",
            "messaging",
            &[("message_type", "marketing")],
        )
        .overall(Code::Ok)
        .status(St::NoLimit),
    ]);
    conformance(steps).await;
}

#[tokio::test]
async fn key_only_descriptor_counts_each_value_and_value_beats_key_only() {
    let per_ip = limit("edge_proxy_per_ip/remote_address", 3, Unit::Hour);
    let ip =
        |what: String, addr: &str| step_one(what, "edge_proxy_per_ip", &[("remote_address", addr)]);
    let mut steps: Vec<Step> = [2, 1, 0]
        .into_iter()
        .map(|remaining| {
            ip(format!("10.0.0.1, {remaining} left"), "10.0.0.1")
                .overall(Code::Ok)
                .status(St::Limited(Code::Ok, per_ip, remaining))
        })
        .collect();
    steps.extend([
        ip("10.0.0.1 over".into(), "10.0.0.1")
            .overall(Code::OverLimit)
            .status(St::Limited(Code::OverLimit, per_ip, 0)),
        // Another address: its own counter.
        ip("another address".into(), "10.0.0.2").status(St::Limited(Code::Ok, per_ip, 2)),
        // The blocked address matches key+value (requests_per_unit: 0), not the key-only
        // rule: always over the limit, even on its first request.
        ip("the blocked address".into(), "50.0.0.5")
            .times(2)
            .overall(Code::OverLimit)
            .status(St::Raw {
                code: Code::OverLimit,
                requests_per_unit: 0,
                unit: Unit::Second,
                remaining: 0,
                reset: false,
            })
            .header(Hdr::Present("retry-after")),
    ]);
    conformance(steps).await;
}

#[tokio::test]
async fn replaces_skips_the_named_limit_only_when_the_replacing_one_matches() {
    let account = [("category", "account")];
    let cluster = [
        ("source_cluster", "proxy"),
        ("destination_cluster", "bkthomps"),
    ];
    let both = || request("rl", vec![descriptor(&account), descriptor(&cluster)], 0);
    let alone = || request("rl", vec![descriptor(&cluster)], 0);
    let account_limit = limit("account", 4, Unit::Hour);
    let bkthomps = limit("bkthomps", 2, Unit::Hour);
    let mut steps: Vec<Step> = [3, 2, 1]
        .into_iter()
        .map(|remaining| {
            // Replaced: OK, not counted, no limit reported.
            step(format!("both, account has {remaining} left"), both())
                .overall(Code::Ok)
                .status(St::Limited(Code::Ok, account_limit, remaining))
                .status(St::NoLimit)
        })
        .collect();
    // Alone, bkthomps applies — and the three replaced requests did not count against it.
    for remaining in [1, 0] {
        steps.push(
            step(format!("bkthomps alone, {remaining} left"), alone()).status(St::Limited(
                Code::Ok,
                bkthomps,
                remaining,
            )),
        );
    }
    steps.extend([
        step("bkthomps alone, over", alone()).overall(Code::OverLimit),
        // With the replacing limit matched again, the exhausted bkthomps limit is skipped.
        step("both again: bkthomps skipped", both())
            .overall(Code::Ok)
            .status(St::Limited(Code::Ok, account_limit, 0))
            .status(St::NoLimit),
    ]);
    conformance(steps).await;
}

#[tokio::test]
async fn unlimited_and_key_value_beats_key_only() {
    let client = limit("rules/client", 2, Unit::Hour);
    let external = |what: &str| step_one(what.to_string(), "rules", &[("client", "external")]);
    conformance(vec![
        step_one("internal: unlimited", "rules", &[("client", "internal")])
            .times(5)
            .overall(Code::Ok)
            .status(St::Unlimited)
            .header(Hdr::NoHeaders),
        external("external, 1 left").status(St::Limited(Code::Ok, client, 1)),
        external("external, 0 left").status(St::Limited(Code::Ok, client, 0)),
        external("external, over").status(St::Limited(Code::OverLimit, client, 0)),
    ])
    .await;
}

#[tokio::test]
async fn wildcard_values_match_prefixes_with_a_counter_per_value() {
    let foo = limit("rules/foo=foo*", 2, Unit::Hour);
    let mut steps: Vec<Step> = ["foo", "foobar", "foo-bar"]
        .into_iter()
        .map(|v| step_one(v, "rules", &[("foo", v)]).status(St::Limited(Code::Ok, foo, 1)))
        .collect();
    steps.push(
        step_one("foobar again", "rules", &[("foo", "foobar")]).status(St::Limited(
            Code::Ok,
            foo,
            0,
        )),
    );
    steps.push(
        step_one("foobar over", "rules", &[("foo", "foobar")]).status(St::Limited(
            Code::OverLimit,
            foo,
            0,
        )),
    );
    for v in ["bar", "fo", "xfoo"] {
        steps.push(step_one(v, "rules", &[("foo", v)]).status(St::NoLimit));
    }
    conformance(steps).await;
}

#[tokio::test]
async fn shadow_mode_reports_the_limit_but_never_denies() {
    let shadow = limit("rules/shadow", 1, Unit::Hour);
    conformance(vec![
        step_one("the one allowed hit", "rules", &[("shadow", "u1")]).status(St::Limited(
            Code::Ok,
            shadow,
            0,
        )),
        step_one("over, but in shadow mode", "rules", &[("shadow", "u1")])
            .times(3)
            .overall(Code::Ok)
            .status(St::Limited(Code::Ok, shadow, 0))
            .header(Hdr::Absent("retry-after")),
    ])
    .await;
}

#[tokio::test]
async fn depth_must_match_and_entries_without_limits_are_unlimited() {
    conformance(vec![step(
        "seven descriptors",
        request(
            "rules",
            vec![
                // The parent's own limit.
                descriptor(&[("parent", "p")]),
                // Two levels: the child's limit, not the parent's.
                descriptor(&[("parent", "p"), ("child", "c")]),
                // The child key at the top level: nothing there.
                descriptor(&[("child", "c")]),
                // Deeper than the tree.
                descriptor(&[("parent", "p"), ("child", "c"), ("grandchild", "g")]),
                // A value the parent doesn't have.
                descriptor(&[("parent", "q"), ("child", "c")]),
                // A descriptor with no rate_limit.
                descriptor(&[("no_limit", "x")]),
                // A key the domain doesn't know.
                descriptor(&[("unknown", "x")]),
            ],
            0,
        ),
    )
    .overall(Code::Ok)
    .status(St::Limited(
        Code::Ok,
        limit("rules/parent=p", 10, Unit::Hour),
        9,
    ))
    .status(St::Limited(
        Code::Ok,
        limit("rules/parent=p/child", 3, Unit::Minute),
        2,
    ))
    .status(St::NoLimit)
    .status(St::NoLimit)
    .status(St::NoLimit)
    .status(St::NoLimit)
    .status(St::NoLimit)])
    .await;
}

#[tokio::test]
async fn each_descriptor_is_checked_and_statuses_follow_request_order() {
    let client = limit("rules/client", 2, Unit::Hour);
    conformance(vec![
        // Use up rules/client for "a".
        step_one("use up client a", "rules", &[("client", "a")]).times(2),
        step(
            "five descriptors, one over",
            request(
                "rules",
                vec![
                    descriptor(&[("client", "b")]),
                    descriptor(&[("nothing", "here")]),
                    descriptor(&[("client", "a")]),
                    descriptor(&[("client", "internal")]),
                    descriptor(&[("foo", "food")]),
                ],
                0,
            ),
        )
        // All-or-nothing: every descriptor is checked, none is counted — client "b" and
        // foo keep their full quota (so nothing is pending a reset); the one over the
        // limit is OVER_LIMIT.
        .overall(Code::OverLimit)
        .status(St::Raw {
            code: Code::Ok,
            requests_per_unit: 2,
            unit: Unit::Hour,
            remaining: 2,
            reset: false,
        })
        .status(St::NoLimit)
        .status(St::Limited(Code::OverLimit, client, 0))
        .status(St::NoLimit)
        .status(St::Raw {
            code: Code::Ok,
            requests_per_unit: 2,
            unit: Unit::Hour,
            remaining: 2,
            reset: false,
        }),
        // The same descriptor twice in one request counts twice.
        step(
            "the same descriptor twice",
            request(
                "rules",
                vec![
                    descriptor(&[("parent", "p")]),
                    descriptor(&[("parent", "p")]),
                ],
                0,
            ),
        )
        .status(St::Remaining(9))
        .status(St::Remaining(8)),
    ])
    .await;
}

#[tokio::test]
async fn hits_addend_request_level_zero_means_one_and_descriptor_level_overrides() {
    let parent = limit("rules/parent=p", 10, Unit::Hour);
    let p = [("parent", "p")];
    conformance(vec![
        // Request-level 0: one hit.
        step("request-level 0", request("rules", vec![descriptor(&p)], 0)).status(St::Limited(
            Code::Ok,
            parent,
            9,
        )),
        // Request-level 3 applies to every descriptor without its own; the descriptor's
        // own hits_addend (1) wins over the request's (3).
        step(
            "request-level 3",
            request(
                "rules",
                vec![
                    descriptor(&p),
                    descriptor(&[("remote", "x")]),
                    descriptor_with_hits(&[("client", "z")], 1),
                ],
                3,
            ),
        )
        .status(St::Limited(Code::Ok, parent, 6))
        .status(St::NoLimit)
        .status(St::Limited(
            Code::Ok,
            limit("rules/client", 2, Unit::Hour),
            1,
        )),
        // Descriptor-level 0 is allowed and means "check without counting".
        step(
            "descriptor-level 0",
            request("rules", vec![descriptor_with_hits(&p, 0)], 5),
        )
        .times(2)
        .status(St::Limited(Code::Ok, parent, 6)),
        // A descriptor-level addend larger than what remains is over the limit.
        step(
            "7 with 6 left",
            request("rules", vec![descriptor_with_hits(&p, 7)], 0),
        )
        .overall(Code::OverLimit)
        .status(St::Code(Code::OverLimit)),
        // Exactly what remains still passes.
        step(
            "6 with 6 left",
            request("rules", vec![descriptor_with_hits(&p, 6)], 0),
        )
        .status(St::Limited(Code::Ok, parent, 0)),
    ])
    .await;
}

#[tokio::test]
async fn per_descriptor_limit_override_replaces_the_configured_limit() {
    // rules/client is 2/hour; Envoy's override says 1/day for this descriptor.
    let overridden = || {
        request(
            "rules",
            vec![descriptor_with_limit(
                &[("client", "o")],
                1,
                RateLimitUnit::Day,
            )],
            0,
        )
    };
    conformance(vec![
        step("override, first hit", overridden())
            .overall(Code::Ok)
            .status(St::Raw {
                code: Code::Ok,
                requests_per_unit: 1,
                unit: Unit::Day,
                remaining: 0,
                reset: true,
            }),
        step("override, second hit", overridden()).overall(Code::OverLimit),
        // The override applies even where the domain's tree has no rule for the entries.
        step(
            "override without a rule",
            request(
                "rules",
                vec![descriptor_with_limit(
                    &[("no_rule_here", "x")],
                    5,
                    RateLimitUnit::Hour,
                )],
                0,
            ),
        )
        .status(St::Raw {
            code: Code::Ok,
            requests_per_unit: 5,
            unit: Unit::Hour,
            remaining: 4,
            reset: false,
        }),
    ])
    .await;
}

#[tokio::test]
async fn unknown_domain_is_ok_with_no_limit_for_every_descriptor() {
    conformance(vec![step(
        "unknown domain",
        request(
            "no_such_domain",
            vec![
                descriptor(&[("database", "users")]),
                descriptor(&[("remote_address", "10.0.0.1")]),
            ],
            0,
        ),
    )
    .overall(Code::Ok)
    .status(St::NoLimit)
    .status(St::NoLimit)
    .header(Hdr::NoHeaders)])
    .await;
}

#[tokio::test]
async fn ietf_headers_describe_every_counted_limit_and_retry_after_comes_with_over_limit() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let req = || {
        request(
            "rules",
            vec![
                descriptor(&[("client", "h")]),
                descriptor(&[("client", "internal")]),
                descriptor(&[("parent", "p")]),
            ],
            0,
        )
    };
    for (client_remaining, parent_remaining) in [(1u64, 9u64), (0, 8)] {
        let resp = call(&mut rls, req()).await;
        assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
        let policy = sf_list(header(&resp, "ratelimit-policy").expect("RateLimit-Policy"));
        let current = sf_list(header(&resp, "ratelimit").expect("RateLimit"));
        // One member per counted limit, in request order; the unlimited one has none.
        let names: Vec<&str> = policy.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rules/client", "rules/parent=p"], "{resp:?}");
        assert_eq!(param(&policy[0].1, "q"), 2);
        assert_eq!(param(&policy[0].1, "w"), 3_600);
        assert_eq!(param(&policy[1].1, "q"), 10);
        assert_eq!(param(&policy[1].1, "w"), 3_600);
        let names: Vec<&str> = current.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rules/client", "rules/parent=p"], "{resp:?}");
        assert_eq!(param(&current[0].1, "r"), client_remaining);
        assert_eq!(param(&current[1].1, "r"), parent_remaining);
        for (_, params) in &current {
            let t = param(params, "t");
            assert!((1..=3_600).contains(&t), "t={t} in {resp:?}");
        }
        assert!(header(&resp, "retry-after").is_none(), "{resp:?}");
        assert!(
            header(&resp, "x-ratelimit-limit").is_none(),
            "legacy is off"
        );
    }
    let resp = call(&mut rls, req()).await;
    assert_eq!(overall(&resp), Code::OverLimit, "{resp:?}");
    let current = sf_list(header(&resp, "ratelimit").expect("RateLimit"));
    assert_eq!(param(&current[0].1, "r"), 0);
    let retry: u64 = header(&resp, "retry-after")
        .expect("Retry-After on OVER_LIMIT")
        .parse()
        .unwrap();
    // Retry when the exhausted window resets (whole seconds, rounded up).
    let reset = &resp.statuses[0].duration_until_reset.unwrap();
    assert!((1..=3_600).contains(&retry), "retry-after {retry}");
    assert!(
        retry >= u64::try_from(reset.seconds).unwrap(),
        "retry-after {retry} before the reset {reset:?}"
    );
}

#[tokio::test]
async fn legacy_headers_when_configured() {
    let policy = r#"
headers: {ietf: false, legacy: true}
domains:
  - domain: legacy
    descriptors:
      - key: user
        rate_limit: {unit: hour, requests_per_unit: 2}
      - key: tenant
        rate_limit: {unit: day, requests_per_unit: 100}
"#;
    let node = TestNode::start(policy).await;
    let mut rls = node.rls().await;
    let req = || {
        request(
            "legacy",
            vec![descriptor(&[("tenant", "t")]), descriptor(&[("user", "u")])],
            0,
        )
    };
    for remaining in ["1", "0"] {
        let resp = call(&mut rls, req()).await;
        assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
        // The most restrictive limit (user: 2/hour) speaks for the response.
        assert_eq!(header(&resp, "x-ratelimit-limit"), Some("2"), "{resp:?}");
        assert_eq!(header(&resp, "x-ratelimit-remaining"), Some(remaining));
        let reset: u64 = header(&resp, "x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=3_600).contains(&reset), "reset {reset}");
        assert!(header(&resp, "ratelimit-policy").is_none(), "ietf is off");
        assert!(header(&resp, "ratelimit").is_none(), "ietf is off");
    }
    let resp = call(&mut rls, req()).await;
    assert_eq!(overall(&resp), Code::OverLimit);
    assert_eq!(header(&resp, "x-ratelimit-remaining"), Some("0"));
    assert!(header(&resp, "retry-after").is_some(), "{resp:?}");
}

#[tokio::test]
async fn legacy_and_ietf_headers_together() {
    let policy = r#"
headers: {legacy: true}
domains:
  - domain: both
    descriptors:
      - key: user
        rate_limit: {name: per_user, unit: minute, requests_per_unit: 7}
"#;
    let node = TestNode::start(policy).await;
    let mut rls = node.rls().await;
    let resp = call_one(&mut rls, "both", &[("user", "u")]).await;
    assert_eq!(header(&resp, "x-ratelimit-limit"), Some("7"), "{resp:?}");
    assert_eq!(header(&resp, "x-ratelimit-remaining"), Some("6"));
    let policy = sf_list(header(&resp, "ratelimit-policy").unwrap());
    assert_eq!(policy[0].0, "per_user");
    assert_eq!(param(&policy[0].1, "q"), 7);
    assert_eq!(param(&policy[0].1, "w"), 60);
    let current = sf_list(header(&resp, "ratelimit").unwrap());
    assert_eq!(param(&current[0].1, "r"), 6);
}

/// Asserts a call fails with INVALID_ARGUMENT and a message starting with `field`.
async fn assert_invalid(rls: &mut Rls, req: RateLimitRequest, field: &str) {
    let shown = format!("{req:?}");
    let status = rls
        .should_rate_limit(req)
        .await
        .expect_err(&format!("{shown} should be refused"));
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{shown}: {status:?}"
    );
    assert!(
        status.message().starts_with(field),
        "message {:?} should name {field}",
        status.message()
    );
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_naming_the_field() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let one = || vec![descriptor(&[("client", "x")])];
    let long_entries: Vec<(String, String)> = (0..33)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let long_entries: Vec<(&str, &str)> = long_entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Each request, and the field its refusal must name first.
    let cases: Vec<(RateLimitRequest, &str)> = vec![
        (request("", one(), 0), "domain"),
        (request("rules", vec![], 0), "descriptors"),
        (
            request(
                "rules",
                vec![descriptor(&[("client", "x")]), descriptor(&[])],
                0,
            ),
            "descriptors[1].entries",
        ),
        (
            request("rules", vec![descriptor(&[("client", "x"), ("", "v")])], 0),
            "descriptors[0].entries[1].key",
        ),
        (
            request("rules", vec![descriptor(&[("client", "x")]); 65], 0),
            "descriptors",
        ),
        (
            request("rules", vec![descriptor(&long_entries)], 0),
            "descriptors[0].entries",
        ),
        (
            request(
                "rules",
                vec![descriptor_with_limit(
                    &[("client", "x")],
                    1,
                    RateLimitUnit::Unknown,
                )],
                0,
            ),
            "descriptors[0].limit.unit",
        ),
    ];
    for (req, field) in cases {
        assert_invalid(&mut rls, req, field).await;
    }
    // Nothing was counted by the refused requests: the limit is untouched.
    run_steps(
        &mut rls,
        vec![
            step_one("after the refusals", "rules", &[("client", "x")]).status(St::Limited(
                Code::Ok,
                limit("rules/client", 2, Unit::Hour),
                1,
            )),
        ],
    )
    .await;
}
