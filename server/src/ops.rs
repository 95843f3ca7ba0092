//! Operator commands: the client side of the admin API, used by the CLI, `check` through
//! the SDK, and the offline `policy test`.
//!
//! These run at the binary's edge, so they work with `anyhow` errors with context; each
//! command's result is an [`Exit`] (the process exit code a script branches on), and a
//! failure carries its exit code with it ([`Failure`]).

use std::collections::VecDeque;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use crate::cli::{
    AdminTarget, CheckArgs, ClientTlsArgs, ClusterCommand, Output, PolicyCommand, PolicyTestArgs,
};
use crate::decide::simulate;
use crate::policy::{load, PolicySet};

/// How a client command ended: the process exit code. `--help` lists them
/// ([`crate::cli::EXIT_CODES`]); README documents them. Never renumber one: scripts
/// branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Allowed, or the command did what it was asked.
    Ok = 0,
    /// `check`: the hit was denied.
    Denied = 1,
    /// Bad flags or arguments (clap exits with 2 itself; listed for completeness).
    Usage = 2,
    /// No node reachable, no leader, or the deadline passed.
    Unavailable = 3,
    /// The request was refused as invalid: bad argument, unknown limit, invalid policy,
    /// a conflict (e.g. promoting a non-learner), or a local file that cannot be read.
    Rejected = 4,
    /// The admin token is missing or wrong.
    Unauthenticated = 5,
    /// Anything else: an internal error on the node, an answer that makes no sense.
    Failed = 6,
}

impl Exit {
    /// The name `--output json` prints in `{"error": {"kind": ...}}`.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Denied => "denied",
            Exit::Usage => "usage",
            Exit::Unavailable => "unavailable",
            Exit::Rejected => "rejected",
            Exit::Unauthenticated => "unauthenticated",
            Exit::Failed => "failed",
        }
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A client command that failed: why, and which exit code says so.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
    /// The command already wrote its JSON document (e.g. `policy test` on an invalid
    /// policy), so the report adds none.
    pub stdout_written: bool,
}

impl Failure {
    fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            exit,
            error: error.into(),
            stdout_written: false,
        }
    }

    /// Reports the failure: the message on stderr, and with `--output json` also
    /// `{"error": {"kind", "exit_code", "message"}}` on stdout, so a script reading
    /// stdout always gets one JSON document.
    pub fn report(&self, output: Output) {
        eprintln!("error: {:#}", self.error);
        if output == Output::Json && !self.stdout_written {
            emit_json(&json!({
                "error": {
                    "kind": self.exit.name(),
                    "exit_code": self.exit.code(),
                    "message": format!("{:#}", self.error),
                }
            }));
        }
    }
}

/// Attaches an exit code to an error: `fallible().or_exit(Exit::Rejected)?`.
trait OrExit<T> {
    fn or_exit(self, exit: Exit) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, exit: Exit) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(exit, e))
    }
}

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

/// The exit code an admin API status means.
fn exit_for_status(status: reqwest::StatusCode) -> Exit {
    use reqwest::StatusCode as S;
    match status {
        S::UNAUTHORIZED | S::FORBIDDEN => Exit::Unauthenticated,
        S::BAD_GATEWAY | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT => Exit::Unavailable,
        s if s.is_client_error() => Exit::Rejected,
        _ => Exit::Failed,
    }
}

/// The error an admin API answer carries, with the policy line it names (if any).
fn admin_error(status: reqwest::StatusCode, value: &Value) -> anyhow::Error {
    let error = value
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("(no message)");
    match value.get("line").and_then(Value::as_u64) {
        // Errors naming a file (a directory policy) already say which line.
        Some(line) if error.contains(&format!("line {line}:")) && !error.starts_with("line ") => {
            anyhow!("{status}: {error}")
        }
        Some(line) => anyhow!(
            "{status}: line {line}: {error}",
            error = error.trim_start_matches(&format!("line {line}: "))
        ),
        None => anyhow!("{status}: {error}"),
    }
}

