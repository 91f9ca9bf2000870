//! [`Cache`]: the cheap-to-clone handle every call goes through.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use tokio::sync::broadcast;
use tracing::Instrument as _;

use crate::backend::memory::MemoryStore;
use crate::backend::off::OffStore;
use crate::backend::redis::RedisStore;
use crate::backend::{Backend, Store};
use crate::config::{BackendKind, Settings};
use crate::entry;
use crate::error::{Error, Result};
use crate::events::{Events, Invalidation, InvalidationKind};
use crate::key::Key;
use crate::lock::{self, Flights, Plan, Role};
use crate::outcome::Outcome;
use crate::policy::{clamp, Policy};
use crate::stats::{Event, Probe, Recorder, Stats};
use crate::tags;

mod builder;
pub(crate) mod global;

pub use builder::CacheBuilder;

/// The debug span of one call named `$op` (a literal: span names are static): its
/// function and key now, its outcome when the call ends.
macro_rules! call_span {
    ($cache:expr, $op:literal, $policy:expr, $key:expr) => {{
        let span = tracing::debug_span!(target: "aside", $op, function = $policy.function_name(),
            key = tracing::field::Empty, outcome = tracing::field::Empty);
        $cache.record_key(&span, $key);
        span
    }};
}

/// A handle to one cache: its settings, its store (Redis, memory or off) and its
/// counters. Cloning is cheap (one `Arc`); clones share everything.
///
/// ```
/// # async fn demo() -> Result<(), cache_runtime::Error> {
/// use std::time::Duration;
/// use cache_runtime::Cache;
///
/// let cache = Cache::builder().memory().namespace("docs").build().await?;
/// cache.set_json("greeting", &"hello", Duration::from_secs(60)).await?;
/// assert_eq!(cache.get_json::<String>("greeting").await?.as_deref(), Some("hello"));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Store,
    stats: Recorder,
    flights: Arc<Flights>,
    events: broadcast::Sender<Invalidation>,
    clamp_logged: AtomicBool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Starts building a cache in code; see [`CacheBuilder`].
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// Builds a cache from the environment (see [`config`](crate::config)) and
    /// connects now, so a bad URL, an unreachable server or a wrong password fails
    /// here, early and typed.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid variable, [`Error::Connect`] or
    /// [`Error::Timeout`] when Redis cannot be reached or refuses the credentials.
    pub async fn from_env() -> Result<Cache> {
        Cache::connect(Settings::from_env()?).await
    }

    /// Builds a cache from `settings` and connects now.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Cache::from_env), less the configuration errors.
    pub async fn connect(settings: Settings) -> Result<Cache> {
        let cache = Cache::lazy(settings);
        if let Store::Redis(store) = &cache.inner.store {
            store
                .connect(cache.inner.settings.op_timeout.max(Duration::from_secs(5)))
                .await?;
        }
        Ok(cache)
    }

    /// Builds a cache from `settings` that connects on first use. Needs no runtime.
    pub fn lazy(settings: Settings) -> Cache {
        let store = match &settings.backend {
            BackendKind::Redis(target) => Store::Redis(RedisStore::new(target.clone(), &settings)),
            BackendKind::Memory => {
                static ANNOUNCED: std::sync::Once = std::sync::Once::new();
                ANNOUNCED.call_once(|| {
                    tracing::info!(target: "aside", "no REDIS_URL: caching in process memory (set REDIS_URL to share a cache between processes)");
                });
                Store::Memory(MemoryStore::new(settings.memory_capacity))
            }
            BackendKind::Off => Store::Off(OffStore::default()),
        };
        Cache {
            inner: Arc::new(Inner {
                settings,
                store,
                stats: Recorder::default(),
                flights: Arc::default(),
                events: broadcast::channel(1024).0,
                clamp_logged: AtomicBool::new(false),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The full key `key` is stored under in this cache (namespace and key version applied).
    ///
    /// ```
    /// # let cache = cache_runtime::Cache::lazy(Default::default());
    /// assert_eq!(cache.full_key("user:42").unwrap(), "aside:user:42");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Key`] when the key could not be built from its arguments.
    pub fn full_key(&self, key: impl Into<Key>) -> Result<String> {
        key.into()
            .render(&self.inner.settings.namespace, self.inner.settings.key_version)
    }

    /// The full key of a cached call, unless the key or the policy's tags could not be built.
    fn usable_key(&self, key: impl Into<Key>, policy: &Policy) -> Result<String> {
        let key = self.full_key(key)?;
        match policy.unusable() {
            Some(problem) => Err(Error::Key(problem.to_owned())),
            None => Ok(key),
        }
    }

    /// Reads a value stored by [`set_json`](Cache::set_json) or by a cached function.
    ///
    /// An entry that does not decode as `T` (corrupt, another format, another type)
    /// is a miss: `Ok(None)`, logged and counted in `decode_errors`.
    ///
    /// ```
    /// # async fn demo(cache: cache_runtime::Cache) -> cache_runtime::Result<()> {
    /// assert_eq!(cache.get_json::<u32>("nothing-here").await?, None);
    /// # Ok(()) }
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// # rt.block_on(demo(cache_runtime::Cache::lazy(Default::default()))).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn get_json<T: DeserializeOwned>(&self, key: impl Into<Key>) -> Result<Option<T>> {
        let key = self.full_key(key)?;
        let probe = self.inner.stats.probe(None);
        let Some(bytes) = self.inner.store.get(&key).await? else {
            return Ok(None);
        };
        Ok(self.decode::<T>(&key, &bytes, &probe).map(|entry| entry.value))
    }

    /// Stores `value` under `key` for `ttl`, clamped to the ceiling (`CACHE_MAX_TTL`).
    ///
    /// ```
    /// # async fn demo(cache: cache_runtime::Cache) -> cache_runtime::Result<()> {
    /// use std::time::Duration;
    /// cache.set_json("report:2026-11", &vec![1, 2, 3], Duration::from_secs(600)).await?;
    /// assert!(cache.exists("report:2026-11").await?);
    /// // Longer than 24 hours: stored for 24 hours.
    /// cache.set_json("long", &1, Duration::from_secs(7 * 86_400)).await?;
    /// assert!(cache.ttl("long").await?.unwrap() <= Duration::from_secs(86_400));
    /// # Ok(()) }
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// # rt.block_on(demo(cache_runtime::Cache::lazy(Default::default()))).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a zero TTL, [`Error::Encode`] when `value` does not
    /// serialize, [`Error::ValueTooLarge`] above `CACHE_MAX_VALUE_SIZE`, backend failures.
    pub async fn set_json<T: Serialize + ?Sized>(&self, key: impl Into<Key>, value: &T, ttl: Duration) -> Result<()> {
        let key = self.full_key(key)?;
        let (bytes, ttl) = self.encode_entry(&key, value, ttl, ttl, entry::encode)?;
        self.inner.store.set(&key, bytes, ttl).await
    }

    /// Removes `key`; `true` if it existed.
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn delete(&self, key: impl Into<Key>) -> Result<bool> {
        let key = self.full_key(key)?;
        self.inner.store.delete(&key).await
    }

    /// `true` if `key` holds an entry.
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn exists(&self, key: impl Into<Key>) -> Result<bool> {
        let key = self.full_key(key)?;
        self.inner.store.exists(&key).await
    }

    /// The remaining lifetime of `key` (Redis `PTTL`), `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn ttl(&self, key: impl Into<Key>) -> Result<Option<Duration>> {
        let key = self.full_key(key)?;
        self.inner.store.ttl(&key).await
    }

    /// The cache-aside call: returns the stored value for `key`, or runs `compute`,
    /// stores what [`Outcome::cacheable`] says should be stored, and returns it.
    ///
    /// Never fails: when the backend errors or times out, or the entry does not
    /// decode, the call computes (fail-open), logs through `tracing` and counts.
    /// A hit is one backend round trip (`GET`) and runs no computation.
    ///
    /// ```
    /// # async fn demo() {
    /// use cache_runtime::{Cache, Policy};
    /// use std::time::Duration;
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::new(Duration::from_secs(300)).function("demo:square");
    /// let square = |n: u64| {
    ///     let cache = cache.clone();
    ///     let policy = policy.clone();
    ///     async move {
    ///         cache.get_or_compute(format!("square:{n}"), &policy, || async move {
    ///             Ok::<u64, std::convert::Infallible>(n * n)
    ///         }).await
    ///     }
    /// };
    /// assert_eq!(square(12).await, Ok(144)); // miss: computed and stored
    /// assert_eq!(square(12).await, Ok(144)); // hit
    /// let stats = cache.stats().function("demo:square");
    /// assert_eq!((stats.misses, stats.hits, stats.computations), (1, 1, 1));
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    ///
    /// # Concurrent calls on the same key
    ///
    /// Concurrent calls for one cold key run `compute` once, across every task of
    /// this process and every process sharing the Redis: one caller takes the
    /// key's lease and computes; the others are woken when its value is stored and
    /// return it. If the computing process dies, its lease expires after
    /// [`Policy::lock_ttl`] and one waiter takes over; a waiter that has waited
    /// [`Policy::wait`] computes by itself (without storing).
    ///
    /// ```
    /// # async fn demo() {
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// use cache_runtime::{Cache, Plain, Policy};
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let runs = AtomicUsize::new(0);
    /// let policy = Policy::default();
    /// let call = || cache.get_or_compute("cold", &policy, || async {
    ///     runs.fetch_add(1, Ordering::SeqCst);
    ///     tokio::time::sleep(Duration::from_millis(50)).await;
    ///     Plain(7)
    /// });
    /// let all = futures_util::future::join_all((0..50).map(|_| call())).await;
    /// assert!(all.iter().all(|Plain(v)| *v == 7));
    /// assert_eq!(runs.load(Ordering::SeqCst), 1);
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    ///
    /// # Stale values
    ///
    /// With [`Policy::stale`], an entry lives `ttl + stale`. Past `ttl`, one caller
    /// (cluster-wide) takes the lease and recomputes; every other caller gets the
    /// old value at once. If that recomputation fails (an `Err` or `None` that is
    /// not cached) its caller gets the old value too.
    pub async fn get_or_compute<O, F, Fut>(&self, key: impl Into<Key>, policy: &Policy, compute: F) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let key = key.into();
        let probe = self.inner.stats.probe(policy.function_name());
        let span = call_span!(self, "get_or_compute", policy, &key);
        let outcome = self.lookup(key, policy, &probe, compute).instrument(span.clone()).await;
        span.record("outcome", probe.outcome());
        outcome
    }

    /// The body of [`get_or_compute`](Cache::get_or_compute), inside its span.
    async fn lookup<O, F, Fut>(&self, key: Key, policy: &Policy, probe: &Probe<'_>, compute: F) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let (key, compute) = match self.call_key(key, policy, probe, compute).await {
            Ok(usable) => usable,
            Err(outcome) => return outcome,
        };
        let stale = match self.inner.store.get(&key).await {
            Ok(Some(bytes)) => match self.decode::<O::Value>(&key, &bytes, probe) {
                Some(entry) if entry.is_fresh() => {
                    probe.record(Event::Hit);
                    return O::from_cached(entry.value);
                }
                Some(entry) if !policy.stale_window().is_zero() => Some(entry.value),
                _ => None,
            },
            Ok(None) => None,
            Err(_) => {
                // The store is failing: no lock, no store, just the value.
                probe.record(Event::BackendError);
                probe.record(Event::Miss);
                return Self::compute_unstored(probe, compute).await;
            }
        };
        let plan = self.plan(&key, policy);
        match stale {
            // The cold paths are boxed: the lease protocol makes their futures large,
            // and every hit would otherwise carry (and move) that size.
            Some(old) => Box::pin(self.revalidate(&plan, policy, probe, old, compute)).await,
            None => {
                probe.record(Event::Miss);
                Box::pin(self.miss(&plan, policy, probe, compute)).await
            }
        }
    }

    /// Runs `compute` now and overwrites the entry with its result (when
    /// cacheable): warm-up and write-through. Returns the result.
    ///
    /// It takes the entry's lease even from a computation in flight (whose store
    /// is then refused), so the refreshed value is the one that stays; an
    /// invalidation during the refresh refuses its store in turn.
    ///
    /// ```
    /// # async fn demo() {
    /// use cache_runtime::{Cache, Plain, Policy};
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::default();
    /// cache.refresh("total", &policy, || async { Plain(41) }).await;
    /// let Plain(total) = cache.get_or_compute("total", &policy, || async { Plain(0) }).await;
    /// assert_eq!(total, 41); // served from the refreshed entry
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    pub async fn refresh<O, F, Fut>(&self, key: impl Into<Key>, policy: &Policy, compute: F) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let key = key.into();
        let probe = self.inner.stats.probe(policy.function_name());
        let span = call_span!(self, "refresh", policy, &key);
        let outcome = self
            .overwrite(key, policy, &probe, compute)
            .instrument(span.clone())
            .await;
        span.record("outcome", probe.outcome());
        outcome
    }

    /// The body of [`refresh`](Cache::refresh), inside its span.
    async fn overwrite<O, F, Fut>(&self, key: Key, policy: &Policy, probe: &Probe<'_>, compute: F) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let (key, compute) = match self.call_key(key, policy, probe, compute).await {
            Ok(usable) => usable,
            Err(outcome) => return outcome,
        };
        let plan = self.plan(&key, policy);
        let token = lock::new_token();
        match plan.acquire(&token, true).await {
            Ok(_) => self.compute_leased(&plan, policy, probe, &token, compute).await,
            Err(_) => {
                probe.record(Event::BackendError);
                Self::compute_unstored(probe, compute).await
            }
        }
    }

    /// Records the full key on a call's span, rendering it only when the span is enabled.
    fn record_key(&self, span: &tracing::Span, key: &Key) {
        if !span.is_disabled() {
            if let Ok(full) = self.full_key(key) {
                span.record("key", full.as_str());
            }
        }
    }

    /// The full key of a call and its computation, or — when no key can be built
    /// from the arguments or tags — the result computed without the cache.
    async fn call_key<O, F, Fut>(
        &self,
        key: Key,
        policy: &Policy,
        probe: &Probe<'_>,
        compute: F,
    ) -> std::result::Result<(String, F), O>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        match self.usable_key(key, policy) {
            Ok(key) => Ok((key, compute)),
            Err(error) => {
                tracing::warn!(target: "aside", %error, "no key for this call; computing without the cache");
                probe.record(Event::BackendError);
                Err(Self::compute_unstored(probe, compute).await)
            }
        }
    }

    /// Removes the entry at `key`, revoking any computation of it in flight (its
    /// store will be refused); `true` if an entry existed.
    ///
    /// Once this returns, no call that starts afterwards returns a value whose
    /// computation started before it.
    ///
    /// ```
    /// # async fn demo() -> cache_runtime::Result<()> {
    /// use std::time::Duration;
    /// let cache = cache_runtime::Cache::builder().memory().build().await?;
    /// cache.set_json("user:42", &"Ada", Duration::from_secs(60)).await?;
    /// assert!(cache.invalidate_key("user:42").await?);
    /// assert!(!cache.invalidate_key("user:42").await?);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn invalidate_key(&self, key: impl Into<Key>) -> Result<bool> {
        let key = key.into();
        let full = self.full_key(&key)?;
        let removed = self.inner.store.invalidate_entry(&full).await?;
        if let (true, Some(function)) = (removed, key.function_name()) {
            self.inner.stats.probe(Some(&function)).record(Event::Invalidation);
        }
        self.announce(InvalidationKind::Key, full, u64::from(removed));
        Ok(removed)
    }

    /// Removes every entry tagged `tag` — stored ones, and ones being computed
    /// (their stores are refused) — and returns how many entries existed. Entries
    /// without the tag stay. Tags are matched exactly: `region:x` never touches
    /// `region:x:1`.
    ///
    /// ```
    /// # async fn demo() -> cache_runtime::Result<()> {
    /// use cache_runtime::{Cache, Plain, Policy};
    /// let cache = Cache::builder().memory().build().await?;
    /// let orders = Policy::default().tags(["orders"]);
    /// for month in 1..=3 {
    ///     let Plain(_) = cache.get_or_compute(format!("revenue:{month}"), &orders, || async { Plain(month) }).await;
    /// }
    /// let Plain(_) = cache.get_or_compute("untagged", &Policy::default(), || async { Plain(0) }).await;
    /// assert_eq!(cache.invalidate_tag("orders").await?, 3);
    /// assert!(cache.exists("untagged").await?);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        let tag_key = tags::tag_key(&self.inner.settings.namespace, tag);
        let removed = self.inner.store.invalidate_tag(&tag_key).await?;
        self.announce(InvalidationKind::Tag, tag.to_owned(), removed);
        Ok(removed)
    }

    /// Removes every entry whose key (after the namespace) matches the Redis glob
    /// `pattern`, revokes computations of matching keys in flight, and returns how
    /// many entries existed. Uses `SCAN` in batches — never `KEYS` — on every
    /// master of a cluster.
    ///
    /// ```
    /// # async fn demo() -> cache_runtime::Result<()> {
    /// use std::time::Duration;
    /// let cache = cache_runtime::Cache::builder().memory().build().await?;
    /// for id in 1..=3 {
    ///     cache.set_json(format!("user:{id}"), &id, Duration::from_secs(60)).await?;
    /// }
    /// cache.set_json("users:count", &3, Duration::from_secs(60)).await?;
    /// assert_eq!(cache.invalidate_pattern("user:*").await?, 3);
    /// assert!(cache.exists("users:count").await?);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts.
    pub async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let full = format!("{}:{pattern}", self.inner.settings.namespace);
        let removed = self.inner.store.invalidate_pattern(&full).await?;
        self.announce(InvalidationKind::Pattern, full, removed);
        Ok(removed)
    }

    /// Subscribes to this cache's invalidation events (from this process).
    ///
    /// ```
    /// # async fn demo() -> cache_runtime::Result<()> {
    /// use cache_runtime::{Cache, InvalidationKind};
    /// let cache = Cache::builder().memory().build().await?;
    /// let mut events = cache.events();
    /// cache.invalidate_tag("orders").await?;
    /// let event = events.next().await.unwrap();
    /// assert_eq!((event.kind, event.target.as_str(), event.removed), (InvalidationKind::Tag, "orders", 0));
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn events(&self) -> Events {
        Events {
            receiver: self.inner.events.subscribe(),
        }
    }

    /// A round trip to the backend, for health checks. Zero for the memory and off backends.
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts.
    pub async fn ping(&self) -> Result<Duration> {
        self.inner.store.ping().await
    }

    /// A snapshot of the counters, in total and per function, and the state of
    /// the circuit breaker in front of Redis.
    ///
    /// ```
    /// # async fn demo() -> cache_runtime::Result<()> {
    /// use cache_runtime::{BreakerState, Cache, Plain, Policy};
    /// let cache = Cache::builder().memory().build().await?;
    /// let policy = Policy::default().function("demo:answer");
    /// for _ in 0..3 {
    ///     let Plain(_) = cache.get_or_compute("answer", &policy, || async { Plain(42) }).await;
    /// }
    /// let stats = cache.stats();
    /// assert_eq!((stats.total.hits, stats.total.misses), (2, 1));
    /// assert_eq!(stats.function("demo:answer").computations, 1);
    /// assert_eq!(stats.breaker, BreakerState::Closed);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.stats.snapshot();
        if let Store::Redis(store) = &self.inner.store {
            stats.breaker = store.breaker().state();
            (stats.breaker_opened, stats.breaker_skips) = store.breaker().counts();
        }
        stats
    }

    fn announce(&self, kind: InvalidationKind, target: String, removed: u64) {
        self.inner.stats.invalidated(removed);
        tracing::debug!(target: "aside", kind = ?kind, target = %target, removed, "invalidated");
        let _ = self.inner.events.send(Invalidation { kind, target, removed });
    }

    fn plan<'a>(&'a self, key: &'a str, policy: &Policy) -> Plan<'a> {
        let settings = &self.inner.settings;
        let lifetime = clamp(policy.ttl().saturating_add(policy.stale_window()), settings.max_ttl).ttl;
        Plan {
            store: &self.inner.store,
            entry: key,
            tag_keys: policy
                .tag_list()
                .iter()
                .map(|tag| tags::tag_key(&settings.namespace, tag))
                .collect(),
            lifetime: lifetime.max(Duration::from_millis(1)),
            ceiling: settings.max_ttl,
            lease_ttl: clamp(policy.lock_lease(), settings.max_ttl)
                .ttl
                .max(Duration::from_millis(1)),
            deadline: std::time::Instant::now() + policy.wait_limit(),
        }
    }

    /// A cold key: one leader per process (the others follow it), one lease holder
    /// across processes.
    async fn miss<O, F, Fut>(&self, plan: &Plan<'_>, policy: &Policy, probe: &Probe<'_>, compute: F) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let mut waited = false;
        loop {
            match self.inner.flights.join(plan.entry) {
                Role::Follower(receiver) => {
                    if !std::mem::replace(&mut waited, true) {
                        probe.record(Event::LockWait);
                    }
                    if lock::follow(receiver, plan.deadline).await.is_err() {
                        return self.give_up_waiting(plan, probe, compute).await;
                    }
                    // Read what the leader stored, if it is still there; otherwise
                    // (not cacheable, revoked, cancelled) try again.
                    match self.inner.store.get(plan.entry).await {
                        Ok(Some(bytes)) => {
                            if let Some(entry) = self.decode::<O::Value>(plan.entry, &bytes, probe) {
                                if entry.is_fresh() {
                                    return O::from_cached(entry.value);
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            probe.record(Event::BackendError);
                            return Self::compute_unstored(probe, compute).await;
                        }
                    }
                }
                Role::Leader(pilot) => {
                    let outcome = self.lead(plan, policy, probe, waited, compute).await;
                    drop(pilot);
                    return outcome;
                }
            }
        }
    }

    /// This process's leader: takes the lease and computes, or waits for the
    /// process that holds it.
    async fn lead<O, F, Fut>(
        &self,
        plan: &Plan<'_>,
        policy: &Policy,
        probe: &Probe<'_>,
        mut waited: bool,
        compute: F,
    ) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let token = lock::new_token();
        loop {
            match plan.acquire(&token, false).await {
                Ok(true) => {
                    // Another process may have stored between our miss and our lease.
                    if let Some(value) = self.fresh_under_lease::<O::Value>(plan, &token).await {
                        return O::from_cached(value);
                    }
                    return self.compute_leased(plan, policy, probe, &token, compute).await;
                }
                Ok(false) => {
                    if !std::mem::replace(&mut waited, true) {
                        probe.record(Event::LockWait);
                    }
                    let accept = |bytes: Bytes| entry::decode::<O::Value>(&bytes).ok().filter(entry::Entry::is_fresh);
                    match plan.wait_for_value(accept).await {
                        Ok(Some(entry)) => return O::from_cached(entry.value),
                        Ok(None) => continue,
                        Err(lock::WaitTimeout) => return self.give_up_waiting(plan, probe, compute).await,
                    }
                }
                Err(_) => {
                    probe.record(Event::BackendError);
                    return Self::compute_unstored(probe, compute).await;
                }
            }
        }
    }

    /// A stale entry: one caller (cluster-wide) recomputes; everyone else, and
    /// that caller when its recomputation fails, gets the old value.
    async fn revalidate<O, F, Fut>(
        &self,
        plan: &Plan<'_>,
        policy: &Policy,
        probe: &Probe<'_>,
        old: O::Value,
        compute: F,
    ) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let token = lock::new_token();
        match plan.acquire(&token, false).await {
            Ok(true) => {
                // Someone may have refreshed it between our read and our lease.
                if let Some(value) = self.fresh_under_lease::<O::Value>(plan, &token).await {
                    return O::from_cached(value);
                }
                let outcome = self.compute_leased(plan, policy, probe, &token, compute).await;
                if outcome.cacheable(policy).is_some() {
                    return outcome;
                }
                tracing::debug!(target: "aside", entry = plan.entry, "refresh failed; serving the stale value");
            }
            Ok(false) => {}
            Err(_) => probe.record(Event::BackendError),
        }
        probe.record(Event::StaleHit);
        O::from_cached(old)
    }

    /// Computes while holding the lease, then stores if the lease still holds.
    async fn compute_leased<O, F, Fut>(
        &self,
        plan: &Plan<'_>,
        policy: &Policy,
        probe: &Probe<'_>,
        token: &str,
        compute: F,
    ) -> O
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let started = std::time::Instant::now();
        let outcome = plan.hold(token, compute()).await;
        probe.computed(started.elapsed());
        let encoded = match outcome.cacheable(policy) {
            None => None,
            Some(value) => match self.encode_entry(plan.entry, value, policy.ttl(), plan.lifetime, |value, fresh| {
                entry::encode_as(value, fresh, self.inner.settings.entry_format)
            }) {
                Ok(encoded) => Some(encoded),
                Err(error) => {
                    self.count_unstored(probe, plan.entry, &error);
                    None
                }
            },
        };
        let Some((bytes, ttl)) = encoded else {
            if let Err(error) = plan.store.release_lease(plan.entry, token).await {
                tracing::debug!(target: "aside", entry = plan.entry, %error, "lease release failed; it expires on its own");
            }
            return outcome;
        };
        match plan.store(token, bytes, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                probe.record(Event::Revoked);
                tracing::debug!(target: "aside", entry = plan.entry, "invalidated while computing; result not stored");
            }
            Err(_) => probe.record(Event::BackendError),
        }
        outcome
    }

    /// Holding the lease, reads the entry once more: if a fresh value arrived
    /// meanwhile, frees the lease and returns it, so the race between a miss and
    /// another caller's store does not run the computation twice.
    async fn fresh_under_lease<T: DeserializeOwned>(&self, plan: &Plan<'_>, token: &str) -> Option<T> {
        let bytes = self.inner.store.get(plan.entry).await.ok().flatten()?;
        let entry = entry::decode::<T>(&bytes).ok().filter(entry::Entry::is_fresh)?;
        if let Err(error) = plan.store.release_lease(plan.entry, token).await {
            tracing::debug!(target: "aside", entry = plan.entry, %error, "lease release failed; it expires on its own");
        }
        Some(entry.value)
    }

    /// `wait` ran out: compute without the lease, and so without storing.
    async fn give_up_waiting<O, F, Fut>(&self, plan: &Plan<'_>, probe: &Probe<'_>, compute: F) -> O
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        probe.record(Event::LockTimeout);
        tracing::debug!(target: "aside", entry = plan.entry, "waited too long for another computation; computing without storing");
        Self::compute_unstored(probe, compute).await
    }

    /// Fail-open: the value, nothing stored.
    async fn compute_unstored<O, F, Fut>(probe: &Probe<'_>, compute: F) -> O
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let started = std::time::Instant::now();
        let outcome = compute().await;
        probe.computed(started.elapsed());
        outcome
    }

    fn count_unstored(&self, probe: &Probe<'_>, key: &str, error: &Error) {
        match error {
            Error::ValueTooLarge { size, limit } => {
                probe.record(Event::Oversized);
                tracing::debug!(target: "aside", key, size, limit, "value not stored: larger than the size limit");
            }
            error => tracing::warn!(target: "aside", key, %error, "value not stored"),
        }
    }

    /// Encodes `value` with `encode`, fresh for `fresh`, kept for `lifetime`
    /// clamped to the ceiling; checks the size limit. Returns the bytes and the
    /// TTL to write.
    fn encode_entry<T: ?Sized>(
        &self,
        key: &str,
        value: &T,
        fresh: Duration,
        lifetime: Duration,
        encode: impl FnOnce(&T, Duration) -> Result<Vec<u8>>,
    ) -> Result<(Bytes, Duration)> {
        if fresh.is_zero() {
            return Err(Error::InvalidTtl(fresh));
        }
        let ceiling = clamp(lifetime, self.inner.settings.max_ttl);
        if ceiling.clamped {
            self.log_clamp(key, lifetime);
        }
        let bytes = encode(value, fresh.min(ceiling.ttl))?;
        let limit = self.inner.settings.max_value_size;
        if bytes.len() > limit {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                limit,
            });
        }
        Ok((Bytes::from(bytes), ceiling.ttl))
    }

    fn log_clamp(&self, key: &str, asked: Duration) {
        let ceiling = self.inner.settings.max_ttl;
        if !self.inner.clamp_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(target: "aside", key, asked = ?asked, ceiling = ?ceiling,
                "TTL above the ceiling clamped (further clamps are logged at debug)");
        } else {
            tracing::debug!(target: "aside", key, asked = ?asked, ceiling = ?ceiling, "TTL clamped");
        }
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8], probe: &Probe<'_>) -> Option<entry::Entry<T>> {
        match entry::decode(bytes) {
            Ok(entry) => Some(entry),
            Err(error) => {
                probe.record(Event::DecodeError);
                tracing::warn!(target: "aside", key, %error, "entry does not decode; treating it as a miss");
                None
            }
        }
    }
}
