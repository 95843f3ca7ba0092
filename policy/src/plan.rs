//! Planning an Envoy RLS request against a policy: which limit, which counter, for each
//! descriptor, before anything is counted.
//!
//! Pure: the same policy and request always give the same plan, so `quorate policy test`
//! shows exactly what the server would do.
//!
//! A domain's descriptor tree gives each descriptor at most one rule. Its conditional
//! limits (Limitador's model) are then added to the descriptor each one reports on, so a
//! descriptor may carry several counted limits: all are counted, and the status shows the
//! most restrictive.

use std::sync::Arc;

use crate::metadata::Metadata;
use quorate_algorithms::{Algorithm, Rate, SECOND};

use super::conditions::ConditionalRule;
use super::descriptors::{Domain, EnvoyUnit, Matched, RateUnit, Rule, Step};
pub use super::rule::RequestDescriptor;
use super::rule::ENTRY_SEPARATOR;
use super::{Consistency, PolicySet};

/// What will happen to one request descriptor.
#[derive(Debug, Clone, PartialEq)]
pub enum DescriptorPlan {
    /// No rule applies (unknown domain, or no descriptor matched): OK, no limit.
    NoRule { reason: String },
    /// `unlimited: true` matched: OK, never counted.
    Unlimited { path: String },
    /// `requests_per_unit: 0` matched: always over the limit.
    Blocked { path: String, unit: RateUnit },
    /// Another matched limit `replaces` this one: OK, not counted.
    Replaced { path: String, by: String },
    /// Counted against every limit listed (at least one), in order: the descriptor's tree
    /// rule or override first, then the conditional limits that apply to it.
    Limited(Vec<LimitedPlan>),
}

/// One counted limit of a descriptor: `limit` (a policy limit name, or a synthesized
/// override name) and the counter `key` within it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitedPlan {
    pub limit: String,
    pub key: String,
    pub rate: Rate,
    pub consistency: Consistency,
    pub unit: RateUnit,
    /// The name shown to clients.
    pub shown_name: String,
    pub shadow_mode: bool,
    pub detailed_metric: bool,
    /// The rule's metric name as envoyproxy/ratelimit spells its stats key
    /// (`domain.key_value.key`), after `detailed_metric`, `value_to_metric` and
    /// `share_threshold`.
    pub metric: String,
    /// `metric` holds request values (`detailed_metric` or `value_to_metric`), so it is
    /// reported per value in `quorate_rls_detailed_total` (series capped).
    pub value_in_metric: bool,
    /// `metric` with every request value replaced by a short digest: the label
    /// `quorate_rls_detailed_total` shows (a descriptor value may be a credential).
    pub metric_label: String,
    /// Over the limit here only denies when every quota-mode descriptor is over.
    pub quota_mode: bool,
    /// The rule's `metadata`, returned to Envoy when this descriptor passes.
    pub metadata: Option<Arc<Metadata>>,
    /// Why this rule matched, for `quorate policy test`.
    pub explanation: String,
}

