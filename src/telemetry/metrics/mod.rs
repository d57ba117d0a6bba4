//! Prometheus metrics: every metric name, its labels and its recording helper
//! live here, so a call site elsewhere is one line
//! (`metrics::cache_hit()`, `metrics::validate_outcome(reason, hit, started)`
//! with `started = metrics::timer()`).
//!
//! Recording is split from exporting, so the hot path pays for neither a
//! registry nor a lock:
//!
//! - counters and gauges are plain atomics in statics. Counters touched on
//!   every call (Validate outcomes, cache hits, RPCs by method and code) are
//!   *sharded*: each thread adds to its own cache line, so two cores never
//!   fight over one. No label is hashed and nothing is allocated per call;
//!   a label set is an index into a fixed table.
//! - at scrape time (`render`), the atomics are summed and published into
//!   the `metrics-exporter-prometheus` recorder (`Counter::absolute`,
//!   `Gauge::set`), the per-process sources (cache sizes, pending last-used
//!   entries, ...) are read, and the recorder renders the text format.
//! - histograms (latencies) go straight to the recorder's lock-free buckets,
//!   through handles registered once when the recorder is installed. Without
//!   `--metrics-listen` no recorder exists, and they cost one atomic load.
//!
//! The counters are process-wide: several servers in one process (the tests)
//! share them.

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    error::{Error, Result, StoreFault},
    validation::Reason,
};

mod export;
pub use self::export::*;

/// Metric names. Each is documented (HELP text) in `describe` and listed with
/// its meaning in the README.
pub mod name {
    pub const BUILD_INFO: &str = "tokend_build_info";
    pub const VALIDATE_REQUESTS: &str = "tokend_validate_requests_total";
    pub const VALIDATE_DURATION: &str = "tokend_validate_duration_seconds";
    pub const GRPC_REQUESTS: &str = "tokend_grpc_requests_total";
    pub const CACHE_ENTRIES: &str = "tokend_cache_entries";
    pub const CACHE_HITS: &str = "tokend_cache_hits_total";
    pub const CACHE_MISSES: &str = "tokend_cache_misses_total";
    pub const CACHE_EVICTIONS: &str = "tokend_cache_evictions_total";
    pub const NEGATIVE_CACHE_ENTRIES: &str = "tokend_negative_cache_entries";
    pub const ARGON2_VERIFICATIONS: &str = "tokend_argon2_verifications_total";
    pub const ARGON2_HASHES: &str = "tokend_argon2_hashes_total";
    pub const ARGON2_QUEUE_DEPTH: &str = "tokend_argon2_queue_depth";
    pub const ARGON2_REFUSALS: &str = "tokend_argon2_refusals_total";
    pub const STORE_STATEMENTS: &str = "tokend_store_statements_total";
    pub const STORE_ERRORS: &str = "tokend_store_errors_total";
    pub const STORE_CALL_DURATION: &str = "tokend_store_call_duration_seconds";
    pub const HEALTH_SERVING: &str = "tokend_health_serving";
    pub const CHANGELOG_SEEN: &str = "tokend_changelog_seen_sequence";
    pub const CHANGELOG_APPLIED: &str = "tokend_changelog_applied_sequence";
    pub const CHANGELOG_LAG: &str = "tokend_changelog_lag_seconds";
    pub const CHANGELOG_DELIVERIES: &str = "tokend_changelog_deliveries_total";
    pub const CHANGELOG_RECONNECTS: &str = "tokend_changelog_listener_reconnects_total";
    pub const LAST_USED_PENDING: &str = "tokend_last_used_pending";
    pub const LAST_USED_FLUSH_DURATION: &str = "tokend_last_used_flush_duration_seconds";
    pub const LAST_USED_FLUSH_FAILURES: &str = "tokend_last_used_flush_failures_total";
    pub const TASK_RUNNING: &str = "tokend_task_running";
    pub const TASK_RESTARTS: &str = "tokend_task_restarts_total";
    pub const TLS_RELOADS: &str = "tokend_tls_reloads_total";
    pub const GATEWAY_REQUESTS: &str = "tokend_gateway_requests_total";
    pub const GATEWAY_DURATION: &str = "tokend_gateway_duration_seconds";
    pub const SWEEP_NOTICES: &str = "tokend_sweep_notices_total";
    pub const SWEEP_AUTO_DISABLED: &str = "tokend_sweep_auto_disabled_total";
    pub const SWEEP_DURATION: &str = "tokend_sweep_duration_seconds";
    pub const NAME_INDEX_FOLDED: &str = "tokend_name_index_folded_total";
    pub const NAME_INDEX_FOLD_DURATION: &str = "tokend_name_index_fold_duration_seconds";
}

