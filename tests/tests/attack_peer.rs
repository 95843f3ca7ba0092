//! Attacks on the cluster's own doors, against real `quorate` processes: the Raft
//! transport on the public port, the peer port without (or with a wrong) cluster secret,
//! hostile payloads from a peer holding the secret (a huge or gapped snapshot chunk, a
//! forged `Rate`, an oversized forwarded hit), admin calls without a token from loopback,
//! and a peer port opened off loopback without credentials.
//!
//! Every attack checks that nothing happened (the Raft term, the live policy) and that
//! the node still serves; where it can, the same call with the right credentials shows
//! that the attack would have worked without the defence, so each test can fail.

// Test code: a failed expectation is a test failure, reported with its line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership, Vote};
use quorate_e2e::{
    api, bin, eventually, Check, Cluster, NodeOptions, TestNode, ADMIN_TOKEN, CLUSTER_SECRET,
};
use quorate_proto::raft::raft_client::RaftClient;
use quorate_proto::raft::RaftPayload;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Code;

/// A term no real cluster reaches: if it shows up, the attack worked.
const HUGE_TERM: u64 = 1_000_001;

/// The tests' window (`quorate_e2e::LONG_WINDOW`, 365 days) in nanoseconds, so a forged
/// hit counts against the same fixed window as the policy's.
const WINDOW_NS: u64 = 365 * 24 * 3_600 * 1_000_000_000;

/// The metadata key peers send the cluster secret in.
const SECRET_METADATA: &str = "x-quorate-cluster-secret";

/// A member's addresses as quorate encodes them (the attacker's copy of the wire type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PeerNode {
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

openraft::declare_raft_types!(
    /// openraft's request types, parameterised as the attacker needs them.
    Wire:
        D = String,
        R = String,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<Wire>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// quorate's rate algorithms, in wire order.
#[derive(Debug, Serialize)]
#[allow(dead_code)]
enum Algorithm {
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
}

/// A forwarded hit as an attacker writes it: any field values at all.
#[derive(Debug, Serialize)]
struct ForgedHit {
    limit: String,
    key: String,
    cost: u64,
    algorithm: Algorithm,
    rate_limit: u64,
    window: u64,
    burst: u64,
    /// 0 = strict.
    consistency: u32,
}

impl ForgedHit {
    fn new(limit: &str, key: &str, window: u64) -> ForgedHit {
        ForgedHit {
            limit: limit.into(),
            key: key.into(),
            cost: 1,
            algorithm: Algorithm::FixedWindow,
            rate_limit: 5,
            window,
            burst: 5,
            consistency: 0,
        }
    }

    /// postcard bytes of `Vec<ResolvedHit>` holding these hits. Hit { limit, key, cost,
    /// rate: Rate { algorithm, limit, window, burst } } then consistency: postcard writes
    /// structs as their fields in order, so a flat tuple encodes the same bytes.
    fn encode(hits: &[ForgedHit]) -> Vec<u8> {
        let flat: Vec<_> = hits
            .iter()
            .map(|h| {
                (
                    (
                        &h.limit,
                        &h.key,
                        h.cost,
                        (&h.algorithm, h.rate_limit, h.window, h.burst),
                    ),
                    Consistency(h.consistency),
                )
            })
            .collect();
        postcard::to_stdvec(&flat).unwrap()
    }
}

/// An enum variant index as postcard writes it (a varint).
#[derive(Debug)]
struct Consistency(u32);

impl Serialize for Consistency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = if self.0 == 0 { "strict" } else { "fast" };
        s.serialize_unit_variant("Consistency", self.0, name)
    }
}

/// Which peer RPC to call.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Vote,
    AppendEntries,
    InstallSnapshot,
    Forward,
    Admin,
}

const EVERY_RPC: [Rpc; 5] = [
    Rpc::Vote,
    Rpc::AppendEntries,
    Rpc::InstallSnapshot,
    Rpc::Forward,
    Rpc::Admin,
];

