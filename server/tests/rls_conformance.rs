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
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
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

#[tokio::test]
async fn mongo_cps_each_value_has_its_own_limit() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let resp = call(
        &mut rls,
        request(
            "mongo_cps",
            vec![
                descriptor(&[("database", "users")]),
                descriptor(&[("database", "default")]),
            ],
            0,
        ),
    )
    .await;
    assert_eq!(overall(&resp), Code::Ok);
    assert_eq!(resp.statuses.len(), 2);
    // Fresh counters: the first hit in any window leaves 499.
    assert_limited(
        &resp.statuses[0],
        Code::Ok,
        limit("mongo_cps/database=users", 500, Unit::Second),
        499,
    );
    assert_limited(
        &resp.statuses[1],
        Code::Ok,
        limit("mongo_cps/database=default", 500, Unit::Second),
        499,
    );
    // A value with no descriptor of its own and no key-only fallback: no limit.
    let resp = call_one(&mut rls, "mongo_cps", &[("database", "other")]).await;
    assert_eq!(overall(&resp), Code::Ok);
    assert_no_limit(&resp.statuses[0]);
    assert!(resp.response_headers_to_add.is_empty(), "{resp:?}");
}

#[tokio::test]
async fn nested_descriptors_match_by_depth_and_count_separately() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let marketing = [("message_type", "marketing"), ("to_number", "2061234567")];
    let any = [("to_number", "2061234567")];
    for i in 1..=5u32 {
        let resp = call(
            &mut rls,
            request(
                "messaging",
                vec![descriptor(&marketing), descriptor(&any)],
                0,
            ),
        )
        .await;
        assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
        assert_limited(
            &resp.statuses[0],
            Code::Ok,
            limit("messaging/message_type=marketing/to_number", 5, Unit::Day),
            5 - i,
        );
        assert_limited(
            &resp.statuses[1],
            Code::Ok,
            limit("messaging/to_number", 100, Unit::Day),
            100 - i,
        );
    }
    // The sixth marketing message to that number is over; the general limit is not.
    let resp = call(
        &mut rls,
        request(
            "messaging",
            vec![descriptor(&marketing), descriptor(&any)],
            0,
        ),
    )
    .await;
    assert_eq!(overall(&resp), Code::OverLimit);
    assert_limited(
        &resp.statuses[0],
        Code::OverLimit,
        limit("messaging/message_type=marketing/to_number", 5, Unit::Day),
        0,
    );
    assert_eq!(resp.statuses[1].code, Code::Ok as i32, "{resp:?}");
    // Another number has its own counters.
    let resp = call_one(
        &mut rls,
        "messaging",
        &[("message_type", "marketing"), ("to_number", "2069999999")],
    )
    .await;
    assert_limited(
        &resp.statuses[0],
        Code::Ok,
        limit("messaging/message_type=marketing/to_number", 5, Unit::Day),
        4,
    );
    // `message_type=marketing` alone reaches a descriptor without a limit: unlimited.
    let resp = call_one(&mut rls, "messaging", &[("message_type", "marketing")]).await;
    assert_eq!(overall(&resp), Code::Ok);
    assert_no_limit(&resp.statuses[0]);
}

#[tokio::test]
async fn key_only_descriptor_counts_each_value_and_value_beats_key_only() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let per_ip = limit("edge_proxy_per_ip/remote_address", 3, Unit::Hour);
    for remaining in [2, 1, 0] {
        let resp = call_one(
            &mut rls,
            "edge_proxy_per_ip",
            &[("remote_address", "10.0.0.1")],
        )
        .await;
        assert_eq!(overall(&resp), Code::Ok);
        assert_limited(&resp.statuses[0], Code::Ok, per_ip, remaining);
    }
    let resp = call_one(
        &mut rls,
        "edge_proxy_per_ip",
        &[("remote_address", "10.0.0.1")],
    )
    .await;
    assert_eq!(overall(&resp), Code::OverLimit);
    assert_limited(&resp.statuses[0], Code::OverLimit, per_ip, 0);
    // Another address: its own counter.
    let resp = call_one(
        &mut rls,
        "edge_proxy_per_ip",
        &[("remote_address", "10.0.0.2")],
    )
    .await;
    assert_limited(&resp.statuses[0], Code::Ok, per_ip, 2);
    // The blocked address matches key+value (requests_per_unit: 0), not the key-only rule:
    // always over the limit, even on its first request.
    for _ in 0..2 {
        let resp = call_one(
            &mut rls,
            "edge_proxy_per_ip",
            &[("remote_address", "50.0.0.5")],
        )
        .await;
        assert_eq!(overall(&resp), Code::OverLimit, "{resp:?}");
        let s = &resp.statuses[0];
        assert_eq!(s.code, Code::OverLimit as i32);
        let current = s.current_limit.as_ref().expect("blocked has a limit");
        assert_eq!(current.requests_per_unit, 0);
        assert_eq!(current.unit, Unit::Second as i32);
        assert_eq!(s.limit_remaining, 0);
        assert!(header(&resp, "retry-after").is_some(), "{resp:?}");
    }
}

