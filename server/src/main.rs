//! The `quorate` binary: parse flags, then serve or run one operator command.

use anyhow::Context;
use clap::Parser;
use quorate_server::cli::{Cli, Command};
use quorate_server::{node, ops};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
                )
                .with_writer(std::io::stderr)
                .init();
            let config = args.config()?;
            // Refuse before binding: an unauthenticated peer port must never open off
            // loopback, not even for a moment.
            config.peer_auth.allows_bind(args.peer)?;
            let listeners = node::Listeners::bind(args.grpc, args.http, args.peer)
                .await
                .with_context(|| {
                    format!(
                        "cannot bind gRPC {} / HTTP {} / peer {}",
                        args.grpc, args.http, args.peer
                    )
                })?;
            node::run(config, listeners, shutdown_signal()).await?;
            Ok(())
        }
        Command::Cluster(c) => ops::cluster(c).await,
        Command::Policy(p) => ops::policy(p).await,
        Command::Check(c) => ops::check(c).await,
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
