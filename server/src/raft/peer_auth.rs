//! How cluster members prove to each other that they belong to the cluster.
//!
//! Both ends of the peer channel live here, so a new kind of credential changes one file:
//! - inbound, [`PeerGate`] is a tonic interceptor on the peer listener: it runs on the
//!   request's headers before its body is decoded, so a caller without the cluster's
//!   credentials gets `UNAUTHENTICATED` and nothing else happens;
//! - outbound, [`peer_client`] builds the one kind of channel every peer call uses (Raft,
//!   decision and admin forwarding), carrying this node's credentials.
//!
//! Today the credential is a shared cluster secret, sent as metadata on every call and
//! compared in constant time. mTLS with a cluster CA slots in as another [`PeerAuth`]
//! variant: the listener then takes a TLS acceptor, and [`peer_client`] a TLS config.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quorate_proto::raft::raft_client::RaftClient;
use subtle::ConstantTimeEq;
use thiserror::Error;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::tls::peer::PeerConnector;
use crate::tls::Tls;

/// The largest Raft message a peer channel accepts or sends: snapshot chunks and entry
/// batches.
pub const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// The metadata key that carries the cluster secret on every peer call.
pub const SECRET_METADATA: &str = "x-quorate-cluster-secret";

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the peer credentials are unusable, or the peer listener may not be bound.
/// Never contains the secret.
#[derive(Debug, Error)]
pub enum PeerAuthError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the cluster secret in {path} is too short or not printable ASCII: use at least \
         {MIN_SECRET_LEN} printable characters, e.g. `openssl rand -hex 32 > {path}`"
    )]
    Unusable { path: String },
    #[error(
        "refusing to serve peers on {addr} without peer authentication: anyone who can reach \
         that address could rewrite the cluster's state. Give every node peer certificates \
         from a cluster CA (`--peer-tls-cert`, `--peer-tls-key`, `--peer-ca`), or the same secret \
         with `--cluster-secret-file PATH` (or QUORATE_CLUSTER_SECRET_FILE), e.g. \
         `openssl rand -hex 32 > cluster-secret`, or bind `--peer` to a loopback address"
    )]
    Unprotected { addr: SocketAddr },
}

/// The shared cluster secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Reads the secret from `path` (surrounding whitespace, such as a trailing newline,
    /// is not part of it).
    pub fn from_file(path: &Path) -> Result<ClusterSecret, PeerAuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| PeerAuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ClusterSecret::new(text.trim()).ok_or_else(|| PeerAuthError::Unusable {
            path: path.display().to_string(),
        })
    }

    /// A secret of at least [`MIN_SECRET_LEN`] printable ASCII characters (it travels as
    /// a gRPC metadata value).
    pub fn new(secret: &str) -> Option<ClusterSecret> {
        let usable = secret.len() >= MIN_SECRET_LEN && secret.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| ClusterSecret(Arc::from(secret)))
    }

    /// Constant-time comparison with what a caller sent.
    fn matches(&self, given: &[u8]) -> bool {
        bool::from(self.0.as_bytes().ct_eq(given))
    }
}

/// How this node authenticates its peers, and itself to them.
#[derive(Debug, Clone, Default)]
pub enum PeerAuth {
    /// No credentials: only allowed while the peer listener is bound to loopback
    /// (single-machine development).
    #[default]
    Unauthenticated,
    /// The same secret on every member, sent with every peer call.
    Secret(ClusterSecret),
    /// Mutual TLS with a cluster CA: the peer listener completes a handshake only with a
    /// client certificate signed by the CA, and [`peer_client`] presents this node's
    /// certificate and checks the peer's against the same CA.
    MutualTls(Arc<Tls>),
}

impl PeerAuth {
    /// Refuses a non-loopback peer address without credentials (checked before binding).
    pub fn allows_bind(&self, addr: SocketAddr) -> Result<(), PeerAuthError> {
        match self {
            PeerAuth::Unauthenticated if !addr.ip().is_loopback() => {
                Err(PeerAuthError::Unprotected { addr })
            }
            PeerAuth::Unauthenticated | PeerAuth::Secret(_) | PeerAuth::MutualTls(_) => Ok(()),
        }
    }

