//! Inbound peer RPCs: the `quorate.raft.v1.Raft` service that other members call on this
//! node's peer listener — Raft itself, plus decision and admin forwarding from followers.
//!
//! Every call has passed the peer credentials check ([`super::peer_auth::PeerGate`])
//! before it gets here, and everything in it is still decoded as if hostile: payload
//! types validate themselves on decode (a `Rate` goes through `Rate::new`), forwarded hits
//! get the same caps as client hits, and snapshot chunks must stay under
//! `--max-snapshot-bytes` and continue the snapshot being received, so no offset makes
//! this node allocate beyond the cap.
//!
//! Each Raft handler decodes openraft's request, hands it to the local Raft, and returns
//! the whole `Result` encoded, so the caller sees openraft's own error values. The two
//! forwarding RPCs belong to the layers above Raft: the node registers them as
//! [`PeerHandler`]s (the engine's own `Forward`, the admin API's `Admin`), so this
//! transport never calls up into the engine or the HTTP layer.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use openraft::raft::InstallSnapshotRequest;
use prost::bytes::Bytes;
use quorate_proto::raft::raft_server::{Raft as RaftService, RaftServer};
use quorate_proto::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::network::MAX_RAFT_MESSAGE;
use super::peer_auth::{PeerAuth, PeerGate};
use super::typ::Raft;
use super::TypeConfig;

/// A peer RPC served by a layer above Raft: takes the request payload (still to be
/// decoded as hostile, see [`decode_payload`]) and returns the encoded answer.
pub type PeerHandler =
    Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<Vec<u8>, Status>> + Send + Sync>;

/// Serves peers' RPCs for the local node.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    /// `Forward`: a follower's decision request (the engine's).
    forward: PeerHandler,
    /// `Admin`: a follower's admin write (the admin API's; leader writes only).
    admin: PeerHandler,
    max_snapshot_bytes: u64,
    /// The snapshot being received: its id and how many bytes of it have arrived.
    receiving: Arc<Mutex<Option<(String, u64)>>>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService").finish_non_exhaustive()
    }
}

impl PeerService {
    pub fn new(
        raft: Raft,
        forward: PeerHandler,
        admin: PeerHandler,
        max_snapshot_bytes: u64,
    ) -> PeerService {
        PeerService {
            raft,
            forward,
            admin,
            max_snapshot_bytes,
            receiving: Arc::default(),
        }
    }

    /// The tonic service behind `auth`'s credentials check, with message limits sized
    /// for snapshot chunks.
    pub fn server(self, auth: &PeerAuth) -> InterceptedService<RaftServer<PeerService>, PeerGate> {
        let server = RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        InterceptedService::new(server, auth.gate())
    }

    /// Refuses a chunk that would take the snapshot past the cap, or that does not start
    /// or continue the snapshot being received (a gap would make the receiver grow its
    /// buffer up to the offset).
    fn admit_chunk(&self, rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Status> {
        let len = u64::try_from(rpc.data.len()).unwrap_or(u64::MAX);
        let end = rpc.offset.saturating_add(len);
        if end > self.max_snapshot_bytes {
            return Err(Status::resource_exhausted(format!(
                "snapshot chunk ends at byte {end}, beyond this node's cap of {} bytes \
                 (--max-snapshot-bytes)",
                self.max_snapshot_bytes
            )));
        }
        if rpc.offset == 0 {
            return Ok(());
        }
        let receiving = self
            .receiving
            .lock()
            .map_err(|_| Status::internal("snapshot state poisoned"))?;
        match &*receiving {
            Some((id, received)) if *id == rpc.meta.snapshot_id && rpc.offset <= *received => {
                Ok(())
            }
            _ => Err(Status::invalid_argument(format!(
                "snapshot chunk at offset {} does not continue the snapshot being received",
                rpc.offset
            ))),
        }
    }

    /// Records what a chunk Raft accepted added to the snapshot being received.
    fn chunk_accepted(&self, id: String, offset: u64, end: u64, done: bool) {
        if let Ok(mut receiving) = self.receiving.lock() {
            *receiving = match receiving.take() {
                _ if done => None,
                _ if offset == 0 => Some((id, end)),
                Some((current, received)) if current == id => Some((id, received.max(end))),
                other => other,
            };
        }
    }
}

/// Decodes a peer's payload; the decoders validate every value (see the module doc).
pub fn decode_payload<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    decode_payload(&request.into_inner().data)
}

