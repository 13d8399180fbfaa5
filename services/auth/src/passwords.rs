//! Argon2id password hashing at OWASP's minimum cost or more, on the blocking pool behind a
//! semaphore sized to the cores (a login flood queues instead of stalling the runtime); a dummy
//! hash so unknown accounts cost the same as wrong passwords; rehash detection.

use std::sync::Arc;

use argon2::{
    password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString},
    Algorithm, Argon2, Params, Version,
};
use tokio::sync::Semaphore;

/// OWASP's minimum for Argon2id: 19 MiB, 2 iterations, 1 lane.
pub const MEMORY_KIB: u32 = 19_456;
/// Iterations.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;

/// The hasher.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    dummy: Arc<str>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("params", &self.params)
            .finish()
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches.
    pub ok: bool,
    /// The stored hash is weaker than the configured parameters.
    pub needs_rehash: bool,
}

impl Passwords {
    /// A hasher with OWASP's parameters and one concurrent hash per core.
    pub fn new() -> Result<Self, String> {
        let params =
            Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(|e| e.to_string())?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let dummy = hash_blocking(&params, "portico-dummy-password-for-unknown-accounts")?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(cores)),
            dummy: dummy.into(),
        })
    }

    /// Hashes `password` (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when `stored` is `None`
    /// (same cost, always false).
    pub async fn verify(&self, password: String, stored: Option<String>) -> Verified {
        let unknown = stored.is_none();
        let stored = stored.unwrap_or_else(|| self.dummy.to_string());
        let Ok(_permit) = self.permits.acquire().await else {
            return Verified {
                ok: false,
                needs_rehash: false,
            };
        };
        let params = self.params.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let Ok(hash) = PasswordHash::new(&stored) else {
                return Verified {
                    ok: false,
                    needs_rehash: false,
                };
            };
            let ok = argon2(&params)
                .verify_password(password.as_bytes(), &hash)
                .is_ok();
            let weaker = |name: &str, wanted: u32| {
                hash.params
                    .get_decimal(name)
                    .is_none_or(|have| have < wanted)
            };
            let needs_rehash = hash.algorithm.as_str() != "argon2id"
                || weaker("m", params.m_cost())
                || weaker("t", params.t_cost())
                || weaker("p", params.p_cost());
            Verified { ok, needs_rehash }
        })
        .await
        .unwrap_or(Verified {
            ok: false,
            needs_rehash: false,
        });
        Verified {
            ok: outcome.ok && !unknown,
            needs_rehash: outcome.needs_rehash,
        }
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    argon2(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_weak_hashes_want_a_rehash() {
        let passwords = Passwords::new().expect("hasher");
        let hash = passwords.hash("correct horse".into()).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(!passwords.verify("wrong horse".into(), Some(hash)).await.ok);
        assert!(
            !passwords.verify("anything".into(), None).await.ok,
            "the dummy never matches"
        );

        let weak_params = Params::new(8 * 1024, 1, 1, None).expect("params");
        let weak = hash_blocking(&weak_params, "correct horse").expect("hash");
        assert_eq!(
            passwords.verify("correct horse".into(), Some(weak)).await,
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
