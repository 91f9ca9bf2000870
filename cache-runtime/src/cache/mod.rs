//! [`Cache`]: the cheap-to-clone handle every call goes through.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::backend::memory::MemoryStore;
use crate::backend::off::OffStore;
use crate::backend::redis::RedisStore;
use crate::backend::{Backend, Store};
use crate::config::{BackendKind, Settings};
use crate::entry;
use crate::error::{Error, Result};
use crate::events::{Events, Invalidation, InvalidationKind};
use crate::flow::{self, Call, Shared, Start};
use crate::key::Key;
use crate::lock::waiters::Waiters;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::redact::Redacted;
use crate::share::{Decode, Sharing};
use crate::stats::{Event, Probe, Recorder, Stats};
use crate::tags;
use span::{call_span, within};

mod builder;
pub(crate) mod global;
mod span;

pub use after_commit::AfterCommit;
pub use builder::CacheBuilder;

mod after_commit;
mod batch;
mod detached;

/// A handle to one cache: its settings, its store (Redis, memory or off) and its
/// counters. Cloning is cheap (one `Arc`); clones share everything.
///
/// ```
/// # async fn demo() -> Result<(), aside::Error> {
/// use std::time::Duration;
/// use aside::Cache;
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
    shared: Shared,
    stats: Recorder,
    events: broadcast::Sender<Invalidation>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.inner.shared.settings)
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
        if let Store::Redis(store) = &*cache.inner.shared.store {
            store
                .connect(cache.settings().op_timeout.max(Duration::from_secs(5)))
                .await?;
        }
        Ok(cache)
    }

    /// Builds a cache from `settings` that connects on first use. Needs no runtime.
    pub fn lazy(settings: Settings) -> Cache {
        let waiters = Arc::new(Waiters::default());
        let store = match &settings.backend {
            BackendKind::Redis(target) => Store::Redis(Box::new(RedisStore::new(
                target.clone(),
                &settings,
                waiters.clone(),
                false,
            ))),
            BackendKind::Tiered(target) => Store::Redis(Box::new(RedisStore::new(
                target.clone(),
                &settings,
                waiters.clone(),
                true,
            ))),
            BackendKind::Memory => {
                static ANNOUNCED: std::sync::Once = std::sync::Once::new();
                ANNOUNCED.call_once(|| {
                    tracing::info!(target: "aside", "no REDIS_URL: caching in process memory (set REDIS_URL to share a cache between processes)");
                });
                Store::Memory(MemoryStore::new(settings.memory_capacity, waiters.clone()))
            }
            BackendKind::Off => Store::Off(OffStore),
        };
        Cache {
            inner: Arc::new(Inner {
                shared: Shared::new(settings, store, waiters),
                stats: Recorder::new(crate::STATS_SINK),
                events: broadcast::channel(1024).0,
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.shared.settings
    }

    fn store(&self) -> &Arc<Store> {
        &self.inner.shared.store
    }

    /// The full key `key` is stored under in this cache (namespace and key version applied).
    ///
    /// ```
    /// # let cache = aside::Cache::lazy(Default::default());
    /// assert_eq!(cache.full_key("user:42").unwrap(), "aside:user:42");
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Key`] when the key could not be built from its arguments.
    pub fn full_key(&self, key: impl Into<Key>) -> Result<String> {
        key.into()
            .render(&self.settings().namespace, self.settings().key_version)
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
    /// # async fn demo(cache: aside::Cache) -> aside::Result<()> {
    /// assert_eq!(cache.get_json::<u32>("nothing-here").await?, None);
    /// # Ok(()) }
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// # rt.block_on(demo(aside::Cache::lazy(Default::default()))).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn get_json<T: DeserializeOwned>(&self, key: impl Into<Key>) -> Result<Option<T>> {
        let key = self.full_key(key)?;
        let probe = self.inner.stats.probe(None);
        let Some(bytes) = self.store().get(&key).await? else {
            return Ok(None);
        };
        Ok(self
            .inner
            .shared
            .codec
            .decode::<T>(&key, &bytes, &probe)
            .map(|entry| entry.value))
    }

    /// Stores `value` under `key` for `ttl`, clamped to the ceiling (`CACHE_MAX_TTL`).
    ///
    /// ```
    /// # async fn demo(cache: aside::Cache) -> aside::Result<()> {
    /// use std::time::Duration;
    /// cache.set_json("report:2026-11", &vec![1, 2, 3], Duration::from_secs(600)).await?;
    /// assert!(cache.exists("report:2026-11").await?);
    /// // Longer than 24 hours: stored for 24 hours.
    /// cache.set_json("long", &1, Duration::from_secs(7 * 86_400)).await?;
    /// assert!(cache.ttl("long").await?.unwrap() <= Duration::from_secs(86_400));
    /// # Ok(()) }
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// # rt.block_on(demo(aside::Cache::lazy(Default::default()))).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a zero TTL, [`Error::Encode`] when `value` does not
    /// serialize, [`Error::ValueTooLarge`] above `CACHE_MAX_VALUE_SIZE`, backend failures.
    pub async fn set_json<T: Serialize + ?Sized>(&self, key: impl Into<Key>, value: &T, ttl: Duration) -> Result<()> {
        let key = self.full_key(key)?;
        let codec = &self.inner.shared.codec;
        let (bytes, ttl) = codec.encode(&key, value, ttl, ttl, entry::encode)?;
        codec.fits(&bytes)?;
        self.store().set(&key, bytes, ttl).await
    }

    /// Removes `key`; `true` if it existed. Exactly [`invalidate_key`](Cache::invalidate_key):
    /// a computation of the entry in flight is revoked too (its store is refused).
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn delete(&self, key: impl Into<Key>) -> Result<bool> {
        self.invalidate_key(key).await
    }

    /// `true` if `key` holds an entry.
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn exists(&self, key: impl Into<Key>) -> Result<bool> {
        let key = self.full_key(key)?;
        self.store().exists(&key).await
    }

    /// The remaining lifetime of `key` (Redis `PTTL`), `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn ttl(&self, key: impl Into<Key>) -> Result<Option<Duration>> {
        let key = self.full_key(key)?;
        self.store().ttl(&key).await
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
    /// use aside::{Cache, Policy};
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
    /// use aside::{Cache, Plain, Policy};
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
        self.get_or_compute_sharing(key, policy, Decode, compute).await.0
    }

    /// [`get_or_compute`](Cache::get_or_compute), and how the call was answered:
    /// what `<fn>_with_status` calls.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use aside::{Cache, CacheStatus, Plain, Policy};
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::new(Duration::from_secs(1)).stale(Duration::from_secs(60));
    /// let call = |n: u32| cache.get_or_compute_with_status("n", &policy, move || async move { Plain(n) });
    /// assert_eq!(call(1).await, (Plain(1), CacheStatus::Miss));
    /// assert_eq!(call(2).await, (Plain(1), CacheStatus::Hit));
    /// tokio::time::sleep(Duration::from_millis(1100)).await;
    /// // Past `ttl`, within `stale`: this caller refreshes it.
    /// assert_eq!(call(3).await, (Plain(3), CacheStatus::Miss));
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    pub async fn get_or_compute_with_status<O, F, Fut>(
        &self,
        key: impl Into<Key>,
        policy: &Policy,
        compute: F,
    ) -> (O, crate::CacheStatus)
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        self.get_or_compute_sharing(key, policy, Decode, compute).await
    }

    /// [`get_or_compute_with_status`](Cache::get_or_compute_with_status), whose
    /// hits on an in-process entry (the memory store's, the tiered store's copy)
    /// hand out its decoded value as `share` says: what `#[cached]` calls, with
    /// [`Cloned`](crate::share::Cloned) for values it can clone.
    pub(crate) async fn get_or_compute_sharing<O, F, Fut, S>(
        &self,
        key: impl Into<Key>,
        policy: &Policy,
        share: S,
        compute: F,
    ) -> (O, crate::CacheStatus)
    where
        O: Outcome,
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
        S: Sharing<O::Value>,
    {
        let probe = self.inner.stats.probe_for(policy);
        let span = call_span!("get_or_compute", policy);
        let shared = &self.inner.shared;
        let key = key.into();
        // A call nobody traces looks in this process's memory before it renders
        // its key for good (a traced one records the key first); a call whose
        // policy is unusable goes the way that reports it.
        let here = if span.is_disabled() && policy.unusable().is_none() {
            flow::look_here(shared, &key, share, &probe)
        } else {
            None
        };
        let outcome = match here {
            Some(Ok(kept)) => flow::hit(&probe, kept),
            Some(Err((held, entry))) => {
                flow::lookup(shared, &entry, policy, &probe, share, compute, Start::Looked(held)).await
            }
            None => match self.call_key(key, policy, &probe, &span) {
                Ok(entry) => {
                    let lookup = flow::lookup(shared, &entry, policy, &probe, share, compute, Start::Here);
                    within(&span, lookup).await
                }
                Err(()) => within(&span, Self::uncached(&probe, compute)).await,
            },
        };
        span::record(&span, "outcome", probe.outcome());
        (outcome, self.status_of(&probe))
    }

    /// How a call was answered, from what its probe recorded.
    fn status_of(&self, probe: &Probe<'_>) -> crate::CacheStatus {
        match &**self.store() {
            Store::Off(_) => crate::CacheStatus::Bypassed,
            _ => probe.status(),
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
    /// use aside::{Cache, Plain, Policy};
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
        let probe = self.inner.stats.probe_for(policy);
        let span = call_span!("refresh", policy);
        let outcome = match self.call_key(key.into(), policy, &probe, &span) {
            Ok(entry) => {
                within(
                    &span,
                    Call::new(&self.inner.shared, &entry, policy, &probe, compute).overwrite(),
                )
                .await
            }
            Err(()) => within(&span, Self::uncached(&probe, compute)).await,
        };
        span::record(&span, "outcome", probe.outcome());
        outcome
    }

    /// The full key of a call, recorded (redacted) on its span; `Err` — logged
    /// and counted — when no key can be built from the arguments or tags.
    fn call_key(
        &self,
        key: Key,
        policy: &Policy,
        probe: &Probe<'_>,
        span: &tracing::Span,
    ) -> std::result::Result<String, ()> {
        match self.usable_key(key, policy) {
            Ok(entry) => {
                span::record(span, "key", tracing::field::display(Redacted(&entry)));
                Ok(entry)
            }
            Err(error) => {
                tracing::warn!(target: "aside", function = policy.function_name(), %error,
                    "no key for this call; computing without the cache");
                probe.record(Event::BackendError);
                Err(())
            }
        }
    }

    /// A call that cannot use the cache: the value, nothing stored.
    async fn uncached<O, F, Fut>(probe: &Probe<'_>, compute: F) -> O
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = O>,
    {
        let started = std::time::Instant::now();
        let outcome = compute().await;
        probe.computed(started.elapsed());
        outcome
    }

    /// Removes the entry at `key`, revoking any computation of it in flight (its
    /// store will be refused); `true` if an entry existed.
    ///
    /// Once this returns, no call that starts afterwards returns a value whose
    /// computation started before it.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// let cache = aside::Cache::builder().memory().build().await?;
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
        let removed = self.store().invalidate_entry(&full).await?;
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
    /// # async fn demo() -> aside::Result<()> {
    /// use aside::{Cache, Plain, Policy};
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
    /// Backend failures and timeouts, and [`Error::Key`] for a tag with `{` or `}`,
    /// which no entry can carry (see [`Policy::tags`]; [`tag!`](crate::tag) builds
    /// tags with escaped values).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        crate::key::check_braces("the tag", tag).map_err(Error::Key)?;
        let tag_key = tags::tag_key(&self.settings().namespace, tag);
        let removed = self.store().invalidate_tag(&tag_key).await?;
        self.announce(InvalidationKind::Tag, tag.to_owned(), removed);
        Ok(removed)
    }

    /// Removes every entry whose key (after the namespace) matches the Redis glob
    /// `pattern`, revokes computations of matching keys in flight, and returns how
    /// many entries existed. Uses `SCAN` in batches — never `KEYS` — on every
    /// master of a cluster.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// let cache = aside::Cache::builder().memory().build().await?;
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
        let full = format!("{}:{pattern}", self.settings().namespace);
        let removed = self.store().invalidate_pattern(&full).await?;
        self.announce(InvalidationKind::Pattern, full, removed);
        Ok(removed)
    }

    /// Soft invalidation: makes the entry at `key` stale at once instead of
    /// removing it, and revokes any computation of it in flight (its store is
    /// refused). Within its [`stale`](Policy::stale) window callers keep being
    /// served the old value while one of them refreshes it — for heavy reports
    /// where a minute-old answer beats a stampede. Without a stale window the
    /// next call computes, as after [`invalidate_key`](Cache::invalidate_key).
    /// `true` if an entry existed.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use aside::{Cache, CacheStatus, Plain, Policy};
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::new(Duration::from_secs(300)).stale(Duration::from_secs(60));
    /// let call = |n: u32| cache.get_or_compute_with_status("report", &policy, move || async move { Plain(n) });
    /// assert_eq!(call(1).await, (Plain(1), CacheStatus::Miss));
    /// assert!(cache.expire_key("report").await.unwrap());
    /// // Stale now: this caller refreshes it (detached calls serve the old value at once).
    /// assert_eq!(call(2).await, (Plain(2), CacheStatus::Miss));
    /// assert_eq!(call(3).await, (Plain(2), CacheStatus::Hit));
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    ///
    /// # Errors
    ///
    /// Backend failures and timeouts, and [`Error::Key`].
    pub async fn expire_key(&self, key: impl Into<Key>) -> Result<bool> {
        let key = key.into();
        let full = self.full_key(&key)?;
        let expired = self.store().expire_entry(&full).await?;
        self.announce(InvalidationKind::ExpiredKey, full, u64::from(expired));
        Ok(expired)
    }

    /// Soft invalidation of every entry tagged `tag`, as
    /// [`expire_key`](Cache::expire_key) does for one: they turn stale (and keep
    /// their tags); computations of them in flight store nothing. Returns how
    /// many entries existed. A hard [`invalidate_tag`](Cache::invalidate_tag)
    /// still removes them.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use std::time::Duration;
    /// use aside::{Cache, Plain, Policy};
    /// let cache = Cache::builder().memory().build().await?;
    /// let orders = Policy::new(Duration::from_secs(300)).stale(Duration::from_secs(60)).tags(["orders"]);
    /// for month in 1..=3 {
    ///     let Plain(_) = cache.get_or_compute(format!("revenue:{month}"), &orders, || async move { Plain(month) }).await;
    /// }
    /// assert_eq!(cache.expire_tag("orders").await?, 3);
    /// assert!(cache.exists("revenue:1").await?); // still there, stale
    /// assert_eq!(cache.invalidate_tag("orders").await?, 3);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`invalidate_tag`](Cache::invalidate_tag).
    pub async fn expire_tag(&self, tag: &str) -> Result<u64> {
        crate::key::check_braces("the tag", tag).map_err(Error::Key)?;
        let tag_key = tags::tag_key(&self.settings().namespace, tag);
        let expired = self.store().expire_tag(&tag_key).await?;
        self.announce(InvalidationKind::ExpiredTag, tag.to_owned(), expired);
        Ok(expired)
    }

    /// Subscribes to this cache's invalidation events (from this process).
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use aside::{Cache, InvalidationKind};
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
        self.store().ping().await
    }

    /// A snapshot of the counters, in total and per function, and the state of
    /// the circuit breaker in front of Redis.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use aside::{BreakerState, Cache, Plain, Policy};
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
        stats.in_process = self.store().in_process_size();
        if let Store::Redis(store) = &**self.store() {
            let breakers = store.breakers();
            stats.breaker = breakers.state();
            (stats.breaker_opened, stats.breaker_skips) = breakers.counts();
            stats.breakers = breakers.per_master();
        }
        stats
    }

    fn announce(&self, kind: InvalidationKind, target: String, removed: u64) {
        self.inner.stats.invalidated(removed);
        // A key can hold a secret; tags and patterns are the application's own words.
        match kind {
            InvalidationKind::Key | InvalidationKind::ExpiredKey => {
                tracing::debug!(target: "aside", kind = ?kind, target = %Redacted(&target), removed, "invalidated")
            }
            _ => tracing::debug!(target: "aside", kind = ?kind, target = %target, removed, "invalidated"),
        }
        let _ = self.inner.events.send(Invalidation { kind, target, removed });
    }
}
