//! `portico.auth.v1.AuthService` over gRPC: decode, call [`Accounts`], encode.

use portico_grpc::RequestContext;
use portico_proto::auth::{
    self as pb, auth_service_server::AuthService, revoke_token_request::Target,
};
use tonic::{Request, Response, Status};

use crate::accounts::{Accounts, Caller, Tokens};

/// The gRPC face of the auth service.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    pub(crate) accounts: Accounts,
}

fn caller<T>(request: &Request<T>) -> Caller {
    let metadata = request.metadata();
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ip = text("x-forwarded-for")
        .and_then(|v| v.split(',').next().map(|ip| ip.trim().to_owned()))
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .or_else(|| request.remote_addr().map(|addr| addr.ip().to_string()))
        .unwrap_or_default();
    Caller {
        ip,
        correlation_id: request
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.correlation_id.clone())
            .unwrap_or_default(),
        bearer: text("authorization")
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
            // Clients that send a key the way some SDKs do.
            .or_else(|| text(portico_tokens::API_KEY_HEADER)),
        admin_key: text("x-admin-key"),
        user_agent: text(USER_AGENT_KEY).map(|agent| {
            let mut agent: String = agent.chars().filter(|c| !c.is_control()).collect();
            if agent.len() > MAX_USER_AGENT_BYTES {
                let mut end = MAX_USER_AGENT_BYTES;
                while !agent.is_char_boundary(end) {
                    end -= 1;
                }
                agent.truncate(end);
            }
            agent
        }),
    }
}

/// The metadata key the edge forwards the client's User-Agent in (for the sessions list).
const USER_AGENT_KEY: &str = "x-client-user-agent";
/// The longest user agent kept (the column's size).
const MAX_USER_AGENT_BYTES: usize = 256;

fn session(session: crate::lifecycle::Session) -> pb::Session {
    let row = session.row;
    pb::Session {
        id: row.family_id,
        created_at: portico_telemetry::rfc3339_millis(row.created_at),
        last_used_at: portico_telemetry::rfc3339_millis(row.last_used_at),
        ip: row.ip.unwrap_or_default(),
        user_agent: row.user_agent.unwrap_or_default(),
        current: session.current,
    }
}

fn pair(tokens: Tokens) -> pb::TokenPair {
    pb::TokenPair {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        token_type: "Bearer".into(),
        expires_in: tokens.expires_in,
    }
}

fn api_key(key: crate::api_keys::KeyRow) -> pb::ApiKey {
    let time = |ms: Option<i64>| {
        ms.map(portico_telemetry::rfc3339_millis)
            .unwrap_or_default()
    };
    pb::ApiKey {
        id: key.id,
        user_id: key.user_id,
        name: key.name,
        scopes: key.scopes,
        prefix: key.prefix,
        created_at: portico_telemetry::rfc3339_millis(key.created_at),
        last_used_at: time(key.last_used_at),
        expires_at: time(key.expires_at),
        revoked_at: time(key.revoked_at),
        requests_per_minute: key.requests_per_minute.unwrap_or(0),
        token_budget: key.token_budget.unwrap_or(0),
        budget_window_seconds: key.budget_window_seconds.unwrap_or(0),
    }
}

