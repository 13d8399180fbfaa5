//! The outermost layer: matches the route once (its template labels the span and the metrics),
//! opens the request's span, reads or makes its correlation ID and trace (`RequestContext`), and
//! writes the access log line when the answer is ready.

use std::{sync::Arc, time::Instant};

use http::Method;
use portico_telemetry::RequestContext;
use tracing::{field::Empty, Instrument as _};

use super::{Matched, Next, Step};
use crate::{
    routes::{Match, RouteTable},
    Response,
};

/// See the module.
#[derive(Debug, Clone)]
pub struct Trace {
    routes: Arc<RouteTable>,
}

impl Trace {
    /// Matches against `routes`.
    pub fn new(routes: Arc<RouteTable>) -> Self {
        Self { routes }
    }
}

impl Step for Trace {
    async fn call<B: Send + 'static>(
        &self,
        mut request: http::Request<B>,
        next: impl Next<B>,
    ) -> Response {
        let started = Instant::now();
        let method = request.method().clone();
        // HEAD is GET without the body.
        let lookup = if method == Method::HEAD {
            &Method::GET
        } else {
            &method
        };
        let matched = match self.routes.find(lookup, request.uri().path()) {
            Match::Found(route, params) => Matched::Found(Arc::clone(route), params.into()),
            Match::MethodNotAllowed(allowed) => Matched::MethodNotAllowed(allowed.into()),
            Match::NotFound => Matched::NotFound,
        };
        let route_label = matched.label();
        let span = tracing::info_span!(
            "http.request",
            // Only the OpenTelemetry layer reads it: not formatted when nothing exports.
            otel.name = portico_telemetry::otlp_enabled().then(|| format!("{method} {route_label}")),
            otel.kind = "server",
            http.request.method = %method,
            http.route = route_label,
            http.response.status_code = Empty,
            component = "edge",
            correlation_id = Empty,
            trace_id = Empty,
        );
        let context = RequestContext::attach(span.clone(), request.headers());
        request.extensions_mut().insert(context);
        request.extensions_mut().insert(matched);
        let response = async {
            let response = next.run(request).await;
            // The access log line. Method and route are the span's (`http.request.method`,
            // `http.route`), printed once with it; the latency is rounded to the microsecond.
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::info!(
                status = response.status().as_u16(),
                latency_ms = micros as f64 / 1000.0,
                "request"
            );
            response
        }
        .instrument(span.clone())
        .await;
        span.record("http.response.status_code", response.status().as_u16());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{testing, StepLayer};
    use tower::{Layer as _, ServiceExt as _};

    /// Records what the inner service saw.
    #[derive(Clone, Default)]
    struct Seen(Arc<std::sync::Mutex<Vec<(String, String)>>>);

    impl<B: Send + 'static> tower::Service<http::Request<B>> for Seen {
        type Response = Response;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response, std::convert::Infallible>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<B>) -> Self::Future {
            let label = request
                .extensions()
                .get::<Matched>()
                .map_or("none", Matched::label);
            let correlation = crate::layers::correlation_id(&request);
            self.0
                .lock()
                .expect("lock")
                .push((label.to_owned(), correlation));
            std::future::ready(Ok(crate::response::empty_response(http::StatusCode::OK)))
        }
    }

    #[tokio::test]
    async fn the_route_and_the_callers_correlation_id_reach_the_inner_layers() {
        let seen = Seen::default();
        let service = StepLayer(Trace::new(Arc::new(RouteTable::portico()))).layer(seen.clone());
        let request = http::Request::builder()
            .method(Method::HEAD)
            .uri("/api/v1/api-keys/abc")
            .header(portico_telemetry::CORRELATION_HEADER, "req-42")
            .body(())
            .expect("request");
        let response = service.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), 200);
        let service = StepLayer(Trace::new(Arc::new(RouteTable::portico()))).layer(seen.clone());
        let _ = service
            .oneshot(testing::request(Method::GET, "/nowhere"))
            .await;
        let seen = seen.0.lock().expect("lock").clone();
        assert_eq!(
            seen[0],
            ("/api/v1/api-keys/{id}".to_owned(), "req-42".to_owned())
        );
        assert_eq!(seen[1].0, "unmatched");
        assert!(
            !seen[1].1.is_empty(),
            "a correlation ID is made when none is sent"
        );
    }
}
