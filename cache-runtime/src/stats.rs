//! Counters: what the cache did, in total and per function.
//!
//! Each counter is named once, in [`counter_table!`]; the [`Counters`] fields, the
//! atomic cells, the [`Event`]s and (in the exporter) the metric names and their
//! descriptions are generated from it. Besides its own cells, a [`Recorder`] feeds
//! a [`Sink`] that someone else implements — the `metrics` exporter — so this file
//! knows nothing of who listens.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::breaker::{BreakerState, NodeBreaker};

/// The counters, each named once: its [`Counters`] field, its [`Event`], its
/// metric (the constant of `aside::metrics` and the name exported) and its help
/// text, which documents the field and describes the metric. `///` lines before a
/// row add notes to the field only.
///
/// `counter_table!(callback)` hands the table to `callback!`, which generates what
/// it needs: this file the fields, cells and events (`counters!`), the `metrics`
/// exporter its constants, descriptions and doc table. The sections:
///
/// - `calls`: one event of one call, counted in the total and for the call's
///   function, exported labelled with the function;
/// - `entries`: entries removed by invalidations, counted in the total by how many
///   went ([`Recorder::invalidated`]) and for a function by its key invalidations,
///   exported as an unlabelled total;
/// - `time`: the time of computations, summed in nanoseconds, exported as a
///   histogram in seconds.
macro_rules! counter_table {
    ($callback:ident) => {
        $callback! {
            calls {
                hits: Hit => HITS = "aside_cache_hits_total",
                    "Calls answered from the cache.";
                /// Also counted in `hits`; only with `CACHE_BACKEND=tiered`.
                l1_hits: L1Hit => L1_HITS = "aside_cache_l1_hits_total",
                    "Hits answered from the tiered store's in-process copy, without a round trip.";
                /// They computed, or waited for another caller's computation (see `lock_waits`).
                misses: Miss => MISSES = "aside_cache_misses_total",
                    "Calls that found no usable entry.";
                stale_hits: StaleHit => STALE_HITS = "aside_cache_stale_hits_total",
                    "Calls answered with a stale value while it was refreshed.";
                computations: Computation => COMPUTATIONS = "aside_cache_computations_total",
                    "Computations run (misses, refreshes, fallbacks).";
                lock_waits: LockWait => LOCK_WAITS = "aside_cache_lock_waits_total",
                    "Calls that waited for another caller's computation.";
                lock_timeouts: LockTimeout => LOCK_TIMEOUTS = "aside_cache_lock_timeouts_total",
                    "Waits that ran out (`wait`); the caller computed without storing.";
                revoked: Revoked => REVOKED = "aside_cache_revoked_total",
                    "Computed values not stored because an invalidation revoked their lease.";
                decode_errors: DecodeError => DECODE_ERRORS = "aside_cache_decode_errors_total",
                    "Entries that did not decode (corrupt, other format, other type).";
                /// Only with `CACHE_SIGNING_KEY` or `CACHE_ENCRYPTION_KEY`; such an entry is not also a decode error.
                unverified: Unverified => UNVERIFIED = "aside_cache_unverified_total",
                    "Entries refused because their signature or seal did not verify (forged, tampered with, copied from another key, or written without this cache's keys).";
                backend_errors: BackendError => BACKEND_ERRORS = "aside_cache_backend_errors_total",
                    "Backend failures and timeouts; the call computed without the cache.";
                oversized: Oversized => OVERSIZED = "aside_cache_oversized_total",
                    "Values not stored because they exceeded the size limit.";
            }
            entries {
                /// Per function, only key invalidations (`<fn>_invalidate`) are attributed; tag and
                /// pattern invalidations count in the total.
                invalidations: Invalidation => INVALIDATIONS = "aside_cache_invalidations_total",
                    "Entries removed by invalidations (key, tag and pattern).";
            }
            time {
                /// In nanoseconds; see [`Counters::mean_computation`]. The metric is a histogram of
                /// each computation, in seconds.
                computation_nanos => COMPUTATION_SECONDS = "aside_cache_computation_seconds",
                    "Time spent in computations.";
            }
        }
    };
}
// Without the `metrics` feature this file is the table's only reader.
#[cfg_attr(not(feature = "metrics"), allow(unused_imports))]
pub(crate) use counter_table;

