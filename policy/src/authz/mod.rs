//! The authorization sections of the policy document — `identities`, `consumers`,
//! `routes` and `defaults` — parsed as raw serde structs, then validated while walking
//! them with document paths (`routes[2].limits[0]`) so every refusal names its line.
//!
//! Compiling is deterministic and does no I/O: it runs again on every replica when the
//! policy entry applies. Anything node-local — a JWKS document, an HS secret read from an
//! environment variable or a file — is resolved later, at decision time, by
//! the server's `authz::jwt`. That is also why secrets never enter the document: it travels
//! through the Raft log and snapshots and is served back by `quorate policy get`. API keys
//! appear only as SHA-256 hashes; an inline secret or private key is refused.

pub mod matching;
pub mod request_target;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use jsonwebtoken::{Algorithm as JwtAlgorithm, AlgorithmFamily, DecodingKey};
use quorate_algorithms::{Algorithm, Nanos, Rate, SECOND};
use serde::Deserialize;

use self::matching::{HostPattern, PathPattern};
use self::template::Template;
use super::{parse_window, policy_rate, Consistency, LimitDef, PolicyError};

/// Longest identity, route, consumer or limit name.
/// Header added (upstream and to the client) when a request passed because the cluster
/// could not decide and the route fails open. An identity header: only quorate sets it.
pub const FAILURE_MODE_HEADER: &str = "x-quorate-failure-mode";

pub const MAX_NAME: usize = 128;
/// Longest registered name of a route or consumer limit (`route/<route>/<name>`).
const MAX_LIMIT_NAME: usize = 300;

// === raw documents ===

/// One entry of `identities:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    name: String,
    api_key: Option<RawApiKey>,
    jwt: Option<RawJwt>,
    anonymous: Option<RawAnonymous>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    header: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
    /// A scheme the header value starts with, e.g. `Bearer` or `ApiKey`.
    scheme: Option<String>,
    #[serde(default)]
    hide: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Vec<String>,
    jwks_url: Option<String>,
    keys: Option<Vec<RawKey>>,
    secret: Option<RawSecret>,
    consumer_claim: Option<String>,
    groups_claim: Option<String>,
    leeway: Option<String>,
    header: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    hide: bool,
    #[serde(default)]
    require_consumer: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: Option<String>,
    pem: Option<String>,
    jwk: Option<serde_json::Value>,
}

/// A secret reference. Anything else (an inline string) lands in `Inline` so the refusal
/// can be explained without serde quoting the secret back in its error message.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSecret {
    Ref(RawSecretRef),
    Inline(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    env: Option<String>,
    file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnonymous {
    consumer: String,
}

/// One entry of `consumers:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    id: String,
    #[serde(default)]
    groups: Vec<String>,
    /// JWT issuers whose tokens may map to this consumer.
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
    #[serde(default)]
    limits: Vec<RawLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    /// A label for logs ("which key was used"); never the key.
    id: Option<String>,
    api_key_sha256: String,
    expires: Option<String>,
}

/// One entry of `routes:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    name: String,
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    identities: Option<Vec<String>>,
    allow: Option<RawAcl>,
    deny: Option<RawAcl>,
    #[serde(default)]
    limits: Vec<RawLimit>,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    mode: Mode,
    failure_mode: Option<FailureMode>,
    deny_status: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    host: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_glob: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcl {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    consumers: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: Option<String>,
    /// A limit of the top-level `limits:` section, sharing its counters.
    #[serde(default, rename = "use")]
    use_limit: Option<String>,
    key: Option<RawKeySpec>,
    limit: Option<u64>,
    window: Option<String>,
    algorithm: Option<Algorithm>,
    burst: Option<u64>,
    precision: Option<u64>,
    consistency: Option<Consistency>,
    cost: Option<u64>,
    max_keys: Option<usize>,
    on_full: Option<quorate_algorithms::OnFull>,
    expose: Option<bool>,
    reservation_percent: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawKeySpec {
    One(RawKeyPart),
    Many(Vec<RawKeyPart>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawKeyPart {
    Word(String),
    Header { header: String },
    Claim { claim: String },
    Ip { ip: RawIpPrefix },
}

/// `{ip: {ipv4_prefix: 24, ipv6_prefix: 56}}`: the client address, masked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpPrefix {
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    upstream: Option<BTreeMap<String, String>>,
    #[serde(default)]
    client: BTreeMap<String, String>,
}

/// The `defaults:` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    deny_status: Option<u16>,
    unmatched: Option<Unmatched>,
    failure_mode: Option<FailureMode>,
    trusted_proxies: Option<RawTrustedProxies>,
    realm: Option<String>,
}

/// `trusted_proxies:` as written: CIDR lists per surface, or (deprecated) a hop count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTrustedProxies {
    Hops(usize),
    Lists(RawProxyLists),
    /// Anything else, refused with the expected shape.
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyLists {
    #[serde(default)]
    forward_auth: Vec<String>,
    #[serde(default)]
    ext_authz: Vec<String>,
}

// === compiled ===

/// Whether a route enforces its decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Decide, log and count, but always allow.
    DryRun,
}

