//! `quorate-bench suite`: every reference setup, started and measured in one run.
//!
//! In one process tree on this machine: (a) the do-nothing tonic server, (b) a single-node
//! quorate (durable: Raft log fsynced on a temporary data directory), (c) a 3-node quorate
//! cluster on loopback. The same load runs against each in turn, round after round:
//!
//! | case | server | limit |
//! |---|---|---|
//! | `null` | do-nothing server | — |
//! | `single/strict`, `single/fast` | single node | strict, fast |
//! | `3-node/strict`, `3-node/fast` | cluster, via the leader | strict, fast |
//! | `3-node/strict via follower` | cluster, via a follower (forwarded) | strict |
//! | `single/exact`, `3-node/exact` | single node, cluster via the leader | exact (a commit per hit batch) |
//!
//! With `--extra-target NAME=IP:PORT` (e.g. a Limitador started by a script), the suite
//! adds an Envoy RLS block to the same table, since an outside rate limiter speaks RLS and
//! not `quorate.v1`: a do-nothing RLS server, the single node and the cluster (strict) over
//! RLS, and every extra target — the same load (one descriptor `k1 = <key>` in domain
//! `bench1`, keys drawn as for the other rows), their ratios against the do-nothing RLS
//! server. An extra target must be configured to count `descriptors[0].k1` in namespace
//! `bench1` with a limit no run exhausts (`bench/envoy/limitador-limits.yaml`).
//!
//! Client and servers share the machine's cores, as in the brief's reference table, so
//! every ratio is "on the same hardware, in the same minute". Around each measured window
//! the suite samples the CPU time of the servers and of itself, and the leader's
//! `/metrics` (hits per strict batch, log entries written, fsyncs when exposed), which is
//! what explains a ratio. All children are killed when the suite ends, fails or is
//! interrupted ([`Proc`] drop guards).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

use crate::keys::{Distribution, KeySpace};
use crate::load::{self, LoadConfig, Report};
use crate::procs::{self, Proc, TempDir};
use crate::report::{self, grouped, problems_line};
use crate::{rls, rpc};

/// The strict limit of the benchmark policy.
pub const STRICT_LIMIT: &str = "bench_strict";
/// The fast limit of the benchmark policy.
pub const FAST_LIMIT: &str = "bench_fast";
/// The exact (a commit per hit batch) limit of the benchmark policy.
pub const EXACT_LIMIT: &str = "bench_exact";

/// The RLS domain of the suite's RLS rows (descriptor `k1 = <key>`, strict).
pub const RLS_DOMAIN: &str = "bench1";

/// The benchmark policy: limits so large that every hit is allowed, so the numbers
/// measure the decision path and not denials.
const POLICY: &str = "\
# quorate-bench suite policy: quotas no benchmark run can exhaust (1e12 per hour).
domains:
  - domain: bench1
    descriptors:
      - key: k1
        rate_limit: {name: bench_rls, unit: hour, requests_per_unit: 1000000000000}
limits:
  - name: bench_strict
    limit: 1000000000000
    window: 1h
    consistency: strict
  - name: bench_fast
    limit: 1000000000000
    window: 1h
    consistency: fast
  - name: bench_exact
    limit: 1000000000000
    window: 1h
    consistency: exact
";

/// How long a server may take to say it is ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The quorate nodes a mode starts: which binary, with which extra flags, where (the
/// flags every mode that starts nodes shares).
#[derive(Debug, Clone, clap::Args)]
pub struct Servers {
    /// The quorate binary to start (build with `cargo build --release -p quorate-server`).
    #[arg(long, default_value = "target/release/quorate")]
    pub quorate: PathBuf,
    /// Extra flag for every `quorate serve` (repeatable), e.g. --server-arg=--batch-inflight=8.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Parent of the temporary data directories (must be a real disk for fsync to count).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub work_dir: PathBuf,
    /// Keep data directories and server logs.
    #[arg(long)]
    pub keep: bool,
}

impl Servers {
    /// Fails with a hint when the binary is missing.
    pub fn ensure_binary(&self) -> anyhow::Result<()> {
        ensure!(
            self.quorate.is_file(),
            "no quorate binary at {} (build it: cargo build --release -p quorate-server)",
            self.quorate.display()
        );
        Ok(())
    }
}

