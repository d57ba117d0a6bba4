//! Installing the Prometheus recorder and rendering a scrape: the HELP text
//! of every metric (`describe`), the publishing of the atomics into the
//! recorder (`publish`), and the per-process sources read at scrape time.

use super::*;

// ---------------------------------------------------------------------------
// Installing and rendering
// ---------------------------------------------------------------------------

/// Latency buckets, in seconds: 50 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Installs the process-wide recorder (once; later calls return the same
/// handle) and registers the histogram handles.
pub fn install() -> Result<PrometheusHandle> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE
        .lock()
        .map_err(|_| Error::Internal("metrics recorder lock poisoned".into()))?;
    if let Some(h) = slot.as_ref() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| Error::Internal(format!("cannot install the metrics recorder: {e}")))?;
    describe();
    let _ = HISTOGRAMS.set(Histograms {
        validate: [
            metrics::histogram!(name::VALIDATE_DURATION, "cache" => "hit"),
            metrics::histogram!(name::VALIDATE_DURATION, "cache" => "miss"),
        ],
        store_call: metrics::histogram!(name::STORE_CALL_DURATION),
        flush: metrics::histogram!(name::LAST_USED_FLUSH_DURATION),
        gateway: [
            metrics::histogram!(name::GATEWAY_DURATION, "gateway" => GATEWAYS[0]),
            metrics::histogram!(name::GATEWAY_DURATION, "gateway" => GATEWAYS[1]),
        ],
        sweep: metrics::histogram!(name::SWEEP_DURATION),
        fold: metrics::histogram!(name::NAME_INDEX_FOLD_DURATION),
    });
    metrics::gauge!(name::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    epoch();
    *slot = Some(handle.clone());
    Ok(handle)
}