/// What to answer when the cluster cannot decide (no quorum reachable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Deny with 503.
    #[default]
    Closed,
    /// Allow, marked with `x-quorate-failure-mode: open`.
    Open,
}

/// What to answer for a request no route matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Deny with `deny_status`: nothing passes that the policy does not name.
    #[default]
    Deny,
    Allow,
}

/// The compiled authorization policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthzPolicy {
    /// Every identity, in document order.
    pub identities: Vec<Identity>,
    pub consumers: BTreeMap<String, Consumer>,
    /// API-key credentials by the SHA-256 of the key.
    pub api_keys: BTreeMap<[u8; 32], KeyCredential>,
    /// Routes in document order: the first match wins.
    pub routes: Vec<Route>,
    pub defaults: Defaults,
    /// Every header quorate may set upstream (`x-consumer-id`, `x-consumer-groups`,
    /// `x-quorate-failure-mode` and each route's `headers.upstream`): removed from every
    /// allowed request that does not get it from us, so a client cannot forge them.
    pub identity_headers: Vec<String>,
    /// How many distinct JWT issuers the identities name.
    pub jwt_issuers: usize,
}

impl AuthzPolicy {
    /// A route by name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// The `defaults:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// HTTP status of an ACL denial (and of an unmatched request, when denied).
    pub deny_status: u16,
    pub unmatched: Unmatched,
    pub failure_mode: FailureMode,
    /// The proxies whose `X-Forwarded-*` / `X-Original-*` headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// The realm in `WWW-Authenticate` challenges.
    pub realm: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            deny_status: 403,
            unmatched: Unmatched::Deny,
            failure_mode: FailureMode::Closed,
            trusted_proxies: TrustedProxies::default(),
            realm: "quorate".into(),
        }
    }
}

/// Which peers may describe a request for someone else, per surface.
///
/// - `forward_auth`: a forward-auth call carrying `X-Forwarded-Method/-Uri/-Host` or
///   `X-Original-Method/-URI/-Host` is refused unless the connection comes from one of
///   these networks; `X-Forwarded-For` is read only then.
/// - `ext_authz`: `X-Forwarded-For` is read only when the source address Envoy reports is
///   in one of these (Envoy itself describes the request; with `use_remote_address` the
///   source is the real client and this list stays empty).
///
/// The client address is then found by walking `X-Forwarded-For` from the right, skipping
/// trusted addresses. Both lists are empty by default: trust nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub forward_auth: Vec<IpNet>,
    pub ext_authz: Vec<IpNet>,
    /// The deprecated `trusted_proxies: N`, meaning kept: the client is the N-th
    /// `X-Forwarded-For` entry from the right, whoever the peer is (0: the peer), and
    /// forward-auth takes the forwarded request headers from any peer.
    pub legacy_hops: Option<usize>,
}

/// How a caller is recognised.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub name: String,
    pub kind: IdentityKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IdentityKind {
    ApiKey(Credential),
    Jwt(Arc<JwtIdentity>),
    Anonymous { consumer: String },
}

/// Where a credential travels in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A header (lower-cased name).
    Header(String),
    Query(String),
    Cookie(String),
}

/// A credential's place, the scheme its header value starts with, and whether to strip
/// it before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub source: CredentialSource,
    /// E.g. `Bearer`: the value must start with it (case-insensitive) and a space.
    pub scheme: Option<String>,
    pub hide: bool,
}

/// A JWT issuer's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtIdentity {
    pub issuer: String,
    /// Accepted audiences; empty means the `aud` claim is not checked.
    pub audiences: Vec<String>,
    /// Pinned algorithms, all of one family; the token's `alg` must be one of them.
    pub algorithms: Vec<JwtAlgorithm>,
    pub keys: JwtKeys,
    pub consumer_claim: String,
    pub groups_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    pub credential: Credential,
    /// Refuse tokens whose consumer is not in `consumers:`.
    pub require_consumer: bool,
}

/// Where a JWT issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeys {
    /// Fetched and cached per node.
    Jwks { url: String },
    /// Public keys written in the policy.
    Inline(Vec<InlineKey>),
    /// An HMAC secret held outside the policy.
    Secret(SecretRef),
}

/// A node-local secret: an environment variable or a file, read at decision time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretRef {
    Env(String),
    File(String),
}

/// A public key written in the policy.
#[derive(Clone)]
pub struct InlineKey {
    pub kid: Option<String>,
    pub family: AlgorithmFamily,
    pub key: Arc<DecodingKey>,
    /// The text it was compiled from: what equality compares.
    source: String,
}

impl InlineKey {
    /// A key built in a test, without policy text (the server's JWT tests use it through
    /// the `test-util` feature).
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests(kid: Option<&str>, family: AlgorithmFamily, key: DecodingKey) -> InlineKey {
        InlineKey {
            kid: kid.map(str::to_string),
            family,
            key: Arc::new(key),
            source: String::new(),
        }
    }
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.source == other.source
    }
}