/// What the suite runs.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub servers: Servers,
    /// This binary, started again as `null-server`.
    pub myself: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    pub per_channel: usize,
    pub keys: u64,
    pub distribution: Distribution,
    pub zipf_s: f64,
    pub cost: u64,
    pub hits_per_request: usize,
    pub timeout: Duration,
    /// Times every case is measured (results are medians).
    pub rounds: usize,
    /// Also measure the cluster through a follower.
    pub follower: bool,
    /// Write the markdown report here too.
    pub out: Option<PathBuf>,
    /// Free text added to the report (e.g. the commit measured).
    pub notes: Vec<String>,
    /// Count the servers' fsyncs with `perf stat` during each measured window.
    pub perf: bool,
    /// Outside RLS servers measured next to quorate (adds the RLS block of rows).
    pub extra_targets: Vec<ExtraTarget>,
}

/// An RLS server the suite did not start (`--extra-target NAME=IP:PORT[@PID]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraTarget {
    /// Its row's name in the table.
    pub name: String,
    /// Its Envoy RLS gRPC address.
    pub addr: SocketAddr,
    /// Its process, when given: its CPU time is then sampled like the suite's servers'.
    pub pid: Option<u32>,
}

impl std::str::FromStr for ExtraTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<ExtraTarget, String> {
        let usage = "expected NAME=IP:PORT or NAME=IP:PORT@PID";
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: {usage}"))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.contains('|') {
            return Err(format!(
                "{text:?}: the name must be 1 to 64 characters, no '|'"
            ));
        }
        let (addr, pid) = match rest.split_once('@') {
            Some((addr, pid)) => {
                let pid = pid
                    .parse::<u32>()
                    .map_err(|_| format!("{text:?}: {pid:?} is not a process id"))?;
                (addr, Some(pid))
            }
            None => (rest, None),
        };
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|e| format!("{text:?}: {addr:?} is not IP:PORT ({e}); {usage}"))?;
        Ok(ExtraTarget {
            name: name.to_string(),
            addr,
            pid,
        })
    }
}

/// One quorate node the suite started.
#[derive(Debug)]
pub(crate) struct QNode {
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) proc: Proc,
}

/// Which case, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseId {
    Null,
    SingleStrict,
    SingleFast,
    ClusterStrict,
    ClusterFast,
    ClusterStrictFollower,
    SingleExact,
    ClusterExact,
    /// The RLS block (only with extra targets): do-nothing RLS server, quorate over RLS,
    /// then `cfg.extra_targets[i]`.
    NullRls,
    SingleStrictRls,
    ClusterStrictRls,
    Extra(usize),
}

impl CaseId {
    fn label(self, cfg: &SuiteConfig) -> String {
        match self {
            CaseId::Null => "do-nothing tonic server".into(),
            CaseId::SingleStrict => "quorate, 1 node, strict".into(),
            CaseId::SingleFast => "quorate, 1 node, fast".into(),
            CaseId::ClusterStrict => "quorate, 3 nodes, strict (via leader)".into(),
            CaseId::ClusterFast => "quorate, 3 nodes, fast (via leader)".into(),
            CaseId::ClusterStrictFollower => "quorate, 3 nodes, strict (via follower)".into(),
            CaseId::SingleExact => "quorate, 1 node, exact".into(),
            CaseId::ClusterExact => "quorate, 3 nodes, exact (via leader)".into(),
            CaseId::NullRls => "RLS: do-nothing tonic RLS server".into(),
            CaseId::SingleStrictRls => "RLS: quorate, 1 node, strict".into(),
            CaseId::ClusterStrictRls => "RLS: quorate, 3 nodes, strict (via leader)".into(),
            CaseId::Extra(i) => match cfg.extra_targets.get(i) {
                Some(t) => format!("RLS: {} (extra target {})", t.name, t.addr),
                None => format!("RLS: extra target #{i}"),
            },
        }
    }

    /// Over RLS (the block compared with the do-nothing RLS server).
    fn is_rls(self) -> bool {
        matches!(
            self,
            CaseId::NullRls | CaseId::SingleStrictRls | CaseId::ClusterStrictRls | CaseId::Extra(_)
        )
    }

    /// The do-nothing server this case's "× null" compares with.
    fn null_reference(self) -> CaseId {
        if self.is_rls() {
            CaseId::NullRls
        } else {
            CaseId::Null
        }
    }

    /// The single-node case this case's "× 1 node" compares with (none for the nulls).
    fn single_reference(self) -> Option<CaseId> {
        match self {
            CaseId::Null | CaseId::NullRls => None,
            c if c.is_rls() => Some(CaseId::SingleStrictRls),
            _ => Some(CaseId::SingleStrict),
        }
    }

