//! The first tier of a tiered store (`CACHE_BACKEND=tiered`): a bounded
//! in-process copy of the entries this process read from Redis, served without
//! a round trip, kept coherent by the store's invalidation channel.
//!
//! # Coherence
//!
//! Every write to an entry made through aside, in any process whatever its own
//! backend — a store, a `set_json`, an invalidation of a key, a tag or a pattern,
//! an expiry — announces the entry keys it changed on the namespace's channel
//! from inside the same script, and the store's one subscriber evicts them here.
//! The invalidating process evicts its own copies before its call returns.
//!
//! A copy is used only while the channel is *confirmed*: the subscriber hears
//! this process's own heartbeat, published every [`BEAT`] on the same channel,
//! within [`CONFIRMED_FOR`]. Pub/sub delivers in order, so hearing a beat means
//! every announcement published before it was heard too. When the channel is
//! cut, lagging or resubscribing (a Redis restart, a failover, a client output
//! buffer kill), no beat arrives: the copies are dropped and the tier is
//! bypassed until the beats come back.
//!
//! A copy is filled from a `GET` only if no eviction of its key happened since
//! the `GET` was sent (a per-shard generation, checked under a per-shard lock
//! that evictions take too),
//! and it is served only while its entry is fresh: it never outlives the entry's
//! fresh life, which ends before its Redis TTL.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use moka::sync::Cache as Moka;
use moka::Expiry;

use crate::config::MemoryCapacity;
use crate::entry;
use crate::share::{InProcess, Resident};

/// How often the subscriber's process publishes its heartbeat.
pub(crate) const BEAT: Duration = Duration::from_millis(100);

/// How long a heard heartbeat keeps the tier usable.
const CONFIRMED_FOR: Duration = Duration::from_millis(500);

/// [`CONFIRMED_FOR`] in milliseconds, as hits compare it.
const CONFIRMED_FOR_MS: u64 = CONFIRMED_FOR.as_secs() * 1_000 + CONFIRMED_FOR.subsec_millis() as u64;

/// Generation shards: an eviction of one key stops fills of the keys of its shard only.
const SHARDS: usize = 64;

/// One entry's bytes, as read from Redis, when it stops being fresh, and the
/// value the bytes decode to once a hit kept it.
#[derive(Clone)]
struct Copy {
    resident: Resident,
    fresh_until: SystemTime,
}

impl crate::backend::Stored for Copy {
    fn resident(&self) -> &Resident {
        &self.resident
    }

    fn until(&self) -> SystemTime {
        self.fresh_until
    }
}

/// Expires each copy when its entry stops being fresh.
struct FreshLife;

