//! Load shedding and a request timeout for the public decision surfaces.
//!
//! A node that takes more decisions than it can answer would otherwise queue them in the
//! batcher until each one hits the 2 s decision timeout: every caller waits, and the
//! answers that do come back come late. Instead, one node-wide budget of decisions in
//! flight is shared by the gRPC decision services (`quorate.v1`, Envoy RLS, ext_authz)
//! and HTTP forward-auth (`/authz`). A decision that finds the budget spent is answered at
//! once, before any policy lookup or counter, with `RESOURCE_EXHAUSTED` (gRPC) or `503`
//! with `Retry-After: 1` (HTTP); admitted ones keep the latency of a node at its
//! capacity. Every admitted decision is also bounded by `--request-timeout-ms`
//! (`DEADLINE_EXCEEDED` / `504`).
//!
//! The budget is `--max-in-flight` (`--concurrency-limit fixed`, the default) or an
//! adaptive limit between a few decisions and `--max-in-flight` that shrinks when admitted
//! decisions' latency rises above the node's unqueued latency (`--concurrency-limit
//! adaptive`, [`adaptive`]; it met the overload goal without sizing in runs 10–12 of
//! `docs/benchmarks.md`, "Overload", but is not the default: it still sheds during a
//! leader election, where a fixed limit sheds nothing); the current budget is the
//! `quorate_concurrency_limit` gauge.
//!
//! Health, reflection, metrics, the dashboard and the admin API are never shed: probes
//! and operators must still reach a saturated node. The peer port is not wrapped at all.
//!
//! On gRPC the layer wraps each decision service (so health and reflection, registered
//! unwrapped, never count); on HTTP it wraps the router and counts `/authz` only.
//!
//! Why not tonic's `concurrency_limit_per_connection` + `load_shed`: that budget is per
//! connection (a flood over many connections is never shed) and covers health checks
//! too. The budget here is a counter compared with the current limit; taking a place
//! never waits.

pub mod adaptive;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use prometheus::IntGauge;
use tokio::time::Instant;
use tower::{Layer, Service};

use self::adaptive::{AdaptiveLimit, AdaptiveSettings};

/// Default `--max-in-flight`: decisions admitted at once per node (gRPC and HTTP
/// together). Group commit makes a node faster the more decisions it holds (one fsync
/// per batch), so a small budget sheds at half load: in `docs/benchmarks.md`
/// ("Overload") 32 shed 60% and 128 shed 5% of an offered 0.5x capacity. 256 leaves
/// that headroom; at ~14k decisions/s it adds at most ~20 ms of queueing.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Default `--request-timeout-ms`: longer than the engine's own 2 s decision timeout, so
/// that one normally answers first with its precise reason.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP decision surface: forward-auth.
const HTTP_DECISION_PREFIX: &str = "/authz";

/// `--concurrency-limit`: how the budget of decisions in flight is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LimitMode {
    /// Moved by the latency of admitted decisions, up to `--max-in-flight`.
    Adaptive,
    /// Always `--max-in-flight`.
    #[default]
    Fixed,
}

