//! One `quorate serve` child process.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use tonic::transport::{Channel, Endpoint};

use crate::api::{self, eventually, Status};

/// How long a node may take to start and say it is ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The line `quorate serve` prints on stdout once it can decide.
pub const READY_LINE: &str = "quorate ready:";

/// Log filter for node processes (overridable with `QUORATE_E2E_LOG`).
const DEFAULT_LOG: &str = "info,openraft=warn";

/// The admin token test nodes are given (in a file, `--admin-token-file`), unless a test
/// lets the node generate its own.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// The cluster secret test nodes share (in a file, `--cluster-secret-file`).
pub const CLUSTER_SECRET: &str = "e2e-cluster-secret-0123456789abcdef";

/// How to start a node. The defaults use short Raft timings so that elections and
/// failovers take a fraction of a second.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// A policy document, written to the node's directory and passed as `--policy`.
    pub policy: Option<String>,
    /// Start with `--join` (don't bootstrap a single-node cluster).
    pub join: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_every: Option<u64>,
    /// The cluster secret, written to a file and passed as `--cluster-secret-file`
    /// (`None`: no peer authentication).
    pub cluster_secret: Option<String>,
    /// The admin token, written to a file and passed as `--admin-token-file` (`None`: the
    /// node generates one into its data directory).
    pub admin_token: Option<String>,
    /// Any further `quorate serve` flags.
    pub extra_args: Vec<String>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            policy: None,
            join: false,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_every: None,
            cluster_secret: Some(CLUSTER_SECRET.into()),
            admin_token: Some(ADMIN_TOKEN.into()),
            extra_args: Vec::new(),
        }
    }
}

/// Free loopback addresses, found by binding port 0. All are held until every one is
/// found, so they are distinct; the node binds them moments later.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr"))
        .collect()
}

/// A `quorate serve` process, its ports and its directory. Dropping it kills the process.
#[derive(Debug)]
pub struct TestNode {
    pub id: u64,
    /// The public gRPC port the node listens on (tests call it directly).
    pub grpc: SocketAddr,
    /// The HTTP port (admin API, health, metrics).
    pub http: SocketAddr,
    /// The peer port (Raft and forwarding between members).
    pub peer: SocketAddr,
    /// The peer address other members are told to use: the node's own, or its proxy's.
    pub advertise_peer: SocketAddr,
    dir: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    /// How many times the process was started; names its log files.
    runs: u32,
    client: OnceLock<RateLimiterClient<Channel>>,
}

impl TestNode {
    /// Starts node `id` in `dir` (created if needed), data in `dir/data`. Does not wait.
    /// `advertise_peer` is where peers should dial it (a proxy), if not its own port.
    pub fn spawn(
        id: u64,
        dir: &Path,
        options: &NodeOptions,
        advertise_peer: Option<SocketAddr>,
    ) -> anyhow::Result<TestNode> {
        let addrs = free_addrs(3);
        Self::spawn_on(
            id,
            dir,
            options,
            [addrs[0], addrs[1], addrs[2]],
            advertise_peer,
        )
    }