impl fmt::Debug for InlineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// A consumer: who a credential or token stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub id: String,
    pub groups: Vec<String>,
    /// The JWT issuers whose tokens may become this consumer. Empty: tokens of the
    /// policy's only issuer may; with several issuers, none may.
    pub issuers: Vec<String>,
    /// Limits that follow this consumer on every route.
    pub limits: Vec<RouteLimit>,
}

/// A stored API key's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCredential {
    pub consumer: String,
    /// A label for logs.
    pub label: Option<String>,
    /// When the key stops working, in [`Nanos`] since the epoch.
    pub expires: Option<Nanos>,
}

/// A route: which requests, who may call, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub path: PathPattern,
    /// Upper-case methods; empty = any.
    pub methods: Vec<String>,
    /// Indices into [`AuthzPolicy::identities`], tried in order; empty = public route.
    pub identities: Vec<usize>,
    pub allow: Option<Acl>,
    pub deny: Option<Acl>,
    pub limits: Vec<RouteLimit>,
    pub upstream_headers: Vec<(String, Template)>,
    pub client_headers: Vec<(String, Template)>,
    pub mode: Mode,
    pub failure_mode: FailureMode,
    pub deny_status: u16,
}

/// Groups, consumers and client networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    pub groups: BTreeSet<String>,
    pub consumers: BTreeSet<String>,
    pub cidrs: Vec<IpNet>,
}

/// One part of a limit's counter key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Consumer,
    /// The client address, masked to its network: one counter per IPv4 address (/32)
    /// and per IPv6 /64 by default, since one IPv6 host usually holds a whole /64 and
    /// could otherwise mint 2^64 keys.
    Ip(IpPrefix),
    Route,
    Identity,
    Header(String),
    Claim(String),
}

/// A rate limit applied by a route or a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLimit {
    /// The limit hits count against (a registered [`LimitDef`] name).
    pub limit: String,
    /// The name RateLimit headers show.
    pub shown: String,
    pub rate: Rate,
    pub consistency: Consistency,
    pub shadow_mode: bool,
    pub key: Vec<KeyPart>,
    pub cost: u64,
}

// === compile ===

/// The raw authorization sections of a document.
#[derive(Debug, Default)]
pub struct RawAuthz {
    pub identities: Vec<RawIdentity>,
    pub consumers: Vec<RawConsumer>,
    pub routes: Vec<RawRoute>,
    pub defaults: RawDefaults,
}

/// Validates the authorization sections. Inline route and consumer limits are
/// registered in `limits` (as `route/<route>/<name>` and `consumer/<id>/<name>`) so they
/// show up wherever limits are listed; `use:` refers to limits already there.
pub fn compile(
    raw: RawAuthz,
    limits: &mut BTreeMap<String, LimitDef>,
    line: &dyn Fn(&str) -> Option<usize>,
) -> Result<AuthzPolicy, PolicyError> {
    let at = |path: &str, reason: String| PolicyError::new(line(path), format!("{path}: {reason}"));

    let defaults = compile_defaults(raw.defaults).map_err(|(p, r)| at(&p, r))?;

    let mut identities: Vec<Identity> = Vec::new();
    for (i, raw) in raw.identities.into_iter().enumerate() {
        let path = format!("identities[{i}]");
        let identity = compile_identity(raw, &path).map_err(|(p, r)| at(&p, r))?;
        if identities.iter().any(|x| x.name == identity.name) {
            return Err(at(&path, format!("duplicate identity {:?}", identity.name)));
        }
        identities.push(identity);
    }

    let mut consumers = BTreeMap::new();
    let mut api_keys = BTreeMap::new();
    for (i, raw) in raw.consumers.into_iter().enumerate() {
        let path = format!("consumers[{i}]");
        check_name(&raw.id, "consumer id").map_err(|r| at(&path, r))?;
        for g in &raw.groups {
            check_name(g, "group").map_err(|r| at(&format!("{path}.groups"), r))?;
            if g.contains(',') {
                return Err(at(
                    &format!("{path}.groups"),
                    format!("group {g:?} contains ',', the separator of x-consumer-groups"),
                ));
            }
        }
        for iss in &raw.issuers {
            if !identities
                .iter()
                .any(|i| matches!(&i.kind, IdentityKind::Jwt(j) if &j.issuer == iss))
            {
                return Err(at(
                    &format!("{path}.issuers"),
                    format!("no jwt identity has issuer {iss:?}"),
                ));
            }
        }
        if consumers.contains_key(&raw.id) {
            return Err(at(&path, format!("duplicate consumer {:?}", raw.id)));
        }
        for (j, cred) in raw.credentials.into_iter().enumerate() {
            let cpath = format!("{path}.credentials[{j}]");
            let hash = parse_sha256(&cred.api_key_sha256).map_err(|r| at(&cpath, r))?;
            let expires = match cred.expires {
                Some(t) => Some(parse_time(&t).map_err(|r| at(&cpath, r))?),
                None => None,
            };
            if api_keys.contains_key(&hash) {
                return Err(at(&cpath, "this key hash is already used".into()));
            }
            api_keys.insert(
                hash,
                KeyCredential {
                    consumer: raw.id.clone(),
                    label: cred.id,
                    expires,
                },
            );
        }
        let mut compiled = Vec::new();
        for (j, l) in raw.limits.into_iter().enumerate() {
            let lpath = format!("{path}.limits[{j}]");
            let scope = format!("consumer/{}", raw.id);
            let limit = compile_limit(l, &scope, j, KeyPart::Consumer, limits)
                .map_err(|r| at(&lpath, r))?;
            compiled.push(limit);
        }
        consumers.insert(
            raw.id.clone(),
            Consumer {
                id: raw.id,
                groups: raw.groups,
                issuers: raw.issuers,
                limits: compiled,
            },
        );
    }
    let mut routes: Vec<Route> = Vec::new();
    for (i, raw) in raw.routes.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let route = compile_route(raw, &path, &identities, &defaults, limits)
            .map_err(|(p, r)| at(&p, r))?;
        if routes.iter().any(|r| r.name == route.name) {
            return Err(at(&path, format!("duplicate route {:?}", route.name)));
        }
        routes.push(route);
    }

    let mut identity_headers: Vec<String> =
        ["x-consumer-id", "x-consumer-groups", FAILURE_MODE_HEADER]
            .map(str::to_string)
            .to_vec();
    for (name, _) in routes.iter().flat_map(|r| &r.upstream_headers) {
        if !identity_headers.contains(name) {
            identity_headers.push(name.clone());
        }
    }
    let jwt_issuers = identities
        .iter()
        .filter_map(|i| match &i.kind {
            IdentityKind::Jwt(j) => Some(j.issuer.as_str()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .len();
    Ok(AuthzPolicy {
        identities,
        consumers,
        api_keys,
        routes,
        defaults,
        identity_headers,
        jwt_issuers,
    })
}

type Located = (String, String);

fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{what} must be 1 to {MAX_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} {name:?} contains a control character"));
    }
    Ok(())
}

