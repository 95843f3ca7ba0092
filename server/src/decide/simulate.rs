//! `quorate policy test`: sample Envoy RLS requests evaluated against a policy, offline.
//!
//! Each sample goes through exactly what the server runs — [`rls::validate`],
//! [`rls::plan`] and [`rls::answer`] — except the counters: they live in a private store
//! that starts empty for each run and sees every sample at the same instant, so repeating
//! a request shows when it would go over. No live counter, node or network is touched.
//!
//! Samples are JSON: `{"domain": "rl", "descriptors": [D, ...], "hits_addend": 1}` where
//! a descriptor `D` is a list of entries — `{"key": "user", "value": "bob"}` or
//! `["user", "bob"]` — or `{"entries": [...], "limit": {"requests_per_unit": 5,
//! "unit": "MINUTE"}, "hits_addend": 2}`.

use std::fmt::Write as _;

use quorate_algorithms::{counter_key, CounterStore, Decision, Nanos, SECOND};
use serde::Serialize;
use serde_json::Value;

use super::rls::{self, DescriptorInput, DescriptorStatus, RlsPlan, RlsRequest};
use crate::policy::metadata::{Metadata, MetadataValue};
use crate::policy::{DescriptorPlan, EnvoyUnit, LimitedPlan, PolicySet};

/// The instant every sample is decided at: the start of a fixed window for every Envoy
/// unit but the week, so `reset` shows whole windows.
const NOW: Nanos = 946_080_000 * SECOND;

/// The most samples one run evaluates (the private counter store is sized for them).
pub const MAX_SAMPLES: usize = 10_000;

// === parsing samples ===

fn text_field(v: &Value, field: &str) -> Result<String, String> {
    match v.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{field}` must be a string, got {other}")),
        None => Err(format!("`{field}` is required")),
    }
}

fn u64_field(v: &Value, field: &str) -> Result<Option<u64>, String> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{field}` must be a non-negative integer, got {n}")),
    }
}

fn entry(v: &Value, at: &str) -> Result<(String, String), String> {
    match v {
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(key), Value::String(value)] => Ok((key.clone(), value.clone())),
            _ => Err(format!("{at}: a pair must be [\"key\", \"value\"]")),
        },
        Value::Object(_) => Ok((
            text_field(v, "key").map_err(|e| format!("{at}: {e}"))?,
            text_field(v, "value").map_err(|e| format!("{at}: {e}"))?,
        )),
        other => Err(format!(
            "{at}: an entry is {{\"key\": .., \"value\": ..}} or [\"key\", \"value\"], got {other}"
        )),
    }
}

fn entries(v: &Value, at: &str) -> Result<Vec<(String, String)>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, e)| entry(e, &format!("{at}[{i}]")))
            .collect(),
        other => Err(format!("{at}: expected a list of entries, got {other}")),
    }
}

/// The units a request's `limit` override may name (Envoy's `RateLimitUnit`, which,
/// unlike the response's unit, has no week).
fn request_unit(name: &str) -> Option<EnvoyUnit> {
    Some(match name.to_ascii_uppercase().as_str() {
        "SECOND" => EnvoyUnit::Second,
        "MINUTE" => EnvoyUnit::Minute,
        "HOUR" => EnvoyUnit::Hour,
        "DAY" => EnvoyUnit::Day,
        "MONTH" => EnvoyUnit::Month,
        "YEAR" => EnvoyUnit::Year,
        _ => return None,
    })
}

fn descriptor(v: &Value, at: &str) -> Result<DescriptorInput, String> {
    if !v.is_object() {
        return Ok(DescriptorInput {
            entries: entries(v, at)?,
            ..Default::default()
        });
    }
    let list = v
        .get("entries")
        .ok_or_else(|| format!("{at}: `entries` is required"))?;
    let limit = match v.get("limit") {
        None | Some(Value::Null) => None,
        Some(l) => {
            let requests = u64_field(l, "requests_per_unit")
                .map_err(|e| format!("{at}.limit: {e}"))?
                .ok_or_else(|| format!("{at}.limit: `requests_per_unit` is required"))?;
            let unit = text_field(l, "unit").map_err(|e| format!("{at}.limit: {e}"))?;
            let unit = request_unit(&unit)
                .ok_or_else(|| format!("{at}.limit.unit: unknown unit {unit:?}"))?;
            // Envoy's field is a u32: a larger number is refused as the wire would.
            let requests = u32::try_from(requests)
                .map_err(|_| format!("{at}.limit.requests_per_unit: too large"))?;
            Some((u64::from(requests), Some(unit)))
        }
    };
    let hits_addend = u64_field(v, "hits_addend").map_err(|e| format!("{at}: {e}"))?;
    Ok(DescriptorInput {
        entries: entries(list, &format!("{at}.entries"))?,
        limit,
        hits_addend,
        is_negative_hits: false,
    })
}

