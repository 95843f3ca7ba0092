//! Operator commands: the client side of the admin API, used by the CLI.
//!
//! These run at the binary's edge, so they return `anyhow` errors with context.

use anyhow::{bail, Context};
use quorate_proto::v1 as pb;
use serde_json::Value;

use crate::cli::{AdminTarget, CheckArgs, ClusterCommand, PolicyCommand};
use crate::http::admin::{AddLearner, MemberId, PutPolicy, Rollback};

async fn call(
    target: &AdminTarget,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/admin/v1{path}", target.node.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let mut request = client.request(method, &url);
    if let Some(token) = target.token.as_deref().filter(|t| !t.is_empty()) {
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
            target,
        } => {
            call(
                &target,
                Method::POST,
                "/cluster/learners",
                Some(serde_json::to_value(AddLearner { id, grpc, http })?),
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
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let body = serde_json::to_value(PutPolicy { format, source })?;
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

pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let mut client = pb::rate_limiter_client::RateLimiterClient::connect(args.grpc.clone())
        .await
        .with_context(|| format!("cannot connect to {}", args.grpc))?;
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
