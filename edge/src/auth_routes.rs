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
                let request = self.call(
                    pb::LoginRequest {
                        email: body.email,
                        password: body.password,
                    },
                    context,
                    forwarded,
                );
                Ok(token_pair(finish(
                    backend,
                    "Login",
                    client.login(request).await,
                )?))
            }
            Handler::Refresh => {
                let body: RefreshBody = parse_json(&read_body(body).await?)?;
                let request = self.call(
                    pb::RefreshRequest {
                        refresh_token: body.refresh_token,
                    },
                    context,
                    forwarded,
                );
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
                let mut response = http::Response::new(response::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
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
