//! Argon2id password hashing at OWASP's minimum cost or more, on a dedicated pool of one thread
//! per core fed by a queue: a login flood queues instead of stalling the async runtime. Each pool
//! thread verifies in its own 19 MiB block buffer, reused from hash to hash: allocating and
//! page-faulting a fresh buffer per hash cost a sixth of the CPU in profiles. Memory stays bounded
//! (cores × the buffer). A dummy hash makes unknown accounts cost the same as wrong passwords;
//! weaker stored hashes are detected for rehashing.

use std::{cell::RefCell, sync::Arc};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher as _, SaltString},
    Algorithm, Argon2, Block, Params, Version,
};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// The hashing thread's reusable Argon2 memory.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// One thread per core, each taking the next job from a shared queue. The threads end when the
/// last [`Passwords`] clone is dropped (the queue disconnects).
#[derive(Clone)]
struct HashPool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl HashPool {
    fn new(threads: usize) -> Result<Self, String> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })
                .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| "the hashing pool is gone".to_owned())?;
        result
            .await
            .map_err(|_| "a hashing thread failed".to_owned())
    }
}

/// Verifies `password` against a PHC string in this thread's reusable memory; `None` when the
/// stored string is not a usable Argon2 hash.
fn verify_in_place(password: &[u8], hash: &PasswordHash<'_>) -> Option<bool> {
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::V0x13,
    };
    let params = Params::try_from(hash).ok()?;
    let expected = hash.hash?;
    let mut salt = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt).ok()?;
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    MEMORY
        .with(|memory| {
            let mut memory = memory.borrow_mut();
            if memory.len() < blocks {
                memory.resize(blocks, Block::new());
            }
            Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
                password,
                salt,
                &mut out,
                &mut memory[..blocks],
            )
        })
        .ok()?;
    Some(bool::from(out.ct_eq(expected.as_bytes())))
}

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
    pool: HashPool,
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
            pool: HashPool::new(cores)?,
            dummy: dummy.into(),
        })
    }

    /// Hashes `password` (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let params = self.params.clone();
        self.pool
            .run(move || hash_blocking(&params, &password))
            .await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when `stored` is `None`
    /// (same cost, always false).
    /// Checks `password` against `stored` (a dummy hash when there is no account, so timing
    /// does not tell). An error means the password could not be checked at all.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, String> {
        let unknown = stored.is_none();
        let stored = stored.unwrap_or_else(|| self.dummy.to_string());
        let params = self.params.clone();
        let outcome = self
            .pool
            .run(move || {
                let Ok(hash) = PasswordHash::new(&stored) else {
                    return Verified {
                        ok: false,
                        needs_rehash: false,
                    };
                };
                let ok = verify_in_place(password.as_bytes(), &hash).unwrap_or(false);
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
            .await?;
        Ok(Verified {
            ok: outcome.ok && !unknown,
            needs_rehash: outcome.needs_rehash,
        })
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
                .await
                .expect("checked"),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .expect("checked")
                .ok
        );
        assert!(
            !passwords
                .verify("anything".into(), None)
                .await
                .expect("checked")
                .ok,
            "the dummy never matches"
        );

        let weak_params = Params::new(8 * 1024, 1, 1, None).expect("params");
        let weak = hash_blocking(&weak_params, "correct horse").expect("hash");
        assert_eq!(
            passwords
                .verify("correct horse".into(), Some(weak))
                .await
                .expect("checked"),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