fn check_status(status: u16) -> Result<u16, String> {
    if (400..=599).contains(&status) {
        Ok(status)
    } else {
        Err(format!(
            "deny status {status} is not an HTTP error (400-599)"
        ))
    }
}

fn compile_defaults(raw: RawDefaults) -> Result<Defaults, Located> {
    let base = Defaults::default();
    let deny_status = match raw.deny_status {
        Some(s) => check_status(s).map_err(|r| ("defaults.deny_status".to_string(), r))?,
        None => base.deny_status,
    };
    let trusted_proxies = match raw.trusted_proxies {
        None => TrustedProxies::default(),
        Some(RawTrustedProxies::Hops(n)) if n > 16 => {
            return Err((
                "defaults.trusted_proxies".into(),
                "at most 16 proxy hops can be trusted (and a hop count is deprecated: \
                 write {forward_auth: [CIDR, ...], ext_authz: [CIDR, ...]})"
                    .into(),
            ));
        }
        Some(RawTrustedProxies::Hops(n)) => TrustedProxies {
            legacy_hops: Some(n),
            ..TrustedProxies::default()
        },
        Some(RawTrustedProxies::Other(_)) => {
            return Err((
                "defaults.trusted_proxies".into(),
                "expected {forward_auth: [CIDR, ...], ext_authz: [CIDR, ...]}".into(),
            ));
        }
        Some(RawTrustedProxies::Lists(lists)) => {
            let nets = |list: Vec<String>, field: &str| {
                list.iter()
                    .map(|c| parse_cidr(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|r| (format!("defaults.trusted_proxies.{field}"), r))
            };
            TrustedProxies {
                forward_auth: nets(lists.forward_auth, "forward_auth")?,
                ext_authz: nets(lists.ext_authz, "ext_authz")?,
                legacy_hops: None,
            }
        }
    };
    let realm = raw.realm.unwrap_or(base.realm);
    if realm.is_empty()
        || realm.len() > MAX_NAME
        || !realm
            .chars()
            .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\')
    {
        return Err((
            "defaults.realm".into(),
            "realm must be 1 to 128 printable ASCII characters without quotes".into(),
        ));
    }
    Ok(Defaults {
        deny_status,
        unmatched: raw.unmatched.unwrap_or_default(),
        failure_mode: raw.failure_mode.unwrap_or_default(),
        trusted_proxies,
        realm,
    })
}

/// A header name as HTTP allows it (RFC 9110 token), lower-cased.
fn header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

/// How many of a field's mutually exclusive alternatives a policy wrote.
fn how_many<const N: usize>(written: [bool; N]) -> usize {
    written.iter().filter(|w| **w).count()
}

fn credential(
    header: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
    scheme: Option<String>,
    hide: bool,
    default_header: Option<&str>,
) -> Result<Credential, String> {
    let given = how_many([header.is_some(), query.is_some(), cookie.is_some()]);
    if given > 1 {
        return Err("name one of header, query or cookie".into());
    }
    let source = match (header, query, cookie) {
        (Some(h), _, _) => CredentialSource::Header(header_name(&h)?),
        (_, Some(q), _) if !q.is_empty() && q.len() <= MAX_NAME => CredentialSource::Query(q),
        (_, _, Some(c)) if !c.is_empty() && c.len() <= MAX_NAME => CredentialSource::Cookie(c),
        (None, None, None) => match default_header {
            Some(h) => CredentialSource::Header(h.to_string()),
            None => return Err("name one of header, query or cookie".into()),
        },
        _ => return Err("query and cookie names must be 1 to 128 bytes".into()),
    };
    if let Some(s) = &scheme {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("scheme {s:?} must be a single word, e.g. Bearer"));
        }
        if !matches!(source, CredentialSource::Header(_)) {
            return Err("a scheme only applies to a header".into());
        }
    }
    if hide && matches!(source, CredentialSource::Cookie(_)) {
        return Err("hide works for header and query credentials, not cookies".into());
    }
    Ok(Credential {
        source,
        scheme,
        hide,
    })
}

