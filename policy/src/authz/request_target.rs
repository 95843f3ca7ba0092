//! The one canonical form of a request target that routes are matched on — used by
//! Envoy ext_authz, every forward-auth header family and `quorate policy test` alike, so
//! that what is decided is what the upstream will serve.
//!
//! **Path** ([`canonical_path`]): the part before the first `?`, then
//! 1. every `%XX` is checked: a bad escape, or one that decodes to `/`, `\`, `?`, `#`,
//!    `;`, NUL or another control byte, is refused, as is a path whose decoded bytes are
//!    not UTF-8;
//! 2. escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!    escape stays encoded with upper-case hex (`%c3%a9` → `%C3%A9`); raw bytes that are
//!    neither unreserved nor `!$&'()*+,=:@` are encoded (`é` → `%C3%A9`, space → `%20`);
//! 3. dot segments — now including decoded ones (`%2e%2e`, `.%2E`) — are resolved; a
//!    `..` climbing above `/` is refused;
//! 4. repeated slashes are merged (`//a///b` → `/a/b`), as nginx (`merge_slashes on`) and
//!    Envoy (`merge_slashes`) do. A `..` that would remove an empty segment
//!    (`/admin//../x`) is refused: servers that merge slashes first serve `/x`, those that
//!    resolve dots first serve `/admin/x`, and no single answer is right for both.
//!
//! A raw or encoded `;` is refused, not interpreted: Tomcat, Jetty and Spring strip
//! `;params` from every segment and read `..;` as `..` (`/api/..;/admin` is `/admin`
//! there), while nginx, Caddy and Envoy treat `;` as an ordinary character. Whichever
//! reading quorate chose, some upstream would serve a path that was matched as another.
//! A raw `\`, `#` or control byte is refused too.
//!
//! **Host** ([`canonical_host`]): lower-cased, without port and trailing dot; an IPv6
//! literal in brackets is written in its shortest form (`[0:0::1]:80` → `[::1]`).
//! Anything but letters, digits, `-`, `_` and `.` (or a bracketed IPv6 address) is
//! refused, so `evil.com@api`, `a,b` or an encoded host never reach route matching.
//!
//! The form is idempotent: a canonical path is its own canonical form.

use std::fmt;
use std::net::Ipv6Addr;

/// Why a request target or host was refused. Shown to the client as the denial reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    Empty,
    NotOriginForm,
    BadEscape,
    InvalidUtf8,
    EncodedSlash,
    Backslash,
    EncodedQueryOrFragment,
    Fragment,
    ControlByte,
    PathParameter,
    AboveRoot,
    DotAfterEmptySegment,
    BadHost,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::Empty => "empty request path",
            TargetError::NotOriginForm => "request path must start with '/'",
            TargetError::BadEscape => "bad percent-escape in path",
            TargetError::InvalidUtf8 => "path does not decode to UTF-8",
            TargetError::EncodedSlash => "encoded '/' (%2F) in path",
            TargetError::Backslash => "'\\' or %5C in path",
            TargetError::EncodedQueryOrFragment => "encoded '?' or '#' in path",
            TargetError::Fragment => "'#' in request target",
            TargetError::ControlByte => "NUL or control byte in path",
            TargetError::PathParameter => "';' path parameter in path",
            TargetError::AboveRoot => "dot segments climb above the root",
            TargetError::DotAfterEmptySegment => "'..' after '//' is ambiguous",
            TargetError::BadHost => "invalid host",
        })
    }
}

impl std::error::Error for TargetError {}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Raw bytes kept as they are besides unreserved ones (RFC 3986 `pchar` minus `;`).
fn is_kept_raw(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,=:@".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Refuses bytes that must never reach route matching, raw or decoded.
fn check_byte(b: u8, encoded: bool) -> Result<(), TargetError> {
    match b {
        b'/' if encoded => Err(TargetError::EncodedSlash),
        b'\\' => Err(TargetError::Backslash),
        b'?' | b'#' if encoded => Err(TargetError::EncodedQueryOrFragment),
        b'#' => Err(TargetError::Fragment),
        b';' => Err(TargetError::PathParameter),
        0..=0x1f | 0x7f => Err(TargetError::ControlByte),
        _ => Ok(()),
    }
}

/// One segment in canonical spelling (no `/` inside), or `Err`.
fn canonical_segment(raw: &[u8], decoded: &mut Vec<u8>) -> Result<String, TargetError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let v = hi << 4 | lo;
            check_byte(v, true)?;
            decoded.push(v);
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                push_escaped(&mut out, v);
            }
            i += 3;
        } else {
            check_byte(b, false)?;
            decoded.push(b);
            if is_kept_raw(b) {
                out.push(char::from(b));
            } else {
                push_escaped(&mut out, b);
            }
            i += 1;
        }
    }
    Ok(out)
}

/// The canonical path of a request target (path and optional query): see the module
/// docs. Always starts with `/`; has no query.
pub fn canonical_path(target: &str) -> Result<String, TargetError> {
    let path = target.split('?').next().unwrap_or("");
    if path.is_empty() {
        return Err(TargetError::Empty);
    }
    if !path.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    // All decoded bytes of the path, to check that it is UTF-8 as a whole (a multi-byte
    // character may be split across escapes).
    let mut decoded = Vec::with_capacity(path.len());
    // Segments after resolution; `None` is an empty segment (from `//`), kept until the
    // end so a `..` that would remove one can be refused.
    let mut stack: Vec<Option<String>> = Vec::new();
    let raw_segments: Vec<&[u8]> = path.as_bytes()[1..].split(|&b| b == b'/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (n, raw) in raw_segments.into_iter().enumerate() {
        decoded.push(b'/');
        let seg = canonical_segment(raw, &mut decoded)?;
        match seg.as_str() {
            "." => trailing_slash = n == last,
            ".." => {
                match stack.pop() {
                    Some(Some(_)) => {}
                    Some(None) => return Err(TargetError::DotAfterEmptySegment),
                    None => return Err(TargetError::AboveRoot),
                }
                trailing_slash = n == last;
            }
            // The last segment empty means the path ends in `/`; an inner one is `//`.
            "" if n == last => trailing_slash = true,
            "" => stack.push(None),
            _ => stack.push(Some(seg)),
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::InvalidUtf8);
    }
    let mut out = String::with_capacity(path.len());
    for seg in stack.into_iter().flatten() {
        out.push('/');
        out.push_str(&seg);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The canonical host: lower-case, no port, no trailing dot; bracketed IPv6 in its
/// shortest form. An empty host stays empty (no `Host` header; only host-less routes
/// match).
pub fn canonical_host(host: &str) -> Result<String, TargetError> {
    let h = host.trim();
    if h.is_empty() {
        return Ok(String::new());
    }
    if let Some(rest) = h.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or(TargetError::BadHost)?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let ip: Ipv6Addr = addr.parse().map_err(|_| TargetError::BadHost)?;
        if !port_ok {
            return Err(TargetError::BadHost);
        }
        return Ok(format!("[{ip}]"));
    }
    let name = match h.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return Err(TargetError::BadHost),
        None => h,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(TargetError::BadHost);
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
#[path = "request_target_tests.rs"]
mod tests;
