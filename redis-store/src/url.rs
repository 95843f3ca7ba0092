//! The `--store` URL: which Redis (or Redis Cluster) holds the counters, parsed once and
//! never printed with its password.

use std::fmt;

use crate::StoreError;

/// Where the counters live, as given by `--store`:
/// - `redis://[user:password@]host:port[/db]` and `rediss://…` (TLS): one Redis;
/// - `redis+cluster://[user:password@]host:port,host:port,…` and `rediss+cluster://…`:
///   a Redis Cluster, reached through any of the listed nodes.
///
/// `Display` and `Debug` replace the password with `***`: the URL may be logged, shown on
/// the dashboard or returned by the admin API without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    tls: bool,
    cluster: bool,
    user: Option<String>,
    password: Option<String>,
    /// `host:port[/db][?…]` per node; one for a single Redis.
    nodes: Vec<String>,
}

impl StoreUrl {
    /// Parses a store URL; the error never repeats the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            StoreError::InvalidUrl(
                "expected redis://, rediss://, redis+cluster:// or rediss+cluster://".into(),
            )
        })?;
        let (tls, cluster) = match scheme {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis+cluster" => (false, true),
            "rediss+cluster" => (true, true),
            _ => {
                return Err(StoreError::InvalidUrl(
                    "unknown scheme: expected redis, rediss, redis+cluster or rediss+cluster"
                        .into(),
                ))
            }
        };
        // The password may contain '@' (percent-encoded or not): split at the last one.
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (
                    Some(user.to_owned()).filter(|u| !u.is_empty()),
                    Some(password.to_owned()),
                ),
                None => (Some(info.to_owned()).filter(|u| !u.is_empty()), None),
            },
        };
        let nodes: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        if nodes.iter().any(|n| n.is_empty() || n.starts_with('/')) {
            return Err(StoreError::InvalidUrl("a host is missing".into()));
        }
        if !cluster && nodes.len() > 1 {
            return Err(StoreError::InvalidUrl(
                "several hosts need redis+cluster:// (or rediss+cluster://)".into(),
            ));
        }
        Ok(StoreUrl {
            tls,
            cluster,
            user,
            password,
            nodes,
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The URL of each node as the `redis` crate reads it, password included. Never log.
    pub(crate) fn node_urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.nodes
            .iter()
            .map(|node| format!("{scheme}://{}{node}", self.userinfo(false)))
            .collect()
    }

    fn userinfo(&self, redacted: bool) -> String {
        let user = self.user.as_deref().unwrap_or("");
        match &self.password {
            Some(_) if redacted => format!("{user}:***@"),
            Some(password) => format!("{user}:{password}@"),
            None if !user.is_empty() => format!("{user}@"),
            None => String::new(),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.tls, self.cluster) {
            (false, false) => "redis",
            (true, false) => "rediss",
            (false, true) => "redis+cluster",
            (true, true) => "rediss+cluster",
        };
        write!(
            f,
            "{scheme}://{}{}",
            self.userinfo(true),
            self.nodes.join(",")
        )
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_displayed() {
        let url = StoreUrl::parse("rediss://app:s3cr@t@redis.internal:6380/2").unwrap();
        assert_eq!(url.to_string(), "rediss://app:***@redis.internal:6380/2");
        assert!(!format!("{url:?}").contains("s3cr"));
        assert_eq!(
            url.node_urls(),
            vec!["rediss://app:s3cr@t@redis.internal:6380/2".to_owned()]
        );
    }

    #[test]
    fn cluster_urls_list_every_node() {
        let url = StoreUrl::parse("redis+cluster://:pw@a:7000,b:7001").unwrap();
        assert!(url.is_cluster());
        assert_eq!(url.to_string(), "redis+cluster://:***@a:7000,b:7001");
        assert_eq!(
            url.node_urls(),
            vec![
                "redis://:pw@a:7000".to_owned(),
                "redis://:pw@b:7001".to_owned()
            ]
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for bad in [
            "http://user:hunter2@x:1",
            "redis://",
            "redis://a:1,b:2",
            "hunter2",
            "redis+cluster://a:1,,b:2",
        ] {
            let err = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
