//! Limitador's limits file, imported as it is.
//!
//! The file is a YAML list of limits `{namespace, max_value, seconds, conditions,
//! variables, name?, id?}`. Each namespace becomes an Envoy RLS domain and each limit a
//! [`ConditionalLimit`]: a fixed window of `max_value` hits per `seconds`, applying when
//! all its conditions hold, counted per distinct values of its variables. `max_value: 0`
//! refuses every request it applies to.
//!
//! Limits are named `NAMESPACE/NAME` when they have a `name` (names must then be unique
//! within a namespace) and `NAMESPACE/limits[I]` (I = position in the file) otherwise;
//! counters follow those names across reloads. Identical limits are kept once, as
//! Limitador does.

use std::collections::BTreeMap;

use quorate_algorithms::{Algorithm, Rate, SECOND};
use serde::Deserialize;

use super::conditions::{
    parse_condition, parse_variable, ConditionalLimit, ConditionalRule, EntryRef,
};
use super::descriptors::{Domain, RateUnit, RuleSpec};
use super::lines::LineMap;
use super::{Consistency, LimitDef, PolicyError, PolicySet};

/// Longest namespace or name accepted.
const MAX_TEXT: usize = 256;

/// One limit as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    namespace: String,
    max_value: i64,
    seconds: u64,
    conditions: Option<Vec<String>>,
    variables: Option<Vec<String>>,
    name: Option<String>,
    /// Limitador's optional identifier; accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
}

/// Compiles a Limitador limits file.
pub(super) fn compile(text: &str) -> Result<PolicySet, PolicyError> {
    let raw: Option<Vec<RawLimit>> = serde_yaml_ng::from_str(text)
        .map_err(|e| PolicyError::new(super::lines::yaml_error_line(text, &e), e.to_string()))?;
    let lines = LineMap::build(text);
    let at = |path: &str, reason: String| {
        PolicyError::new(lines.line(path), format!("{path}: {reason}"))
    };
    let mut limits = BTreeMap::new();
    let mut domains: BTreeMap<String, Domain> = BTreeMap::new();
    // (namespace, identity) of the limits kept, to drop exact duplicates.
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, raw) in raw.unwrap_or_default().into_iter().enumerate() {
        let path = format!("[{i}]");
        let ns = raw.namespace.clone();
        if ns.is_empty() || ns.len() > MAX_TEXT {
            return Err(at(
                &format!("{path}.namespace"),
                format!("namespace must be 1 to {MAX_TEXT} bytes"),
            ));
        }
        let (limit, identity) = compile_limit(raw, i, &path, &lines)?;
        if seen.iter().any(|(n, id)| *n == ns && *id == identity) {
            continue;
        }
        seen.push((ns.clone(), identity));
        let domain = domains.entry(ns.clone()).or_insert_with(|| Domain {
            name: ns.clone(),
            ..Domain::default()
        });
        if domain.conditional.iter().any(|c| c.limit == limit.limit) {
            return Err(at(
                &path,
                format!(
                    "duplicate limit name {:?} in namespace {ns:?}",
                    limit.shown_name
                ),
            ));
        }
        if let ConditionalRule::Limited(spec) = &limit.rule {
            if limits.contains_key(&limit.limit) {
                return Err(at(
                    &path,
                    format!("limit {:?} is defined twice", limit.limit),
                ));
            }
            limits.insert(
                limit.limit.clone(),
                // Limitador limits belong to RLS clients: never addressable via quorate.v1.
                LimitDef {
                    name: limit.limit.clone(),
                    display_name: Some(limit.shown_name.clone()),
                    ..LimitDef::new(spec.rate, spec.consistency, Default::default(), false)
                },
            );
        }
        domain.conditional.push(limit);
    }
    // Imported formats carry limits and domains only; the rest is the empty policy's.
    Ok(PolicySet {
        limits,
        domains,
        ..PolicySet::default()
    })
}

