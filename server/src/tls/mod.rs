//! TLS for the node's listeners and its peer channel: a certificate chain and key (and
//! optionally a CA that clients' certificates must chain to) read from PEM files, and
//! reloaded without a restart when the files change.
//!
//! - [`Tls`] holds the rustls configurations built from the files. [`Tls::watch`] polls
//!   the files ([`crate::file_watch`]: in-place writes, renames and Kubernetes `..data`
//!   symlink swaps alike) and swaps in new configurations atomically: new handshakes use
//!   the new certificate, established connections keep the one they negotiated. New files
//!   that do not load (unreadable, not PEM, a key that does not match the certificate —
//!   which is also what a half-written pair looks like) are logged and the live
//!   certificate stays.
//! - [`incoming`] turns a TCP listener into a stream of TLS connections for tonic and
//!   axum, with a handshake deadline.
//! - [`peer`] is the client side of peer mTLS.
//!
//! The whole rustls configuration is swapped, not only the certified key behind a
//! `ResolvesServerCert`, because the client CA rotates too and rustls's client verifier
//! (with its root hints) is part of the configuration.
//!
//! Crypto is rustls on ring, the provider reqwest already brings in; no OpenSSL.

pub mod incoming;
pub mod peer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::file_watch::{read_all, ContentWatch, ReadError};

/// How often certificate files are re-read.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// ALPN protocol ids.
const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// Why certificate files could not be used. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("certificate {} with key {}: {reason}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where a TLS identity's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates. For a server: clients must present a certificate that chains
    /// to one of them (mTLS). For the peer role: also what peers' server certificates are
    /// checked against.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.ca.clone());
        paths
    }
}

/// What the files are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The public gRPC and HTTP ports; a client certificate is required only when a CA
    /// is given.
    Public,
    /// The peer port and outbound peer calls: the CA is required, both ends present a
    /// certificate signed by it.
    Peer {
        /// The name peers' certificates must carry. `None`: the peer's IP address (an IP
        /// SAN), taken from the address it is dialled at.
        server_name: Option<String>,
    },
}

/// Which listener a handshake is for: decides the ALPN protocols offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The HTTP port: HTTP/2 or HTTP/1.1.
    Http,
}

/// The configurations built from one reading of the files.
#[derive(Debug)]
struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// For outbound peer calls (the peer role only).
    client: Option<Arc<ClientConfig>>,
}

/// A TLS identity loaded from files, reloadable. Shared by the listeners that use it.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    role: Role,
    configs: ArcSwap<Configs>,
    /// The file contents the live configurations were built from (the watcher's start).
    loaded: Vec<Vec<u8>>,
}

impl Tls {
    /// Reads and checks the files; an error says which file and why.
    pub fn load(files: TlsFiles, role: Role) -> Result<Arc<Tls>, TlsError> {
        if matches!(role, Role::Peer { .. }) && files.ca.is_none() {
            return Err(TlsError::Config(
                "peer TLS needs the cluster CA (--peer-ca) to check peers' certificates".into(),
            ));
        }
        if let Role::Peer {
            server_name: Some(name),
        } = &role
        {
            ServerName::try_from(name.as_str()).map_err(|_| {
                TlsError::Config(format!("{name:?} is not a valid peer server name"))
            })?;
        }
        let loaded = read_all(&files.paths())?;
        let configs = build(&files, &role, &loaded)?;
        Ok(Arc::new(Tls {
            files,
            role,
            configs: ArcSwap::from_pointee(configs),
            loaded,
        }))
    }

    /// The live server configuration for `surface`.
    pub fn server_config(&self, surface: Surface) -> Arc<ServerConfig> {
        let configs = self.configs.load();
        match surface {
            Surface::Grpc => Arc::clone(&configs.grpc),
            Surface::Http => Arc::clone(&configs.http),
        }
    }

    /// The live configuration for outbound peer calls (`None` unless the peer role).
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.configs.load().client.clone()
    }

    /// The name to check a peer's certificate against when dialling `host`.
    fn peer_server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match &self.role {
            Role::Peer {
                server_name: Some(name),
            } => name.as_str(),
            _ => host.trim_start_matches('[').trim_end_matches(']'),
        };
        ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::Config(format!("{name:?} is not a valid server name")))
    }

    /// Builds new configurations from `contents` (as read from the files) and makes them
    /// live; on error the live ones stay.
    fn reload(&self, contents: &[Vec<u8>]) -> Result<(), TlsError> {
        let configs = build(&self.files, &self.role, contents)?;
        self.configs.store(Arc::new(configs));
        Ok(())
    }

    /// Polls the files every `interval`, forever, reloading on every change.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut watch = ContentWatch::new(self.files.paths(), Some(self.loaded.clone()));
        // Report a failure once, not every interval.
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            let result = match watch.poll() {
                Ok(None) => continue,
                Ok(Some(contents)) => self.reload(&contents),
                Err(e) => Err(TlsError::Read(e)),
            };
            match result {
                Ok(()) => {
                    last_error = None;
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    let message = e.to_string();
                    if last_error.as_deref() != Some(message.as_str()) {
                        tracing::error!(
                            error = %message,
                            "new TLS certificate files refused; the previous certificate stays live"
                        );
                        last_error = Some(message);
                    }
                }
            }
        }
    }
}

/// Everything the configurations are built from, parsed and checked.
fn build(files: &TlsFiles, role: &Role, contents: &[Vec<u8>]) -> Result<Configs, TlsError> {
    let [cert_pem, key_pem, rest @ ..] = contents else {
        return Err(TlsError::Config("missing certificate file contents".into()));
    };
    let chain = parse_certs(&files.cert, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Invalid {
        path: files.key.clone(),
        reason: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    let roots = match (&files.ca, rest.first()) {
        (Some(path), Some(pem)) => Some(Arc::new(parse_roots(path, pem)?)),
        _ => None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_error = |e: rustls::Error| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    };

    let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &roots {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::clone(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(pair_error)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    let grpc = server(&[H2])?;
    let http = server(&[H2, HTTP11])?;

    let client = match (role, &roots) {
        (Role::Peer { .. }, Some(roots)) => {
            let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_root_certificates(Arc::clone(roots))
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(pair_error)?;
            config.alpn_protocols = vec![H2.to_vec()];
            Some(Arc::new(config))
        }
        _ => None,
    };
    Ok(Configs { grpc, http, client })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn parse_roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests;
