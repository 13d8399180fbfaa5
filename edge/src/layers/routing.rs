//! 404 for a path no route has; 405 with `Allow` for a method the path does not serve.

use http::{header, HeaderValue, Method, StatusCode};
use tonic::Code;

use super::{correlation_id, Matched, Next, Step};
use crate::{ApiError, Response};

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routing;

impl Step for Routing {
    async fn call<B: Send + 'static>(
        &self,
        request: http::Request<B>,
        next: impl Next<B>,
    ) -> Response {
        let correlation = correlation_id(&request);
        match request.extensions().get::<Matched>() {
            Some(Matched::Found(..)) => next.run(request).await,
            Some(Matched::MethodNotAllowed(allowed)) => {
                let allow = allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut response = ApiError::new(
                    Code::Unimplemented,
                    format!("{} is not allowed here; allowed: {allow}", request.method()),
                )
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
                .into_response(&correlation);
                if let Ok(value) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            Some(Matched::NotFound) | None => ApiError::new(
                Code::NotFound,
                format!("no route for {}", request.uri().path()),
            )
            .into_response(&correlation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let mut request = testing::request(Method::PUT, "/healthz");
        request.extensions_mut().insert(Matched::MethodNotAllowed(
            vec![Method::GET, Method::HEAD].into(),
        ));
        let (response, inner) = testing::run(Routing, request).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (405, 0));
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        let mut request = testing::request(Method::GET, "/nowhere");
        request.extensions_mut().insert(Matched::NotFound);
        let (response, _) = testing::run(Routing, request).await;
        assert_eq!(response.status(), 404);
    }
}
