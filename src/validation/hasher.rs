//! argon2id hashing and verification on a dedicated, bounded worker pool.
//!
//! argon2id costs ~20 ms of CPU per call at the default parameters. Running it
//! on the async runtime would stall every other request, and queueing without
//! bound would turn a burst into unbounded latency; so hashing runs on its own
//! threads behind a bounded queue, and a full queue answers "busy" at once.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};

use crate::{
    config::ConfigError,
    domain::token::SecretHash,
    error::{Error, Result},
    telemetry::metrics,
};

/// argon2id cost parameters and pool size.
#[derive(Debug, Clone)]
pub struct HasherConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Worker threads (default: number of cores).
    pub workers: usize,
    /// Jobs that may wait for a worker before callers get `RESOURCE_EXHAUSTED`.
    pub queue: usize,
}

type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

/// Why the argon2 pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Parameters argon2 refuses.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A worker thread could not be spawned.
    #[error("cannot start an argon2 worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

pub struct Hasher {
    jobs: mpsc::SyncSender<Job>,
    verifications: Arc<AtomicU64>,
    workers: usize,
}

impl Hasher {
    /// Checks the parameters and starts the worker threads (at start-up:
    /// its errors are configuration or start-up errors, not a request's).
    pub fn start(config: &HasherConfig) -> Result<Self, StartError> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| {
            ConfigError::new(
                "--argon2-memory-kib, --argon2-iterations, --argon2-parallelism",
                e.to_string(),
            )
        })?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let workers = config.workers.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(config.queue.max(1));
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..workers {
            let queue = Arc::clone(&queue);
            let argon = argon.clone();
            thread::Builder::new()
                .name(format!("tokend-argon2-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match queue.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => {
                                metrics::argon2_dequeued();
                                job(&argon)
                            }
                            Err(_) => return, // the Hasher was dropped
                        }
                    }
                })
                .map_err(StartError::Worker)?;
        }
        Ok(Self {
            jobs,
            verifications: Arc::new(AtomicU64::new(0)),
            workers,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Verifications performed so far (for tests and benchmarks).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Hashes a new secret into an argon2id PHC string.
    pub async fn hash(&self, secret: &str) -> Result<SecretHash> {
        let secret = secret.to_owned();
        self.run(move |argon| {
            metrics::argon2_hashed();
            let mut salt = [0u8; 16];
            rand::fill(&mut salt);
            let salt = SaltString::encode_b64(&salt)
                .map_err(|e| Error::Internal(format!("argon2 salt: {e}")))?;
            argon
                .hash_password(secret.as_bytes(), &salt)
                .map(|h| SecretHash::new(h.to_string()))
                .map_err(|e| Error::Internal(format!("argon2 hashing failed: {e}")))
        })
        .await?
    }

    /// Verifies a secret against a stored hash. The hash's own parameters are
    /// used, so hashes made under older settings keep verifying; the final
    /// comparison inside argon2 is constant-time.
    pub async fn verify(&self, secret: &str, hash: &SecretHash) -> Result<bool> {
        let secret = secret.to_owned();
        let phc = hash.as_phc().to_owned();
        let counter = Arc::clone(&self.verifications);
        self.run(move |argon| {
            counter.fetch_add(1, Ordering::Relaxed);
            match PasswordHash::new(&phc) {
                Ok(parsed) => argon.verify_password(secret.as_bytes(), &parsed).is_ok(),
                Err(_) => false,
            }
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |argon| {
            let _ = done.send(f(argon));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                metrics::argon2_refused();
                Error::ResourceExhausted(
                    "token verification capacity is exhausted; retry shortly".into(),
                )
            }
            mpsc::TrySendError::Disconnected(_) => Error::Internal("argon2 pool stopped".into()),
        })?;
        metrics::argon2_queued();
        result
            .await
            .map_err(|_| Error::Internal("argon2 worker dropped a job".into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cheap(queue: usize) -> Hasher {
        Hasher::start(&HasherConfig {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            workers: 1,
            queue,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = cheap(8);
        let hash = h.hash("s3cret").await.unwrap();
        assert!(hash.as_phc().starts_with("$argon2id$"));
        assert!(!hash.as_phc().contains("s3cret"));
        assert!(h.verify("s3cret", &hash).await.unwrap());
        assert!(!h.verify("other", &hash).await.unwrap());
        assert!(
            !h.verify("s3cret", &SecretHash::new("garbage".into()))
                .await
                .unwrap()
        );
        assert_eq!(h.verifications(), 3);
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_instead_of_waiting() {
        let h = Arc::new(
            Hasher::start(&HasherConfig {
                memory_kib: 65536,
                iterations: 3,
                parallelism: 1,
                workers: 1,
                queue: 1,
            })
            .unwrap(),
        );
        let hash = h.hash("x").await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (h, hash) = (Arc::clone(&h), hash.clone());
            tasks.push(tokio::spawn(async move { h.verify("x", &hash).await }));
        }
        let mut busy = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(Error::ResourceExhausted(_))) {
                busy += 1;
            }
        }
        assert!(
            busy > 0,
            "eight concurrent verifications on one worker with a queue of one must overflow"
        );
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(
            Hasher::start(&HasherConfig {
                memory_kib: 1,
                iterations: 0,
                parallelism: 1,
                workers: 1,
                queue: 1
            })
            .is_err()
        );
    }
}