    /// [`PeerAuth::allows_bind`] for the bound address; on loopback without credentials it
    /// warns that any local process may act as a peer.
    pub fn check_bind(&self, addr: SocketAddr) -> Result<(), PeerAuthError> {
        self.allows_bind(addr)?;
        if matches!(self, PeerAuth::Unauthenticated) {
            tracing::warn!(
                %addr,
                "peer listener without authentication: any local process can act as a \
                 cluster member; set --cluster-secret-file for anything but development"
            );
        }
        Ok(())
    }

    /// The check the peer listener runs on every call.
    pub fn gate(&self) -> PeerGate {
        PeerGate { auth: self.clone() }
    }
}

/// Inbound: refuses a peer call without this cluster's credentials, before its body is
/// decoded.
#[derive(Debug, Clone)]
pub struct PeerGate {
    auth: PeerAuth,
}

impl Interceptor for PeerGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.auth {
            // The TLS handshake already required a certificate from the cluster CA.
            PeerAuth::Unauthenticated | PeerAuth::MutualTls(_) => Ok(request),
            PeerAuth::Secret(secret) => {
                let given = request
                    .metadata()
                    .get(SECRET_METADATA)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                if secret.matches(given) {
                    Ok(request)
                } else {
                    Err(Status::unauthenticated(
                        "peer calls need this cluster's credentials",
                    ))
                }
            }
        }
    }
}

/// Outbound: adds this node's credentials to every peer call.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    secret: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for PeerCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(secret) = &self.secret {
            request
                .metadata_mut()
                .insert(SECRET_METADATA, secret.clone());
        }
        Ok(request)
    }
}

/// The channel type of every outbound peer call.
pub type PeerChannel = InterceptedService<Channel, PeerCredentials>;

/// A lazily connecting client for the peer listener at `addr`, carrying `auth`'s
/// credentials. The one place outbound peer channels are made.
pub fn peer_client(
    addr: SocketAddr,
    auth: &PeerAuth,
) -> Result<RaftClient<PeerChannel>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = match auth {
        PeerAuth::MutualTls(tls) => PeerConnector::new(Arc::clone(tls)).channel(endpoint),
        _ => endpoint.connect_lazy(),
    };
    let secret = match auth {
        PeerAuth::Unauthenticated | PeerAuth::MutualTls(_) => None,
        // Checked printable ASCII when the secret was made, so this always converts.
        PeerAuth::Secret(s) => MetadataValue::try_from(&*s.0).ok(),
    };
    Ok(
        RaftClient::with_interceptor(channel, PeerCredentials { secret })
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(gate: &mut PeerGate, secret: Option<&str>) -> Result<(), Status> {
        let mut request = Request::new(());
        if let Some(s) = secret {
            request
                .metadata_mut()
                .insert(SECRET_METADATA, MetadataValue::try_from(s).unwrap());
        }
        gate.call(request).map(|_| ())
    }

    #[test]
    fn the_gate_admits_only_the_cluster_secret() {
        let secret = ClusterSecret::new("0123456789abcdef-cluster").unwrap();
        let mut gate = PeerAuth::Secret(secret).gate();
        assert!(call(&mut gate, Some("0123456789abcdef-cluster")).is_ok());
        for wrong in [None, Some(""), Some("0123456789abcdef-cluste"), Some("x")] {
            let status = call(&mut gate, wrong).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("0123456789"));
        }
    }

    #[test]
    fn short_or_unprintable_secrets_are_refused_and_never_shown() {
        assert!(ClusterSecret::new("short").is_none());
        assert!(ClusterSecret::new("0123456789abcdef\n0123").is_none());
        let s = ClusterSecret::new("0123456789abcdef-cluster").unwrap();
        assert!(!format!("{s:?}").contains("0123"));
        assert!(!format!("{:?}", PeerAuth::Secret(s)).contains("0123"));
    }

    #[test]
    fn no_credentials_are_refused_off_loopback() {
        let open = PeerAuth::Unauthenticated;
        assert!(open.check_bind("127.0.0.1:8071".parse().unwrap()).is_ok());
        assert!(open.check_bind("[::1]:8071".parse().unwrap()).is_ok());
        let err = open
            .check_bind("0.0.0.0:8071".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cluster-secret-file"), "{err}");
        let secret = PeerAuth::Secret(ClusterSecret::new("0123456789abcdef-cluster").unwrap());
        assert!(secret.check_bind("0.0.0.0:8071".parse().unwrap()).is_ok());
    }
}
