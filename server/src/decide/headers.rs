//! Rate-limit response headers, shared by every surface (Envoy RLS, ext_authz,
//! forward-auth): IETF `RateLimit-Policy` / `RateLimit` structured fields
//! (draft-ietf-httpapi-ratelimit-headers-10), legacy `X-RateLimit-*`, and `Retry-After`.

use quorate_algorithms::{Decision, Nanos, SECOND};
use quorate_proto::wire::{ratelimit_item, ratelimit_policy_item};

use crate::policy::HeaderSettings;

/// One limit's state after a decision, as headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    /// The limit's name as clients see it.
    pub name: String,
    pub decision: Decision,
    /// The window length (the `w` parameter).
    pub window: Nanos,
}

/// Whole seconds, rounded up: a client told to wait never retries too early.
fn secs_ceil(ns: Nanos) -> u64 {
    ns.div_ceil(SECOND)
}

/// The headers to send with a response covering `states` (one per limit that applied).
/// `Retry-After` is added when any state is a denial that can pass later.
pub fn rate_limit_headers(
    states: &[LimitState],
    settings: HeaderSettings,
) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    if states.is_empty() {
        return headers;
    }
    if settings.ietf {
        let policies: Vec<String> = states
            .iter()
            .map(|s| ratelimit_policy_item(&s.name, s.decision.limit, secs_ceil(s.window).max(1)))
            .collect();
        let current: Vec<String> = states
            .iter()
            .map(|s| {
                ratelimit_item(
                    &s.name,
                    s.decision.remaining,
                    secs_ceil(s.decision.reset_after),
                )
            })
            .collect();
        headers.push(("ratelimit-policy", policies.join(", ")));
        headers.push(("ratelimit", current.join(", ")));
    }
    if settings.legacy {
        // The most restrictive limit speaks for all, as envoyproxy/ratelimit does.
        if let Some(s) = states.iter().min_by_key(|s| {
            (
                s.decision.remaining,
                std::cmp::Reverse(s.decision.reset_after),
            )
        }) {
            headers.push(("x-ratelimit-limit", s.decision.limit.to_string()));
            headers.push(("x-ratelimit-remaining", s.decision.remaining.to_string()));
            headers.push((
                "x-ratelimit-reset",
                secs_ceil(s.decision.reset_after).to_string(),
            ));
        }
    }
    if let Some(retry) = states
        .iter()
        .filter(|s| !s.decision.allowed)
        .filter_map(|s| s.decision.retry_after)
        .max()
    {
        headers.push(("retry-after", secs_ceil(retry).max(1).to_string()));
    }
    headers
}

/// The headers of a whole answer: [`rate_limit_headers`], and when the answer is a
/// denial that named no retry time (a blocked descriptor, a cost above the limit, a full
/// store) `Retry-After: 1`, so clients still back off. Every surface answers through this.
pub fn answer_headers(
    states: &[LimitState],
    settings: HeaderSettings,
    denied: bool,
) -> Vec<(&'static str, String)> {
    let mut headers = rate_limit_headers(states, settings);
    if denied && !headers.iter().any(|(k, _)| *k == "retry-after") {
        headers.push(("retry-after", "1".into()));
    }
    headers
}

/// A limit's decision as the client sees it: in shadow mode a denial is reported as an
/// allow (and counted by the caller), everything else as decided.
pub fn shown(decision: &Decision, shadow_mode: bool) -> Decision {
    Decision {
        allowed: decision.allowed || shadow_mode,
        ..*decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, allowed: bool, remaining: u64, retry: Option<Nanos>) -> LimitState {
        LimitState {
            name: name.into(),
            decision: Decision {
                allowed,
                limit: 100,
                remaining,
                reset_after: 30 * SECOND,
                retry_after: retry,
                denied: None,
            },
            window: 60 * SECOND,
        }
    }

    #[test]
    fn ietf_draft_10_fields() {
        let h = rate_limit_headers(
            &[state("per_user", true, 50, None)],
            HeaderSettings::default(),
        );
        assert_eq!(
            h,
            vec![
                ("ratelimit-policy", "\"per_user\";q=100;w=60".to_string()),
                ("ratelimit", "\"per_user\";r=50;t=30".to_string())
            ]
        );
    }

    #[test]
    fn legacy_headers_follow_the_most_restrictive_limit_and_retry_after_rounds_up() {
        let settings = HeaderSettings {
            ietf: false,
            legacy: true,
        };
        let h = rate_limit_headers(
            &[
                state("a", true, 50, None),
                state("b", false, 0, Some(1_500_000_000)),
            ],
            settings,
        );
        assert!(
            h.contains(&("x-ratelimit-remaining", "0".to_string())),
            "{h:?}"
        );
        assert!(h.contains(&("retry-after", "2".to_string())), "{h:?}");
    }

    #[test]
    fn names_are_escaped_structured_strings() {
        assert_eq!(
            quorate_proto::wire::sf_string("a\"b\\c\u{e9}"),
            "\"a\\\"b\\\\c?\""
        );
    }
}
