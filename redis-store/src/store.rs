//! [`RedisStore`]: decides batches of hits with one atomic Lua script call per Redis slot.

use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use quorate_algorithms::{Algorithm, Checked, Decision, DenyReason, KeyCap, Nanos, OnFull, Rate};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use tokio::sync::OnceCell;

use crate::{StoreError, StoreUrl};

/// The decision script (see `decide.lua` for its arguments and arithmetic).
const DECIDE_LUA: &str = include_str!("decide.lua");

/// Every number the script handles stays below this, so Lua's doubles hold it exactly.
const MAX_SCRIPT_NUMBER: u64 = 1 << 52;

/// The shortest slot (window / precision) the script accepts: the slot index of any instant
/// up to `u64::MAX` ns must stay below 2^53.
const MIN_SLOT: Nanos = 4096;

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Prepended to every key, so several deployments can share one Redis (e.g.
    /// `quorate:prod:`). Must not contain `{` or `}` (they delimit Cluster hash tags).
    pub key_prefix: String,
    /// How long one decision may wait for Redis (connecting included) before it fails
    /// with [`StoreError::Timeout`].
    pub timeout: Duration,
    /// Kept beyond a counter's idle instant in its TTL, in milliseconds: covers clock skew
    /// between quorate nodes (a node whose clock is behind still finds the counter).
    pub ttl_slack_ms: u64,
    /// PEM CA certificate(s) to trust for `rediss://` instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for RedisSettings {
    fn default() -> RedisSettings {
        RedisSettings {
            key_prefix: "quorate:".into(),
            timeout: Duration::from_millis(250),
            ttl_slack_ms: 2_000,
            ca_pem: None,
        }
    }
}

/// One hit for [`RedisStore::check`]: a counter of a limit, its rate and key cap, a cost.
#[derive(Debug, Clone, Copy)]
pub struct RedisHit<'a> {
    pub limit: &'a str,
    pub key: &'a str,
    pub rate: Rate,
    pub cap: KeyCap,
    pub cost: u64,
}

/// Counters in Redis, decided by the same algorithms as the in-memory
/// [`CounterStore`](quorate_algorithms::CounterStore); see the crate docs.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: StoreUrl,
    settings: RedisSettings,
    script: Script,
    /// Connected on first use (and retried on every use until it works), so a node starts
    /// while Redis is down and decides per `failure_mode` meanwhile.
    connection: OnceCell<Connection>,
}

