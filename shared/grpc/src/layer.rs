//! The tower layer that gives every RPC its [`RequestContext`]: one span per RPC, parented on
//! the caller's `traceparent`, carrying `correlation_id`; the ID is echoed in the response
//! metadata and available to handlers through the request's extensions.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderValue;
use portico_telemetry::{RequestContext, CORRELATION_HEADER};
use tower::{Layer, Service};
use tracing::{field::Empty, Instrument as _};

/// Adds [`RequestContextService`] around a gRPC server.
#[derive(Debug, Clone, Copy)]
pub struct RequestContextLayer {
    component: &'static str,
}

impl RequestContextLayer {
    /// A layer whose spans name `component`.
    pub fn new(component: &'static str) -> Self {
        Self { component }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            component: self.component,
        }
    }
}

/// See [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    component: &'static str,
}

impl<S, B, R> Service<http::Request<B>> for RequestContextService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; keep the ready one for this call (tower's readiness contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %method.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            component = self.component,
            correlation_id = Empty,
            trace_id = Empty,
        );
        let context = RequestContext::attach(span.clone(), request.headers());
        let echo = HeaderValue::from_str(&context.correlation_id).ok();
        request.extensions_mut().insert(context);
        Box::pin(
            async move {
                let mut response = inner.call(request).await?;
                if let Some(echo) = echo {
                    response.headers_mut().insert(CORRELATION_HEADER, echo);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