fn compile_identity(raw: RawIdentity, path: &str) -> Result<Identity, Located> {
    let here = |r: String| (path.to_string(), r);
    check_name(&raw.name, "identity name").map_err(here)?;
    let kinds = how_many([
        raw.api_key.is_some(),
        raw.jwt.is_some(),
        raw.anonymous.is_some(),
    ]);
    if kinds != 1 {
        return Err(here(format!(
            "identity {:?} must have exactly one of api_key, jwt or anonymous",
            raw.name
        )));
    }
    let kind = if let Some(k) = raw.api_key {
        let at = format!("{path}.api_key");
        IdentityKind::ApiKey(
            credential(k.header, k.query, k.cookie, k.scheme, k.hide, None).map_err(|r| (at, r))?,
        )
    } else if let Some(j) = raw.jwt {
        IdentityKind::Jwt(Arc::new(compile_jwt(j, &format!("{path}.jwt"))?))
    } else if let Some(a) = raw.anonymous {
        check_name(&a.consumer, "anonymous consumer")
            .map_err(|r| (format!("{path}.anonymous"), r))?;
        IdentityKind::Anonymous {
            consumer: a.consumer,
        }
    } else {
        return Err(here("no identity kind".into()));
    };
    Ok(Identity {
        name: raw.name,
        kind,
    })
}