impl Expiry<String, Copy> for FreshLife {
    fn expire_after_create(&self, _: &String, copy: &Copy, _: Instant) -> Option<Duration> {
        Some(copy.fresh_until.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// The first tier; see the module docs.
pub(crate) struct L1 {
    copies: crate::backend::InProcessMap<Copy>,
    generations: [AtomicU64; SHARDS],
    /// Per generation shard: held by a fill from its generation check through
    /// its insert, and by an eviction while it bumps the generation, so that
    /// no eviction lands between a fill's check and its insert.
    fills: [Mutex<()>; SHARDS],
    /// When this process last heard its own heartbeat, in Unix milliseconds,
    /// plus one; 0 for never (or since the subscription was lost). On the wall
    /// clock, which every hit reads anyway for the copy's freshness: a
    /// confirmation counts only from when it was heard, so a clock stepped
    /// back ends it rather than stretching it. An atomic, not a lock: every
    /// hit on a copy reads it.
    confirmed_at: AtomicU64,
    /// Whether copies may be served (and were, since they were last dropped).
    usable: AtomicBool,
    /// This process's heartbeat payload.
    beat: String,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("copies", &self.copies.entry_count())
            .field("usable", &self.usable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl L1 {
    /// A tier bounded by `capacity`, whose heartbeat is `beat` (unique per store).
    pub(crate) fn new(capacity: MemoryCapacity, beat: String) -> L1 {
        let copies = crate::backend::InProcessMap::bounded(Moka::builder().expire_after(FreshLife), capacity);
        L1 {
            copies,
            generations: std::array::from_fn(|_| AtomicU64::new(0)),
            fills: std::array::from_fn(|_| Mutex::new(())),
            confirmed_at: AtomicU64::new(0),
            usable: AtomicBool::new(false),
            beat,
        }
    }

    /// What the tier holds.
    pub(crate) fn size(&self) -> crate::backend::InProcessSize {
        self.copies.size()
    }

    /// The heartbeat this process publishes and listens for.
    pub(crate) fn beat(&self) -> &str {
        &self.beat
    }

    /// The copy of `key`, if the tier is usable and the copy fresh.
    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.copy(key).map(|copy| copy.resident.bytes().clone())
    }

    /// [`get`](L1::get), with the cell of the copy's decoded value.
    pub(crate) fn copy(&self, key: &str) -> Option<InProcess> {
        let now = SystemTime::now();
        if !self.check_usable(now) {
            return None;
        }
        let resident = self.copies.hit(key, now)?;
        Some(InProcess {
            resident,
            copy: true,
            looked_at: now,
        })
    }

    /// The generation of `key`'s shard: read before a `GET` whose answer may fill the tier.
    pub(crate) fn generation(&self, key: &str) -> u64 {
        self.generations[shard_of(key)].load(Ordering::Acquire)
    }

    /// Keeps a copy of `bytes`, read for `key` by a `GET` sent at `generation`,
    /// unless the key was evicted since, the entry is not fresh, or the tier is
    /// not usable.
    pub(crate) fn fill(&self, key: &str, bytes: &Bytes, generation: u64) {
        let now = SystemTime::now();
        if !self.check_usable(now) {
            return;
        }
        let Some(fresh_until) =
            entry::fresh_until(bytes).and_then(|ms| SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        else {
            return;
        };
        if fresh_until <= now {
            return;
        }
        let shard = shard_of(key);
        // An eviction waits for this insert, or this fill sees its generation.
        let _filling = lock(&self.fills[shard]);
        if self.generations[shard].load(Ordering::Acquire) != generation {
            return;
        }
        self.copies.insert(
            key.to_owned(),
            Copy {
                resident: Resident::new(bytes.clone()),
                fresh_until,
            },
        );
    }

    /// Drops the copy of `key` and stops fills from `GET`s sent before now.
    pub(crate) fn evict(&self, key: &str) {
        let shard = shard_of(key);
        {
            let _evicting = lock(&self.fills[shard]);
            self.generations[shard].fetch_add(1, Ordering::AcqRel);
        }
        self.copies.invalidate(key);
    }

    /// Drops every copy and stops fills from `GET`s sent before now.
    pub(crate) fn evict_all(&self) {
        for (generation, fills) in self.generations.iter().zip(&self.fills) {
            let _evicting = lock(fills);
            generation.fetch_add(1, Ordering::AcqRel);
        }
        self.copies.invalidate_all();
    }

    /// The subscriber heard this process's heartbeat.
    pub(crate) fn confirmed(&self) {
        self.confirmed_at
            .store(entry::unix_ms(SystemTime::now()).saturating_add(1), Ordering::Release);
    }

    /// The subscription was lost: nothing heard from now on can be trusted to be complete.
    pub(crate) fn lost(&self) {
        self.confirmed_at.store(0, Ordering::Release);
        self.usable.store(false, Ordering::Release);
        self.evict_all();
    }

    /// Whether copies may be served at `now`: the channel was confirmed within
    /// [`CONFIRMED_FOR`] before it (not after: the clock was stepped back).
    /// Drops the copies when it stopped being confirmed, and starts from none
    /// when it is confirmed again.
    fn check_usable(&self, now: SystemTime) -> bool {
        let heard = self.confirmed_at.load(Ordering::Acquire);
        let now = entry::unix_ms(now);
        let confirmed = heard != 0 && (heard - 1..(heard - 1).saturating_add(CONFIRMED_FOR_MS)).contains(&now);
        // Read first, written only on a change: hits on every core read this
        // flag, and a write on each would pass its cache line between them.
        if self.usable.load(Ordering::Acquire) != confirmed
            && self
                .usable
                .compare_exchange(!confirmed, confirmed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.evict_all();
        }
        confirmed
    }
}

/// The generation shard of `key`.
fn shard_of(key: &str) -> usize {
    let hash = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    usize::try_from(hash % SHARDS as u64).unwrap_or(0)
}

fn lock(mutex: &Mutex<()>) -> MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1() -> L1 {
        let l1 = L1::new(MemoryCapacity::Entries(100), "#test".to_owned());
        l1.confirmed();
        l1
    }

    fn fresh(value: &str) -> Bytes {
        Bytes::from(entry::encode(&value, Duration::from_secs(60)).unwrap())
    }

    #[test]
    fn a_fill_after_an_eviction_of_its_key_is_refused() {
        let l1 = l1();
        let seen = l1.generation("k");
        l1.evict("k");
        l1.fill("k", &fresh("old"), seen);
        assert_eq!(l1.get("k"), None);
        let seen = l1.generation("k");
        l1.fill("k", &fresh("new"), seen);
        let got = l1.get("k").expect("filled");
        assert_eq!(entry::decode::<String>(&got).unwrap().value, "new");
    }

    #[test]
    fn nothing_is_served_or_kept_while_the_channel_is_not_confirmed() {
        let l1 = L1::new(MemoryCapacity::Entries(100), "#test".to_owned());
        let seen = l1.generation("k");
        l1.fill("k", &fresh("v"), seen);
        assert_eq!(l1.get("k"), None, "never confirmed");
        l1.confirmed();
        assert_eq!(l1.get("k"), None, "nothing was kept before");
        let seen = l1.generation("k");
        l1.fill("k", &fresh("v"), seen);
        assert!(l1.get("k").is_some());
        l1.lost();
        assert_eq!(l1.get("k"), None);
        l1.confirmed();
        assert_eq!(l1.get("k"), None, "the copies were dropped when the channel was lost");
    }

    #[test]
    fn the_tier_stays_within_its_bound_with_ten_times_more_keys() {
        let l1 = L1::new(MemoryCapacity::Entries(100), "#test".to_owned());
        l1.confirmed();
        for n in 0..1_000 {
            let key = format!("k{n}");
            l1.fill(&key, &fresh("v"), l1.generation(&key));
        }
        l1.copies.run_pending_tasks();
        assert!(l1.copies.entry_count() <= 100, "{} copies", l1.copies.entry_count());
        let bytes = L1::new(MemoryCapacity::Bytes(10_000), "#test".to_owned());
        bytes.confirmed();
        for n in 0..1_000 {
            let key = format!("k{n}");
            bytes.fill(&key, &fresh("v"), bytes.generation(&key));
        }
        bytes.copies.run_pending_tasks();
        assert!(
            bytes.copies.weighted_size() <= 10_000,
            "{} bytes",
            bytes.copies.weighted_size()
        );
    }

    #[test]
    fn a_confirmation_counts_from_when_it_was_heard_for_its_length_only() {
        let l1 = l1();
        let now = SystemTime::now();
        assert!(l1.check_usable(now));
        assert!(
            !l1.check_usable(now - Duration::from_secs(1)),
            "the clock stepped back past the beat"
        );
        assert!(
            !l1.check_usable(now + CONFIRMED_FOR + Duration::from_millis(5)),
            "no beat heard since"
        );
        l1.confirmed();
        assert!(l1.check_usable(SystemTime::now()));
    }

    #[test]
    fn stale_entries_are_not_kept() {
        let l1 = l1();
        let stale = Bytes::from(entry::encode(&"v", Duration::ZERO).unwrap());
        l1.fill("k", &stale, l1.generation("k"));
        assert_eq!(l1.get("k"), None);
        l1.fill("junk", &Bytes::from_static(b"not an entry"), l1.generation("junk"));
        assert_eq!(l1.get("junk"), None);
    }
}
