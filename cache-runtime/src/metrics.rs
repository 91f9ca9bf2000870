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
#![doc = crate::stats::counter_table!(doc_table)]
//! | `aside_cache_breaker_state` | gauge | | 0 closed, 1 open, 2 half-open ([`sample`]) |
//! | `aside_cache_breaker_opened_total` | counter | | times the breaker opened ([`sample`]) |
//! | `aside_cache_breaker_skips_total` | counter | | operations skipped while open ([`sample`]) |
//!
//! The breaker's values are states, not events: [`sample`] records them — call it
//! before rendering a scrape, or on a timer. The counters of every [`Cache`] of
//! the process add up under the same names.
//!
//! ```
//! # async fn demo() -> aside::Result<()> {
//! use aside::{Cache, Plain, Policy};
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
//! aside::metrics::sample(&cache); // the breaker's state, before a scrape
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::sync::{Arc, LazyLock, Once};
use std::time::Duration;

use ::metrics::{Key, Label, Level, Metadata, SharedString, Unit};

use crate::breaker::BreakerState;
use crate::cache::Cache;
use crate::stats::{counter_table, Event, Function, Sink};

/// The head and rows of the table of metrics in this module's docs, from
/// [`counter_table!`]; the breaker's rows follow by hand.
macro_rules! doc_table {
    (
        calls { $( $(#[doc = $call_note:literal])* $call:ident: $call_event:ident => $call_const:ident = $call_metric:literal, $call_help:literal; )* }
        entries { $( $(#[doc = $entry_note:literal])* $entry:ident: $entry_event:ident => $entry_const:ident = $entry_metric:literal, $entry_help:literal; )* }
        time { $( $(#[doc = $time_note:literal])* $time:ident => $time_const:ident = $time_metric:literal, $time_help:literal; )* }
    ) => {
        concat!(
            "| metric | kind | labels | counts |\n",
            "| --- | --- | --- | --- |\n",
            $( "| `", $call_metric, "` | counter | `function` | ", $call_help, " |\n", )*
            $( "| `", $time_metric, "` | histogram (seconds) | `function` | ", $time_help, " |\n", )*
            $( "| `", $entry_metric, "` | counter | | ", $entry_help, " |\n", )*
        )
    };
}
pub(crate) use doc_table;

/// The constant naming each metric, [`describe`] and [`metric`], from [`counter_table!`].
macro_rules! metrics {
    (
        calls { $( $(#[doc = $call_note:literal])* $call:ident: $call_event:ident => $call_const:ident = $call_metric:literal, $call_help:literal; )* }
        entries { $( $(#[doc = $entry_note:literal])* $entry:ident: $entry_event:ident => $entry_const:ident = $entry_metric:literal, $entry_help:literal; )* }
        time { $( $(#[doc = $time_note:literal])* $time:ident => $time_const:ident = $time_metric:literal, $time_help:literal; )* }
    ) => {
        $( #[doc = $call_help] pub const $call_const: &str = $call_metric; )*
        $( #[doc = $entry_help] pub const $entry_const: &str = $entry_metric; )*
        $( #[doc = $time_help] #[doc = ""] #[doc = "A histogram, in seconds."] pub const $time_const: &str = $time_metric; )*

        /// Registers the description and unit of every counter of the table.
        fn describe_counters() {
            $( ::metrics::describe_counter!($call_const, $call_help); )*
            $( ::metrics::describe_counter!($entry_const, $entry_help); )*
            $( ::metrics::describe_histogram!($time_const, Unit::Seconds, $time_help); )*
        }

        /// The metric an event of a call counts in, labelled with its function;
        /// `None` for invalidations, exported by the entries they removed.
        fn metric(event: Event) -> Option<&'static str> {
            match event {
                $( Event::$call_event => Some($call_const), )*
                $( Event::$entry_event => None, )*
            }
        }
    };
}

counter_table!(metrics);

/// The label naming the function of a call.
pub const FUNCTION_LABEL: &str = "function";
/// The `function` label of calls whose policy names no function.
pub const UNNAMED: &str = "unnamed";

/// The circuit breaker's state: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "aside_cache_breaker_state";
/// How many times the circuit breaker opened.
pub const BREAKER_OPENED: &str = "aside_cache_breaker_opened_total";
/// Redis operations skipped while the breaker was open.
pub const BREAKER_SKIPS: &str = "aside_cache_breaker_skips_total";
/// Entries the cache holds in this process's memory ([`Stats::in_process`](crate::Stats::in_process)).
pub const IN_PROCESS_ENTRIES: &str = "aside_cache_in_process_entries";
/// Their weight, as `CACHE_MEMORY_CAPACITY` counts it (entries, or bytes).
pub const IN_PROCESS_WEIGHT: &str = "aside_cache_in_process_weight";

/// Registers the description and unit of every metric with the installed
/// recorder (the `# HELP` lines of a Prometheus scrape).
///
/// Done on the first event and by every [`sample`]; call it yourself after
/// installing a recorder late.
///
/// ```
/// aside::metrics::describe(); // a no-op without a recorder
/// ```
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge};
    describe_counters();
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker in front of Redis: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(BREAKER_OPENED, "Times the circuit breaker opened.");
    describe_counter!(
        BREAKER_SKIPS,
        "Redis operations skipped while the circuit breaker was open."
    );
    describe_gauge!(
        IN_PROCESS_ENTRIES,
        "Entries held in this process's memory (the memory store's, or a tier's copies)."
    );
    describe_gauge!(
        IN_PROCESS_WEIGHT,
        "Weight of the entries held in this process, as CACHE_MEMORY_CAPACITY counts it (entries or bytes)."
    );
}

/// Records the values of `cache` that are states rather than events: the circuit
/// breaker's state, how often it opened and how many operations it skipped, and
/// what the cache holds in this process's memory.
/// Call it before rendering a scrape, or on a timer.
///
/// ```
/// # async fn demo() -> aside::Result<()> {
/// let cache = aside::Cache::builder().memory().build().await?;
/// aside::metrics::sample(&cache);
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
    ::metrics::gauge!(IN_PROCESS_ENTRIES).set(stats.in_process.entries as f64);
    ::metrics::gauge!(IN_PROCESS_WEIGHT).set(stats.in_process.weight as f64);
}

/// The [`Sink`] every cache's counters feed with this feature (see `STATS_SINK`
/// in the crate root): emits each to the installed `metrics` recorder.
pub(crate) struct Exporter;

/// The metadata `counter!` gives this module's counters.
static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// One function's counter keys, by [`Event`], built once: `counter!` with a
/// label built on the spot allocates and hashes a key on every hit. Each
/// event still registers its key with the recorder in force — the global one
/// or the thread's — as `counter!` does.
struct CallKeys(Vec<Option<Key>>);

impl CallKeys {
    fn new(function: &str) -> CallKeys {
        let label = SharedString::from(Arc::<str>::from(function));
        CallKeys(Self::labelled(&label))
    }

    fn labelled(label: &SharedString) -> Vec<Option<Key>> {
        Event::ALL
            .iter()
            .map(|&event| {
                metric(event).map(|name| Key::from_parts(name, vec![Label::new(FUNCTION_LABEL, label.clone())]))
            })
            .collect()
    }

    fn get(&self, event: Event) -> Option<&Key> {
        self.0.get(event as usize)?.as_ref()
    }
}

/// The keys of calls whose policy names no function.
static UNNAMED_KEYS: LazyLock<CallKeys> =
    LazyLock::new(|| CallKeys(CallKeys::labelled(&SharedString::const_str(UNNAMED))));

impl Sink for Exporter {
    fn event(&self, function: Option<&Function>, event: Event) {
        let Some(name) = metric(event) else { return };
        describe_once();
        let keys = match function {
            Some(function) => function.kept(CallKeys::new),
            None => Some(&*UNNAMED_KEYS),
        };
        match keys.and_then(|keys| keys.get(event)) {
            Some(key) => ::metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1),
            // The function keeps another sink's state (there is one sink per
            // process, so never): the key is built on the spot.
            None => ::metrics::counter!(name, FUNCTION_LABEL => label(function)).increment(1),
        }
    }

    fn computed(&self, function: Option<&Function>, took: Duration) {
        ::metrics::histogram!(COMPUTATION_SECONDS, FUNCTION_LABEL => label(function)).record(took.as_secs_f64());
    }

    fn invalidated(&self, removed: u64) {
        describe_once();
        ::metrics::counter!(INVALIDATIONS).increment(removed);
    }
}

fn label(function: Option<&Function>) -> SharedString {
    function.map_or(SharedString::const_str(UNNAMED), |function| {
        SharedString::from(Arc::clone(function.name()))
    })
}

fn describe_once() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(describe);
}