/// Parses and validates one JSON sample, as the server validates a request.
pub fn parse_sample(json: &str) -> Result<RlsRequest, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("a request is a JSON object with `domain` and `descriptors`".into());
    }
    let domain = text_field(&v, "domain")?;
    let descriptors = match v.get("descriptors") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, d)| descriptor(d, &format!("descriptors[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("`descriptors` must be a list, got {other}")),
        None => return Err("`descriptors` is required".into()),
    };
    let hits_addend = u64_field(&v, "hits_addend")?.unwrap_or(0);
    let hits_addend = u32::try_from(hits_addend).map_err(|_| "`hits_addend` is too large")?;
    rls::validate(domain, descriptors, hits_addend).map_err(|e| e.to_string())
}

/// Parses a requests file: one JSON sample per line; blank lines and `#` comments are
/// skipped. Errors name the line.
pub fn parse_samples_file(text: &str) -> Result<Vec<RlsRequest>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| parse_sample(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

// === evaluating ===

/// One sample's evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct SampleReport {
    /// 1-based position among the samples.
    pub request: usize,
    pub domain: String,
    /// `OK` or `OVER_LIMIT`, as Envoy would receive it.
    pub overall_code: String,
    pub descriptors: Vec<DescriptorReport>,
    /// Conditional limits of the domain that do not apply to this request, and why.
    pub not_applying: Vec<NotApplying>,
    /// Response headers the server would add.
    pub headers: Vec<(String, String)>,
    /// `dynamic_metadata` the server would return (when a matched rule has `metadata:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_metadata: Option<Value>,
}

/// One descriptor's rule and status.
#[derive(Debug, Clone, Serialize)]
pub struct DescriptorReport {
    pub index: usize,
    pub entries: Vec<(String, String)>,
    pub cost: u64,
    /// `limited`, `no_rule`, `unlimited`, `blocked` or `replaced`.
    pub outcome: &'static str,
    /// The matched path (unlimited, blocked, replaced).
    pub path: Option<String>,
    /// Why no rule applies, or which limit replaced this one.
    pub reason: Option<String>,
    /// The counted limits and their decisions (with this run's private counters).
    pub limits: Vec<LimitReport>,
    pub status: StatusReport,
}

/// One counted limit.
#[derive(Debug, Clone, Serialize)]
pub struct LimitReport {
    /// The policy limit counted against.
    pub limit: String,
    /// The name clients see.
    pub name: String,
    pub key: String,
    pub algorithm: &'static str,
    pub requests: u64,
    pub window: String,
    pub consistency: &'static str,
    pub shadow_mode: bool,
    pub detailed_metric: bool,
    pub quota_mode: bool,
    /// The metric name, as envoyproxy/ratelimit spells its stats key.
    pub metric: String,
    pub why: String,
    pub allowed: bool,
    pub remaining: u64,
    pub reset_after_ms: u64,
}

/// The descriptor status Envoy would receive.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub code: String,
    pub limit_name: Option<String>,
    pub requests_per_unit: Option<u32>,
    pub unit: Option<String>,
    pub limit_remaining: u32,
}

/// A conditional limit that does not apply.
#[derive(Debug, Clone, Serialize)]
pub struct NotApplying {
    pub limit: String,
    pub descriptor: usize,
    pub reason: String,
}

/// A window as the quorate format writes it: `1d`, `1h`, `15m`, `10s`, `250ms`.
pub fn window_text(window: Nanos) -> String {
    if !window.is_multiple_of(SECOND) {
        return format!("{}ms", window / 1_000_000);
    }
    let secs = window / SECOND;
    for (unit, suffix) in [(86_400, "d"), (3_600, "h"), (60, "m")] {
        if secs.is_multiple_of(unit) {
            return format!("{}{suffix}", secs / unit);
        }
    }
    format!("{secs}s")
}