    fn limit(self) -> &'static str {
        match self {
            CaseId::SingleFast | CaseId::ClusterFast => FAST_LIMIT,
            CaseId::SingleExact | CaseId::ClusterExact => EXACT_LIMIT,
            _ => STRICT_LIMIT,
        }
    }
}

/// One measured run of one case.
#[derive(Debug)]
struct Sample {
    report: Report,
    /// CPU time of the case's server process(es) over the measured window.
    server_cpu: Duration,
    /// CPU time of this (client) process over the window.
    client_cpu: Duration,
    /// Leader metrics deltas over the window.
    strict_batches: Option<(f64, f64)>,
    log_entries: Option<f64>,
    fsyncs: Option<f64>,
}

/// Everything sampled at one instant.
#[derive(Debug, Default)]
struct Probe {
    server_cpu: Duration,
    client_cpu: Duration,
    batch_sum: Option<f64>,
    batch_count: Option<f64>,
    last_log_index: Option<f64>,
    fsyncs: Option<f64>,
    /// Counting fsyncs over the window that starts here (`--perf`).
    counter: Option<procs::SyscallCounter>,
}

/// The name under which the server may export its fsync count (used when present).
const FSYNC_METRIC: &str = "quorate_raft_log_fsyncs_total";

async fn probe(
    servers: &[u32],
    leader_http: Option<SocketAddr>,
    count_fsyncs: Option<(&Path, Duration)>,
) -> Probe {
    let mut p = Probe {
        client_cpu: procs::cpu_time("/proc/self/stat").unwrap_or_default(),
        ..Probe::default()
    };
    if let Some((out, window)) = count_fsyncs {
        match procs::SyscallCounter::start(servers, out, window) {
            Ok(c) => p.counter = Some(c),
            Err(e) => eprintln!("warning: not counting fsyncs: {e:#}"),
        }
    }
    for pid in servers {
        p.server_cpu += procs::cpu_time(&format!("/proc/{pid}/stat")).unwrap_or_default();
    }
    if let Some(http) = leader_http {
        if let Ok(text) = procs::http_get(http, "/metrics").await {
            p.batch_sum = procs::metric(&text, "quorate_batch_hits_sum");
            p.batch_count = procs::metric(&text, "quorate_batch_hits_count");
            p.last_log_index = procs::metric(&text, "quorate_raft_last_log_index");
            p.fsyncs = procs::metric(&text, FSYNC_METRIC);
        }
    }
    p
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

/// Runs the suite; returns the markdown report.
pub async fn run(cfg: SuiteConfig) -> anyhow::Result<String> {
    ensure!(cfg.rounds > 0, "--rounds must be at least 1");
    cfg.servers.ensure_binary()?;
    let started_at = SystemTime::now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tmp = TempDir::new(&cfg.servers.work_dir, cfg.servers.keep)?;
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).context("cannot write the benchmark policy")?;

    // (a) the ceiling.
    let (null_addr, null) = start_null_server(&cfg, tmp.path(), "null-server").await?;

    // (b) one durable node.
    let single = start_node(&cfg.servers, tmp.path(), "single", 1, Some(&policy)).await?;
    let mut single = single;
    single
        .proc
        .wait_line("quorate ready:", READY_TIMEOUT)
        .await?;

    // (c) three nodes.
    let cluster = start_cluster(&cfg.servers, tmp.path(), &policy).await?;

    // (d) with extra targets: the RLS ceiling too.
    let null_rls = if cfg.extra_targets.is_empty() {
        None
    } else {
        Some(start_null_server(&cfg, tmp.path(), "null-rls").await?)
    };

    let mut cases = vec![
        CaseId::Null,
        CaseId::SingleStrict,
        CaseId::SingleFast,
        CaseId::ClusterStrict,
        CaseId::ClusterFast,
        CaseId::SingleExact,
        CaseId::ClusterExact,
    ];
    if cfg.follower {
        cases.push(CaseId::ClusterStrictFollower);
    }
    if null_rls.is_some() {
        cases.extend([
            CaseId::NullRls,
            CaseId::SingleStrictRls,
            CaseId::ClusterStrictRls,
        ]);
        cases.extend((0..cfg.extra_targets.len()).map(CaseId::Extra));
    }
    let keys = KeySpace::new(cfg.distribution, cfg.keys, cfg.zipf_s)?;
    let cluster_pids: Vec<u32> = cluster.iter().map(|n| n.proc.pid()).collect();
    let mut samples: Vec<(CaseId, Vec<Sample>)> = cases.iter().map(|&c| (c, vec![])).collect();

    for round in 1..=cfg.rounds {
        for (case, runs) in &mut samples {
            let (target, pids, leader_http) = match case {
                CaseId::Null => (null_addr, vec![null.pid()], None),
                CaseId::SingleStrict
                | CaseId::SingleFast
                | CaseId::SingleExact
                | CaseId::SingleStrictRls => {
                    (single.grpc, vec![single.proc.pid()], Some(single.http))
                }
                CaseId::ClusterStrict
                | CaseId::ClusterFast
                | CaseId::ClusterExact
                | CaseId::ClusterStrictRls => {
                    (cluster[0].grpc, cluster_pids.clone(), Some(cluster[0].http))
                }
                CaseId::ClusterStrictFollower => {
                    (cluster[1].grpc, cluster_pids.clone(), Some(cluster[0].http))
                }
                CaseId::NullRls => match &null_rls {
                    Some((addr, proc)) => (*addr, vec![proc.pid()], None),
                    None => bail!("no do-nothing RLS server was started"),
                },
                CaseId::Extra(i) => match cfg.extra_targets.get(*i) {
                    Some(t) => (t.addr, t.pid.into_iter().collect(), None),
                    None => bail!("no extra target #{i}"),
                },
            };
            eprintln!("\n== round {round}/{}: {} ==", cfg.rounds, case.label(&cfg));
            let perf_out = tmp.path().join("perf-stat.txt");
            let count_fsyncs =
                (cfg.perf && leader_http.is_some()).then_some((perf_out.as_path(), cfg.duration));
            let observe = || probe(&pids, leader_http, count_fsyncs);
            let (report, mut before) = if case.is_rls() {
                let spec = rpc::RunSpec {
                    targets: vec![format!("http://{target}")],
                    concurrency: cfg.concurrency,
                    per_channel: cfg.per_channel,
                    duration: cfg.duration,
                    warmup: cfg.warmup,
                    timeout: cfg.timeout,
                    seed: round as u64,
                    label: format!("rls {RLS_DOMAIN} ×1"),
                    items_per_request: 1,
                };
                // Outside servers may answer with the overall code only (Limitador does).
                let statuses = !matches!(case, CaseId::Extra(_));
                let make = |channel| rls::RlsCaller {
                    client: RateLimitServiceClient::new(channel),
                    domain: RLS_DOMAIN.into(),
                    descriptors: 1,
                    prefix: "k".into(),
                    keys: keys.clone(),
                    statuses,
                };
                rpc::run_observed(&spec, make, observe).await?
            } else {
                let load = LoadConfig {
                    targets: vec![format!("http://{target}")],
                    concurrency: cfg.concurrency,
                    per_channel: cfg.per_channel,
                    duration: cfg.duration,
                    warmup: cfg.warmup,
                    keys: keys.clone(),
                    key_prefix: "k".into(),
                    limit: case.limit().into(),
                    cost: cfg.cost,
                    hits_per_request: cfg.hits_per_request,
                    timeout: cfg.timeout,
                    seed: round as u64,
                };
                load::run_observed(&load, observe).await?
            };
            let after = probe(&pids, leader_http, None).await;
            let mut fsyncs = delta(before.fsyncs, after.fsyncs);
            if let Some(counter) = before.counter.take() {
                match counter.finish().await {
                    Ok(n) => fsyncs = Some(n as f64),
                    Err(e) => eprintln!("warning: fsync count lost: {e:#}"),
                }
            }
            eprint!("{}", crate::report::text(&report));
            let sample = Sample {
                server_cpu: after.server_cpu.saturating_sub(before.server_cpu),
                client_cpu: after.client_cpu.saturating_sub(before.client_cpu),
                strict_batches: delta(before.batch_sum, after.batch_sum)
                    .zip(delta(before.batch_count, after.batch_count)),
                log_entries: delta(before.last_log_index, after.last_log_index),
                fsyncs,
                report,
            };
            eprintln!("{}", sample_notes(&sample));
            runs.push(sample);
        }
    }

    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let markdown = render(&cfg, started_at, &load_before, &load_after, &samples);
    if let Some(out) = &cfg.out {
        std::fs::write(out, &markdown)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    drop(null_rls);
    drop(cluster);
    drop(single);
    drop(null);
    Ok(markdown)
}

fn sample_notes(s: &Sample) -> String {
    let ok = s.report.ok.max(1) as f64;
    let mut parts = vec![format!(
        "cpu µs/req: server {:.1}, client {:.1}",
        s.server_cpu.as_secs_f64() * 1e6 / ok,
        s.client_cpu.as_secs_f64() * 1e6 / ok
    )];
    if let Some((sum, count)) = s.strict_batches.filter(|(_, c)| *c > 0.0) {
        parts.push(format!(
            "strict batches {count:.0}, {:.1} hits each",
            sum / count
        ));
    }
    if let Some(e) = s.log_entries.filter(|e| *e > 0.0) {
        parts.push(format!("log entries {e:.0}"));
    }
    if let Some(f) = s.fsyncs {
        parts.push(format!("fsyncs {f:.0}"));
    }
    parts.join(" · ")
}

/// Starts `quorate-bench MODE` (`null-server` or `null-rls`, the ceilings) on a fresh
/// loopback port and waits until it is ready.
async fn start_null_server(
    cfg: &SuiteConfig,
    root: &Path,
    mode: &str,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let addr = procs::free_addr()?;
    let mut proc = Proc::spawn(
        mode,
        &cfg.myself,
        &[mode.into(), "--grpc".into(), addr.to_string()],
        &root.join(format!("{mode}.log")),
    )?;
    proc.wait_line(&format!("quorate-bench {mode} ready"), READY_TIMEOUT)
        .await?;
    Ok((addr, proc))
}

/// Starts one `quorate serve` on fresh loopback ports.
pub(crate) async fn start_node(
    cfg: &Servers,
    root: &Path,
    name: &str,
    id: u64,
    policy: Option<&Path>,
) -> anyhow::Result<QNode> {
    let (grpc, http, peer) = (
        procs::free_addr()?,
        procs::free_addr()?,
        procs::free_addr()?,
    );
    let mut args = procs::serve_args(grpc, http, peer, &root.join(name));
    args.extend(["--id".into(), id.to_string()]);
    match policy {
        Some(p) => args.extend(["--policy".into(), p.display().to_string()]),
        None => args.push("--join".into()),
    }
    args.extend(cfg.server_args.iter().cloned());
    let proc = Proc::spawn(name, &cfg.quorate, &args, &root.join(format!("{name}.log")))?;
    Ok(QNode {
        grpc,
        http,
        peer,
        proc,
    })
}

/// Node 1 bootstraps with the policy; nodes 2 and 3 join as learners and are promoted.
pub(crate) async fn start_cluster(
    cfg: &Servers,
    root: &Path,
    policy: &Path,
) -> anyhow::Result<Vec<QNode>> {
    let mut n1 = start_node(cfg, root, "node1", 1, Some(policy)).await?;
    n1.proc.wait_line("quorate ready:", READY_TIMEOUT).await?;
    let mut nodes = vec![n1];
    for id in [2_u64, 3] {
        let node = start_node(cfg, root, &format!("node{id}"), id, None).await?;
        procs::wait_tcp(node.grpc, READY_TIMEOUT).await?;
        procs::wait_tcp(node.http, READY_TIMEOUT).await?;
        let leader = format!("http://{}", nodes[0].http);
        // Node 1 generated its admin token into its data directory at startup.
        let token_file = root.join("node1").join("admin-token").display().to_string();
        let id_s = id.to_string();
        quorate_cli(
            cfg,
            &[
                "cluster",
                "add-learner",
                "--id",
                &id_s,
                "--grpc",
                &node.grpc.to_string(),
                "--http",
                &node.http.to_string(),
                "--peer",
                &node.peer.to_string(),
                "--node",
                &leader,
                "--admin-token-file",
                &token_file,
            ],
        )
        .await?;
        // The leader may not list the new learner in its replication metrics for a few
        // tens of milliseconds after `add-learner` returns (promote then answers 409).
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let promote = [
                "cluster",
                "promote",
                "--id",
                &id_s,
                "--node",
                &leader,
                "--admin-token-file",
                &token_file,
            ];
            match quorate_cli(cfg, &promote).await {
                Ok(()) => break,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        nodes.push(node);
    }
    for node in nodes.iter_mut().skip(1) {
        node.proc.wait_line("quorate ready:", READY_TIMEOUT).await?;
    }
    // Node 1 must still lead with three voters, or "via leader" would be a lie.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let text = procs::http_get(nodes[0].http, "/metrics").await?;
        let leader = procs::metric(&text, "quorate_raft_leader_id");
        let voters = procs::metric(&text, "quorate_raft_voters");
        if leader == Some(1.0) && voters == Some(3.0) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the cluster did not settle: leader {leader:?}, voters {voters:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "3-node cluster up: leader node 1 at {}, followers at {} and {}",
        nodes[0].grpc, nodes[1].grpc, nodes[2].grpc
    );
    Ok(nodes)
}

/// Runs one operator command of the quorate binary.
async fn quorate_cli(cfg: &Servers, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(&cfg.quorate)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run quorate {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "quorate {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// What `quorate-bench nodes` starts: one node or a 3-node cluster with `policy`, the
/// same way the suite does; prints one `nodes ready:` line with the addresses (leader
/// first), then holds them up until Ctrl-C or SIGTERM, and stops them all.
#[derive(Debug, Clone, clap::Args)]
pub struct NodesConfig {
    #[command(flatten)]
    pub servers: Servers,
    /// The policy file every node starts with.
    #[arg(long)]
    pub policy: PathBuf,
    /// 1 or 3.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

pub async fn hold_nodes(n: NodesConfig) -> anyhow::Result<()> {
    ensure!(
        n.nodes == 1 || n.nodes == 3,
        "--nodes must be 1 or 3 (got {})",
        n.nodes
    );
    n.servers.ensure_binary()?;
    let tmp = TempDir::new(&n.servers.work_dir, n.servers.keep)?;
    let policy = std::fs::canonicalize(&n.policy)
        .with_context(|| format!("no policy at {}", n.policy.display()))?;
    let nodes = start_nodes(&n.servers, tmp.path(), &policy, n.nodes).await?;
    let grpc: Vec<String> = nodes.iter().map(|q| q.grpc.to_string()).collect();
    let http: Vec<String> = nodes.iter().map(|q| q.http.to_string()).collect();
    let pids: Vec<String> = nodes.iter().map(|q| q.proc.pid().to_string()).collect();
    println!(
        "nodes ready: grpc={} http={} pids={}",
        grpc.join(","),
        http.join(","),
        pids.join(",")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(nodes);
    Ok(())
}

/// One ready node (`count` = 1) or a ready 3-node cluster led by node 1, under `root`.
pub(crate) async fn start_nodes(
    cfg: &Servers,
    root: &Path,
    policy: &Path,
    count: usize,
) -> anyhow::Result<Vec<QNode>> {
    match count {
        1 => {
            let mut single = start_node(cfg, root, "single", 1, Some(policy)).await?;
            single
                .proc
                .wait_line("quorate ready:", READY_TIMEOUT)
                .await?;
            Ok(vec![single])
        }
        3 => start_cluster(cfg, root, policy).await,
        n => bail!("1 or 3 nodes, not {n}"),
    }
}

// === the report ===

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Aggregates of one case over its rounds.
#[derive(Debug, Clone, Copy)]
struct Summary {
    throughput: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    problems: u64,
    server_cpu_us: f64,
    client_cpu_us: f64,
    hits_per_batch: Option<f64>,
    hits_per_entry: Option<f64>,
    fsyncs_per_1k: Option<f64>,
}

fn summarize(runs: &[Sample]) -> Summary {
    let q = |q: f64| {
        median(
            runs.iter()
                .map(|s| s.report.quantile_us(q) as f64)
                .collect(),
        )
    };
    let ok: u64 = runs.iter().map(|s| s.report.ok).sum();
    let hits: u64 = runs
        .iter()
        .map(|s| s.report.allowed_hits + s.report.denied_hits)
        .sum();
    let per_req = |d: Duration| d.as_secs_f64() * 1e6 / ok.max(1) as f64;
    let (bsum, bcount) = runs
        .iter()
        .filter_map(|s| s.strict_batches)
        .fold((0.0, 0.0), |(a, b), (s, c)| (a + s, b + c));
    let entries: f64 = runs.iter().filter_map(|s| s.log_entries).sum();
    let fsyncs: Option<f64> = runs.iter().map(|s| s.fsyncs).sum();
    Summary {
        throughput: median(runs.iter().map(|s| s.report.throughput()).collect()),
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
        problems: runs.iter().map(|s| s.report.problems()).sum(),
        server_cpu_us: per_req(runs.iter().map(|s| s.server_cpu).sum()),
        client_cpu_us: per_req(runs.iter().map(|s| s.client_cpu).sum()),
        hits_per_batch: (bcount > 0.0).then(|| bsum / bcount),
        hits_per_entry: (entries > 0.0).then(|| hits as f64 / entries),
        fsyncs_per_1k: fsyncs.map(|f| f * 1000.0 / hits.max(1) as f64),
    }
}

/// Median over rounds of `case / reference`, each round compared with itself.
fn ratio(samples: &[(CaseId, Vec<Sample>)], case: CaseId, reference: CaseId) -> Option<f64> {
    let find = |id| samples.iter().find(|(c, _)| *c == id).map(|(_, r)| r);
    let (a, b) = (find(case)?, find(reference)?);
    Some(median(
        a.iter()
            .zip(b)
            .map(|(x, y)| x.report.throughput() / y.report.throughput())
            .collect(),
    ))
}

fn render(
    cfg: &SuiteConfig,
    started_at: SystemTime,
    load_before: &str,
    load_after: &str,
    samples: &[(CaseId, Vec<Sample>)],
) -> String {
    let mut md = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    md.push_str(&format!(
        "Run {} on a {cores}-core machine ({cpu}, Linux {}); client and every server share \
         those {cores} cores. Load average before: {}; after: {}.\n\n",
        utc_timestamp(started_at),
        kernel.trim(),
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    ));
    md.push_str(&format!(
        "Load: {} in flight over {} HTTP/2 connection(s), {} s measured after {} s warm-up, \
         {} round(s) (medians shown), {} key(s) `{}`, cost {}, {} hit(s) per request. \
         Every answer verified (one decision per hit, limit echoed).\n\n",
        cfg.concurrency,
        cfg.concurrency.div_ceil(cfg.per_channel),
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.rounds,
        grouped(cfg.keys),
        cfg.distribution.name(),
        cfg.cost,
        cfg.hits_per_request,
    ));
    if !cfg.extra_targets.is_empty() {
        md.push_str(&format!(
            "Rows marked RLS: the same concurrency and keys over Envoy RLS `ShouldRateLimit` \
             (one descriptor `k1 = <key>` in domain `{RLS_DOMAIN}`, strict on quorate; \
             extra targets answer with their own limits file and only their overall code is \
             checked); their × null is against the do-nothing RLS server, × 1 node against \
             quorate's single node over RLS.\n\n"
        ));
    }
    md.push_str(&format!("Command: `{}`\n\n", report::command_line()));
    for note in &cfg.notes {
        md.push_str(&format!("{note}\n\n"));
    }
    md.push_str(
        "| setup | req/s | × null | × 1 node | p50 µs | p99 µs | p999 µs | errors | \
         hits/strict batch | hits/log entry | fsyncs/1k hits | server CPU µs/req | client CPU µs/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"));
    for (case, runs) in samples {
        let s = summarize(runs);
        let vs_null = ratio(samples, *case, case.null_reference());
        let vs_single = case
            .single_reference()
            .and_then(|reference| ratio(samples, *case, reference));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |\n",
            case.label(cfg),
            grouped(s.throughput.round() as u64),
            opt(vs_null, 2),
            opt(vs_single, 2),
            grouped(s.p50 as u64),
            grouped(s.p99 as u64),
            grouped(s.p999 as u64),
            if s.problems == 0 {
                "0".to_string()
            } else {
                format!("**{}**", grouped(s.problems))
            },
            opt(s.hits_per_batch, 1),
            opt(s.hits_per_entry, 1),
            opt(s.fsyncs_per_1k, 1),
            s.server_cpu_us,
            s.client_cpu_us,
        ));
    }
    md.push('\n');

    // Goals of issue 3.
    let find = |id| {
        samples
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, r)| summarize(r))
    };
    let verdict = |ok: bool| if ok { "**met**" } else { "**missed**" };
    md.push_str("Goals (issue 3):\n\n");
    if let Some(r) = ratio(samples, CaseId::SingleStrict, CaseId::Null) {
        md.push_str(&format!(
            "- 1 node (durable, Raft, strict) ≥ 0.85× the do-nothing server: {r:.2}× — {}\n",
            verdict(r >= 0.85)
        ));
    }
    if let (Some(r), Some(s)) = (
        ratio(samples, CaseId::ClusterStrict, CaseId::SingleStrict),
        find(CaseId::ClusterStrict),
    ) {
        md.push_str(&format!(
            "- 3 nodes strict ≥ 0.5× 1 node, p99 ≤ 5 ms at c={}: {r:.2}×, p99 {:.2} ms — {}\n",
            cfg.concurrency,
            s.p99 / 1000.0,
            verdict(r >= 0.5 && s.p99 <= 5000.0)
        ));
    }
    if let Some(r) = ratio(samples, CaseId::ClusterFast, CaseId::SingleStrict) {
        md.push_str(&format!(
            "- 3 nodes fast ≥ 0.85× 1 node: {r:.2}× the 1-node strict figure — {}",
            verdict(r >= 0.85)
        ));
        match ratio(samples, CaseId::ClusterFast, CaseId::SingleFast) {
            Some(f) => md.push_str(&format!(
                "; like for like, {f:.2}× 1 node fast — {}\n",
                verdict(f >= 0.85)
            )),
            None => md.push('\n'),
        }
    }
    // Goals of issue 12 (strict from durable reservations).
    md.push_str("\nGoals (issue 12, strict = reservations):\n\n");
    if let (Some(r), Some(n)) = (
        ratio(samples, CaseId::ClusterStrict, CaseId::ClusterFast),
        ratio(samples, CaseId::ClusterStrict, CaseId::Null),
    ) {
        md.push_str(&format!(
            "- 3 nodes strict ≥ 0.9× 3 nodes fast and ≥ 0.65× the do-nothing server: {r:.2}×, {n:.2}× — {}\n",
            verdict(r >= 0.9 && n >= 0.65)
        ));
    }
    if let Some(r) = ratio(samples, CaseId::SingleStrict, CaseId::Null) {
        md.push_str(&format!(
            "- 1 node strict ≥ 0.75× the do-nothing server: {r:.2}× — {}\n",
            verdict(r >= 0.75)
        ));
    }
    if let (Some(c), Some(n)) = (find(CaseId::ClusterStrict), find(CaseId::Null)) {
        md.push_str(&format!(
            "- 3 nodes strict p99 ≤ 2× the do-nothing server's: {:.2} ms vs {:.2} ms — {}\n",
            c.p99 / 1000.0,
            n.p99 / 1000.0,
            verdict(c.p99 <= 2.0 * n.p99)
        ));
    }
    let failures: Vec<String> = samples
        .iter()
        .flat_map(|(case, runs)| {
            runs.iter()
                .filter(|s| s.report.problems() > 0)
                .map(move |s| format!("- {}: {}\n", case.label(cfg), problems_line(&s.report)))
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\n**Failed calls (not counted in req/s):**\n\n");
        for f in failures {
            md.push_str(&f);
        }
    }
    md
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate (civil-from-days, proleptic Gregorian).
pub(crate) fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(utc_timestamp(t), "2023-11-14 22:13 UTC");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_policy_names_both_limits() {
        assert!(POLICY.contains(STRICT_LIMIT) && POLICY.contains(FAST_LIMIT));
        assert!(POLICY.contains(&format!("domain: {RLS_DOMAIN}")));
    }

    #[test]
    fn parses_extra_targets() {
        let t: ExtraTarget = "limitador=127.0.0.1:8081".parse().unwrap();
        assert_eq!(t.name, "limitador");
        assert_eq!(t.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(t.pid, None);
        let t: ExtraTarget = "lim redis=[::1]:9000@4242".parse().unwrap();
        assert_eq!(t.name, "lim redis");
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(t.pid, Some(4242));
        for bad in [
            "127.0.0.1:8081",
            "=127.0.0.1:8081",
            "x=localhost:8081",
            "x=127.0.0.1",
            "x=127.0.0.1:8081@",
            "x=127.0.0.1:8081@-1",
            "a|b=127.0.0.1:1",
        ] {
            assert!(bad.parse::<ExtraTarget>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn rls_rows_compare_with_the_rls_ceiling() {
        assert_eq!(CaseId::Extra(0).null_reference(), CaseId::NullRls);
        assert_eq!(CaseId::SingleStrict.null_reference(), CaseId::Null);
        assert_eq!(
            CaseId::ClusterStrictRls.single_reference(),
            Some(CaseId::SingleStrictRls)
        );
        assert_eq!(CaseId::NullRls.single_reference(), None);
        assert_eq!(
            CaseId::ClusterFast.single_reference(),
            Some(CaseId::SingleStrict)
        );
    }
}
