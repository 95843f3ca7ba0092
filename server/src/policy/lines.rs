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
        LineMap {
            lines: recorder.lines,
        }
    }

    /// The line where the node at `path` starts.
    pub fn line(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }
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
}
