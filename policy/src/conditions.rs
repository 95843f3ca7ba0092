//! Conditional limits (Limitador's model) and the subset of CEL their conditions use.
//!
//! A conditional limit applies to an Envoy RLS request when all its conditions hold; its
//! counter is keyed by the values of its variables, and a limit one of whose variables is
//! missing from the request does not apply. Every applying limit is counted.
//!
//! Supported expressions (what Limitador limits files use in practice):
//! - entries: `descriptors[N]['key']`, `descriptors[N]["key"]`, `descriptors[N].key`, and
//!   the legacy pre-CEL bare `key` (dots allowed, e.g. `req.method`), which means
//!   `descriptors[0]['key']`;
//! - comparisons `entry == 'value'` and `entry != "value"` (literal on either side, single
//!   or double quotes, no escape sequences);
//! - `&&` between comparisons.
//!
//! Everything else — `||`, `!`, parentheses, function and method calls (`has()`,
//! `size()`, `startsWith()`), `in`, numbers, ordering comparisons, nested field access —
//! is refused with a message naming the construct, never guessed at.

use std::fmt;

use super::rule::{RateUnit, RequestDescriptor, RuleSpec, ENTRY_SEPARATOR};

/// The highest descriptor index a policy may reference (requests carry few descriptors).
pub const MAX_DESCRIPTOR_INDEX: usize = 63;

/// Longest key or literal accepted in an expression.
const MAX_TEXT: usize = 256;

/// A reference to one entry of one request descriptor: `descriptors[index][key]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub index: usize,
    pub key: String,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self
            .key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && self
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain {
            write!(f, "descriptors[{}].{}", self.index, self.key)
        } else {
            write!(f, "descriptors[{}][{:?}]", self.index, self.key)
        }
    }
}

impl EntryRef {
    /// The entry's value in the request; the last one wins if a key repeats.
    pub fn lookup<'a>(&self, descriptors: &'a [RequestDescriptor]) -> Option<&'a str> {
        descriptors
            .get(self.index)?
            .entries
            .iter()
            .rev()
            .find(|(k, _)| *k == self.key)
            .map(|(_, v)| v.as_str())
    }
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
}

/// One comparison of an entry with a string literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub entry: EntryRef,
    pub op: CompareOp,
    pub value: String,
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
        };
        write!(f, "{} {op} {:?}", self.entry, self.value)
    }
}

impl Comparison {
    /// Whether the comparison holds; a missing entry makes it false (as in Limitador).
    pub fn holds(&self, descriptors: &[RequestDescriptor]) -> bool {
        match self.entry.lookup(descriptors) {
            Some(v) => (v == self.value) == (self.op == CompareOp::Eq),
            None => false,
        }
    }
}

/// What an applying conditional limit does.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionalRule {
    /// Counted: a fixed window (or any rate) keyed by the variables.
    Limited(RuleSpec),
    /// `max_value: 0`: every applying request is over the limit.
    Blocked(RateUnit),
}

/// A compiled conditional limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionalLimit {
    /// The policy limit it counts against (empty for a blocked limit).
    pub limit: String,
    /// The name shown to clients.
    pub shown_name: String,
    pub rule: ConditionalRule,
    /// All must hold.
    pub conditions: Vec<Comparison>,
    /// The counter key is their values; all must be present.
    pub variables: Vec<EntryRef>,
    /// The request descriptor whose status reports this limit: the index of the first
    /// variable, else of the first condition, else 0.
    pub descriptor: usize,
}

impl ConditionalLimit {
    /// The index a limit with these conditions and variables reports on.
    pub fn attributed_index(conditions: &[Comparison], variables: &[EntryRef]) -> usize {
        variables
            .first()
            .map(|v| v.index)
            .or_else(|| conditions.first().map(|c| c.entry.index))
            .unwrap_or(0)
    }

    /// `Ok(counter key)` when the limit applies to the request, else why not.
    pub fn evaluate(&self, descriptors: &[RequestDescriptor]) -> Result<String, String> {
        if let Some(c) = self.conditions.iter().find(|c| !c.holds(descriptors)) {
            return Err(match c.entry.lookup(descriptors) {
                None => format!("condition {c} is false: {} is missing", c.entry),
                Some(v) => format!("condition {c} is false: the value is {v:?}"),
            });
        }
        let mut key = String::new();
        for (i, v) in self.variables.iter().enumerate() {
            let Some(value) = v.lookup(descriptors) else {
                return Err(format!("variable {v} is missing"));
            };
            if i > 0 {
                key.push(ENTRY_SEPARATOR);
            }
            if v.index > 0 {
                key.push_str(&format!("[{}]", v.index));
            }
            key.push_str(&v.key);
            key.push('=');
            key.push_str(value);
        }
        Ok(key)
    }
}

