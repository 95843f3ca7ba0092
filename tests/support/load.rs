//! Load across a failover: clients on every node hit one limit in a loop and tally what
//! they see, split at the moment the test kills the leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::{api, eventually, Cluster};

/// What the load clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub errors: AtomicU64,
    /// Denials from requests sent after the kill.
    pub denied_after_kill: AtomicU64,
}

/// Concurrent clients driving hits of cost 1 on one key of one limit.
#[derive(Debug)]
pub struct FailoverLoad {
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    /// Microseconds each client waits between requests (0: closed loop).
    pace_us: Arc<AtomicU64>,
    killed_at: Arc<Mutex<Option<Instant>>>,
    /// The first decision for a request sent after the kill: when, and through which node.
    served_after_kill: Arc<Mutex<Option<(Instant, u64)>>>,
    clients: Vec<JoinHandle<()>>,
}

impl FailoverLoad {
    /// Starts `per_node` clients on each of `nodes`, hitting `limit` on key `k`.
    pub fn start(
        cluster: &Cluster,
        nodes: &[u64],
        per_node: u64,
        limit: &'static str,
    ) -> FailoverLoad {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let pace_us = Arc::new(AtomicU64::new(0));
        let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let served_after_kill: Arc<Mutex<Option<(Instant, u64)>>> = Arc::default();
        let mut clients = Vec::new();
        for &id in nodes {
            for _ in 0..per_node {
                let mut client = cluster.node(id).client();
                let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
                let pace_us = Arc::clone(&pace_us);
                let (killed_at, served) = (Arc::clone(&killed_at), Arc::clone(&served_after_kill));
                clients.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let pace = pace_us.load(Ordering::Relaxed);
                        if pace > 0 {
                            tokio::time::sleep(Duration::from_micros(pace)).await;
                        }
                        let sent = Instant::now();
                        let after_kill = killed_at.lock().unwrap().is_some_and(|k| sent > k);
                        match api::check(&mut client, limit, "k", None).await {
                            Ok(d) => {
                                if d.allowed {
                                    tally.allowed.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    tally.denied.fetch_add(1, Ordering::SeqCst);
                                    if after_kill {
                                        tally.denied_after_kill.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                                if after_kill {
                                    served.lock().unwrap().get_or_insert((Instant::now(), id));
                                }
                            }
                            Err(_) => {
                                tally.errors.fetch_add(1, Ordering::SeqCst);
                                // Back off a little so a dead node's clients don't spin.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }));
            }
        }
        FailoverLoad {
            tally,
            stop,
            pace_us,
            killed_at,
            served_after_kill,
            clients,
        }
    }

    /// Waits until at least `n` hits were allowed.
    pub async fn wait_allowed(&self, n: u64, timeout: Duration) {
        eventually(timeout, "enough of the quota to be granted", || {
            let used = self.tally.allowed.load(Ordering::SeqCst);
            async move { (used >= n).then_some(()) }
        })
        .await
        .unwrap();
    }

    /// Makes every client wait `pace` between requests (zero: back to a closed loop).
    pub fn set_pace(&self, pace: Duration) {
        let us = u64::try_from(pace.as_micros()).unwrap_or(u64::MAX);
        self.pace_us.store(us, Ordering::Relaxed);
    }

    /// Records now as the kill instant (call right after killing) and returns it. What
    /// was seen after an earlier kill starts again from nothing.
    pub fn mark_killed(&self) -> Instant {
        let kill = Instant::now();
        *self.served_after_kill.lock().unwrap() = None;
        self.tally.denied_after_kill.store(0, Ordering::SeqCst);
        *self.killed_at.lock().unwrap() = Some(kill);
        kill
    }

    /// Waits for the first decision for a request sent after the kill: when, and
    /// through which node.
    pub async fn first_served_after_kill(&self, timeout: Duration) -> (Instant, u64) {
        eventually(
            timeout,
            "a decision for a request sent after the kill",
            || {
                let s = *self.served_after_kill.lock().unwrap();
                async move { s }
            },
        )
        .await
        .unwrap()
    }

    /// Waits until `n` requests sent after the kill were denied.
    pub async fn wait_denied_after_kill(&self, n: u64, timeout: Duration) {
        eventually(timeout, "denials after the failover", || {
            let denied = self.tally.denied_after_kill.load(Ordering::SeqCst);
            async move { (denied >= n).then_some(()) }
        })
        .await
        .unwrap();
    }

    /// Stops every client and waits for them; returns the final tally.
    pub async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.await.unwrap();
        }
        self.tally
    }
}
