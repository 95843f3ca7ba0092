//! Loading, reloading and the peer mTLS handshake, with certificates made by rcgen.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::incoming::accept;
use super::peer::PeerConnector;
use super::*;

/// A CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// (cert PEM, key PEM) for `127.0.0.1` and `localhost`.
    fn leaf(&self, name: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a leaf's files and this CA into `dir` under `prefix`.
    fn files(&self, dir: &Path, prefix: &str) -> TlsFiles {
        let (cert, key) = self.leaf(prefix);
        let files = TlsFiles {
            cert: dir.join(format!("{prefix}.crt")),
            key: dir.join(format!("{prefix}.key")),
            ca: Some(dir.join(format!("{prefix}-ca.crt"))),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(files.ca.as_ref().unwrap(), self.cert.pem()).unwrap();
        files
    }
}

fn peer() -> Role {
    Role::Peer { server_name: None }
}

#[test]
fn unusable_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let files = ca.files(dir.path(), "node");

    std::fs::write(&files.cert, "not a certificate").unwrap();
    let err = Tls::load(files.clone(), Role::Public)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node.crt") && err.contains("no CERTIFICATE"),
        "{err}"
    );

    // A key that belongs to another certificate (also what a half-replaced pair is).
    let (cert, _) = ca.leaf("node");
    let (_, other_key) = ca.leaf("other");
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, other_key).unwrap();
    let err = Tls::load(files.clone(), Role::Public)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node.crt") && err.contains("node.key"),
        "{err}"
    );

    std::fs::write(&files.key, "-----BEGIN NOTHING-----\n").unwrap();
    let err = Tls::load(files.clone(), Role::Public)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node.key") && err.contains("private key"),
        "{err}"
    );
    assert!(!err.contains("BEGIN"), "key material in an error: {err}");

    let missing = TlsFiles {
        cert: dir.path().join("absent.crt"),
        ..files.clone()
    };
    let err = Tls::load(missing, Role::Public).unwrap_err().to_string();
    assert!(err.contains("absent.crt"), "{err}");

    let no_ca = TlsFiles { ca: None, ..files };
    let err = Tls::load(no_ca, peer()).unwrap_err().to_string();
    assert!(err.contains("--peer-ca"), "{err}");
}

#[test]
fn a_bad_reload_keeps_the_live_certificate_and_a_good_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let files = ca.files(dir.path(), "node");
    let tls = Tls::load(files, Role::Public).unwrap();
    let before = tls.server_config(Surface::Grpc);

    let (cert, _) = ca.leaf("node");
    let (_, wrong_key) = ca.leaf("other");
    let ca_pem = ca.cert.pem().into_bytes();
    assert!(tls
        .reload(&[cert.into_bytes(), wrong_key.into_bytes(), ca_pem.clone()])
        .is_err());
    assert!(Arc::ptr_eq(&before, &tls.server_config(Surface::Grpc)));

    let (cert, key) = ca.leaf("node-2");
    tls.reload(&[cert.into_bytes(), key.into_bytes(), ca_pem])
        .unwrap();
    assert!(!Arc::ptr_eq(&before, &tls.server_config(Surface::Grpc)));
    assert_eq!(tls.server_config(Surface::Grpc).alpn_protocols, [b"h2"]);
    assert_eq!(
        tls.server_config(Surface::Http).alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
}

/// Listens with `server` (peer role) and returns its address and accepted connections.
async fn listen(
    server: Arc<Tls>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<(incoming::TlsConnection, std::net::SocketAddr)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, accept(listener, server, Surface::Grpc))
}

/// Dials `addr` with `client`'s peer identity and exchanges one byte each way.
async fn round_trip(client: Arc<Tls>, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let uri: tonic::transport::Uri = format!("http://{addr}").parse().unwrap();
    let io = PeerConnector::new(client).oneshot(uri).await?;
    let mut stream = io.into_inner();
    stream.write_all(b"x").await?;
    stream.flush().await?;
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    Ok(())
}

/// Echoes one byte on each accepted connection.
fn echo(
    mut accepted: tokio::sync::mpsc::Receiver<(incoming::TlsConnection, std::net::SocketAddr)>,
) {
    tokio::spawn(async move {
        while let Some((mut stream, _)) = accepted.recv().await {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).await.is_ok() {
                let _ = stream.write_all(&byte).await;
                let _ = stream.flush().await;
            }
        }
    });
}

#[tokio::test]
async fn peers_must_hold_a_certificate_from_the_cluster_ca_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Ca::new("cluster CA");
    let rogue = Ca::new("rogue CA");
    let server = Tls::load(cluster.files(dir.path(), "a"), peer()).unwrap();
    let member = Tls::load(cluster.files(dir.path(), "b"), peer()).unwrap();
    let outsider = Tls::load(rogue.files(dir.path(), "x"), peer()).unwrap();

    let (addr, accepted) = listen(server).await;
    echo(accepted);
    round_trip(Arc::clone(&member), addr)
        .await
        .expect("a member reaches a member");

    // A client certificate from another CA: the server refuses the handshake.
    let refused = round_trip(Arc::clone(&outsider), addr).await;
    assert!(refused.is_err(), "an outsider's certificate was accepted");

    // A server with another CA's certificate: the member refuses to talk to it.
    let (rogue_addr, rogue_accepted) = listen(outsider).await;
    echo(rogue_accepted);
    let err = round_trip(member, rogue_addr)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_other_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Ca::new("cluster CA");
    let server = Tls::load(cluster.files(dir.path(), "a"), peer()).unwrap();
    let member = Tls::load(cluster.files(dir.path(), "b"), peer()).unwrap();
    let (addr, accepted) = listen(server).await;
    echo(accepted);
    let _silent: Vec<_> =
        futures::future::join_all((0..8).map(|_| tokio::net::TcpStream::connect(addr))).await;
    tokio::time::timeout(Duration::from_secs(5), round_trip(member, addr))
        .await
        .expect("a handshake waited behind silent clients")
        .unwrap();
}
