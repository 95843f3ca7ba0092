//! Envoy's Rate Limit Service v3: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//!
//! Validate → plan each descriptor against the live policy (envoyproxy/ratelimit's
//! matching) → decide the counted ones through the engine → one status per descriptor, in
//! order, plus RateLimit headers. An unknown domain or a descriptor no rule matches is OK
//! with no limit, as Envoy users expect, and is counted in
//! `quorate_rls_unmatched_total`.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{
    value::Kind, Duration as PbDuration, ListValue, Struct, Value as PbValue,
};
use quorate_algorithms::{Decision, Nanos};
use tonic::{Request, Response, Status};

use crate::dashboard::traffic::Outcome;
use crate::engine::{Engine, EngineError, ResolvedHit};
use crate::error::to_status;
use crate::headers::{rate_limit_headers, LimitState};
use crate::metrics::Metrics;
use crate::policy::{plan_rls, DescriptorPlan, EnvoyUnit, RateUnit, RequestDescriptor};
use crate::raft::Hit;

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 32;
/// Longest domain, entry key or entry value, in bytes.
pub const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone)]
pub struct RlsService {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

impl RlsService {
    pub fn server(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
    ) -> RateLimitServiceServer<RlsService> {
        RateLimitServiceServer::new(RlsService { engine, metrics })
    }
}

/// A validated request: domain, descriptors and each descriptor's cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsRequest {
    pub domain: String,
    pub descriptors: Vec<RequestDescriptor>,
    pub costs: Vec<u64>,
}

fn envoy_unit(unit: i32) -> Option<EnvoyUnit> {
    use envoy_types::pb::envoy::r#type::v3::RateLimitUnit as U;
    Some(match U::try_from(unit).ok()? {
        U::Second => EnvoyUnit::Second,
        U::Minute => EnvoyUnit::Minute,
        U::Hour => EnvoyUnit::Hour,
        U::Day => EnvoyUnit::Day,
        U::Month => EnvoyUnit::Month,
        U::Year => EnvoyUnit::Year,
        U::Unknown => return None,
    })
}

/// Checks a request's shape; the message names the bad field.
pub fn validate(request: RateLimitRequest) -> Result<RlsRequest, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidArgument(m));
    if request.domain.is_empty() || request.domain.len() > MAX_TEXT {
        return bad(format!("domain: must be 1 to {MAX_TEXT} bytes"));
    }
    if request.descriptors.is_empty() {
        return bad("descriptors: at least one descriptor is required".into());
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return bad(format!(
            "descriptors: {} descriptors, at most {MAX_DESCRIPTORS} are allowed",
            request.descriptors.len()
        ));
    }
    let request_cost = u64::from(request.hits_addend.max(1));
    let mut descriptors = Vec::with_capacity(request.descriptors.len());
    let mut costs = Vec::with_capacity(request.descriptors.len());
    for (i, d) in request.descriptors.into_iter().enumerate() {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return bad(format!(
                "descriptors[{i}].entries: must have 1 to {MAX_ENTRIES} entries"
            ));
        }
        if d.is_negative_hits {
            return bad(format!(
                "descriptors[{i}].is_negative_hits: refunding hits is not supported"
            ));
        }
        let mut entries = Vec::with_capacity(d.entries.len());
        for (j, e) in d.entries.into_iter().enumerate() {
            if e.key.is_empty() || e.key.len() > MAX_TEXT {
                return bad(format!(
                    "descriptors[{i}].entries[{j}].key: must be 1 to {MAX_TEXT} bytes"
                ));
            }
            if e.value.len() > MAX_TEXT {
                return bad(format!(
                    "descriptors[{i}].entries[{j}].value: longer than {MAX_TEXT} bytes"
                ));
            }
            entries.push((e.key, e.value));
        }
        let limit_override = match d.limit {
            Some(l) => match envoy_unit(l.unit) {
                Some(unit) => Some((u64::from(l.requests_per_unit), unit)),
                None => return bad(format!("descriptors[{i}].limit.unit: unknown unit")),
            },
            None => None,
        };
        // A per-descriptor hits_addend overrides the request's; 0 means 1 at request level.
        costs.push(d.hits_addend.map_or(request_cost, |h| h.value));
        descriptors.push(RequestDescriptor {
            entries,
            limit_override,
        });
    }
    Ok(RlsRequest {
        domain: request.domain,
        descriptors,
        costs,
    })
}