// === parsing ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Name(String),
    Str(String),
    Number(String),
    LBracket,
    RBracket,
    Dot,
    EqEq,
    NotEq,
    AndAnd,
    /// Any other operator or punctuation, kept for the error message.
    Other(String),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Name(n) => write!(f, "`{n}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Number(n) => write!(f, "number `{n}`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Dot => f.write_str("`.`"),
            Tok::EqEq => f.write_str("`==`"),
            Tok::NotEq => f.write_str("`!=`"),
            Tok::AndAnd => f.write_str("`&&`"),
            Tok::Other(o) => write!(f, "`{o}`"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '\'' | '"' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\\') => {
                            return Err(
                                "escape sequences in string literals are not supported".into()
                            )
                        }
                        Some(&q) if q == c => break,
                        Some(&ch) => value.push(ch),
                    }
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(value));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                {
                    i += 1;
                }
                toks.push(Tok::Number(chars[start..i].iter().collect()));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                toks.push(Tok::Name(chars[start..i].iter().collect()));
            }
            '[' => {
                toks.push(Tok::LBracket);
                i += 1;
            }
            ']' => {
                toks.push(Tok::RBracket);
                i += 1;
            }
            '.' => {
                toks.push(Tok::Dot);
                i += 1;
            }
            _ => {
                let two: String = [Some(c), next].iter().flatten().collect();
                let tok = match two.as_str() {
                    "==" => Some(Tok::EqEq),
                    "!=" => Some(Tok::NotEq),
                    "&&" => Some(Tok::AndAnd),
                    "||" | "<=" | ">=" => Some(Tok::Other(two.clone())),
                    _ => None,
                };
                match tok {
                    Some(t) => {
                        toks.push(t);
                        i += 2;
                    }
                    None => {
                        toks.push(Tok::Other(c.to_string()));
                        i += 1;
                    }
                }
            }
        }
    }
    Ok(toks)
}