fn counter_key(entries: &[(String, String)]) -> String {
    let mut key = String::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            key.push(ENTRY_SEPARATOR);
        }
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// The counter of a tree rule: one per distinct entry values, except that an entry
/// matched by a `share_threshold` wildcard counts under its pattern (every matching value
/// shares it). A value equal to the pattern matches the pattern, so sharing its counter is
/// right.
fn tree_counter_key(entries: &[(String, String)], matched: &Matched<'_>) -> String {
    let shares = |(step, node): &(Step<'_>, &super::descriptors::Node)| {
        matches!(step, Step::Wildcard(_)) && node.share_threshold
    };
    if !matched.steps.iter().any(shares) {
        return counter_key(entries);
    }
    let shared: Vec<(String, String)> = entries
        .iter()
        .zip(&matched.steps)
        .map(|((k, v), (step, node))| match step {
            Step::Wildcard(pattern) if node.share_threshold => (k.clone(), pattern.to_string()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    counter_key(&shared)
}

/// envoyproxy/ratelimit's stats key for a matched rule, and whether it holds request
/// values. Its rules: a configured value (exact or wildcard pattern) names its level; a
/// key-only level is named by its key alone; `value_to_metric` names a key-only or
/// wildcard level by the request's value (non-empty); `share_threshold` keeps the pattern;
/// `detailed_metric` on the rule names every level by the request's value (keeping shared
/// patterns) and wins over `value_to_metric`.
///
/// With `redact`, every value that came from the request (not from the policy) is replaced
/// by a short digest: that form is what metric labels show, since a descriptor value may be
/// a credential.
fn stats_key(
    domain: &str,
    entries: &[(String, String)],
    matched: &Matched<'_>,
    redact: bool,
) -> (String, bool) {
    let detailed = matched.node.detailed_metric;
    let shared = |step: &Step<'_>, node: &super::descriptors::Node| {
        matches!(step, Step::Wildcard(_)) && node.share_threshold
    };
    let any_shared = matched.steps.iter().any(|(s, n)| shared(s, n));
    let mut name = domain.to_string();
    let mut per_value = detailed;
    for ((k, v), (step, node)) in entries.iter().zip(&matched.steps) {
        let redacted;
        let v = if redact && !matches!(step, Step::Exact) && !v.is_empty() {
            redacted = redacted_value(v);
            redacted.as_str()
        } else {
            v.as_str()
        };
        name.push('.');
        name.push_str(k);
        let value: Option<&str> = match step {
            Step::Wildcard(p) if node.share_threshold => Some(p),
            // Upstream writes `key_` for an empty value here, and only here.
            _ if detailed && !any_shared => Some(v),
            _ if detailed => Some(v).filter(|v| !v.is_empty()),
            Step::Exact => Some(v),
            Step::Wildcard(_) if node.value_to_metric => {
                per_value = true;
                Some(v).filter(|v| !v.is_empty())
            }
            Step::Wildcard(p) => Some(p),
            Step::KeyOnly if node.value_to_metric && !v.is_empty() => {
                per_value = true;
                Some(v)
            }
            Step::KeyOnly => None,
        };
        if let Some(value) = value {
            name.push('_');
            name.push_str(value);
        }
    }
    (name, per_value)
}

/// Plans every descriptor of one RLS request, applying envoyproxy/ratelimit's `replaces`.
pub fn plan_rls(
    policy: &PolicySet,
    domain: &str,
    descriptors: &[RequestDescriptor],
) -> Vec<DescriptorPlan> {
    let tree = policy.domains.get(domain);
    let mut plans: Vec<DescriptorPlan> = descriptors
        .iter()
        .map(|d| {
            // As envoyproxy/ratelimit: an unknown domain has no limits, not even overrides.
            let Some(tree) = tree else {
                return DescriptorPlan::NoRule {
                    reason: format!("unknown domain {domain:?}"),
                };
            };
            if let Some((requests, unit)) = d.limit_override {
                return override_plan(domain, d, requests, unit);
            }
            let Some(matched) = tree.find(&d.entries) else {
                let reason = if tree.root.is_empty() && !tree.conditional.is_empty() {
                    format!(
                        "none of the {} conditional limits of domain {domain:?} applies",
                        tree.conditional.len()
                    )
                } else {
                    format!("no descriptor of domain {domain:?} matches")
                };
                return DescriptorPlan::NoRule { reason };
            };
            match &matched.node.rule {
                Some(Rule::Unlimited) => DescriptorPlan::Unlimited { path: matched.path },
                Some(Rule::Blocked { unit }) => DescriptorPlan::Blocked {
                    path: matched.path,
                    unit: *unit,
                },
                Some(Rule::Limited {
                    limit,
                    spec,
                    display_name,
                    ..
                }) => {
                    let (metric, value_in_metric) = stats_key(domain, &d.entries, &matched, false);
                    let (metric_label, _) = stats_key(domain, &d.entries, &matched, true);
                    DescriptorPlan::Limited(vec![LimitedPlan {
                        limit: limit.clone(),
                        key: tree_counter_key(&d.entries, &matched),
                        rate: spec.rate,
                        consistency: spec.consistency,
                        unit: spec.unit,
                        shown_name: display_name.clone().unwrap_or_else(|| limit.clone()),
                        shadow_mode: matched.node.shadow_mode,
                        detailed_metric: matched.node.detailed_metric,
                        metric,
                        value_in_metric,
                        metric_label,
                        quota_mode: matched.node.quota_mode,
                        metadata: matched.node.metadata.clone(),
                        explanation: format!(
                            "matched {domain}/{} ({}{}, depth {})",
                            matched.path,
                            matched.last().describe(),
                            if matched.steps.iter().any(|(s, n)| {
                                matches!(s, Step::Wildcard(_)) && n.share_threshold
                            }) {
                                "; share_threshold: one counter for every matching value"
                            } else {
                                ""
                            },
                            d.entries.len()
                        ),
                    }])
                }
                None => DescriptorPlan::NoRule {
                    reason: "matched a descriptor without rate_limit".into(),
                },
            }
        })
        .collect();

    // `replaces`: a matched limit named in another matched limit's `replaces` is skipped.
    let replaced: Vec<(String, String)> = descriptors
        .iter()
        .zip(&plans)
        .filter_map(|(d, p)| match p {
            DescriptorPlan::Limited(ls) => {
                let l = ls.first()?;
                tree.and_then(|t| t.find(&d.entries))
                    .and_then(|m| match &m.node.rule {
                        Some(Rule::Limited { replaces, .. }) => {
                            Some((l.shown_name.clone(), replaces.clone()))
                        }
                        _ => None,
                    })
            }
            _ => None,
        })
        .flat_map(|(by, names)| names.into_iter().map(move |n| (n, by.clone())))
        .collect();
    if !replaced.is_empty() {
        for plan in &mut plans {
            let DescriptorPlan::Limited(ls) = plan else {
                continue;
            };
            let Some(l) = ls.first() else { continue };
            if let Some((_, by)) = replaced
                .iter()
                .find(|(name, by)| *name == l.shown_name && *by != l.shown_name)
            {
                *plan = DescriptorPlan::Replaced {
                    path: l.limit.clone(),
                    by: by.clone(),
                };
            }
        }
    }
    if let Some(tree) = tree {
        add_conditional(domain, tree, descriptors, &mut plans);
    }
    plans
}

/// Adds each applying conditional limit to the plan of the descriptor it reports on.
/// A tree rule that is `unlimited` or replaced does not exempt a descriptor from them. A
/// blocking limit (`max_value: 0`) makes the descriptor blocked and nothing else is
/// counted on it (as in Limitador, a refused request consumes no quota).
fn add_conditional(
    domain: &str,
    tree: &Domain,
    descriptors: &[RequestDescriptor],
    plans: &mut [DescriptorPlan],
) {
    for c in &tree.conditional {
        let Ok(key) = c.evaluate(descriptors) else {
            continue;
        };
        let Some(plan) = plans.get_mut(c.descriptor) else {
            continue;
        };
        match &c.rule {
            ConditionalRule::Blocked(unit) => {
                if !matches!(plan, DescriptorPlan::Blocked { .. }) {
                    *plan = DescriptorPlan::Blocked {
                        path: c.shown_name.clone(),
                        unit: *unit,
                    };
                }
            }
            ConditionalRule::Limited(spec) => {
                let conditions: Vec<String> = c.conditions.iter().map(|x| x.to_string()).collect();
                let variables: Vec<String> = c.variables.iter().map(|x| x.to_string()).collect();
                let explanation = format!(
                    "conditional limit {domain}/{} applies: {}; counted per {}",
                    c.shown_name,
                    if conditions.is_empty() {
                        "no conditions".to_string()
                    } else {
                        conditions.join(" && ")
                    },
                    if variables.is_empty() {
                        "request (one counter)".to_string()
                    } else {
                        variables.join(", ")
                    }
                );
                let limited = LimitedPlan {
                    limit: c.limit.clone(),
                    key,
                    rate: spec.rate,
                    consistency: spec.consistency,
                    unit: spec.unit,
                    shown_name: c.shown_name.clone(),
                    shadow_mode: false,
                    detailed_metric: false,
                    metric: format!("{domain}.{}", c.shown_name),
                    value_in_metric: false,
                    metric_label: format!("{domain}.{}", c.shown_name),
                    quota_mode: false,
                    metadata: None,
                    explanation,
                };
                match plan {
                    DescriptorPlan::Limited(ls) => ls.push(limited),
                    DescriptorPlan::Blocked { .. } => {}
                    other => *other = DescriptorPlan::Limited(vec![limited]),
                }
            }
        }
    }
}

/// Envoy's per-descriptor override: a fixed window of `requests` per `unit`, regardless of
/// the configuration (as envoyproxy/ratelimit does).
fn override_plan(
    domain: &str,
    d: &RequestDescriptor,
    requests: u64,
    unit: EnvoyUnit,
) -> DescriptorPlan {
    let window = unit.seconds() * SECOND;
    let name = format!("{domain}/override/{requests}per{}s", unit.seconds());
    match Rate::new(Algorithm::FixedWindow, requests, window, None) {
        Ok(rate) => DescriptorPlan::Limited(vec![LimitedPlan {
            limit: name.clone(),
            key: counter_key(&d.entries),
            rate,
            consistency: Consistency::Strict,
            unit: RateUnit {
                base: unit,
                multiplier: 1,
            },
            shown_name: name,
            shadow_mode: false,
            detailed_metric: false,
            // As envoyproxy/ratelimit names an override's stats: every key and value.
            metric: std::iter::once(domain.to_string())
                .chain(d.entries.iter().map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}_{v}")
                    }
                }))
                .collect::<Vec<_>>()
                .join("."),
            value_in_metric: false,
            metric_label: format!("{domain}.override"),
            quota_mode: false,
            metadata: None,
            explanation: "the request's limit override".into(),
        }]),
        Err(_) => DescriptorPlan::Blocked {
            path: name,
            unit: RateUnit {
                base: unit,
                multiplier: 1,
            },
        },
    }
}

