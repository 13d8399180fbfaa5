//! Access token verification, shared so every holder of a token checks it the same way: `kid`
//! selects the key, the token's `alg` must be that key's (no `none`, no HS/RS confusion),
//! `exp`/`nbf`/`iss`/`aud` are checked. [`Verifier`] adds what a service other than auth needs:
//! the JWKS fetched from auth and cached (refetched on an unknown `kid`), and the denylist.
//! API keys (`pk_…`) are accepted wherever a token is: [`Verifier::verify`] asks auth
//! (AuthService.VerifyApiKey) and keeps the answer at most [`API_KEY_CACHE_TTL`], so a revoked
//! key is refused everywhere within a second, and a key's scopes narrow its owner's rights
//! ([`Identity::may`]).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use portico_proto::auth::{
    auth_service_client::AuthServiceClient, GetJwksRequest, ValidateTokenRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use tonic::transport::Channel;

/// Leeway for clock skew between replicas, in seconds.
const LEEWAY_SECONDS: u64 = 5;
/// An unknown `kid` refetches the JWKS at most this often (garbage kids cannot hammer auth).
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Deadline of the calls to auth.
const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a verifier keeps auth's answer about an API key (valid or not): revocation, and a
/// change of the owner's role, reach every replica within this.
pub const API_KEY_CACHE_TTL: Duration = Duration::from_millis(500);
/// Most API keys a verifier remembers.
const API_KEY_CACHE_CAPACITY: usize = 100_000;
/// Every Portico API key starts with this.
pub const API_KEY_PREFIX: &str = "pk_";
/// The header (and gRPC metadata key) some clients send an API key in, instead of
/// `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The claims of a Portico access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer (`JWT_ISSUER`).
    pub iss: String,
    /// Audience (`JWT_AUDIENCE`).
    pub aud: String,
    /// User id.
    pub sub: String,
    /// `user` or `admin`.
    pub role: String,
    /// Token id (for revocation).
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Expires.
    pub exp: u64,
}

/// Why a token was refused (for logs and ValidateToken; never shown in more detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// A public key and the one algorithm tokens signed by it may claim.
#[derive(Clone)]
pub struct PublicKey {
    /// Pinned algorithm.
    pub alg: Algorithm,
    /// The key.
    pub decoding: DecodingKey,
}

/// Verifies `token` with the key its `kid` names in `keys`.
pub fn verify(
    token: &str,
    keys: &HashMap<String, PublicKey>,
    issuer: &str,
    audience: &str,
) -> Result<Claims, Refused> {
    let header = decode_header(token).map_err(|e| Refused(format!("malformed token: {e}")))?;
    let kid = header
        .kid
        .ok_or_else(|| Refused("token has no kid".into()))?;
    let key = keys
        .get(&kid)
        .ok_or_else(|| Refused("token signed by an unknown or retired key".into()))?;
    if header.alg != key.alg {
        return Err(Refused(format!(
            "alg {:?} does not match the key's {:?}",
            header.alg, key.alg
        )));
    }
    let mut validation = Validation::new(key.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECONDS;
    decode::<Claims>(token, &key.decoding, &validation)
        .map(|data| data.claims)
        .map_err(|e| Refused(format!("invalid token: {e}")))
}

/// The signing keys of a JWKS document (Ed25519 `OKP` and `RSA`), by `kid`.
pub fn keys_from_jwks(jwks: &str) -> Result<HashMap<String, PublicKey>, String> {
    let document: serde_json::Value =
        serde_json::from_str(jwks).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in document["keys"].as_array().into_iter().flatten() {
        let text = |name: &str| jwk[name].as_str().unwrap_or_default();
        let key = match (text("kty"), text("alg")) {
            ("OKP", "EdDSA") => DecodingKey::from_ed_components(text("x")).map(|d| PublicKey {
                alg: Algorithm::EdDSA,
                decoding: d,
            }),
            ("RSA", "RS256") => {
                DecodingKey::from_rsa_components(text("n"), text("e")).map(|d| PublicKey {
                    alg: Algorithm::RS256,
                    decoding: d,
                })
            }
            _ => continue,
        };
        match key {
            Ok(key) if !text("kid").is_empty() => {
                keys.insert(text("kid").to_owned(), key);
            }
            _ => tracing::warn!(kid = text("kid"), "skipping an unusable JWKS key"),
        }
    }
    Ok(keys)
}

/// The caller behind a verified token or API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id (an API key's owner).
    pub user_id: String,
    /// `user` or `admin` (for an API key: its owner's role when auth was last asked).
    pub role: String,
    /// Token id (empty for API keys and the admin key).
    pub jti: String,
    /// The API key the caller presented, if it did.
    pub api_key: Option<ApiKeyGrant>,
}