// ---------------------------------------------------------------------------
// Sharded counters
// ---------------------------------------------------------------------------

/// Shards per counter table: more than the cores of most nodes tokend runs on;
/// threads beyond that share shards (still correct, only less spread).
const SHARDS: usize = 16;

/// One thread's row of a counter table, alone on its cache lines.
#[repr(align(128))]
struct Row<const N: usize>([AtomicU64; N]);

/// `N` counters, each split over `SHARDS` rows; a thread only writes its own row.
pub struct Sharded<const N: usize>([Row<N>; SHARDS]);

impl<const N: usize> Sharded<N> {
    const fn new() -> Self {
        Self([const { Row([const { AtomicU64::new(0) }; N]) }; SHARDS])
    }

    #[inline]
    fn add(&self, i: usize) {
        if let Some(c) = self.0[shard()].0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sum(&self, i: usize) -> u64 {
        self.0
            .iter()
            .map(|row| row.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum()
    }
}

/// This thread's shard, assigned round-robin on first use.
#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

// ---------------------------------------------------------------------------
// Label tables
// ---------------------------------------------------------------------------

const REASONS: [(Reason, &str); 8] = [
    (Reason::Valid, "valid"),
    (Reason::Malformed, "malformed"),
    (Reason::Unknown, "unknown"),
    (Reason::Disabled, "disabled"),
    (Reason::Revoked, "revoked"),
    (Reason::Expired, "expired"),
    (Reason::MissingModules, "missing_modules"),
    (Reason::IpNotAllowed, "ip_not_allowed"),
];

fn reason_index(reason: Reason) -> usize {
    match reason {
        Reason::Valid => 0,
        Reason::Malformed => 1,
        Reason::Unknown => 2,
        Reason::Disabled => 3,
        Reason::Revoked => 4,
        Reason::Expired => 5,
        Reason::MissingModules => 6,
        Reason::IpNotAllowed => 7,
    }
}

/// The RPCs this server serves, as (service, method); anything else is "other".
pub const METHODS: [(&str, &str); 18] = [
    ("tokens.v1.TokenService", "Issue"),
    ("tokens.v1.TokenService", "Validate"),
    ("tokens.v1.TokenService", "Get"),
    ("tokens.v1.TokenService", "Update"),
    ("tokens.v1.TokenService", "SetState"),
    ("tokens.v1.TokenService", "Revoke"),
    ("tokens.v1.TokenService", "Rotate"),
    ("tokens.v1.TokenService", "Duplicate"),
    ("tokens.v1.TokenService", "Search"),
    ("tokens.v1.TokenService", "ListEvents"),
    ("tokens.v1.TokenService", "GetAccountPolicy"),
    ("tokens.v1.TokenService", "UpdateAccountPolicy"),
    ("tokens.v1.TokenService", "WatchEvents"),
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
    ("envoy.service.auth.v3.Authorization", "Check"),
];
const OTHER_METHOD: usize = METHODS.len();

/// gRPC status codes 0..=16, as the gRPC specification names them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The row of `METHODS` for a request path, by comparing the path with the
/// known ones (no hashing); `OTHER_METHOD` if none.
pub fn method_index(path: &str) -> usize {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return OTHER_METHOD;
    };
    METHODS
        .iter()
        .position(|(s, m)| *m == method && *s == service)
        .unwrap_or(OTHER_METHOD)
}

/// Where a store error came from, for `tokend_store_errors_total{kind}`.
#[derive(Debug, Clone, Copy)]
pub enum StoreErrorKind {
    /// The call exceeded the store timeout.
    Timeout,
    /// The database could not be reached (connection, pool).
    Unavailable,
    /// The database answered with an error.
    Database,
    /// Anything else (a bug, a conversion).
    Other,
}

const STORE_ERROR_KINDS: [&str; 4] = ["timeout", "unavailable", "database", "other"];

/// The gateway contracts (`api::gateway`).
#[derive(Debug, Clone, Copy)]
pub enum Gateway {
    /// Envoy's `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz = 0,
    /// HTTP forward-auth (`/v1/forward-auth`).
    ForwardAuth = 1,
}

const GATEWAYS: [&str; 2] = ["ext_authz", "forward_auth"];

impl Gateway {
    pub fn name(self) -> &'static str {
        GATEWAYS[self as usize]
    }
}