/// `--concurrency-limit`, `--max-in-flight` and `--request-timeout-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadSettings {
    pub mode: LimitMode,
    /// Decisions admitted at once (the ceiling of the adaptive limit); `0` turns
    /// shedding off (decisions then queue).
    pub max_in_flight: usize,
    /// Longest an admitted decision may take.
    pub request_timeout: Duration,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        OverloadSettings {
            mode: LimitMode::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The node's decision budget. Clones share it; build the layers of both listeners from
/// one `Overload`.
#[derive(Debug, Clone)]
pub struct Overload {
    /// `None` when shedding is off.
    budget: Option<Arc<Budget>>,
    timeout: Duration,
}

/// Decisions in flight against the current limit.
#[derive(Debug)]
struct Budget {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// `None` for a fixed limit. Locked once per finished decision, briefly.
    adaptive: Option<Mutex<AdaptiveLimit>>,
    /// The controller's clock starts here.
    started: Instant,
    /// `quorate_concurrency_limit`.
    gauge: IntGauge,
}

impl Overload {
    /// `gauge` shows the current limit (0 when shedding is off).
    pub fn new(settings: OverloadSettings, gauge: IntGauge) -> Overload {
        let max = settings.max_in_flight;
        gauge.set(i64::try_from(max).unwrap_or(i64::MAX));
        let started = Instant::now();
        let budget = (max > 0).then(|| {
            Arc::new(Budget {
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(max),
                adaptive: (settings.mode == LimitMode::Adaptive).then(|| {
                    Mutex::new(AdaptiveLimit::new(
                        AdaptiveSettings::up_to(max),
                        Duration::ZERO,
                    ))
                }),
                started,
                gauge,
            })
        });
        Overload {
            budget,
            timeout: settings.request_timeout,
        }
    }

    /// For each gRPC decision service (`add_service(overload.grpc_layer().layer(svc))`);
    /// every call of a wrapped service counts.
    pub fn grpc_layer(&self) -> OverloadLayer<Grpc> {
        OverloadLayer {
            overload: self.clone(),
            _answers: PhantomData,
        }
    }

    /// For the HTTP router (`Router::layer(..)`).
    pub fn http_layer(&self) -> OverloadLayer<Http> {
        OverloadLayer {
            overload: self.clone(),
            _answers: PhantomData,
        }
    }
}

/// Most of a shed request read before it is answered, and how long that may take.
const SHED_READ_BYTES: usize = 64 * 1024;
const SHED_READ_TIME: Duration = Duration::from_millis(100);

/// Reads a shed request's body to its end (bounded) before the answer goes out. Answering
/// an HTTP/2 stream whose request is still arriving makes the server reset it, and h2
/// closes the whole connection after 1,024 such resets (its guard against clients that
/// provoke resets): a client of a saturated node would then lose every call in flight on
/// that connection with a transport error instead of a prompt `RESOURCE_EXHAUSTED`.
/// Decision requests are small; a body that is larger or slower is answered anyway.
async fn read_to_end<B: http_body::Body + Unpin>(mut body: B) {
    use http_body_util::BodyExt;
    let read = async {
        let mut bytes = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                bytes = bytes.saturating_add(bytes::Buf::remaining(data));
                if bytes > SHED_READ_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(SHED_READ_TIME, read).await;
}

/// How one surface says "shed" and "timed out", and which of its requests are decisions.
pub trait Surface {
    fn is_decision(path: &str) -> bool;
    fn shed<B: Default>() -> Response<B>;
    fn timed_out<B: Default>() -> Response<B>;
}

/// The gRPC surface: a `RESOURCE_EXHAUSTED` / `DEADLINE_EXCEEDED` status.
#[derive(Debug, Clone, Copy)]
pub enum Grpc {}

/// The HTTP surface: `503` / `504`.
#[derive(Debug, Clone, Copy)]
pub enum Http {}

impl Surface for Grpc {
    fn is_decision(_path: &str) -> bool {
        true // only decision services are wrapped
    }

    fn shed<B: Default>() -> Response<B> {
        tonic::Status::resource_exhausted(
            "node saturated: too many decisions in flight; retry with backoff",
        )
        .into_http()
    }

    fn timed_out<B: Default>() -> Response<B> {
        tonic::Status::deadline_exceeded("decision not answered within the request timeout")
            .into_http()
    }
}

impl Surface for Http {
    fn is_decision(path: &str) -> bool {
        path.strip_prefix(HTTP_DECISION_PREFIX)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn shed<B: Default>() -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }

    fn timed_out<B: Default>() -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        response
    }
}

impl Budget {
    /// A place for one decision, or `None` when the budget is spent.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Admitted {
            // Only the adaptive limit needs the latency; a fixed one skips the clock read.
            at: self.adaptive.is_some().then(Instant::now),
            budget: Arc::clone(self),
        })
    }
}

/// One admitted decision's place in the budget; given back on drop.
#[derive(Debug)]
struct Admitted {
    budget: Arc<Budget>,
    /// When it was admitted (adaptive limits only).
    at: Option<Instant>,
}

