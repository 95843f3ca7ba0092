//! Window lengths as people write them: `1s`, `10s`, `15m`, `1h`, `1d`, or a unit word.

use quorate_algorithms::{Nanos, SECOND};

/// Parses a window: `<N><s|m|h|d|w>` (e.g. `10s`, `15m`), or a unit word `second`,
/// `minute`, `hour`, `day`, `week`, `month` (30 days) or `year` (365 days), as
/// envoyproxy/ratelimit counts them. Also `<N>ms`.
pub fn parse_window(text: &str) -> Result<Nanos, String> {
    let t = text.trim().to_ascii_lowercase();
    let unit = |word: &str| -> Option<Nanos> {
        let secs: u64 = match word {
            "second" | "s" | "sec" => 1,
            "minute" | "m" | "min" => 60,
            "hour" | "h" => 3_600,
            "day" | "d" => 86_400,
            "week" | "w" => 604_800,
            "month" => 2_592_000,
            "year" | "y" => 31_536_000,
            _ => return None,
        };
        Some(secs * SECOND)
    };
    if let Some(n) = unit(&t) {
        return Ok(n);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let count: u64 = digits.parse().map_err(|_| {
        format!("invalid window {text:?}: expected e.g. 1s, 10s, 15m, 1h, 1d or minute")
    })?;
    if count == 0 {
        return Err(format!("window {text:?} must be longer than zero"));
    }
    let per = if suffix == "ms" {
        1_000_000
    } else {
        unit(suffix).ok_or_else(|| {
            format!(
                "unknown unit {suffix:?} in window {text:?} (use ms, s, m, h, d, w or a unit word)"
            )
        })?
    };
    count
        .checked_mul(per)
        .ok_or_else(|| format!("window {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_multiples() {
        assert_eq!(parse_window("1s"), Ok(SECOND));
        assert_eq!(parse_window("10s"), Ok(10 * SECOND));
        assert_eq!(parse_window("15m"), Ok(900 * SECOND));
        assert_eq!(parse_window("minute"), Ok(60 * SECOND));
        assert_eq!(parse_window("DAY"), Ok(86_400 * SECOND));
        assert_eq!(parse_window("250ms"), Ok(250_000_000));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse_window("0s").is_err());
        assert!(parse_window("fortnight").is_err());
        assert!(parse_window("-1s").is_err());
        assert!(parse_window("99999999999999999999s").is_err());
        assert!(parse_window("9999999999999d").is_err());
    }
}
