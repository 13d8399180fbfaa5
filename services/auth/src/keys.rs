//! JWT keys: the signing key (RS256 or EdDSA, from PEM), the older public keys still accepted
//! (rotation), `kid` = RFC 7638 thumbprint, and the JWKS document.

use std::{collections::HashMap, path::Path};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use ed25519_dalek::pkcs8::{
    spki::der::pem::LineEnding, DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use portico_tokens::PublicKey;
use rsa::{
    pkcs1::DecodeRsaPrivateKey as _, pkcs1::DecodeRsaPublicKey as _, traits::PublicKeyParts as _,
};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// A key that verifies tokens, with its public JWK (`kid`, `alg`, `use`).
#[derive(Clone)]
struct VerifyKey {
    key: PublicKey,
    jwk: Value,
}

/// The key that signs new tokens.
#[derive(Clone)]
pub struct SigningKey {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// RS256 or EdDSA.
    pub alg: Algorithm,
    /// The private key.
    pub encoding: EncodingKey,
}

/// Every key of the service.
#[derive(Clone)]
pub struct KeySet {
    /// Signs new tokens.
    pub signing: SigningKey,
    /// By `kid`: the signing key's public half and every `JWT_VERIFY_KEY_FILES` key.
    pub public: HashMap<String, PublicKey>,
    /// The same keys as JWKs, signing key first.
    jwks: Vec<Value>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signing_kid", &self.signing.kid)
            .field("verify_kids", &self.public.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Default location of the development signing key.
pub const DEV_KEY_PATH: &str = "data/jwt-signing-key.pem";

impl KeySet {
    /// Loads `signing` (generating an Ed25519 dev key at [`DEV_KEY_PATH`] when `None` and it does
    /// not exist yet) and the extra verify keys.
    pub fn load(signing: Option<&str>, verify: &[String]) -> Result<Self, String> {
        let signing_path = match signing {
            Some(path) => path.to_owned(),
            None => {
                if !Path::new(DEV_KEY_PATH).exists() {
                    match write_new_key(DEV_KEY_PATH) {
                        Ok(_) => tracing::warn!(
                            path = DEV_KEY_PATH,
                            "generated a development JWT signing key; set JWT_SIGNING_KEY_FILE in production"
                        ),
                        // Another process generated it first: use theirs.
                        Err(_) if Path::new(DEV_KEY_PATH).exists() => {}
                        Err(error) => return Err(error),
                    }
                }
                DEV_KEY_PATH.to_owned()
            }
        };
        let pem = read(&signing_path)?;
        let (signing, public) =
            signing_key(&pem).map_err(|e| format!("JWT_SIGNING_KEY_FILE {signing_path}: {e}"))?;
        let mut keys = vec![public];
        for path in verify {
            let pem = read(path)?;
            keys.push(verify_key(&pem).map_err(|e| format!("JWT_VERIFY_KEY_FILES {path}: {e}"))?);
        }
        let kid = |key: &VerifyKey| key.jwk["kid"].as_str().unwrap_or_default().to_owned();
        Ok(Self {
            public: keys.iter().map(|key| (kid(key), key.key.clone())).collect(),
            jwks: keys.into_iter().map(|key| key.jwk).collect(),
            signing,
        })
    }

    /// The algorithms tokens may be signed with (`alg` of each published key, signing key's
    /// first, each once).
    pub fn algorithms(&self) -> Vec<String> {
        let mut algorithms: Vec<String> = Vec::new();
        for alg in self.jwks.iter().filter_map(|jwk| jwk["alg"].as_str()) {
            if !algorithms.iter().any(|known| known == alg) {
                algorithms.push(alg.to_owned());
            }
        }
        algorithms
    }

    /// The JWKS document (`{"keys":[…]}`), signing key first.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": self.jwks }).to_string()
    }
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Writes a new Ed25519 private key (PKCS#8 PEM) to `path`, readable by the owner only.
pub fn write_new_key(path: &str) -> Result<String, String> {
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    write_private(path, pem.as_bytes())?;
    let (signing, _) = signing_key(&pem)?;
    Ok(signing.kid)
}

/// Writes `bytes` to `path` (mode 0600) atomically and never over an existing file: a reader
/// never sees half a key, and two processes generating at once keep exactly one.
fn write_private(path: &str, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let temporary = format!("{path}.tmp-{}", std::process::id());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = options
        .open(&temporary)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    written.map_err(|e| format!("cannot write {path}: {e}"))
}

/// RFC 7638: SHA-256 over the required members in lexicographic order, base64url.
fn thumbprint(canonical: &str) -> String {
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

fn ed25519_public(x: &[u8]) -> Result<VerifyKey, String> {
    let x = B64.encode(x);
    let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
    Ok(VerifyKey {
        key: PublicKey {
            alg: Algorithm::EdDSA,
            decoding: DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?,
        },
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    })
}

fn rsa_public(key: &rsa::RsaPublicKey) -> Result<VerifyKey, String> {
    if key.size() < 256 {
        return Err("RSA keys must have at least 2048 bits".into());
    }
    let n = B64.encode(key.n().to_bytes_be());
    let e = B64.encode(key.e().to_bytes_be());
    let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
    Ok(VerifyKey {
        key: PublicKey {
            alg: Algorithm::RS256,
            decoding: DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?,
        },
        jwk: json!({"kty": "RSA", "n": n, "e": e, "kid": kid, "alg": "RS256", "use": "sig"}),
    })
}

/// A private key PEM (Ed25519 PKCS#8, RSA PKCS#8 or PKCS#1) → signing key + its public half.
fn signing_key(pem: &str) -> Result<(SigningKey, VerifyKey), String> {
    if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
        let public = ed25519_public(key.verifying_key().as_bytes())?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let kid = public.jwk["kid"].as_str().unwrap_or_default().to_owned();
        return Ok((
            SigningKey {
                kid,
                alg: Algorithm::EdDSA,
                encoding,
            },
            public,
        ));
    }
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| "not an Ed25519 or RSA private key in PEM".to_owned())?;
    let public = rsa_public(&rsa_key.to_public_key())?;
    let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let kid = public.jwk["kid"].as_str().unwrap_or_default().to_owned();
    Ok((
        SigningKey {
            kid,
            alg: Algorithm::RS256,
            encoding,
        },
        public,
    ))
}

/// A public (or private) key PEM → verify key.
fn verify_key(pem: &str) -> Result<VerifyKey, String> {
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return ed25519_public(key.as_bytes());
    }
    if let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
    {
        return rsa_public(&key);
    }
    signing_key(pem).map(|(_, public)| public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint_of_the_rfc_example() {
        // RFC 7638 §3.1's RSA example key and its published thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        assert_eq!(
            thumbprint(&canonical),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_load_and_publish_their_kid() {
        let dir =
            std::env::temp_dir().join(format!("portico-keys-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("signing.pem").display().to_string();
        let kid = write_new_key(&path).expect("generate");
        let keys = KeySet::load(Some(&path), &[]).expect("load");
        assert_eq!(keys.signing.kid, kid);
        let jwks: Value = serde_json::from_str(&keys.jwks_json()).expect("json");
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
        assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
        assert!(jwks["keys"][0].get("d").is_none(), "never the private part");
        assert!(write_new_key(&path).is_err(), "never overwrites a key");
    }
}
