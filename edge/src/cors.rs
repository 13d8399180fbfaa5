//! CORS (docs/CONTRACT.md §5): an exact allowlist; `*` only when configured and never with credentials;
//! preflights answered at the edge with 204; a disallowed origin gets no `Access-Control-*`
//! headers; `Vary: Origin` on every response. A preflight is allowed the requested headers
//! that `CORS_ALLOW_HEADERS` lists (names, or prefixes such as `x-stainless-*`), and only those;
//! other responses expose `CORS_EXPOSE_HEADERS`.

use http::{header, HeaderMap, HeaderValue};

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, OPTIONS";
const MAX_AGE_SECONDS: &str = "600";

/// The CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
    credentials: bool,
    /// Lowercase names; one ending in `*` is a prefix.
    allow_headers: Vec<String>,
    expose_headers: Option<HeaderValue>,
}

impl Cors {
    /// From `CORS_ORIGINS` and `CORS_ALLOW_CREDENTIALS` (validated by the config).
    pub fn new(origins: &[String], credentials: bool) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.to_vec(),
            credentials,
            allow_headers: portico_config::CORS_ALLOW_HEADERS_DEFAULT
                .split(", ")
                .map(str::to_owned)
                .collect(),
            expose_headers: Some(HeaderValue::from_static(
                portico_config::CORS_EXPOSE_HEADERS_DEFAULT,
            )),
        }
    }

    /// With `CORS_ALLOW_HEADERS` and `CORS_EXPOSE_HEADERS` (validated by the config).
    pub fn with_headers(mut self, allow: &[String], expose: &[String]) -> Self {
        self.allow_headers = allow.iter().map(|h| h.to_ascii_lowercase()).collect();
        self.expose_headers = HeaderValue::from_str(&expose.join(", "))
            .ok()
            .filter(|_| !expose.is_empty());
        self
    }

    fn header_allowed(&self, name: &str) -> bool {
        self.allow_headers
            .iter()
            .any(|allowed| match allowed.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == allowed,
            })
    }

    /// The requested headers of a preflight that the policy allows, as one header value.
    fn allowed_request_headers(&self, request: &HeaderMap) -> Option<HeaderValue> {
        let allowed: Vec<String> = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty() && self.header_allowed(name))
            .collect();
        if allowed.is_empty() {
            return None;
        }
        HeaderValue::from_str(&allowed.join(", ")).ok()
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

    /// The request headers [`Cors::apply`] reads (`Origin`, `Access-Control-Request-Headers`),
    /// copied out so the request can go on; empty, with no allocation, without an `Origin`.
    pub fn request_part(headers: &HeaderMap) -> HeaderMap {
        let mut part = HeaderMap::new();
        if let Some(origin) = headers.get(header::ORIGIN) {
            part.insert(header::ORIGIN, origin.clone());
            for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                part.append(header::ACCESS_CONTROL_REQUEST_HEADERS, value.clone());
            }
        }
        part
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
            if let Some(allowed) = self.allowed_request_headers(request) {
                response_headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed);
            }
            response_headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECONDS),
            );
        } else if let Some(expose) = &self.expose_headers {
            response_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight(requested: &str) -> HeaderMap {
        let mut request = HeaderMap::new();
        request.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        request.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        request.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_str(requested).expect("value"),
        );
        request
    }

    fn allowed(cors: &Cors, requested: &str) -> Option<String> {
        let mut response = HeaderMap::new();
        cors.apply(&preflight(requested), &mut response, true);
        response
            .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn the_default_lets_the_openai_browser_sdk_through_and_only_what_was_asked() {
        let cors = Cors::new(&["https://app.example".to_owned()], false);
        let sdk = "Authorization, Content-Type, X-Stainless-Lang, x-stainless-package-version, x-stainless-os, x-stainless-arch, x-stainless-runtime, x-stainless-runtime-version, x-stainless-retry-count, x-stainless-timeout, OpenAI-Organization";
        assert_eq!(
            allowed(&cors, sdk).as_deref(),
            Some(sdk.to_ascii_lowercase().as_str())
        );
        assert_eq!(
            allowed(&cors, "x-correlation-id, x-unknown").as_deref(),
            Some("x-correlation-id"),
            "an unlisted header is not allowed"
        );
    }

    #[test]
    fn configured_headers_replace_the_default() {
        let cors = Cors::new(&["https://app.example".to_owned()], false)
            .with_headers(&["x-tenant".to_owned(), "x-app-*".to_owned()], &[]);
        assert_eq!(
            allowed(&cors, "x-tenant, x-app-build, authorization").as_deref(),
            Some("x-tenant, x-app-build")
        );
        let mut response = HeaderMap::new();
        let mut request = HeaderMap::new();
        request.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        cors.apply(&request, &mut response, false);
        assert!(!response.contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS));
    }
}