/// How a gateway call ended.
#[derive(Debug, Clone, Copy)]
pub enum GatewayResult {
    /// A verdict on the presented token (valid: allowed).
    Verdict(Reason),
    /// No token presented: 401.
    Missing,
    /// The gateway itself was refused (its credential or privilege, or a
    /// bad setting): no verdict.
    Refused,
    /// The store or the server failed: no verdict.
    Error,
}

/// `result` labels: the reasons, then these.
const GATEWAY_RESULTS: [&str; 3] = ["missing_token", "gateway_refused", "error"];
const GATEWAY_ROWS: usize = REASONS.len() + GATEWAY_RESULTS.len();

fn gateway_result_index(result: GatewayResult) -> usize {
    match result {
        GatewayResult::Verdict(reason) => reason_index(reason),
        GatewayResult::Missing => REASONS.len(),
        GatewayResult::Refused => REASONS.len() + 1,
        GatewayResult::Error => REASONS.len() + 2,
    }
}

/// How a change-log entry reached this replica.
#[derive(Debug, Clone, Copy)]
pub enum Delivery {
    Notify,
    Poll,
}

// ---------------------------------------------------------------------------
// The statics
// ---------------------------------------------------------------------------

/// Validate outcomes: reason x (hit, miss).
static VALIDATE: Sharded<14> = Sharded::new();
/// RPCs: (method or other) x code.
static GRPC: Sharded<{ (METHODS.len() + 1) * 17 }> = Sharded::new();
/// 0 hits, 1 misses.
static CACHE: Sharded<2> = Sharded::new();
/// Gateway calls: gateway x result.
static GATEWAY: Sharded<{ 2 * GATEWAY_ROWS }> = Sharded::new();

/// Counters off the hot path: plain atomics.
struct Counters {
    cache_evictions: AtomicU64,
    argon2_hashes: AtomicU64,
    argon2_refusals: AtomicU64,
    store_errors: [AtomicU64; 4],
    deliveries: [AtomicU64; 2],
    reconnects: AtomicU64,
    flush_failures: AtomicU64,
    tls_reloads: [AtomicU64; 2],
    /// [expiring_soon, expired]
    sweep_notices: [AtomicU64; 2],
    sweep_auto_disabled: AtomicU64,
    name_index_folded: AtomicU64,
    argon2_queue: AtomicI64,
    changelog_seen: AtomicI64,
    changelog_applied: AtomicI64,
    /// Microseconds since `EPOCH` when the follower last proved it had applied
    /// everything in the log; 0 = never.
    changelog_caught_up_us: AtomicU64,
}

