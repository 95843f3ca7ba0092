//! No input panics the policy readers: arbitrary text, YAML-shaped fragments, arbitrary
//! Limitador expressions and mutations of the shipped example policies (quorate,
//! envoyproxy/ratelimit and Limitador formats) go through every format's compile (and,
//! when one compiles, through planning), and only ever produce a policy or an error; a
//! YAML syntax error always names its line.
//!
//! Cases per run: 256 + 256 + 256 + 512 (mutations) = 1280; `PROPTEST_CASES` scales
//! none of them (fixed so the suite's time is predictable).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use quorate_server::decide::simulate::parse_sample;
use quorate_server::policy::load::{concat_files, detect};
use quorate_server::policy::{plan_rls, PolicyFormat, PolicySet, PolicySource, RequestDescriptor};

/// Pieces of all three formats, so random sequences reach past the YAML parser.
const FRAGMENTS: &[&str] = &[
    "domain: d",
    "descriptors:",
    "- key: k",
    "  ",
    "    ",
    "\n",
    "rate_limit:",
    "{",
    "}",
    "[",
    "]",
    ",",
    "unit: minute",
    "unit: fortnight",
    "requests_per_unit: ",
    "1",
    "-1",
    "0",
    "99999999999999999999",
    "value: v*",
    "unlimited: true",
    "replaces: [{name: x}]",
    "shadow_mode: true",
    "limits:",
    "- name: a",
    "limit: 5",
    "window: 10s",
    "algorithm: token_bucket",
    "burst: 3",
    "domains:",
    "- domain: d",
    "namespace: n",
    "max_value: ",
    "seconds: ",
    "conditions:",
    "variables:",
    "- \"descriptors[0]['k'] == 'v'\"",
    "- descriptors[1].k",
    "&&",
    "||",
    "---",
    "# file: x.yaml",
    "'",
    "\"",
    ":",
    "*",
    "&a ",
    "*a",
    "!t ",
    "%YAML 1.2",
    "\t",
    "name: n",
    "max_counters: 0",
    "max_counters: 3",
    "headers: {legacy: true}",
    "max_keys: 2",
    "max_keys: 0",
    "max_keys: 18446744073709551615",
    "on_full: evict_idlest",
    "on_full: refuse",
    "on_full: maybe",
    "expose: true",
    "expose: 3",
    "key: {ip: {ipv6_prefix: 48}}",
    "key: {ip: {ipv4_prefix: 33}}",
    "key: ip",
    "- {use: a}",
    "routes:",
    "- name: r",
    "match: {path_prefix: /}",
    "identities: []",
];

/// Valid documents of every format, the seeds the mutation test starts from.
const SEEDS: &[&str] = &[
    include_str!("../../examples/policy.yaml"),
    include_str!("../../examples/authz.yaml"),
    include_str!("../../examples/limitador-limits.yaml"),
    include_str!("../../policy/src/example.yaml"),
    include_str!("../../examples/envoy-ratelimit/rl.yaml"),
    include_str!("../../examples/envoy-ratelimit/mongo_cps.yaml"),
];

/// One edit of a document.
#[derive(Debug, Clone)]
enum Mutation {
    /// Delete bytes `[at, at + len)` (clamped to char boundaries).
    Delete(prop::sample::Index, usize),
    /// Insert a fragment at a position.
    Insert(prop::sample::Index, &'static str),
    /// Duplicate a line.
    DuplicateLine(prop::sample::Index),
    /// Swap two lines.
    SwapLines(prop::sample::Index, prop::sample::Index),
    /// Replace a byte with an arbitrary char.
    Replace(prop::sample::Index, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<prop::sample::Index>(),
            proptest::sample::select(FRAGMENTS)
        )
            .prop_map(|(i, f)| Mutation::Insert(i, f)),
        any::<prop::sample::Index>().prop_map(Mutation::DuplicateLine),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<prop::sample::Index>(), any::<char>()).prop_map(|(i, c)| Mutation::Replace(i, c)),
    ]
}

fn boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut out = text.to_string();
    if text.is_empty() {
        return out;
    }
    match m {
        Mutation::Delete(i, n) => {
            let start = boundary(text, i.index(text.len()));
            let end = boundary(text, start + n);
            out.replace_range(start..end, "");
        }
        Mutation::Insert(i, f) => {
            let at = boundary(text, i.index(text.len() + 1));
            out.insert_str(at, f);
        }
        Mutation::DuplicateLine(i) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let n = i.index(lines.len());
            lines.insert(n, lines[n]);
            out = lines.join("\n");
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
            out = lines.join("\n");
        }
        Mutation::Replace(i, c) => {
            let at = boundary(text, i.index(text.len()));
            if let Some(old) = text[at..].chars().next() {
                out.replace_range(at..at + old.len_utf8(), &c.to_string());
            }
        }
    }
    out
}

fn compile_all(text: &str) {
    for format in PolicyFormat::ALL {
        let source = PolicySource {
            format,
            text: text.to_string(),
        };
        if let Ok(policy) = PolicySet::compile(&source) {
            let descriptors = vec![
                RequestDescriptor::from_pairs(&[("k", "v"), ("key", "vx")]),
                RequestDescriptor::from_pairs(&[("k", "v")]),
            ];
            for domain in policy.domains.keys() {
                let _ = plan_rls(&policy, domain, &descriptors);
            }
        }
    }
    let _ = detect(text);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,300}") {
        compile_all(&text);
        let _ = parse_sample(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(parts in proptest::collection::vec(
        (proptest::sample::select(FRAGMENTS), proptest::sample::select(&[" ", "\n", "\n  ", "\n    ", ""][..])),
        0..40,
    )) {
        let text: String = parts.iter().map(|(a, b)| format!("{a}{b}")).collect();
        compile_all(&text);
        compile_all(&concat_files(&[("a.yaml".into(), text.clone()), ("b.yaml".into(), text)]));
    }

    #[test]
    fn arbitrary_limitador_expressions_never_panic(
        condition in "(?s).{0,80}",
        variable in "[\\[\\]'\"a-z0-9_.&|!() =]{0,40}",
    ) {
        let text = format!(
            "- namespace: n\n  max_value: 3\n  seconds: 1\n  conditions: [{}]\n  variables: [{}]\n",
            serde_json::to_string(&condition).unwrap(),
            serde_json::to_string(&variable).unwrap(),
        );
        compile_all(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_example_policies_compile_or_name_their_line(
        seed in proptest::sample::select(SEEDS),
        edits in proptest::collection::vec(mutation(), 1..6),
    ) {
        let text = edits.iter().fold(seed.to_string(), |t, m| mutate(&t, m));
        compile_all(&text);
        for format in PolicyFormat::ALL {
            let source = PolicySource { format, text: text.clone() };
            if let Err(e) = PolicySet::compile(&source) {
                prop_assert!(!e.reason.is_empty());
                // The YAML parser's own errors always carry a position.
                if serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).is_err() {
                    prop_assert!(e.line.is_some(), "{:?}: {}", format, e);
                }
            }
        }
    }
}
