//! Load shedding and a request timeout for the public decision surfaces.
//!
//! A node that takes more decisions than it can answer would otherwise queue them in the
//! batcher until each one hits the 2 s decision timeout: every caller waits, and the
//! answers that do come back come late. Instead, one node-wide budget of decisions in
//! flight (`--max-in-flight`) is shared by the gRPC decision services (`quorate.v1`,
//! Envoy RLS, ext_authz) and HTTP forward-auth (`/authz`). A decision that finds the
//! budget spent is answered at once, before any policy lookup or counter, with
//! `RESOURCE_EXHAUSTED` (gRPC) or `503` with `Retry-After: 1` (HTTP); admitted ones keep
//! the latency of a node at its capacity. Every admitted decision is also bounded by
//! `--request-timeout-ms` (`DEADLINE_EXCEEDED` / `504`).
//!
//! Health, reflection, metrics, the dashboard and the admin API are never shed: probes
//! and operators must still reach a saturated node. The peer port is not wrapped at all.
//!
//! On gRPC the layer wraps each decision service (so health and reflection, registered
//! unwrapped, never count); on HTTP it wraps the router and counts `/authz` only.
//!
//! Why not tonic's `concurrency_limit_per_connection` + `load_shed`: that budget is per
//! connection (a flood over many connections is never shed) and covers health checks
//! too. The budget here is a `tokio::sync::Semaphore`; taking a permit never waits.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

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

/// `--max-in-flight` and `--request-timeout-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadSettings {
    /// Decisions admitted at once; `0` turns shedding off (decisions then queue).
    pub max_in_flight: usize,
    /// Longest an admitted decision may take.
    pub request_timeout: Duration,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        OverloadSettings {
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
    permits: Option<Arc<Semaphore>>,
    timeout: Duration,
}

impl Overload {
    pub fn new(settings: OverloadSettings) -> Overload {
        Overload {
            permits: (settings.max_in_flight > 0)
                .then(|| Arc::new(Semaphore::new(settings.max_in_flight))),
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
        let permit = match &self.overload.permits {
            None => None,
            Some(permits) => match Arc::clone(permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    tracing::debug!(path = request.uri().path(), "decision shed: node saturated");
                    return Box::pin(std::future::ready(Ok(A::shed())));
                }
            },
        };
        let answer = self.inner.call(request);
        let timeout = self.overload.timeout;
        Box::pin(async move {
            // Held until the answer is ready: the budget counts decisions, not sockets.
            let _permit = permit;
            match tokio::time::timeout(timeout, answer).await {
                Ok(result) => result,
                Err(_) => Ok(A::timed_out()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let overload = Overload::new(OverloadSettings {
            max_in_flight: 1,
            request_timeout: Duration::from_secs(5),
        });
        // `/authz` answers only once the gate opens; other paths at once.
        let (gate, opened) = tokio::sync::watch::channel(false);
        let slow = tower::service_fn(move |request: Request<()>| {
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
                let request = Request::builder().uri(path).body(()).unwrap();
                svc.oneshot(request).await.unwrap()
            }
        };

        let first = tokio::spawn(call("/authz"));
        tokio::task::yield_now().await;
        // Wait until the first call holds the only permit.
        while overload.permits.as_ref().unwrap().available_permits() > 0 {
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

        let overload = Overload::new(OverloadSettings {
            max_in_flight: 4,
            request_timeout: Duration::from_millis(100),
        });
        let never = tower::service_fn(|_: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        });
        let request = Request::builder()
            .uri("/quorate.v1.RateLimiter/Check")
            .body(())
            .unwrap();
        let response = overload
            .grpc_layer()
            .layer(never)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "4"); // DEADLINE_EXCEEDED
                                                            // The permit came back.
        assert_eq!(overload.permits.as_ref().unwrap().available_permits(), 4);
    }
}