fn family(alg: JwtAlgorithm) -> AlgorithmFamily {
    use JwtAlgorithm::*;
    match alg {
        HS256 | HS384 | HS512 => AlgorithmFamily::Hmac,
        ES256 | ES384 => AlgorithmFamily::Ec,
        EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

fn compile_jwt(raw: RawJwt, path: &str) -> Result<JwtIdentity, Located> {
    let here = |field: &str, r: String| {
        (
            if field.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{field}")
            },
            r,
        )
    };
    if raw.issuer.is_empty() {
        return Err(here("issuer", "issuer must not be empty".into()));
    }
    if raw.algorithms.is_empty() {
        return Err(here(
            "algorithms",
            "pin at least one algorithm (e.g. [RS256])".into(),
        ));
    }
    let mut algorithms = Vec::new();
    for a in &raw.algorithms {
        if a.eq_ignore_ascii_case("none") {
            return Err(here(
                "algorithms",
                "`none` is never accepted: tokens must be signed".into(),
            ));
        }
        let alg: JwtAlgorithm = a.parse().map_err(|_| {
            here(
                "algorithms",
                format!("unknown algorithm {a:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
            )
        })?;
        algorithms.push(alg);
    }
    let fam = family(algorithms[0]);
    if algorithms.iter().any(|a| family(*a) != fam) {
        return Err(here(
            "algorithms",
            "all algorithms of one issuer must be of one family (HMAC, RSA, EC or EdDSA)".into(),
        ));
    }
    let sources = how_many([
        raw.jwks_url.is_some(),
        raw.keys.is_some(),
        raw.secret.is_some(),
    ]);
    if sources != 1 {
        return Err(here(
            "",
            "name exactly one key source: jwks_url, keys or secret".into(),
        ));
    }
    let keys = if let Some(secret) = raw.secret {
        if fam != AlgorithmFamily::Hmac {
            return Err(here("secret", "a secret is for HS256/384/512 only".into()));
        }
        match secret {
            RawSecret::Inline(_) => {
                return Err(here(
                    "secret",
                    "inline secrets are refused: the policy travels through the Raft log and snapshots; use {env: NAME} or {file: PATH}".into(),
                ))
            }
            RawSecret::Ref(RawSecretRef {
                env: Some(e),
                file: None,
            }) if !e.is_empty() => JwtKeys::Secret(SecretRef::Env(e)),
            RawSecret::Ref(RawSecretRef {
                env: None,
                file: Some(f),
            }) if !f.is_empty() => JwtKeys::Secret(SecretRef::File(f)),
            RawSecret::Ref(_) => {
                return Err(here(
                    "secret",
                    "name exactly one of env or file".into(),
                ))
            }
        }
    } else if fam == AlgorithmFamily::Hmac {
        return Err(here(
            "",
            "HS algorithms take a secret: {env: NAME} or {file: PATH}".into(),
        ));
    } else if let Some(url) = raw.jwks_url {
        match url::Url::parse(&url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(here("jwks_url", format!("{url:?} is not an http(s) URL"))),
        }
        JwtKeys::Jwks { url }
    } else {
        let mut keys = Vec::new();
        for (i, k) in raw.keys.unwrap_or_default().into_iter().enumerate() {
            let kpath = format!("keys[{i}]");
            keys.push(compile_key(k, fam).map_err(|r| here(&kpath, r))?);
        }
        if keys.is_empty() {
            return Err(here("keys", "at least one key is needed".into()));
        }
        JwtKeys::Inline(keys)
    };
    let leeway = match raw.leeway {
        Some(l) if matches!(l.trim(), "0" | "0s") => 0,
        Some(l) => parse_window(&l).map_err(|r| here("leeway", r))? / SECOND,
        None => 30,
    };
    let consumer_claim = raw.consumer_claim.unwrap_or_else(|| "sub".into());
    if consumer_claim.is_empty() {
        return Err(here("consumer_claim", "must not be empty".into()));
    }
    // Tokens in a header default to the Bearer scheme; in a query or cookie they are bare.
    let scheme = if raw.query.is_none() && raw.cookie.is_none() {
        raw.scheme.or_else(|| Some("Bearer".into()))
    } else {
        raw.scheme
    };
    let credential = credential(
        raw.header,
        raw.query,
        raw.cookie,
        scheme,
        raw.hide,
        Some("authorization"),
    )
    .map_err(|r| (path.to_string(), r))?;
    Ok(JwtIdentity {
        issuer: raw.issuer,
        audiences: raw.audiences,
        algorithms,
        keys,
        consumer_claim,
        groups_claim: raw.groups_claim,
        leeway,
        credential,
        require_consumer: raw.require_consumer,
    })
}

fn compile_key(raw: RawKey, fam: AlgorithmFamily) -> Result<InlineKey, String> {
    let (key, source) = match (raw.pem, raw.jwk) {
        (Some(pem), None) => {
            if pem.contains("PRIVATE KEY") {
                return Err("private keys are refused: give the public key".into());
            }
            let key = match fam {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()),
                AlgorithmFamily::Hmac => return Err("HMAC takes a secret, not keys".into()),
            }
            .map_err(|e| format!("not a usable public key for these algorithms: {e}"))?;
            (key, pem)
        }
        (None, Some(jwk)) => {
            let text = jwk.to_string();
            if jwk.get("d").is_some() || jwk.get("k").is_some() {
                return Err("private or symmetric JWKs are refused: give the public key".into());
            }
            let parsed: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(jwk).map_err(|e| format!("not a JWK: {e}"))?;
            let key = DecodingKey::from_jwk(&parsed).map_err(|e| format!("unusable JWK: {e}"))?;
            (key, text)
        }
        _ => return Err("give exactly one of pem or jwk".into()),
    };
    if key.family() != fam {
        return Err(format!(
            "a {:?} key cannot verify {:?} algorithms",
            key.family(),
            fam
        ));
    }
    Ok(InlineKey {
        kid: raw.kid,
        family: fam,
        key: Arc::new(key),
        source,
    })
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| "api_key_sha256 must be 64 hex digits (the SHA-256 of the key)".to_string())?;
    Ok(out)
}

fn parse_time(text: &str) -> Result<Nanos, String> {
    let t = humantime::parse_rfc3339_weak(text.trim())
        .map_err(|e| format!("expires {text:?}: {e} (use e.g. 2027-01-01T00:00:00Z)"))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("expires {text:?} is before 1970"))?;
    u64::try_from(d.as_nanos()).map_err(|_| format!("expires {text:?} is too far away"))
}

