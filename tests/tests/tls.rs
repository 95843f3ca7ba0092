//! TLS on the public ports, against the real binary: the SDK, the CLI and HTTP clients
//! over https with the CA; plain text and certificate-less clients refused; certificates
//! reloaded without a restart (in-place write, rename, Kubernetes `..data` symlink swap)
//! and a broken new certificate ignored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quorate_e2e::certs::{presented, Ca, Leaf};
use quorate_e2e::{eventually, policy, NodeOptions, TestNode};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// The `serve` flags for these TLS files.
fn tls_setup(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    if let Some(ca) = client_ca {
        args.extend(["--client-ca".to_string(), ca.display().to_string()]);
    }
    args
}

async fn start(dir: &Path, tls: &[String]) -> TestNode {
    let options = NodeOptions {
        policy: Some(policy(&[("per_minute", "fixed_window", 100, "strict")])),
        extra_args: tls.to_vec(),
        ..NodeOptions::default()
    };
    let mut node = TestNode::spawn(1, &dir.join("node"), &options, None).unwrap();
    if let Err(e) = node.wait_ready().await {
        panic!("{e:#}\n{}", node.logs(40));
    }
    node
}

fn sdk(node: &TestNode) -> quorate_client::Builder {
    let mut builder = quorate_client::Client::builder();
    builder
        .endpoint(format!("https://{}", node.grpc))
        .timeout(Duration::from_secs(5))
        .max_attempts(1);
    builder
}

