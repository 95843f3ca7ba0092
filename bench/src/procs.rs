//! Child processes and the small bits of OS plumbing the suite needs.
//!
//! Every server the suite starts is a [`Proc`]: killed (SIGKILL) and reaped when dropped,
//! so an error, a panic unwinding or Ctrl-C (which drops the suite's future) never leaves
//! a server running. quorate is built to survive `kill -9`, so no graceful stop is needed.
//! A `kill -9` of the bench itself cannot run destructors; its children then keep running
//! and must be killed by hand (their pids are printed when they start).
//!
//! Also here: free loopback ports, per-process CPU time from `/proc`, a minimal HTTP GET
//! for `/metrics`, and a temporary directory removed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A running child process with its stdout lines and a log file for its stderr.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args...`; stderr goes to `log`, stdout lines are kept for
    /// [`Proc::wait_line`].
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create log file {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        // A plain thread: reading a pipe is blocking I/O, and it must keep draining the
        // pipe for the child's whole life.
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start a stdout reader thread")?;
        eprintln!("started {name} (pid {})", child.id());
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "{} exited before printing {prefix:?}; its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                ),
                Err(_) => bail!(
                    "{} did not print {prefix:?} within {timeout:?}; its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A loopback port that was free a moment ago (bind port 0, read it back, release it),
/// never one this process handed out before: the kernel readily gives a just-released
/// port again, and two servers on one port would fail to start.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .map_err(|_| anyhow!("port registry poisoned"))?;
    for _ in 0..1000 {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
        let port = listener.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no fresh loopback port after 1000 tries")
}

/// A loopback address on a [`free_port`].
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// The arguments of a `quorate serve` with its three listeners at `grpc`, `http` and
/// `peer` and its data in `data_dir`; callers add the rest (policy, id, tuning flags).
pub fn serve_args(
    grpc: SocketAddr,
    http: SocketAddr,
    peer: SocketAddr,
    data_dir: &Path,
) -> Vec<String> {
    vec![
        "serve".into(),
        "--grpc".into(),
        grpc.to_string(),
        "--http".into(),
        http.to_string(),
        "--peer".into(),
        peer.to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]
}

/// Polls until `addr` accepts TCP connections.
pub async fn wait_tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{addr} did not accept connections within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over HTTP/1.1 on `addr`; returns the body of a 200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET http://{addr}{path}: malformed answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// Decodes a chunked HTTP/1.1 body (best effort: stops at the first malformed chunk).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of an unlabelled Prometheus sample `name` in a text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Clock ticks per second for `/proc/*/stat` (USER_HZ): 100 on every Linux we run on;
/// asked from `getconf` once to be sure.
fn ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

/// User + system CPU time from a `/proc/<pid>/stat` file (all threads, live and exited).
pub fn cpu_time(stat_path: &str) -> anyhow::Result<Duration> {
    let stat =
        std::fs::read_to_string(stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed {stat_path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after ')'.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("malformed {stat_path}"))?
            .parse::<u64>()
            .with_context(|| format!("malformed {stat_path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = ticks_per_second();
    Ok(Duration::from_nanos(
        total.saturating_mul(1_000_000_000) / hz,
    ))
}

/// Resident memory of a process (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&status).ok_or_else(|| anyhow!("no VmRSS line in {path}"))
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

/// Counts the fsync-family system calls (`fdatasync`, `fsync`) of some processes with
/// `perf stat` on the kernel's syscall tracepoints: cheap, no ptrace, and needs nothing
/// from the server. Needs `perf` and permission to trace those processes.
#[derive(Debug)]
pub struct SyscallCounter {
    child: tokio::process::Child,
    out: PathBuf,
    window: Duration,
}

impl SyscallCounter {
    /// Starts counting for `window` (perf exits by itself at its end).
    pub fn start(pids: &[u32], out: &Path, window: Duration) -> anyhow::Result<SyscallCounter> {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let child = tokio::process::Command::new("perf")
            .arg("stat")
            .arg("-x,")
            .arg("-o")
            .arg(out)
            .args([
                "-e",
                "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync",
                "-p",
                &pids.join(","),
                "--",
                "sleep",
                &format!("{:.3}", window.as_secs_f64()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start perf (install linux-perf, or drop --perf)")?;
        Ok(SyscallCounter {
            child,
            out: out.to_path_buf(),
            window,
        })
    }

    /// Waits for the window to end and returns the number of fsync-family calls.
    pub async fn finish(mut self) -> anyhow::Result<u64> {
        let status = tokio::time::timeout(self.window + Duration::from_secs(10), self.child.wait())
            .await
            .map_err(|_| anyhow!("perf stat did not finish"))??;
        ensure!(status.success(), "perf stat failed: {status}");
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("cannot read {}", self.out.display()))?;
        parse_perf_counts(&text)
    }
}

/// Sums the counts of a `perf stat -x,` report.
fn parse_perf_counts(text: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut seen = false;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut fields = line.split(',');
        let count = fields.next().unwrap_or("").trim();
        let event = fields.nth(1).unwrap_or("");
        if !event.contains("sys_enter_") {
            continue;
        }
        total += count
            .parse::<u64>()
            .with_context(|| format!("perf could not count {event}: {count}"))?;
        seen = true;
    }
    ensure!(seen, "perf stat reported no syscall counts");
    Ok(total)
}

/// A directory removed (with its content) when dropped, unless `keep` is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates a fresh directory under `parent`.
    pub fn new(parent: &Path, keep: bool) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = parent.join(format!("quorate-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_samples() {
        let text = "# HELP x\nquorate_batch_hits_sum 12.5\nquorate_batch_hits_count 3\n\
                    quorate_decisions_total{outcome=\"allowed\"} 9\n";
        assert_eq!(metric(text, "quorate_batch_hits_sum"), Some(12.5));
        assert_eq!(metric(text, "quorate_batch_hits_count"), Some(3.0));
        assert_eq!(metric(text, "quorate_batch_hits"), None);
        assert_eq!(metric(text, "quorate_decisions_total"), None);
    }

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn sums_perf_counts() {
        let text = "# started on x\n\n4221,,syscalls:sys_enter_fdatasync,12000,100.00,,\n\
                    3,,syscalls:sys_enter_fsync,12000,100.00,,\n";
        assert_eq!(parse_perf_counts(text).unwrap(), 4224);
        assert!(parse_perf_counts("<not supported>,,syscalls:sys_enter_fsync,0,0,,\n").is_err());
        assert!(parse_perf_counts("# nothing\n").is_err());
    }

    #[test]
    fn decodes_chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn reads_resident_memory() {
        let status = "Name:\tquorate\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(10_485_760));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        let own = rss_bytes(std::process::id()).unwrap();
        assert!(own > 0);
    }

    #[test]
    fn reads_own_cpu_time() {
        let t = cpu_time("/proc/self/stat").unwrap();
        assert!(t < Duration::from_secs(3600));
    }
}
