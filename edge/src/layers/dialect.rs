//! The OpenAI routes (`/v1/*`) answer errors in OpenAI's shape, whichever layer refuses the
//! request (the SDKs read `error.type`, `param`, `code`): every inner layer's errors are
//! rendered with `crate::error::OPENAI_SHAPE` set for them.

use super::{Next, Step};
use crate::{error::OPENAI_SHAPE, Response};

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorDialect;

impl Step for ErrorDialect {
    async fn call<B: Send + 'static>(
        &self,
        request: http::Request<B>,
        next: impl Next<B>,
    ) -> Response {
        let openai = request.uri().path().starts_with("/v1/");
        OPENAI_SHAPE.scope(openai, next.run(request)).await
    }
}