static COUNTERS: Counters = Counters {
    cache_evictions: AtomicU64::new(0),
    argon2_hashes: AtomicU64::new(0),
    argon2_refusals: AtomicU64::new(0),
    store_errors: [const { AtomicU64::new(0) }; 4],
    deliveries: [const { AtomicU64::new(0) }; 2],
    reconnects: AtomicU64::new(0),
    flush_failures: AtomicU64::new(0),
    tls_reloads: [const { AtomicU64::new(0) }; 2],
    sweep_notices: [const { AtomicU64::new(0) }; 2],
    sweep_auto_disabled: AtomicU64::new(0),
    name_index_folded: AtomicU64::new(0),
    argon2_queue: AtomicI64::new(0),
    changelog_seen: AtomicI64::new(0),
    changelog_applied: AtomicI64::new(0),
    changelog_caught_up_us: AtomicU64::new(0),
};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Histogram handles, registered once when the recorder is installed.
struct Histograms {
    /// [hit, miss]
    validate: [Histogram; 2],
    store_call: Histogram,
    flush: Histogram,
    /// [ext_authz, forward_auth]
    gateway: [Histogram; 2],
    sweep: Histogram,
    fold: Histogram,
}

static HISTOGRAMS: OnceLock<Histograms> = OnceLock::new();

// ---------------------------------------------------------------------------
// Recording helpers (the one-line call sites)
// ---------------------------------------------------------------------------

/// A start time for a measured call, taken only when a recorder is installed.
#[inline]
pub fn timer() -> Option<Instant> {
    HISTOGRAMS.get().map(|_| Instant::now())
}

/// One Validate RPC answered with `reason`; `hit` when it was answered from
/// memory (no store read, no argon2). `started` comes from `timer()`.
#[inline]
pub fn validate_outcome(reason: Reason, hit: bool, started: Option<Instant>) {
    let miss = usize::from(!hit);
    VALIDATE.add(reason_index(reason) * 2 + miss);
    if let (Some(h), Some(t)) = (HISTOGRAMS.get(), started) {
        h.validate[miss].record(t.elapsed().as_secs_f64());
    }
}

/// One gateway call ended with `result`. `started` (from `timer()`) is
/// given for a verdict, whose latency is recorded.
#[inline]
pub fn gateway_outcome(gateway: Gateway, result: GatewayResult, started: Option<Instant>) {
    GATEWAY.add(gateway as usize * GATEWAY_ROWS + gateway_result_index(result));
    if let (Some(h), Some(t)) = (HISTOGRAMS.get(), started) {
        h.gateway[gateway as usize].record(t.elapsed().as_secs_f64());
    }
}

/// One RPC on `method` (from `method_index`) finished with gRPC `code`.
#[inline]
pub fn rpc_finished(method: usize, code: i32) {
    let code = usize::try_from(code)
        .ok()
        .filter(|c| *c < CODES.len())
        .unwrap_or(2);
    GRPC.add(method.min(OTHER_METHOD) * CODES.len() + code);
}

/// A Validate-cache lookup that found a verified entry.
#[inline]
pub fn cache_hit() {
    CACHE.add(0);
}

/// A Validate-cache lookup that had to go to the store.
#[inline]
pub fn cache_miss() {
    CACHE.add(1);
}

/// The cache dropped an entry to stay within its capacity.
pub fn cache_eviction() {
    COUNTERS.cache_evictions.fetch_add(1, Ordering::Relaxed);
}

pub fn argon2_hashed() {
    COUNTERS.argon2_hashes.fetch_add(1, Ordering::Relaxed);
}

/// A job entered the argon2 queue.
pub fn argon2_queued() {
    COUNTERS.argon2_queue.fetch_add(1, Ordering::Relaxed);
}

/// A worker took a job off the argon2 queue.
pub fn argon2_dequeued() {
    COUNTERS.argon2_queue.fetch_sub(1, Ordering::Relaxed);
}

/// The argon2 queue was full and a caller got RESOURCE_EXHAUSTED.
pub fn argon2_refused() {
    COUNTERS.argon2_refusals.fetch_add(1, Ordering::Relaxed);
}