/// What a secret-less attacker sends: a vote for a huge term, an append from a leader of
/// that term, a snapshot from it, a forwarded hit and an admin write.
fn payload(rpc: Rpc) -> Vec<u8> {
    let vote = Vote::<u64>::new(HUGE_TERM, 99);
    match rpc {
        // A log that looks longer than anyone's, so only the credentials check stands in
        // the way.
        Rpc::Vote => postcard::to_stdvec(&VoteRequest::new(
            vote,
            Some(LogId::new(
                CommittedLeaderId::new(HUGE_TERM, 99),
                u64::MAX / 2,
            )),
        ))
        .unwrap(),
        Rpc::AppendEntries => postcard::to_stdvec(&AppendEntriesRequest::<Wire> {
            vote: Vote::new_committed(HUGE_TERM, 99),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        })
        .unwrap(),
        Rpc::InstallSnapshot => snapshot_chunk(0, vec![0; 16], true),
        Rpc::Forward => ForgedHit::encode(&[ForgedHit::new("strict", "k", WINDOW_NS)]),
        Rpc::Admin => postcard::to_stdvec(&(
            "PUT",
            "/policy",
            br#"{"source":"limits: []\ndefaults:\n  unmatched: allow\n"}"#.to_vec(),
        ))
        .unwrap(),
    }
}

fn snapshot_chunk(offset: u64, data: Vec<u8>, done: bool) -> Vec<u8> {
    let meta = SnapshotMeta::<u64, PeerNode> {
        last_log_id: None,
        last_membership: StoredMembership::default(),
        snapshot_id: "attacker".into(),
    };
    postcard::to_stdvec(&InstallSnapshotRequest::<Wire> {
        vote: Vote::new_committed(HUGE_TERM, 99),
        meta,
        offset,
        data,
        done,
    })
    .unwrap()
}

/// A raw client for the peer protocol at `addr` (public or peer port).
fn raft_client(addr: SocketAddr) -> RaftClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    RaftClient::new(channel).max_encoding_message_size(64 * 1024 * 1024)
}