fn compile_route(
    raw: RawRoute,
    path: &str,
    identities: &[Identity],
    defaults: &Defaults,
    limits: &mut BTreeMap<String, LimitDef>,
) -> Result<Route, Located> {
    let here = |field: &str, r: String| {
        (
            if field.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{field}")
            },
            r,
        )
    };
    check_name(&raw.name, "route name").map_err(|r| here("", r))?;
    if raw.name.contains('/') {
        return Err(here("", "route names cannot contain '/'".into()));
    }
    let m = raw.matcher;
    let mut hosts = Vec::new();
    for h in m.host.iter().chain(m.hosts.iter()) {
        hosts.push(HostPattern::parse(h).map_err(|r| here("match", r))?);
    }
    let paths = how_many([
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_glob.is_some(),
    ]);
    if paths > 1 {
        return Err(here(
            "match",
            "name at most one of path, path_prefix or path_glob".into(),
        ));
    }
    let path_pattern = if let Some(p) = m.path {
        PathPattern::exact(&p)
    } else if let Some(p) = m.path_prefix {
        PathPattern::prefix(&p)
    } else if let Some(p) = m.path_glob {
        PathPattern::glob(&p)
    } else {
        Ok(PathPattern::Any)
    }
    .map_err(|r| here("match", r))?;
    let mut methods = Vec::new();
    for meth in m.methods {
        if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(here("match", format!("{meth:?} is not an HTTP method")));
        }
        methods.push(meth.to_ascii_uppercase());
    }

    // Omitted = every identity, in document order (secure by default); [] = public.
    let mut ids = Vec::new();
    match raw.identities {
        None => ids.extend(0..identities.len()),
        Some(names) => {
            for n in names {
                let i = identities
                    .iter()
                    .position(|x| x.name == n)
                    .ok_or_else(|| here("identities", format!("unknown identity {n:?}")))?;
                ids.push(i);
            }
        }
    }
    if let Some(pos) = ids
        .iter()
        .position(|i| matches!(identities[*i].kind, IdentityKind::Anonymous { .. }))
    {
        if pos + 1 != ids.len() {
            return Err(here(
                "identities",
                "an anonymous identity must come last: it always succeeds".into(),
            ));
        }
    }

    let allow = raw
        .allow
        .map(|a| compile_acl(a).map_err(|r| here("allow", r)))
        .transpose()?;
    let deny = raw
        .deny
        .map(|a| compile_acl(a).map_err(|r| here("deny", r)))
        .transpose()?;

    let mut route_limits = Vec::new();
    let scope = format!("route/{}", raw.name);
    for (i, l) in raw.limits.into_iter().enumerate() {
        route_limits.push(
            compile_limit(l, &scope, i, KeyPart::Consumer, limits)
                .map_err(|r| here(&format!("limits[{i}]"), r))?,
        );
    }

    let upstream_raw = raw.headers.upstream.unwrap_or_else(|| {
        BTreeMap::from([
            ("x-consumer-id".to_string(), "{consumer}".to_string()),
            ("x-consumer-groups".to_string(), "{groups}".to_string()),
        ])
    });
    let headers = |map: BTreeMap<String, String>, field: &str| {
        map.into_iter()
            .map(|(k, v)| {
                let name = header_name(&k).map_err(|r| here(field, r))?;
                let t = Template::parse(&v).map_err(|r| here(field, r))?;
                Ok((name, t))
            })
            .collect::<Result<Vec<_>, Located>>()
    };
    let upstream_headers = headers(upstream_raw, "headers.upstream")?;
    let client_headers = headers(raw.headers.client, "headers.client")?;
    let deny_status = match raw.deny_status {
        Some(s) => check_status(s).map_err(|r| here("deny_status", r))?,
        None => defaults.deny_status,
    };

    Ok(Route {
        name: raw.name,
        hosts,
        path: path_pattern,
        methods,
        identities: ids,
        allow,
        deny,
        limits: route_limits,
        upstream_headers,
        client_headers,
        mode: raw.mode,
        failure_mode: raw.failure_mode.unwrap_or(defaults.failure_mode),
        deny_status,
    })
}

/// A CIDR, or a bare address as a /32 or /128.
fn parse_cidr(c: &str) -> Result<IpNet, String> {
    let net: IpNet = match c.parse() {
        Ok(n) => n,
        Err(_) => c
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{c:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"))?,
    };
    Ok(net.trunc())
}

fn compile_acl(raw: RawAcl) -> Result<Acl, String> {
    let mut cidrs = Vec::new();
    for c in raw.cidrs {
        cidrs.push(parse_cidr(&c)?);
    }
    Ok(Acl {
        groups: raw.groups.into_iter().collect(),
        consumers: raw.consumers.into_iter().collect(),
        cidrs,
    })
}

/// The prefix lengths a client address is masked to in an `ip` key part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub v4: u8,
    pub v6: u8,
}

impl Default for IpPrefix {
    fn default() -> Self {
        IpPrefix { v4: 32, v6: 64 }
    }
}

impl IpPrefix {
    /// The key text of `ip`: the address itself at a full-length prefix, else its network
    /// (`2001:db8:1:2::/64`). IPv4-mapped IPv6 addresses count as IPv4.
    pub fn key_of(self, ip: std::net::IpAddr) -> String {
        let ip = ip.to_canonical();
        let (prefix, full) = match ip {
            std::net::IpAddr::V4(_) => (self.v4, 32),
            std::net::IpAddr::V6(_) => (self.v6, 128),
        };
        if prefix >= full {
            return ip.to_string();
        }
        match IpNet::new(ip, prefix) {
            Ok(net) => net.trunc().to_string(),
            Err(_) => ip.to_string(),
        }
    }
}