fn pb_unit(unit: RateUnit) -> i32 {
    (match unit.base {
        EnvoyUnit::Second => Unit::Second,
        EnvoyUnit::Minute => Unit::Minute,
        EnvoyUnit::Hour => Unit::Hour,
        EnvoyUnit::Day => Unit::Day,
        EnvoyUnit::Week => Unit::Week,
        EnvoyUnit::Month => Unit::Month,
        EnvoyUnit::Year => Unit::Year,
    }) as i32
}

fn duration(ns: Nanos) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The answer: statuses, overall code and headers, from the plans and the decisions of
/// the counted descriptors (in plan order).
pub fn respond(
    plans: &[DescriptorPlan],
    decisions: &[Decision],
    headers: crate::policy::HeaderSettings,
) -> RateLimitResponse {
    let mut decisions = decisions.iter();
    let mut statuses = Vec::with_capacity(plans.len());
    let mut states = Vec::new();
    // envoyproxy/ratelimit's overall code: OVER_LIMIT when a limit outside quota mode is
    // over, or when every quota-mode limit of the request is.
    let mut failed = 0usize;
    let mut quota = 0usize;
    let mut failed_quota = 0usize;
    for plan in plans {
        let status = match plan {
            DescriptorPlan::NoRule { .. }
            | DescriptorPlan::Replaced { .. }
            | DescriptorPlan::Unlimited { .. } => DescriptorStatus {
                code: Code::Ok as i32,
                limit_remaining: u32::MAX,
                ..Default::default()
            },
            DescriptorPlan::Blocked { path, unit } => {
                failed += 1;
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(RateLimit {
                        name: path.clone(),
                        requests_per_unit: 0,
                        unit: pb_unit(*unit),
                    }),
                    limit_remaining: 0,
                    ..Default::default()
                }
            }
            DescriptorPlan::Limited(limits) => {
                // Every limit is counted; the status shows the most restrictive: the first
                // one over the limit, else the one with the least remaining.
                let mut shown: Option<(bool, u64, DescriptorStatus)> = None;
                for l in limits {
                    let Some(d) = decisions.next() else {
                        // The engine returns one decision per counted limit; if that ever
                        // broke, failing open for this limit beats a panic.
                        continue;
                    };
                    let over = !d.allowed && !l.shadow_mode;
                    if l.quota_mode {
                        quota += 1;
                        failed_quota += usize::from(over);
                    } else {
                        failed += usize::from(over);
                    }
                    states.push(LimitState {
                        name: l.shown_name.clone(),
                        decision: Decision {
                            allowed: d.allowed || l.shadow_mode,
                            ..*d
                        },
                        window: l.rate.window(),
                    });
                    let more_restrictive = match &shown {
                        None => true,
                        Some((was_over, remaining, _)) => {
                            (over && !was_over) || (over == *was_over && d.remaining < *remaining)
                        }
                    };
                    if more_restrictive {
                        let status = DescriptorStatus {
                            code: if over { Code::OverLimit } else { Code::Ok } as i32,
                            current_limit: Some(RateLimit {
                                name: l.shown_name.clone(),
                                requests_per_unit: saturate_u32(d.limit),
                                unit: pb_unit(l.unit),
                            }),
                            limit_remaining: saturate_u32(d.remaining),
                            duration_until_reset: Some(duration(d.reset_after)),
                            ..Default::default()
                        };
                        shown = Some((over, d.remaining, status));
                    }
                }
                match shown {
                    Some((_, _, status)) => status,
                    None => DescriptorStatus {
                        code: Code::Ok as i32,
                        ..Default::default()
                    },
                }
            }
        };
        statuses.push(status);
    }
    let over = failed > 0 || (quota > 0 && failed_quota == quota);
    let mut header_values = rate_limit_headers(&states, headers);
    if over && !header_values.iter().any(|(k, _)| *k == "retry-after") {
        // Blocked descriptors have no retry time; tell the client to back off a second.
        header_values.push(("retry-after", "1".into()));
    }
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        response_headers_to_add: header_values
            .into_iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: v,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// `RateLimitResponse.dynamic_metadata` as envoyproxy/ratelimit shapes it — `domain`,
