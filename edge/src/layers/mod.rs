//! The edge's middleware as one tower stack, outermost first:
//!
//! | layer | file | does |
//! |---|---|---|
//! | [`trace::Trace`] | trace.rs | matches the route, opens the request's span and context (correlation ID, trace), writes the access log line |
//! | [`metrics::Metrics`] | metrics.rs | `http_requests_total`, time to first byte, duration to the last byte |
//! | [`headers::ResponseHeaders`] | headers.rs | `nosniff`, `private, no-store` and `Vary` for credentialed requests, `x-correlation-id` |
//! | [`cors::CorsLayer`] | cors.rs | answers preflights, adds `Access-Control-*` (the policy is `crate::cors::Cors`) |
//! | [`dialect::ErrorDialect`] | dialect.rs | errors in OpenAI's shape on `/v1/*` |
//! | [`request_limits::RequestLimits`] | request_limits.rs | 413 for a declared body over the limit, 431/401 for oversized forwarded headers, `x-api-key` as a bearer |
//! | [`routing::Routing`] | routing.rs | 404 and 405 (with `Allow`) |
//! | [`maintenance::Maintenance`] | maintenance.rs | 503 with `Retry-After` in maintenance mode, except health and metrics |
//! | [`rate_limit::RateLimit`] | rate_limit.rs | the `global` policy, the route's own, the API key's rate; RateLimit headers |
//!
//! and then the dispatch (`Edge::dispatch`): the transcoder, a hook, or an edge route. Each layer
//! reads what the outer ones found from the request's extensions ([`Matched`],
//! `RequestContext`, [`Peer`]) and can be tested alone over any inner service.

pub mod cors;
pub mod dialect;
pub mod headers;
pub mod maintenance;
pub mod metrics;
pub mod rate_limit;
pub mod request_limits;
pub mod routing;
pub mod trace;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Method;
use portico_telemetry::RequestContext;
use tower::{Layer, Service, ServiceExt as _};

use crate::{routes::Route, Response};

/// The route a request matched (set by [`trace::Trace`]).
#[derive(Debug, Clone)]
pub enum Matched {
    /// A route serves the method and path; the path's raw variables.
    Found(Arc<Route>, Arc<[(String, String)]>),
    /// The path exists with these methods.
    MethodNotAllowed(Arc<[Method]>),
    /// No route has the path.
    NotFound,
}

impl Matched {
    /// The `http.route` label.
    pub fn label(&self) -> &'static str {
        match self {
            Matched::Found(route, _) => route.path,
            _ => "unmatched",
        }
    }

    /// The route, when one matched.
    pub fn route(&self) -> Option<&Route> {
        match self {
            Matched::Found(route, _) => Some(route),
            _ => None,
        }
    }
}

/// The TCP peer of the connection (set by `Edge::handle`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The correlation ID of a request whose context is set (empty before [`trace::Trace`]).
pub(crate) fn correlation_id<B>(request: &http::Request<B>) -> String {
    request
        .extensions()
        .get::<RequestContext>()
        .map(|context| context.correlation_id.clone())
        .unwrap_or_default()
}

/// The rest of the stack, as a middleware step sees it.
pub trait Next<B>: Send + 'static {
    /// Runs the rest of the stack.
    fn run(self, request: http::Request<B>) -> impl Future<Output = Response> + Send;
}

impl<S, B> Next<B> for S
where
    S: Service<http::Request<B>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    async fn run(self, request: http::Request<B>) -> Response {
        match self.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// One middleware step: what it does before and after the rest of the stack.
pub trait Step: Clone + Send + Sync + 'static {
    /// Answers `request`, calling `next` for the rest of the stack when it goes on.
    fn call<B: Send + 'static>(
        &self,
        request: http::Request<B>,
        next: impl Next<B>,
    ) -> impl Future<Output = Response> + Send;
}

/// A [`Step`] as a tower layer.
#[derive(Debug, Clone)]
pub struct StepLayer<M>(pub M);

impl<M: Clone, S> Layer<S> for StepLayer<M> {
    type Service = Stepped<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stepped {
            step: self.0.clone(),
            inner,
        }
    }
}

/// A [`Step`] around an inner service.
#[derive(Debug, Clone)]
pub struct Stepped<M, S> {
    step: M,
    inner: S,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<M, S, B> Service<http::Request<B>> for Stepped<M, S>
where
    M: Step,
    S: Service<http::Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every layer and the dispatch are always ready: back-pressure is the server's.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> BoxFuture {
        let step = self.step.clone();
        let inner = self.inner.clone();
        Box::pin(async move { Ok(step.call(request, inner).await) })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! An inner service that answers 200 and says whether it was reached.

    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;

    /// Counts the requests that reached it.
    #[derive(Debug, Clone, Default)]
    pub struct Inner(pub Arc<AtomicUsize>);

    impl Inner {
        pub fn reached(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl<B: Send + 'static> Service<http::Request<B>> for Inner {
        type Response = Response;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<B>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(crate::response::json_response(
                http::StatusCode::OK,
                &serde_json::json!({"ok": true}),
            )))
        }
    }

    /// A request with a context, as the trace layer leaves it.
    pub fn request(method: Method, path: &str) -> http::Request<()> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request");
        let span = tracing::info_span!(
            "test",
            correlation_id = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        let context = RequestContext::attach(span, request.headers());
        request.extensions_mut().insert(context);
        request
    }

    /// Runs one layer over [`Inner`].
    pub async fn run<M: Step>(step: M, request: http::Request<()>) -> (Response, Inner) {
        let inner = Inner::default();
        let service = StepLayer(step).layer(inner.clone());
        let response = service
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        (response, inner)
    }
}