/// `#` and the first 12 hex digits of `value`'s SHA-256: how a request value appears in a
/// metric label, so series stay distinct per value and a credential sent as a descriptor
/// value never reaches `/metrics`.
pub fn redacted_value(value: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(13);
    out.push('#');
    for byte in &digest[..6] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PolicyFormat, PolicySource};

    fn policy(text: &str) -> PolicySet {
        PolicySet::compile(&PolicySource {
            format: PolicyFormat::Quorate,
            text: text.into(),
        })
        .unwrap()
    }

    const POLICY: &str = r#"
domains:
  - domain: rl
    descriptors:
      - key: category
        value: account
        rate_limit: {name: per_account, unit: minute, requests_per_unit: 10, replaces: [{name: per_user}]}
      - key: user
        rate_limit: {name: per_user, unit: minute, requests_per_unit: 5}
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 3}
        shadow_mode: true
"#;

    #[test]
    fn one_counter_per_value_for_key_only_descriptors() {
        let p = policy(POLICY);
        let plans = plan_rls(
            &p,
            "rl",
            &[
                RequestDescriptor::from_pairs(&[("remote_address", "1.2.3.4")]),
                RequestDescriptor::from_pairs(&[("remote_address", "5.6.7.8")]),
            ],
        );
        let keys: Vec<_> = plans
            .iter()
            .map(|p| match p {
                DescriptorPlan::Limited(l) => {
                    (l[0].limit.clone(), l[0].key.clone(), l[0].shadow_mode)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(keys[0].0, keys[1].0, "same limit");
        assert_ne!(keys[0].1, keys[1].1, "different counters");
        assert!(keys[0].2, "shadow mode carried");
    }

    #[test]
    fn unknown_domain_and_unmatched_descriptors_have_no_rule() {
        let p = policy(POLICY);
        let plans = plan_rls(
            &p,
            "nope",
            &[RequestDescriptor::from_pairs(&[("user", "a")])],
        );
        assert!(
            matches!(&plans[0], DescriptorPlan::NoRule { reason } if reason.contains("unknown domain"))
        );
        let plans = plan_rls(
            &p,
            "rl",
            &[RequestDescriptor::from_pairs(&[("other", "a")])],
        );
        assert!(matches!(&plans[0], DescriptorPlan::NoRule { .. }));
    }

    #[test]
    fn replaces_skips_the_replaced_limit_only_when_both_match() {
        let p = policy(POLICY);
        let both = plan_rls(
            &p,
            "rl",
            &[
                RequestDescriptor::from_pairs(&[("category", "account")]),
                RequestDescriptor::from_pairs(&[("user", "bob")]),
            ],
        );
        assert!(matches!(&both[0], DescriptorPlan::Limited(l) if l[0].shown_name == "per_account"));
        assert!(matches!(&both[1], DescriptorPlan::Replaced { by, .. } if by == "per_account"));
        let alone = plan_rls(
            &p,
            "rl",
            &[RequestDescriptor::from_pairs(&[("user", "bob")])],
        );
        assert!(matches!(&alone[0], DescriptorPlan::Limited(l) if l[0].shown_name == "per_user"));
    }

    #[test]
    fn limit_override_wins_even_without_a_rule_but_not_in_an_unknown_domain() {
        let p = policy(POLICY);
        let mut d = RequestDescriptor::from_pairs(&[("anything", "x")]);
        d.limit_override = Some((42, EnvoyUnit::Hour));
        let unknown = plan_rls(&p, "nope", std::slice::from_ref(&d));
        assert!(
            matches!(&unknown[0], DescriptorPlan::NoRule { .. }),
            "{unknown:?}"
        );
        let plans = plan_rls(&p, "rl", &[d]);
        match &plans[0] {
            DescriptorPlan::Limited(l) => {
                assert_eq!(l[0].rate.limit(), 42);
                assert_eq!(l[0].rate.window(), 3_600 * SECOND);
            }
            other => panic!("{other:?}"),
        }
    }

    fn limitador(text: &str) -> PolicySet {
        PolicySet::compile(&PolicySource {
            format: PolicyFormat::Limitador,
            text: text.into(),
        })
        .unwrap()
    }

    const LIMITADOR: &str = r#"
- namespace: api
  name: get_per_user
  max_value: 5
  seconds: 60
  conditions: ["descriptors[0]['method'] == 'GET'"]
  variables: ["descriptors[0]['user']"]
- namespace: api
  name: all_per_user
  max_value: 100
  seconds: 3600
  conditions: []
  variables: ["descriptors[0].user"]
- namespace: api
  name: per_app
  max_value: 50
  seconds: 1
  conditions: []
  variables: ["descriptors[1].app"]
- namespace: api
  name: banned
  max_value: 0
  seconds: 1
  conditions: ["descriptors[0].user == 'mallory'"]
  variables: []
"#;

    #[test]
    fn every_applying_conditional_limit_is_counted_on_its_descriptor() {
        let p = limitador(LIMITADOR);
        let plans = plan_rls(
            &p,
            "api",
            &[
                RequestDescriptor::from_pairs(&[("method", "GET"), ("user", "bob")]),
                RequestDescriptor::from_pairs(&[("app", "a1")]),
            ],
        );
        match &plans[0] {
            DescriptorPlan::Limited(ls) => {
                let names: Vec<_> = ls.iter().map(|l| l.shown_name.as_str()).collect();
                assert_eq!(names, ["get_per_user", "all_per_user"]);
                assert_eq!(ls[0].key, "user=bob");
            }
            other => panic!("{other:?}"),
        }
        match &plans[1] {
            DescriptorPlan::Limited(ls) => assert_eq!(ls[0].key, "[1]app=a1"),
            other => panic!("{other:?}"),
        }
        // POST: only the unconditional limit applies; no second descriptor, no per_app.
        let plans = plan_rls(
            &p,
            "api",
            &[RequestDescriptor::from_pairs(&[
                ("method", "POST"),
                ("user", "bob"),
            ])],
        );
        assert!(matches!(&plans[0], DescriptorPlan::Limited(ls) if ls.len() == 1));
        // A missing variable: the limit does not apply.
        let plans = plan_rls(
            &p,
            "api",
            &[RequestDescriptor::from_pairs(&[("method", "GET")])],
        );
        assert!(
            matches!(&plans[0], DescriptorPlan::NoRule { reason } if reason.contains("conditional"))
        );
        let plans = plan_rls(
            &p,
            "api",
            &[RequestDescriptor::from_pairs(&[("user", "mallory")])],
        );
        assert!(matches!(&plans[0], DescriptorPlan::Blocked { path, .. } if path == "banned"));
    }

    /// A descriptor value may be a credential: the metric label carries its digest, the
    /// policy's own values stay readable, and `metric` (shown by `policy test`) is intact.
    #[test]
    fn metric_labels_carry_digests_of_request_values_only() {
        let p = policy(
            "domains:\n  - domain: d\n    descriptors:\n      - key: plan\n        value: gold\n        descriptors:\n          - key: api_key\n            detailed_metric: true\n            rate_limit: {unit: minute, requests_per_unit: 5}\n",
        );
        let plans = plan_rls(
            &p,
            "d",
            &[RequestDescriptor::from_pairs(&[
                ("plan", "gold"),
                ("api_key", "sk_live_SECRET"),
            ])],
        );
        match &plans[0] {
            DescriptorPlan::Limited(ls) => {
                assert!(ls[0].value_in_metric);
                assert!(ls[0].metric.contains("sk_live_SECRET"), "{}", ls[0].metric);
                let label = &ls[0].metric_label;
                assert!(!label.contains("SECRET"), "{label}");
                assert!(label.contains("plan_gold"), "{label}");
                let digest = redacted_value("sk_live_SECRET");
                assert!(label.ends_with(&format!("api_key_{digest}")), "{label}");
            }
            other => panic!("{other:?}"),
        }
    }
}
