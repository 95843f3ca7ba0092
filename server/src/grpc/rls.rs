//! Envoy's Rate Limit Service v3: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//!
//! Decode → [`decide::rls`](crate::decide::rls) → encode. Planning, counting, shadow
//! mode, headers and `dynamic_metadata` all live in the decide layer; this file only
//! translates Envoy's protobuf messages.

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
use quorate_algorithms::Nanos;
use tonic::{Request, Response, Status};

use crate::decide::rls::{self as decide_rls, DescriptorInput, RlsAnswer};
use crate::engine::{Engine, EngineError};
use crate::error::to_status;
use crate::metrics::traffic::Outcome;
use crate::metrics::Metrics;
use crate::policy::metadata::{Metadata, MetadataValue};
use crate::policy::EnvoyUnit;

pub use crate::decide::rls::{RlsRequest, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_TEXT};

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

/// Decodes and validates a request; the message names the bad field.
pub fn validate(request: RateLimitRequest) -> Result<RlsRequest, EngineError> {
    let descriptors = request
        .descriptors
        .into_iter()
        .map(|d| DescriptorInput {
            entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
            limit: d
                .limit
                .map(|l| (u64::from(l.requests_per_unit), envoy_unit(l.unit))),
            hits_addend: d.hits_addend.map(|h| h.value),
            is_negative_hits: d.is_negative_hits,
        })
        .collect();
    decide_rls::validate(request.domain, descriptors, request.hits_addend)
}

fn pb_unit(unit: EnvoyUnit) -> i32 {
    (match unit {
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

fn code(over_limit: bool) -> i32 {
    if over_limit {
        Code::OverLimit as i32
    } else {
        Code::Ok as i32
    }
}

/// Metadata as the `google.protobuf.Struct` Envoy receives.
pub fn pb_struct(m: &Metadata) -> Struct {
    fn value(v: &MetadataValue) -> PbValue {
        let kind = match v {
            MetadataValue::Null => Kind::NullValue(0),
            MetadataValue::Bool(b) => Kind::BoolValue(*b),
            MetadataValue::Number(n) => Kind::NumberValue(*n),
            MetadataValue::String(s) => Kind::StringValue(s.clone()),
            MetadataValue::List(items) => Kind::ListValue(ListValue {
                values: items.iter().map(value).collect(),
            }),
            MetadataValue::Map(m) => Kind::StructValue(pb_struct(m)),
        };
        PbValue { kind: Some(kind) }
    }
    Struct {
        fields: m
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    }
}

/// The answer on the wire.
pub fn encode(answer: RlsAnswer) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code(answer.over_limit),
        statuses: answer
            .statuses
            .into_iter()
            .map(|s| DescriptorStatus {
                code: code(s.over_limit),
                current_limit: s.current_limit.map(|l| RateLimit {
                    name: l.name,
                    requests_per_unit: l.requests_per_unit,
                    unit: pb_unit(l.unit),
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset: s.duration_until_reset.map(duration),
                ..Default::default()
            })
            .collect(),
        response_headers_to_add: answer
            .headers
            .into_iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: v,
                ..Default::default()
            })
            .collect(),
        dynamic_metadata: answer.dynamic_metadata.as_ref().map(pb_struct),
        ..Default::default()
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
            Ok(answer) => {
                let outcome = answer.outcome;
                (Ok(Response::new(encode(answer))), outcome)
            }
            Err(status) => (Err(status), Outcome::Error),
        };
        self.metrics
            .observe_surface(crate::metrics::traffic::Surface::Rls, outcome, started);
        answer
    }
}

impl RlsService {
    async fn answer(&self, request: Request<RateLimitRequest>) -> Result<RlsAnswer, Status> {
        let request = validate(request.into_inner()).map_err(to_status)?;
        decide_rls::decide(self.engine.as_ref(), &self.metrics, &request)
            .await
            .map_err(to_status)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::google::protobuf::UInt64Value;

    use super::*;
    use crate::policy::{DescriptorPlan, HeaderSettings};
    use quorate_algorithms::Decision;

    /// The wire answer for `plans` decided as `decisions` (the request only feeds
    /// `dynamic_metadata`, which these plans do not produce).
    fn respond(
        plans: &[DescriptorPlan],
        decisions: &[Decision],
        headers: HeaderSettings,
    ) -> RateLimitResponse {
        let request = RlsRequest {
            domain: "d".into(),
            descriptors: Vec::new(),
            costs: Vec::new(),
        };
        encode(decide_rls::answer(&request, plans, decisions, headers))
    }

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
