//! CORS as a layer: a preflight is answered here (204) and never reaches the routes; every
//! other answer gets the `Access-Control-*` headers the policy gives its Origin. The policy is
//! `crate::cors::Cors` (from `CORS_ORIGINS`, `CORS_ALLOW_CREDENTIALS`, `CORS_ALLOW_HEADERS`,
//! `CORS_EXPOSE_HEADERS`) rather than tower-http's `CorsLayer`, which cannot allow request
//! headers by prefix (`x-stainless-*`, what the OpenAI SDKs send: it can list names, allow any,
//! or mirror whatever is asked), answers preflights with 200, and sends
//! `Access-Control-Allow-Methods` to origins it refuses: see docs/ARCHITECTURE.md.

use std::sync::Arc;

use http::StatusCode;

use super::{Exchange, Handle, Step};
use crate::{cors::Cors, response, Response};

/// See the module.
#[derive(Debug, Clone)]
pub struct CorsLayer {
    policy: Arc<Cors>,
}

impl CorsLayer {
    /// Applies `policy`.
    pub fn new(policy: Cors) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl Step for CorsLayer {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let preflight = Cors::is_preflight(request.method(), request.headers());
        // What CORS reads once the answer is ready (nothing to copy without an Origin).
        let origin = Cors::request_part(request.headers());
        let mut response = if preflight {
            response::empty_response(StatusCode::NO_CONTENT)
        } else {
            next.handle(request, exchange).await
        };
        self.policy
            .apply(&origin, response.headers_mut(), preflight);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;
    use http::{HeaderValue, Method};

    #[tokio::test]
    async fn preflights_are_answered_here_and_allowed_origins_get_the_headers() {
        let layer = CorsLayer::new(Cors::new(&["https://app.example".to_owned()], false));
        let (mut preflight, exchange) = testing::request(Method::OPTIONS, "/api/v1/auth/login");
        let headers = preflight.headers_mut();
        headers.insert("origin", HeaderValue::from_static("https://app.example"));
        headers.insert(
            "access-control-request-method",
            HeaderValue::from_static("POST"),
        );
        let (response, inner) = testing::run(layer.clone(), (preflight, exchange)).await;
        assert_eq!(response.status(), 204);
        assert_eq!(inner.reached(), 0, "a preflight never reaches the routes");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let (mut other, exchange) = testing::request(Method::GET, "/healthz");
        other
            .headers_mut()
            .insert("origin", HeaderValue::from_static("https://evil.example"));
        let (response, inner) = testing::run(layer, (other, exchange)).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
    }
}