/// One store call took `elapsed`; `error` is set when it failed.
pub fn store_call(started: Option<Instant>, error: Option<&Error>) {
    if let (Some(h), Some(t)) = (HISTOGRAMS.get(), started) {
        h.store_call.record(t.elapsed().as_secs_f64());
    }
    if let Some(e) = error {
        let kind = match e {
            Error::Unavailable(StoreFault::Timeout, _) => StoreErrorKind::Timeout,
            Error::Unavailable(..) => StoreErrorKind::Unavailable,
            Error::Database(_) => StoreErrorKind::Database,
            _ => StoreErrorKind::Other,
        };
        COUNTERS.store_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The change-log follower learned that change `seq` exists.
pub fn change_seen(seq: i64) {
    COUNTERS.changelog_seen.fetch_max(seq, Ordering::Relaxed);
}

/// The change-log follower applied change `seq`, brought by `via`.
pub fn change_applied(seq: i64, via: Delivery) {
    change_seen(seq);
    COUNTERS.changelog_applied.fetch_max(seq, Ordering::Relaxed);
    COUNTERS.deliveries[via as usize].fetch_add(1, Ordering::Relaxed);
}

/// A poll of the change log found nothing more to apply: this replica is
/// up to date as of now.
pub fn changelog_caught_up(high: i64) {
    change_seen(high);
    COUNTERS
        .changelog_applied
        .fetch_max(high, Ordering::Relaxed);
    let us = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
    COUNTERS
        .changelog_caught_up_us
        .store(us.max(1), Ordering::Relaxed);
}

/// The change listener connected again after losing its connection.
pub fn listener_reconnected() {
    COUNTERS.reconnects.fetch_add(1, Ordering::Relaxed);
}

/// One last-used flush took `elapsed`.
pub fn last_used_flushed(started: Option<Instant>) {
    if let (Some(h), Some(t)) = (HISTOGRAMS.get(), started) {
        h.flush.record(t.elapsed().as_secs_f64());
    }
}

/// A last-used batch could not be written (it is kept for the next flush).
pub fn last_used_flush_failed() {
    COUNTERS.flush_failures.fetch_add(1, Ordering::Relaxed);
}

/// A TLS certificate reload was tried.
pub fn tls_reload(ok: bool) {
    COUNTERS.tls_reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
}

/// One fold of the name index's pending list (SQLite) took `elapsed` and
/// folded `tokens`; a fold that found nothing is not recorded.
pub fn name_index_folded(started: Option<Instant>, tokens: u64) {
    if tokens == 0 {
        return;
    }
    COUNTERS
        .name_index_folded
        .fetch_add(tokens, Ordering::Relaxed);
    if let (Some(h), Some(t)) = (HISTOGRAMS.get(), started) {
        h.fold.record(t.elapsed().as_secs_f64());
    }
}

/// One sweeper pass took `elapsed` and recorded these events.
pub fn sweep_finished(elapsed: Duration, expiring_soon: u64, expired: u64, auto_disabled: u64) {
    let c = &COUNTERS;
    c.sweep_notices[0].fetch_add(expiring_soon, Ordering::Relaxed);
    c.sweep_notices[1].fetch_add(expired, Ordering::Relaxed);
    c.sweep_auto_disabled
        .fetch_add(auto_disabled, Ordering::Relaxed);
    if let Some(h) = HISTOGRAMS.get() {
        h.sweep.record(elapsed.as_secs_f64());
    }
}

/// Health of `service` ("" is the whole server) changed.
pub fn health(service: &'static str, serving: bool) {
    if HISTOGRAMS.get().is_some() {
        metrics::gauge!(name::HEALTH_SERVING, "service" => service)
            .set(f64::from(u8::from(serving)));
    }
}

/// A supervised task started (`running`) or stopped; `restart` counts a restart.
pub fn task(task: &'static str, running: bool, restart: bool) {
    if HISTOGRAMS.get().is_some() {
        metrics::gauge!(name::TASK_RUNNING, "task" => task).set(f64::from(u8::from(running)));
        let restarts = metrics::counter!(name::TASK_RESTARTS, "task" => task);
        if restart {
            restarts.increment(1);
        } else {
            restarts.increment(0);
        }
    }
}

#[cfg(test)]
mod tests;
