//! No input panics the policy readers: arbitrary text, YAML-shaped fragments and arbitrary
//! Limitador expressions go through every format's compile (and, when one compiles, through
//! planning), and only ever produce a policy or an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use quorate_server::policy::load::{concat_files, detect};
use quorate_server::policy::simulate::parse_sample;
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
    "headers: {legacy: true}",
];

fn compile_all(text: &str) {
    for format in PolicyFormat::ALL {
        let source = PolicySource {
            format,
            text: text.to_string(),
        };
        if let Ok(policy) = PolicySet::compile(&source) {
            let descriptors = vec![
                RequestDescriptor {
                    entries: vec![("k".into(), "v".into()), ("key".into(), "vx".into())],
                    limit_override: None,
                },
                RequestDescriptor {
                    entries: vec![("k".into(), "v".into())],
                    limit_override: None,
                },
            ];
            for domain in policy.domains.keys() {
                let _ = plan_rls(&policy, domain, &descriptors);
            }
        }
    }
    let _ = detect(text);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

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