/// What an API key grants, as auth verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyGrant {
    /// The key's id (never the secret).
    pub id: String,
    /// `chat`, `content:write`, `admin`.
    pub scopes: Vec<String>,
    /// Most requests per minute (0: none of its own).
    pub requests_per_minute: u32,
    /// Most tokens per budget window (0: no budget).
    pub token_budget: u64,
    /// The budget window in seconds.
    pub budget_window_seconds: u64,
}

/// What a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Chat completions, embeddings, models.
    Chat,
    /// Content management (admins only).
    ContentWrite,
    /// Everything an admin may do.
    Admin,
}

impl Scope {
    /// The scope's name on a key.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::ContentWrite => "content:write",
            Scope::Admin => "admin",
        }
    }
}

impl Identity {
    /// Whether the caller may do what `scope` covers: its role must allow it (chat is for
    /// everyone, the rest for admins), and an API key must also carry the scope (or `admin`).
    /// So a key never outranks its owner.
    pub fn may(&self, scope: Scope) -> bool {
        let granted = self.api_key.as_ref().is_none_or(|key| {
            key.scopes
                .iter()
                .any(|s| s == scope.name() || s == Scope::Admin.name())
        });
        granted && (scope == Scope::Chat || self.role == "admin")
    }

    /// Whether the caller may use admin routes.
    pub fn is_admin(&self) -> bool {
        self.may(Scope::Admin)
    }
}

/// The caller's credential in `metadata`: `authorization: Bearer …`, else an API key in
/// `x-api-key`.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| {
            metadata
                .get(API_KEY_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.starts_with(API_KEY_PREFIX))
        })
}

/// Whether `token` is an API key rather than a JWT.
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(API_KEY_PREFIX)
}

/// The cached JWKS and when it was last fetched.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, PublicKey>,
    fetched_at: Option<Instant>,
}

/// Verifies tokens for a service other than auth.
#[derive(Clone)]
pub struct Verifier {
    auth: AuthServiceClient<Channel>,
    keys: Arc<RwLock<KeyCache>>,
    issuer: Arc<str>,
    audience: Arc<str>,
    redis: Option<portico_redis::Redis>,
    /// Auth's answers about API keys, by the SHA-256 of the key (never the key itself).
    api_keys: portico_ttlmap::TtlMap<Result<Identity, Refused>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Verifier {
    /// A verifier asking auth on `channel`; the denylist is read from `redis` when given,
    /// else through AuthService.ValidateToken (which reads auth's own table).
    pub fn new(
        channel: Channel,
        issuer: &str,
        audience: &str,
        redis: Option<portico_redis::Redis>,
    ) -> Self {
        Self {
            auth: AuthServiceClient::new(channel),
            keys: Arc::new(RwLock::new(KeyCache::default())),
            issuer: issuer.into(),
            audience: audience.into(),
            redis,
            api_keys: portico_ttlmap::TtlMap::new(API_KEY_CACHE_TTL, API_KEY_CACHE_CAPACITY),
        }
    }

    /// The verifier a service (not the edge) uses: auth at `AUTH_GRPC_URL`, connected lazily,
    /// with the configured issuer and audience.
    pub fn for_service(
        settings: &portico_config::Settings,
        redis: Option<portico_redis::Redis>,
        tls: &portico_grpc::client::ClientTls,
    ) -> Result<Self, String> {
        let channel = portico_grpc::client::channel(&settings.edge.auth_url, tls)
            .map_err(|e| format!("AUTH_GRPC_URL: {e}"))?;
        Ok(Self::new(
            channel,
            &settings.auth.issuer,
            &settings.auth.audience,
            redis,
        ))
    }

    async fn refresh_keys(&self) -> Result<(), Refused> {
        let mut cache = self.keys.write().await;
        if cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return Ok(());
        }
        cache.fetched_at = Some(Instant::now());
        let mut request = tonic::Request::new(GetJwksRequest {});
        request.set_timeout(AUTH_CALL_TIMEOUT);
        let jwks = self
            .auth
            .clone()
            .get_jwks(request)
            .await
            .map_err(|status| Refused(format!("cannot fetch the JWKS: {}", status.message())))?
            .into_inner()
            .jwks_json;
        cache.keys = keys_from_jwks(&jwks).map_err(Refused)?;
        Ok(())
    }

