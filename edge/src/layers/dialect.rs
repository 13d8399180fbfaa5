//! The OpenAI routes (`/v1/*`) answer errors in OpenAI's shape, whichever layer refuses the
//! request (the SDKs read `error.type`, `param`, `code`): every inner layer's errors are
//! rendered with `crate::error::OPENAI_SHAPE` set for them.

use super::{Exchange, Handle, Step};
use crate::{error::OPENAI_SHAPE, Response};

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorDialect;

impl Step for ErrorDialect {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let openai = request.uri().path().starts_with("/v1/");
        OPENAI_SHAPE
            .scope(openai, next.handle(request, exchange))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{layers::testing, ApiError};

    /// Answers every request with the same refusal, rendered where it stands in the stack.
    struct Refuses;

    impl<B: Send + 'static> Handle<B> for Refuses {
        async fn handle<'a>(&'a self, _: http::Request<B>, exchange: &'a mut Exchange) -> Response {
            ApiError::new(tonic::Code::InvalidArgument, "no")
                .into_response(exchange.correlation_id())
        }
    }

    async fn body(path: &str) -> serde_json::Value {
        use http_body_util::BodyExt as _;
        use tower::Layer as _;
        let stack = super::super::StepLayer(ErrorDialect).layer(Refuses);
        let (request, mut exchange) = testing::request(http::Method::POST, path);
        let response = stack.handle(request, &mut exchange).await;
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn openai_routes_get_openais_error_shape_and_the_rest_porticos() {
        let openai = body("/v1/chat/completions").await;
        assert_eq!(openai["error"]["type"], "invalid_request_error", "{openai}");
        let portico = body("/api/v1/chat").await;
        assert_eq!(portico["error"]["code"], "INVALID_ARGUMENT", "{portico}");
    }
}
