//! Access tokens: issue (with `jti`, `sub`, `role`, `iss`, `aud`, `iat`, `nbf`, `exp`) and verify
//! — `kid` selects the key, the token's `alg` must be that key's (no `none`, no HS/RS
//! confusion), and `exp`/`nbf`/`iss`/`aud` are checked.

use jsonwebtoken::{decode, decode_header, encode, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::keys::KeySet;

/// Leeway for clock skew between replicas, in seconds.
const LEEWAY_SECONDS: u64 = 5;

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

/// Why a token was refused (logged, and returned by ValidateToken; never more detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Signs `claims` with the current signing key.
pub fn sign(keys: &KeySet, claims: &Claims) -> Result<String, String> {
    let mut header = Header::new(keys.signing.alg);
    header.kid = Some(keys.signing.kid.clone());
    encode(&header, claims, &keys.signing.encoding).map_err(|e| e.to_string())
}

/// Verifies signature, `alg`, and the registered claims. Revocation is the caller's next step.
pub fn verify(keys: &KeySet, token: &str, issuer: &str, audience: &str) -> Result<Claims, Refused> {
    let header = decode_header(token).map_err(|e| Refused(format!("malformed token: {e}")))?;
    let kid = header
        .kid
        .ok_or_else(|| Refused("token has no kid".into()))?;
    let key = keys
        .verify
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