#[tokio::test]
async fn replaces_skips_the_named_limit_only_when_the_replacing_one_matches() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let account = [("category", "account")];
    let cluster = [
        ("source_cluster", "proxy"),
        ("destination_cluster", "bkthomps"),
    ];
    for remaining in [3, 2, 1] {
        let resp = call(
            &mut rls,
            request("rl", vec![descriptor(&account), descriptor(&cluster)], 0),
        )
        .await;
        assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
        assert_limited(
            &resp.statuses[0],
            Code::Ok,
            limit("account", 4, Unit::Hour),
            remaining,
        );
        // Replaced: OK, not counted, no limit reported.
        assert_no_limit(&resp.statuses[1]);
    }
    // Alone, bkthomps applies — and the three replaced requests did not count against it.
    for remaining in [1, 0] {
        let resp = call(&mut rls, request("rl", vec![descriptor(&cluster)], 0)).await;
        assert_limited(
            &resp.statuses[0],
            Code::Ok,
            limit("bkthomps", 2, Unit::Hour),
            remaining,
        );
    }
    let resp = call(&mut rls, request("rl", vec![descriptor(&cluster)], 0)).await;
    assert_eq!(overall(&resp), Code::OverLimit);
    // With the replacing limit matched again, the exhausted bkthomps limit is skipped.
    let resp = call(
        &mut rls,
        request("rl", vec![descriptor(&account), descriptor(&cluster)], 0),
    )
    .await;
    assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
    assert_limited(
        &resp.statuses[0],
        Code::Ok,
        limit("account", 4, Unit::Hour),
        0,
    );
    assert_no_limit(&resp.statuses[1]);
}

#[tokio::test]
async fn unlimited_and_key_value_beats_key_only() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    for _ in 0..5 {
        let resp = call_one(&mut rls, "rules", &[("client", "internal")]).await;
        assert_eq!(overall(&resp), Code::Ok);
        assert_no_limit(&resp.statuses[0]);
        assert_eq!(
            resp.statuses[0].limit_remaining,
            u32::MAX,
            "unlimited reports u32::MAX remaining, as envoyproxy/ratelimit does"
        );
        assert!(resp.response_headers_to_add.is_empty(), "{resp:?}");
    }
    let client = limit("rules/client", 2, Unit::Hour);
    for remaining in [1, 0] {
        let resp = call_one(&mut rls, "rules", &[("client", "external")]).await;
        assert_limited(&resp.statuses[0], Code::Ok, client, remaining);
    }
    let resp = call_one(&mut rls, "rules", &[("client", "external")]).await;
    assert_limited(&resp.statuses[0], Code::OverLimit, client, 0);
}

#[tokio::test]
async fn wildcard_values_match_prefixes_with_a_counter_per_value() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let foo = limit("rules/foo=foo*", 2, Unit::Hour);
    for value in ["foo", "foobar", "foo-bar"] {
        let resp = call_one(&mut rls, "rules", &[("foo", value)]).await;
        assert_limited(&resp.statuses[0], Code::Ok, foo, 1);
    }
    let resp = call_one(&mut rls, "rules", &[("foo", "foobar")]).await;
    assert_limited(&resp.statuses[0], Code::Ok, foo, 0);
    let resp = call_one(&mut rls, "rules", &[("foo", "foobar")]).await;
    assert_limited(&resp.statuses[0], Code::OverLimit, foo, 0);
    for value in ["bar", "fo", "xfoo"] {
        let resp = call_one(&mut rls, "rules", &[("foo", value)]).await;
        assert_no_limit(&resp.statuses[0]);
    }
}