/// Calls the admin API at `path`: tries the endpoints in order until one answers, and
/// goes to the leader a "not the leader" (503) answer names. A write is resent to the next
/// endpoint only when it certainly did not take effect: the connection was refused, or the
/// node answered 503 (not the leader / no leader yet). A write whose answer was lost, or
/// that a follower failed to forward (502), is not resent: it may have been applied.
async fn call(
    target: &AdminTarget,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let client = admin_client(&target.tls).or_exit(Exit::Rejected)?;
    let token = target.token().or_exit(Exit::Rejected)?;
    let endpoints = target.endpoints();
    // Enough for every configured endpoint plus a few leader hops, and never a loop.
    let max_attempts = endpoints.len() + 3;
    let mut queue: VecDeque<String> = endpoints.into();
    let mut last: Option<Failure> = None;
    let mut attempts = 0;
    while let Some(base) = queue.pop_front() {
        attempts += 1;
        if attempts > max_attempts {
            break;
        }
        let base = base.trim_end_matches('/').to_string();
        let url = format!("{base}/admin/v1{path}");
        let mut request = client.request(method.clone(), &url);
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let failure = Failure::new(
                    Exit::Unavailable,
                    anyhow::Error::new(e).context(format!("cannot reach {url}")),
                );
                let nothing_sent = failure
                    .error
                    .downcast_ref::<reqwest::Error>()
                    .is_some_and(reqwest::Error::is_connect);
                if nothing_sent || method == reqwest::Method::GET {
                    last = Some(failure);
                    continue;
                }
                return Err(Failure::new(
                    Exit::Unavailable,
                    failure
                        .error
                        .context("the call may or may not have taken effect"),
                ));
            }
        };
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let failure = Failure::new(exit_for_status(status), admin_error(status, &value));
        if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(failure);
        }
        if let Some(leader) = value.get("leader_http").and_then(Value::as_str) {
            // The leader is reached the way this member was (http or https).
            let scheme = if base.starts_with("https://") {
                "https"
            } else {
                "http"
            };
            queue.push_front(format!("{scheme}://{leader}"));
        }
        last = Some(failure);
    }
    Err(last.unwrap_or_else(|| Failure::new(Exit::Unavailable, anyhow!("no endpoint answered"))))
}

/// Writes one JSON document to stdout.
fn emit_json(value: &Value) {
    emit(&format!("{value:#}\n"));
}

/// Prints an admin answer: as it came with `--output json`; else its top-level fields,
/// one `key: value` per line.
fn print_answer(value: &Value, output: Output) {
    match (output, value) {
        (Output::Json, _) => emit_json(value),
        (Output::Human, Value::Object(fields)) => {
            let mut out = String::new();
            for (key, v) in fields {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!("{key}: {v}\n"));
            }
            emit(&out);
        }
        (Output::Human, other) => emit(&format!("{other:#}\n")),
    }
}