fn https_client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some(leaf) = identity {
        let pem = format!("{}\n{}", leaf.cert_pem, leaf.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(quorate_e2e::bin::quorate())
        .args(args)
        .env_remove("QUORATE_ADMIN_TOKEN")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_cli_and_http_work_over_https_and_plain_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("quorate test CA");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    ca.leaf("node-1", 1).write(&cert, &key);
    let node = start(dir.path(), &tls_setup(&cert, &key, None)).await;

    // The SDK with the CA.
    let client = sdk(&node).ca_file(&ca_file).connect().await.unwrap();
    let decision = client.check("per_minute", "alice", 1).await.unwrap();
    assert!(decision.allowed, "{decision:?}");

    // The SDK trusting only the system roots does not accept a private CA's certificate.
    let untrusting = sdk(&node).connect().await.unwrap();
    assert!(untrusting.check("per_minute", "alice", 1).await.is_err());

    // The CLI: `check` over gRPC, and an admin call (which reaching over TLS is the point
    // here: an HTTP error status means the TLS connection worked).
    let grpc_url = format!("https://{}", node.grpc);
    let ca_arg = ca_file.display().to_string();
    let out = cli(&[
        "check",
        "--limit",
        "per_minute",
        "--key",
        "bob",
        "--grpc",
        &grpc_url,
        "--ca-file",
        &ca_arg,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALLOWED"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "check",
        "--limit",
        "per_minute",
        "--key",
        "bob",
        "--grpc",
        &grpc_url,
    ]);
    assert!(!out.status.success(), "CLI trusted an unknown CA");
    let http_url = format!("https://{}", node.http);
    let out = cli(&[
        "cluster",
        "status",
        "--node",
        &http_url,
        "--ca-file",
        &ca_arg,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("cannot reach"), "{stderr}");
    let out = cli(&["cluster", "status", "--node", &http_url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cannot reach"),
        "{stderr}"
    );

    // HTTP port: https with the CA (HTTP/1.1 and HTTP/2), plain http refused.
    let https = https_client(&ca, None);
    let health = https
        .get(format!("https://{}/healthz", node.http))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let refused = plain
        .get(format!("http://{}/healthz", node.http))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "plain HTTP was answered: {:?}",
        refused.map(|r| r.status())
    );

    // gRPC port: a plain-text client gets no decision.
    let mut plain_grpc = quorate_e2e::api::client(node.grpc);
    let refused = quorate_e2e::api::check(&mut plain_grpc, "per_minute", "mallory", None).await;
    assert!(refused.is_err(), "plain-text gRPC was answered");

    // The node is unharmed by all that.
    assert!(
        client
            .check("per_minute", "alice", 1)
            .await
            .unwrap()
            .allowed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_holding_its_certificates_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("quorate test CA");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let clients_ca = Ca::new("clients CA");
    let clients_ca_file = clients_ca.write(&dir.path().join("clients-ca.crt"));
    let rogue = Ca::new("rogue CA");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    ca.leaf("node-1", 1).write(&cert, &key);
    let node = start(dir.path(), &tls_setup(&cert, &key, Some(&clients_ca_file))).await;

    let write_identity = |leaf: &Leaf, name: &str| {
        let (c, k) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        leaf.write(&c, &k);
        (c, k)
    };
    let good = clients_ca.leaf("envoy", 10);
    let (good_cert, good_key) = write_identity(&good, "good");
    let bad = rogue.leaf("envoy", 10);
    let (bad_cert, bad_key) = write_identity(&bad, "bad");

    let anonymous = sdk(&node).ca_file(&ca_file).connect().await.unwrap();
    assert!(
        anonymous.check("per_minute", "alice", 1).await.is_err(),
        "a client without a certificate got a decision"
    );
    let outsider = sdk(&node)
        .ca_file(&ca_file)
        .identity_files(&bad_cert, &bad_key)
        .connect()
        .await
        .unwrap();
    assert!(
        outsider.check("per_minute", "alice", 1).await.is_err(),
        "a certificate from another CA was accepted"
    );
    let member = sdk(&node)
        .ca_file(&ca_file)
        .identity_files(&good_cert, &good_key)
        .connect()
        .await
        .unwrap();
    assert!(
        member
            .check("per_minute", "alice", 1)
            .await
            .unwrap()
            .allowed
    );

    // The HTTP port asks for the same.
    let url = format!("https://{}/healthz", node.http);
    assert!(https_client(&ca, None).get(&url).send().await.is_err());
    assert!(https_client(&ca, Some(&bad))
        .get(&url)
        .send()
        .await
        .is_err());
    let ok = https_client(&ca, Some(&good))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success());
}

/// Kubernetes mounts a Secret as `dir/tls.crt -> ..data/tls.crt`, `..data -> ..<ts>/`,
/// and updates it by writing a new `..<ts>/` and renaming a new `..data` link over the
/// old one.
struct SecretMount {
    root: PathBuf,
    generation: u32,
}

impl SecretMount {
    fn new(root: &Path, first: &Leaf) -> SecretMount {
        std::fs::create_dir_all(root).unwrap();
        let mut mount = SecretMount {
            root: root.to_path_buf(),
            generation: 0,
        };
        let data = mount.write_generation(first);
        std::os::unix::fs::symlink(&data, root.join("..data")).unwrap();
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(file), root.join(file)).unwrap();
        }
        mount
    }

    fn write_generation(&mut self, leaf: &Leaf) -> PathBuf {
        self.generation += 1;
        let name = format!("..2026_11_30_{:02}", self.generation);
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        leaf.write(&dir.join("tls.crt"), &dir.join("tls.key"));
        PathBuf::from(name)
    }

    /// The files of the live generation, for in-place and rename updates.
    fn live(&self) -> (PathBuf, PathBuf) {
        let data = self.root.join("..data");
        (data.join("tls.crt"), data.join("tls.key"))
    }

    /// The atomic swap, as the kubelet does it.
    fn swap(&mut self, leaf: &Leaf) {
        let data = self.write_generation(leaf);
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

async fn wait_presented(addr: std::net::SocketAddr, ca: &Ca, leaf: &Leaf, what: &str) {
    eventually(RELOAD_TIMEOUT, what, || async {
        presented(addr, ca)
            .await
            .ok()
            .filter(|der| *der == leaf.der)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_a_restart_and_a_broken_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("quorate test CA");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let first = ca.leaf("node-1", 1);
    let mut mount = SecretMount::new(&dir.path().join("secret"), &first);
    let tls = tls_setup(
        &dir.path().join("secret/tls.crt"),
        &dir.path().join("secret/tls.key"),
        None,
    );
    let node = start(dir.path(), &tls).await;
    let pid = node.pid();

    assert_eq!(presented(node.grpc, &ca).await.unwrap(), first.der);
    assert_eq!(presented(node.http, &ca).await.unwrap(), first.der);
    // A connection made before the reloads, used after them.
    let early = sdk(&node).ca_file(&ca_file).connect().await.unwrap();
    assert!(early.check("per_minute", "alice", 1).await.unwrap().allowed);

    // 1. In place: the files are rewritten (certificate, then key: for a moment they do
    //    not match, which is refused until the key arrives).
    let second = ca.leaf("node-1 second", 2);
    let (live_cert, live_key) = mount.live();
    second.write(&live_cert, &live_key);
    wait_presented(node.grpc, &ca, &second, "the in-place certificate on gRPC").await;
    wait_presented(node.http, &ca, &second, "the in-place certificate on HTTP").await;

    // 2. Atomic rename of new files over the old ones.
    let third = ca.leaf("node-1 third", 3);
    let (tmp_cert, tmp_key) = (dir.path().join("new.crt"), dir.path().join("new.key"));
    third.write(&tmp_cert, &tmp_key);
    std::fs::rename(&tmp_key, &live_key).unwrap();
    std::fs::rename(&tmp_cert, &live_cert).unwrap();
    wait_presented(node.grpc, &ca, &third, "the renamed certificate").await;

    // 3. The Kubernetes `..data` symlink swap.
    let fourth = ca.leaf("node-1 fourth", 4);
    mount.swap(&fourth);
    wait_presented(
        node.grpc,
        &ca,
        &fourth,
        "the certificate after the symlink swap",
    )
    .await;
    wait_presented(node.http, &ca, &fourth, "the swapped certificate on HTTP").await;

    // 4. A broken new certificate is refused and the last good one stays.
    let (live_cert, _) = mount.live();
    std::fs::write(&live_cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    eventually(RELOAD_TIMEOUT, "the refusal in the log", || {
        let logged = node.stderr().contains("new TLS certificate files refused");
        async move { logged.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs(40)));
    assert_eq!(presented(node.grpc, &ca).await.unwrap(), fourth.der);
    assert_eq!(presented(node.http, &ca).await.unwrap(), fourth.der);
    let fresh = sdk(&node).ca_file(&ca_file).connect().await.unwrap();
    assert!(fresh.check("per_minute", "bob", 1).await.unwrap().allowed);

    // No restart happened, and the early connection still works.
    assert_eq!(node.pid(), pid);
    assert!(early.check("per_minute", "alice", 1).await.unwrap().allowed);
}
