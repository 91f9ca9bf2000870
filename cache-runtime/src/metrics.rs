//! The cache's counters through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`), so that whichever exporter the application installs —
//! Prometheus, OpenTelemetry, StatsD — publishes them.
//!
//! Every counter of [`Stats`](crate::Stats) is emitted the moment it changes, labelled
//! with the function (the policy's [`function`](crate::Policy::function) name:
//! `prefix:name` for `#[cached]` functions, `http:<name>` for the HTTP layer of
//! the `tower` feature, `session` for the session store of the `sessions` feature).
//! Calls whose policy names no function are labelled `function="unnamed"`.
//!
//! | metric | kind | labels | counts |
//! | --- | --- | --- | --- |
//! | `aside_cache_hits_total` | counter | `function` | calls answered from the cache |
//! | `aside_cache_misses_total` | counter | `function` | calls that found no usable entry |
//! | `aside_cache_stale_hits_total` | counter | `function` | calls answered with a stale value |
//! | `aside_cache_computations_total` | counter | `function` | computations run |
//! | `aside_cache_computation_seconds` | histogram | `function` | time of each computation |
//! | `aside_cache_lock_waits_total` | counter | `function` | calls that waited for another's computation |
//! | `aside_cache_lock_timeouts_total` | counter | `function` | waits that ran out (`wait`) |
//! | `aside_cache_revoked_total` | counter | `function` | results refused by an invalidation |
//! | `aside_cache_decode_errors_total` | counter | `function` | entries that did not decode |
//! | `aside_cache_backend_errors_total` | counter | `function` | backend failures (the call computed) |
//! | `aside_cache_oversized_total` | counter | `function` | values too large to store |
//! | `aside_cache_invalidations_total` | counter | | entries removed by invalidations |
//! | `aside_cache_breaker_state` | gauge | | 0 closed, 1 open, 2 half-open ([`sample`]) |
//! | `aside_cache_breaker_opened_total` | counter | | times the breaker opened ([`sample`]) |
//! | `aside_cache_breaker_skips_total` | counter | | operations skipped while open ([`sample`]) |
//!
//! The breaker's values are states, not events: [`sample`] records them — call it
//! before rendering a scrape, or on a timer. The counters of every [`Cache`] of
//! the process add up under the same names.
//!
//! ```
//! # async fn demo() -> cache_runtime::Result<()> {
//! use cache_runtime::{Cache, Plain, Policy};
//!
//! // With a recorder installed (for example metrics-exporter-prometheus's
//! // `PrometheusBuilder::new().install_recorder()`), this hit and this miss show up as
//! // aside_cache_misses_total{function="demo:answer"} 1 and
//! // aside_cache_hits_total{function="demo:answer"} 1.
//! let cache = Cache::builder().memory().build().await?;
//! let policy = Policy::default().function("demo:answer");
//! for _ in 0..2 {
//!     let Plain(_) = cache.get_or_compute("answer", &policy, || async { Plain(42) }).await;
//! }
//! cache_runtime::metrics::sample(&cache); // the breaker's state, before a scrape
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::sync::{Arc, Once};
use std::time::Duration;

use ::metrics::{SharedString, Unit};

use crate::breaker::BreakerState;
use crate::cache::Cache;
use crate::stats::Event;

/// The label naming the function of a call.
pub const FUNCTION_LABEL: &str = "function";
/// The `function` label of calls whose policy names no function.
pub const UNNAMED: &str = "unnamed";

/// Calls answered from the cache.
pub const HITS: &str = "aside_cache_hits_total";
/// Calls that found no usable entry.
pub const MISSES: &str = "aside_cache_misses_total";
/// Calls answered with a stale value.
pub const STALE_HITS: &str = "aside_cache_stale_hits_total";
/// Computations run.
pub const COMPUTATIONS: &str = "aside_cache_computations_total";
/// The time of each computation, in seconds.
pub const COMPUTATION_SECONDS: &str = "aside_cache_computation_seconds";
/// Calls that waited for another caller's computation.
pub const LOCK_WAITS: &str = "aside_cache_lock_waits_total";
/// Waits that ran out.
pub const LOCK_TIMEOUTS: &str = "aside_cache_lock_timeouts_total";
/// Results not stored because an invalidation revoked their lease.
pub const REVOKED: &str = "aside_cache_revoked_total";
/// Entries that did not decode.
pub const DECODE_ERRORS: &str = "aside_cache_decode_errors_total";
/// Backend failures and timeouts.
pub const BACKEND_ERRORS: &str = "aside_cache_backend_errors_total";
/// Values not stored because of the size limit.
pub const OVERSIZED: &str = "aside_cache_oversized_total";
/// Entries removed by invalidations.
pub const INVALIDATIONS: &str = "aside_cache_invalidations_total";
/// The circuit breaker's state: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "aside_cache_breaker_state";
/// How many times the circuit breaker opened.
pub const BREAKER_OPENED: &str = "aside_cache_breaker_opened_total";
/// Redis operations skipped while the breaker was open.
pub const BREAKER_SKIPS: &str = "aside_cache_breaker_skips_total";

