//! The client side of peer mTLS: a connector for tonic channels that presents this node's
//! peer certificate and checks the peer's against the cluster CA.
//!
//! The TLS configuration is read when each connection is made, so a reloaded certificate
//! is presented from the next connection on (tonic reconnects a channel transparently).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Tls;

/// Longest the TLS handshake with a peer may take (the TCP connect has its own timeout).
const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Dials peers over mutual TLS. Give it to [`Endpoint::connect_with_connector_lazy`]
/// with an `http://` URI (the scheme only tells tonic not to add TLS of its own).
#[derive(Debug, Clone)]
pub struct PeerConnector {
    tls: Arc<Tls>,
}

impl PeerConnector {
    /// `tls` must have been loaded with [`super::Role::Peer`].
    pub fn new(tls: Arc<Tls>) -> PeerConnector {
        PeerConnector { tls }
    }

    /// A lazily connecting channel through this connector.
    pub fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.clone())
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let tls = Arc::clone(&self.tls);
        Box::pin(async move {
            let invalid =
                |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("peer address {uri} has no host")))?;
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("peer address {uri} has no port")))?;
            let config = tls
                .client_config()
                .ok_or_else(|| invalid("peer TLS is not configured for outbound calls".into()))?;
            let name = tls
                .peer_server_name(host)
                .map_err(|e| invalid(e.to_string()))?;
            let tcp =
                TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
                    .await?;
            tcp.set_nodelay(true)?;
            let handshake = TlsConnector::from(config).connect(name, tcp);
            let stream = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "peer TLS handshake timed out",
                    )
                })??;
            Ok(TokioIo::new(stream))
        })
    }
}
