//! The edge's middleware as one stack of tower layers, outermost first:
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
//! | [`rate_limit::RateLimit`] | rate_limit.rs | the client IP; the `global` policy, the route's own, the API key's rate; RateLimit headers |
//! | [`timeout::Timeout`] | timeout.rs | 504 when the answer's head is not ready within the route's deadline |
//!
//! and then the dispatch (`crate::Dispatch`): the transcoder, a hook, or an edge route.
//!
//! Each layer is a [`tower::Layer`] and the stack is composed with [`tower::ServiceBuilder`]
//! once, when the edge starts serving ([`crate::Edge::stack`]). The call path is this module's
//! [`Handle`] rather than [`tower::Service`]: tower's `call(&mut self) -> 'static future` makes
//! every layer clone the rest of the stack and box (or nest) its future on every request, which
//! measured 0.84× of the hand-written path's `/healthz` throughput. A [`Handle`] borrows the
//! stack instead, so a request costs no clone, no allocation and no box for the layers; the
//! whole stack is one future, as large as the hand-written function it replaced. What the outer
//! layers found (the route, the context, the client IP) travels with the request as its
//! [`Exchange`], typed, rather than in the request's extensions map.

pub mod cors;
pub mod dialect;
pub mod headers;
pub mod maintenance;
pub mod metrics;
pub mod rate_limit;
pub mod request_limits;
pub mod routing;
pub mod timeout;
pub mod trace;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::Method;
use portico_telemetry::RequestContext;

use crate::{routes::Route, Response};

/// The route a request matched (found by [`trace::Trace`]).
#[derive(Debug, Clone)]
pub enum Matched {
    /// A route serves the method and path; the path's raw variables.
    Found(Arc<Route>, Vec<(String, String)>),
    /// The path exists with these methods.
    MethodNotAllowed(Vec<Method>),
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

    /// Whether the route is health or metrics (never limited, up in maintenance).
    pub fn is_operational(&self) -> bool {
        self.route().is_some_and(Route::is_operational)
    }
}

/// What one request carries through the stack besides the HTTP request: what the outer layers
/// found, for the inner ones and the dispatch.
#[derive(Debug)]
pub struct Exchange {
    /// The TCP peer of the connection.
    pub peer: SocketAddr,
    /// The route.
    pub matched: Matched,
    /// The correlation ID, trace and span.
    pub context: RequestContext,
    /// The client's IP after `TRUSTED_PROXIES` (the peer's until [`rate_limit::RateLimit`]
    /// resolves it).
    pub client_ip: IpAddr,
}

impl Exchange {
    /// The request's correlation ID.
    pub fn correlation_id(&self) -> &str {
        &self.context.correlation_id
    }
}

/// The rest of the stack as a layer sees it (the next layer, or the dispatch).
pub trait Handle<B>: Send + Sync + 'static {
    /// Answers `request`.
    fn handle<'a>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
    ) -> impl Future<Output = Response> + Send + 'a;
}

/// One middleware step: what it does before and after the rest of the stack.
pub trait Step: Send + Sync + 'static {
    /// Answers `request`, calling `next` for the rest of the stack when it goes on.
    fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> impl Future<Output = Response> + Send + 'a;
}

/// A [`Step`] as a tower layer.
#[derive(Debug, Clone)]
pub struct StepLayer<M>(pub M);

impl<M: Clone, S> tower::Layer<S> for StepLayer<M> {
    type Service = Stepped<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stepped {
            step: self.0.clone(),
            inner,
        }
    }
}

/// A [`Step`] around the rest of the stack.
#[derive(Debug, Clone)]
pub struct Stepped<M, S> {
    step: M,
    inner: S,
}

impl<M: Step, S: Handle<B>, B: Send + 'static> Handle<B> for Stepped<M, S> {
    fn handle<'a>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
    ) -> impl Future<Output = Response> + Send + 'a {
        self.step.call(request, exchange, &self.inner)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! An inner service that answers 200 and says whether it was reached.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::Layer as _;

    use super::*;

    /// Counts the requests that reached it.
    #[derive(Debug, Clone, Default)]
    pub struct Inner(pub Arc<AtomicUsize>);

    impl Inner {
        pub fn reached(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl<B: Send + 'static> Handle<B> for Inner {
        async fn handle<'a>(&'a self, _: http::Request<B>, _: &'a mut Exchange) -> Response {
            self.0.fetch_add(1, Ordering::SeqCst);
            crate::response::json_response(http::StatusCode::OK, &serde_json::json!({"ok": true}))
        }
    }

    /// A request and the exchange the outer layers leave for it (no route matched).
    pub fn request(method: Method, path: &str) -> (http::Request<()>, Exchange) {
        let request = http::Request::builder()
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
        let exchange = Exchange {
            peer: SocketAddr::from(([192, 0, 2, 1], 40000)),
            matched: Matched::NotFound,
            context,
            client_ip: IpAddr::from([192, 0, 2, 1]),
        };
        (request, exchange)
    }

    /// Runs one layer over [`Inner`].
    pub async fn run<M: Step + Clone>(
        step: M,
        (request, mut exchange): (http::Request<()>, Exchange),
    ) -> (Response, Inner) {
        let inner = Inner::default();
        let service = StepLayer(step).layer(inner.clone());
        let response = service.handle(request, &mut exchange).await;
        (response, inner)
    }
}