impl Admitted {
    /// The decision was answered (or timed out): its latency feeds the adaptive limit.
    fn answered(self) {
        let (Some(adaptive), Some(at)) = (&self.budget.adaptive, self.at) else {
            return;
        };
        let now = Instant::now();
        let changed = adaptive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(now - at, now - self.budget.started);
        if let Some(limit) = changed {
            self.budget.limit.store(limit, Ordering::Relaxed);
            self.budget
                .gauge
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.budget.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wraps a surface's service in [`OverloadService`].
#[derive(Debug)]
pub struct OverloadLayer<A> {
    overload: Overload,
    _answers: PhantomData<fn() -> A>,
}

impl<A> Clone for OverloadLayer<A> {
    fn clone(&self) -> Self {
        OverloadLayer {
            overload: self.overload.clone(),
            _answers: PhantomData,
        }
    }
}

impl<S, A> Layer<S> for OverloadLayer<A> {
    type Service = OverloadService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        OverloadService {
            inner,
            overload: self.overload.clone(),
            _answers: PhantomData,
        }
    }
}

/// Admits a decision only with a permit of the budget, and bounds its time.
#[derive(Debug)]
pub struct OverloadService<S, A> {
    inner: S,
    overload: Overload,
    _answers: PhantomData<fn() -> A>,
}

impl<S: Clone, A> Clone for OverloadService<S, A> {
    fn clone(&self) -> Self {
        OverloadService {
            inner: self.inner.clone(),
            overload: self.overload.clone(),
            _answers: PhantomData,
        }
    }
}

impl<S: tonic::server::NamedService, A> tonic::server::NamedService for OverloadService<S, A> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, A, ReqBody, ResBody> Service<Request<ReqBody>> for OverloadService<S, A>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    A: Surface,
    ReqBody: http_body::Body + Send + Unpin + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !A::is_decision(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let admitted = match &self.overload.budget {
            None => None,
            Some(budget) => match budget.admit() {
                Some(admitted) => Some(admitted),
                None => {
                    tracing::debug!(path = request.uri().path(), "decision shed: node saturated");
                    let body = request.into_body();
                    return Box::pin(async move {
                        read_to_end(body).await;
                        Ok(A::shed())
                    });
                }
            },
        };
        let answer = self.inner.call(request);
        let timeout = self.overload.timeout;
        Box::pin(async move {
            // Held until the answer is ready: the budget counts decisions, not sockets.
            // A call dropped before (the client went away) gives its place back unmeasured.
            let answer = match tokio::time::timeout(timeout, answer).await {
                Ok(result) => result,
                Err(_) => Ok(A::timed_out()),
            };
            if let Some(admitted) = admitted {
                admitted.answered();
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;

    fn test_gauge() -> IntGauge {
        IntGauge::new("quorate_concurrency_limit", "test").unwrap()
    }

    fn in_flight(overload: &Overload) -> usize {
        overload
            .budget
            .as_ref()
            .unwrap()
            .in_flight
            .load(Ordering::Acquire)
    }

    #[test]
    fn only_forward_auth_counts_on_http() {
        assert!(Http::is_decision("/authz"));
        assert!(Http::is_decision("/authz/"));
        assert!(Http::is_decision("/authz/api/v1/items"));
        assert!(!Http::is_decision("/authzx"));
        assert!(!Http::is_decision("/healthz"));
        assert!(!Http::is_decision("/metrics"));
        assert!(!Http::is_decision("/admin/v1/policy"));
    }

    #[tokio::test]
    async fn a_spent_budget_sheds_at_once_and_a_returned_permit_admits_again() {
        use tower::ServiceExt;

        let overload = Overload::new(
            OverloadSettings {
                mode: LimitMode::Fixed,
                max_in_flight: 1,
                request_timeout: Duration::from_secs(5),
            },
            test_gauge(),
        );
        // `/authz` answers only once the gate opens; other paths at once.
        let (gate, opened) = tokio::sync::watch::channel(false);
        let slow = tower::service_fn(move |request: Request<Empty<Bytes>>| {
            let mut opened = opened.clone();
            async move {
                if request.uri().path() == "/authz" {
                    let _ = opened.wait_for(|open| *open).await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(String::from("answered")))
            }
        });
        let svc = overload.http_layer().layer(slow);
        let call = |path: &'static str| {
            let svc = svc.clone();
            async move {
                let request = Request::builder().uri(path).body(Empty::new()).unwrap();
                svc.oneshot(request).await.unwrap()
            }
        };

        let first = tokio::spawn(call("/authz"));
        tokio::task::yield_now().await;
        // Wait until the first call holds the only permit.
        while in_flight(&overload) < 1 {
            tokio::task::yield_now().await;
        }
        let shed = call("/authz/x").await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()[header::RETRY_AFTER], "1");
        // Not a decision: never shed.
        assert_eq!(call("/healthz").await.body(), "answered");

        gate.send(true).unwrap();
        assert_eq!(first.await.unwrap().body(), "answered");
        assert_eq!(call("/authz").await.body(), "answered");
    }

    #[tokio::test]
    async fn an_admitted_decision_is_bounded_by_the_timeout() {
        use tower::ServiceExt;

        let overload = Overload::new(
            OverloadSettings {
                mode: LimitMode::Fixed,
                max_in_flight: 4,
                request_timeout: Duration::from_millis(100),
            },
            test_gauge(),
        );
        let never = tower::service_fn(|_: Request<Empty<Bytes>>| async {
            std::future::pending::<()>().await;
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        });
        let request = Request::builder()
            .uri("/quorate.v1.RateLimiter/Check")
            .body(Empty::new())
            .unwrap();
        let response = overload
            .grpc_layer()
            .layer(never)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
                                                            // The permit came back.
        assert_eq!(in_flight(&overload), 0);
    }

    /// The adaptive budget end to end through the layer: decisions that get slow shrink
    /// the limit (and the gauge) until the callers find it spent, and latency that stays
    /// slow at the minimum lets it grow back. (Growing back to exactly the maximum is the
    /// controller's own test: on a real clock, on a shared machine, it is too fine to
    /// assert here.)
    #[tokio::test]
    async fn slow_decisions_shrink_the_adaptive_limit_until_it_sheds() {
        use tower::ServiceExt;

        let gauge = test_gauge();
        let overload = Overload::new(
            OverloadSettings {
                mode: LimitMode::Adaptive,
                max_in_flight: 64,
                request_timeout: Duration::from_secs(5),
            },
            gauge.clone(),
        );
        assert_eq!(gauge.get(), 64);
        // Each decision takes as long as its path says, in ms (`/authz/<ms>`).
        let svc = overload.http_layer().layer(tower::service_fn(
            |request: Request<Empty<Bytes>>| async move {
                let ms = request.uri().path().trim_start_matches("/authz/");
                let ms = ms.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, std::convert::Infallible>(Response::new(String::from("answered")))
            },
        ));
        // `calls` decisions of `ms` each, 8 at a time (those over the limit are shed);
        // returns how many were shed and the lowest limit seen after a batch.
        let run = |ms: u64, calls: usize| {
            let svc = svc.clone();
            let gauge = gauge.clone();
            async move {
                let (mut shed, mut lowest) = (0, gauge.get());
                for _ in 0..calls / 8 {
                    let batch = (0..8).map(|_| {
                        let request = Request::builder()
                            .uri(format!("/authz/{ms}"))
                            .body(Empty::new())
                            .unwrap();
                        svc.clone().oneshot(request)
                    });
                    for answer in futures::future::join_all(batch).await {
                        let status = answer.unwrap().status();
                        assert!(
                            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                            "{status}"
                        );
                        shed += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
                    }
                    lowest = lowest.min(gauge.get());
                }
                (shed, lowest)
            }
        };
        let (shed, _) = run(1, 400).await; // baseline: about 1 ms
        assert_eq!((shed, gauge.get()), (0, 64));
        // About 100× the baseline: the limit halves per window down to the minimum, and
        // the 8 callers find it spent.
        let (shed, lowest) = run(100, 160).await;
        assert_eq!(lowest, adaptive::DEFAULT_MIN_LIMIT as i64);
        assert!(
            shed > 0,
            "nothing shed at a limit of {lowest} with 8 callers"
        );
        // The latency stays at 100 ms whatever the limit: not queueing, so the windows at
        // the minimum reset the baseline and the limit grows back.
        run(100, 320).await;
        assert!(
            gauge.get() > adaptive::DEFAULT_MIN_LIMIT as i64,
            "{}",
            gauge.get()
        );
        assert_eq!(in_flight(&overload), 0);
    }
}