fn or_dash(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `cluster status` for people: the node's view, then one line per member.
fn render_status(s: &Value) -> String {
    let mut out = format!(
        "node {} is {}; leader {}, term {}, policy version {}, {} counters\n\
         log: last {}, applied {}, snapshot {}, purged {}\n",
        or_dash(&s["id"]),
        or_dash(&s["state"]),
        or_dash(&s["leader"]),
        or_dash(&s["term"]),
        or_dash(&s["policy_version"]),
        or_dash(&s["counters"]),
        or_dash(&s["last_log_index"]),
        or_dash(&s["last_applied"]),
        or_dash(&s["snapshot_index"]),
        or_dash(&s["purged_index"]),
    );
    out.push_str(&format!(
        "{:<6} {:<8} {:<22} {:<22} {:<22} {:>8} {:>6}\n",
        "ID", "ROLE", "GRPC", "HTTP", "PEER", "MATCHED", "LAG"
    ));
    for m in s["members"].as_array().into_iter().flatten() {
        let role = if m["id"] == s["leader"] {
            "leader"
        } else if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        out.push_str(&format!(
            "{:<6} {:<8} {:<22} {:<22} {:<22} {:>8} {:>6}\n",
            or_dash(&m["id"]),
            role,
            or_dash(&m["grpc"]),
            or_dash(&m["http"]),
            or_dash(&m["peer"]),
            or_dash(&m["matched_index"]),
            or_dash(&m["lag"]),
        ));
    }
    out
}

/// `quorate cluster ...`.
pub async fn cluster(command: ClusterCommand, output: Output) -> Result<Exit, Failure> {
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
            let body = json!({"id": id, "grpc": grpc, "http": http, "peer": peer});
            call(&target, Method::POST, "/cluster/learners", Some(body)).await?
        }
        ClusterCommand::Promote { id, target } => {
            call(
                &target,
                Method::POST,
                "/cluster/promote",
                Some(json!({"id": id})),
            )
            .await?
        }
        ClusterCommand::Remove { id, target } => {
            call(
                &target,
                Method::POST,
                "/cluster/remove",
                Some(json!({"id": id})),
            )
            .await?
        }
        ClusterCommand::Status(t) => {
            let value = call(&t, Method::GET, "/cluster/status", None).await?;
            match output {
                Output::Json => emit_json(&value),
                Output::Human => emit(&render_status(&value)),
            }
            return Ok(Exit::Ok);
        }
    };
    print_answer(&value, output);
    Ok(Exit::Ok)
}

/// `quorate policy ...`.
pub async fn policy(command: PolicyCommand, output: Output) -> Result<Exit, Failure> {
    use reqwest::Method;
    match command {
        PolicyCommand::Apply {
            file,
            format,
            target,
        } => {
            let format = load::parse_format_arg(&format)
                .map_err(|e| anyhow!("{e}"))
                .or_exit(Exit::Rejected)?;
            let source = load::load_path(&file, format)
                .map_err(|e| anyhow!("cannot read policy {}: {e}", file.display()))
                .or_exit(Exit::Rejected)?;
            let body = json!({"format": source.format.as_str(), "source": source.text});
            let value = call(&target, Method::PUT, "/policy", Some(body))
                .await
                .map_err(|f| Failure {
                    error: f.error.context(format!(
                        "policy {} was refused; the live policy is unchanged",
                        file.display()
                    )),
                    ..f
                })?;
            match output {
                Output::Json => emit_json(&value),
                Output::Human => emit(&format!(
                    "policy {} is live as version {}\n",
                    file.display(),
                    or_dash(&value["version"])
                )),
            }
        }
        PolicyCommand::Test(mut args) => {
            args.json |= output == Output::Json;
            return policy_test(args);
        }
        PolicyCommand::Get(t) => {
            let value = call(&t, Method::GET, "/policy", None).await?;
            if output == Output::Json {
                emit_json(&value);
                return Ok(Exit::Ok);
            }
            let version = value.get("version").and_then(Value::as_u64);
            let mut out = format!(
                "# version: {}\n",
                version.map_or("none".to_string(), |v| v.to_string())
            );
            if let Some(r) = value.get("rollback_of").and_then(Value::as_u64) {
                out.push_str(&format!("# rollback of version {r}\n"));
            }
            if let Some(source) = value.get("source").and_then(Value::as_str) {
                out.push_str(source);
            }
            emit(&out);
        }
        PolicyCommand::History(t) => {
            let value = call(&t, Method::GET, "/policy/history", None).await?;
            if output == Output::Json {
                emit_json(&value);
                return Ok(Exit::Ok);
            }
            let mut out = format!(
                "{:<8} {:<16} {:<15} {}\n",
                "VERSION", "FORMAT", "APPLIED_AT_MS", "ROLLBACK_OF"
            );
            for v in value.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "{:<8} {:<16} {:<15} {}\n",
                    or_dash(&v["version"]),
                    or_dash(&v["format"]),
                    or_dash(&v["applied_at_ms"]),
                    or_dash(&v["rollback_of"]),
                ));
            }
            emit(&out);
        }
        PolicyCommand::Rollback { version, target } => {
            let body = json!({"version": version});
            let value = call(&target, Method::POST, "/policy/rollback", Some(body)).await?;
            match output {
                Output::Json => emit_json(&value),
                Output::Human => emit(&format!(
                    "version {version} is live again as version {}\n",
                    or_dash(&value["version"])
                )),
            }
        }
    }
    Ok(Exit::Ok)
}

