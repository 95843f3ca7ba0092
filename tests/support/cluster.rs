//! A group of nodes under test, formed into one Raft cluster through the admin API.

use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::json;
use tempfile::TempDir;

use crate::api::{self, eventually, Status};
use crate::net::Net;
use crate::node::{NodeOptions, TestNode};

/// How long membership changes and elections may take before a test gives up.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(20);

/// Nodes sharing one temporary directory (`node<id>/` each). Node ids are 1, 2, 3, ...
/// Dropping the cluster kills every node; if the test is failing, it first prints the
/// tail of every node's logs and keeps the directory for inspection.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<TestNode>,
    net: Option<Net>,
    dir: Option<TempDir>,
}

impl Cluster {
    fn empty(proxied: bool) -> anyhow::Result<Cluster> {
        Ok(Cluster {
            nodes: Vec::new(),
            net: proxied.then(Net::new),
            dir: Some(tempfile::Builder::new().prefix("quorate-e2e-").tempdir()?),
        })
    }

    /// One node that bootstraps a single-node cluster; returns once it is ready.
    pub async fn single(options: NodeOptions) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::empty(false)?;
        cluster.spawn(NodeOptions {
            join: false,
            ..options
        })?;
        cluster.nodes[0].wait_ready().await?;
        Ok(cluster)
    }

    /// `n` nodes formed into one cluster: node 1 bootstraps with `options`, the others
    /// start with `--join` (same options otherwise), are added as learners through node
    /// 1's admin API and promoted to voters. With `proxied`, every node's peers reach it
    /// through a [`Net`] proxy. Returns once every node agrees on the leader.
    pub async fn formed(n: u64, options: NodeOptions, proxied: bool) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::empty(proxied)?;
        cluster.spawn(NodeOptions {
            join: false,
            ..options.clone()
        })?;
        cluster.nodes[0].wait_ready().await?;
        for _ in 1..n {
            cluster.spawn(NodeOptions {
                join: true,
                ..options.clone()
            })?;
        }
        for node in &mut cluster.nodes[1..] {
            node.wait_up().await?;
        }
        for id in 2..=n {
            cluster.add_learner(1, id).await?;
        }
        for id in 2..=n {
            cluster.promote(1, id).await?;
        }
        for node in &mut cluster.nodes[1..] {
            node.wait_ready().await?;
        }
        let all: Vec<u64> = (1..=n).collect();
        let leader = cluster.wait_leader(&all).await?;
        // Every member has applied the membership that makes them all voters.
        cluster.wait_caught_up(leader, &all).await?;
        Ok(cluster)
    }

    /// Three nodes, formed as in [`Cluster::formed`], reaching each other directly.
    pub async fn three(options: NodeOptions) -> anyhow::Result<Cluster> {
        Cluster::formed(3, options, false).await
    }

    /// Starts the next node (id = count + 1) with `options`; does not wait for it.
    pub fn spawn(&mut self, options: NodeOptions) -> anyhow::Result<u64> {
        let id = self.nodes.len() as u64 + 1;
        let root = self.dir.as_ref().context("cluster dir")?.path();
        let dir = root.join(format!("node{id}"));
        let node = match &self.net {
            Some(net) => {
                let addrs = crate::node::free_addrs(3);
                let proxy = net.proxy(id, addrs[2]);
                let ports = [addrs[0], addrs[1], addrs[2]];
                TestNode::spawn_on(id, &dir, &options, ports, Some(proxy))?
            }
            None => TestNode::spawn(id, &dir, &options, None)?,
        };
        if let (Some(net), Some(pid)) = (&self.net, node.pid()) {
            net.register(id, pid);
        }
        self.nodes.push(node);
        Ok(id)
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Node `id`, mutably.
    pub fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> &[TestNode] {
        &self.nodes
    }

    /// The ids of the nodes whose process is running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect()
    }

    /// The fault-injecting network (clusters formed with `proxied` only).
    pub fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("this cluster was formed without proxies")
    }

    /// `kill -9` node `id`.
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).kill();
    }

    /// Starts node `id` again on its data dir and ports (killing it first if running).
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.node_mut(id).restart()?;
        if let (Some(net), Some(pid)) = (&self.net, self.node(id).pid()) {
            net.register(id, pid);
        }
        Ok(())
    }

    /// Adds node `id` as a learner through node `via`'s admin API. Returns when the
    /// leader has accepted it (openraft's "caught up", which is loose; see
    /// [`Cluster::wait_caught_up`]).
    pub async fn add_learner(&self, via: u64, id: u64) -> anyhow::Result<serde_json::Value> {
        let node = self.node(id);
        api::admin(
            Method::POST,
            self.node(via).http,
            "/cluster/learners",
            json!({
                "id": id,
                "grpc": node.grpc,
                "http": node.http,
                "peer": node.advertise_peer,
            }),
        )
        .await
    }

    /// Promotes learner `id` to voter through node `via`'s admin API.
    pub async fn promote(&self, via: u64, id: u64) -> anyhow::Result<serde_json::Value> {
        api::admin(
            Method::POST,
            self.node(via).http,
            "/cluster/promote",
            json!({ "id": id }),
        )
        .await
    }

    /// Node `id`'s status.
    pub async fn status(&self, id: u64) -> anyhow::Result<Status> {
        self.node(id).status().await
    }

    /// Waits until every node in `among` names the same leader, that leader is one of
    /// them and says it leads; returns its id.
    pub async fn wait_leader(&self, among: &[u64]) -> anyhow::Result<u64> {
        self.wait_leader_within(among, FORM_TIMEOUT).await
    }

    /// [`Cluster::wait_leader`] with a deadline of its own.
    pub async fn wait_leader_within(
        &self,
        among: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        eventually(
            timeout,
            &format!("nodes {among:?} to agree on a leader among them"),
            || async {
                let mut leader = None;
                for id in among {
                    let l = self.status(*id).await.ok()?.leader?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader.filter(|l| among.contains(l))?;
                self.status(l).await.ok()?.is_leader().then_some(l)
            },
        )
        .await
    }

    /// Waits until every node in `ids` has applied the log at least up to what `leader`
    /// has applied now, and returns the statuses.
    pub async fn wait_caught_up(&self, leader: u64, ids: &[u64]) -> anyhow::Result<Vec<Status>> {
        let target = self
            .status(leader)
            .await?
            .last_applied
            .context("the leader has applied nothing")?;
        eventually(
            FORM_TIMEOUT,
            &format!("nodes {ids:?} to apply the log up to index {target}"),
            || async {
                let mut all = Vec::new();
                for id in ids {
                    let s = self.status(*id).await.ok()?;
                    if s.last_applied? < target {
                        return None;
                    }
                    all.push(s);
                }
                Some(all)
            },
        )
        .await
    }

    /// The directory holding every node's directory.
    pub fn dir(&self) -> anyhow::Result<&std::path::Path> {
        match &self.dir {
            Some(d) => Ok(d.path()),
            None => bail!("no directory"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &mut self.nodes {
                node.kill();
                eprintln!("{}", node.logs(80));
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("node directories kept in {}", dir.keep().display());
            }
        }
        // Each TestNode kills its process as it drops.
    }
}
