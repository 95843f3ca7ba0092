//! An axum app rate-limited per client IP by a quorate cluster.
//!
//! ```text
//! quorate serve --policy policy.yaml     # with a limit named `per_ip`
//! cargo run -p quorate-client --example axum_app -- http://127.0.0.1:8081
//! curl -i http://127.0.0.1:3000/         # 200 with RateLimit headers, then 429
//! ```

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Extension, Router};
use quorate_client::layer::{ClientIp, QuorateLayer};
use quorate_client::{Client, Decision, Fallback};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::builder()
        .endpoints(endpoints)
        // Keep serving if the cluster is down; decisions say Source::FailOpen.
        .fallback(Fallback::Allow)
        .connect()
        .await?;

    // Behind a load balancer on 10.0.0.0/8, the client is the address it forwards.
    let limit = QuorateLayer::new(client, "per_ip")
        .key_from_client_ip(ClientIp::trusting(["10.0.0.0/8".parse()?]));

    let app = Router::new()
        .route(
            "/",
            get(|Extension(d): Extension<Decision>| async move {
                format!("hello; {} requests left\n", d.remaining)
            }),
        )
        .layer(limit);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    // `with_connect_info` hands the layer each request's peer address.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