fn describe() {
    use name::*;
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the running tokend's version"
    );
    describe_counter!(
        VALIDATE_REQUESTS,
        "Validate RPCs answered, by reason and by whether the cache answered (hit) or the store was read (miss)"
    );
    describe_histogram!(
        VALIDATE_DURATION,
        Unit::Seconds,
        "Time to judge a Validate request (caller check excluded), hit and miss separately"
    );
    describe_counter!(
        GRPC_REQUESTS,
        "RPCs finished, by service, method and gRPC status code"
    );
    describe_gauge!(CACHE_ENTRIES, "Verified tokens held in the Validate cache");
    describe_counter!(
        CACHE_HITS,
        "Validate-cache lookups (tokens and callers) answered from memory"
    );
    describe_counter!(
        CACHE_MISSES,
        "Validate-cache lookups that went to the store"
    );
    describe_counter!(
        CACHE_EVICTIONS,
        "Entries dropped from the Validate cache to stay within its capacity"
    );
    describe_gauge!(
        NEGATIVE_CACHE_ENTRIES,
        "Entries in the negative caches: failed values, unknown ids, failure windows"
    );
    describe_counter!(ARGON2_VERIFICATIONS, "argon2id verifications performed");
    describe_counter!(ARGON2_HASHES, "argon2id hashes computed (new secrets)");
    describe_gauge!(ARGON2_QUEUE_DEPTH, "argon2 jobs waiting for a worker");
    describe_counter!(
        ARGON2_REFUSALS,
        "argon2 jobs refused with RESOURCE_EXHAUSTED because the queue was full"
    );
    describe_counter!(STORE_STATEMENTS, "SQL statements executed");
    describe_counter!(
        STORE_ERRORS,
        "Store calls that failed, by kind (timeout, unavailable, database, other)"
    );
    describe_histogram!(
        STORE_CALL_DURATION,
        Unit::Seconds,
        "Time per store call (a query or a transaction)"
    );
    describe_gauge!(
        HEALTH_SERVING,
        "1 while grpc.health.v1 reports SERVING for the service (\"\" is the whole server), else 0"
    );
    describe_gauge!(
        CHANGELOG_SEEN,
        "PostgreSQL: highest change-log sequence number this replica knows of"
    );
    describe_gauge!(
        CHANGELOG_APPLIED,
        "PostgreSQL: highest change-log sequence number applied to this replica's cache"
    );
    describe_gauge!(
        CHANGELOG_LAG,
        "PostgreSQL: seconds since the change-log follower last found nothing left to apply"
    );
    describe_counter!(
        CHANGELOG_DELIVERIES,
        "PostgreSQL: changes applied, by the path that brought them first (notify, poll)"
    );
    describe_counter!(
        CHANGELOG_RECONNECTS,
        "PostgreSQL: times the LISTEN connection was re-established"
    );
    describe_gauge!(LAST_USED_PENDING, "Last-used times waiting to be written");
    describe_histogram!(
        LAST_USED_FLUSH_DURATION,
        Unit::Seconds,
        "Time per last-used flush"
    );
    describe_counter!(
        LAST_USED_FLUSH_FAILURES,
        "Last-used batches whose write failed (kept and retried)"
    );
    describe_gauge!(
        TASK_RUNNING,
        "1 while the supervised background task is running, 0 while it waits to restart"
    );
    describe_counter!(
        TASK_RESTARTS,
        "Restarts of a supervised background task after a failure"
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads after a change on disk, by result (ok, error)"
    );
    describe_counter!(
        GATEWAY_REQUESTS,
        "Gateway calls (ext_authz Check, HTTP forward-auth) answered, by gateway and result: a Validate reason (valid = allowed), missing_token, gateway_refused (the gateway's own credential or privilege), error"
    );
    describe_histogram!(
        GATEWAY_DURATION,
        Unit::Seconds,
        "Time to judge a gateway call's token (gateway credential check excluded), by gateway"
    );
    describe_counter!(
        SWEEP_NOTICES,
        "Expiry notice events this replica's sweeper recorded, by kind (expiring_soon, expired)"
    );
    describe_counter!(
        SWEEP_AUTO_DISABLED,
        "Tokens this replica's sweeper disabled for being unused longer than their account's disable_unused_after"
    );
    describe_histogram!(
        SWEEP_DURATION,
        Unit::Seconds,
        "Time per sweeper pass (including waits for another replica's batch)"
    );
    describe_counter!(
        NAME_INDEX_FOLDED,
        "SQLite: renamed tokens folded from the name index's pending list into its FTS5 index"
    );
    describe_histogram!(
        NAME_INDEX_FOLD_DURATION,
        Unit::Seconds,
        "SQLite: time per fold transaction of the name index's pending list that folded something (writes wait behind it)"
    );
}

/// Per-server values read at scrape time (cache sizes, pending writes, ...).
pub type Source = Box<dyn Fn() + Send + Sync>;

/// What one server's `/metrics` renders.
pub struct Scrape {
    handle: PrometheusHandle,
    sources: Vec<Source>,
    process: metrics_process::Collector,
}

impl Scrape {
    pub fn new(handle: PrometheusHandle, sources: Vec<Source>) -> Arc<Self> {
        let process = metrics_process::Collector::default();
        process.describe();
        Arc::new(Self {
            handle,
            sources,
            process,
        })
    }

