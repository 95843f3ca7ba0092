//! Wire facts the server and the SDK share beyond the `.proto` files: the metadata names
//! of an `UNAVAILABLE` answer, the IETF RateLimit header grammar, and how a refused
//! connection shows in a tonic status. One definition here, so the two ends cannot drift.

/// Metadata / header carrying the leader's gRPC address on `UNAVAILABLE`.
pub const LEADER_HEADER: &str = "x-quorate-leader";

/// Metadata set to `true` on an `UNAVAILABLE` whose hits were certainly not counted, so a
/// client may resend them without counting them twice. Absent: the outcome is unknown.
pub const NOT_APPLIED_HEADER: &str = "x-quorate-not-applied";

/// One `RateLimit-Policy` item (draft-ietf-httpapi-ratelimit-headers-10):
/// `"name";q=100;w=60`.
pub fn ratelimit_policy_item(name: &str, quota: u64, window_secs: u64) -> String {
    format!("{};q={quota};w={window_secs}", sf_string(name))
}

/// One `RateLimit` item (draft-ietf-httpapi-ratelimit-headers-10): `"name";r=50;t=30`.
pub fn ratelimit_item(name: &str, remaining: u64, reset_secs: u64) -> String {
    format!("{};r={remaining};t={reset_secs}", sf_string(name))
}

/// A structured-field string: printable ASCII only, with `"` and `\` escaped.
pub fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// Whether a failed call never reached a server (the connection was refused): such a
/// call was certainly not applied.
pub fn connection_refused(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_structured_strings() {
        assert_eq!(sf_string("a\"b\\c\u{e9}"), "\"a\\\"b\\\\c?\"");
        assert_eq!(ratelimit_policy_item("u", 100, 60), "\"u\";q=100;w=60");
        assert_eq!(ratelimit_item("u", 50, 30), "\"u\";r=50;t=30");
    }
}