/// `quorate policy test`: compiles the policy and evaluates the samples offline.
fn policy_test(args: PolicyTestArgs) -> Result<Exit, Failure> {
    let file = args.file.display().to_string();
    let format = load::parse_format_arg(&args.format)
        .map_err(|e| anyhow!("{e}"))
        .or_exit(Exit::Rejected)?;
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
            return Err(Failure {
                exit: Exit::Rejected,
                error: anyhow!("policy {file} is invalid: {e}"),
                stdout_written: args.json,
            });
        }
    };
    let mut samples = Vec::new();
    for (i, json) in args.requests.iter().enumerate() {
        let sample = simulate::parse_sample(json)
            .map_err(|e| Failure::new(Exit::Rejected, anyhow!("--request #{}: {e}", i + 1)))?;
        samples.push(sample);
    }
    if let Some(path) = &args.requests_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .or_exit(Exit::Rejected)?;
        let more = simulate::parse_samples_file(&text)
            .map_err(|e| Failure::new(Exit::Rejected, anyhow!("{}: {e}", path.display())))?;
        samples.extend(more);
    }
    if samples.len() > simulate::MAX_SAMPLES {
        return Err(Failure::new(
            Exit::Rejected,
            anyhow!("at most {} requests per run", simulate::MAX_SAMPLES),
        ));
    }
    let mut authz = Vec::new();
    for (i, json) in args.authz.iter().enumerate() {
        authz.push(
            authz_sample(&policy, json)
                .map_err(|e| Failure::new(Exit::Rejected, anyhow!("--authz #{}: {e}", i + 1)))?,
        );
    }
    let mut rlqs = Vec::new();
    for (i, json) in args.rlqs.iter().enumerate() {
        rlqs.push(
            rlqs_sample(&policy, json)
                .map_err(|e| Failure::new(Exit::Rejected, anyhow!("--rlqs #{}: {e}", i + 1)))?,
        );
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
            "rlqs": rlqs,
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
        if samples.is_empty() && authz.is_empty() && rlqs.is_empty() {
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
        for r in &rlqs {
            let line = match (&r["refused"], &r["rule"]) {
                (serde_json::Value::String(why), _) => why.clone(),
                (_, serde_json::Value::String(rule)) => format!(
                    "bucket rule {rule}, bucket {}, limit {}; shared among proxies as {} milli-tokens/s + {} tokens",
                    r["bucket"], r["limit"], r["rate_pool"], r["token_pool"]
                ),
                _ => "no bucket rule matches: ALLOW_ALL".to_string(),
            };
            out.push_str(&format!(
                "rlqs {} {}: {line}\n",
                r["domain"], r["bucket_id"]
            ));
        }
        out.push_str(&simulate::render_text(&reports));
        out
    };
    emit(&out);
    Ok(Exit::Ok)
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

/// One `--rlqs` sample: `{"domain", "bucket_id": {key: value}}` → the bucket it falls in.
fn rlqs_sample(policy: &PolicySet, json: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let domain = v
        .get("domain")
        .and_then(|d| d.as_str())
        .ok_or("`domain` (a string) is required")?;
    let map = v
        .get("bucket_id")
        .and_then(|b| b.as_object())
        .ok_or("`bucket_id` (an object of strings) is required")?;
    let mut pairs = Vec::new();
    for (k, value) in map {
        let value = value
            .as_str()
            .ok_or_else(|| format!("bucket_id.{k} must be a string"))?;
        pairs.push((k.as_str(), value));
    }
    pairs.sort();
    let mut out = serde_json::json!({"domain": domain, "bucket_id": map});
    if !policy.rlqs.has_domain(domain) {
        out["refused"] = "unknown RLQS domain: streams for it get NOT_FOUND".into();
        return Ok(out);
    }
    if let Some(m) = policy.rlqs.find(domain, &pairs) {
        let pool = crate::quota::Pool::of(m.rule.limit, policy.rlqs.settings.reserve);
        let (requests, window) = m.rule.limit.rate();
        out["rule"] = m.rule.name.clone().into();
        out["bucket"] = m.key.replace('\u{1f}', "/").into();
        out["limit"] = format!("{requests} per {}ms", window / 1_000_000).into();
        out["rate_pool"] = pool.rate.into();
        out["token_pool"] = pool.tokens.into();
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

/// The name `--output json` gives a deny reason.
fn reason_name(reason: Option<quorate_client::DenyReason>) -> Option<&'static str> {
    use quorate_client::DenyReason as R;
    reason.map(|r| match r {
        R::OverLimit => "over_limit",
        R::CostExceedsLimit => "cost_exceeds_limit",
        R::StoreFull => "store_full",
        R::LimitKeysFull => "limit_keys_full",
        R::Unavailable => "unavailable",
        _ => "other",
    })
}

/// The exit code an SDK error means.
fn exit_for_sdk(e: &quorate_client::Error) -> Exit {
    if e.is_unavailable() || e.is_deadline_exceeded() || e.is_unknown_outcome() {
        Exit::Unavailable
    } else if e.is_invalid_argument() || e.is_unknown_limit() || e.is_config() {
        Exit::Rejected
    } else {
        Exit::Failed
    }
}

/// `quorate check`: one hit through the SDK (failover between `--endpoints`, leader
/// hints, one deadline). The deny cache is off: a one-shot process would never reuse it.
pub async fn check(args: CheckArgs, output: Output) -> Result<Exit, Failure> {
    let endpoints = args.endpoints();
    let mut builder = quorate_client::Client::builder();
    builder
        .endpoints(endpoints)
        .timeout(args.timeout)
        .deny_cache(false);
    if let Some(ca) = &args.tls.ca_file {
        builder.ca_file(ca);
    }
    if let (Some(cert), Some(key)) = (&args.tls.client_cert, &args.tls.client_key) {
        builder.identity_files(cert, key);
    }
    let client = builder.connect().await.or_exit(Exit::Rejected)?;
    let d = match client.check(&args.limit, &args.key, args.cost).await {
        Ok(d) => d,
        Err(e) => return Err(Failure::new(exit_for_sdk(&e), e)),
    };
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match output {
        Output::Json => emit_json(&json!({
            "allowed": d.allowed,
            "limit": d.limit,
            "key": args.key,
            "cost": args.cost,
            "limit_value": d.limit_value,
            "remaining": d.remaining,
            "reset_after_ms": millis(d.reset_after),
            "retry_after_ms": d.retry_after.map(millis),
            "window_ms": millis(d.window),
            "reason": reason_name(d.reason),
        })),
        Output::Human => emit(&format!(
            "{} limit={} value={} remaining={} reset_after_ms={}{}\n",
            if d.allowed { "ALLOWED" } else { "DENIED" },
            d.limit,
            d.limit_value,
            d.remaining,
            millis(d.reset_after),
            d.retry_after
                .map(|r| format!(" retry_after_ms={}", millis(r)))
                .unwrap_or_default()
        )),
    }
    Ok(if d.allowed { Exit::Ok } else { Exit::Denied })
}