#[tokio::test]
async fn shadow_mode_reports_the_limit_but_never_denies() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let shadow = limit("rules/shadow", 1, Unit::Hour);
    let resp = call_one(&mut rls, "rules", &[("shadow", "u1")]).await;
    assert_limited(&resp.statuses[0], Code::Ok, shadow, 0);
    for _ in 0..3 {
        let resp = call_one(&mut rls, "rules", &[("shadow", "u1")]).await;
        assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
        assert_limited(&resp.statuses[0], Code::Ok, shadow, 0);
        assert!(header(&resp, "retry-after").is_none(), "{resp:?}");
    }
}

#[tokio::test]
async fn depth_must_match_and_entries_without_limits_are_unlimited() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let resp = call(
        &mut rls,
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
    .await;
    assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
    assert_eq!(resp.statuses.len(), 7);
    assert_limited(
        &resp.statuses[0],
        Code::Ok,
        limit("rules/parent=p", 10, Unit::Hour),
        9,
    );
    assert_limited(
        &resp.statuses[1],
        Code::Ok,
        limit("rules/parent=p/child", 3, Unit::Minute),
        2,
    );
    for s in &resp.statuses[2..] {
        assert_no_limit(s);
    }
}

#[tokio::test]
async fn each_descriptor_is_checked_and_statuses_follow_request_order() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    // Use up rules/client for "a".
    for _ in 0..2 {
        call_one(&mut rls, "rules", &[("client", "a")]).await;
    }
    let resp = call(
        &mut rls,
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
    .await;
    assert_eq!(overall(&resp), Code::OverLimit, "{resp:?}");
    assert_eq!(resp.statuses.len(), 5);
    assert_limited(
        &resp.statuses[0],
        Code::Ok,
        limit("rules/client", 2, Unit::Hour),
        1,
    );
    assert_no_limit(&resp.statuses[1]);
    assert_limited(
        &resp.statuses[2],
        Code::OverLimit,
        limit("rules/client", 2, Unit::Hour),
        0,
    );
    assert_no_limit(&resp.statuses[3]);
    // Checked (and counted) even though an earlier descriptor is over the limit.
    assert_limited(
        &resp.statuses[4],
        Code::Ok,
        limit("rules/foo=foo*", 2, Unit::Hour),
        1,
    );
    // The same descriptor twice in one request counts twice.
    let resp = call(
        &mut rls,
        request(
            "rules",
            vec![
                descriptor(&[("parent", "p")]),
                descriptor(&[("parent", "p")]),
            ],
            0,
        ),
    )
    .await;
    let remaining: Vec<u32> = resp.statuses.iter().map(|s| s.limit_remaining).collect();
    assert_eq!(remaining, vec![9, 8], "{resp:?}");
}

#[tokio::test]
async fn hits_addend_request_level_zero_means_one_and_descriptor_level_overrides() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let parent = limit("rules/parent=p", 10, Unit::Hour);
    // Request-level 0: one hit.
    let resp = call(
        &mut rls,
        request("rules", vec![descriptor(&[("parent", "p")])], 0),
    )
    .await;
    assert_limited(&resp.statuses[0], Code::Ok, parent, 9);
    // Request-level 3 applies to every descriptor without its own.
    let resp = call(
        &mut rls,
        request(
            "rules",
            vec![
                descriptor(&[("parent", "p")]),
                descriptor(&[("remote", "x")]),
                descriptor_with_hits(&[("client", "z")], 1),
            ],
            3,
        ),
    )
    .await;
    assert_limited(&resp.statuses[0], Code::Ok, parent, 6);
    assert_no_limit(&resp.statuses[1]);
    // The descriptor's own hits_addend (1) wins over the request's (3).
    assert_limited(
        &resp.statuses[2],
        Code::Ok,
        limit("rules/client", 2, Unit::Hour),
        1,
    );
    // Descriptor-level 0 is allowed and means "check without counting".
    for _ in 0..2 {
        let resp = call(
            &mut rls,
            request(
                "rules",
                vec![descriptor_with_hits(&[("parent", "p")], 0)],
                5,
            ),
        )
        .await;
        assert_limited(&resp.statuses[0], Code::Ok, parent, 6);
    }
    // A descriptor-level addend larger than what remains is over the limit.
    let resp = call(
        &mut rls,
        request(
            "rules",
            vec![descriptor_with_hits(&[("parent", "p")], 7)],
            0,
        ),
    )
    .await;
    assert_eq!(overall(&resp), Code::OverLimit, "{resp:?}");
    assert_eq!(resp.statuses[0].code, Code::OverLimit as i32);
    // Exactly what remains still passes.
    let resp = call(
        &mut rls,
        request(
            "rules",
            vec![descriptor_with_hits(&[("parent", "p")], 6)],
            0,
        ),
    )
    .await;
    assert_limited(&resp.statuses[0], Code::Ok, parent, 0);
}