    /// Publishes the atomics and sources into the recorder and renders it.
    pub fn render(&self) -> String {
        publish();
        for source in &self.sources {
            source();
        }
        self.process.collect();
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; run every few seconds so
    /// an unscraped server does not accumulate samples.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn publish() {
    use metrics::{counter, gauge};
    use name::*;
    for (r, (_, reason)) in REASONS.iter().enumerate() {
        for (m, cache) in ["hit", "miss"].iter().enumerate() {
            counter!(VALIDATE_REQUESTS, "reason" => *reason, "cache" => *cache)
                .absolute(VALIDATE.sum(r * 2 + m));
        }
    }
    let methods = METHODS.iter().copied().chain([("other", "other")]);
    for (m, (service, method)) in methods.enumerate() {
        for (c, code) in CODES.iter().enumerate() {
            let n = GRPC.sum(m * CODES.len() + c);
            // Only codes that occurred, plus OK, so the page stays readable.
            if n > 0 || c == 0 {
                counter!(GRPC_REQUESTS, "service" => service, "method" => method, "code" => *code)
                    .absolute(n);
            }
        }
    }
    for (g, gateway) in GATEWAYS.iter().enumerate() {
        let results = REASONS.iter().map(|(_, r)| *r).chain(GATEWAY_RESULTS);
        for (r, result) in results.enumerate() {
            let n = GATEWAY.sum(g * GATEWAY_ROWS + r);
            // Only results that occurred, plus valid, so the page stays readable.
            if n > 0 || r == 0 {
                counter!(GATEWAY_REQUESTS, "gateway" => *gateway, "result" => result).absolute(n);
            }
        }
    }
    counter!(CACHE_HITS).absolute(CACHE.sum(0));
    counter!(CACHE_MISSES).absolute(CACHE.sum(1));
    let c = &COUNTERS;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter!(CACHE_EVICTIONS).absolute(load(&c.cache_evictions));
    counter!(ARGON2_HASHES).absolute(load(&c.argon2_hashes));
    counter!(ARGON2_REFUSALS).absolute(load(&c.argon2_refusals));
    gauge!(ARGON2_QUEUE_DEPTH).set(c.argon2_queue.load(Ordering::Relaxed).max(0) as f64);
    for (i, kind) in STORE_ERROR_KINDS.iter().enumerate() {
        counter!(STORE_ERRORS, "kind" => *kind).absolute(load(&c.store_errors[i]));
    }
    for (i, via) in ["notify", "poll"].iter().enumerate() {
        counter!(CHANGELOG_DELIVERIES, "via" => *via).absolute(load(&c.deliveries[i]));
    }
    counter!(CHANGELOG_RECONNECTS).absolute(load(&c.reconnects));
    counter!(LAST_USED_FLUSH_FAILURES).absolute(load(&c.flush_failures));
    for (i, result) in ["ok", "error"].iter().enumerate() {
        counter!(TLS_RELOADS, "result" => *result).absolute(load(&c.tls_reloads[i]));
    }
    for (i, kind) in ["expiring_soon", "expired"].iter().enumerate() {
        counter!(SWEEP_NOTICES, "kind" => *kind).absolute(load(&c.sweep_notices[i]));
    }
    counter!(SWEEP_AUTO_DISABLED).absolute(load(&c.sweep_auto_disabled));
    counter!(NAME_INDEX_FOLDED).absolute(load(&c.name_index_folded));
    let caught_up = load(&c.changelog_caught_up_us);
    if caught_up > 0 {
        gauge!(CHANGELOG_SEEN).set(c.changelog_seen.load(Ordering::Relaxed) as f64);
        gauge!(CHANGELOG_APPLIED).set(c.changelog_applied.load(Ordering::Relaxed) as f64);
        let now = epoch().elapsed();
        let lag = now.saturating_sub(Duration::from_micros(caught_up));
        gauge!(CHANGELOG_LAG).set(lag.as_secs_f64());
    }
}

/// Gauges and counters of one server's own parts, read at scrape time.
pub fn cache_entries(entries: usize, failed: usize, unknown: usize, failures: usize) {
    use metrics::gauge;
    gauge!(name::CACHE_ENTRIES).set(entries as f64);
    gauge!(name::NEGATIVE_CACHE_ENTRIES, "kind" => "failed_value").set(failed as f64);
    gauge!(name::NEGATIVE_CACHE_ENTRIES, "kind" => "unknown_id").set(unknown as f64);
    gauge!(name::NEGATIVE_CACHE_ENTRIES, "kind" => "failure_window").set(failures as f64);
}

pub fn argon2_verifications(n: u64) {
    metrics::counter!(name::ARGON2_VERIFICATIONS).absolute(n);
}

pub fn store_statements(n: u64) {
    metrics::counter!(name::STORE_STATEMENTS).absolute(n);
}

pub fn last_used_pending(n: usize) {
    metrics::gauge!(name::LAST_USED_PENDING).set(n as f64);
}

/// Counts evictions from a quick_cache (the Validate cache's positive entries).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountEvictions;

impl<K, V> quick_cache::Lifecycle<K, V> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut Self::RequestState, _key: K, _val: V) {
        cache_eviction();
    }
}