/// Envoy's name for a status code.
fn code_name(over_limit: bool) -> String {
    if over_limit { "OVER_LIMIT" } else { "OK" }.to_string()
}

/// Envoy's name for a response unit.
fn unit_name(unit: EnvoyUnit) -> &'static str {
    match unit {
        EnvoyUnit::Second => "SECOND",
        EnvoyUnit::Minute => "MINUTE",
        EnvoyUnit::Hour => "HOUR",
        EnvoyUnit::Day => "DAY",
        EnvoyUnit::Week => "WEEK",
        EnvoyUnit::Month => "MONTH",
        EnvoyUnit::Year => "YEAR",
    }
}

/// Evaluates samples in order against `policy` with private, initially empty counters.
pub fn simulate(policy: &PolicySet, samples: &[RlsRequest]) -> Vec<SampleReport> {
    let store = CounterStore::new(MAX_SAMPLES.saturating_mul(64).max(1));
    simulate_with(policy, samples, &|limit, key, rate, cost| {
        store.check(&counter_key(limit, key), rate, NOW, cost)
    })
}

/// Counts one sample's hits as the server does ([`rls`]'s all-or-nothing rules), with
/// `decide` alone: every hit is peeked first, and a hit passes if its cost, plus what
/// earlier hits of the sample take from the same counter, fits what the peek left (the
/// [`Decision::remaining`] contract). Only a sample whose enforced hits all pass is then
/// counted for real.
fn count(
    policy: &PolicySet,
    sample: &RlsRequest,
    plans: &[DescriptorPlan],
    hits: &[crate::engine::ResolvedHit],
    decide: &dyn Fn(&str, &str, &quorate_algorithms::Rate, u64) -> Decision,
) -> Vec<Decision> {
    let limited: Vec<&LimitedPlan> = plans
        .iter()
        .flat_map(|p| match p {
            DescriptorPlan::Limited(limits) => limits.as_slice(),
            _ => &[],
        })
        .collect();
    let real =
        |h: &crate::engine::ResolvedHit| decide(&h.hit.limit, &h.hit.key, &h.hit.rate, h.hit.cost);
    if !policy.rls_all_or_nothing(&sample.domain) || limited.iter().any(|l| l.quota_mode) {
        return hits.iter().map(real).collect();
    }
    let blocked = plans
        .iter()
        .any(|p| matches!(p, DescriptorPlan::Blocked { .. }));
    let advisory = |i: usize| limited.get(i).is_some_and(|l| l.shadow_mode);
    let peeks: Vec<Decision> = hits
        .iter()
        .map(|h| decide(&h.hit.limit, &h.hit.key, &h.hit.rate, 0))
        .collect();
    if blocked {
        return peeks;
    }
    let mut taken: std::collections::HashMap<(&str, &str), u64> = Default::default();
    let fits: Vec<bool> = hits
        .iter()
        .zip(&peeks)
        .map(|(h, peek)| {
            let t = taken.entry((&h.hit.limit, &h.hit.key)).or_default();
            *t = t.saturating_add(h.hit.cost);
            *t <= peek.remaining && h.hit.cost <= peek.limit
        })
        .collect();
    let granted = (0..hits.len()).all(|i| advisory(i) || fits[i]);
    hits.iter()
        .enumerate()
        .map(|(i, h)| {
            if granted {
                real(h)
            } else if fits[i] || advisory(i) {
                peeks[i]
            } else if h.hit.cost > peeks[i].remaining {
                // Denied on its own: the real check says why, and takes nothing.
                real(h)
            } else {
                Decision {
                    allowed: false,
                    retry_after: None,
                    denied: Some(quorate_algorithms::DenyReason::OverLimit),
                    ..peeks[i]
                }
            }
        })
        .collect()
}

