//! The client's IP address: the peer's, or the one a trusted proxy wrote into
//! `X-Forwarded-For`.
//!
//! Each proxy appends the address it received the request from, so the rightmost entries
//! are the trustworthy ones and anything to their left may be forged by the client.
//! [`client_ip_via`] (the `trusted_proxies: {forward_auth: [...], ext_authz: [...]}` form)
//! reads the header only when the peer is a trusted proxy, then walks it from the right,
//! skipping trusted addresses: the first untrusted one is the client. [`client_ip`] is
//! the deprecated hop count (`trusted_proxies: N`): the N-th entry from the right, with
//! 0 meaning the peer.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses one `X-Forwarded-For` entry: an IPv4/IPv6 address, optionally with a port or
/// brackets (`1.2.3.4:5678`, `[::1]:80`), as some proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim().trim_matches('"');
    if let Ok(ip) = e.parse() {
        return Some(ip);
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = e.rsplit_once(':')?;
    if port.bytes().all(|b| b.is_ascii_digit()) {
        return host.parse().ok();
    }
    None
}

/// The client address. `xff` is the (comma-joined) `X-Forwarded-For` value, `peer` the
/// address of whoever connected to us (or what Envoy reports as the source).
pub fn client_ip(
    xff: Option<&str>,
    peer: Option<IpAddr>,
    trusted_proxies: usize,
) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer;
    }
    let Some(xff) = xff else {
        return peer;
    };
    let entries: Vec<&str> = xff
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return peer;
    }
    // Fewer entries than trusted hops: every entry was written by a trusted proxy, so
    // the leftmost is the earliest address anyone trustworthy saw.
    let index = entries.len().saturating_sub(trusted_proxies);
    // An unparsable entry at the trusted position is a misbehaving proxy: fall back to
    // the peer rather than trusting anything further left.
    parse_entry(entries[index]).or(peer)
}

/// The client address when `trusted` lists the proxies we believe: the peer itself if it
/// is not one of them; else the rightmost `X-Forwarded-For` entry that is not trusted;
/// else (every hop trusted) the leftmost entry. An unparsable entry stops the walk at
/// the last trusted hop: nothing to its left can be believed.
pub fn client_ip_via(xff: Option<&str>, peer: Option<IpAddr>, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer_ip = peer?;
    if !in_any(peer_ip, trusted) {
        return peer;
    }
    let Some(xff) = xff else {
        return peer;
    };
    let mut current = peer_ip;
    for entry in xff.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some(ip) = parse_entry(entry) else {
            return Some(current);
        };
        current = ip;
        if !in_any(ip, trusted) {
            return Some(ip);
        }
    }
    Some(current)
}

/// Whether `ip` lies in any of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn in_any(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn zero_trusted_hops_uses_the_peer() {
        assert_eq!(
            client_ip(Some("6.6.6.6"), Some(ip("10.0.0.1")), 0),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn trusted_hops_count_from_the_right() {
        let xff = Some("6.6.6.6, 1.2.3.4, 10.0.0.2");
        let peer = Some(ip("10.0.0.1"));
        assert_eq!(client_ip(xff, peer, 1), Some(ip("10.0.0.2")));
        assert_eq!(client_ip(xff, peer, 2), Some(ip("1.2.3.4")));
        assert_eq!(client_ip(xff, peer, 3), Some(ip("6.6.6.6")));
        assert_eq!(client_ip(xff, peer, 9), Some(ip("6.6.6.6")));
        assert_eq!(client_ip(None, peer, 1), peer);
        assert_eq!(client_ip(Some(" , "), peer, 1), peer);
        assert_eq!(client_ip(Some("garbage"), peer, 1), peer);
        assert_eq!(
            client_ip(Some("1.2.3.4:5678"), peer, 1),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            client_ip(Some("[2001:db8::1]:80"), peer, 1),
            Some(ip("2001:db8::1"))
        );
    }

    #[test]
    fn walks_from_the_right_skipping_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = Some("6.6.6.6, 1.2.3.4, 10.0.0.3");
        // An untrusted peer: its X-Forwarded-For is ignored.
        assert_eq!(
            client_ip_via(xff, Some(ip("8.8.8.8")), &trusted),
            Some(ip("8.8.8.8"))
        );
        // A trusted peer: skip trusted hops, the first untrusted one is the client (the
        // forged 6.6.6.6 further left is never read).
        assert_eq!(
            client_ip_via(xff, Some(ip("10.0.0.1")), &trusted),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            client_ip_via(Some("10.0.0.9, 10.0.0.3"), Some(ip("10.0.0.1")), &trusted),
            Some(ip("10.0.0.9"))
        );
        assert_eq!(
            client_ip_via(
                Some("6.6.6.6, garbage, 10.0.0.3"),
                Some(ip("10.0.0.1")),
                &trusted
            ),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(
            client_ip_via(None, Some(ip("10.0.0.1")), &trusted),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip_via(xff, Some(ip("10.0.0.1")), &[]),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            client_ip_via(
                Some("[2001:db8::1]:443"),
                Some(ip("::ffff:10.0.0.1")),
                &trusted
            ),
            Some(ip("2001:db8::1"))
        );
    }

    #[test]
    fn cidrs() {
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        assert!(in_any(ip("10.1.2.3"), &nets));
        assert!(in_any(ip("::ffff:10.1.2.3"), &nets));
        assert!(in_any(ip("2001:db8::5"), &nets));
        assert!(!in_any(ip("11.0.0.1"), &nets));
    }
}
