//! The bad-policy corpus: every document under `tests/policy_corpus/` is invalid, in one of
//! the three formats (by name prefix: `q_` quorate, `e_` envoyproxy/ratelimit, `l_`
//! Limitador; `e_dir_*` are directories of envoyproxy/ratelimit files). Each must be
//! detected as its format, then refused with exactly the file, line and reason stated in
//! [`CORPUS`] — the message an operator sees from `quorate serve --policy`,
//! `quorate policy apply` and `quorate policy test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use quorate_server::policy::load::load_path;
use quorate_server::policy::{PolicyFormat, PolicySet};

/// One expectation: corpus entry, the file named in the error (directories only), the
/// line within that file, and a substring of the reason.
struct Bad {
    entry: &'static str,
    file: Option<&'static str>,
    line: usize,
    reason: &'static str,
}

const fn bad(entry: &'static str, line: usize, reason: &'static str) -> Bad {
    Bad {
        entry,
        file: None,
        line,
        reason,
    }
}

const fn bad_in(entry: &'static str, file: &'static str, line: usize, reason: &'static str) -> Bad {
    Bad {
        entry,
        file: Some(file),
        line,
        reason,
    }
}

const CORPUS: &[Bad] = &[
    // quorate's own format
    bad(
        "q_syntax.yaml",
        6,
        "while scanning a quoted scalar at line 4",
    ),
    bad("q_unknown_unit.yaml", 6, "unknown unit \"fortnight\""),
    bad(
        "q_negative_limit.yaml",
        6,
        "limits[1].limit: invalid type: integer `-5`",
    ),
    bad(
        "q_zero_window.yaml",
        2,
        "window \"0s\" must be longer than zero",
    ),
    bad("q_zero_limit.yaml", 5, "limit must be at least 1"),
    bad(
        "q_duplicate_limit_names.yaml",
        5,
        "duplicate limit name \"per_user\"",
    ),
    bad("q_duplicate_domains.yaml", 6, "duplicate domain \"edge\""),
    bad(
        "q_duplicate_descriptors.yaml",
        9,
        "duplicate descriptor path=/a at the same level",
    ),
    bad("q_unknown_field.yaml", 4, "unknown field `windw`"),
    bad(
        "q_missing_requests_per_unit.yaml",
        6,
        "`requests_per_unit` is required",
    ),
    bad(
        "q_unlimited_with_requests.yaml",
        8,
        "`unlimited: true` cannot also set",
    ),
    bad(
        "q_sliding_log_too_large.yaml",
        2,
        "capped at 10000; limit 1000000 is too large",
    ),
    bad(
        "q_burst_not_token_bucket.yaml",
        2,
        "burst is only meaningful for token_bucket",
    ),
    bad(
        "q_bad_window.yaml",
        2,
        "unknown unit \" parsecs\" in window \"5 parsecs\"",
    ),
    bad(
        "q_empty_key.yaml",
        4,
        "descriptor key must be 1 to 256 bytes",
    ),
    bad("q_empty_domain.yaml", 2, "domain must be 1 to 256 bytes"),
    bad(
        "q_wrong_type.yaml",
        3,
        "invalid type: string \"lots\", expected u64",
    ),
    bad(
        "q_unit_and_window.yaml",
        5,
        "set either `unit` or `window`, not both",
    ),
    bad(
        "q_zero_max_counters.yaml",
        5,
        "max_counters: must be at least 1",
    ),
    bad("q_unknown_algorithm.yaml", 3, "unknown variant `leaky`"),
    bad(
        "q_precision_out_of_range.yaml",
        2,
        "limits[0]: limit \"smooth\": precision must be 1 to 60, got 61",
    ),
    bad(
        "q_precision_not_sliding.yaml",
        7,
        "precision is only meaningful for sliding_window, not fixed_window",
    ),
    bad(
        "q_precision_does_not_divide.yaml",
        6,
        "precision 7 does not cut the window (1000000000 ns) into whole nanoseconds",
    ),
    // envoyproxy/ratelimit config files
    bad("e_unknown_unit.yaml", 6, "unknown unit \"decade\""),
    bad(
        "e_precision_zero.yaml",
        6,
        "precision must be 1 to 60, got 0",
    ),
    bad(
        "e_negative_requests.yaml",
        7,
        "invalid type: integer `-500`, expected u64",
    ),
    bad(
        "e_duplicate_keys.yaml",
        5,
        "duplicate descriptor remote_address at the same level",
    ),
    bad("e_unknown_field.yaml", 4, "unknown field `rate_limits`"),
    bad("e_missing_domain.yaml", 1, "missing field `domain`"),
    bad("e_syntax.yaml", 4, "did not find expected key"),
    bad(
        "e_wrong_type.yaml",
        3,
        "descriptors: invalid type: map, expected a sequence",
    ),
    // envoyproxy/ratelimit directories: the error names the file inside
    bad_in(
        "e_dir_bad_file",
        "b_bad.yaml",
        8,
        "`unlimited: true` cannot also set",
    ),
    bad_in(
        "e_dir_duplicate_domain",
        "two.yaml",
        2,
        "duplicate domain \"shared\" (first defined at file one.yaml, line 1)",
    ),
    bad_in(
        "e_dir_syntax",
        "b.yaml",
        5,
        "while scanning a quoted scalar at line 4",
    ),
    // Limitador limits files
    bad(
        "l_or.yaml",
        6,
        "`||` is not supported: write one limit per alternative",
    ),
    bad(
        "l_function.yaml",
        5,
        "function call `size()` is not supported",
    ),
    bad("l_in.yaml", 5, "the `in` operator is not supported"),
    bad("l_has.yaml", 10, "function call `has()` is not supported"),
    bad("l_numeric.yaml", 5, "the `>` comparison is not supported"),
    bad(
        "l_negative_max.yaml",
        2,
        "max_value must not be negative, got -10",
    ),
    bad("l_zero_seconds.yaml", 3, "seconds must be at least 1"),
    bad("l_unknown_field.yaml", 4, "unknown field `condition`"),
    bad(
        "l_wrong_type.yaml",
        3,
        "invalid type: string \"a minute\", expected u64",
    ),
    bad("l_missing_field.yaml", 1, "missing field `seconds`"),
    bad(
        "l_duplicate_name.yaml",
        6,
        "duplicate limit name \"per_user\" in namespace \"api\"",
    ),
    bad(
        "l_empty_namespace.yaml",
        1,
        "namespace must be 1 to 256 bytes",
    ),
    bad(
        "l_bad_variable.yaml",
        6,
        "a variable must be a descriptor entry, not a literal",
    ),
    bad(
        "l_unquoted_value.yaml",
        5,
        "to compare with a value, quote it: 'GET'",
    ),
    bad("l_syntax.yaml", 4, "did not find expected ',' or ']'"),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_corpus")
}