/// One side of a comparison.
enum Operand {
    Entry(EntryRef),
    Literal(String),
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Parser, String> {
        Ok(Parser {
            toks: tokenize(text)?,
            at: 0,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn unsupported(tok: &Tok) -> String {
        match tok {
            Tok::Other(o) if o == "||" => {
                "`||` is not supported: write one limit per alternative".into()
            }
            Tok::Other(o) if o == "!" => "negation `!` is not supported: use `!=`".into(),
            Tok::Other(o) if o == "(" || o == ")" => "parentheses are not supported".into(),
            Tok::Other(o) if ["<", ">", "<=", ">="].contains(&o.as_str()) => {
                format!("the `{o}` comparison is not supported: only `==` and `!=` are")
            }
            Tok::Name(n) if n == "in" => "the `in` operator is not supported".into(),
            Tok::Number(n) => {
                format!("numeric literal `{n}` is not supported: compare with a string, e.g. '{n}'")
            }
            other => format!("unexpected {other}"),
        }
    }

    fn expect_end(&mut self) -> Result<(), String> {
        match self.next() {
            None => Ok(()),
            Some(t) => Err(Parser::unsupported(&t)),
        }
    }

    fn operand(&mut self) -> Result<Operand, String> {
        let Some(tok) = self.next() else {
            return Err("expected a descriptor entry or a string literal, found the end".into());
        };
        match tok {
            Tok::Str(s) => {
                if s.len() > MAX_TEXT {
                    return Err(format!("string literal longer than {MAX_TEXT} bytes"));
                }
                Ok(Operand::Literal(s))
            }
            Tok::Name(name) => {
                if self.peek() == Some(&Tok::Other("(".into())) {
                    return Err(format!("function call `{name}()` is not supported"));
                }
                match name.as_str() {
                    "true" | "false" | "null" => {
                        Err(format!("the literal `{name}` is not supported"))
                    }
                    "descriptors" => self.descriptor_entry().map(Operand::Entry),
                    _ => self.legacy_entry(name).map(Operand::Entry),
                }
            }
            Tok::LBracket => Err("list literals are not supported".into()),
            other => Err(Parser::unsupported(&other)),
        }
    }

    /// After `descriptors`: `[N]` then `['key']` or `.key`.
    fn descriptor_entry(&mut self) -> Result<EntryRef, String> {
        if self.next() != Some(Tok::LBracket) {
            return Err("`descriptors` must be indexed, e.g. descriptors[0]['key']".into());
        }
        let index = match self.next() {
            Some(Tok::Number(n)) => n
                .parse::<usize>()
                .ok()
                .filter(|i| *i <= MAX_DESCRIPTOR_INDEX)
                .ok_or_else(|| {
                    format!(
                        "descriptor index `{n}` is not a number from 0 to {MAX_DESCRIPTOR_INDEX}"
                    )
                })?,
            _ => return Err("descriptors must be indexed by a number, e.g. descriptors[0]".into()),
        };
        if self.next() != Some(Tok::RBracket) {
            return Err(format!("expected `]` after descriptors[{index}"));
        }
        let key = match self.next() {
            Some(Tok::LBracket) => {
                let key = match self.next() {
                    Some(Tok::Str(k)) => k,
                    _ => {
                        return Err(format!(
                            "descriptors[{index}][...] needs a quoted key, e.g. descriptors[{index}]['key']"
                        ))
                    }
                };
                if self.next() != Some(Tok::RBracket) {
                    return Err(format!("expected `]` after descriptors[{index}][{key:?}"));
                }
                key
            }
            Some(Tok::Dot) => match self.next() {
                Some(Tok::Name(k)) => k,
                _ => return Err(format!("expected a key after descriptors[{index}].")),
            },
            _ => {
                return Err(format!(
                    "descriptors[{index}] must be followed by ['key'] or .key"
                ))
            }
        };
        match self.peek() {
            Some(Tok::Dot) | Some(Tok::LBracket) => {
                return Err(format!(
                    "nested access or method calls on descriptors[{index}].{key} are not supported"
                ))
            }
            Some(Tok::Other(o)) if o == "(" => {
                return Err(format!("function call `{key}()` is not supported"))
            }
            _ => {}
        }
        check_key(&key)?;
        Ok(EntryRef { index, key })
    }

    /// A legacy bare key (`req.method`): an entry of descriptors[0].
    fn legacy_entry(&mut self, first: String) -> Result<EntryRef, String> {
        let mut key = first;
        while self.peek() == Some(&Tok::Dot) {
            self.next();
            match self.next() {
                Some(Tok::Name(part)) => {
                    key.push('.');
                    key.push_str(&part);
                }
                _ => return Err(format!("expected a name after `{key}.`")),
            }
        }
        match self.peek() {
            Some(Tok::LBracket) => {
                return Err(format!(
                    "indexing `{key}[...]` is not supported: only descriptors[N] can be indexed"
                ))
            }
            Some(Tok::Other(o)) if o == "(" => {
                return Err(format!("function call `{key}()` is not supported"))
            }
            _ => {}
        }
        check_key(&key)?;
        Ok(EntryRef { index: 0, key })
    }

    fn comparison(&mut self) -> Result<Comparison, String> {
        let left = self.operand()?;
        let op = match self.next() {
            Some(Tok::EqEq) => CompareOp::Eq,
            Some(Tok::NotEq) => CompareOp::Ne,
            None => return Err("expected `==` or `!=`, found the end".into()),
            Some(other) => return Err(Parser::unsupported(&other)),
        };
        let right = self.operand()?;
        match (left, right) {
            (Operand::Entry(entry), Operand::Literal(value))
            | (Operand::Literal(value), Operand::Entry(entry)) => {
                Ok(Comparison { entry, op, value })
            }
            (Operand::Entry(a), Operand::Entry(b)) => Err(format!(
                "comparing two entries ({a} and {b}) is not supported; to compare with a value, quote it: '{}'",
                b.key
            )),
            (Operand::Literal(_), Operand::Literal(_)) => {
                Err("comparing two literals is not supported".into())
            }
        }
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_TEXT {
        return Err(format!("entry key must be 1 to {MAX_TEXT} bytes"));
    }
    Ok(())
}

/// Parses one condition: comparisons joined by `&&`.
pub fn parse_condition(text: &str) -> Result<Vec<Comparison>, String> {
    let mut p = Parser::new(text)?;
    if p.peek().is_none() {
        return Err("empty condition".into());
    }
    let mut all = vec![p.comparison()?];
    while let Some(tok) = p.next() {
        match tok {
            Tok::AndAnd => all.push(p.comparison()?),
            other => return Err(Parser::unsupported(&other)),
        }
    }
    Ok(all)
}

/// Parses one variable: a single entry reference.
pub fn parse_variable(text: &str) -> Result<EntryRef, String> {
    let mut p = Parser::new(text)?;
    match p.operand()? {
        Operand::Entry(e) => {
            p.expect_end()?;
            Ok(e)
        }
        Operand::Literal(_) => Err("a variable must be a descriptor entry, not a literal".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, key: &str) -> EntryRef {
        EntryRef {
            index,
            key: key.into(),
        }
    }

    #[test]
    fn parses_the_forms_limitador_files_use() {
        let eq = |e, v: &str| Comparison {
            entry: e,
            op: CompareOp::Eq,
            value: v.into(),
        };
        assert_eq!(
            parse_condition("descriptors[0]['req.method'] == 'GET'").unwrap(),
            vec![eq(entry(0, "req.method"), "GET")]
        );
        assert_eq!(
            parse_condition("descriptors[1].method == \"POST\"").unwrap(),
            vec![eq(entry(1, "method"), "POST")]
        );
        assert_eq!(
            parse_condition("req.method == 'GET'").unwrap(),
            vec![eq(entry(0, "req.method"), "GET")]
        );
        assert_eq!(
            parse_condition("'GET' == method").unwrap(),
            vec![eq(entry(0, "method"), "GET")]
        );
        let both =
            parse_condition("descriptors[0].a == 'x' && descriptors[0]['b'] != 'y'").unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].op, CompareOp::Ne);
        assert_eq!(
            parse_variable("descriptors[0]['user.id']").unwrap(),
            entry(0, "user.id")
        );
        assert_eq!(
            parse_variable("descriptors[2].user").unwrap(),
            entry(2, "user")
        );
        assert_eq!(parse_variable("user_id").unwrap(), entry(0, "user_id"));
    }

    #[test]
    fn refuses_what_is_not_supported_and_says_what() {
        let cases = [
            ("a == 'x' || b == 'y'", "`||`"),
            ("size(a) == '1'", "function call `size()`"),
            ("has(descriptors[0].a)", "function call `has()`"),
            ("descriptors[0].a.startsWith('x')", "nested access"),
            ("a in ['x']", "`in`"),
            ("descriptors[0].n > 5", "`>`"),
            ("descriptors[0].n == 5", "numeric literal"),
            ("!(a == 'x')", "negation"),
            ("(a == 'x')", "parentheses"),
            ("a == b", "comparing two entries"),
            ("'a' == 'b'", "two literals"),
            ("descriptors['x'].a == 'y'", "indexed by a number"),
            ("descriptors[99].a == 'y'", "from 0 to 63"),
            ("descriptors[0] == 'y'", "must be followed by"),
            ("a == 'x", "unterminated"),
            ("a == 'x\\'y'", "escape sequences"),
            ("a ==", "found the end"),
            ("", "empty condition"),
            ("descriptors[0][''] == 'x'", "1 to 256 bytes"),
        ];
        for (text, expected) in cases {
            let err = parse_condition(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert!(parse_variable("'x'").unwrap_err().contains("not a literal"));
        assert!(parse_variable("a b").unwrap_err().contains("unexpected"));
    }

    #[test]
    fn evaluation_follows_limitador() {
        let limit = ConditionalLimit {
            limit: "ns/l".into(),
            shown_name: "l".into(),
            rule: ConditionalRule::Blocked(RateUnit::for_window(quorate_algorithms::SECOND)),
            conditions: parse_condition("descriptors[0].m == 'GET' && descriptors[0].p != '/x'")
                .unwrap(),
            variables: vec![entry(0, "user"), entry(1, "app")],
            descriptor: 0,
        };
        let d = RequestDescriptor::from_pairs;
        let ok = [
            d(&[("m", "GET"), ("p", "/y"), ("user", "bob")]),
            d(&[("app", "a1")]),
        ];
        let key = limit.evaluate(&ok).unwrap();
        assert_eq!(key, "user=bob\u{1e}[1]app=a1");
        let wrong_method = [
            d(&[("m", "POST"), ("p", "/y"), ("user", "bob")]),
            d(&[("app", "a")]),
        ];
        assert!(limit.evaluate(&wrong_method).unwrap_err().contains("POST"));
        let no_p = [d(&[("m", "GET"), ("user", "bob")]), d(&[("app", "a")])];
        assert!(limit.evaluate(&no_p).unwrap_err().contains("missing"));
        let one_descriptor = [d(&[("m", "GET"), ("p", "/y"), ("user", "bob")])];
        assert!(limit
            .evaluate(&one_descriptor)
            .unwrap_err()
            .contains("descriptors[1].app is missing"));
    }
}
