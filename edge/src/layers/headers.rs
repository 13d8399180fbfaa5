//! Response headers every answer gets: `X-Content-Type-Options: nosniff`; for a request that
//! carries credentials, `Cache-Control: private, no-store` (unless the answer set its own) and
//! `Vary` on the credential headers, so no shared cache keeps or replays what may be one
//! caller's alone; and `x-correlation-id`.

use http::{header, HeaderValue};
use portico_telemetry::CORRELATION_HEADER;

use super::{Exchange, Handle, Step};
use crate::Response;

/// Headers that carry credentials: responses to requests with them are private.
const CREDENTIAL_HEADERS: [&str; 3] = [
    "authorization",
    "x-admin-key",
    portico_tokens::API_KEY_HEADER,
];

/// See the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseHeaders;

impl Step for ResponseHeaders {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let credentials = CREDENTIAL_HEADERS
            .iter()
            .any(|name| request.headers().contains_key(*name));
        let mut response = next.handle(request, exchange).await;
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if credentials {
            // What a caller with credentials sees may be theirs alone (an admin's drafts, their
            // account): no shared cache may keep it, and none may answer it to anyone else.
            if !headers.contains_key(header::CACHE_CONTROL) {
                headers.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-store"),
                );
            }
            headers.append(
                header::VARY,
                HeaderValue::from_static("Authorization, X-Admin-Key, X-Api-Key"),
            );
        }
        if let Ok(value) = HeaderValue::from_str(exchange.correlation_id()) {
            headers.insert(CORRELATION_HEADER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing;

    #[tokio::test]
    async fn credentialed_answers_are_private_and_every_one_carries_its_correlation_id() {
        let (mut request, exchange) = testing::request(http::Method::GET, "/api/v1/auth/me");
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_static("Bearer x"));
        let correlation = exchange.correlation_id().to_owned();
        let (response, _) = testing::run(ResponseHeaders, (request, exchange)).await;
        let headers = response.headers();
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CACHE_CONTROL], "private, no-store");
        assert!(headers[header::VARY]
            .to_str()
            .expect("ascii")
            .contains("Authorization"));
        assert_eq!(headers[CORRELATION_HEADER], correlation.as_str());
        let (anonymous, _) = testing::run(
            ResponseHeaders,
            testing::request(http::Method::GET, "/healthz"),
        )
        .await;
        assert!(anonymous.headers().get(header::CACHE_CONTROL).is_none());
        assert_eq!(
            anonymous.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
    }
}
