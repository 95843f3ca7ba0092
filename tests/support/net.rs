//! A fault-injecting network between nodes: one TCP proxy in front of each node's peer port.
//!
//! Peers reach a node only through its proxy (the node advertises the proxy's address
//! with `--advertise-peer`), while tests reach it directly on its real ports. Raft
//! traffic to node B from node A therefore crosses B's proxy, and follower-to-leader
//! forwarding does too.
//!
//! Cutting a node off must work both ways: its inbound traffic crosses its own proxy, but
//! its outbound traffic crosses the *peers'* proxies. So each proxy identifies which node
//! opened a connection: the connecting socket is looked up in `/proc/net/tcp` (its local
//! address is the peer address the proxy sees) and its inode in the `fd` tables of the
//! node processes. [`Net::isolate`] then drops every connection to or from the node and
//! refuses new ones (accepted and closed at once); [`Net::heal`] lets them through again.
//! Connections from processes that are not nodes (the tests) are cut only when they go
//! to an isolated node.
//!
//! The proxies run on their own small tokio runtime, so they keep forwarding whatever the
//! test's own runtime is doing.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

/// The proxies of one test's nodes and the faults injected into them.
#[derive(Debug)]
pub struct Net {
    state: Arc<Mutex<State>>,
    runtime: Option<Runtime>,
}

#[derive(Debug, Default)]
struct State {
    /// Node process ids, to tell which node opened a connection.
    pids: HashMap<u32, u64>,
    /// Nodes cut off from everyone.
    isolated: HashSet<u64>,
    /// Live proxied connections.
    conns: Vec<Conn>,
}

#[derive(Debug)]
struct Conn {
    from: Option<u64>,
    to: u64,
    task: AbortHandle,
}

impl State {
    fn blocked(&self, from: Option<u64>, to: u64) -> bool {
        self.isolated.contains(&to) || from.is_some_and(|f| self.isolated.contains(&f))
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("e2e-net")
            .enable_all()
            .build()
            .expect("proxy runtime");
        Net {
            state: Arc::default(),
            runtime: Some(runtime),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Starts a proxy forwarding to node `to` at `target`; returns the proxy's address.
    pub fn proxy(&self, to: u64, target: SocketAddr) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::clone(&self.state);
        let runtime = self.runtime.as_ref().expect("runtime");
        let handle = runtime.handle().clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let pids: Vec<(u32, u64)> = {
                    let s = lock(&state);
                    s.pids.iter().map(|(p, n)| (*p, *n)).collect()
                };
                let from = owner(peer, addr, &pids);
                let mut s = lock(&state);
                s.conns.retain(|c| !c.task.is_finished());
                if s.blocked(from, to) {
                    drop(inbound); // refused: closed at once
                    continue;
                }
                let task = handle.spawn(forward(inbound, target));
                s.conns.push(Conn {
                    from,
                    to,
                    task: task.abort_handle(),
                });
            }
        });
        addr
    }

    /// Records that node `id` now runs as process `pid` (after a start or restart).
    pub fn register(&self, id: u64, pid: u32) {
        let mut s = self.state();
        s.pids.retain(|_, n| *n != id);
        s.pids.insert(pid, id);
    }

    /// Cuts node `id` off from every other node, both ways: existing connections are
    /// dropped and new ones refused until [`Net::heal`].
    pub fn isolate(&self, id: u64) {
        let mut s = self.state();
        s.isolated.insert(id);
        let (cut, keep): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut s.conns)
            .into_iter()
            .partition(|c| c.to == id || c.from == Some(id));
        s.conns = keep;
        for c in cut {
            c.task.abort();
        }
    }

    /// Ends every isolation.
    pub fn heal(&self) {
        self.state().isolated.clear();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn forward(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}

/// Which node opened the connection the proxy listening on `proxy` accepted from `peer`.
fn owner(peer: SocketAddr, proxy: SocketAddr, pids: &[(u32, u64)]) -> Option<u64> {
    let inode = socket_inode(peer, proxy)?;
    let needle = format!("socket:[{inode}]");
    pids.iter().find_map(|(pid, node)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == needle.as_str())
            })
            .then_some(*node)
    })
}

/// The inode of the IPv4 TCP socket whose local address is `local` and remote `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (parse_proc_addr(l)? == local && parse_proc_addr(r)? == remote)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` → 127.0.0.1:8080 (the address as the kernel stores it, printed in
/// host byte order; the port in host order).
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(ip.to_ne_bytes()),
        port,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_addresses() {
        let a = parse_proc_addr("0100007F:1F90").expect("parses");
        if cfg!(target_endian = "little") {
            assert_eq!(a, "127.0.0.1:8080".parse().expect("addr"));
        }
    }

    #[test]
    fn finds_the_process_that_opened_a_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(server).expect("connect");
        let (_accepted, peer) = listener.accept().expect("accept");
        let me = std::process::id();
        assert_eq!(owner(peer, server, &[(me, 7)]), Some(7));
        assert_eq!(owner(peer, server, &[(me + 1_000_000, 7)]), None);
    }
}
