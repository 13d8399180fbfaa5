//! Argon2id password hashing at OWASP's minimum cost or more, on a dedicated pool of one thread
//! per core fed by a bounded queue: a login flood queues instead of stalling the async runtime,
//! a full queue refuses at once ([`HashError::Busy`]) instead of making every later login wait,
//! and a job whose caller is gone (deadline passed, client disconnected) is skipped. Each pool
//! thread verifies in its own 19 MiB block buffer, reused from hash to hash: allocating and
//! page-faulting a fresh buffer per hash cost a sixth of the CPU in profiles. Memory stays bounded
//! (cores × the buffer). A dummy hash makes unknown accounts cost the same as wrong passwords;
//! weaker stored hashes are detected for rehashing.

use std::{cell::RefCell, sync::Arc};

use argon2::{
    password_hash::{Output, ParamsString, PasswordHash, SaltString},
    Algorithm, Argon2, Block, Params, Version,
};
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// The hashing thread's reusable Argon2 memory.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Why a password could not be hashed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The queue is full: retry shortly.
    #[error("the password hashing queue is full")]
    Busy,
    /// The pool is gone or a hashing thread failed.
    #[error("{0}")]
    Failed(String),
}

/// One thread per core, each taking the next job from a shared, bounded queue. The threads end
/// when the last [`Passwords`] clone is dropped (the queue disconnects).
#[derive(Clone)]
struct HashPool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl HashPool {
    fn new(threads: usize, queue_max: usize) -> Result<Self, String> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(queue_max.max(1));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    lower_priority();
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })
                .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a pool thread and blocks the calling thread for its result (start-up only:
    /// the calling thread keeps no Argon2 buffer of its own).
    fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs
            .send(job)
            .map_err(|_| "the hashing pool is gone".to_owned())?;
        result
            .recv()
            .map_err(|_| "a hashing thread failed".to_owned())
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller gave up while this waited (its deadline passed, its client left):
            // nobody reads the answer, so the hash would only delay the callers still waiting.
            if done.is_closed() {
                return;
            }
            let _ = done.send(work());
        });
        self.jobs.try_send(job).map_err(|error| match error {
            crossbeam_channel::TrySendError::Full(_) => HashError::Busy,
            crossbeam_channel::TrySendError::Disconnected(_) => {
                HashError::Failed("the hashing pool is gone".into())
            }
        })?;
        result
            .await
            .map_err(|_| HashError::Failed("a hashing thread failed".into()))
    }
}

/// The Unix nice value of the hashing threads (the async runtime runs at the process's, normally 0).
/// At 10 the scheduler gives a runtime thread about ten times a hashing thread's share when both
/// want the same core, so a health probe or a cached read is not queued behind a 25 ms hash, and
/// the hashes still get every cycle the runtime leaves idle (login throughput is unchanged when
/// nothing else runs).
pub const HASH_THREAD_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`HASH_THREAD_NICE`]; a failure (a
/// platform without per-thread niceness) only costs latency, so it is logged, not fatal.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        // The crate maps its portable 0..=99 scale onto nice 19..=-20; 22 is nice 10 (a unit test
        // reads the thread's nice value back from /proc).
        let result = ThreadPriority::Crossplatform(22u8.try_into().unwrap_or_default());
        let result = set_thread_priority_and_policy(
            thread_native_id(),
            result,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other),
        );
        if let Err(error) = result {
            tracing::warn!(
                ?error,
                nice = HASH_THREAD_NICE,
                "cannot lower the password hashing threads' priority"
            );
        }
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
    hash_in_place(
        &Argon2::new(algorithm, version, params),
        password,
        salt,
        &mut out,
    )
    .ok()?;
    Some(bool::from(out.ct_eq(expected.as_bytes())))
}