/// Generates [`Counters`], `Cells` and [`Event`] from [`counter_table!`].
macro_rules! counters {
    (
        calls { $( $(#[doc = $call_note:literal])* $call:ident: $call_event:ident => $call_const:ident = $call_metric:literal, $call_help:literal; )* }
        entries { $( $(#[doc = $entry_note:literal])* $entry:ident: $entry_event:ident => $entry_const:ident = $entry_metric:literal, $entry_help:literal; )* }
        time { $( $(#[doc = $time_note:literal])* $time:ident => $time_const:ident = $time_metric:literal, $time_help:literal; )* }
    ) => {
        /// A snapshot of counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Counters {
            $( #[doc = $call_help] $(#[doc = ""] #[doc = $call_note])* pub $call: u64, )*
            $( #[doc = $entry_help] $(#[doc = ""] #[doc = $entry_note])* pub $entry: u64, )*
            $( #[doc = $time_help] $(#[doc = ""] #[doc = $time_note])* pub $time: u64, )*
        }

        /// One thread's share of the live counters of the total or of one function.
        #[derive(Default)]
        #[repr(align(128))]
        struct Shard {
            $( $call: AtomicU64, )*
            $( $entry: AtomicU64, )*
            $( $time: AtomicU64, )*
        }

        /// The live counters of the total or of one function, in [`SHARDS`]
        /// shards: each thread adds to its own (see [`shard`]), so the workers
        /// of a busy runtime do not pass the same line of memory back and
        /// forth on every call; a snapshot adds the shards up.
        struct Cells {
            /// The function (`None` for the total), as the [`Sink`] hears of it.
            name: Option<Function>,
            shards: [Shard; SHARDS],
        }

        impl Cells {
            fn snapshot(&self) -> Counters {
                // Wrapping, as the atomics themselves add: a sum never panics.
                let mut sum = Counters::default();
                for shard in &self.shards {
                    $( sum.$call = sum.$call.wrapping_add(shard.$call.load(Relaxed)); )*
                    $( sum.$entry = sum.$entry.wrapping_add(shard.$entry.load(Relaxed)); )*
                    $( sum.$time = sum.$time.wrapping_add(shard.$time.load(Relaxed)); )*
                }
                sum
            }

            /// The cell of `event` in this thread's shard.
            fn cell(&self, event: Event) -> &AtomicU64 {
                let shard = self.shard();
                match event {
                    $( Event::$call_event => &shard.$call, )*
                    $( Event::$entry_event => &shard.$entry, )*
                }
            }
        }

        /// What can be counted.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Event {
            $( #[doc = $call_help] $call_event, )*
            $( #[doc = $entry_help] #[doc = ""]
               #[doc = "Counted per function only: the total comes from [`Recorder::invalidated`]."]
               $entry_event, )*
        }

        #[cfg(test)]
        impl Counters {
            /// Every field by name, in declaration order.
            fn named(&self) -> Vec<(&'static str, u64)> {
                vec![
                    $( (stringify!($call), self.$call), )*
                    $( (stringify!($entry), self.$entry), )*
                    $( (stringify!($time), self.$time), )*
                ]
            }
        }

        impl Event {
            /// Every event, in declaration order.
            pub(crate) const ALL: &[Event] = &[$( Event::$call_event, )* $( Event::$entry_event, )*];

            /// Whether the event is one of a call (counted in the total as it
            /// happens), not entries removed (counted by how many went).
            pub(crate) fn of_call(self) -> bool {
                matches!(self, $( Event::$call_event )|*)
            }
        }
    };
}

counter_table!(counters);

/// How many shards each [`Cells`] has: more than the cores of most hosts that
/// serve hits, so that a runtime's workers rarely share one.
const SHARDS: usize = 8;

/// This thread's shard: threads take them in turn, on their first count.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    // Counting while the thread's locals are torn down: any shard will do.
    SHARD.try_with(|shard| *shard).unwrap_or(0)
}

impl Cells {
    fn new(name: Option<Function>) -> Cells {
        Cells {
            name,
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[shard()]
    }
}

impl fmt::Debug for Cells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cells")
            .field("name", &self.name)
            .field("counters", &self.snapshot())
            .finish()
    }
}

// One bit per event in `Probe::seen`.
const _: () = assert!(Event::ALL.len() <= u16::BITS as usize);

impl Counters {
    /// The time spent in computations, in total.
    pub fn computation_time(&self) -> Duration {
        Duration::from_nanos(self.computation_nanos)
    }

    /// The mean time of one computation; `None` before the first.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// use aside::{Cache, Plain, Policy};
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

/// What a cache holds in this process's memory: see [`Stats::in_process`].
///
/// ```
/// # async fn demo() -> aside::Result<()> {
/// use aside::{Cache, MemoryCapacity, Plain, Policy};
///
/// let cache = Cache::builder().memory().memory_capacity(MemoryCapacity::Entries(100)).build().await?;
/// let Plain(_) = cache.get_or_compute("total", &Policy::default(), || async { Plain(42) }).await;
/// let held = cache.stats().in_process;
/// assert_eq!((held.entries, held.weight), (1, 1)); // a capacity in entries weighs each as 1
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InProcessSize {
    /// Entries held.
    pub entries: u64,
    /// Their weight as `CACHE_MEMORY_CAPACITY` counts it: the entries, for a
    /// capacity in entries; bytes of keys and encoded values, for one in bytes.
    pub weight: u64,
}

/// A snapshot of every counter of a [`Cache`](crate::Cache).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// All calls together.
    pub total: Counters,
    /// Per function (the policy's [`function`](crate::Policy::function) name).
    pub functions: BTreeMap<String, Counters>,
    /// Whether calls reach Redis (always `Closed` for the memory and off
    /// backends). On a cluster, which has a breaker per master, the worst of
    /// them: `Open` while any master's is open, else `HalfOpen` while one
    /// probes, else `Closed`.
    pub breaker: BreakerState,
    /// How many times the circuit breaker opened (on a cluster, any master's).
    pub breaker_opened: u64,
    /// Redis operations skipped while the breaker was open (each also counts as
    /// a backend error of its call); on a cluster, by every master's.
    pub breaker_skips: u64,
    /// On a cluster, each master's breaker by its address (`host:port`, as
    /// `CLUSTER SLOTS` names it); empty for a single node, a sentinel-managed
    /// master and the memory and off backends. The totals above also count
    /// the cluster's shared breaker, of requests no master is known for (before
    /// the slot map is read).
    pub breakers: BTreeMap<String, NodeBreaker>,
    /// What this process holds in memory, once pending evictions ran: the
    /// memory store's entries, or a tiered store's copies (none for Redis
    /// without a tier, and off). Its weight stays within `CACHE_MEMORY_CAPACITY`.
    pub in_process: InProcessSize,
}

impl Stats {
    /// The counters of one function, zero if it never ran.
    pub fn function(&self, name: &str) -> Counters {
        self.functions.get(name).copied().unwrap_or_default()
    }
}

/// A function whose calls are counted, as a [`Sink`] hears of it: its name,
/// and what the sink keeps for it (an exporter's metric keys, built once
/// rather than on every hit).
pub(crate) struct Function {
    name: Arc<str>,
    kept: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Function {
    fn new(name: &str) -> Function {
        Function {
            name: Arc::from(name),
            kept: OnceLock::new(),
        }
    }

    /// The policy's function name.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What the sink keeps for this function, made by `make` on first use.
    /// One sink serves a process, so one type is kept; `None` for another.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn kept<T: Any + Send + Sync>(&self, make: impl FnOnce(&str) -> T) -> Option<&T> {
        self.kept.get_or_init(|| Box::new(make(&self.name))).downcast_ref()
    }
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Function").field(&self.name).finish()
    }
}

/// Who else hears of what a [`Recorder`] counts, as it is counted: the interface
/// this module owns and an exporter (the `metrics` feature's) implements.
///
/// `function` is the policy's function, `None` for calls that name none.
pub(crate) trait Sink: Send + Sync {
    /// One event of a call ([`Event::of_call`]) or one key invalidation of `function`.
    fn event(&self, function: Option<&Function>, event: Event);
    /// One computation of `function` took `took`.
    fn computed(&self, function: Option<&Function>, took: Duration);
    /// An invalidation removed `removed` entries.
    fn invalidated(&self, removed: u64);
}

/// The live counters of one cache.
pub(crate) struct Recorder {
    /// Tells this recorder from every other of the process, for [`FunctionSite`]s.
    id: u64,
    total: Cells,
    functions: RwLock<HashMap<String, Arc<Cells>>>,
    sink: Option<&'static dyn Sink>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("total", &self.total)
            .field("functions", &self.functions)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl Recorder {
    /// Counters that also tell `sink`, if any, what they count.
    pub(crate) fn new(sink: Option<&'static dyn Sink>) -> Self {
        /// The id of the next recorder.
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Recorder {
            id: NEXT_ID.fetch_add(1, Relaxed),
            total: Cells::new(None),
            functions: RwLock::default(),
            sink,
        }
    }

    /// Counters for one call of `function` (or of no function).
    pub(crate) fn probe(&self, function: Option<&str>) -> Probe<'_> {
        self.probe_with(function.map(|name| FunctionCells::Table(self.cells(name))))
    }

    /// Counters for one call of `policy`'s function, found through its
    /// [`FunctionSite`] when it has one.
    pub(crate) fn probe_for(&self, policy: &crate::Policy) -> Probe<'_> {
        self.probe_with(policy.function_name().map(|name| match policy.site() {
            Some(site) => self.cells_at(name, site),
            None => FunctionCells::Table(self.cells(name)),
        }))
    }

    /// A probe counting in the total and in `function`'s cells, if any.
    fn probe_with<'a>(&'a self, function: Option<FunctionCells<'a>>) -> Probe<'a> {
        Probe {
            total: &self.total,
            function,
            sink: self.sink,
            seen: AtomicU16::new(0),
        }
    }

    /// The cells of `name` through `site`: those it remembers if they are this
    /// recorder's and `name`'s, else (another cache counts at that site) the table's.
    fn cells_at(&self, name: &str, site: &'static FunctionSite) -> FunctionCells<'static> {
        let (id, cells) = site.memo.get_or_init(|| (self.id, self.cells(name)));
        let named = cells.name.as_ref().is_some_and(|function| *function.name == *name);
        if *id == self.id && named {
            FunctionCells::Site(cells)
        } else {
            FunctionCells::Table(self.cells(name))
        }
    }

    fn cells(&self, name: &str) -> Arc<Cells> {
        if let Some(cells) = self.functions.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Arc::clone(cells);
        }
        let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            functions
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Cells::new(Some(Function::new(name))))),
        )
    }

    /// Adds `removed` invalidated entries.
    pub(crate) fn invalidated(&self, removed: u64) {
        self.total.shard().invalidations.fetch_add(removed, Relaxed);
        if let Some(sink) = self.sink {
            sink.invalidated(removed);
        }
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

/// Where `#[cached]` counts one function: a static of each call site that
/// remembers the function's counters in the first cache it counted in. Calls
/// then find them without the cache's table — its lock, a hash of the name and
/// a reference count, each a write to memory every core shares. Calls at that
/// site in another cache use the table, as calls without a site do.
///
/// The remembered counters outlive their cache: one set per call site at most.
pub struct FunctionSite {
    memo: OnceLock<(u64, Arc<Cells>)>,
}

impl FunctionSite {
    /// A site that remembers nothing yet.
    pub const fn new() -> FunctionSite {
        FunctionSite { memo: OnceLock::new() }
    }
}

impl Default for FunctionSite {
    fn default() -> Self {
        FunctionSite::new()
    }
}

impl fmt::Debug for FunctionSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionSite").finish_non_exhaustive()
    }
}

/// A function's cells as a probe holds them: through its call site, or from the table.
enum FunctionCells<'a> {
    Site(&'a Cells),
    Table(Arc<Cells>),
}

impl std::ops::Deref for FunctionCells<'_> {
    type Target = Cells;

    fn deref(&self) -> &Cells {
        match self {
            FunctionCells::Site(cells) => cells,
            FunctionCells::Table(cells) => cells,
        }
    }
}

/// The counters one call writes to: the total and its function's.
pub(crate) struct Probe<'a> {
    total: &'a Cells,
    function: Option<FunctionCells<'a>>,
    sink: Option<&'static dyn Sink>,
    /// The events recorded so far, one bit each: what the call's span reports.
    seen: AtomicU16,
}

impl Probe<'_> {
    pub(crate) fn record(&self, event: Event) {
        self.seen.fetch_or(1 << event as u16, Relaxed);
        if event.of_call() {
            self.total.cell(event).fetch_add(1, Relaxed);
        }
        if let Some(cells) = &self.function {
            cells.cell(event).fetch_add(1, Relaxed);
        }
        if let Some(sink) = self.sink {
            sink.event(self.function_name(), event);
        }
    }

    /// Records one computation that took `took`.
    pub(crate) fn computed(&self, took: Duration) {
        self.record(Event::Computation);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.total.shard().computation_nanos.fetch_add(nanos, Relaxed);
        if let Some(cells) = &self.function {
            cells.shard().computation_nanos.fetch_add(nanos, Relaxed);
        }
        if let Some(sink) = self.sink {
            sink.computed(self.function_name(), took);
        }
    }

    fn function_name(&self) -> Option<&Function> {
        self.function.as_ref().and_then(|cells| cells.name.as_ref())
    }

    /// The call's [`CacheStatus`](crate::CacheStatus), from the events recorded so far.
    pub(crate) fn status(&self) -> crate::CacheStatus {
        use crate::CacheStatus;
        let seen = self.seen.load(Relaxed);
        let has = |event: Event| seen & (1 << event as u16) != 0;
        if has(Event::Hit) {
            CacheStatus::Hit
        } else if has(Event::StaleHit) {
            CacheStatus::Stale
        } else if has(Event::BackendError) || has(Event::LockTimeout) {
            CacheStatus::Bypassed
        } else if has(Event::Computation) {
            CacheStatus::Miss
        } else {
            CacheStatus::Coalesced
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The fields of `counters` that are not zero.
    fn counted(counters: &Counters) -> Vec<(&'static str, u64)> {
        counters.named().into_iter().filter(|(_, n)| *n != 0).collect()
    }

    #[test]
    fn each_event_counts_in_its_own_field() {
        let mut fields = Vec::new();
        for &event in Event::ALL {
            let recorder = Recorder::new(None);
            recorder.probe(Some("demo:f")).record(event);
            let stats = recorder.snapshot();
            let function = counted(&stats.function("demo:f"));
            assert_eq!(function.len(), 1, "{event:?} counts in one field: {function:?}");
            assert_eq!(function[0].1, 1);
            let total = counted(&stats.total);
            assert_eq!(
                total,
                if event.of_call() { function.clone() } else { Vec::new() },
                "{event:?}"
            );
            fields.push(function[0].0);
        }
        fields.sort_unstable();
        fields.dedup();
        assert_eq!(fields.len(), Event::ALL.len(), "no two events share a field");
    }

    #[test]
    fn a_site_counts_in_the_cache_of_each_call() {
        static SITE: FunctionSite = FunctionSite::new();
        let policy = crate::Policy::default().function("demo:f").counted_at(&SITE);
        let (first, second) = (Recorder::new(None), Recorder::new(None));
        for _ in 0..2 {
            first.probe_for(&policy).record(Event::Hit);
        }
        second.probe_for(&policy).record(Event::Hit);
        first.probe(Some("demo:f")).record(Event::Miss);
        // Another function through the same site (never from the macro) counts as its own.
        let other = crate::Policy::default().function("demo:g").counted_at(&SITE);
        first.probe_for(&other).record(Event::Hit);
        let first = first.snapshot();
        assert_eq!((first.function("demo:f").hits, first.function("demo:f").misses), (2, 1));
        assert_eq!(first.function("demo:g").hits, 1);
        assert_eq!(first.total.hits, 3);
        assert_eq!(second.snapshot().function("demo:f").hits, 1);
        assert_eq!(second.snapshot().total.hits, 1);
    }

    #[test]
    fn counts_from_more_threads_than_shards_add_up_exactly() {
        static SITE: FunctionSite = FunctionSite::new();
        let recorder = Recorder::new(None);
        let policy = crate::Policy::default().function("demo:f").counted_at(&SITE);
        let threads = 3 * SHARDS;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        let probe = recorder.probe_for(&policy);
                        probe.record(Event::Hit);
                        probe.computed(Duration::from_nanos(2));
                    }
                    recorder.invalidated(1);
                });
            }
        });
        let stats = recorder.snapshot();
        let calls = 1_000 * threads as u64;
        for counters in [&stats.total, &stats.function("demo:f")] {
            assert_eq!(
                (counters.hits, counters.computations, counters.computation_nanos),
                (calls, calls, 2 * calls)
            );
        }
        assert_eq!(stats.total.invalidations, threads as u64);
    }

    #[test]
    fn shards_add_up_wrapping_as_one_counter_would() {
        let recorder = Recorder::new(None);
        // A duration past u64 nanoseconds counts as u64::MAX, from two threads
        // (two shards): the sum wraps as a single atomic's would, never panics.
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| recorder.probe(None).computed(Duration::MAX));
            }
        });
        assert_eq!(
            recorder.snapshot().total.computation_nanos,
            u64::MAX.wrapping_add(u64::MAX)
        );
    }

    #[test]
    fn invalidated_entries_count_in_the_total() {
        let recorder = Recorder::new(None);
        recorder.invalidated(3);
        assert_eq!(counted(&recorder.snapshot().total), [("invalidations", 3)]);
    }

    /// A sink remembering what it heard.
    #[derive(Default)]
    struct Heard(Mutex<Vec<String>>);

    impl Sink for Heard {
        fn event(&self, function: Option<&Function>, event: Event) {
            let mut heard = self.0.lock().unwrap();
            heard.push(format!("{event:?} {}", function.map_or("-", |f| &**f.name())));
        }

        fn computed(&self, function: Option<&Function>, _: Duration) {
            let mut heard = self.0.lock().unwrap();
            heard.push(format!("computed {}", function.map_or("-", |f| &**f.name())));
        }

        fn invalidated(&self, removed: u64) {
            self.0.lock().unwrap().push(format!("invalidated {removed}"));
        }
    }

    #[test]
    fn the_sink_hears_every_count_with_its_function() {
        let heard: &'static Heard = Box::leak(Box::default());
        let recorder = Recorder::new(Some(heard));
        recorder.probe(Some("demo:f")).record(Event::Hit);
        recorder.probe(None).computed(Duration::from_millis(1));
        recorder.invalidated(2);
        assert_eq!(
            *heard.0.lock().unwrap(),
            ["Hit demo:f", "Computation -", "computed -", "invalidated 2"]
        );
        assert_eq!(recorder.snapshot().total.computations, 1);
    }
}
