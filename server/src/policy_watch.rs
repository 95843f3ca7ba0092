//! Hot reload of `--policy FILE`: the node that was started with a policy file keeps it
//! live. Every change to the file's content becomes a new policy version; an invalid
//! file is refused with its line and reason, and the previous policy stays live.
//!
//! The file is polled and its *content* compared, which sees in-place writes, atomic
//! renames and Kubernetes ConfigMap symlink swaps alike; [`crate::file_watch`] says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::context::NodeContext;
use crate::policy::{PolicySet, PolicySource};
use crate::raft::{Command, CommandResponse};

/// A policy file that cannot be made live: its path and why.
#[derive(Debug, Error)]
#[error("policy file {path}: {reason}")]
pub struct PolicyFileError {
    pub path: String,
    pub reason: String,
}

/// Reads and validates a policy file (or a directory of envoyproxy/ratelimit files), in the
/// format detected from its shape; the error names the file, line and reason.
pub fn read_policy_file(path: &Path, stateless: bool) -> Result<PolicySource, PolicyFileError> {
    let refused = |e: crate::policy::PolicyError| PolicyFileError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let source = crate::policy::load::load_path(path, None).map_err(refused)?;
    let set = PolicySet::compile(&source).map_err(refused)?;
    if stateless {
        crate::engine::policy_fits_redis(&set).map_err(|reason| PolicyFileError {
            path: path.display().to_string(),
            reason,
        })?;
    }
    Ok(source)
}

/// [`read_policy_file`] on the blocking pool: reading a directory of files and compiling
/// a large policy is blocking I/O and milliseconds of CPU that must not stall the async
/// workers serving decisions.
pub async fn read_policy_file_off_runtime(
    path: PathBuf,
    stateless: bool,
) -> Result<PolicySource, PolicyFileError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || read_policy_file(&path, stateless))
        .await
        .unwrap_or_else(|e| {
            Err(PolicyFileError {
                path: shown,
                reason: format!("the policy reader stopped: {e}"),
            })
        })
}

/// How often the file is read (a config default, named here too).
pub use crate::config::POLICY_WATCH_INTERVAL as WATCH_INTERVAL;

/// Watches `path` forever, proposing each new valid content while this node leads.
/// `startup_text` is the content read at startup: only a *change* of the file is applied,
/// so a policy applied later through the admin API is not reverted to an unchanged file.
pub async fn watch(
    path: PathBuf,
    ctx: NodeContext,
    interval: Duration,
    startup_text: Option<String>,
) {
    // The last text seen (valid or not) and the last error reported, so a bad file is
    // reported once, not every interval.
    let mut last_text: Option<String> = startup_text;
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        let source = match read_policy_file_off_runtime(path.clone(), ctx.engine.is_stateless())
            .await
        {
            Ok(source) => {
                last_error = None;
                source
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message, "policy file refused; the live policy is unchanged");
                    ctx.policy_notes.note_rejected(&path, &message);
                    ctx.metrics
                        .policy_reloads
                        .with_label_values(&["refused"])
                        .inc();
                    last_error = Some(message);
                }
                continue;
            }
        };
        if last_text.as_deref() == Some(source.text.as_str()) {
            continue;
        }
        let live = ctx.engine.policy();
        if live.version.as_ref().is_some_and(|v| v.source == source) {
            last_text = Some(source.text);
            continue;
        }
        if !ctx.engine.leadership().is_leader() {
            // Only the leader proposes; try again next interval (leadership may return).
            continue;
        }
        let command = Command::SetPolicy {
            ts: crate::engine::wall_nanos(),
            format: source.format.as_str().to_string(),
            source: source.text.clone(),
        };
        match ctx.raft.client_write(command).await {
            Ok(r) => match r.data {
                CommandResponse::Policy(Ok(version)) => {
                    tracing::info!(version, path = %path.display(), "policy file reloaded");
                    ctx.policy_notes
                        .note_policy(version, crate::policy_notes::PolicyOrigin::File);
                    ctx.metrics
                        .policy_reloads
                        .with_label_values(&["applied"])
                        .inc();
                    last_text = Some(source.text);
                }
                other => {
                    tracing::error!(?other, "policy file refused by the state machine");
                    ctx.metrics
                        .policy_reloads
                        .with_label_values(&["refused"])
                        .inc();
                    last_text = Some(source.text);
                }
            },
            Err(e) => tracing::warn!(error = %e, "could not apply the policy file; will retry"),
        }
    }
}
