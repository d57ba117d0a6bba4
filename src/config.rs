//! Configuration, layered: built-in defaults < `TOKEND_*` environment < flags.
//! clap does the layering, so `--help` documents every setting with its
//! environment variable and default. The `--policy-*` flags live in
//! `config/policy_defaults.rs`, the `--watch-*` flags in `config/watch.rs`,
//! the `--sweep*` flags in `config/sweep.rs`.

mod error;
mod policy_defaults;
mod sweep;
mod watch;

pub use error::ConfigError;
pub use policy_defaults::PolicyDefaults;
pub use sweep::SweepFlags;
pub use watch::WatchFlags;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

use crate::{
    manage::Policy,
    store::StoreConfig,
    tls::TlsFiles,
    validation::{
        cache::CacheConfig, coherence::CoherenceConfig, hasher::HasherConfig, warm::WarmConfig,
    },
};

#[derive(Debug, Parser)]
#[command(name = "tokend", version, about = "API-token service over gRPC")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default). Applies migrations first.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Apply migrations and print one new `tokens:platform` token on stdout,
    /// so a new operator can start.
    Bootstrap {
        /// Account the operator token belongs to.
        #[arg(long)]
        account: String,
        /// Owner (operator) id of the token.
        #[arg(long)]
        owner: String,
    },
    /// Write an online, consistent backup of the SQLite store (--database-url)
    /// to FILE while the server keeps serving. PostgreSQL: use pg_dump or
    /// point-in-time recovery (README, "Day two").
    Backup {
        /// The backup file to write; it must not exist yet.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Put a backup made by `tokend backup` back as the SQLite store named by
    /// --database-url. Stop the server first.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Replace a store that holds tokens or events.
        #[arg(long)]
        force: bool,
    },
    /// Copy a whole store into another, empty one (SQLite to PostgreSQL, back,
    /// or PostgreSQL to PostgreSQL) and verify it. Rerun to resume.
    Move {
        /// The store to copy from (database URL).
        #[arg(
            long,
            value_name = "URL",
            env = "TOKEND_MOVE_FROM",
            hide_env_values = true
        )]
        from: SecretString,
        /// The empty store to copy into (database URL).
        #[arg(
            long,
            value_name = "URL",
            env = "TOKEND_MOVE_TO",
            hide_env_values = true
        )]
        to: SecretString,
        /// Rows per committed batch.
        #[arg(long, default_value_t = 5000)]
        batch_rows: u64,
    },
    /// The audit trail.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Print a new verifier key line for a key file (`--verifier-key-file`).
    /// Put it first to make it current; keep the old line below it until
    /// `tokend key-status` shows no token under the old key.
    Keygen,
    /// Show how many live tokens have their verifier under each key (and how
    /// many have none yet), to know when a retired key can be dropped.
    KeyStatus,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Write audit events as JSON lines (one event per line, oldest first),
    /// for a SIEM or an archive.
    Export {
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = timestamp)]
        from: Option<DateTime<Utc>>,
        /// Only events before this time (RFC 3339).
        #[arg(long, value_name = "TIME", value_parser = timestamp)]
        to: Option<DateTime<Utc>>,
        /// Only this account's events.
        #[arg(long, value_name = "ID")]
        account: Option<String>,
        /// Output file, or `-` for stdout.
        #[arg(long, value_name = "FILE")]
        out: String,
    },
}

