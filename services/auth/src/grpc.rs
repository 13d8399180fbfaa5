//! `portico.auth.v1.AuthService` over gRPC. The RPCs arrive with the auth issue; until then
//! each answers UNIMPLEMENTED, so callers see an honest 501 rather than a fake success.

use portico_proto::auth::{self as pb, auth_service_server::AuthService};
use tonic::{Request, Response, Status};

/// The gRPC face of the auth service.
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    pub(crate) _db: sea_orm::DatabaseConnection,
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("AuthService.{rpc} is not implemented yet"))
}

#[tonic::async_trait]
impl AuthService for AuthGrpc {
    async fn register(
        &self,
        _: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        Err(unimplemented("Register"))
    }

    async fn login(&self, _: Request<pb::LoginRequest>) -> Result<Response<pb::TokenPair>, Status> {
        Err(unimplemented("Login"))
    }

    async fn refresh(
        &self,
        _: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::TokenPair>, Status> {
        Err(unimplemented("Refresh"))
    }

    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        Err(unimplemented("Logout"))
    }

    async fn verify_email(
        &self,
        _: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        Err(unimplemented("VerifyEmail"))
    }

    async fn get_me(&self, _: Request<pb::GetMeRequest>) -> Result<Response<pb::User>, Status> {
        Err(unimplemented("GetMe"))
    }

    async fn validate_token(
        &self,
        _: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        Err(unimplemented("ValidateToken"))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Err(unimplemented("GetJwks"))
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(unimplemented("RevokeToken"))
    }

    async fn unlock_account(
        &self,
        _: Request<pb::UnlockAccountRequest>,
    ) -> Result<Response<pb::UnlockAccountResponse>, Status> {
        Err(unimplemented("UnlockAccount"))
    }
}
