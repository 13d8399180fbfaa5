//! Access tokens: signing here; verification is `portico_tokens::verify`, the same code every
//! service runs (`kid` selects the key, `alg` pinned to it, `exp`/`nbf`/`iss`/`aud` checked).

use jsonwebtoken::{encode, Header};
pub use portico_tokens::{Claims, Refused};

use crate::keys::KeySet;

/// Signs `claims` with the current signing key.
pub fn sign(keys: &KeySet, claims: &Claims) -> Result<String, String> {
    let mut header = Header::new(keys.signing.alg);
    header.kid = Some(keys.signing.kid.clone());
    encode(&header, claims, &keys.signing.encoding).map_err(|e| e.to_string())
}

/// Verifies a token against this service's keys.
pub fn verify(keys: &KeySet, token: &str, issuer: &str, audience: &str) -> Result<Claims, Refused> {
    portico_tokens::verify(token, &keys.public, issuer, audience)
}
