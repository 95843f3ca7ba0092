//! Accepting TLS connections for tonic and axum: TCP accept, TCP_NODELAY, the handshake
//! under a deadline and a cap on handshakes in flight, then the established stream handed
//! to the server.
//!
//! Handshakes run in their own tasks, so a slow or silent client delays nobody else; the
//! deadline frees its slot, and the cap bounds what a flood of half-open connections can
//! hold (past it, accepting waits and new connections queue in the kernel's backlog).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::{Surface, Tls};

/// Longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in flight per listener.
pub const MAX_HANDSHAKES: usize = 1024;

/// An accepted, established TLS connection.
pub type TlsConnection = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts on `listener` until the returned receiver is dropped, yielding each connection
/// whose handshake completed in time.
pub fn accept(
    listener: TcpListener,
    tls: Arc<Tls>,
    surface: Surface,
) -> mpsc::Receiver<(TlsConnection, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, surface, tx));
    rx
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Tls>,
    surface: Surface,
    tx: mpsc::Sender<(TlsConnection, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let slot = tokio::select! {
            _ = tx.closed() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a response written in two segments waits ~40 ms for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = TlsAcceptor::from(tls.server_config(surface));
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, addr)).await;
                }
                // Debug, not warn: any client can cause these, as often as it likes.
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves a tonic router on `listener`, over TLS when `tls` is given (else plain TCP
/// with TCP_NODELAY), until `shutdown` completes.
pub fn spawn_grpc(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    match tls {
        Some(tls) => {
            let incoming = ReceiverStream::new(accept(listener, tls, Surface::Grpc))
                .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            // tonic ignores `Server::tcp_nodelay` for a listener it did not bind.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )),
    }
}

/// Serves an axum app on `listener`, over TLS when `tls` is given, until `shutdown`
/// completes. Handlers see the client's address as `ConnectInfo<SocketAddr>` either way.
pub fn spawn_http(
    app: axum::Router,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<std::io::Result<()>>> {
    use axum::serve::ListenerExt;
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    Ok(match tls {
        Some(tls) => {
            let local_addr = listener.local_addr()?;
            let listener = TlsListener {
                connections: accept(listener, tls, Surface::Http),
                local_addr,
            }
            // axum provides `ConnectInfo<SocketAddr>` for any listener wrapped by `tap_io`;
            // the tap itself does nothing (TCP_NODELAY is already set at accept).
            .tap_io(|_| {});
            let server = axum::serve(listener, make_service).with_graceful_shutdown(shutdown);
            tokio::spawn(async move { server.await })
        }
        None => {
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            let server = axum::serve(listener, make_service).with_graceful_shutdown(shutdown);
            tokio::spawn(async move { server.await })
        }
    })
}

/// The established TLS connections of one listener, as an axum listener.
#[derive(Debug)]
struct TlsListener {
    connections: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConnection, SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this receiver is gone; never reached.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}
