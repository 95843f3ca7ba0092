//! Reading a policy from disk: one file, or a directory of envoyproxy/ratelimit files, in a
//! named format or one detected from the text.
//!
//! Used by `quorate serve --policy`, the policy file watcher, `quorate policy apply` and
//! `quorate policy test`, so all of them read the same path the same way. Loading does not
//! validate: callers compile the returned [`PolicySource`] (the server compiles it again on
//! every replica).
//!
//! Detection (`--format auto`): a directory is envoyproxy/ratelimit's runtime directory; a
//! file whose first document is a mapping with a top-level `domain:` (or `descriptors:`) is
//! an envoyproxy/ratelimit config; a top-level sequence is a Limitador limits file (its
//! items are `namespace:` limits); anything else is quorate's own format. A file that does
//! not parse is classified by its first meaningful line, so the syntax error is reported
//! by the right format's reader.

use std::path::Path;

use serde::Deserialize;

use super::lines::FILE_MARKER;
use super::{PolicyError, PolicyFormat, PolicySource};

/// The `--format` value that asks for detection.
pub const AUTO: &str = "auto";

/// Parses a `--format` value: `auto` (→ `None`) or a format name.
pub fn parse_format_arg(name: &str) -> Result<Option<PolicyFormat>, PolicyError> {
    if name == AUTO {
        return Ok(None);
    }
    PolicyFormat::parse(name).map(Some).map_err(|_| {
        PolicyError::new(
            None,
            format!(
                "unknown policy format {name:?} (known: auto, quorate, envoy_ratelimit, limitador)"
            ),
        )
    })
}

/// The format of a policy text, from its shape (see the module docs).
pub fn detect(text: &str) -> PolicyFormat {
    let first = serde_yaml_ng::Deserializer::from_str(text)
        .next()
        .and_then(|doc| serde_yaml_ng::Value::deserialize(doc).ok());
    match first {
        Some(serde_yaml_ng::Value::Mapping(m))
            if m.contains_key("domain") || m.contains_key("descriptors") =>
        {
            PolicyFormat::EnvoyRatelimit
        }
        Some(serde_yaml_ng::Value::Sequence(_)) => PolicyFormat::Limitador,
        Some(_) => PolicyFormat::Quorate,
        None => detect_by_first_line(text),
    }
}

/// For text that does not parse: the first line that is not blank, a comment, a directive
/// or a document marker decides.
fn detect_by_first_line(text: &str) -> PolicyFormat {
    let first = text.lines().map(str::trim_end).find(|l| {
        let t = l.trim_start();
        !(t.is_empty() || t.starts_with('#') || t.starts_with('%') || t == "---")
    });
    match first {
        Some(l) if l.starts_with("domain:") || l.starts_with("descriptors:") => {
            PolicyFormat::EnvoyRatelimit
        }
        Some(l) if l == "-" || l.starts_with("- ") || l.starts_with('[') => PolicyFormat::Limitador,
        _ => PolicyFormat::Quorate,
    }
}

/// An I/O error on the path the caller named (who knows which path that is).
fn io_error(e: &std::io::Error) -> PolicyError {
    PolicyError::new(None, format!("cannot read: {e}"))
}

