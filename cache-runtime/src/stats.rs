//! Counters: what the cache did, in total and per function.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::breaker::BreakerState;

/// A snapshot of counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that found no usable entry: they computed, or waited for another
    /// caller's computation (see `lock_waits`).
    pub misses: u64,
    /// Calls answered with a stale value while it was refreshed.
    pub stale_hits: u64,
    /// Computations run (misses, refreshes, fallbacks).
    pub computations: u64,
    /// Calls that waited for another caller's computation.
    pub lock_waits: u64,
    /// Waits that ran out (`wait`), after which the caller computed without storing.
    pub lock_timeouts: u64,
    /// Computed values not stored because an invalidation revoked their lease.
    pub revoked: u64,
    /// Entries that did not decode (corrupt, other format, other type).
    pub decode_errors: u64,
    /// Backend failures and timeouts (the call fell back to computing).
    pub backend_errors: u64,
    /// Entries removed by invalidation. Per function, only key invalidations
    /// (`<fn>_invalidate`) are attributed; tag and pattern invalidations count in
    /// the total.
    pub invalidations: u64,
    /// Values not stored because they exceeded the size limit.
    pub oversized: u64,
    /// Time spent in computations, in nanoseconds (see [`Counters::mean_computation`]).
    pub computation_nanos: u64,
}

impl Counters {
    /// The time spent in computations, in total.
    pub fn computation_time(&self) -> Duration {
        Duration::from_nanos(self.computation_nanos)
    }

    /// The mean time of one computation; `None` before the first.
    ///
    /// ```
    /// # async fn demo() -> cache_runtime::Result<()> {
    /// use std::time::Duration;
    /// use cache_runtime::{Cache, Plain, Policy};
    /// let cache = Cache::builder().memory().build().await?;
    /// let policy = Policy::default().function("demo:slow");
    /// let Plain(_) = cache.get_or_compute("slow", &policy, || async {
    ///     tokio::time::sleep(Duration::from_millis(20)).await;
    ///     Plain(1)
    /// }).await;
    /// let counters = cache.stats().function("demo:slow");
    /// assert!(counters.mean_computation().unwrap() >= Duration::from_millis(20));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn mean_computation(&self) -> Option<Duration> {
        (self.computations > 0).then(|| Duration::from_nanos(self.computation_nanos / self.computations))
    }
}

/// A snapshot of every counter of a [`Cache`](crate::Cache).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// All calls together.
    pub total: Counters,
    /// Per function (the policy's [`function`](crate::Policy::function) name).
    pub functions: BTreeMap<String, Counters>,
    /// Whether calls reach Redis (always `Closed` for the memory and off backends).
    pub breaker: BreakerState,
    /// How many times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Redis operations skipped while the breaker was open (each also counts as
    /// a backend error of its call).
    pub breaker_skips: u64,
}

impl Stats {
    /// The counters of one function, zero if it never ran.
    pub fn function(&self, name: &str) -> Counters {
        self.functions.get(name).copied().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Cells {
    /// The function's name (`None` for the total), the label of its metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    name: Option<Arc<str>>,
    hits: AtomicU64,
    misses: AtomicU64,
    stale_hits: AtomicU64,
    computations: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
    revoked: AtomicU64,
    decode_errors: AtomicU64,
    backend_errors: AtomicU64,
    invalidations: AtomicU64,
    oversized: AtomicU64,
    computation_nanos: AtomicU64,
}

impl Cells {
    fn snapshot(&self) -> Counters {
        Counters {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale_hits: self.stale_hits.load(Relaxed),
            computations: self.computations.load(Relaxed),
            lock_waits: self.lock_waits.load(Relaxed),
            lock_timeouts: self.lock_timeouts.load(Relaxed),
            revoked: self.revoked.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            backend_errors: self.backend_errors.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            computation_nanos: self.computation_nanos.load(Relaxed),
        }
    }
}

/// What can be counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Hit,
    Miss,
    StaleHit,
    Computation,
    LockWait,
    LockTimeout,
    Revoked,
    /// Counted per function only: the total comes from [`Recorder::invalidated`].
    Invalidation,
    DecodeError,
    BackendError,
    Oversized,
}

/// The live counters of one cache.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    total: Cells,
    functions: RwLock<HashMap<String, Arc<Cells>>>,
}

