//! Every policy shipped in `examples/` compiles, in the format it is detected as: the
//! `.yaml`/`.yml` files and the directories (read as envoyproxy/ratelimit directories).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use quorate_server::policy::load::load_path;
use quorate_server::policy::{PolicyFormat, PolicySet};

/// YAML under `examples/` that is not a quorate policy (e.g. a proxy's own config): list
/// it here, or the test tries to compile it.
/// The proxy snippet folders (nginx, Caddy, Traefik, Envoy configs, not policies).
const NOT_POLICIES: &[&str] = &["caddy", "envoy", "grafana", "nginx", "traefik"];

#[test]
fn every_example_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut compiled = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if NOT_POLICIES.contains(&name.as_str()) || !(path.is_dir() || yaml) {
            continue;
        }
        let source = load_path(&path, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let policy = PolicySet::compile(&source).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!policy.limits.is_empty(), "{name} defines no limit");
        compiled.push((name, source.format));
    }
    compiled.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, format) in [
        ("envoy-ratelimit", PolicyFormat::EnvoyRatelimit),
        ("limitador-limits.yaml", PolicyFormat::Limitador),
        ("policy.yaml", PolicyFormat::Quorate),
    ] {
        assert!(
            compiled.contains(&(name.to_string(), format)),
            "{name} as {format:?}: {compiled:?}"
        );
    }
}
