//! 404 for a path no route has; 405 with `Allow` for a method the path does not serve.

use http::{header, HeaderValue, Method, StatusCode};
use tonic::Code;

use super::{Exchange, Handle, Matched, Step};
use crate::{ApiError, Response};

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routing;

impl Step for Routing {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        match &exchange.matched {
            Matched::Found(..) => next.handle(request, exchange).await,
            Matched::MethodNotAllowed(allowed) => {
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
                .into_response(exchange.correlation_id());
                if let Ok(value) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
                response
            }
            Matched::NotFound => ApiError::new(
                Code::NotFound,
                format!("no route for {}", request.uri().path()),
            )
            .into_response(exchange.correlation_id()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let (request, mut exchange) = testing::request(Method::PUT, "/healthz");
        exchange.matched = Matched::MethodNotAllowed(vec![Method::GET, Method::HEAD]);
        let (response, inner) = testing::run(Routing, (request, exchange)).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (405, 0));
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        let (response, inner) =
            testing::run(Routing, testing::request(Method::GET, "/nowhere")).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (404, 0));
    }
}