    /// Verifies `token` (signature, claims, denylist), or an API key through auth.
    pub async fn verify(&self, token: &str) -> Result<Identity, Refused> {
        if is_api_key(token) {
            return self.verify_api_key(token).await;
        }
        let kid = decode_header(token)
            .map_err(|e| Refused(format!("malformed token: {e}")))?
            .kid
            .unwrap_or_default();
        if !self.keys.read().await.keys.contains_key(&kid) {
            self.refresh_keys().await?;
        }
        let claims = verify(
            token,
            &self.keys.read().await.keys,
            &self.issuer,
            &self.audience,
        )?;
        if self.is_denied(token, &claims.jti).await? {
            return Err(Refused("token has been revoked".into()));
        }
        Ok(Identity {
            user_id: claims.sub,
            role: claims.role,
            jti: claims.jti,
            api_key: None,
        })
    }

    /// An API key, as auth last said within [`API_KEY_CACHE_TTL`]. An unreachable auth is a
    /// refusal that is not remembered.
    async fn verify_api_key(&self, key: &str) -> Result<Identity, Refused> {
        use sha2::Digest as _;
        let digest: String = sha2::Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(answer) = self.api_keys.get(&digest) {
            return answer;
        }
        let mut request = tonic::Request::new(portico_proto::auth::VerifyApiKeyRequest {
            api_key: key.to_owned(),
        });
        request.set_timeout(AUTH_CALL_TIMEOUT);
        let asked = std::time::Instant::now();
        let answer = self
            .auth
            .clone()
            .verify_api_key(request)
            .await
            .map_err(|status| Refused(format!("cannot verify the API key: {}", status.message())))?
            .into_inner();
        let verdict = match answer.key {
            Some(record) if answer.valid => Ok(Identity {
                user_id: record.user_id,
                role: if answer.role == portico_proto::auth::Role::Admin as i32 {
                    "admin".into()
                } else {
                    "user".into()
                },
                jti: String::new(),
                api_key: Some(ApiKeyGrant {
                    id: record.id,
                    scopes: record.scopes,
                    requests_per_minute: record.requests_per_minute,
                    token_budget: record.token_budget,
                    budget_window_seconds: record.budget_window_seconds,
                }),
            }),
            _ => Err(Refused(answer.reason)),
        };
        // The answer is as old as the question: one that took longer than the cache's lifetime
        // is not kept, so a key revoked while auth was slow is refused within twice the TTL.
        if asked.elapsed() < API_KEY_CACHE_TTL {
            self.api_keys.insert(digest, verdict.clone());
        }
        verdict
    }

    async fn is_denied(&self, token: &str, jti: &str) -> Result<bool, Refused> {
        if let Some(redis) = &self.redis {
            if redis.is_up() {
                use portico_redis::fred::prelude::KeysInterface as _;
                match redis
                    .client()
                    .exists::<u32, _>(redis.key(&format!("token:blacklist:{jti}")))
                    .await
                {
                    Ok(n) => return Ok(n > 0),
                    Err(error) => redis.mark_down(&error),
                }
            }
        }
        let mut request = tonic::Request::new(ValidateTokenRequest {
            access_token: token.to_owned(),
        });
        request.set_timeout(AUTH_CALL_TIMEOUT);
        let answer = self
            .auth
            .clone()
            .validate_token(request)
            .await
            .map_err(|status| Refused(format!("cannot check revocation: {}", status.message())))?
            .into_inner();
        Ok(!answer.valid)
    }
}