/// `descriptors` (each `{"entries": ["key=value", ...]}`) and `metadata`, the matched
/// rules' `metadata:` merged (first writer wins, mappings merged recursively) over the
/// descriptors whose status is OK. Sent only when a matched rule has `metadata:`, so
/// policies without it answer exactly as before.
pub fn dynamic_metadata(
    request: &RlsRequest,
    plans: &[DescriptorPlan],
    response: &RateLimitResponse,
) -> Option<Struct> {
    let rule_metadata = |p: &DescriptorPlan| match p {
        DescriptorPlan::Limited(ls) => ls.first().and_then(|l| l.metadata.clone()),
        _ => None,
    };
    if !plans.iter().any(|p| rule_metadata(p).is_some()) {
        return None;
    }
    let mut merged = Struct::default();
    for (plan, status) in plans.iter().zip(&response.statuses) {
        if status.code != Code::Ok as i32 {
            continue;
        }
        if let Some(m) = rule_metadata(plan) {
            merge_metadata(&mut merged, &m);
        }
    }
    let text = |s: String| PbValue {
        kind: Some(Kind::StringValue(s)),
    };
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let entries = d
                .entries
                .iter()
                .map(|(k, v)| text(format!("{k}={v}")))
                .collect();
            let mut fields = std::collections::HashMap::new();
            fields.insert(
                "entries".to_string(),
                PbValue {
                    kind: Some(Kind::ListValue(ListValue { values: entries })),
                },
            );
            PbValue {
                kind: Some(Kind::StructValue(Struct { fields })),
            }
        })
        .collect();
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_string(), text(request.domain.clone()));
    fields.insert(
        "descriptors".to_string(),
        PbValue {
            kind: Some(Kind::ListValue(ListValue {
                values: descriptors,
            })),
        },
    );
    if !merged.fields.is_empty() {
        fields.insert(
            "metadata".to_string(),
            PbValue {
                kind: Some(Kind::StructValue(merged)),
            },
        );
    }
    Some(Struct { fields })
}

