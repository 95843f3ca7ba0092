//! Envoy RLS descriptors: validate → plan each descriptor against the policy
//! (envoyproxy/ratelimit's matching) → count the planned hits → one status per
//! descriptor, in order, plus RateLimit headers and `dynamic_metadata`.
//!
//! [`decide`] is the live path (metrics included); [`plan`] and [`answer`] are its two
//! pure halves, which `quorate policy test` and the dashboard's explain call around their
//! own counters. An unknown domain or a descriptor no rule matches is OK with no limit, as
//! Envoy users expect, and is counted in `quorate_rls_unmatched_total`.

use std::collections::HashMap;

use quorate_algorithms::{Decision, Nanos};

use super::headers::{answer_headers, shown, LimitState};
use super::{hit, Counter};
use crate::engine::{EngineError, ResolvedHit};
use crate::metrics::traffic::Outcome;
use crate::metrics::Metrics;
use crate::policy::metadata::{Metadata, MetadataValue};
use crate::policy::{
    plan_rls, DescriptorPlan, EnvoyUnit, HeaderSettings, PolicySet, RequestDescriptor,
};

pub use crate::bounds::{MAX_DESCRIPTORS, MAX_ENTRIES, MAX_TEXT};

/// One descriptor as a surface decoded it, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DescriptorInput {
    pub entries: Vec<(String, String)>,
    /// `limit` override: requests per unit, and the unit (`None`: a unit we do not know).
    pub limit: Option<(u64, Option<EnvoyUnit>)>,
    pub hits_addend: Option<u64>,
    pub is_negative_hits: bool,
}

/// A validated request: domain, descriptors and each descriptor's cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsRequest {
    pub domain: String,
    pub descriptors: Vec<RequestDescriptor>,
    pub costs: Vec<u64>,
}

/// Checks a request's shape; the message names the bad field. `hits_addend` is the
/// request-level addend (0 means 1); a descriptor's own addend overrides it.
pub fn validate(
    domain: String,
    descriptors: Vec<DescriptorInput>,
    hits_addend: u32,
) -> Result<RlsRequest, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidArgument(m));
    if domain.is_empty() || domain.len() > MAX_TEXT {
        return bad(format!("domain: must be 1 to {MAX_TEXT} bytes"));
    }
    if descriptors.is_empty() {
        return bad("descriptors: at least one descriptor is required".into());
    }
    if descriptors.len() > MAX_DESCRIPTORS {
        return bad(format!(
            "descriptors: {} descriptors, at most {MAX_DESCRIPTORS} are allowed",
            descriptors.len()
        ));
    }
    let request_cost = u64::from(hits_addend.max(1));
    let mut validated = Vec::with_capacity(descriptors.len());
    let mut costs = Vec::with_capacity(descriptors.len());
    for (i, d) in descriptors.into_iter().enumerate() {
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
        for (j, (key, value)) in d.entries.iter().enumerate() {
            if key.is_empty() || key.len() > MAX_TEXT {
                return bad(format!(
                    "descriptors[{i}].entries[{j}].key: must be 1 to {MAX_TEXT} bytes"
                ));
            }
            if value.len() > MAX_TEXT {
                return bad(format!(
                    "descriptors[{i}].entries[{j}].value: longer than {MAX_TEXT} bytes"
                ));
            }
        }
        let limit_override = match d.limit {
            Some((requests, Some(unit))) => Some((requests, unit)),
            Some((_, None)) => return bad(format!("descriptors[{i}].limit.unit: unknown unit")),
            None => None,
        };
        costs.push(d.hits_addend.unwrap_or(request_cost));
        validated.push(RequestDescriptor {
            entries: d.entries,
            limit_override,
        });
    }
    Ok(RlsRequest {
        domain,
        descriptors: validated,
        costs,
    })
}

/// A request planned against one policy: each descriptor's plan, and the hits to count
/// (the limits of the `Limited` plans, in plan order).
#[derive(Debug, Clone)]
pub struct RlsPlan {
    pub plans: Vec<DescriptorPlan>,
    pub hits: Vec<ResolvedHit>,
}

/// Plans every descriptor and builds its hits.
pub fn plan(policy: &PolicySet, request: &RlsRequest) -> RlsPlan {
    let plans = plan_rls(policy, &request.domain, &request.descriptors);
    let mut hits = Vec::new();
    for (plan, cost) in plans.iter().zip(&request.costs) {
        if let DescriptorPlan::Limited(limits) = plan {
            hits.extend(
                limits
                    .iter()
                    .map(|l| hit(&l.limit, l.key.clone(), *cost, l.rate, l.consistency)),
            );
        }
    }
    RlsPlan { plans, hits }
}

