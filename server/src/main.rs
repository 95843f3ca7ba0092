//! The `quorate` binary: parse flags, then serve or run one operator command, whose
//! result becomes the process exit code (`ops::Exit`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use quorate_server::cli::{Cli, Command};
use quorate_server::{node, ops};
use tracing_subscriber::EnvFilter;

/// Each decision allocates and frees futures of a few KB on whichever worker thread runs
/// it; mimalloc serves those from per-thread pages where glibc's malloc took its slow,
/// locking path (docs/benchmarks.md, "Issue 10 restructure: before and after").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    let result = match cli.command {
        Command::Serve(args) => {
            return match serve(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e:?}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "quorate",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Cluster(c) => ops::cluster(c, output).await,
        Command::Policy(p) => ops::policy(p, output).await,
        Command::Check(c) => ops::check(c, output).await,
    };
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(failure) => {
            failure.report(output);
            ExitCode::from(failure.exit.code())
        }
    }
}

/// `quorate serve`: run a node until Ctrl-C or SIGTERM.
async fn serve(args: quorate_server::cli::ServeArgs) -> anyhow::Result<()> {
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