/// Calls `rpc` with `data`, sending `secret` if given; the status code (OK on success).
async fn call(addr: SocketAddr, rpc: Rpc, data: Vec<u8>, secret: Option<&str>) -> Code {
    let mut client = raft_client(addr);
    let mut request = tonic::Request::new(RaftPayload { data: data.into() });
    if let Some(s) = secret {
        request
            .metadata_mut()
            .insert(SECRET_METADATA, MetadataValue::try_from(s).unwrap());
    }
    let result = match rpc {
        Rpc::Vote => client.vote(request).await,
        Rpc::AppendEntries => client.append_entries(request).await,
        Rpc::InstallSnapshot => client.install_snapshot(request).await,
        Rpc::Forward => client.forward(request).await,
        Rpc::Admin => client.admin(request).await,
    };
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn policy() -> String {
    quorate_e2e::policy(&[("strict", "fixed_window", 5, "strict")])
}

async fn single(extra_args: &[&str]) -> Cluster {
    Cluster::single(NodeOptions {
        policy: Some(policy()),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..NodeOptions::default()
    })
    .await
    .unwrap()
}

/// The node's term and live policy version, read through the admin API.
async fn state(node: &TestNode) -> (u64, Option<u64>) {
    let s = node.status().await.unwrap();
    (s.term, s.policy_version)
}

/// The node's resident memory, in KiB.
fn rss_kib(node: &TestNode) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_on_the_public_port_is_unimplemented_and_reflection_does_not_list_it() {
    let cluster = single(&[]).await;
    let node = cluster.node(1);
    let before = state(node).await;
    for rpc in EVERY_RPC {
        let code = call(node.grpc, rpc, payload(rpc), Some(CLUSTER_SECRET)).await;
        assert_eq!(code, Code::Unimplemented, "{rpc:?} on the public port");
    }
    assert_eq!(state(node).await, before, "term and policy unchanged");
    assert!(node.check("strict", "k", None).await.decided().allowed);

    // Reflection on the public port lists the public API, never the peer transport.
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains("quorate.v1.RateLimiter"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("quorate.raft")),
        "reflection advertises the peer transport: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_without_the_cluster_secret_are_refused_and_change_nothing() {
    let cluster = single(&[]).await;
    let node = cluster.node(1);
    let before = state(node).await;
    let wrong_same_length: String = CLUSTER_SECRET
        .chars()
        .map(|c| if c == 'e' { 'f' } else { c })
        .collect();
    for rpc in EVERY_RPC {
        for secret in [None, Some("wrong"), Some(wrong_same_length.as_str())] {
            let code = call(node.peer, rpc, payload(rpc), secret).await;
            assert_eq!(code, Code::Unauthenticated, "{rpc:?} with {secret:?}");
        }
    }
    assert_eq!(state(node).await, before, "term and policy unchanged");
    assert!(node.check("strict", "k", None).await.decided().allowed);

    // The secret is the only thing in the way: with it, the huge term is taken (once the
    // leader's lease lapses).
    eventually(
        Duration::from_secs(10),
        "the term to move with the secret",
        || async {
            for rpc in [Rpc::Vote, Rpc::AppendEntries] {
                let code = call(node.peer, rpc, payload(rpc), Some(CLUSTER_SECRET)).await;
                assert_eq!(code, Code::Ok, "{rpc:?} with the secret");
            }
            (state(node).await.0 >= HUGE_TERM).then_some(())
        },
    )
    .await
    .unwrap();

    // Neither the secret nor the admin token is ever logged.
    let logs = node.logs(10_000);
    assert!(
        !logs.contains(CLUSTER_SECRET),
        "the cluster secret was logged"
    );
    assert!(!logs.contains(ADMIN_TOKEN), "the admin token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_gapped_snapshot_chunks_are_refused_and_the_node_keeps_serving() {
    const CAP: u64 = 1024 * 1024;
    let cluster = single(&["--max-snapshot-bytes", &CAP.to_string()]).await;
    let node = cluster.node(1);
    let before = state(node).await;
    let rss_before = rss_kib(node);
    let secret = Some(CLUSTER_SECRET);

    // Offsets that would make the receiver grow its buffer to them.
    for offset in [u64::MAX - 8, 1 << 40, CAP] {
        let chunk = snapshot_chunk(offset, vec![7; 16], false);
        let code = call(node.peer, Rpc::InstallSnapshot, chunk, secret).await;
        assert_eq!(code, Code::ResourceExhausted, "offset {offset}");
    }
    // One chunk larger than the cap.
    let chunk = snapshot_chunk(0, vec![7; CAP as usize + 1], false);
    let code = call(node.peer, Rpc::InstallSnapshot, chunk, secret).await;
    assert_eq!(code, Code::ResourceExhausted, "a chunk beyond the cap");
    // Under the cap, but not continuing any snapshot being received (a gap).
    let chunk = snapshot_chunk(CAP / 2, vec![7; 16], false);
    let code = call(node.peer, Rpc::InstallSnapshot, chunk, secret).await;
    assert_eq!(code, Code::InvalidArgument, "a chunk after a gap");

    assert_eq!(state(node).await.1, before.1, "policy unchanged");
    assert!(node.check("strict", "k", None).await.decided().allowed);
    let grown = rss_kib(node).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "the node grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_oversized_forwarded_hits_are_rejected() {
    let cluster = single(&[]).await;
    let node = cluster.node(1);
    let secret = Some(CLUSTER_SECRET);
    let forward =
        |hits: Vec<ForgedHit>| call(node.peer, Rpc::Forward, ForgedHit::encode(&hits), secret);

    // A well-formed forwarded hit is decided: the refusals below are about the payload.
    assert_eq!(
        forward(vec![ForgedHit::new("strict", "k", WINDOW_NS)]).await,
        Code::Ok
    );

    // A Rate that Rate::new refuses: zero window, zero limit, a burst on a fixed window.
    let mut zero_limit = ForgedHit::new("strict", "k", WINDOW_NS);
    zero_limit.rate_limit = 0;
    zero_limit.burst = 0;
    let mut burst = ForgedHit::new("strict", "k", WINDOW_NS);
    burst.burst = u64::MAX;
    for forged in [ForgedHit::new("strict", "k", 0), zero_limit, burst] {
        let what = format!("{forged:?}");
        assert_eq!(forward(vec![forged]).await, Code::InvalidArgument, "{what}");
    }
    // Caps: a 1 MiB key, an empty limit name, too many hits.
    let huge_key = ForgedHit::new("strict", &"k".repeat(1024 * 1024), WINDOW_NS);
    assert_eq!(forward(vec![huge_key]).await, Code::InvalidArgument);
    assert_eq!(
        forward(vec![ForgedHit::new("", "k", WINDOW_NS)]).await,
        Code::InvalidArgument
    );
    let many = (0..5_000)
        .map(|i| ForgedHit::new("strict", &format!("k{i}"), WINDOW_NS))
        .collect();
    assert_eq!(forward(many).await, Code::InvalidArgument);
    // Random bytes.
    let code = call(node.peer, Rpc::Forward, vec![0xff; 64], secret).await;
    assert_eq!(code, Code::InvalidArgument);

    // Only the one well-formed hit was counted.
    let d = node.check("strict", "k", Some(0)).await.decided();
    assert_eq!(d.remaining, 4, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_even_from_loopback() {
    let cluster = single(&[]).await;
    let node = cluster.node(1);
    let before = state(node).await;
    let http = api::http();
    let url = |path: &str| format!("http://{}/admin/v1{path}", node.http);
    let open_policy = serde_json::json!({"source": "limits: []\ndefaults:\n  unmatched: allow\n"});

    for token in [None, Some("wrong"), Some("")] {
        let mut get = http.get(url("/cluster/status"));
        let mut put = http.put(url("/policy")).json(&open_policy);
        if let Some(t) = token {
            get = get.bearer_auth(t);
            put = put.bearer_auth(t);
        }
        assert_eq!(
            get.send().await.unwrap().status(),
            401,
            "GET with {token:?}"
        );
        assert_eq!(
            put.send().await.unwrap().status(),
            401,
            "PUT with {token:?}"
        );
    }
    // A sidecar's forwarding headers change nothing.
    let r = http
        .get(url("/policy"))
        .header("x-forwarded-for", "127.0.0.1")
        .header("x-quorate-forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(state(node).await, before, "nothing changed");

    // With the token, the same calls work.
    let r = http
        .get(url("/cluster/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(url("/policy"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&open_policy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_token_generates_one_that_only_the_cli_with_the_file_uses() {
    let cluster = Cluster::single(NodeOptions {
        admin_token: None,
        ..NodeOptions::default()
    })
    .await
    .unwrap();
    let node = cluster.node(1);
    let file = node.dir().join("data").join("admin-token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(token.len() >= 32, "a long random token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is private");
    }
    assert!(!node.logs(10_000).contains(&token), "the token was logged");
    assert!(
        node.stderr().contains("admin-token"),
        "the log names the file"
    );

    let cli = |args: Vec<String>| async move {
        tokio::process::Command::new(bin::quorate())
            .args(&args)
            .env_remove("QUORATE_ADMIN_TOKEN")
            .env_remove("QUORATE_ADMIN_TOKEN_FILE")
            .current_dir(std::env::temp_dir())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    };
    let status = |with_file: bool| {
        let mut args = vec![
            "cluster".to_string(),
            "status".into(),
            "--output=json".into(),
            "--node".into(),
            node.http_url(),
        ];
        if with_file {
            args.extend(["--admin-token-file".into(), file.display().to_string()]);
        }
        args
    };
    let out = cli(status(false)).await;
    assert!(!out.status.success(), "no token, refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = cli(status(true)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"leader\": 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_port_off_loopback_without_credentials_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = quorate_e2e::node::free_addrs(3);
    let open_peer = SocketAddr::from(([0, 0, 0, 0], addrs[2].port()));
    let mut node = TestNode::spawn_on(
        1,
        dir.path(),
        &NodeOptions {
            cluster_secret: None,
            ..NodeOptions::default()
        },
        [addrs[0], addrs[1], open_peer],
        None,
    )
    .unwrap();
    let status = node.wait_exit(Duration::from_secs(20)).await.unwrap();
    let stderr = node.stderr();
    assert!(!status.success(), "must refuse: {stderr}");
    assert!(
        stderr.contains("--cluster-secret-file"),
        "says how to fix it: {stderr}"
    );
    assert!(
        std::net::TcpStream::connect(addrs[2]).is_err(),
        "the peer port was never opened"
    );

    // The same node with a secret starts on that address.
    let mut node = TestNode::spawn_on(
        1,
        dir.path(),
        &NodeOptions::default(),
        [addrs[0], addrs[1], open_peer],
        None,
    )
    .unwrap();
    node.wait_ready().await.unwrap();
    let code = call(addrs[2], Rpc::Vote, payload(Rpc::Vote), None).await;
    assert_eq!(code, Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_through_a_follower_reach_the_leader_over_the_peer_channel() {
    let cluster = Cluster::formed(2, NodeOptions::default(), false)
        .await
        .unwrap();
    let leader = cluster.wait_leader(&[1, 2]).await.unwrap();
    let follower = if leader == 1 { 2 } else { 1 };
    let before = cluster
        .status(leader)
        .await
        .unwrap()
        .policy_version
        .unwrap();
    let body = serde_json::json!({"source": policy()});
    let answer = api::admin(
        reqwest::Method::PUT,
        cluster.node(follower).http,
        "/policy",
        body,
    )
    .await
    .unwrap();
    assert_eq!(answer["version"].as_u64(), Some(before + 1), "{answer}");
    assert_eq!(
        cluster.status(leader).await.unwrap().policy_version,
        Some(before + 1)
    );
    // The follower did not pass the bearer token on: the leader saw a peer call.
    let leader_logs = cluster.node(leader).logs(10_000);
    assert!(!leader_logs.contains(ADMIN_TOKEN));
}