fn timestamp(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Held as a secret from the moment it is parsed: a database URL may carry a
/// password, and `Config`'s `Debug` must not show it.
fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "TOKEND_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,
    /// Database URL: a SQLite file (created if missing) or postgres://...
    #[arg(
        long,
        env = "TOKEND_DATABASE_URL",
        default_value = "sqlite://tokend.db?mode=rwc",
        value_parser = secret,
        global = true,
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// Maximum database connections in the pool.
    #[arg(
        long,
        env = "TOKEND_DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub db_max_connections: u32,
    /// Upper bound for each store call; past it the call fails with UNAVAILABLE.
    #[arg(long, env = "TOKEND_STORE_TIMEOUT", default_value = "5s", value_parser = duration, global = true)]
    pub store_timeout: Duration,
    /// Prefix of issued token values: 1..=16 lowercase letters or digits.
    #[arg(long, env = "TOKEND_TOKEN_PREFIX", default_value = "tk", global = true)]
    pub token_prefix: String,
    /// argon2id memory cost in KiB.
    #[arg(
        long,
        env = "TOKEND_ARGON2_MEMORY_KIB",
        default_value_t = 19456,
        global = true
    )]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[arg(
        long,
        env = "TOKEND_ARGON2_ITERATIONS",
        default_value_t = 2,
        global = true
    )]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[arg(
        long,
        env = "TOKEND_ARGON2_PARALLELISM",
        default_value_t = 1,
        global = true
    )]
    pub argon2_parallelism: u32,
    /// argon2 worker threads (default: number of cores).
    #[arg(long, env = "TOKEND_HASH_WORKERS", default_value_t = default_workers(), global = true)]
    pub hash_workers: usize,
    /// argon2 jobs that may queue before callers get RESOURCE_EXHAUSTED.
    #[arg(long, env = "TOKEND_HASH_QUEUE", default_value_t = 64, global = true)]
    pub hash_queue: usize,
    /// Live (non-revoked) tokens one owner may hold.
    #[arg(
        long,
        env = "TOKEND_MAX_TOKENS_PER_OWNER",
        default_value_t = 100,
        global = true
    )]
    pub max_tokens_per_owner: u32,
    /// Longest grace period Rotate accepts for the old value.
    #[arg(long, env = "TOKEND_MAX_ROTATE_GRACE", default_value = "7d", value_parser = duration, global = true)]
    pub max_rotate_grace: Duration,
    /// Verified tokens kept in the Validate cache.
    #[arg(
        long,
        env = "TOKEND_CACHE_CAPACITY",
        default_value_t = 1_000_000,
        global = true
    )]
    pub cache_capacity: usize,
    /// Entries in each negative cache (failed values, unknown ids, failure windows).
    #[arg(
        long,
        env = "TOKEND_NEGATIVE_CACHE_CAPACITY",
        default_value_t = 100_000,
        global = true
    )]
    pub negative_cache_capacity: usize,
    /// How long a value that failed verification is answered from memory.
    #[arg(long, env = "TOKEND_NEGATIVE_TTL", default_value = "30s", value_parser = duration, global = true)]
    pub negative_ttl: Duration,
    /// How long an id with no token is answered from memory.
    #[arg(long, env = "TOKEND_UNKNOWN_TTL", default_value = "10s", value_parser = duration, global = true)]
    pub unknown_ttl: Duration,
    /// Window for counting failed verifications per token id.
    #[arg(long, env = "TOKEND_FAILURE_WINDOW", default_value = "10s", value_parser = duration, global = true)]
    pub failure_window: Duration,
    /// Failed verifications per id and window before further ones are throttled.
    #[arg(
        long,
        env = "TOKEND_FAILURES_PER_WINDOW",
        default_value_t = 5,
        global = true
    )]
    pub failures_per_window: u32,
    /// How often last-used times are written to the store.
    #[arg(long, env = "TOKEND_LAST_USED_FLUSH_INTERVAL", default_value = "1s", value_parser = duration, global = true)]
    pub last_used_flush_interval: Duration,
    /// PostgreSQL: how often each replica polls the change log (NOTIFY usually
    /// arrives first; polling covers lost notifications).
    #[arg(long, env = "TOKEND_CHANGE_POLL_INTERVAL", default_value = "500ms", value_parser = duration, global = true)]
    pub change_poll_interval: Duration,
    /// PostgreSQL: how long a skipped change-log sequence number is watched
    /// for a late commit; also the longest log outage survived without
    /// clearing the cache.
    #[arg(long, env = "TOKEND_CHANGE_LOOKBACK", default_value = "30s", value_parser = duration, global = true)]
    pub change_lookback: Duration,
    /// PostgreSQL: how long change-log rows are kept.
    #[arg(long, env = "TOKEND_CHANGE_RETENTION", default_value = "10m", value_parser = duration, global = true)]
    pub change_retention: Duration,
    /// File of verifier keys, one `[<id>:]<64 hex digits>` line each (`tokend
    /// keygen` makes one); the first is current, the others still verify. Not
    /// in the database: back it up separately. Required on PostgreSQL; on
    /// SQLite, `tokend.key` beside the database file is created when unset.
    #[arg(long, env = "TOKEND_VERIFIER_KEY_FILE", global = true)]
    pub verifier_key_file: Option<PathBuf>,
    /// Load the Validate cache from the store at start-up, before reporting SERVING.
    #[arg(long, env = "TOKEND_WARM_START", default_value_t = true, action = ArgAction::Set, global = true)]
    pub warm_start: bool,
    /// Most tokens the warm start loads (default: the cache capacity).
    #[arg(long, env = "TOKEND_WARM_START_MAX", global = true)]
    pub warm_start_max: Option<usize>,
    /// The warm start loads tokens used (or, never used, created) this recently.
    #[arg(long, env = "TOKEND_WARM_START_LOOKBACK", default_value = "30d", value_parser = duration, global = true)]
    pub warm_start_lookback: Duration,
    /// Past this the warm start stops and the server reports SERVING with what it loaded.
    #[arg(long, env = "TOKEND_WARM_START_TIMEOUT", default_value = "30s", value_parser = duration, global = true)]
    pub warm_start_timeout: Duration,
    /// Health turns NOT_SERVING once the store has been unreachable this long.
    #[arg(long, env = "TOKEND_STORE_UNHEALTHY_AFTER", default_value = "3s", value_parser = duration, global = true)]
    pub store_unhealthy_after: Duration,
    /// On SIGTERM/SIGINT: time between reporting NOT_SERVING and closing the listener.
    #[arg(long, env = "TOKEND_DRAIN_DELAY", default_value = "0s", value_parser = duration, global = true)]
    pub drain_delay: Duration,
    /// Log format.
    #[arg(long, env = "TOKEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "TOKEND_LOG", default_value = "info", global = true)]
    pub log: String,
    /// How long audit events are kept (e.g. `400d`); unset keeps them forever.
    /// Older events are pruned in the background, in small batches.
    #[arg(long, env = "TOKEND_EVENT_RETENTION", value_parser = duration, global = true)]
    pub event_retention: Option<Duration>,
    /// How often the audit retention pruner looks for expired events.
    #[arg(long, env = "TOKEND_EVENT_PRUNE_INTERVAL", default_value = "1m", value_parser = duration, global = true)]
    pub event_prune_interval: Duration,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key).
    /// Reloaded when the file changes. Without it, gRPC is plaintext.
    #[arg(long, env = "TOKEND_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. Reloaded when the file changes.
    #[arg(long, env = "TOKEND_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: makes a client certificate signed by it mandatory (mTLS).
    #[arg(
        long,
        env = "TOKEND_TLS_CLIENT_CA",
        requires = "tls_cert",
        global = true
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Address of the Prometheus metrics listener (HTTP, path /metrics).
    /// Off unless set.
    #[arg(long, env = "TOKEND_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the HTTP listener for gateways' forward-auth (nginx
    /// auth_request, Caddy forward_auth, Traefik ForwardAuth): path
    /// /v1/forward-auth, over TLS when --tls-cert is set. Off unless set.
    #[arg(long, env = "TOKEND_HTTP_LISTEN", global = true)]
    pub http_listen: Option<SocketAddr>,
    /// CIDR ranges of the proxies whose X-Forwarded-For (else X-Real-IP)
    /// forward-auth believes, comma-separated (e.g. `10.0.0.0/8,::1`): from a
    /// peer in them, the client address of an IP-bound token is the
    /// right-most forwarded address that is not itself trusted; from any
    /// other peer, the peer's own address. Default: none.
    #[arg(
        long,
        env = "TOKEND_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<String>,
    #[command(flatten)]
    pub policy_defaults: PolicyDefaults,
    #[command(flatten)]
    pub watch: WatchFlags,
    #[command(flatten)]
    pub sweep: SweepFlags,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults declared above, as a library user would get them.
        Cli::parse_from(["tokend"]).config
    }
}

