//! The outermost layer: matches the route once (its template labels the span and the metrics),
//! opens the request's span, reads or makes its correlation ID and trace (`RequestContext`), and
//! writes the access log line when the answer is ready. It makes the request's [`Exchange`].

use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::Method;
use portico_telemetry::RequestContext;
use tracing::{field::Empty, Instrument as _};

use super::{Exchange, Handle, Matched};
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

impl<S> tower::Layer<S> for Trace {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced {
            routes: Arc::clone(&self.routes),
            inner,
        }
    }
}

/// The stack under [`Trace`].
#[derive(Debug, Clone)]
pub struct Traced<S> {
    routes: Arc<RouteTable>,
    inner: S,
}

impl<S> Traced<S> {
    /// Answers one request from `peer` through the whole stack.
    pub async fn serve<B>(&self, request: http::Request<B>, peer: SocketAddr) -> Response
    where
        S: Handle<B>,
        B: Send + 'static,
    {
        let started = Instant::now();
        let method = request.method();
        // HEAD is GET without the body.
        let lookup = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let matched = match self.routes.find(lookup, request.uri().path()) {
            Match::Found(route, params) => Matched::Found(Arc::clone(route), params),
            Match::MethodNotAllowed(allowed) => Matched::MethodNotAllowed(allowed),
            Match::NotFound => Matched::NotFound,
        };
        let route_label = matched.label();
        // The IDs are read first so that the span is made with them.
        let incoming = portico_telemetry::Incoming::read(request.headers());
        let span = tracing::info_span!(
            "http.request",
            // Only the OpenTelemetry layer reads it: not formatted when nothing exports.
            otel.name = portico_telemetry::otlp_enabled().then(|| format!("{method} {route_label}")),
            otel.kind = "server",
            http.request.method = %method,
            http.route = route_label,
            http.response.status_code = Empty,
            component = "edge",
            correlation_id = incoming.correlation_id.as_str(),
            trace_id = incoming.trace_id.as_deref(),
        );
        let context = RequestContext::with_ids(span.clone(), request.headers(), incoming);
        let mut exchange = Exchange {
            peer,
            matched,
            context,
            client_ip: peer.ip(),
        };
        let response = async {
            let response = self.inner.handle(request, &mut exchange).await;
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
    use tower::Layer as _;

    /// Records what the inner layers saw.
    #[derive(Clone, Default)]
    struct Seen(Arc<std::sync::Mutex<Vec<(String, String)>>>);

    impl<B: Send + 'static> Handle<B> for Seen {
        async fn handle<'a>(&'a self, _: http::Request<B>, exchange: &'a mut Exchange) -> Response {
            self.0.lock().expect("lock").push((
                exchange.matched.label().to_owned(),
                exchange.correlation_id().to_owned(),
            ));
            crate::response::empty_response(http::StatusCode::OK)
        }
    }

    #[tokio::test]
    async fn the_route_and_the_callers_correlation_id_reach_the_inner_layers() {
        let seen = Seen::default();
        let stack = Trace::new(Arc::new(RouteTable::portico())).layer(seen.clone());
        let peer = SocketAddr::from(([192, 0, 2, 7], 5000));
        let request = http::Request::builder()
            .method(Method::HEAD)
            .uri("/api/v1/api-keys/abc")
            .header(portico_telemetry::CORRELATION_HEADER, "req-42")
            .body(())
            .expect("request");
        let response = stack.serve(request, peer).await;
        assert_eq!(response.status(), 200);
        let request = http::Request::get("/nowhere").body(()).expect("request");
        stack.serve(request, peer).await;
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
