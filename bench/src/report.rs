//! Printing a [`Report`]: a human summary, and one JSON line for scripts (`--json`).
//!
//! The JSON is written by hand (a flat object of numbers and a few strings) to keep the
//! bench free of a serialization dependency.

use std::fmt::Write as _;

use crate::load::Report;

/// This run's command line, as the markdown reports print it.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Thousands separators for integers in human output: `35123` → `35,123`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human summary of one run.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "target {} · c={} over {} connection(s) · limit {:?} · {} hit(s)/request · measured {:.2} s",
        r.targets.join(","),
        r.concurrency,
        r.connections,
        r.limit,
        r.hits_per_request,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "throughput  {} req/s  ({} verified answers)",
        grouped(r.throughput().round() as u64),
        grouped(r.ok)
    );
    let _ = writeln!(
        s,
        "latency µs  p50 {}  p99 {}  p999 {}  max {}  mean {:.0}",
        grouped(r.quantile_us(0.50)),
        grouped(r.quantile_us(0.99)),
        grouped(r.quantile_us(0.999)),
        grouped(r.latency.max()),
        r.latency.mean()
    );
    let _ = writeln!(
        s,
        "hits        allowed {}  denied {}",
        grouped(r.allowed_hits),
        grouped(r.denied_hits)
    );
    if r.problems() == 0 {
        let _ = writeln!(s, "errors      none");
    } else {
        let _ = writeln!(s, "{}", problems_line(r));
    }
    if r.warmup_errors > 0 {
        let _ = writeln!(
            s,
            "warm-up     {} failed call(s) (not counted above)",
            grouped(r.warmup_errors)
        );
    }
    s
}

/// A loud one-line account of failures, or `None`-like empty text when there were none.
pub fn problems_line(r: &Report) -> String {
    let mut parts: Vec<String> = r
        .errors
        .iter()
        .map(|(code, n)| format!("{code} {}", grouped(*n)))
        .collect();
    if r.bad_answers > 0 {
        parts.push(format!("bad answers {}", grouped(r.bad_answers)));
    }
    format!(
        "!!! ERRORS: {} of {} calls failed or were not real decisions ({}); first: {}",
        grouped(r.problems()),
        grouped(r.ok + r.problems()),
        parts.join(", "),
        r.first_problem.as_deref().unwrap_or("?")
    )
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One JSON object on one line.
pub fn json(r: &Report) -> String {
    let targets: Vec<String> = r.targets.iter().map(|t| json_str(t)).collect();
    let errors: Vec<String> = r
        .errors
        .iter()
        .map(|(code, n)| format!("{}:{n}", json_str(code)))
        .collect();
    format!(
        concat!(
            "{{\"targets\":[{}],\"concurrency\":{},\"connections\":{},\"limit\":{},",
            "\"hits_per_request\":{},\"elapsed_s\":{:.3},\"ok\":{},\"throughput_rps\":{:.1},",
            "\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"mean_us\":{:.1},",
            "\"allowed_hits\":{},\"denied_hits\":{},\"errors\":{{{}}},\"bad_answers\":{},",
            "\"warmup_errors\":{},\"first_problem\":{}}}"
        ),
        targets.join(","),
        r.concurrency,
        r.connections,
        json_str(&r.limit),
        r.hits_per_request,
        r.elapsed.as_secs_f64(),
        r.ok,
        r.throughput(),
        r.quantile_us(0.50),
        r.quantile_us(0.99),
        r.quantile_us(0.999),
        r.latency.max(),
        r.latency.mean(),
        r.allowed_hits,
        r.denied_hits,
        errors.join(","),
        r.bad_answers,
        r.warmup_errors,
        r.first_problem
            .as_deref()
            .map_or_else(|| "null".to_string(), json_str),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(35123456), "35,123,456");
    }

    #[test]
    fn escapes_json() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