/// Encodes an answer to a peer.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    postcard::to_stdvec(value)
        .map_err(|e| Status::internal(format!("cannot encode raft response: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode_payload(value).map(|data| Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        self.admit_chunk(&rpc)?;
        let (id, offset, done) = (rpc.meta.snapshot_id.clone(), rpc.offset, rpc.done);
        let end = offset.saturating_add(u64::try_from(rpc.data.len()).unwrap_or(u64::MAX));
        let result = self.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.chunk_accepted(id, offset, end, done);
        }
        encode(&result)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let data = (self.forward)(request.into_inner().data).await?;
        Ok(Response::new(RaftPayload { data: data.into() }))
    }

    async fn admin(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let data = (self.admin)(request.into_inner().data).await?;
        Ok(Response::new(RaftPayload { data: data.into() }))
    }
}

/// Fuzzes the postcard decoders of every peer RPC payload, both directions: random bytes
/// and mutations of valid payloads must decode to an error or to a valid value, never
/// panic. [`FUZZ_CASES`] cases per decoder and input family.
#[cfg(test)]
mod fuzz {
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest,
        VoteResponse,
    };
    use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, Vote};
    use proptest::prelude::*;
    use quorate_algorithms::{Algorithm, Rate};

    use super::*;
    use crate::engine::{check_forwarded, EngineError, ForwardResult, ResolvedHit};
    use crate::http::admin::{AdminReply, ForwardedAdmin};
    use crate::policy::Consistency;
    use crate::raft::typ::RaftError;
    use crate::raft::{Command, Hit, NodeId};

    /// Cases per property.
    const FUZZ_CASES: u32 = 2_048;

    fn rate() -> Rate {
        Rate::new(Algorithm::TokenBucket, 10, 1_000, Some(4)).unwrap()
    }

    fn hit() -> Hit {
        Hit {
            limit: "per_minute".into(),
            key: "user=alice".into(),
            cost: 1,
            rate: rate(),
        }
    }

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    /// One valid encoding of every payload a peer sends or answers.
    fn valid_payloads() -> Vec<(&'static str, Vec<u8>)> {
        let enc = |v: &dyn erased::Encode| v.encode();
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(4)),
            entries: vec![
                openraft::Entry {
                    log_id: log_id(5),
                    payload: EntryPayload::Normal(Command::Hits {
                        ts: 7,
                        hits: vec![hit(), hit()],
                    }),
                },
                openraft::Entry {
                    log_id: log_id(6),
                    payload: EntryPayload::Normal(Command::Requests {
                        ts: 8,
                        requests: vec![
                            crate::raft::HitRequest {
                                atomic: true,
                                hits: vec![hit(), hit()],
                            },
                            crate::raft::HitRequest {
                                atomic: false,
                                hits: vec![hit()],
                            },
                        ],
                    }),
                },
                openraft::Entry {
                    log_id: log_id(7),
                    payload: EntryPayload::Normal(Command::SetPolicy {
                        ts: 8,
                        format: "quorate".into(),
                        source: "limits: []\n".into(),
                    }),
                },
            ],
            leader_commit: Some(log_id(5)),
        };
        let snapshot = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(6)),
                last_membership: Default::default(),
                snapshot_id: "3-6-1".into(),
            },
            offset: 0,
            data: vec![1, 2, 3, 4],
            done: true,
        };
        let forward = vec![ResolvedHit {
            hit: hit(),
            consistency: Consistency::Fast,
        }];
        let forwarded_check = crate::engine::ForwardedCheck {
            hits: forward.clone(),
            atomic: true,
        };
        let forward_result: ForwardResult = Err(EngineError::InvalidArgument("x".into()));
        let vote_result: Result<VoteResponse<NodeId>, RaftError> =
            Ok(VoteResponse::new(Vote::new(3, 1), Some(log_id(6)), true));
        let append_result: Result<AppendEntriesResponse<NodeId>, RaftError> =
            Ok(AppendEntriesResponse::Success);
        let snapshot_result: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<openraft::error::InstallSnapshotError>,
        > = Ok(InstallSnapshotResponse {
            vote: Vote::new(3, 1),
        });
        vec![
            (
                "vote",
                enc(&VoteRequest::new(Vote::new(3, 1), Some(log_id(6)))),
            ),
            ("append", enc(&append)),
            ("snapshot", enc(&snapshot)),
            ("forward", enc(&forward)),
            ("forwarded_check", enc(&forwarded_check)),
            (
                "admin",
                enc(&ForwardedAdmin {
                    method: "PUT".into(),
                    path: "/policy".into(),
                    body: b"{}".to_vec(),
                }),
            ),
            ("forward_result", enc(&forward_result)),
            ("vote_result", enc(&vote_result)),
            ("append_result", enc(&append_result)),
            ("snapshot_result", enc(&snapshot_result)),
            (
                "admin_reply",
                enc(&AdminReply {
                    status: 200,
                    body: b"{}".to_vec(),
                }),
            ),
        ]
    }

    mod erased {
        pub trait Encode {
            fn encode(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Encode for T {
            fn encode(&self) -> Vec<u8> {
                postcard::to_stdvec(self).unwrap()
            }
        }
    }

    /// A decoded rate is one `Rate::new` accepts.
    fn rate_is_valid(r: &Rate) -> bool {
        let burst = (r.algorithm() == Algorithm::TokenBucket).then_some(r.burst());
        Rate::new(r.algorithm(), r.limit(), r.window(), burst).as_ref() == Ok(r)
    }

    /// Decodes `bytes` as every payload type; panics only if a decoder does, or if a
    /// decoded value breaks an invariant.
    fn decode_all(bytes: &[u8]) {
        let _ = decode_payload::<VoteRequest<NodeId>>(bytes);
        if let Ok(append) = decode_payload::<AppendEntriesRequest<TypeConfig>>(bytes) {
            for entry in &append.entries {
                if let EntryPayload::Normal(Command::Hits { hits, .. })
                | EntryPayload::Normal(Command::Consumed { hits, .. }) = &entry.payload
                {
                    assert!(hits.iter().all(|h| rate_is_valid(&h.rate)));
                }
                if let EntryPayload::Normal(Command::Requests { requests, .. }) = &entry.payload {
                    assert!(requests
                        .iter()
                        .flat_map(|r| &r.hits)
                        .all(|h| rate_is_valid(&h.rate)));
                }
            }
        }
        let _ = decode_payload::<InstallSnapshotRequest<TypeConfig>>(bytes);
        if let Ok(hits) = decode_payload::<Vec<ResolvedHit>>(bytes) {
            assert!(hits.iter().all(|h| rate_is_valid(&h.hit.rate)));
            let _ = check_forwarded(&hits);
        }
        if let Ok(forwarded) = crate::engine::decode_forwarded(bytes) {
            assert!(forwarded.hits.iter().all(|h| rate_is_valid(&h.hit.rate)));
            let _ = check_forwarded(&forwarded.hits);
        }
        let _ = decode_payload::<ForwardedAdmin>(bytes);
        let _ = decode_payload::<ForwardResult>(bytes);
        let _ = decode_payload::<Result<VoteResponse<NodeId>, RaftError>>(bytes);
        let _ = decode_payload::<Result<AppendEntriesResponse<NodeId>, RaftError>>(bytes);
        let _ = decode_payload::<
            Result<
                InstallSnapshotResponse<NodeId>,
                RaftError<openraft::error::InstallSnapshotError>,
            >,
        >(bytes);
        let _ = decode_payload::<AdminReply>(bytes);
    }

    #[test]
    fn every_valid_payload_round_trips() {
        for (name, bytes) in valid_payloads() {
            decode_all(&bytes);
            assert!(!bytes.is_empty(), "{name}");
        }
        let forward = &valid_payloads()[3].1;
        let hits: Vec<ResolvedHit> = decode_payload(forward).unwrap();
        assert_eq!(hits[0].hit, hit());
    }

    #[test]
    fn forwarded_checks_decode_in_both_shapes() {
        let payloads = valid_payloads();
        // A follower that predates `atomic` sends just the hits: decided hit by hit.
        let old = crate::engine::decode_forwarded(&payloads[3].1).unwrap();
        assert!(!old.atomic);
        assert_eq!(old.hits[0].hit, hit());
        let new = crate::engine::decode_forwarded(&payloads[4].1).unwrap();
        assert!(new.atomic);
        // A leader that predates `atomic` still reads the hits of the new shape.
        let hits: Vec<ResolvedHit> = decode_payload(&payloads[4].1).unwrap();
        assert_eq!(hits, new.hits);
    }

    /// A mutation of a valid payload: overwrite, insert or delete bytes, or truncate.
    #[derive(Debug, Clone)]
    enum Mutation {
        Set(usize, u8),
        Insert(usize, u8),
        Delete(usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            let n = bytes.len().max(1);
            match *m {
                Mutation::Set(i, b) if !bytes.is_empty() => bytes[i % n] = b,
                Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                Mutation::Delete(i) if !bytes.is_empty() => {
                    bytes.remove(i % n);
                }
                Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
                _ => {}
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(FUZZ_CASES))]

        #[test]
        fn random_bytes_never_panic_a_peer_decoder(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            decode_all(&bytes);
        }

        #[test]
        fn mutated_payloads_never_panic_a_peer_decoder(
            which in 0usize..10,
            mutations in prop::collection::vec(mutation(), 1..8),
        ) {
            let (_, valid) = valid_payloads().swap_remove(which);
            decode_all(&mutate(valid, &mutations));
        }
    }
}
