//! What the edge adds to the auth routes: OpenID discovery on the Host the client reached (hook
//! `openid_configuration`). Every other auth route is a binding of
//! proto/proto/portico/auth/v1/auth.proto that the transcoder serves.

use http::StatusCode;
use portico_proto::auth::{auth_service_client::AuthServiceClient, GetOpenIdConfigurationRequest};
use portico_telemetry::RequestContext;

use crate::{
    backends::{self, Forwarded},
    finish,
    response::{self, Response},
    ApiError, Edge,
};

/// `%XX` decoding of one path segment (invalid escapes stay as they are).
pub(crate) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The edge as the client reached it, for discovery when `JWT_ISSUER` is not a URL.
fn base_url(headers: &http::HeaderMap) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|host| {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

impl Edge {
    /// A request to a backend on behalf of this HTTP request, with its deadline.
    pub(crate) fn call<T>(
        &self,
        message: T,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> tonic::Request<T> {
        backends::request(
            message,
            context,
            forwarded,
            self.inner.settings.request_timeout,
        )
    }

    /// `GET /.well-known/openid-configuration`: the service's document, byte for byte.
    pub(crate) async fn openid_configuration(
        &self,
        headers: &http::HeaderMap,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError> {
        let backend = &self.inner.backends.auth;
        let request = self.call(
            GetOpenIdConfigurationRequest {
                base_url: base_url(headers),
            },
            context,
            forwarded,
        );
        let document = finish(
            backend,
            "GetOpenIdConfiguration",
            AuthServiceClient::new(backend.channel.clone())
                .get_open_id_configuration(request)
                .await,
        )?;
        let mut response =
            response::text_response(StatusCode::OK, "application/json", document.json);
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("public, max-age=300"),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("alice%40example.com"), "alice@example.com");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