impl Config {
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            url: self.database_url.clone(),
            max_connections: self.db_max_connections,
            timeout: self.store_timeout,
        }
    }

    pub fn hasher(&self) -> HasherConfig {
        HasherConfig {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
            workers: self.hash_workers,
            queue: self.hash_queue,
        }
    }

    pub fn cache(&self) -> CacheConfig {
        CacheConfig {
            capacity: self.cache_capacity,
            negative_capacity: self.negative_cache_capacity,
            negative_ttl: self.negative_ttl,
            unknown_ttl: self.unknown_ttl,
            failure_window: self.failure_window,
            failures_per_window: self.failures_per_window,
        }
    }

    pub fn coherence(&self) -> CoherenceConfig {
        CoherenceConfig {
            poll_interval: self.change_poll_interval,
            lookback: self.change_lookback,
            retention: self.change_retention,
        }
    }

    pub fn warm(&self) -> WarmConfig {
        WarmConfig {
            enabled: self.warm_start,
            max_tokens: self.warm_start_max.unwrap_or(self.cache_capacity),
            lookback: self.warm_start_lookback,
            timeout: self.warm_start_timeout,
        }
    }

    /// The sweeper's settings, or `None` when it is off on this replica.
    pub fn sweeper(&self) -> Option<crate::manage::sweeper::SweepConfig> {
        self.sweep
            .sweep
            .then(|| crate::manage::sweeper::SweepConfig {
                interval: self.sweep.sweep_interval,
                batch: self.sweep.sweep_batch,
                // A use reaches the store within one flush interval, plus the
                // flush's own store call (bounded by the store timeout).
                flush_lag: self.last_used_flush_interval + self.store_timeout,
            })
    }

    /// The TLS files, when TLS is on.
    pub fn tls(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// `--trusted-proxies`, parsed (blanks ignored).
    pub fn trusted_proxies(&self) -> Result<Vec<crate::domain::policy::Cidr>, ConfigError> {
        let mut out = Vec::new();
        for (i, text) in self.trusted_proxies.iter().map(|t| t.trim()).enumerate() {
            if text.is_empty() {
                continue;
            }
            let c = crate::domain::policy::Cidr::parse(&format!("--trusted-proxies[{i}]"), text)
                .map_err(|v| ConfigError::new(v.field, v.description))?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The service-wide rules; fails on `--policy-*` defaults that would be
    /// refused through the API.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        Ok(Policy {
            prefix: self.token_prefix.clone(),
            per_owner_limit: self.max_tokens_per_owner,
            max_rotate_grace: self.max_rotate_grace,
            account_defaults: self.policy_defaults.account_policy()?,
            watch: crate::manage::watch::WatchConfig {
                buffer: self.watch.watch_buffer,
                lag_timeout: self.watch.watch_lag_timeout,
                poll_interval: self.change_poll_interval,
            },
        })
    }
}

#[cfg(test)]
mod tests;
