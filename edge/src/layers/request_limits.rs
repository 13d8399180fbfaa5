//! Limits checked before anything else reads the request: a declared body over the limit is
//! 413 (a chunked one is stopped where the body is read, `crate::read_body`), a forwarded
//! header over `EDGE_MAX_FORWARDED_HEADER_BYTES` is 401 (`Authorization`) or 431; and
//! `x-api-key: pk_…` becomes `Authorization: Bearer pk_…` for the layers and services after
//! this one.

use super::{Exchange, Handle, Step};
use crate::{api_key_routes, check_declared_length, check_forwarded_headers, Response};

/// See the module.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    max_forwarded_header_bytes: usize,
}

impl RequestLimits {
    /// With `EDGE_MAX_FORWARDED_HEADER_BYTES`.
    pub fn new(max_forwarded_header_bytes: usize) -> Self {
        Self {
            max_forwarded_header_bytes,
        }
    }
}

impl Step for RequestLimits {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        mut request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let checked = check_declared_length(request.headers())
            .and_then(|()| {
                check_forwarded_headers(request.headers(), self.max_forwarded_header_bytes)
            })
            .and_then(|()| api_key_routes::api_key_as_bearer(request.headers_mut()));
        match checked {
            Ok(()) => next.handle(request, exchange).await,
            Err(error) => error.into_response(exchange.correlation_id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use http::{HeaderValue, Method};

    #[tokio::test]
    async fn oversized_requests_stop_here() {
        let layer = RequestLimits::new(64);
        let (mut large, exchange) = testing::request(Method::POST, "/api/v1/auth/login");
        large.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(portico_config::BODY_LIMIT_BYTES + 1),
        );
        let (response, inner) = testing::run(layer, (large, exchange)).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (413, 0));
        let (mut header, exchange) = testing::request(Method::GET, "/healthz");
        header.headers_mut().insert(
            "tracestate",
            HeaderValue::from_str(&"x".repeat(65)).expect("value"),
        );
        let (response, inner) = testing::run(layer, (header, exchange)).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (431, 0));
        let (mut token, exchange) = testing::request(Method::GET, "/api/v1/auth/me");
        token.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", "x".repeat(64))).expect("value"),
        );
        let (response, inner) = testing::run(layer, (token, exchange)).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (401, 0));
        let (response, inner) =
            testing::run(layer, testing::request(Method::GET, "/healthz")).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
    }
}