/// The limit a descriptor status shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownLimit {
    pub name: String,
    pub requests_per_unit: u32,
    pub unit: EnvoyUnit,
}

/// One descriptor's status, as Envoy receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub over_limit: bool,
    pub current_limit: Option<ShownLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset: Option<Nanos>,
}

/// The answer to an [`RlsRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct RlsAnswer {
    pub over_limit: bool,
    pub statuses: Vec<DescriptorStatus>,
    pub headers: Vec<(&'static str, String)>,
    /// envoyproxy/ratelimit's `dynamic_metadata` (when a matched rule has `metadata:`).
    pub dynamic_metadata: Option<Metadata>,
    /// A shadow-mode limit was over (reported OK).
    pub shadowed: bool,
    /// The dashboard's summary.
    pub outcome: Outcome,
}

fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The answer from the plans and the decisions of their hits (in plan order).
pub fn answer(
    request: &RlsRequest,
    plans: &[DescriptorPlan],
    decisions: &[Decision],
    headers: HeaderSettings,
) -> RlsAnswer {
    let mut remaining_decisions = decisions.iter();
    let mut statuses = Vec::with_capacity(plans.len());
    let mut states = Vec::new();
    // envoyproxy/ratelimit's overall code: OVER_LIMIT when a limit outside quota mode is
    // over, or when every quota-mode limit of the request is.
    let mut failed = 0usize;
    let mut quota = 0usize;
    let mut failed_quota = 0usize;
    let mut shadowed = false;
    for plan in plans {
        let status = match plan {
            DescriptorPlan::NoRule { .. }
            | DescriptorPlan::Replaced { .. }
            | DescriptorPlan::Unlimited { .. } => DescriptorStatus {
                over_limit: false,
                current_limit: None,
                limit_remaining: u32::MAX,
                duration_until_reset: None,
            },
            DescriptorPlan::Blocked { path, unit } => {
                failed += 1;
                DescriptorStatus {
                    over_limit: true,
                    current_limit: Some(ShownLimit {
                        name: path.clone(),
                        requests_per_unit: 0,
                        unit: unit.base,
                    }),
                    limit_remaining: 0,
                    duration_until_reset: None,
                }
            }
            DescriptorPlan::Limited(limits) => {
                // Every limit is counted; the status shows the most restrictive: the first
                // one over the limit, else the one with the least remaining.
                let mut most_restrictive: Option<(bool, u64, DescriptorStatus)> = None;
                for l in limits {
                    let Some(d) = remaining_decisions.next() else {
                        // The counter returns one decision per hit; if that ever broke,
                        // failing open for this limit beats a panic.
                        continue;
                    };
                    let reported = shown(d, l.shadow_mode);
                    let over = !reported.allowed;
                    shadowed |= !d.allowed && l.shadow_mode;
                    if l.quota_mode {
                        quota += 1;
                        failed_quota += usize::from(over);
                    } else {
                        failed += usize::from(over);
                    }
                    states.push(LimitState {
                        name: l.shown_name.clone(),
                        decision: reported,
                        window: l.rate.window(),
                    });
                    let more_restrictive = match &most_restrictive {
                        None => true,
                        Some((was_over, remaining, _)) => {
                            (over && !was_over) || (over == *was_over && d.remaining < *remaining)
                        }
                    };
                    if more_restrictive {
                        let status = DescriptorStatus {
                            over_limit: over,
                            current_limit: Some(ShownLimit {
                                name: l.shown_name.clone(),
                                requests_per_unit: saturate_u32(d.limit),
                                unit: l.unit.base,
                            }),
                            limit_remaining: saturate_u32(d.remaining),
                            duration_until_reset: Some(d.reset_after),
                        };
                        most_restrictive = Some((over, d.remaining, status));
                    }
                }
                match most_restrictive {
                    Some((_, _, status)) => status,
                    None => DescriptorStatus {
                        over_limit: false,
                        current_limit: None,
                        limit_remaining: 0,
                        duration_until_reset: None,
                    },
                }
            }
        };
        statuses.push(status);
    }
    let over_limit = failed > 0 || (quota > 0 && failed_quota == quota);
    let dynamic_metadata = dynamic_metadata(request, plans, &statuses);
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
    RlsAnswer {
        over_limit,
        statuses,
        headers: answer_headers(&states, headers, over_limit),
        dynamic_metadata,
        shadowed,
        outcome,
    }
}