/// A multiplexed connection that reconnects by itself: one Redis, or a Cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url) // redacted by StoreUrl
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl RedisStore {
    /// A store for `url`. Does not connect yet: the first [`RedisStore::check`] does.
    pub fn new(url: StoreUrl, settings: RedisSettings) -> Result<RedisStore, StoreError> {
        if settings.key_prefix.contains(['{', '}']) {
            return Err(StoreError::InvalidPrefix);
        }
        Ok(RedisStore {
            inner: Arc::new(Inner {
                url,
                settings,
                script: Script::new(DECIDE_LUA),
                connection: OnceCell::new(),
            }),
        })
    }

    /// The store URL, password redacted when displayed.
    pub fn url(&self) -> &StoreUrl {
        &self.inner.url
    }

    /// Checks that `rate` is within what the script computes exactly (windows up to about
    /// 52 days, limits and bursts up to 2^52, slots of at least 4.096 µs); policies are
    /// checked with this when they load, so a hit never meets an unsupported rate.
    pub fn supports(rate: &Rate) -> Result<(), StoreError> {
        let unsupported = |why: &str| Err(StoreError::UnsupportedRate(why.to_owned()));
        if rate.window() > MAX_SCRIPT_NUMBER {
            return unsupported("windows longer than 2^52 ns (about 52 days)");
        }
        if rate.limit() > MAX_SCRIPT_NUMBER || rate.burst() > MAX_SCRIPT_NUMBER {
            return unsupported("limits or bursts above 2^52");
        }
        if rate.window() / u64::from(rate.precision().max(1)) < MIN_SLOT {
            return unsupported("windows (or sliding-window slots) shorter than 4.096 µs");
        }
        if rate.algorithm() == Algorithm::TokenBucket {
            let refill = u128::from(rate.burst()) * u128::from(rate.window());
            if refill.div_ceil(u128::from(rate.limit().max(1))) > u128::from(MAX_SCRIPT_NUMBER) {
                return unsupported("token buckets that take more than 2^52 ns to refill");
            }
        }
        Ok(())
    }

    /// Decides every hit at `now`, in order, atomically per limit: the same decisions
    /// [`CounterStore::check_capped`](quorate_algorithms::CounterStore::check_capped)
    /// gives for the same calls. One script call when every hit is on one limit (or on a
    /// single Redis); on a Cluster, one call per limit, all sent at once.
    ///
    /// Fails within the configured timeout if Redis cannot answer; then nothing is known
    /// about whether the hits were counted.
    pub async fn check(
        &self,
        hits: &[RedisHit<'_>],
        now: Nanos,
    ) -> Result<Vec<Checked>, StoreError> {
        for hit in hits {
            RedisStore::supports(&hit.rate)?;
        }
        let timeout = self.inner.settings.timeout;
        tokio::time::timeout(timeout, self.check_unbounded(hits, now))
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    /// Whether Redis answers a `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let timeout = self.inner.settings.timeout;
        tokio::time::timeout(timeout, async {
            let mut connection = self.connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
                .map_err(StoreError::from_redis)
                .map(|_| ())
        })
        .await
        .map_err(|_| StoreError::Timeout(timeout))?
    }

    async fn check_unbounded(
        &self,
        hits: &[RedisHit<'_>],
        now: Nanos,
    ) -> Result<Vec<Checked>, StoreError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let connection = self.connection().await?;
        let groups: Vec<Vec<usize>> = match &connection {
            Connection::Single(_) => vec![(0..hits.len()).collect()],
            Connection::Cluster(_) => group_by_limit(hits),
        };
        let calls = groups.iter().map(|group| {
            let mut connection = connection.clone();
            let invocation = self.invocation(group.iter().map(|&i| &hits[i]), now);
            async move {
                let reply: Vec<i64> = invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(StoreError::from_redis)?;
                decode(&reply, group.len())
            }
        });
        let answers = try_join_all(calls).await?;
        let mut decided: Vec<Option<Checked>> = vec![None; hits.len()];
        for (group, answer) in groups.iter().zip(answers) {
            for (&i, checked) in group.iter().zip(answer) {
                decided[i] = Some(checked);
            }
        }
        decided
            .into_iter()
            .map(|d| d.ok_or(StoreError::BadReply))
            .collect()
    }

    fn invocation<'s, 'h: 's>(
        &'s self,
        hits: impl Iterator<Item = &'s RedisHit<'h>>,
        now: Nanos,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = self.inner.script.prepare_invoke();
        invocation
            .arg(now >> 32)
            .arg(now & 0xffff_ffff)
            .arg(self.inner.settings.ttl_slack_ms);
        for hit in hits {
            let rate = hit.rate;
            let (counter, index) = keys(&self.inner.settings.key_prefix, hit);
            let slot = rate.window() / u64::from(rate.precision().max(1));
            let slot = match rate.algorithm() {
                Algorithm::FixedWindow | Algorithm::SlidingWindow => slot.max(1),
                // Unused by these two; any slot keeps the arguments well-formed.
                Algorithm::TokenBucket | Algorithm::SlidingLog => rate.window().max(1),
            };
            let max_keys = match hit.cap.max_keys {
                usize::MAX => -1,
                n => i64::try_from(n).unwrap_or(i64::MAX),
            };
            invocation
                .key(counter)
                .key(index)
                .arg(match rate.algorithm() {
                    Algorithm::FixedWindow => "f",
                    Algorithm::SlidingWindow => "s",
                    Algorithm::TokenBucket => "t",
                    Algorithm::SlidingLog => "l",
                })
                .arg(rate.limit())
                .arg(rate.window())
                .arg(rate.burst())
                .arg(rate.precision().max(1))
                // Any cost above the capacity is refused alike; clamping keeps it exact.
                .arg(hit.cost.min(rate.capacity() + 1))
                .arg(max_keys)
                .arg(match hit.cap.on_full {
                    OnFull::Refuse => "r",
                    OnFull::EvictIdlest => "e",
                })
                .arg(now / slot)
                .arg(now % slot);
        }
        invocation
    }

    async fn connection(&self) -> Result<Connection, StoreError> {
        self.inner
            .connection
            .get_or_try_init(|| connect(&self.inner.url, &self.inner.settings))
            .await
            .cloned()
    }
}

/// The counter key and the limit's index key of `hit`.
///
/// Both carry the hash tag `{<crc32 of the limit>}`: every key of one limit lives in one
/// Cluster slot, so a limit's key cap (its index) is updated atomically with its counters.
/// The rate is part of the counter key, so a policy that changes a limit's rate starts
/// fresh counters (old ones expire by TTL); it comes before the caller's key so that the
/// index orders members by key exactly as the in-memory store does.
fn keys(prefix: &str, hit: &RedisHit<'_>) -> (Vec<u8>, Vec<u8>) {
    let tag = crc32fast::hash(hit.limit.as_bytes());
    let rate = hit.rate;
    let mut counter = format!(
        "{prefix}{{{tag:08x}}}:c:{}\u{1f}{}{}:{}:{}:{}\u{1f}",
        hit.limit,
        match rate.algorithm() {
            Algorithm::FixedWindow => "f",
            Algorithm::SlidingWindow => "s",
            Algorithm::TokenBucket => "t",
            Algorithm::SlidingLog => "l",
        },
        rate.precision(),
        rate.limit(),
        rate.window(),
        rate.burst()
    )
    .into_bytes();
    counter.extend_from_slice(hit.key.as_bytes());
    let index = format!("{prefix}{{{tag:08x}}}:i:{}", hit.limit).into_bytes();
    (counter, index)
}

