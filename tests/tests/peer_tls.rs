//! Peer mutual TLS against real processes: a three-node cluster whose peers authenticate
//! with certificates from a cluster CA forms, decides and fails over; a client with no
//! certificate or one from another CA gets no Raft call through (the term is unchanged).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quorate_e2e::certs::{Ca, Leaf};
use quorate_e2e::{eventually, policy, Check, Cluster, NodeOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Peer TLS flags for a node presenting `leaf`, trusting `ca` (files written in `dir`).
fn peer_tls_options(dir: &Path, ca: &Ca, leaf: &Leaf) -> NodeOptions {
    let (cert, key, ca_file) = (
        dir.join("peer.crt"),
        dir.join("peer.key"),
        dir.join("peer-ca.crt"),
    );
    leaf.write(&cert, &key);
    ca.write(&ca_file);
    NodeOptions {
        policy: Some(policy(&[("per_minute", "fixed_window", 1000, "strict")])),
        cluster_secret: None,
        extra_args: vec![
            "--peer-tls-cert".into(),
            cert.display().to_string(),
            "--peer-tls-key".into(),
            key.display().to_string(),
            "--peer-ca".into(),
            ca_file.display().to_string(),
        ],
        ..NodeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_peer_mtls_forms_decides_and_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    // One peer certificate for 127.0.0.1 serves all three local nodes.
    let options = peer_tls_options(dir.path(), &ca, &ca.leaf("peer", 7));
    let mut cluster = Cluster::three(options).await.unwrap();
    let leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();
    for id in [1, 2, 3] {
        let d = cluster
            .node(id)
            .check("per_minute", "k", None)
            .await
            .decided();
        assert!(d.allowed, "via node {id}: {d:?}");
    }

    cluster.kill(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let new_leader = cluster.wait_leader(&rest).await.unwrap();
    assert_ne!(new_leader, leader);
    for id in &rest {
        let d = cluster
            .node(*id)
            .check("per_minute", "k", None)
            .await
            .decided();
        assert!(d.allowed, "after failover, via node {id}: {d:?}");
    }
}

/// Opens a TLS connection to `addr` trusting `server_ca`, presenting `identity` if any,
/// sends an HTTP/2 preface and reads: Ok(bytes) if the server talked back.
async fn talk(
    addr: std::net::SocketAddr,
    server_ca: &Ca,
    identity: Option<&Leaf>,
) -> std::io::Result<usize> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // HTTP/2 preface and an empty SETTINGS frame; the server answers with its SETTINGS.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    stream.flush().await?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(0)) => Err(std::io::Error::other("closed")),
        Ok(result) => result,
        Err(_) => Err(std::io::Error::other("no answer")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_cluster_certificate_are_refused_and_the_term_stays() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster CA");
    let rogue = Ca::new("rogue CA");
    let options = peer_tls_options(dir.path(), &ca, &ca.leaf("peer", 7));
    let cluster = Cluster::single(options).await.unwrap();
    let node = cluster.node(1);
    let term = node.status().await.unwrap().term;

    // A member's certificate gets an HTTP/2 answer: the probe itself works.
    let member = ca.leaf("member", 8);
    assert!(talk(node.peer, &ca, Some(&member)).await.is_ok());
    // No certificate, or one from another CA: the handshake is refused.
    assert!(
        talk(node.peer, &ca, None).await.is_err(),
        "no client certificate got in"
    );
    let outsider = rogue.leaf("outsider", 9);
    assert!(
        talk(node.peer, &ca, Some(&outsider)).await.is_err(),
        "a rogue CA's certificate got in"
    );
    // Plain text gets nothing either.
    let mut plain = tokio::net::TcpStream::connect(node.peer).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let answer = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    assert!(
        // An HTTP/2 frame header is 9 bytes, its 4th byte the type (4: SETTINGS).
        !matches!(answer, Ok(Ok(n)) if n >= 9 && buf[3] == 4),
        "a plain-text client got an HTTP/2 SETTINGS frame"
    );

    let after = eventually(Duration::from_secs(5), "status", || async {
        node.status().await.ok()
    })
    .await
    .unwrap();
    assert_eq!(after.term, term, "the term moved");
    assert_eq!(after.leader, Some(1));
}