fn format_of(entry: &str) -> PolicyFormat {
    match entry.split('_').next() {
        Some("q") => PolicyFormat::Quorate,
        Some("e") => PolicyFormat::EnvoyRatelimit,
        Some("l") => PolicyFormat::Limitador,
        _ => panic!("corpus entry {entry} has no q_/e_/l_ prefix"),
    }
}

#[test]
fn every_bad_policy_is_refused_with_its_file_line_and_reason() {
    assert!(
        CORPUS.len() >= 25,
        "the corpus holds {} documents",
        CORPUS.len()
    );
    let mut failures = Vec::new();
    for bad in CORPUS {
        let path = corpus_dir().join(bad.entry);
        let source = load_path(&path, None).unwrap_or_else(|e| panic!("{}: {e}", bad.entry));
        assert_eq!(
            source.format,
            format_of(bad.entry),
            "{}: detected as {:?}",
            bad.entry,
            source.format
        );
        // Naming the format gives the same answer as detecting it.
        let named = load_path(&path, Some(format_of(bad.entry))).unwrap();
        assert_eq!(named, source);
        match PolicySet::compile(&source) {
            Ok(_) => failures.push(format!("{}: accepted", bad.entry)),
            Err(e) => {
                let ok = e.file.as_deref() == bad.file
                    && e.line == Some(bad.line)
                    && e.reason.contains(bad.reason);
                if !ok {
                    failures.push(format!(
                        "{}: expected {:?} line {} containing {:?}, got {:?} line {:?}: {}",
                        bad.entry, bad.file, bad.line, bad.reason, e.file, e.line, e.reason
                    ));
                }
                if let Some(file) = bad.file {
                    assert!(e.to_string().starts_with(&format!("file {file}, line ")));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_corpus_entry_has_an_expectation() {
    let mut entries: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    for entry in &entries {
        assert!(
            CORPUS.iter().any(|b| b.entry == entry),
            "{entry} is in tests/policy_corpus but not in CORPUS"
        );
    }
    assert_eq!(
        entries.len(),
        CORPUS.len(),
        "an expectation names a missing file"
    );
}