fn compile_key_part(raw: RawKeyPart) -> Result<KeyPart, String> {
    Ok(match raw {
        RawKeyPart::Ip { ip } => {
            let base = IpPrefix::default();
            let prefix = IpPrefix {
                v4: ip.ipv4_prefix.unwrap_or(base.v4),
                v6: ip.ipv6_prefix.unwrap_or(base.v6),
            };
            if prefix.v4 > 32 || prefix.v6 > 128 {
                return Err("ipv4_prefix is 0 to 32 and ipv6_prefix 0 to 128".into());
            }
            KeyPart::Ip(prefix)
        }
        RawKeyPart::Word(w) => match w.as_str() {
            "consumer" => KeyPart::Consumer,
            "ip" => KeyPart::Ip(IpPrefix::default()),
            "route" => KeyPart::Route,
            "identity" => KeyPart::Identity,
            other => {
                return Err(format!(
                    "unknown key {other:?} (consumer, ip, route, identity, {{header: NAME}}, {{claim: NAME}} or {{ip: {{ipv4_prefix: N, ipv6_prefix: N}}}})"
                ))
            }
        },
        RawKeyPart::Header { header } => KeyPart::Header(header_name(&header)?),
        RawKeyPart::Claim { claim } if !claim.is_empty() => KeyPart::Claim(claim),
        RawKeyPart::Claim { .. } => return Err("claim name must not be empty".into()),
    })
}

fn compile_limit(
    raw: RawLimit,
    scope: &str,
    index: usize,
    default_key: KeyPart,
    limits: &mut BTreeMap<String, LimitDef>,
) -> Result<RouteLimit, String> {
    let key = match raw.key {
        None => vec![default_key],
        Some(RawKeySpec::One(p)) => vec![compile_key_part(p)?],
        Some(RawKeySpec::Many(ps)) if !ps.is_empty() && ps.len() <= 8 => ps
            .into_iter()
            .map(compile_key_part)
            .collect::<Result<_, _>>()?,
        Some(RawKeySpec::Many(_)) => return Err("a key has 1 to 8 parts".into()),
    };
    let cost = raw.cost.unwrap_or(1);
    if let Some(name) = raw.use_limit {
        if raw.limit.is_some()
            || raw.window.is_some()
            || raw.algorithm.is_some()
            || raw.burst.is_some()
            || raw.precision.is_some()
            || raw.consistency.is_some()
            || raw.max_keys.is_some()
            || raw.on_full.is_some()
            || raw.expose.is_some()
            || raw.reservation_percent.is_some()
        {
            return Err(
                "`use` refers to a named limit: do not also give limit, window, algorithm, burst, precision, consistency, max_keys, on_full, expose or reservation_percent"
                    .into(),
            );
        }
        let def = limits
            .get_mut(&name)
            .ok_or_else(|| format!("unknown limit {name:?} in use"))?;
        // Its counters now hold route/consumer quota (keys like `consumer=alice`):
        // quorate.v1 clients may no longer address it unless it says `expose: true`.
        if def.expose.is_none() {
            def.exposed = false;
        }
        return Ok(RouteLimit {
            limit: def.name.clone(),
            shown: raw.name.unwrap_or_else(|| def.shown_name().to_string()),
            rate: def.rate,
            consistency: def.consistency,
            shadow_mode: def.shadow_mode,
            key,
            cost,
        });
    }
    let (Some(limit), Some(window)) = (raw.limit, raw.window) else {
        return Err("an inline limit needs limit and window (or `use: NAME`)".into());
    };
    let shown = raw.name.unwrap_or_else(|| format!("limit{index}"));
    check_name(&shown, "limit name")?;
    let full = format!("{scope}/{shown}");
    if full.len() > MAX_LIMIT_NAME {
        return Err(format!("limit name {full:?} is too long"));
    }
    let window = parse_window(&window)?;
    let rate = policy_rate(raw.algorithm, limit, window, raw.burst, raw.precision)
        .map_err(|e| format!("limit {shown:?}: {e}"))?;
    if limits.contains_key(&full) {
        return Err(format!("duplicate limit name {full:?}"));
    }
    let consistency = raw.consistency.unwrap_or_default();
    let options = super::LimitOptions {
        max_keys: raw.max_keys,
        on_full: raw.on_full.unwrap_or_default(),
        expose: raw.expose,
        reservation_percent: raw.reservation_percent,
    };
    options.validate()?;
    limits.insert(
        full.clone(),
        LimitDef {
            name: full.clone(),
            display_name: Some(shown.clone()),
            // Route and consumer limits are keyed by who calls: never addressable via
            // quorate.v1 unless the policy says `expose: true`.
            ..LimitDef::new(rate, consistency, options, false)
        },
    );
    Ok(RouteLimit {
        limit: full,
        shown,
        rate,
        consistency,
        shadow_mode: false,
        key,
        cost,
    })
}
