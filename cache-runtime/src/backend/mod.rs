//! The stores behind a [`Cache`](crate::Cache): Redis, memory, or none.
//!
//! Every store implements [`Backend`]; [`Store`] dispatches to the one in use
//! without boxing, so a hit costs no allocation beyond the value itself.
//!
//! Besides plain reads and writes a store keeps, per entry key `E`:
//! - a **lease** (`{E}:lease` in Redis, the same hash slot as `E`): the token of
//!   the one computation allowed to store `E`. It is the stampede lock, and the
//!   ownership token that invalidation revokes;
//! - **tag sets**: which entries (stored or being computed) carry a tag, so that
//!   invalidating the tag finds them and their leases.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::Result;
use crate::share::InProcess;

pub(crate) use crate::stats::InProcessSize;
pub(crate) use in_process::{InProcessMap, Stored};

pub(crate) mod in_process;
pub(crate) mod memory;
pub(crate) mod off;
pub(crate) mod redis;

/// What a store calls when an entry is stored or its lease freed, so that the
/// callers waiting for that entry look again at once. The cache's waiters
/// implement it; a store only knows this interface.
pub(crate) trait Wake: Send + Sync + std::fmt::Debug {
    /// Wakes every caller waiting on `entry`.
    fn wake(&self, entry: &str);
}

/// What asking for a lease gave.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// Another computation holds it.
    Busy,
    /// Taken; with the entry's bytes as they were at that moment, if any.
    Taken(Option<Bytes>),
}

/// Where an entry is recorded while it is computed: its tag sets, each member
/// scored by when the entry expires at the latest (`lifetime` from the record),
/// each set kept alive that long, within `ceiling`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    /// The full keys of the entry's tag sets (none: nothing to record).
    pub(crate) tag_keys: &'a [String],
    /// How long the entry may live counted from the record.
    pub(crate) lifetime: Duration,
    /// The TTL ceiling: no tag set outlives it.
    pub(crate) ceiling: Duration,
}