fn role(name: &str) -> i32 {
    match name {
        "admin" => pb::Role::Admin as i32,
        _ => pb::Role::User as i32,
    }
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = caller(&request);
        let pb::RegisterRequest { email, password } = request.into_inner();
        let (user_id, verification_required) =
            self.accounts.register(&email, password, &caller).await?;
        Ok(Response::new(pb::RegisterResponse {
            user_id,
            verification_required,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let caller = caller(&request);
        let pb::LoginRequest { email, password } = request.into_inner();
        Ok(Response::new(pair(
            self.accounts.login(&email, password, &caller).await?,
        )))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        let caller = caller(&request);
        let tokens = self
            .accounts
            .refresh(&request.get_ref().refresh_token, &caller)
            .await?;
        Ok(Response::new(pair(tokens)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = caller(&request);
        self.accounts
            .logout(&request.get_ref().refresh_token, &caller)
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let caller = caller(&request);
        let user_id = self
            .accounts
            .verify_email(&request.get_ref().token, &caller)
            .await?;
        Ok(Response::new(pb::VerifyEmailResponse { user_id }))
    }

    async fn get_me(
        &self,
        request: Request<pb::GetMeRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user = self.accounts.me(&caller(&request)).await?;
        Ok(Response::new(pb::User {
            id: user.id,
            email: user.email,
            role: role(&user.role),
            email_verified: user.email_verified,
            created_at: portico_telemetry::rfc3339_millis(user.created_at),
        }))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let token = request.get_ref().access_token.trim_start_matches("Bearer ");
        let response = match self.accounts.validate(token).await {
            Ok(claims) => pb::ValidateTokenResponse {
                valid: true,
                user_id: claims.sub,
                role: role(&claims.role),
                jti: claims.jti,
                expires_at: claims.exp as i64,
                reason: String::new(),
            },
            Err(refused) => pb::ValidateTokenResponse {
                reason: refused.0,
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.accounts.keys.jwks_json(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = caller(&request);
        let families_revoked = match &request.get_ref().target {
            Some(Target::Jti(jti)) => {
                self.accounts.revoke_jti(jti, &caller).await?;
                0
            }
            Some(Target::UserId(user_id)) => self.accounts.revoke_user(user_id, &caller).await?,
            None => return Err(Status::invalid_argument("give a `jti` or a `userId`")),
        };
        Ok(Response::new(pb::RevokeTokenResponse { families_revoked }))
    }

    async fn unlock_account(
        &self,
        request: Request<pb::UnlockAccountRequest>,
    ) -> Result<Response<pb::UnlockAccountResponse>, Status> {
        let caller = caller(&request);
        let pb::UnlockAccountRequest { email, ip } = request.into_inner();
        let ip = (!ip.is_empty()).then_some(ip);
        let cleared = self.accounts.unlock(&email, ip.as_deref(), &caller).await?;
        Ok(Response::new(pb::UnlockAccountResponse { cleared }))
    }

    async fn list_lockouts(
        &self,
        request: Request<pb::ListLockoutsRequest>,
    ) -> Result<Response<pb::ListLockoutsResponse>, Status> {
        let caller = caller(&request);
        let pb::ListLockoutsRequest { email, limit } = request.into_inner();
        let (lockouts, truncated, now) = self.accounts.lockouts(&email, limit, &caller).await?;
        Ok(Response::new(pb::ListLockoutsResponse {
            lockouts: lockouts
                .into_iter()
                .map(|lockout| {
                    let remaining_ms = u64::try_from(lockout.until_ms - now).unwrap_or(0);
                    pb::Lockout {
                        locked_until: portico_telemetry::rfc3339_millis(lockout.until_ms),
                        remaining_ms,
                        remaining_seconds: remaining_ms.div_ceil(1000),
                        scope: if lockout.network == crate::lockout::ACCOUNT {
                            "account"
                        } else {
                            "network"
                        }
                        .to_owned(),
                        email: lockout.email,
                        network: lockout.network,
                    }
                })
                .collect(),
            truncated,
        }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let caller = caller(&request);
        self.accounts
            .request_password_reset(&request.get_ref().email, &caller)
            .await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {
            status: "accepted".to_owned(),
        }))
    }

    async fn confirm_password_reset(
        &self,
        request: Request<pb::ConfirmPasswordResetRequest>,
    ) -> Result<Response<pb::ConfirmPasswordResetResponse>, Status> {
        let caller = caller(&request);
        let pb::ConfirmPasswordResetRequest {
            token,
            new_password,
        } = request.into_inner();
        let sessions_revoked = self
            .accounts
            .confirm_password_reset(&token, new_password, &caller)
            .await?;
        Ok(Response::new(pb::ConfirmPasswordResetResponse {
            sessions_revoked,
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller(&request);
        let pb::ChangePasswordRequest {
            current_password,
            new_password,
            revoke_other_sessions,
        } = request.into_inner();
        let sessions_revoked = self
            .accounts
            .change_password(
                current_password,
                new_password,
                revoke_other_sessions.unwrap_or(true),
                &caller,
            )
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            sessions_revoked,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller(&request);
        let sessions = self
            .accounts
            .list_sessions(&request.get_ref().user, &caller)
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.into_iter().map(session).collect(),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = caller(&request);
        let pb::RevokeSessionRequest { user, session_id } = request.get_ref();
        self.accounts
            .revoke_session(user, session_id, &caller)
            .await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    async fn revoke_all_sessions(
        &self,
        request: Request<pb::RevokeAllSessionsRequest>,
    ) -> Result<Response<pb::RevokeAllSessionsResponse>, Status> {
        let caller = caller(&request);
        let sessions_revoked = self
            .accounts
            .revoke_all_sessions(&request.get_ref().user, &caller)
            .await?;
        Ok(Response::new(pb::RevokeAllSessionsResponse {
            sessions_revoked,
        }))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let caller = caller(&request);
        let pb::DeleteAccountRequest { user, password } = request.into_inner();
        let user_id = self
            .accounts
            .delete_account(&user, password, &caller)
            .await?;
        Ok(Response::new(pb::DeleteAccountResponse { user_id }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let (key, secret) = self
            .accounts
            .create_api_key(
                crate::api_keys::NewKey {
                    user: r.user,
                    name: r.name,
                    scopes: r.scopes,
                    expires_in_seconds: r.expires_in_seconds,
                    requests_per_minute: r.requests_per_minute,
                    token_budget: r.token_budget,
                    budget_window_seconds: r.budget_window_seconds,
                },
                &caller,
            )
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(api_key(key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = caller(&request);
        let keys = self
            .accounts
            .list_api_keys(&request.get_ref().user, &caller)
            .await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.into_iter().map(api_key).collect(),
        }))
    }

    async fn get_api_key(
        &self,
        request: Request<pb::GetApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let caller = caller(&request);
        let key = self
            .accounts
            .get_api_key(&request.get_ref().id, &caller)
            .await?;
        Ok(Response::new(api_key(key)))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = caller(&request);
        self.accounts
            .revoke_api_key(&request.get_ref().id, &caller)
            .await?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        let secret = request.get_ref().api_key.trim_start_matches("Bearer ");
        let response = match self.accounts.verify_api_key(secret).await {
            Ok((key, owner_role)) => pb::VerifyApiKeyResponse {
                valid: true,
                key: Some(api_key(key)),
                role: role(&owner_role),
                reason: String::new(),
            },
            Err(refused) => pb::VerifyApiKeyResponse {
                reason: refused.0,
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn get_open_id_configuration(
        &self,
        request: Request<pb::GetOpenIdConfigurationRequest>,
    ) -> Result<Response<pb::GetOpenIdConfigurationResponse>, Status> {
        Ok(Response::new(pb::GetOpenIdConfigurationResponse {
            json: self
                .accounts
                .openid_configuration(&request.get_ref().base_url),
        }))
    }
}
