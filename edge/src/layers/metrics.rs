//! `http_requests_total` by method, route and status; the time to the first byte; and the
//! duration to the body's last byte (a stream's whole length), labelled by the matched route.

use std::time::Instant;

use portico_telemetry::metrics;

use super::{Exchange, Handle, Step};
use crate::{response, Response};

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics;

impl Step for Metrics {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let started = Instant::now();
        let method = metrics::method_label(request.method());
        let route = exchange.matched.label();
        let response = next.handle(request, exchange).await;
        let http_metrics = metrics::http();
        http_metrics
            .requests
            .get_or_create(&metrics::HttpLabels {
                method,
                route,
                status: response.status().as_u16(),
            })
            .inc();
        let labels = metrics::RouteLabels { method, route };
        http_metrics
            .first_byte
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        // The duration runs to the body's last byte: a stream's whole length.
        let duration = http_metrics.duration.get_or_create(&labels).clone();
        response.map(|body| response::timed(body, started, duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;

    #[tokio::test]
    async fn each_answer_is_counted_under_its_route_and_status() {
        let labels = metrics::HttpLabels {
            method: metrics::method_label(&http::Method::GET),
            route: "unmatched",
            status: 200,
        };
        let before = metrics::http().requests.get_or_create(&labels).get();
        let (response, inner) =
            testing::run(Metrics, testing::request(http::Method::GET, "/x")).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
        assert!(metrics::http().requests.get_or_create(&labels).get() > before);
    }
}
