//! Tests of the canonical request target: named cases, then properties over generated
//! families of equivalent spellings, then a no-panic fuzz over arbitrary input.

use proptest::prelude::*;

use super::*;
use crate::authz::matching::PathPattern;

fn ok(target: &str) -> String {
    canonical_path(target).unwrap_or_else(|e| panic!("{target:?} refused: {e}"))
}

fn refused(target: &str) -> TargetError {
    match canonical_path(target) {
        Ok(c) => panic!("{target:?} accepted as {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn decodes_unreserved_and_upper_cases_the_rest() {
    assert_eq!(ok("/%61%70%69/items?x=1"), "/api/items");
    assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(ok("/café"), "/caf%C3%A9");
    assert_eq!(ok("/a%20b"), "/a%20b");
    assert_eq!(ok("/a b"), "/a%20b");
    assert_eq!(ok("/%7euser/%2D"), "/~user/-");
    assert_eq!(ok("/a%25b"), "/a%25b");
    assert_eq!(ok("/a+b!$&'()*,=:@"), "/a+b!$&'()*,=:@");
}

#[test]
fn resolves_dot_segments_after_decoding() {
    assert_eq!(ok("/api/%2e%2e/admin/users"), "/admin/users");
    assert_eq!(ok("/api/.%2E/admin"), "/admin");
    assert_eq!(ok("/api/%2E./admin"), "/admin");
    assert_eq!(ok("/api/%2e/x"), "/api/x");
    assert_eq!(ok("/v1/../admin"), "/admin");
    assert_eq!(ok("/a/./b/."), "/a/b/");
    assert_eq!(ok("/a/b/.."), "/a/");
    // Three dots are a name, not a dot segment.
    assert_eq!(ok("/a/..%2E"), "/a/...");
}

#[test]
fn merges_slashes_and_keeps_the_trailing_one() {
    assert_eq!(ok("//v1///items/"), "/v1/items/");
    assert_eq!(ok("/"), "/");
    assert_eq!(ok("/v1"), "/v1");
    assert_eq!(ok("//admin/users"), "/admin/users");
}

#[test]
fn refuses_with_a_named_reason() {
    assert_eq!(refused("/api/..%2fadmin/users"), TargetError::EncodedSlash);
    assert_eq!(refused("/api/%2F"), TargetError::EncodedSlash);
    assert_eq!(refused("/api\\..\\admin"), TargetError::Backslash);
    assert_eq!(refused("/api/%5c"), TargetError::Backslash);
    assert_eq!(refused("/api/%3f"), TargetError::EncodedQueryOrFragment);
    assert_eq!(refused("/api/%23"), TargetError::EncodedQueryOrFragment);
    assert_eq!(refused("/api/#frag"), TargetError::Fragment);
    assert_eq!(refused("/api/%00"), TargetError::ControlByte);
    assert_eq!(refused("/api/\0"), TargetError::ControlByte);
    assert_eq!(refused("/api/%0d%0a"), TargetError::ControlByte);
    assert_eq!(refused("/api/\t"), TargetError::ControlByte);
    assert_eq!(refused("/api/%7f"), TargetError::ControlByte);
    assert_eq!(refused("/api/%ff"), TargetError::InvalidUtf8);
    assert_eq!(refused("/api/%c3"), TargetError::InvalidUtf8);
    assert_eq!(refused("/api/%"), TargetError::BadEscape);
    assert_eq!(refused("/api/%4"), TargetError::BadEscape);
    assert_eq!(refused("/api/%g1"), TargetError::BadEscape);
    assert_eq!(refused("/api;x/../admin"), TargetError::PathParameter);
    assert_eq!(refused("/api/..;/admin"), TargetError::PathParameter);
    assert_eq!(refused("/api/%3b"), TargetError::PathParameter);
    assert_eq!(refused("/.."), TargetError::AboveRoot);
    assert_eq!(refused("/api/../../etc"), TargetError::AboveRoot);
    assert_eq!(refused("/%2e%2e/x"), TargetError::AboveRoot);
    assert_eq!(refused("/admin//../x"), TargetError::DotAfterEmptySegment);
    assert_eq!(refused(""), TargetError::Empty);
    assert_eq!(refused("?x=1"), TargetError::Empty);
    assert_eq!(refused("relative"), TargetError::NotOriginForm);
    assert_eq!(refused("http://evil/admin"), TargetError::NotOriginForm);
    assert_eq!(refused("*"), TargetError::NotOriginForm);
    // The query is not part of the path: anything goes there.
    assert_eq!(ok("/api?next=/../admin;%2f"), "/api");
}

#[test]
fn hosts() {
    let host = |h: &str| canonical_host(h);
    assert_eq!(host("API.Example.COM").unwrap(), "api.example.com");
    assert_eq!(host("api.example.com.").unwrap(), "api.example.com");
    assert_eq!(host("api.example.com.:8443").unwrap(), "api.example.com");
    assert_eq!(host("api.example.com:443").unwrap(), "api.example.com");
    assert_eq!(host("10.0.0.1:80").unwrap(), "10.0.0.1");
    assert_eq!(host("[::1]").unwrap(), "[::1]");
    assert_eq!(host("[0:0::1]:8080").unwrap(), "[::1]");
    assert_eq!(host("[2001:DB8::A]").unwrap(), "[2001:db8::a]");
    assert_eq!(host("").unwrap(), "");
    for bad in [
        "evil.com@api.example.com",
        "a,b",
        "api.example.com:",
        "api.example.com:x",
        "api..example.com",
        "api.example.com..",
        ".",
        "a b",
        "api%2eexample.com",
        "[::1",
        "[::1]x",
        "[nope]",
        "::1",
        "a/b",
        "a\r\nb",
    ] {
        assert_eq!(host(bad), Err(TargetError::BadHost), "{bad:?}");
    }
}

// === properties ===

/// Characters a generated path is made of: unreserved (any spelling is equivalent),
/// kept sub-delims (spelled raw), and characters that are always encoded (space, `é`,
/// `%` itself, `"`), whose escapes may be upper or lower case.
const ALPHABET: &[&str] = &[
    "a", "Z", "0", "9", "-", ".", "_", "~", "!", "$", "&", "'", "(", ")", "*", "+", ",", "=", ":",
    "@", " ", "é", "%", "\"",
];

fn escape(b: u8, upper: bool) -> String {
    if upper {
        format!("%{b:02X}")
    } else {
        format!("%{b:02x}")
    }
}

/// One spelling of a character: raw where allowed, or each byte escaped in a random
/// case. Unreserved characters may be either; kept sub-delims are always raw (`%21` and
/// `!` are different paths); `%` is always escaped. `choice` 0 is the plain spelling.
fn spell(c: &str, choice: u8) -> String {
    let b = c.as_bytes();
    let raw_ok = c != "%";
    let escape_ok = b[0] >= 0x80 || !is_kept_raw(b[0]) || is_unreserved(b[0]);
    if raw_ok && (!escape_ok || choice.is_multiple_of(3)) {
        return c.to_string();
    }
    b.iter()
        .enumerate()
        .map(|(i, &x)| escape(x, (choice >> (i + 2)) & 1 == 1))
        .collect()
}

fn plain(seg: &str) -> String {
    seg.chars()
        .map(|c| spell(c.encode_utf8(&mut [0; 4]), 0))
        .collect()
}

/// Spellings of `.` and `..` as a segment.
fn dot(n: u8, two: bool) -> String {
    let one = [".", "%2e", "%2E"];
    if two {
        format!("{}{}", one[usize::from(n % 3)], one[usize::from(n / 3 % 3)])
    } else {
        one[usize::from(n % 3)].to_string()
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), 1..6)
        .prop_map(|cs| cs.concat())
        .prop_filter("not a dot segment", |s| s != "." && s != "..")
}

/// A base path (segments and trailing slash) and, per segment, how to spell it and what
/// to insert before it.
#[derive(Debug, Clone)]
struct Family {
    segments: Vec<String>,
    trailing: bool,
    spellings: Vec<Vec<u8>>,
    /// 0: nothing, 1: `//`, 2: a `.` segment, 3: `junk/..`.
    inserts: Vec<(u8, u8, String)>,
}

fn family() -> impl Strategy<Value = Family> {
    (prop::collection::vec(segment(), 0..6), any::<bool>()).prop_flat_map(|(segments, trailing)| {
        let n = segments.len();
        let lens: Vec<usize> = segments.iter().map(|s| s.chars().count()).collect();
        let spellings = lens
            .into_iter()
            .map(|l| prop::collection::vec(any::<u8>(), l))
            .collect::<Vec<_>>();
        let inserts = prop::collection::vec((0u8..4, any::<u8>(), segment()), n + 1);
        (Just(segments), Just(trailing), spellings, inserts).prop_map(
            |(segments, trailing, spellings, inserts)| Family {
                segments,
                trailing,
                spellings,
                inserts,
            },
        )
    })
}

impl Family {
    fn base(&self) -> String {
        let mut s = String::new();
        for seg in &self.segments {
            s.push('/');
            s.push_str(&plain(seg));
        }
        if s.is_empty() || self.trailing {
            s.push('/');
        }
        s
    }

    fn variant(&self) -> String {
        let mut s = String::new();
        let insert = |s: &mut String, (kind, n, junk): &(u8, u8, String)| match kind {
            1 => s.push('/'),
            2 => {
                s.push('/');
                s.push_str(&dot(*n, false));
            }
            3 => {
                s.push('/');
                s.push_str(&plain(junk));
                s.push('/');
                s.push_str(&dot(*n, true));
            }
            _ => {}
        };
        for (i, seg) in self.segments.iter().enumerate() {
            insert(&mut s, &self.inserts[i]);
            s.push('/');
            for (c, &choice) in seg.chars().zip(&self.spellings[i]) {
                s.push_str(&spell(c.encode_utf8(&mut [0; 4]), choice));
            }
        }
        // What follows the last segment must not change the trailing slash.
        if self.segments.is_empty() || self.trailing {
            insert(&mut s, &self.inserts[self.segments.len()]);
            s.push('/');
        }
        s
    }
}

fn routes() -> Vec<PathPattern> {
    vec![
        PathPattern::exact("/login").unwrap(),
        PathPattern::prefix("/admin/").unwrap(),
        PathPattern::glob("/v1/*/items").unwrap(),
        PathPattern::prefix("/a").unwrap(),
        PathPattern::prefix("/").unwrap(),
    ]
}

fn matched(path: &str) -> Option<usize> {
    routes().iter().position(|r| r.matches(path))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Every spelling in a family canonicalises to the base's canonical form, so no
    /// spelling reaches a route its canonical form does not.
    #[test]
    fn every_spelling_matches_as_its_canonical_form(f in family()) {
        let base = canonical_path(&f.base()).expect("base paths are valid");
        let variant = f.variant();
        let canon = canonical_path(&variant);
        prop_assert_eq!(&canon, &Ok(base.clone()), "variant {:?}", variant);
        prop_assert_eq!(matched(&canon.unwrap()), matched(&base));
    }

    /// Canonical is a fixed point, and has none of what it resolves or refuses.
    #[test]
    fn canonical_form_is_idempotent_and_clean(s in "(/|%2[eEfF]|%5[cC]|%3[bBfF]|%[0-9a-fA-F]{2}|\\.|;|a|Z|é| |%)*") {
        if let Ok(c) = canonical_path(&s) {
            prop_assert_eq!(canonical_path(&c), Ok(c.clone()));
            prop_assert!(c.starts_with('/'));
            for seg in c[1..].split('/').filter(|_| c.len() > 1) {
                prop_assert!(seg != "." && seg != "..", "{:?} -> {:?}", s, c);
            }
            prop_assert!(!c.contains("//"));
            prop_assert!(!c.contains(';') && !c.contains('\\'));
            let lower = c.as_bytes().windows(3).any(|w| w[0] == b'%'
                && (w[1].is_ascii_lowercase() || w[2].is_ascii_lowercase()));
            prop_assert!(!lower, "{:?}", c);
            for bad in ["%2F", "%5C", "%3F", "%23", "%3B", "%2E", "%00"] {
                prop_assert!(!c.contains(bad), "{:?} -> {:?}", s, c);
            }
        }
    }
}

proptest! {
    // The no-panic fuzz: 20 000 arbitrary byte strings (read as UTF-8, lossily) and
    // 20 000 strings from an alphabet biased towards escapes, dots and slashes.
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = canonical_path(&s);
        let _ = canonical_host(&s);
        let with_slash = format!("/{s}");
        if let Ok(c) = canonical_path(&with_slash) {
            prop_assert_eq!(canonical_path(&c), Ok(c.clone()));
        }
    }

    #[test]
    fn never_panics_on_escape_heavy_input(s in "[/.%0-9a-fA-F;?#\\\\\\[\\]:]{0,64}") {
        let _ = canonical_path(&s);
        if let Ok(h) = canonical_host(&s) {
            prop_assert_eq!(canonical_host(&h), Ok(h.clone()));
        }
    }
}
