//! Operator commands: the client side of the admin API, used by the CLI, and the offline
//! `policy test`.
//!
//! These run at the binary's edge, so they return `anyhow` errors with context.

use anyhow::{anyhow, bail, Context};
use quorate_proto::v1 as pb;
use serde_json::Value;

use crate::cli::{
    AdminTarget, CheckArgs, ClientTlsArgs, ClusterCommand, PolicyCommand, PolicyTestArgs,
};
use crate::decide::simulate;
use crate::http::admin::{AddLearner, MemberId, PutPolicy, Rollback};
use crate::policy::{load, PolicySet};

fn read_file(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The HTTP client for admin calls: with `--ca-file`, only that CA is trusted (a private
/// CA is the usual case); with `--client-cert`/`--client-key`, they are presented.
fn admin_client(tls: &ClientTlsArgs) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &tls.ca_file {
        let pem = read_file(path, "CA file")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let mut pem = read_file(cert, "client certificate")?;
        pem.push(b'\n');
        pem.extend(read_file(key, "client key")?);
        let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
            format!(
                "{} / {}: not a PEM certificate and key",
                cert.display(),
                key.display()
            )
        })?;
        builder = builder.identity(identity);
    }
    builder.build().context("cannot set up the HTTP client")
}

/// A gRPC channel to `uri`; an `https://` address uses TLS with `tls`'s files.
async fn grpc_channel(uri: &str, tls: &ClientTlsArgs) -> anyhow::Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut endpoint =
        Endpoint::from_shared(uri.to_string()).with_context(|| format!("invalid address {uri}"))?;
    if uri.starts_with("https://") {
        let mut config = ClientTlsConfig::new();
        config = match &tls.ca_file {
            Some(path) => config.ca_certificate(Certificate::from_pem(read_file(path, "CA file")?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            config = config.identity(Identity::from_pem(
                read_file(cert, "client certificate")?,
                read_file(key, "client key")?,
            ));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {uri}"))
}

async fn call(
    target: &AdminTarget,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/admin/v1{path}", target.node.trim_end_matches('/'));
    let client = admin_client(&target.tls)?;
    let mut request = client.request(method, &url);
    if let Some(token) = target.token()? {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let error = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("(no message)");
        match value.get("line").and_then(Value::as_u64) {
            // Errors naming a file (a directory policy) already say which line.
            Some(line)
                if error.contains(&format!("line {line}:")) && !error.starts_with("line ") =>
            {
                bail!("{status}: {error}")
            }
            Some(line) => bail!(
                "{status}: line {line}: {error}",
                error = error.trim_start_matches(&format!("line {line}: "))
            ),
            None => bail!("{status}: {error}"),
        }
    }
    Ok(value)
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let value = match command {
        ClusterCommand::Init(t) => call(&t, Method::POST, "/cluster/init", None).await?,
        ClusterCommand::AddLearner {
            id,
            grpc,
            http,
            peer,
            target,
        } => {
            call(
                &target,
                Method::POST,
                "/cluster/learners",
                Some(serde_json::to_value(AddLearner {
                    id,
                    grpc,
                    http,
                    peer,
                })?),
            )
            .await?
        }
        ClusterCommand::Promote { id, target } => {
            call(
                &target,
                Method::POST,
                "/cluster/promote",
                Some(serde_json::to_value(MemberId { id })?),
            )
            .await?
        }
        ClusterCommand::Remove { id, target } => {
            call(
                &target,
                Method::POST,
                "/cluster/remove",
                Some(serde_json::to_value(MemberId { id })?),
            )
            .await?
        }
        ClusterCommand::Status(t) => call(&t, Method::GET, "/cluster/status", None).await?,
    };
    print(&value);
    Ok(())
}

pub async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        PolicyCommand::Apply {
            file,
            format,
            target,
        } => {
            let format = load::parse_format_arg(&format).map_err(|e| anyhow!("{e}"))?;
            let source = load::load_path(&file, format)
                .map_err(|e| anyhow!("cannot read policy {}: {e}", file.display()))?;
            let body = serde_json::to_value(PutPolicy {
                format: source.format.as_str().to_string(),
                source: source.text,
            })?;
            let value = call(&target, Method::PUT, "/policy", Some(body))
                .await
                .with_context(|| {
                    format!(
                        "policy {} was refused; the live policy is unchanged",
                        file.display()
                    )
                })?;
            print(&value);
        }
        PolicyCommand::Test(args) => policy_test(args)?,
        PolicyCommand::Get(t) => {
            let value = call(&t, Method::GET, "/policy", None).await?;
            let version = value.get("version").and_then(Value::as_u64);
            println!(
                "# version: {}",
                version.map_or("none".to_string(), |v| v.to_string())
            );
            if let Some(r) = value.get("rollback_of").and_then(Value::as_u64) {
                println!("# rollback of version {r}");
            }
            if let Some(source) = value.get("source").and_then(Value::as_str) {
                print!("{source}");
            }
        }
        PolicyCommand::History(t) => print(&call(&t, Method::GET, "/policy/history", None).await?),
        PolicyCommand::Rollback { version, target } => print(
            &call(
                &target,
                Method::POST,
                "/policy/rollback",
                Some(serde_json::to_value(Rollback { version })?),
            )
            .await?,
        ),
    }
    Ok(())
}

/// `quorate policy test`: compiles the policy and evaluates the samples offline.
fn policy_test(args: PolicyTestArgs) -> anyhow::Result<()> {
    let file = args.file.display().to_string();
    let format = load::parse_format_arg(&args.format).map_err(|e| anyhow!("{e}"))?;
    let compiled = load::load_path(&args.file, format)
        .and_then(|source| PolicySet::compile(&source).map(|policy| (source.format, policy)));
    let (format, policy) = match compiled {
        Ok(compiled) => compiled,
        Err(e) => {
            if args.json {
                let value = serde_json::json!({
                    "file": file,
                    "valid": false,
                    "error": {"file": e.file, "line": e.line, "reason": e.reason},
                });
                emit(&format!("{value:#}\n"));
            }
            bail!("policy {file} is invalid: {e}");
        }
    };
    let mut samples = Vec::new();
    for (i, json) in args.requests.iter().enumerate() {
        let sample =
            simulate::parse_sample(json).map_err(|e| anyhow!("--request #{}: {e}", i + 1))?;
        samples.push(sample);
    }
    if let Some(path) = &args.requests_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let more =
            simulate::parse_samples_file(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        samples.extend(more);
    }
    if samples.len() > simulate::MAX_SAMPLES {
        bail!("at most {} requests per run", simulate::MAX_SAMPLES);
    }
    let mut authz = Vec::new();
    for (i, json) in args.authz.iter().enumerate() {
        authz.push(authz_sample(&policy, json).map_err(|e| anyhow!("--authz #{}: {e}", i + 1))?);
    }
    let reports = simulate::simulate(&policy, &samples);
    let warnings = policy.warnings();
    let out = if args.json {
        let value = serde_json::json!({
            "file": file,
            "valid": true,
            "warnings": warnings,
            "format": format.as_str(),
            "domains": policy.domains.keys().collect::<Vec<_>>(),
            "limits": policy.limits.len(),
            "requests": reports,
            "authz": authz,
        });
        format!("{value:#}\n")
    } else {
        let mut out = format!(
            "policy {file} ({}) is valid: {} domain(s), {} limit(s)\n",
            format.as_str(),
            policy.domains.len(),
            policy.limits.len()
        );
        for w in &warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if samples.is_empty() && authz.is_empty() {
            out.push_str("no --request or --requests-file given: nothing to evaluate\n");
        }
        for a in &authz {
            let line = match (&a["refused"], &a["route"]) {
                (serde_json::Value::String(why), _) => format!("refused (400): {why}"),
                (_, serde_json::Value::String(r)) => format!("route {r}"),
                _ => "no route (defaults.unmatched applies)".to_string(),
            };
            out.push_str(&format!(
                "authz {} {} {}: canonical {} -> {line}\n",
                a["method"].as_str().unwrap_or(""),
                a["host"].as_str().unwrap_or(""),
                a["path"].as_str().unwrap_or(""),
                a["canonical_path"].as_str().unwrap_or("-"),
            ));
        }
        out.push_str(&simulate::render_text(&reports));
        out
    };
    emit(&out);
    Ok(())
}

/// One `--authz` sample: `{"method", "host", "path"}` → its canonical form and route.
fn authz_sample(policy: &PolicySet, json: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str, default: &str| match v.get(name) {
        None => Ok(default.to_string()),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{name}` must be a string, got {other}")),
    };
    let method = field("method", "GET")?;
    let host = field("host", "")?;
    let path = v
        .get("path")
        .and_then(|p| p.as_str())
        .ok_or("`path` (a string) is required")?
        .to_string();
    let mut out = serde_json::json!({"method": method, "host": host, "path": path});
    match crate::decide::authz::route_for(&policy.authz, &method, &host, &path) {
        Ok((canonical, route)) => {
            out["canonical_path"] = canonical.path.into();
            out["canonical_host"] = canonical.host.into();
            out["route"] = route.into();
        }
        Err(why) => out["refused"] = why.into(),
    }
    Ok(out)
}

/// Writes a report to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let channel = grpc_channel(&args.grpc, &args.tls).await?;
    let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel);
    let response = client
        .check(pb::CheckRequest {
            hits: vec![pb::Hit {
                limit: args.limit,
                key: args.key,
                cost: Some(args.cost),
            }],
        })
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    for d in &response.decisions {
        println!(
            "{} limit={} value={} remaining={} reset_after_ms={}{}",
            if d.allowed { "ALLOWED" } else { "DENIED" },
            d.limit,
            d.limit_value,
            d.remaining,
            d.reset_after_ms,
            d.retry_after_ms
                .map(|r| format!(" retry_after_ms={r}"))
                .unwrap_or_default()
        );
    }
    if !response.allowed {
        std::process::exit(1);
    }
    Ok(())
}
