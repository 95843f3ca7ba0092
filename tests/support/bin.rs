//! Finding the `quorate` binary under test.
//!
//! Integration tests of this package cannot use `CARGO_BIN_EXE_quorate` (the binary
//! belongs to another package), and a binary merely found under `target/` may be stale.
//! So the first test of each test process runs
//! `cargo build -p quorate-server --bin quorate` and takes the executable's path from
//! cargo's own JSON report. That honours `CARGO_TARGET_DIR` and any configured target
//! dir, and costs well under a second when the binary is fresh; cargo's build lock makes
//! concurrent test processes (nextest) wait for one build instead of racing.
//!
//! Set `QUORATE_BIN=/path/to/quorate` to test a prebuilt binary instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// Environment variable naming a prebuilt `quorate` binary to test instead of building one.
pub const ENV_BIN: &str = "QUORATE_BIN";

/// The `quorate` binary, built on first use. Panics (failing the test) if it cannot be
/// built, with cargo's output.
pub fn quorate() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os(ENV_BIN) {
        Some(path) => PathBuf::from(path),
        None => build().unwrap_or_else(|e| panic!("cannot build the quorate binary: {e:#}")),
    })
}

fn build() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.toml");
    let output = Command::new(&cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args([
            "-p",
            "quorate-server",
            "--bin",
            "quorate",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        bail!(
            "cargo build failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == "quorate" {
            if let Some(exe) = message["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built quorate-server but reported no `quorate` executable")
}