/// Hits grouped so that each group's keys share one Cluster slot, in first-seen order.
fn group_by_limit(hits: &[RedisHit<'_>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, hit) in hits.iter().enumerate() {
        match groups.iter_mut().find(|(limit, _)| *limit == hit.limit) {
            Some((_, group)) => group.push(i),
            None => groups.push((hit.limit, vec![i])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// Reads the script's 7 integers per hit.
fn decode(reply: &[i64], hits: usize) -> Result<Vec<Checked>, StoreError> {
    if reply.len() != hits * 7 {
        return Err(StoreError::BadReply);
    }
    let number = |v: i64| u64::try_from(v).map_err(|_| StoreError::BadReply);
    reply
        .chunks_exact(7)
        .map(|r| {
            let denied = match r[5] {
                0 => None,
                1 => Some(DenyReason::OverLimit),
                2 => Some(DenyReason::CostExceedsLimit),
                3 => Some(DenyReason::LimitKeysFull),
                _ => return Err(StoreError::BadReply),
            };
            Ok(Checked {
                decision: Decision {
                    allowed: r[0] == 1,
                    limit: number(r[1])?,
                    remaining: number(r[2])?,
                    reset_after: number(r[3])?,
                    retry_after: if r[4] == -1 {
                        None
                    } else {
                        Some(number(r[4])?)
                    },
                    denied,
                },
                evicted: r[6] == 1,
            })
        })
        .collect()
}

async fn connect(url: &StoreUrl, settings: &RedisSettings) -> Result<Connection, StoreError> {
    let timeout = settings.timeout;
    let nodes = url.node_urls();
    let certificates = settings.ca_pem.as_ref().map(|ca| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.clone()),
    });
    if url.is_cluster() {
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(StoreError::from_redis)?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(StoreError::from_redis)?;
        return Ok(Connection::Cluster(connection));
    }
    let node = nodes.into_iter().next().unwrap_or_default();
    let client = match certificates {
        Some(certificates) => redis::Client::build_with_tls(node, certificates),
        None => redis::Client::open(node),
    }
    .map_err(StoreError::from_redis)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_max_delay(Duration::from_secs(1));
    let manager = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(StoreError::from_redis)?;
    Ok(Connection::Single(manager))
}

// === impl Connection ===

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a broken or hostile Redis could answer instead of the script's integers:
    /// refused as a bad reply, never a panic or a made-up decision.
    #[test]
    fn malformed_replies_are_refused() {
        let good = [1, 10, 9, 1_000, -1, 0, 0];
        assert!(decode(&good, 1).is_ok());
        assert_eq!(decode(&good[..6], 1), Err(StoreError::BadReply), "short");
        assert_eq!(
            decode(&good, 2),
            Err(StoreError::BadReply),
            "count mismatch"
        );
        assert_eq!(decode(&[], 1), Err(StoreError::BadReply), "empty");
        // -1 is "no retry_after"; any other negative number is malformed.
        for (field, value) in [(1, -5), (2, -1), (3, i64::MIN), (4, -2), (5, 9)] {
            let mut bad = good;
            bad[field] = value;
            assert_eq!(
                decode(&bad, 1),
                Err(StoreError::BadReply),
                "field {field} = {value}"
            );
        }
    }

    #[test]
    fn prefixes_with_hash_tag_braces_are_refused() {
        let url = StoreUrl::parse("redis://127.0.0.1:1").unwrap();
        let settings = RedisSettings {
            key_prefix: "q{x}:".into(),
            ..RedisSettings::default()
        };
        assert_eq!(
            RedisStore::new(url, settings).unwrap_err(),
            StoreError::InvalidPrefix
        );
    }

    /// Redis down: a decision fails within the timeout, as unavailable.
    #[tokio::test]
    async fn an_unreachable_redis_fails_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // bound then dropped: nothing listens
        let url = StoreUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let settings = RedisSettings {
            timeout: Duration::from_millis(200),
            ..RedisSettings::default()
        };
        let store = RedisStore::new(url, settings).unwrap();
        let rate = Rate::new(Algorithm::FixedWindow, 1, 1_000_000_000, None).unwrap();
        let hit = RedisHit {
            limit: "l",
            key: "k",
            rate,
            cap: KeyCap::NONE,
            cost: 1,
        };
        let started = std::time::Instant::now();
        let err = store.check(&[hit], 0).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
