//! The auth routes (DESIGN §4): JSON ↔ `portico.auth.v1.AuthService`. Bodies refuse unknown
//! fields; the bearer token and `X-Admin-Key` travel as metadata and are checked by the service.

use bytes::Bytes;
use http::StatusCode;
use portico_proto::auth::{
    self as pb, auth_service_client::AuthServiceClient, revoke_token_request::Target,
};
use portico_telemetry::RequestContext;
use serde::Deserialize;
use serde_json::json;
use tonic::Code;

use crate::{
    backends::{self, Forwarded},
    finish, parse_json, read_body,
    response::{self, Response},
    routes::Handler,
    ApiError, Edge,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockBody {
    email: String,
    ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RevokeBody {
    jti: Option<String>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetConfirmBody {
    token: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChangePasswordBody {
    current_password: String,
    new_password: String,
    revoke_other_sessions: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

/// The metadata key the client's User-Agent travels in (the sessions list shows it).
const USER_AGENT_KEY: &str = "x-client-user-agent";
/// The most of a User-Agent forwarded.
const MAX_USER_AGENT_BYTES: usize = 256;

/// What the auth routes read of the request besides its body.
pub(crate) struct AuthRequest<'a> {
    /// Path parameters (`{user}`, `{id}`).
    pub params: &'a [(&'static str, String)],
    /// The request's headers (User-Agent, Host).
    pub headers: &'a http::HeaderMap,
}

impl AuthRequest<'_> {
    /// A path parameter, percent-decoded (`alice%40example.com`).
    fn param(&self, name: &str) -> String {
        self.params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
            .unwrap_or_default()
    }

    /// The edge as the client reached it, for discovery when `JWT_ISSUER` is not a URL.
    fn base_url(&self) -> String {
        let host = self
            .headers
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

    /// Adds the client's User-Agent (printable ASCII, capped) to a backend request.
    fn forward_user_agent<T>(&self, request: &mut tonic::Request<T>) {
        let Some(agent) = self
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let agent: String = agent
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(MAX_USER_AGENT_BYTES)
            .collect();
        if let Ok(value) = agent.parse() {
            request.metadata_mut().insert(USER_AGENT_KEY, value);
        }
    }
}

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

fn no_content() -> Response {
    let mut response = http::Response::new(response::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn sessions_json(sessions: Vec<pb::Session>) -> Response {
    let sessions: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "createdAt": s.created_at,
                "lastUsedAt": s.last_used_at,
                "ip": s.ip,
                "userAgent": s.user_agent,
                "current": s.current,
            })
        })
        .collect();
    response::json_response(StatusCode::OK, &json!({ "sessions": sessions }))
}