/// Reads `path` (a file, or a directory of envoyproxy/ratelimit files) as a policy in
/// `format`, or in the detected format when `None`. Errors about the path itself carry no
/// file name (the caller knows it); errors about a file inside a directory name it.
pub fn load_path(path: &Path, format: Option<PolicyFormat>) -> Result<PolicySource, PolicyError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(&e))?;
    if meta.is_dir() {
        if let Some(f) = format.filter(|f| *f != PolicyFormat::EnvoyRatelimit) {
            return Err(PolicyError::new(
                None,
                format!(
                    "a directory is read as envoyproxy/ratelimit files; format {} takes one file",
                    f.as_str()
                ),
            ));
        }
        return Ok(PolicySource {
            format: PolicyFormat::EnvoyRatelimit,
            text: read_dir(path)?,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(&e))?;
    let format = format.unwrap_or_else(|| detect(&text));
    Ok(PolicySource { format, text })
}

/// The `.yaml`/`.yml` files of a directory (following symlinks, skipping hidden entries
/// such as a Kubernetes ConfigMap's `..data`), concatenated in name order.
fn read_dir(dir: &Path) -> Result<String, PolicyError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(&e))? {
        let entry = entry.map_err(|e| io_error(&e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if name.starts_with('.') || !yaml {
            continue;
        }
        let path = entry.path();
        // metadata() follows symlinks: ConfigMap files are links into `..data/`.
        let is_file = std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !is_file {
            continue;
        }
        if name.chars().any(char::is_control) {
            return Err(PolicyError::new(None, "file name has a control character").in_file(name));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| io_error(&e).in_file(name.clone()))?;
        files.push((name, text));
    }
    if files.is_empty() {
        return Err(PolicyError::new(
            None,
            "the directory has no .yaml or .yml file",
        ));
    }
    files.sort();
    if let Some((name, _)) = files.iter().find(|(_, text)| text.trim().is_empty()) {
        return Err(PolicyError::new(None, "the file is empty").in_file(name.clone()));
    }
    Ok(concat_files(&files))
}

/// Joins `(name, text)` files into one multi-document text: each file preceded by a
/// `# file: NAME` line, `---` between files.
pub fn concat_files(files: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (name, text)) in files.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(FILE_MARKER);
        out.push_str(name);
        out.push('\n');
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicySet;

    #[test]
    fn detects_each_format() {
        assert_eq!(
            detect("domain: d\ndescriptors: []\n"),
            PolicyFormat::EnvoyRatelimit
        );
        assert_eq!(
            detect("- namespace: n\n  max_value: 1\n  seconds: 1\n"),
            PolicyFormat::Limitador
        );
        assert_eq!(detect("---\n- namespace: n\n"), PolicyFormat::Limitador);
        assert_eq!(detect("limits: []\n"), PolicyFormat::Quorate);
        assert_eq!(detect("domains:\n  - domain: d\n"), PolicyFormat::Quorate);
        assert_eq!(detect("this: [is: broken\n"), PolicyFormat::Quorate);
        assert_eq!(detect("descriptors: []\n"), PolicyFormat::EnvoyRatelimit);
        assert_eq!(
            detect("# c\n---\n- namespace: n\n  variables: [a[0]]\n"),
            PolicyFormat::Limitador
        );
        assert_eq!(
            detect("domain: d\ndescriptors:\n  - key: \"k\n"),
            PolicyFormat::EnvoyRatelimit
        );
        assert_eq!(detect(""), PolicyFormat::Quorate);
    }

    #[test]
    fn format_arguments() {
        assert_eq!(parse_format_arg("auto").unwrap(), None);
        assert_eq!(
            parse_format_arg("envoy_ratelimit").unwrap(),
            Some(PolicyFormat::EnvoyRatelimit)
        );
        assert!(parse_format_arg("yaml")
            .unwrap_err()
            .reason
            .contains("auto"));
    }

    #[test]
    fn a_directory_loads_sorted_and_skips_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.yml"), "---\ndomain: a\ndescriptors: []").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data").join("c.yaml"), "broken: [").unwrap();
        let source = load_path(dir.path(), None).unwrap();
        assert_eq!(source.format, PolicyFormat::EnvoyRatelimit);
        assert!(source.text.starts_with("# file: a.yml\n---\ndomain: a"));
        assert!(source.text.contains("# file: b.yaml\n"));
        let policy = PolicySet::compile(&source).unwrap();
        assert_eq!(policy.domains.len(), 2);

        assert!(load_path(dir.path(), Some(PolicyFormat::Limitador)).is_err());
        std::fs::write(dir.path().join("c.yaml"), "\n").unwrap();
        let err = load_path(dir.path(), None).unwrap_err();
        assert_eq!(err.file.as_deref(), Some("c.yaml"));
    }

    #[test]
    fn a_file_is_read_in_the_detected_or_named_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.yaml");
        std::fs::write(&path, "- namespace: n\n  max_value: 1\n  seconds: 1\n").unwrap();
        assert_eq!(
            load_path(&path, None).unwrap().format,
            PolicyFormat::Limitador
        );
        assert_eq!(
            load_path(&path, Some(PolicyFormat::Quorate))
                .unwrap()
                .format,
            PolicyFormat::Quorate
        );
        let err = load_path(&dir.path().join("missing.yaml"), None).unwrap_err();
        assert!(err.reason.contains("cannot read"), "{err}");
    }
}