/// Evaluates samples in order against `policy`, deciding each counted limit with
/// `decide(limit, key, rate, cost)` (the dashboard's explain passes the live counters,
/// read without spending anything).
pub fn simulate_with(
    policy: &PolicySet,
    samples: &[RlsRequest],
    decide: &dyn Fn(&str, &str, &quorate_algorithms::Rate, u64) -> Decision,
) -> Vec<SampleReport> {
    samples
        .iter()
        .enumerate()
        .map(|(n, sample)| {
            let RlsPlan { plans, hits } = rls::plan(policy, sample);
            let decisions = count(policy, sample, &plans, &hits, decide);
            // Each descriptor's counted limits with their decisions, for the report.
            let mut decided = decisions.iter();
            let counted: Vec<Vec<(LimitedPlan, Decision)>> = plans
                .iter()
                .map(|plan| match plan {
                    DescriptorPlan::Limited(limits) => limits
                        .iter()
                        .zip(decided.by_ref())
                        .map(|(l, d)| (l.clone(), *d))
                        .collect(),
                    _ => Vec::new(),
                })
                .collect();
            let response = rls::answer(sample, &plans, &decisions, policy.headers);
            let descriptors = plans
                .iter()
                .zip(counted)
                .zip(sample.descriptors.iter().zip(&sample.costs))
                .enumerate()
                .map(|(i, ((plan, these), (d, cost)))| {
                    describe(
                        i,
                        d.entries.clone(),
                        *cost,
                        plan,
                        these,
                        response.statuses.get(i),
                    )
                })
                .collect();
            let not_applying = policy
                .domains
                .get(&sample.domain)
                .map(|domain| {
                    domain
                        .conditional
                        .iter()
                        .filter_map(|c| {
                            c.evaluate(&sample.descriptors)
                                .err()
                                .map(|reason| NotApplying {
                                    limit: c.shown_name.clone(),
                                    descriptor: c.descriptor,
                                    reason,
                                })
                        })
                        .collect()
                })
                .unwrap_or_default();
            SampleReport {
                request: n + 1,
                domain: sample.domain.clone(),
                overall_code: code_name(response.over_limit),
                descriptors,
                not_applying,
                headers: response
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                dynamic_metadata: response.dynamic_metadata.as_ref().map(metadata_json),
            }
        })
        .collect()
}

/// Metadata as the JSON it stands for (numbers are doubles, as in a protobuf Struct).
pub fn metadata_json(m: &Metadata) -> Value {
    fn value(v: &MetadataValue) -> Value {
        match v {
            MetadataValue::Null => Value::Null,
            MetadataValue::Number(n) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            MetadataValue::String(s) => Value::String(s.clone()),
            MetadataValue::Bool(b) => Value::Bool(*b),
            MetadataValue::Map(m) => metadata_json(m),
            MetadataValue::List(l) => Value::Array(l.iter().map(value).collect()),
        }
    }
    Value::Object(
        m.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

/// A protobuf Struct (an RLS answer received over the wire) as the JSON it stands for.
pub fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Some(Kind::StringValue(s)) => Value::String(s.clone()),
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
        }
    }
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn describe(
    index: usize,
    entries: Vec<(String, String)>,
    cost: u64,
    plan: &DescriptorPlan,
    counted: Vec<(LimitedPlan, Decision)>,
    status: Option<&DescriptorStatus>,
) -> DescriptorReport {
    let (outcome, path, reason) = match plan {
        DescriptorPlan::NoRule { reason } => ("no_rule", None, Some(reason.clone())),
        DescriptorPlan::Unlimited { path } => ("unlimited", Some(path.clone()), None),
        DescriptorPlan::Blocked { path, .. } => (
            "blocked",
            Some(path.clone()),
            Some("requests_per_unit (or max_value) is 0: always over the limit".into()),
        ),
        DescriptorPlan::Replaced { path, by } => (
            "replaced",
            Some(path.clone()),
            Some(format!("replaced by {by:?}, which also matched")),
        ),
        DescriptorPlan::Limited(_) => ("limited", None, None),
    };
    let limits = counted
        .into_iter()
        .map(|(l, d)| LimitReport {
            limit: l.limit,
            name: l.shown_name,
            key: l.key.replace('\u{1e}', ", "),
            algorithm: l.rate.algorithm().as_str(),
            requests: l.rate.limit(),
            window: window_text(l.rate.window()),
            consistency: l.consistency.as_str(),
            shadow_mode: l.shadow_mode,
            detailed_metric: l.detailed_metric,
            quota_mode: l.quota_mode,
            metric: l.metric,
            why: l.explanation,
            allowed: d.allowed,
            remaining: d.remaining,
            reset_after_ms: d.reset_after / 1_000_000,
        })
        .collect();
    let status = match status {
        Some(s) => StatusReport {
            code: code_name(s.over_limit),
            limit_name: s.current_limit.as_ref().map(|l| l.name.clone()),
            requests_per_unit: s.current_limit.as_ref().map(|l| l.requests_per_unit),
            unit: s
                .current_limit
                .as_ref()
                .map(|l| unit_name(l.unit).to_string()),
            limit_remaining: s.limit_remaining,
        },
        None => StatusReport {
            code: "OK".into(),
            limit_name: None,
            requests_per_unit: None,
            unit: None,
            limit_remaining: u32::MAX,
        },
    };
    DescriptorReport {
        index,
        entries,
        cost,
        outcome,
        path,
        reason,
        limits,
        status,
    }
}