/// Hashes `password` with `argon2` into `out`, in this thread's reusable memory (grown to what
/// the parameters need, never shrunk).
fn hash_in_place(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let blocks = argon2.params().block_count();
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::new());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
    })
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
    /// A hasher with OWASP's parameters, one concurrent hash per core and at most `queue_max`
    /// hashes waiting.
    pub fn new(queue_max: usize) -> Result<Self, String> {
        let params =
            Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).map_err(|e| e.to_string())?;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let pool = HashPool::new(cores, queue_max)?;
        let dummy_params = params.clone();
        let dummy = pool.run_blocking(move || {
            hash_blocking(&dummy_params, "portico-dummy-password-for-unknown-accounts")
        })??;
        Ok(Self {
            params,
            pool,
            dummy: dummy.into(),
        })
    }

    /// Hashes `password` (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let params = self.params.clone();
        self.pool
            .run(move || hash_blocking(&params, &password))
            .await?
            .map_err(HashError::Failed)
    }

    /// Verifies `password` against `stored`, or against the dummy hash when `stored` is `None`
    /// (same cost, always false).
    /// Checks `password` against `stored` (a dummy hash when there is no account, so timing
    /// does not tell). An error means the password could not be checked at all.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
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

/// Hashes `password` with a fresh salt into a PHC string, in this thread's reusable memory (the
/// same buffer verification uses: argon2's `hash_password` would allocate and fault in a fresh
/// 19 MiB block per call, which the allocator then keeps).
fn hash_blocking(params: &Params, password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    let mut raw_salt = [0u8; 64];
    let raw_salt = salt
        .as_salt()
        .decode_b64(&mut raw_salt)
        .map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    hash_in_place(
        &Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
        password.as_bytes(),
        raw_salt,
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of one thread whose only thread is held until the returned sender is dropped.
    async fn held_pool(queue_max: usize) -> (HashPool, std::sync::mpsc::Sender<()>) {
        let pool = HashPool::new(1, queue_max).expect("pool");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel();
        let holder = pool.clone();
        tokio::spawn(async move {
            holder
                .run(move || {
                    let _ = started_tx.send(());
                    let _ = held.recv();
                })
                .await
        });
        started.await.expect("the thread took the holding job");
        (pool, release)
    }

    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split(' ')
            .nth(16)
            .expect("nice field")
            .parse()
            .expect("a number")
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_below_the_runtime() {
        let pool = HashPool::new(1, 4).expect("pool");
        let runtime_nice = own_nice();
        let hashing_nice = pool.run(own_nice).await.expect("ran");
        // Absolute: a process already niced above 10 keeps its own value (raising needs privilege).
        assert_eq!(hashing_nice, HASH_THREAD_NICE.max(runtime_nice));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let (pool, release) = held_pool(2).await;
        let queued: Vec<_> = (0..2)
            .map(|n| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || n).await })
            })
            .collect();
        // Wait until both are in the queue (they are sent before their first await point).
        while pool.jobs.len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 9).await, Err(HashError::Busy));
        drop(release);
        for (n, job) in queued.into_iter().enumerate() {
            assert_eq!(job.await.expect("task"), Ok(n));
        }
    }

    #[tokio::test]
    async fn jobs_whose_caller_is_gone_are_skipped() {
        let (pool, release) = held_pool(16).await;
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..8 {
            let ran = Arc::clone(&ran);
            let abandoned = pool.run(move || {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            // Polled once (the job is queued), then dropped: a caller whose deadline passed.
            let _ = tokio::time::timeout(std::time::Duration::ZERO, abandoned).await;
        }
        assert_eq!(pool.jobs.len(), 8);
        drop(release);
        let ran_after = Arc::clone(&ran);
        pool.run(move || ran_after.load(std::sync::atomic::Ordering::SeqCst))
            .await
            .expect("a live caller is served");
        assert_eq!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no abandoned job was hashed"
        );
    }

    #[tokio::test]
    async fn hashes_verify_and_weak_hashes_want_a_rehash() {
        let passwords = Passwords::new(64).expect("hasher");
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