/// Why an admin call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No credentials, or a token that does not verify.
    Unauthenticated(String),
    /// Credentials that are not an admin's.
    PermissionDenied(String),
}

impl From<AdminRefusal> for tonic::Status {
    fn from(refusal: AdminRefusal) -> Self {
        match refusal {
            AdminRefusal::Unauthenticated(message) => tonic::Status::unauthenticated(message),
            AdminRefusal::PermissionDenied(message) => tonic::Status::permission_denied(message),
        }
    }
}

/// A caller that is not a trusted peer (see `portico_grpc::Peer`) must bring its own
/// credentials: a bearer token that verifies, or the admin key. A trusted peer (the edge) has
/// already applied the public rules (anonymous chat, and so on) and passes.
pub async fn authorize_caller(
    metadata: &tonic::metadata::MetadataMap,
    trusted_peer: bool,
    admin_key: Option<&portico_config::SecretString>,
    verifier: &Verifier,
) -> Result<(), AdminRefusal> {
    if trusted_peer {
        return Ok(());
    }
    if metadata.contains_key("x-admin-key") {
        return authorize_admin(metadata, admin_key, verifier)
            .await
            .map(|_| ());
    }
    let bearer = bearer(metadata).ok_or_else(|| {
        AdminRefusal::Unauthenticated(
            "credentials required: a bearer token or API key (callers other than the edge cannot call anonymously)".into(),
        )
    })?;
    verifier
        .verify(bearer)
        .await
        .map(|_| ())
        .map_err(|refused| {
            tracing::info!(reason = %refused.0, "bearer token refused");
            AdminRefusal::Unauthenticated("the bearer token is invalid, expired or revoked".into())
        })
}

/// Admin access for a service: `x-admin-key` equal to `ADMIN_API_KEY`, or a bearer token whose
/// role is `admin` (an API key also needs the `admin` scope).
pub async fn authorize_admin(
    metadata: &tonic::metadata::MetadataMap,
    admin_key: Option<&portico_config::SecretString>,
    verifier: &Verifier,
) -> Result<Identity, AdminRefusal> {
    authorize_scope(metadata, admin_key, verifier, Scope::Admin).await
}

/// Access to what `scope` covers: `x-admin-key` equal to `ADMIN_API_KEY`, or credentials whose
/// [`Identity::may`] allows it.
pub async fn authorize_scope(
    metadata: &tonic::metadata::MetadataMap,
    admin_key: Option<&portico_config::SecretString>,
    verifier: &Verifier,
    scope: Scope,
) -> Result<Identity, AdminRefusal> {
    if let Some(given) = metadata.get("x-admin-key") {
        let valid = admin_key
            .is_some_and(|expected| portico_config::secret_matches(given.as_bytes(), expected));
        return if valid {
            Ok(Identity {
                user_id: "admin-key".into(),
                role: "admin".into(),
                jti: String::new(),
                api_key: None,
            })
        } else {
            Err(AdminRefusal::PermissionDenied(
                "x-admin-key is not valid".into(),
            ))
        };
    }
    let bearer = bearer(metadata).ok_or_else(|| {
        AdminRefusal::Unauthenticated("x-admin-key or an admin bearer token is required".into())
    })?;
    let identity = verifier.verify(bearer).await.map_err(|refused| {
        tracing::info!(reason = %refused.0, "admin bearer token refused");
        AdminRefusal::Unauthenticated("the bearer token is invalid, expired or revoked".into())
    })?;
    if identity.may(scope) {
        Ok(identity)
    } else if identity.role == "admin" {
        Err(AdminRefusal::PermissionDenied(format!(
            "this API key lacks the `{}` scope",
            scope.name()
        )))
    } else {
        Err(AdminRefusal::PermissionDenied("admin role required".into()))
    }
}