/// Decides one validated request against the live policy, recording its metrics.
pub async fn decide(
    counter: &dyn Counter,
    metrics: &Metrics,
    request: &RlsRequest,
) -> Result<RlsAnswer, EngineError> {
    let live = counter.policy();
    let RlsPlan { plans, hits } = plan(&live.set, request);
    for p in &plans {
        if let DescriptorPlan::NoRule { reason } = p {
            metrics.observe_unmatched(reason);
        }
    }
    let decisions = if hits.is_empty() {
        Vec::new()
    } else {
        check(counter, &live.set, request, &plans, hits).await?
    };
    let limited = plans.iter().flat_map(|p| match p {
        DescriptorPlan::Limited(limits) => limits.as_slice(),
        _ => &[],
    });
    for (l, d) in limited.zip(&decisions) {
        if l.shadow_mode && !d.allowed {
            metrics.shadow_mode_over_limit.inc();
        }
        if l.value_in_metric {
            metrics.observe_detailed(&l.limit, &l.metric_label, d.allowed);
        }
    }
    let answer = answer(request, &plans, &decisions, live.set.headers);
    metrics.observe_rls(answer.over_limit);
    Ok(answer)
}

/// Counts a planned request's hits: all-or-nothing unless its domain says
/// `all_or_nothing: false` (envoyproxy/ratelimit's per-descriptor counting).
///
/// All-or-nothing: shadow-mode limits are counted but never deny (see
/// [`super::check_all_or_nothing`]); a request with a blocked descriptor (a rule of 0
/// requests) is OVER_LIMIT whatever its counters say, so its hits are only peeked. A
/// request that matches a `quota_mode` rule is counted per descriptor: in quota mode the
/// request is over only when *every* quota limit is, which no single all-or-nothing
/// decision of its hits expresses.
async fn check(
    counter: &dyn Counter,
    policy: &PolicySet,
    request: &RlsRequest,
    plans: &[DescriptorPlan],
    mut hits: Vec<ResolvedHit>,
) -> Result<Vec<Decision>, EngineError> {
    let limited: Vec<_> = plans
        .iter()
        .flat_map(|p| match p {
            DescriptorPlan::Limited(limits) => limits.as_slice(),
            _ => &[],
        })
        .collect();
    let quota = limited.iter().any(|l| l.quota_mode);
    if !policy.rls_all_or_nothing(&request.domain) || quota {
        return counter.check(hits, false).await;
    }
    if plans
        .iter()
        .any(|p| matches!(p, DescriptorPlan::Blocked { .. }))
    {
        for h in &mut hits {
            h.hit.cost = 0;
        }
    }
    let advisory: Vec<bool> = limited.iter().map(|l| l.shadow_mode).collect();
    super::check_all_or_nothing(counter, hits, &advisory).await
}

/// `RateLimitResponse.dynamic_metadata` as envoyproxy/ratelimit shapes it — `domain`,
/// `descriptors` (each `{"entries": ["key=value", ...]}`) and `metadata`, the matched
/// rules' `metadata:` merged (first writer wins, mappings merged recursively) over the
/// descriptors whose status is OK. Sent only when a matched rule has `metadata:`, so
/// policies without it answer exactly as before.
fn dynamic_metadata(
    request: &RlsRequest,
    plans: &[DescriptorPlan],
    statuses: &[DescriptorStatus],
) -> Option<Metadata> {
    let rule_metadata = |p: &DescriptorPlan| match p {
        DescriptorPlan::Limited(ls) => ls.first().and_then(|l| l.metadata.clone()),
        _ => None,
    };
    if !plans.iter().any(|p| rule_metadata(p).is_some()) {
        return None;
    }
    let mut merged = Metadata::default();
    for (plan, status) in plans.iter().zip(statuses) {
        if status.over_limit {
            continue;
        }
        if let Some(m) = rule_metadata(plan) {
            merge_metadata(&mut merged, &m);
        }
    }
    let text = MetadataValue::String;
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let entries = d
                .entries
                .iter()
                .map(|(k, v)| text(format!("{k}={v}")))
                .collect();
            let mut fields = HashMap::new();
            fields.insert("entries".to_string(), MetadataValue::List(entries));
            MetadataValue::Map(Metadata { fields })
        })
        .collect();
    let mut fields = HashMap::new();
    fields.insert("domain".to_string(), text(request.domain.clone()));
    fields.insert("descriptors".to_string(), MetadataValue::List(descriptors));
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_string(), MetadataValue::Map(merged));
    }
    Some(Metadata { fields })
}

/// Adds `src` into `dest`: a key already present keeps its value unless both are
/// mappings, which merge recursively.
fn merge_metadata(dest: &mut Metadata, src: &Metadata) {
    for (k, v) in &src.fields {
        match dest.fields.get_mut(k) {
            None => {
                dest.fields.insert(k.clone(), v.clone());
            }
            Some(MetadataValue::Map(d)) => {
                if let MetadataValue::Map(s) = v {
                    merge_metadata(d, s);
                }
            }
            Some(_) => {}
        }
    }
}