#[tokio::test]
async fn per_descriptor_limit_override_replaces_the_configured_limit() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    // rules/client is 2/hour; Envoy's override says 1/day for this descriptor.
    let resp = call(
        &mut rls,
        request(
            "rules",
            vec![descriptor_with_limit(
                &[("client", "o")],
                1,
                RateLimitUnit::Day,
            )],
            0,
        ),
    )
    .await;
    assert_eq!(overall(&resp), Code::Ok, "{resp:?}");
    let s = &resp.statuses[0];
    let current = s
        .current_limit
        .as_ref()
        .expect("override reports its limit");
    assert_eq!(current.requests_per_unit, 1);
    assert_eq!(current.unit, Unit::Day as i32);
    assert_eq!(s.limit_remaining, 0);
    assert!(s.duration_until_reset.is_some());
    let resp = call(
        &mut rls,
        request(
            "rules",
            vec![descriptor_with_limit(
                &[("client", "o")],
                1,
                RateLimitUnit::Day,
            )],
            0,
        ),
    )
    .await;
    assert_eq!(overall(&resp), Code::OverLimit, "{resp:?}");
    // The override applies even where the domain's tree has no rule for the entries.
    let resp = call(
        &mut rls,
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
    .await;
    let s = &resp.statuses[0];
    assert_eq!(s.code, Code::Ok as i32);
    let current = s
        .current_limit
        .as_ref()
        .expect("override reports its limit");
    assert_eq!(
        (current.requests_per_unit, current.unit),
        (5, Unit::Hour as i32)
    );
    assert_eq!(s.limit_remaining, 4);
}

#[tokio::test]
async fn unknown_domain_is_ok_with_no_limit_for_every_descriptor() {
    let node = TestNode::start(POLICY).await;
    let mut rls = node.rls().await;
    let resp = call(
        &mut rls,
        request(
            "no_such_domain",
            vec![
                descriptor(&[("database", "users")]),
                descriptor(&[("remote_address", "10.0.0.1")]),
            ],
            0,
        ),
    )
    .await;
    assert_eq!(overall(&resp), Code::Ok);
    assert_eq!(resp.statuses.len(), 2);
    for s in &resp.statuses {
        assert_no_limit(s);
    }
    assert!(resp.response_headers_to_add.is_empty(), "{resp:?}");
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
async fn assert_invalid(
    rls: &mut Rls,
    req: envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest,
    field: &str,
) {
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
    assert_invalid(&mut rls, request("", one(), 0), "domain").await;
    assert_invalid(&mut rls, request("rules", vec![], 0), "descriptors").await;
    assert_invalid(
        &mut rls,
        request(
            "rules",
            vec![descriptor(&[("client", "x")]), descriptor(&[])],
            0,
        ),
        "descriptors[1].entries",
    )
    .await;
    assert_invalid(
        &mut rls,
        request("rules", vec![descriptor(&[("client", "x"), ("", "v")])], 0),
        "descriptors[0].entries[1].key",
    )
    .await;
    let too_many = vec![descriptor(&[("client", "x")]); 65];
    assert_invalid(&mut rls, request("rules", too_many, 0), "descriptors").await;
    let long_entries: Vec<(String, String)> = (0..33)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let long_entries: Vec<(&str, &str)> = long_entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_invalid(
        &mut rls,
        request("rules", vec![descriptor(&long_entries)], 0),
        "descriptors[0].entries",
    )
    .await;
    assert_invalid(
        &mut rls,
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
    )
    .await;
    // Nothing was counted by the refused requests: the limit is untouched.
    let resp = call_one(&mut rls, "rules", &[("client", "x")]).await;
    assert_limited(
        &resp.statuses[0],
        Code::Ok,
        limit("rules/client", 2, Unit::Hour),
        1,
    );
}