/// A lease token: unique across processes (a per-process random seed and a
/// counter). Whoever holds the lease of an entry is known by its token.
pub(crate) fn new_token() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let local = 0u8;
        let entropy = format!(
            "{}:{nanos}:{:p}:{:?}",
            std::process::id(),
            &local,
            std::thread::current().id()
        );
        xxhash_rust::xxh3::xxh3_64(entropy.as_bytes())
    });
    format!("{seed:016x}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// How often a lease release that failed is tried again (over about 3 s).
const RELEASE_ATTEMPTS: u32 = 8;

/// What the cache needs of a store. Keys are full keys (namespace applied).
pub(crate) trait Backend: Send + Sync {
    /// The stored bytes, if the key exists.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>>> + Send;
    /// The stored bytes of each key, in the order of `keys`: one `MGET` on a
    /// single node, one per hash slot (in parallel) on a cluster.
    fn get_many(&self, keys: &[String]) -> impl Future<Output = Result<Vec<Option<Bytes>>>> + Send;
    /// Stores `value` for `ttl` (already clamped to the ceiling, never zero).
    fn set(&self, key: &str, value: Bytes, ttl: Duration) -> impl Future<Output = Result<()>> + Send;
    /// `true` if the key exists.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;
    /// The remaining lifetime of the key, `None` if it does not exist.
    fn ttl(&self, key: &str) -> impl Future<Output = Result<Option<Duration>>> + Send;
    /// A round trip to the store.
    fn ping(&self) -> impl Future<Output = Result<Duration>> + Send;

    /// Records `entry` in each of its tag sets (or renews its record), pruning
    /// members whose entries have expired.
    fn register(&self, entry: &str, record: Record<'_>) -> impl Future<Output = Result<()>> + Send;
    /// Takes the lease of `entry` for `token` if it is free (or always, with
    /// `steal`) and records the entry in its tag sets, as [`register`](Backend::register)
    /// does; reads the entry too (not when stealing), so a value another process
    /// stored since the caller's miss is seen without another round trip.
    ///
    /// `Taken` means the lease was this token's when the records were made.
    /// One round trip on a single node (one script, so the lease is still the
    /// token's when the answer comes); on a cluster, whose tag sets live in
    /// other slots, the lease, then the records in parallel. There an
    /// invalidation may revoke the lease between the two answers: the
    /// computation then runs and its store is refused, as when the lease is
    /// revoked while computing.
    fn acquire_lease(
        &self,
        entry: &str,
        token: &str,
        ttl: Duration,
        steal: bool,
        record: Record<'_>,
    ) -> impl Future<Output = Result<Acquired>> + Send;
    /// Extends the lease if `token` still holds it.
    fn renew_lease(&self, entry: &str, token: &str, ttl: Duration) -> impl Future<Output = Result<bool>> + Send;
    /// Frees the lease if `token` still holds it, and wakes the entry's waiters
    /// (in every process) so one of them takes the lease at once.
    fn release_lease(&self, entry: &str, token: &str) -> impl Future<Output = Result<()>> + Send;
    /// `true` if some computation holds the lease of `entry`.
    fn lease_held(&self, entry: &str) -> impl Future<Output = Result<bool>> + Send;
    /// In one atomic step: if `token` still holds the lease, stores `value`, frees
    /// the lease and wakes the entry's waiters; returns whether it stored.
    fn store_leased(
        &self,
        entry: &str,
        token: &str,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Removes `entry` and its lease in one step (revoking a computation in
    /// flight); `true` if the entry existed.
    fn invalidate_entry(&self, entry: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Removes every entry registered in the tag set before this call (stored or
    /// being computed), with their leases, in batches — and what an earlier
    /// invalidation of the tag left when it was cut short; returns how many
    /// entries existed.
    fn invalidate_tag(&self, tag_key: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Makes `entry` stale at once (soft invalidation: its value stays, served
    /// within its `stale` window while one caller refreshes it) and revokes a
    /// computation of it in flight; `true` if the entry existed.
    fn expire_entry(&self, entry: &str) -> impl Future<Output = Result<bool>> + Send;
    /// [`expire_entry`](Backend::expire_entry) for every entry recorded in the
    /// tag set (which keeps them: they still carry the tag); returns how many
    /// existed.
    fn expire_tag(&self, tag_key: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Removes every entry whose full key matches the glob, and revokes the leases
    /// of matching entries being computed; returns how many entries existed.
    fn invalidate_pattern(&self, pattern: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Makes sure store announcements reach the waiters (the
    /// Redis subscriber is connected), waiting at most `limit`.
    fn listen(&self, limit: Duration) -> impl Future<Output = ()> + Send;
}

/// The store a cache uses.
#[derive(Debug)]
pub(crate) enum Store {
    /// Boxed: far larger than the others, and made once per cache.
    Redis(Box<redis::RedisStore>),
    Memory(memory::MemoryStore),
    Off(off::OffStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Redis($store) => $call,
            Store::Memory($store) => $call,
            Store::Off($store) => $call,
        }
    };
}

impl Backend for Store {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        dispatch!(self, store => store.get(key).await)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        dispatch!(self, store => store.get_many(keys).await)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        dispatch!(self, store => store.set(key, value, ttl).await)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        dispatch!(self, store => store.exists(key).await)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        dispatch!(self, store => store.ttl(key).await)
    }

    async fn ping(&self) -> Result<Duration> {
        dispatch!(self, store => store.ping().await)
    }

    async fn register(&self, entry: &str, record: Record<'_>) -> Result<()> {
        dispatch!(self, store => store.register(entry, record).await)
    }

    async fn acquire_lease(
        &self,
        entry: &str,
        token: &str,
        ttl: Duration,
        steal: bool,
        record: Record<'_>,
    ) -> Result<Acquired> {
        dispatch!(self, store => store.acquire_lease(entry, token, ttl, steal, record).await)
    }

    async fn renew_lease(&self, entry: &str, token: &str, ttl: Duration) -> Result<bool> {
        dispatch!(self, store => store.renew_lease(entry, token, ttl).await)
    }

    async fn release_lease(&self, entry: &str, token: &str) -> Result<()> {
        dispatch!(self, store => store.release_lease(entry, token).await)
    }

    async fn lease_held(&self, entry: &str) -> Result<bool> {
        dispatch!(self, store => store.lease_held(entry).await)
    }

    async fn store_leased(&self, entry: &str, token: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        dispatch!(self, store => store.store_leased(entry, token, value, ttl).await)
    }

    async fn invalidate_entry(&self, entry: &str) -> Result<bool> {
        dispatch!(self, store => store.invalidate_entry(entry).await)
    }

    async fn invalidate_tag(&self, tag_key: &str) -> Result<u64> {
        dispatch!(self, store => store.invalidate_tag(tag_key).await)
    }

    async fn expire_entry(&self, entry: &str) -> Result<bool> {
        dispatch!(self, store => store.expire_entry(entry).await)
    }

    async fn expire_tag(&self, tag_key: &str) -> Result<u64> {
        dispatch!(self, store => store.expire_tag(tag_key).await)
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        dispatch!(self, store => store.invalidate_pattern(pattern).await)
    }

    async fn listen(&self, limit: Duration) {
        dispatch!(self, store => store.listen(limit).await)
    }
}

impl Store {
    /// The entry at `key` if this process holds it: the memory store's own, or
    /// the tiered store's usable copy. A hit without a round trip, and without a
    /// decode once a hit kept the decoded value (see [`share`](crate::share)).
    pub(crate) fn in_process(&self, key: &str) -> Option<InProcess> {
        match self {
            Store::Redis(redis) => redis.copy(key),
            Store::Memory(memory) => memory.copy(key),
            Store::Off(_) => None,
        }
    }

    /// What this process holds: the memory store's entries or the tier's copies.
    pub(crate) fn in_process_size(&self) -> InProcessSize {
        match self {
            Store::Redis(redis) => redis.copies_size(),
            Store::Memory(memory) => memory.size(),
            Store::Off(_) => InProcessSize::default(),
        }
    }

    /// Whether [`in_process`](Store::in_process) can find anything: the memory
    /// store, or a tiered Redis store.
    pub(crate) fn keeps_in_process(&self) -> bool {
        match self {
            Store::Redis(redis) => redis.keeps_copies(),
            Store::Memory(_) => true,
            Store::Off(_) => false,
        }
    }

    /// Frees the lease of `entry` if `token` still holds it, without waiting:
    /// what a computation that was dropped mid-way (its caller cancelled) or
    /// whose store failed leaves behind. The memory store frees it now; the Redis
    /// store sends the release from a task of its own, which outlives the
    /// dropped future.
    pub(crate) fn release_detached(self: &Arc<Self>, entry: &str, token: &str) {
        match &**self {
            Store::Memory(store) => store.release_now(entry, token),
            Store::Redis(redis) => {
                let (store, entry, token) = (Arc::clone(self), entry.to_owned(), token.to_owned());
                // Retried for about a lease's length (the longest it could matter):
                // a release that times out behind a stalled server would otherwise
                // leave the lease for its full TTL.
                let release = async move {
                    let mut pause = Duration::from_millis(50);
                    for attempt in 1..=RELEASE_ATTEMPTS {
                        match store.release_lease(&entry, &token).await {
                            Ok(()) => return,
                            Err(error) if attempt == RELEASE_ATTEMPTS => {
                                tracing::debug!(target: "aside", entry = %crate::redact::Redacted(&entry), %error,
                                    "lease release failed; it expires on its own");
                            }
                            Err(_) => {
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(Duration::from_millis(500));
                            }
                        }
                    }
                };
                redis.spawn_background(release);
            }
            Store::Off(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique() {
        let tokens: std::collections::HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 1000);
    }
}