/// Adds `src` into `dest`: a key already present keeps its value unless both are
/// mappings, which merge recursively.
fn merge_metadata(dest: &mut Struct, src: &Struct) {
    for (k, v) in &src.fields {
        match dest.fields.get_mut(k) {
            None => {
                dest.fields.insert(k.clone(), v.clone());
            }
            Some(PbValue {
                kind: Some(Kind::StructValue(d)),
            }) => {
                if let Some(Kind::StructValue(s)) = &v.kind {
                    merge_metadata(d, s);
                }
            }
            Some(_) => {}
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = std::time::Instant::now();
        let (answer, outcome) = match self.answer(request).await {
            Ok((response, outcome)) => (Ok(Response::new(response)), outcome),
            Err(status) => (Err(status), Outcome::Error),
        };
        self.metrics
            .observe_surface(crate::dashboard::traffic::Surface::Rls, outcome, started);
        answer
    }
}

impl RlsService {
    /// Decides one request; the outcome is the dashboard's summary of the answer.
    async fn answer(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<(RateLimitResponse, Outcome), Status> {
        let request = validate(request.into_inner()).map_err(to_status)?;
        let policy = self.engine.policy();
        let plans = plan_rls(&policy.set, &request.domain, &request.descriptors);
        let mut hits = Vec::new();
        for (plan, cost) in plans.iter().zip(&request.costs) {
            match plan {
                DescriptorPlan::Limited(limits) => {
                    hits.extend(limits.iter().map(|l| ResolvedHit {
                        hit: Hit {
                            limit: l.limit.clone(),
                            key: l.key.clone(),
                            cost: *cost,
                            rate: l.rate,
                        },
                        consistency: l.consistency,
                    }))
                }
                DescriptorPlan::NoRule { reason } => self.metrics.observe_unmatched(reason),
                _ => {}
            }
        }
        let decisions = if hits.is_empty() {
            Vec::new()
        } else {
            self.engine.check(hits, false).await.map_err(to_status)?
        };
        let mut shadowed = false;
        for (plan, d) in plans
            .iter()
            .flat_map(|p| match p {
                DescriptorPlan::Limited(limits) => limits.as_slice(),
                _ => &[],
            })
            .zip(&decisions)
        {
            if plan.shadow_mode && !d.allowed {
                self.metrics.shadow_mode_over_limit.inc();
                shadowed = true;
            }
            if plan.value_in_metric {
                self.metrics
                    .observe_detailed(&plan.limit, &plan.metric_label, d.allowed);
            }
        }
        let mut response = respond(&plans, &decisions, policy.set.headers);
        response.dynamic_metadata = dynamic_metadata(&request, &plans, &response);
        let over_limit = response.overall_code == Code::OverLimit as i32;
        self.metrics.observe_rls(over_limit);
        let outcome = if over_limit {
            Outcome::Denied
        } else if shadowed {
            Outcome::Shadow
        } else if decisions.is_empty()
            && plans
                .iter()
                .all(|p| matches!(p, DescriptorPlan::NoRule { .. }))
        {
            Outcome::Unmatched
        } else {
            Outcome::Allowed
        };
        Ok((response, outcome))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::google::protobuf::UInt64Value;

    use super::*;

    fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: pairs
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn message(r: RateLimitRequest) -> String {
        match validate(r) {
            Err(EngineError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let ok = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![descriptor(&[("k", "v")])],
            hits_addend: 0,
        };
        assert!(message(RateLimitRequest {
            domain: String::new(),
            ..ok.clone()
        })
        .starts_with("domain"));
        assert!(message(RateLimitRequest {
            descriptors: vec![],
            ..ok.clone()
        })
        .starts_with("descriptors"));
        assert!(message(RateLimitRequest {
            descriptors: vec![descriptor(&[])],
            ..ok.clone()
        })
        .starts_with("descriptors[0].entries"));
        assert!(message(RateLimitRequest {
            descriptors: vec![descriptor(&[("", "v")])],
            ..ok.clone()
        })
        .starts_with("descriptors[0].entries[0].key"));
        let many = vec![descriptor(&[("k", "v")]); MAX_DESCRIPTORS + 1];
        assert!(message(RateLimitRequest {
            descriptors: many,
            ..ok.clone()
        })
        .contains("at most"));
        assert!(validate(ok).is_ok());
    }

    #[test]
    fn hits_addend_zero_means_one_and_descriptor_addend_wins() {
        let mut with_own = descriptor(&[("k", "v")]);
        with_own.hits_addend = Some(UInt64Value { value: 7 });
        let r = validate(RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![descriptor(&[("k", "v")]), with_own],
            hits_addend: 0,
        })
        .unwrap();
        assert_eq!(r.costs, vec![1, 7]);
        let r = validate(RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![descriptor(&[("k", "v")])],
            hits_addend: 3,
        })
        .unwrap();
        assert_eq!(r.costs, vec![3]);
    }

    #[test]
    fn shadow_mode_reports_ok_and_no_rule_is_ok_without_limit() {
        use crate::policy::{Consistency, RateUnit};
        use quorate_algorithms::{Algorithm, DenyReason, Rate, SECOND};
        let rate = Rate::new(Algorithm::FixedWindow, 1, SECOND, None).unwrap();
        let plan = |name: &str, shadow| crate::policy::LimitedPlan {
            limit: name.into(),
            key: "k=v".into(),
            rate,
            consistency: Consistency::Strict,
            unit: RateUnit::for_window(SECOND),
            shown_name: name.into(),
            shadow_mode: shadow,
            detailed_metric: false,
            metric: name.into(),
            value_in_metric: false,
            metric_label: name.into(),
            quota_mode: false,
            metadata: None,
            explanation: String::new(),
        };
        let limited = |shadow| DescriptorPlan::Limited(vec![plan("d/k", shadow)]);
        let denied = Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset_after: SECOND / 2,
            retry_after: Some(SECOND / 2),
            denied: Some(DenyReason::OverLimit),
        };
        let no_rule = DescriptorPlan::NoRule { reason: "x".into() };
        let r = respond(
            &[limited(false), no_rule.clone()],
            &[denied],
            Default::default(),
        );
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses.len(), 2);
        assert_eq!(r.statuses[1].code, Code::Ok as i32);
        assert!(r.statuses[1].current_limit.is_none());
        assert!(r
            .response_headers_to_add
            .iter()
            .any(|h| h.key == "retry-after" && h.value == "1"));
        let r = respond(&[limited(true)], &[denied], Default::default());
        assert_eq!(r.overall_code, Code::Ok as i32);

        // Several limits on one descriptor: all decided, the most restrictive shown.
        let allowed = |remaining| Decision {
            allowed: true,
            limit: 10,
            remaining,
            reset_after: SECOND,
            retry_after: None,
            denied: None,
        };
        let several =
            DescriptorPlan::Limited(vec![plan("a", false), plan("b", false), plan("c", false)]);
        let r = respond(
            std::slice::from_ref(&several),
            &[allowed(7), allowed(3), allowed(5)],
            Default::default(),
        );
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 1);
        let shown = r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.name.as_str());
        assert_eq!(shown, Some("b"));
        assert_eq!(r.statuses[0].limit_remaining, 3);
        let r = respond(
            &[several],
            &[allowed(7), allowed(3), denied],
            Default::default(),
        );
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        let shown = r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.name.as_str());
        assert_eq!(shown, Some("c"));
    }
}
