//! envoyproxy/ratelimit's configuration files, imported as they are.
//!
//! One file is one YAML document: `domain:` and a `descriptors:` tree, with
//! envoyproxy/ratelimit's `rate_limit` (`unit`, `requests_per_unit`, `unlimited`, `name`,
//! `replaces`), `shadow_mode`, `quota_mode`, `detailed_metric`, `value_to_metric`,
//! `share_threshold`, `metadata` and `*` wildcard values — the same [`RawDomain`]
//! quorate's own format embeds, so matching is identical (and quorate's extras such as
//! `algorithm` or `window` are accepted too). Anything else is refused with its line; the
//! places where quorate knowingly differs are [`PolicySet::warnings`]. The conformance
//! corpus in `tests/conformance/envoy-ratelimit/` pins the behaviour case by case.
//!
//! A directory of such files (envoyproxy/ratelimit's runtime directory, one domain per
//! file) arrives as one multi-document text assembled by [`super::load::load_path`]: the
//! files sorted by name, each preceded by a `# file: NAME` comment line, `---` between
//! them. Errors then name the file and the line within it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::descriptors::RawDomain;
use super::lines::{FileLines, LineMap};
use super::{PolicyError, PolicySet};

/// Builds errors located in the right file of a (possibly concatenated) text.
struct Locator {
    files: FileLines,
}

impl Locator {
    /// An error at `line` of the whole text (when known).
    fn error(&self, line: Option<usize>, reason: String) -> PolicyError {
        match line {
            Some(line) => {
                let (file, line) = self.files.locate(line);
                let err = PolicyError::new(Some(line), reason);
                match file {
                    Some(f) => err.in_file(f),
                    None => err,
                }
            }
            None => PolicyError::new(None, reason),
        }
    }

    fn yaml(&self, e: &serde_yaml_ng::Error) -> PolicyError {
        self.error(
            e.location().map(|l| l.line()),
            self.files.relocate_message(&e.to_string()),
        )
    }
}

/// Compiles one or more envoyproxy/ratelimit config documents.
pub(super) fn compile(text: &str) -> Result<PolicySet, PolicyError> {
    let locator = Locator {
        files: FileLines::build(text),
    };
    let maps = LineMap::documents(text);
    let mut limits = BTreeMap::new();
    let mut domains = BTreeMap::new();
    // Domain name → where it was defined (file, line), for duplicate errors.
    let mut defined_at: BTreeMap<String, String> = BTreeMap::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // Return on the first error: after a syntax error the stream yields it forever.
        let raw = Option::<RawDomain>::deserialize(document).map_err(|e| locator.yaml(&e))?;
        // A document holding only comments (e.g. between two `---`) is no domain.
        let Some(raw) = raw else { continue };
        let lines = maps.get(i);
        let at = |path: &str, reason: String| {
            let line = lines.and_then(|m| m.line(path));
            let reason = if path.is_empty() {
                reason
            } else {
                format!("{path}: {reason}")
            };
            locator.error(line, reason)
        };
        let mut domain = raw.compile("").map_err(|(p, reason)| at(&p, reason))?;
        let here = {
            let line = lines.and_then(|m| m.line("")).unwrap_or(1);
            match locator.files.locate(line) {
                (Some(file), line) => format!("file {file}, line {line}"),
                (None, line) => format!("line {line}"),
            }
        };
        if let Some(first) = defined_at.get(&domain.name) {
            return Err(at(
                "",
                format!(
                    "duplicate domain {:?} (first defined at {first})",
                    domain.name
                ),
            ));
        }
        domain
            .register(&mut limits)
            .map_err(|reason| at("", reason))?;
        defined_at.insert(domain.name.clone(), here);
        domains.insert(domain.name.clone(), domain);
    }
    if domains.is_empty() {
        return Err(PolicyError::new(
            Some(1),
            "no domain: an envoyproxy/ratelimit config needs `domain:` and `descriptors:`",
        ));
    }
    // Imported formats carry limits and domains only; the rest is the empty policy's.
    Ok(PolicySet {
        limits,
        domains,
        ..PolicySet::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan_rls, DescriptorPlan, RequestDescriptor};

    #[test]
    fn one_file_is_one_domain() {
        let text = "domain: mongo_cps\ndescriptors:\n  - key: database\n    value: users\n    rate_limit:\n      unit: second\n      requests_per_unit: 500\n";
        let p = compile(text).unwrap();
        let plans = plan_rls(
            &p,
            "mongo_cps",
            &[RequestDescriptor::from_pairs(&[("database", "users")])],
        );
        match &plans[0] {
            DescriptorPlan::Limited(l) => assert_eq!(l[0].rate.limit(), 500),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_directory_is_several_documents_and_errors_name_the_file() {
        let text = "# file: a.yaml\ndomain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n---\n# file: b.yaml\n---\ndomain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n";
        let err = compile(text).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("b.yaml"), "{err}");
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.reason.contains("fortnight"), "{err}");
        let ok = text.replace("fortnight", "minute");
        let p = compile(&ok).unwrap();
        assert_eq!(p.domains.len(), 2);
    }

    #[test]
    fn syntax_errors_in_a_directory_are_relocated() {
        let text = "# file: a.yaml\ndomain: a\n---\n# file: b.yaml\ndomain: b\ndescriptors: [\n";
        let err = compile(text).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("b.yaml"), "{err}");
        assert!(err.line.is_some_and(|l| l <= 3), "{err}");
        assert!(!err.reason.contains("line 6"), "{err}");
    }

    #[test]
    fn duplicate_domains_across_files_are_refused() {
        let text = "# file: a.yaml\ndomain: a\n---\n# file: b.yaml\ndomain: a\n";
        let err = compile(text).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("b.yaml"));
        assert_eq!(err.line, Some(1));
        assert!(err.reason.contains("duplicate domain \"a\""), "{err}");
        assert!(err.reason.contains("file a.yaml, line 1"), "{err}");
    }

    #[test]
    fn empty_text_is_refused() {
        assert!(compile("").is_err());
        assert!(compile("# nothing\n").is_err());
    }
}