/// Registers the description and unit of every metric with the installed
/// recorder (the `# HELP` lines of a Prometheus scrape).
///
/// Done on the first event and by every [`sample`]; call it yourself after
/// installing a recorder late.
///
/// ```
/// cache_runtime::metrics::describe(); // a no-op without a recorder
/// ```
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HITS, "Calls answered from the cache.");
    describe_counter!(MISSES, "Calls that found no usable entry (they computed or waited).");
    describe_counter!(STALE_HITS, "Calls answered with a stale value while it was refreshed.");
    describe_counter!(COMPUTATIONS, "Computations run (misses, refreshes, fallbacks).");
    describe_histogram!(COMPUTATION_SECONDS, Unit::Seconds, "Time of each computation.");
    describe_counter!(LOCK_WAITS, "Calls that waited for another caller's computation.");
    describe_counter!(
        LOCK_TIMEOUTS,
        "Waits that ran out; the caller computed without storing."
    );
    describe_counter!(
        REVOKED,
        "Computed values not stored because an invalidation revoked them."
    );
    describe_counter!(
        DECODE_ERRORS,
        "Entries that did not decode (corrupt, other format or type)."
    );
    describe_counter!(
        BACKEND_ERRORS,
        "Backend failures and timeouts; the call computed without the cache."
    );
    describe_counter!(OVERSIZED, "Values not stored because they exceeded the size limit.");
    describe_counter!(
        INVALIDATIONS,
        "Entries removed by invalidations (key, tag and pattern)."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker in front of Redis: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(BREAKER_OPENED, "Times the circuit breaker opened.");
    describe_counter!(
        BREAKER_SKIPS,
        "Redis operations skipped while the circuit breaker was open."
    );
}

/// Records the values of `cache` that are states rather than events: the circuit
/// breaker's state, how often it opened and how many operations it skipped.
/// Call it before rendering a scrape, or on a timer.
///
/// ```
/// # async fn demo() -> cache_runtime::Result<()> {
/// let cache = cache_runtime::Cache::builder().memory().build().await?;
/// cache_runtime::metrics::sample(&cache);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
pub fn sample(cache: &Cache) {
    describe();
    let stats = cache.stats();
    let state = match stats.breaker {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    };
    ::metrics::gauge!(BREAKER_STATE).set(state);
    ::metrics::counter!(BREAKER_OPENED).absolute(stats.breaker_opened);
    ::metrics::counter!(BREAKER_SKIPS).absolute(stats.breaker_skips);
}

/// Emits one counted event of a call of `function`.
pub(crate) fn event(function: Option<&Arc<str>>, event: Event) {
    let name = match event {
        Event::Hit => HITS,
        Event::Miss => MISSES,
        Event::StaleHit => STALE_HITS,
        Event::Computation => COMPUTATIONS,
        Event::LockWait => LOCK_WAITS,
        Event::LockTimeout => LOCK_TIMEOUTS,
        Event::Revoked => REVOKED,
        Event::DecodeError => DECODE_ERRORS,
        Event::BackendError => BACKEND_ERRORS,
        Event::Oversized => OVERSIZED,
        // Counted by the entries it removed, in `invalidated`.
        Event::Invalidation => return,
    };
    describe_once();
    ::metrics::counter!(name, FUNCTION_LABEL => label(function)).increment(1);
}

/// Emits the time of one computation of `function`.
pub(crate) fn computed(function: Option<&Arc<str>>, took: Duration) {
    ::metrics::histogram!(COMPUTATION_SECONDS, FUNCTION_LABEL => label(function)).record(took.as_secs_f64());
}

/// Emits `removed` entries removed by an invalidation.
pub(crate) fn invalidated(removed: u64) {
    describe_once();
    ::metrics::counter!(INVALIDATIONS).increment(removed);
}

fn label(function: Option<&Arc<str>>) -> SharedString {
    function.map_or(SharedString::const_str(UNNAMED), |name| {
        SharedString::from(Arc::clone(name))
    })
}

fn describe_once() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(describe);
}