    /// Like [`TestNode::spawn`], on given ports: gRPC, HTTP and peer.
    pub fn spawn_on(
        id: u64,
        dir: &Path,
        options: &NodeOptions,
        [grpc, http, peer]: [SocketAddr; 3],
        advertise_peer: Option<SocketAddr>,
    ) -> anyhow::Result<TestNode> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--id".into(),
            id.to_string().into(),
            "--grpc".into(),
            grpc.to_string().into(),
            "--http".into(),
            http.to_string().into(),
            "--peer".into(),
            peer.to_string().into(),
            "--data-dir".into(),
            dir.join("data").into(),
            "--heartbeat-ms".into(),
            options.heartbeat_ms.to_string().into(),
            "--election-timeout-ms".into(),
            options.election_timeout_ms.to_string().into(),
        ];
        if let Some(policy) = &options.policy {
            let path = dir.join("policy.yaml");
            std::fs::write(&path, policy)?;
            args.extend(["--policy".into(), path.into()]);
        }
        if options.join {
            args.push("--join".into());
        }
        if let Some(n) = options.snapshot_every {
            args.extend(["--snapshot-every".into(), n.to_string().into()]);
        }
        if let Some(a) = advertise_peer {
            args.extend(["--advertise-peer".into(), a.to_string().into()]);
        }
        if let Some(secret) = &options.cluster_secret {
            let path = dir.join("cluster-secret");
            std::fs::write(&path, secret)?;
            args.extend(["--cluster-secret-file".into(), path.into()]);
        }
        if let Some(token) = &options.admin_token {
            let path = dir.join("admin-token");
            std::fs::write(&path, token)?;
            args.extend(["--admin-token-file".into(), path.into()]);
        }
        args.extend(options.extra_args.iter().map(OsString::from));
        let mut node = TestNode {
            id,
            grpc,
            http,
            peer,
            advertise_peer: advertise_peer.unwrap_or(peer),
            dir: dir.to_path_buf(),
            args,
            child: None,
            runs: 0,
            client: OnceLock::new(),
        };
        node.start()?;
        Ok(node)
    }

    /// Starts the process (again), same flags, same data dir, same ports.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.id);
        }
        self.runs += 1;
        let stdout = File::create(self.stdout_path())?;
        let stderr = File::create(self.stderr_path())?;
        let log = std::env::var("QUORATE_E2E_LOG").unwrap_or_else(|_| DEFAULT_LOG.into());
        let child = Command::new(crate::bin::quorate())
            .args(&self.args)
            .env("RUST_LOG", log)
            .env_remove("QUORATE_ADMIN_TOKEN")
            .env_remove("QUORATE_ADMIN_TOKEN_FILE")
            .env_remove("QUORATE_CLUSTER_SECRET_FILE")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9` and reap. A no-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9`, then start again on the same data dir and ports.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.join(format!("stdout.{}.log", self.runs))
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.join(format!("stderr.{}.log", self.runs))
    }

    /// What the current run wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Fails if the process has exited, with its exit status.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("node {} is not running", self.id);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            // Its stderr says why (a port taken between picking and binding, a bad flag):
            // the cluster is dropped before any failure report could show its logs.
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "node {} exited early: {status}; its stderr ends:\n{}",
                self.id,
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// Waits until this run printed its ready line (it knows a leader and can decide).
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            let out = std::fs::read_to_string(self.stdout_path()).unwrap_or_default();
            if out.contains(READY_LINE) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not print {READY_LINE:?} within {START_TIMEOUT:?}",
                    self.id
                );
            }
            tokio::time::sleep(api::POLL).await;
        }
    }

    /// Waits until the node's HTTP port answers (for `--join` nodes, which are not ready
    /// before they are added to a cluster).
    pub async fn wait_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("http://{}/healthz", self.http);
        loop {
            self.check_alive()?;
            if let Ok(r) = api::http().get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not answer {url} within {START_TIMEOUT:?}",
                    self.id
                );
            }
            tokio::time::sleep(api::POLL).await;
        }
    }

    /// Waits for the process to exit on its own (e.g. refused startup).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let id = self.id;
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("node {id} is not running"))?;
        let status = eventually(timeout, "the node to exit", || {
            let r = child.try_wait().ok().flatten();
            async move { r }
        })
        .await?;
        self.child = None;
        Ok(status)
    }

    /// `GET /admin/v1/cluster/status` on this node.
    pub async fn status(&self) -> anyhow::Result<Status> {
        api::status(self.http).await
    }

    /// A gRPC client for this node's real decision port (not through any proxy).
    /// The channel reconnects by itself, across restarts too.
    pub fn client(&self) -> RateLimiterClient<Channel> {
        self.client.get_or_init(|| api::client(self.grpc)).clone()
    }

    /// One `Check` of one hit through this node.
    pub async fn check(
        &self,
        limit: &str,
        key: &str,
        cost: Option<u64>,
    ) -> Result<quorate_proto::v1::Decision, tonic::Status> {
        api::check(&mut self.client(), limit, key, cost).await
    }

    /// The file holding the admin token the CLI should use for this node: the one the
    /// test gave it, or the one it generated in its data directory.
    pub fn admin_token_file(&self) -> PathBuf {
        let given = self.dir.join("admin-token");
        if given.exists() {
            given
        } else {
            self.dir.join("data").join("admin-token")
        }
    }

    /// The base URL of the admin API, as the CLI's `--node` takes it.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The last lines of every log file this node wrote, for failure reports.
    pub fn logs(&self, tail: usize) -> String {
        let mut out = String::new();
        for run in 1..=self.runs {
            for stream in ["stdout", "stderr"] {
                let path = self.dir.join(format!("{stream}.{run}.log"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(tail);
                out.push_str(&format!(
                    "----- node {} run {run} {stream} ({} lines, last {}) -----\n",
                    self.id,
                    lines.len(),
                    lines.len() - from
                ));
                for line in &lines[from..] {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The node's directory (data, policy file, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC endpoint with test-friendly timeouts; the channel connects lazily.
pub(crate) fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid URI")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
}
