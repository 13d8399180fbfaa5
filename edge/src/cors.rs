//! CORS (DESIGN §5): an exact allowlist; `*` only when configured and never with credentials;
//! preflights answered at the edge with 204; a disallowed origin gets no `Access-Control-*`
//! headers; `Vary: Origin` on every response.

use http::{header, HeaderMap, HeaderValue};

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "authorization, content-type, if-match, if-none-match, x-admin-key, x-correlation-id, x-metrics-secret";
const EXPOSE_HEADERS: &str =
    "x-correlation-id, etag, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";
const MAX_AGE_SECONDS: &str = "600";

/// The CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
    credentials: bool,
}

impl Cors {
    /// From `CORS_ORIGINS` and `CORS_ALLOW_CREDENTIALS` (validated by the config).
    pub fn new(origins: &[String], credentials: bool) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.to_vec(),
            credentials,
        }
    }

    /// The value of `Access-Control-Allow-Origin` for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &str) -> Option<HeaderValue> {
        if self.any {
            Some(HeaderValue::from_static("*"))
        } else if self.origins.iter().any(|o| o == origin) {
            HeaderValue::from_str(origin).ok()
        } else {
            None
        }
    }

    /// True when `request` is a CORS preflight.
    pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
        method == http::Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Adds the CORS headers for a request with these headers to `response_headers`.
    pub fn apply(&self, request: &HeaderMap, response_headers: &mut HeaderMap, preflight: bool) {
        response_headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = request.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return;
        };
        let Some(allowed) = self.allow_origin(origin) else {
            return;
        };
        response_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            response_headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if preflight {
            response_headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            response_headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            response_headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECONDS),
            );
        } else {
            response_headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}