// === rendering ===

/// The human-readable report.
pub fn render_text(reports: &[SampleReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(
            out,
            "request {}: domain {:?} -> {}",
            r.request, r.domain, r.overall_code
        );
        for d in &r.descriptors {
            let entries: Vec<String> = d.entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "  descriptors[{}] {} (cost {})",
                d.index,
                entries.join(", "),
                d.cost
            );
            match d.outcome {
                "limited" => {}
                "no_rule" => {
                    let _ = writeln!(out, "    no rule: {}", d.reason.as_deref().unwrap_or(""));
                }
                other => {
                    let _ = writeln!(
                        out,
                        "    {other}: {}{}",
                        d.path.as_deref().unwrap_or(""),
                        d.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    );
                }
            }
            for l in &d.limits {
                let mut flags = Vec::new();
                if l.shadow_mode {
                    flags.push("shadow mode: reported OK");
                }
                if l.detailed_metric {
                    flags.push("detailed metric");
                }
                if l.quota_mode {
                    flags.push("quota mode");
                }
                let _ = writeln!(
                    out,
                    "    limit {:?} ({}): {} per {}, {}, {}; counter {:?}{}",
                    l.name,
                    l.limit,
                    l.requests,
                    l.window,
                    l.algorithm,
                    l.consistency,
                    l.key,
                    if flags.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", flags.join(", "))
                    }
                );
                let _ = writeln!(out, "      why: {}", l.why);
                let _ = writeln!(out, "      metric: {}", l.metric);
                let _ = writeln!(
                    out,
                    "      -> {}, {} remaining, resets in {} ms",
                    if l.allowed {
                        "allowed"
                    } else {
                        "over the limit"
                    },
                    l.remaining,
                    l.reset_after_ms
                );
            }
            let s = &d.status;
            match &s.limit_name {
                Some(name) => {
                    let _ = writeln!(
                        out,
                        "    status: {} (current_limit {:?}: {} per {}, {} remaining)",
                        s.code,
                        name,
                        s.requests_per_unit.unwrap_or(0),
                        s.unit.as_deref().unwrap_or("?"),
                        s.limit_remaining
                    );
                }
                None => {
                    let _ = writeln!(out, "    status: {} (no limit)", s.code);
                }
            }
        }
        for n in &r.not_applying {
            let _ = writeln!(
                out,
                "  conditional limit {:?} (reports on descriptors[{}]) does not apply: {}",
                n.limit, n.descriptor, n.reason
            );
        }
        for (k, v) in &r.headers {
            let _ = writeln!(out, "  header {k}: {v}");
        }
        if let Some(m) = &r.dynamic_metadata {
            let _ = writeln!(out, "  dynamic_metadata: {m}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyFormat, PolicySource};

    fn policy(format: PolicyFormat, text: &str) -> PolicySet {
        PolicySet::compile(&PolicySource {
            format,
            text: text.into(),
        })
        .unwrap()
    }

    #[test]
    fn samples_parse_in_both_entry_forms() {
        let a = parse_sample(
            r#"{"domain":"rl","descriptors":[[{"key":"user","value":"bob"}]],"hits_addend":1}"#,
        )
        .unwrap();
        let b = parse_sample(r#"{"domain":"rl","descriptors":[[["user","bob"]]]}"#).unwrap();
        assert_eq!(a, b);
        let c = parse_sample(
            r#"{"domain":"rl","descriptors":[{"entries":[["k","v"]],"limit":{"requests_per_unit":5,"unit":"minute"},"hits_addend":3}]}"#,
        )
        .unwrap();
        assert_eq!(c.costs, vec![3]);
        assert!(c.descriptors[0].limit_override.is_some());
        for (bad, expected) in [
            ("nope", "not JSON"),
            (r#"{"descriptors":[]}"#, "`domain`"),
            (r#"{"domain":"rl","descriptors":[]}"#, "at least one"),
            (r#"{"domain":"rl","descriptors":[[["k"]]]}"#, "pair"),
            (r#"{"domain":"rl","descriptors":[[["","v"]]]}"#, "key"),
        ] {
            let err = parse_sample(bad).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
        let file = "# comment\n\n{\"domain\":\"rl\",\"descriptors\":[[[\"a\",\"b\"]]]}\nbroken\n";
        assert!(parse_samples_file(file).unwrap_err().starts_with("line 4:"));
    }

    #[test]
    fn repeated_samples_go_over_and_the_report_says_why() {
        let p = policy(
            PolicyFormat::EnvoyRatelimit,
            "domain: rl\ndescriptors:\n  - key: user\n    rate_limit: {name: per_user, unit: minute, requests_per_unit: 2}\n",
        );
        let s = parse_sample(r#"{"domain":"rl","descriptors":[[["user","bob"]],[["other","x"]]]}"#)
            .unwrap();
        let reports = simulate(&p, &[s.clone(), s.clone(), s]);
        assert_eq!(reports[0].overall_code, "OK");
        assert_eq!(reports[2].overall_code, "OVER_LIMIT");
        let d = &reports[0].descriptors[0];
        assert_eq!(d.outcome, "limited");
        assert_eq!(d.limits[0].name, "per_user");
        assert_eq!(d.limits[0].key, "user=bob");
        assert_eq!(d.limits[0].window, "1m");
        assert!(d.limits[0].why.contains("rl/user"));
        assert_eq!(reports[0].descriptors[1].outcome, "no_rule");
        let text = render_text(&reports);
        assert!(
            text.contains("request 3: domain \"rl\" -> OVER_LIMIT"),
            "{text}"
        );
        assert!(text.contains("no rule: no descriptor"), "{text}");
        let json = serde_json::to_string(&reports).unwrap();
        assert!(json.contains("\"outcome\":\"limited\""));
    }

    #[test]
    fn samples_are_counted_all_or_nothing_unless_the_domain_says_otherwise() {
        let file = |switch: &str| {
            format!(
                "domain: shop\n{switch}descriptors:\n  - key: small\n    rate_limit: {{unit: hour, requests_per_unit: 1}}\n  - key: big\n    rate_limit: {{unit: hour, requests_per_unit: 100}}\n"
            )
        };
        let s = parse_sample(r#"{"domain":"shop","descriptors":[[["small","u"]],[["big","u"]]]}"#)
            .unwrap();
        let samples = [s.clone(), s.clone(), s.clone(), s];
        for (switch, big_left) in [("", 99), ("all_or_nothing: false\n", 96)] {
            let reports = simulate(
                &policy(PolicyFormat::EnvoyRatelimit, &file(switch)),
                &samples,
            );
            let last = &reports[3];
            assert_eq!(last.overall_code, "OVER_LIMIT");
            assert_eq!(last.descriptors[0].status.code, "OVER_LIMIT");
            assert_eq!(last.descriptors[1].status.code, "OK");
            assert_eq!(
                last.descriptors[1].status.limit_remaining, big_left,
                "{switch:?}"
            );
        }
    }

    #[test]
    fn conditional_limits_that_do_not_apply_are_explained() {
        let p = policy(
            PolicyFormat::Limitador,
            "- namespace: api\n  name: gets\n  max_value: 1\n  seconds: 10\n  conditions: [\"descriptors[0].method == 'GET'\"]\n  variables: [\"descriptors[0].user\"]\n",
        );
        let s =
            parse_sample(r#"{"domain":"api","descriptors":[[["method","POST"],["user","bob"]]]}"#)
                .unwrap();
        let r = &simulate(&p, &[s])[0];
        assert_eq!(r.descriptors[0].outcome, "no_rule");
        assert_eq!(r.not_applying.len(), 1);
        assert!(
            r.not_applying[0].reason.contains("POST"),
            "{:?}",
            r.not_applying
        );
        assert_eq!(window_text(10 * SECOND), "10s");
        assert_eq!(window_text(SECOND / 4), "250ms");
    }
}