/// Tokens: never stored by any cache (RFC 6749 §5.1).
fn token_pair(pair: pb::TokenPair) -> Response {
    let mut response = response::json_response(
        StatusCode::OK,
        &json!({
            "accessToken": pair.access_token,
            "refreshToken": pair.refresh_token,
            "tokenType": pair.token_type,
            "expiresIn": pair.expires_in,
        }),
    );
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::PRAGMA,
        http::HeaderValue::from_static("no-cache"),
    );
    response
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

    /// Answers one of the auth routes.
    pub(crate) async fn auth<B>(
        &self,
        handler: Handler,
        http_request: AuthRequest<'_>,
        body: B,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let backend = &self.inner.backends.auth;
        let mut client = AuthServiceClient::new(backend.channel.clone());
        match handler {
            Handler::Register => {
                let body: Credentials = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::RegisterRequest {
                        email: body.email,
                        password: body.password,
                    },
                    context,
                    forwarded,
                );
                let created = finish(backend, "Register", client.register(request).await)?;
                Ok(response::json_response(
                    StatusCode::CREATED,
                    &json!({"userId": created.user_id, "verificationRequired": created.verification_required}),
                ))
            }
            Handler::Login => {
                let body: Credentials = parse_json(&read_body(body).await?)?;
                let mut request = self.call(
                    pb::LoginRequest {
                        email: body.email,
                        password: body.password,
                    },
                    context,
                    forwarded,
                );
                http_request.forward_user_agent(&mut request);
                Ok(token_pair(finish(
                    backend,
                    "Login",
                    client.login(request).await,
                )?))
            }
            Handler::Refresh => {
                let body: RefreshBody = parse_json(&read_body(body).await?)?;
                let mut request = self.call(
                    pb::RefreshRequest {
                        refresh_token: body.refresh_token,
                    },
                    context,
                    forwarded,
                );
                http_request.forward_user_agent(&mut request);
                Ok(token_pair(finish(
                    backend,
                    "Refresh",
                    client.refresh(request).await,
                )?))
            }
            Handler::Logout => {
                let body: RefreshBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::LogoutRequest {
                        refresh_token: body.refresh_token,
                    },
                    context,
                    forwarded,
                );
                finish(backend, "Logout", client.logout(request).await)?;
                Ok(no_content())
            }
            Handler::OpenIdConfiguration => {
                let request = self.call(
                    pb::GetOpenIdConfigurationRequest {
                        base_url: http_request.base_url(),
                    },
                    context,
                    forwarded,
                );
                let document = finish(
                    backend,
                    "GetOpenIdConfiguration",
                    client.get_open_id_configuration(request).await,
                )?;
                let mut response =
                    response::text_response(StatusCode::OK, "application/json", document.json);
                response.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("public, max-age=300"),
                );
                Ok(response)
            }
            Handler::PasswordReset => {
                let body: EmailBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::RequestPasswordResetRequest { email: body.email },
                    context,
                    forwarded,
                );
                finish(
                    backend,
                    "RequestPasswordReset",
                    client.request_password_reset(request).await,
                )?;
                Ok(response::json_response(
                    StatusCode::ACCEPTED,
                    &json!({"status": "accepted"}),
                ))
            }
            Handler::PasswordResetConfirm => {
                let body: ResetConfirmBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::ConfirmPasswordResetRequest {
                        token: body.token,
                        new_password: body.password,
                    },
                    context,
                    forwarded,
                );
                let done = finish(
                    backend,
                    "ConfirmPasswordReset",
                    client.confirm_password_reset(request).await,
                )?;
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({"sessionsRevoked": done.sessions_revoked}),
                ))
            }
            Handler::ChangePassword => {
                let body: ChangePasswordBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::ChangePasswordRequest {
                        current_password: body.current_password,
                        new_password: body.new_password,
                        revoke_other_sessions: body.revoke_other_sessions,
                    },
                    context,
                    forwarded,
                );
                let done = finish(
                    backend,
                    "ChangePassword",
                    client.change_password(request).await,
                )?;
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({"sessionsRevoked": done.sessions_revoked}),
                ))
            }
            Handler::Sessions | Handler::AdminSessions => {
                let request = self.call(
                    pb::ListSessionsRequest {
                        user: http_request.param("user"),
                    },
                    context,
                    forwarded,
                );
                let listed = finish(backend, "ListSessions", client.list_sessions(request).await)?;
                Ok(sessions_json(listed.sessions))
            }
            Handler::SessionRevoke | Handler::AdminSessionRevoke => {
                let request = self.call(
                    pb::RevokeSessionRequest {
                        user: http_request.param("user"),
                        session_id: http_request.param("id"),
                    },
                    context,
                    forwarded,
                );
                finish(
                    backend,
                    "RevokeSession",
                    client.revoke_session(request).await,
                )?;
                Ok(no_content())
            }
            Handler::SessionsRevokeAll | Handler::AdminSessionsRevokeAll => {
                let request = self.call(
                    pb::RevokeAllSessionsRequest {
                        user: http_request.param("user"),
                    },
                    context,
                    forwarded,
                );
                let done = finish(
                    backend,
                    "RevokeAllSessions",
                    client.revoke_all_sessions(request).await,
                )?;
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({"sessionsRevoked": done.sessions_revoked}),
                ))
            }
            Handler::DeleteMe | Handler::AdminDeleteUser => {
                let password = if handler == Handler::DeleteMe {
                    let body: PasswordBody = parse_json(&read_body(body).await?)?;
                    body.password
                } else {
                    String::new()
                };
                let request = self.call(
                    pb::DeleteAccountRequest {
                        user: http_request.param("user"),
                        password,
                    },
                    context,
                    forwarded,
                );
                finish(
                    backend,
                    "DeleteAccount",
                    client.delete_account(request).await,
                )?;
                Ok(no_content())
            }
            Handler::VerifyEmail => {
                let body: TokenBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::VerifyEmailRequest { token: body.token },
                    context,
                    forwarded,
                );
                let verified = finish(backend, "VerifyEmail", client.verify_email(request).await)?;
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({"userId": verified.user_id}),
                ))
            }
            Handler::Me => {
                let user = finish(
                    backend,
                    "GetMe",
                    client
                        .get_me(self.call(pb::GetMeRequest {}, context, forwarded))
                        .await,
                )?;
                let role = if user.role == pb::Role::Admin as i32 {
                    "admin"
                } else {
                    "user"
                };
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({
                        "id": user.id,
                        "email": user.email,
                        "role": role,
                        "emailVerified": user.email_verified,
                        "createdAt": user.created_at,
                    }),
                ))
            }
            Handler::Unlock => {
                let body: UnlockBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::UnlockAccountRequest {
                        email: body.email,
                        ip: body.ip.unwrap_or_default(),
                    },
                    context,
                    forwarded,
                );
                let cleared = finish(
                    backend,
                    "UnlockAccount",
                    client.unlock_account(request).await,
                )?;
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({"cleared": cleared.cleared}),
                ))
            }
            Handler::Revoke => {
                let body: RevokeBody = parse_json(&read_body(body).await?)?;
                let target = match (body.jti, body.user_id) {
                    (Some(jti), None) => Target::Jti(jti),
                    (None, Some(user_id)) => Target::UserId(user_id),
                    _ => {
                        return Err(ApiError::new(
                            Code::InvalidArgument,
                            "give exactly one of `jti` or `userId`",
                        ))
                    }
                };
                let request = self.call(
                    pb::RevokeTokenRequest {
                        target: Some(target),
                    },
                    context,
                    forwarded,
                );
                let revoked = finish(backend, "RevokeToken", client.revoke_token(request).await)?;
                Ok(response::json_response(
                    StatusCode::OK,
                    &json!({"familiesRevoked": revoked.families_revoked}),
                ))
            }
            _ => Err(ApiError::new(Code::Internal, "not an auth route")),
        }
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
