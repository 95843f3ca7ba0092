//! Where each node of a YAML document starts, so errors found after parsing (validation,
//! duplicates) can name the line, not just the reason.
//!
//! Paths look like `limits[1]` or `domains[0].descriptors[2].rate_limit`, the same paths
//! the validator builds while it walks the parsed document.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Path → 1-based line of the node's start.
#[derive(Debug, Default)]
pub struct LineMap {
    lines: HashMap<String, usize>,
}

enum Frame {
    Sequence { path: String, next: usize },
    Mapping { path: String, key: Option<String> },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    /// The maps of the documents finished so far (multi-document streams).
    done: Vec<HashMap<String, usize>>,
}

impl Recorder {
    /// The path of a node starting now, or `None` when the node is a mapping key.
    fn enter(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Mapping { path, key }) => match key.take() {
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
                None => None,
            },
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 counts lines from 1.
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(value, ..) => match self.enter() {
                Some(path) => {
                    self.lines.entry(path).or_insert(line);
                }
                None => {
                    if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                }
            },
            Event::Alias(_) => {
                self.enter();
            }
            Event::SequenceStart(..) => {
                let path = self.enter().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingStart(..) => {
                let path = self.enter().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => {
                self.stack.clear();
                self.done.push(std::mem::take(&mut self.lines));
            }
            _ => {}
        }
    }
}

impl LineMap {
    /// Maps the first document of `text`. Text that does not parse yields an empty map
    /// (serde reports the syntax error with its own position).
    pub fn build(text: &str) -> LineMap {
        let mut recorder = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut recorder, false);
        let lines = match recorder.done.into_iter().next() {
            Some(first) => first,
            None => recorder.lines,
        };
        LineMap { lines }
    }

    /// Maps every document of a multi-document stream (`---` separated), in order. Lines
    /// count from the start of the stream. Parsing stops at the first syntax error; the
    /// documents before it are still mapped.
    pub fn documents(text: &str) -> Vec<LineMap> {
        let mut recorder = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut recorder, true);
        let mut maps: Vec<LineMap> = recorder
            .done
            .into_iter()
            .map(|lines| LineMap { lines })
            .collect();
        if !recorder.lines.is_empty() {
            maps.push(LineMap {
                lines: recorder.lines,
            });
        }
        maps
    }

    /// The line where the node at `path` starts.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }
}

/// The comment line the loader writes before each file of a directory
/// (`# file: NAME`), so errors can name the file.
pub const FILE_MARKER: &str = "# file: ";

/// Where each file of a concatenated directory starts: maps a line of the whole text to
/// the file and the line within it. Text without markers is one anonymous file.
#[derive(Debug, Default)]
pub struct FileLines {
    /// `(line of the marker, file name)`, in order.
    markers: Vec<(usize, String)>,
}

impl FileLines {
    pub fn build(text: &str) -> FileLines {
        let markers = text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                line.strip_prefix(FILE_MARKER)
                    .map(|name| (i + 1, name.trim().to_string()))
            })
            .collect();
        FileLines { markers }
    }

    /// The file holding `line` of the whole text, and the line within that file.
    pub fn locate(&self, line: usize) -> (Option<&str>, usize) {
        match self.markers.iter().rev().find(|(m, _)| *m < line) {
            Some((m, name)) => (Some(name.as_str()), line - m),
            None => (None, line),
        }
    }

    /// Rewrites every `line N` in a parser message to the line within its file.
    pub fn relocate_message(&self, message: &str) -> String {
        if self.markers.is_empty() {
            return message.to_string();
        }
        let mut out = String::with_capacity(message.len());
        let mut rest = message;
        while let Some(i) = rest.find("line ") {
            let (before, after) = rest.split_at(i + "line ".len());
            out.push_str(before);
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (number, tail) = after.split_at(digits);
            match number.parse::<usize>() {
                Ok(n) => out.push_str(&self.locate(n).1.to_string()),
                Err(_) => out.push_str(number),
            }
            rest = tail;
        }
        out.push_str(rest);
        out
    }
}

/// The line a YAML error is at: the parser's position, or, for errors without one (a text
/// holding several YAML documents, which a single-document format refuses), the first line
/// at which the text read so far stops being one valid document, found by bisection.
pub(super) fn yaml_error_line(text: &str, e: &serde_yaml_ng::Error) -> Option<usize> {
    e.location().map(|l| l.line()).or_else(|| {
        let ends: Vec<usize> = text
            .match_indices('\n')
            .map(|(i, _)| i)
            .chain(std::iter::once(text.len()))
            .collect();
        let fails = |lines: usize| {
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text[..ends[lines - 1]]).is_err()
        };
        // Invariant: the first `good` lines parse (0 trivially), the first `bad` do not.
        let (mut good, mut bad) = (0, ends.len());
        if !fails(bad) {
            return None;
        }
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            if fails(mid) {
                bad = mid;
            } else {
                good = mid;
            }
        }
        Some(bad)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_nested_paths_to_lines() {
        let text = "limits:\n  - name: a\n    limit: 1\n  - name: b\n    limit: 2\ndomains:\n  - domain: d\n    descriptors:\n      - key: k\n        rate_limit: {unit: second}\n";
        let m = LineMap::build(text);
        assert_eq!(m.line("limits"), Some(2));
        assert_eq!(m.line("limits[0]"), Some(2));
        assert_eq!(m.line("limits[1]"), Some(4));
        assert_eq!(m.line("limits[1].limit"), Some(5));
        assert_eq!(m.line("domains[0].descriptors[0]"), Some(9));
        assert_eq!(m.line("domains[0].descriptors[0].rate_limit"), Some(10));
    }

    #[test]
    fn maps_each_document_of_a_stream() {
        let text = "# file: a\ndomain: a\ndescriptors:\n  - key: k\n---\n# file: b\n---\ndomain: b\ndescriptors:\n  - key: x\n  - key: y\n";
        let docs = LineMap::documents(text);
        assert_eq!(docs.len(), 3, "a, the comment-only document, b");
        assert_eq!(docs[0].line("descriptors[0]"), Some(4));
        assert_eq!(docs[2].line(""), Some(8));
        assert_eq!(docs[2].line("descriptors[1]"), Some(11));
    }

    #[test]
    fn file_markers_locate_lines() {
        let text = "# file: a.yaml\ndomain: a\n---\n# file: b.yaml\ndomain: b\nbad: 1\n";
        let files = FileLines::build(text);
        assert_eq!(files.locate(2), (Some("a.yaml"), 1));
        assert_eq!(files.locate(6), (Some("b.yaml"), 2));
        assert_eq!(
            files.relocate_message("unknown field at line 6 column 1"),
            "unknown field at line 2 column 1"
        );
        assert_eq!(FileLines::build("domain: a\n").locate(1), (None, 1));
    }
}