impl Recorder {
    /// Counters for one call of `function` (or of no function).
    pub(crate) fn probe(&self, function: Option<&str>) -> Probe<'_> {
        Probe {
            total: &self.total,
            function: function.map(|name| self.cells(name)),
            seen: AtomicU16::new(0),
        }
    }

    fn cells(&self, name: &str) -> Arc<Cells> {
        if let Some(cells) = self.functions.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Arc::clone(cells);
        }
        let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(functions.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Cells {
                name: Some(Arc::from(name)),
                ..Cells::default()
            })
        }))
    }

    /// Adds `removed` invalidated entries.
    pub(crate) fn invalidated(&self, removed: u64) {
        self.total.invalidations.fetch_add(removed, Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::invalidated(removed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        Stats {
            total: self.total.snapshot(),
            functions: functions
                .iter()
                .map(|(name, cells)| (name.clone(), cells.snapshot()))
                .collect(),
            ..Stats::default()
        }
    }
}

/// The counters one call writes to: the total and its function's.
pub(crate) struct Probe<'a> {
    total: &'a Cells,
    function: Option<Arc<Cells>>,
    /// The events recorded so far, one bit each: what the call's span reports.
    seen: AtomicU16,
}

impl Probe<'_> {
    pub(crate) fn record(&self, event: Event) {
        self.seen.fetch_or(1 << event as u16, Relaxed);
        if !matches!(event, Event::Invalidation) {
            bump(self.total, event);
        }
        if let Some(cells) = &self.function {
            bump(cells, event);
        }
        #[cfg(feature = "metrics")]
        crate::metrics::event(self.function.as_ref().and_then(|cells| cells.name.as_ref()), event);
    }

    /// Records one computation that took `took`.
    pub(crate) fn computed(&self, took: Duration) {
        self.record(Event::Computation);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.total.computation_nanos.fetch_add(nanos, Relaxed);
        if let Some(cells) = &self.function {
            cells.computation_nanos.fetch_add(nanos, Relaxed);
        }
        #[cfg(feature = "metrics")]
        crate::metrics::computed(self.function.as_ref().and_then(|cells| cells.name.as_ref()), took);
    }

    /// How the call went, from the events recorded so far: `hit`, `stale`,
    /// `fallback` (the backend failed; computed without it), `wait_timeout`,
    /// `computed`, or `shared` (another caller's computation answered it).
    pub(crate) fn outcome(&self) -> &'static str {
        let seen = self.seen.load(Relaxed);
        let has = |event: Event| seen & (1 << event as u16) != 0;
        if has(Event::Hit) {
            "hit"
        } else if has(Event::StaleHit) {
            "stale"
        } else if has(Event::BackendError) {
            "fallback"
        } else if has(Event::LockTimeout) {
            "wait_timeout"
        } else if has(Event::Computation) {
            "computed"
        } else {
            "shared"
        }
    }
}

fn bump(cells: &Cells, event: Event) {
    let counter = match event {
        Event::Hit => &cells.hits,
        Event::Miss => &cells.misses,
        Event::StaleHit => &cells.stale_hits,
        Event::Computation => &cells.computations,
        Event::LockWait => &cells.lock_waits,
        Event::LockTimeout => &cells.lock_timeouts,
        Event::Revoked => &cells.revoked,
        Event::Invalidation => &cells.invalidations,
        Event::DecodeError => &cells.decode_errors,
        Event::BackendError => &cells.backend_errors,
        Event::Oversized => &cells.oversized,
    };
    counter.fetch_add(1, Relaxed);
}