/// Compiles limit `i` (at document path `path`); also returns its identity (everything
/// Limitador compares limits by) for de-duplication.
fn compile_limit(
    raw: RawLimit,
    i: usize,
    path: &str,
    lines: &LineMap,
) -> Result<(ConditionalLimit, String), PolicyError> {
    let at = |p: String, reason: String| PolicyError::new(lines.line(&p), format!("{p}: {reason}"));
    if raw.max_value < 0 {
        return Err(at(
            format!("{path}.max_value"),
            format!("max_value must not be negative, got {}", raw.max_value),
        ));
    }
    if raw.seconds == 0 {
        return Err(at(
            format!("{path}.seconds"),
            "seconds must be at least 1 (a zero-length window)".into(),
        ));
    }
    let window = raw.seconds.checked_mul(SECOND).ok_or_else(|| {
        at(
            format!("{path}.seconds"),
            format!("{} seconds is too long", raw.seconds),
        )
    })?;
    if let Some(name) = &raw.name {
        if name.is_empty() || name.len() > MAX_TEXT || name.chars().any(char::is_control) {
            return Err(at(
                format!("{path}.name"),
                format!("name must be 1 to {MAX_TEXT} bytes without control characters"),
            ));
        }
    }
    let conditions_src = raw.conditions.unwrap_or_default();
    let mut conditions = Vec::new();
    for (j, text) in conditions_src.iter().enumerate() {
        let parsed = parse_condition(text).map_err(|e| {
            at(
                format!("{path}.conditions[{j}]"),
                format!("condition {text:?}: {e}"),
            )
        })?;
        conditions.extend(parsed);
    }
    let variables_src = raw.variables.unwrap_or_default();
    let mut variables: Vec<EntryRef> = Vec::new();
    for (j, text) in variables_src.iter().enumerate() {
        let v = parse_variable(text).map_err(|e| {
            at(
                format!("{path}.variables[{j}]"),
                format!("variable {text:?}: {e}"),
            )
        })?;
        if !variables.contains(&v) {
            variables.push(v);
        }
    }
    let unit = RateUnit::for_window(window);
    let rule = match u64::try_from(raw.max_value) {
        Ok(0) | Err(_) => ConditionalRule::Blocked(unit),
        Ok(max) => {
            let rate = Rate::new(Algorithm::FixedWindow, max, window, None)
                .map_err(|e| at(path.to_string(), e.to_string()))?;
            ConditionalRule::Limited(RuleSpec {
                rate,
                consistency: Consistency::Strict,
                unit,
                options: Default::default(),
            })
        }
    };
    let ns = raw.namespace;
    let limit = match &raw.name {
        Some(name) => format!("{ns}/{name}"),
        None => format!("{ns}/limits[{i}]"),
    };
    let mut sorted_conditions = conditions_src.clone();
    sorted_conditions.sort();
    let mut sorted_variables = variables_src.clone();
    sorted_variables.sort();
    let identity = format!(
        "{}|{}|{:?}|{:?}|{:?}",
        raw.max_value, raw.seconds, raw.name, sorted_conditions, sorted_variables
    );
    let descriptor = ConditionalLimit::attributed_index(&conditions, &variables);
    Ok((
        ConditionalLimit {
            shown_name: raw.name.unwrap_or_else(|| limit.clone()),
            limit,
            rule,
            conditions,
            variables,
            descriptor,
        },
        identity,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_become_domains() {
        let text = r#"
- namespace: api
  max_value: 10
  seconds: 60
  conditions: ["descriptors[0]['req.method'] == 'GET'"]
  variables: ["descriptors[0].user_id"]
  name: per_user_get
- namespace: api
  max_value: 0
  seconds: 1
  conditions: ["descriptors[0].blocked == 'yes'"]
  variables:
- namespace: other
  max_value: 5
  seconds: 1
  conditions:
  variables:
"#;
        let p = compile(text).unwrap();
        assert_eq!(p.domains.len(), 2);
        let api = &p.domains["api"];
        assert_eq!(api.conditional.len(), 2);
        assert_eq!(api.conditional[0].limit, "api/per_user_get");
        assert!(matches!(
            api.conditional[1].rule,
            ConditionalRule::Blocked(_)
        ));
        assert!(p.limits.contains_key("api/per_user_get"));
        assert!(p.limits.contains_key("other/limits[2]"));
        assert_eq!(p.limits["api/per_user_get"].rate.window(), 60 * SECOND);
    }

    #[test]
    fn identical_limits_are_kept_once() {
        let one =
            "- namespace: n\n  max_value: 1\n  seconds: 1\n  conditions: []\n  variables: [a]\n";
        let p = compile(&format!("{one}{one}")).unwrap();
        assert_eq!(p.domains["n"].conditional.len(), 1);
    }

    #[test]
    fn errors_name_the_line_of_the_construct() {
        let text = "- namespace: n\n  max_value: 1\n  seconds: 1\n  conditions:\n    - \"a == 'x'\"\n    - \"a == 'x' || b == 'y'\"\n";
        let err = compile(text).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.reason.contains("`||`"), "{err}");
        let err = compile("- namespace: n\n  max_value: -1\n  seconds: 1\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.reason.contains("negative"), "{err}");
    }

    #[test]
    fn an_empty_file_is_an_empty_policy() {
        assert!(compile("[]").unwrap().domains.is_empty());
        assert!(compile("").unwrap().domains.is_empty());
    }
}
