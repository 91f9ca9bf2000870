//! The map of an in-process store (the memory store, the tiered store's first
//! tier): a bounded moka cache by full entry key, and in front of it each
//! thread's most recent hits.
//!
//! # Recent hits
//!
//! A moka `get` is most of an in-process hit: it hashes the key, reads a clock,
//! and records the read for its eviction policy in a channel that a later call
//! drains — and, with many tasks, writes memory that every core shares. A hot
//! key is looked up over and over for an entry that has not changed, so each
//! thread keeps its last hits in a few slots ([`SLOTS`]), by key, and answers
//! from them while the entry is unchanged:
//!
//! - **Unchanged.** Every change the map makes to a key (an insert, a removal,
//!   dropping everything) bumps, after it, the *epoch* of the key's shard. A
//!   slot remembers the epoch read before the moka `get` that found its entry,
//!   and answers only while that is still the shard's epoch. A change that lands
//!   after that read bumps it, so no slot outlives a change that returned: the
//!   same guarantee the map itself gives.
//! - **Live.** A slot answers only before the entry's own deadline and the end
//!   of its kept value's freshness, checked on the caller's clock reading.
//! - **Weak.** A slot holds a weak reference: it never keeps an entry the map
//!   dropped (capacity, expiry, invalidation) in memory, and such an entry is
//!   found again in the map or not at all.
//! - **Seen by the eviction policy.** Every [`SAMPLE`]th hit on a slot goes to
//!   moka instead, so a hot key keeps the frequency and recency that keep it in
//!   a full map.
//!
//! Only entries whose value a hit kept decoded are remembered: the slots serve
//! hits that need nothing but a clone.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::config::MemoryCapacity;
use crate::share::{Resident, WeakResident};
use crate::stats::InProcessSize;

/// What an in-process map keeps per key.
pub(crate) trait Stored: Clone + Send + Sync + 'static {
    /// The entry: its bytes and, once a hit kept it, their decoded value.
    fn resident(&self) -> &Resident;
    /// When the store stops answering with it.
    fn until(&self) -> SystemTime;
}

/// How an in-process store hashes its keys: foldhash, seeded at random per
/// store. Every hit hashes its full key once, and SipHash (moka's default) spent
/// about 330 instructions of a ~4,400-instruction memory hit on a 72-byte key;
/// foldhash's `quality` variant, made for hash tables and seeded per process as
/// SipHash is, takes a fraction of that.
pub(crate) type KeyHasher = foldhash::quality::RandomState;

/// How many recent hits each thread keeps, over all maps.
const SLOTS: usize = 16;

/// Every how many hits on a slot one goes to moka, for its eviction policy.
const SAMPLE: u32 = 16;

/// Epoch shards: a change of one key ends the slots of its shard's keys only.
const SHARDS: usize = 64;

/// An in-process store's entries by full key; see the module docs.
pub(crate) struct InProcessMap<V> {
    map: moka::sync::Cache<String, V, KeyHasher>,
    /// Tells this map's slots from other maps' in the same thread.
    id: u64,
    /// Boxed: the map is part of a store, which is moved about while built.
    epochs: Box<[AtomicU64; SHARDS]>,
    /// Picks a key's slot and shard (a fixed seed, the map's id: a collision
    /// costs a moka `get`, nothing more).
    hasher: foldhash::fast::FixedState,
}

/// One recent hit of this thread.
struct Slot {
    map: u64,
    hash: u64,
    key: String,
    epoch: u64,
    until: SystemTime,
    resident: WeakResident,
    hits: u32,
}

thread_local! {
    static RECENT: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

impl<V: Stored> InProcessMap<V> {
    /// A map of values by key, bounded by `capacity`: so many entries, or so
    /// many bytes of keys and values. One definition for the memory store and
    /// the tiered store's first tier, so `CACHE_MEMORY_CAPACITY` means the
    /// same in both.
    pub(crate) fn bounded(
        builder: moka::sync::CacheBuilder<String, V, moka::sync::Cache<String, V>>,
        capacity: MemoryCapacity,
    ) -> InProcessMap<V> {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let map = match capacity {
            MemoryCapacity::Entries(n) => builder.max_capacity(n).build_with_hasher(KeyHasher::default()),
            MemoryCapacity::Bytes(n) => builder
                .max_capacity(n)
                .weigher(|key: &String, value: &V| {
                    u32::try_from(key.len() + value.resident().bytes().len()).unwrap_or(u32::MAX)
                })
                .build_with_hasher(KeyHasher::default()),
        };
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        InProcessMap {
            map,
            id,
            epochs: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            // Seeded by the map: one key in two maps (a memory cache and a
            // tiered one of the same namespace) mostly lands in two slots.
            hasher: foldhash::fast::FixedState::with_seed(id),
        }
    }

    /// The value at `key` if it is live at `now` (moka's clock granularity lets
    /// an expired one through for a moment).
    pub(crate) fn get(&self, key: &str, now: SystemTime) -> Option<V> {
        self.map.get(key).filter(|value| now < value.until())
    }

    /// The entry at `key` if it is live at `now`: from this thread's recent
    /// hits when it is there, unchanged, and its kept value fresh; otherwise
    /// from the map (and then remembered, if its value is kept and fresh).
    pub(crate) fn hit(&self, key: &str, now: SystemTime) -> Option<Resident> {
        let hash = self.hasher.hash_one(key);
        let epoch = self.epoch(hash);
        if let Some(found) = self.recent(key, hash, epoch, now) {
            return Some(found);
        }
        let value = self.get(key, now)?;
        let resident = value.resident().clone();
        if let Some(fresh_until) = resident.fresh_until() {
            if now < fresh_until {
                self.remember(key, hash, epoch, &resident, fresh_until.min(value.until()));
            }
        }
        Some(resident)
    }

    /// Keeps `value` at `key` (replacing any).
    pub(crate) fn insert(&self, key: String, value: V) {
        let hash = self.hasher.hash_one(key.as_str());
        self.map.insert(key, value);
        self.changed(hash);
    }

    /// Drops the value at `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        self.map.invalidate(key);
        self.changed(self.hasher.hash_one(key));
    }

    /// Drops the value at `key` and returns it.
    pub(crate) fn remove(&self, key: &str) -> Option<V> {
        let removed = self.map.remove(key);
        self.changed(self.hasher.hash_one(key));
        removed
    }

    /// Drops every value.
    pub(crate) fn invalidate_all(&self) {
        self.map.invalidate_all();
        for epoch in self.epochs.iter() {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The keys held, for a scan.
    pub(crate) fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.map.iter().map(|(key, _)| key.to_string())
    }

    /// How many entries the map holds (approximately, as moka counts).
    pub(crate) fn entry_count(&self) -> u64 {
        self.map.entry_count()
    }

    /// Their weight: entries, or bytes of keys and values.
    #[cfg(test)]
    pub(crate) fn weighted_size(&self) -> u64 {
        self.map.weighted_size()
    }

    /// Runs moka's pending maintenance (evictions), so its counts are current.
    #[cfg(test)]
    pub(crate) fn run_pending_tasks(&self) {
        self.map.run_pending_tasks();
    }

    /// What the map holds once its pending evictions ran.
    pub(crate) fn size(&self) -> InProcessSize {
        self.map.run_pending_tasks();
        InProcessSize {
            entries: self.map.entry_count(),
            weight: self.map.weighted_size(),
        }
    }

    fn shard(&self, hash: u64) -> &AtomicU64 {
        &self.epochs[usize::try_from(hash % SHARDS as u64).unwrap_or(0)]
    }

    fn epoch(&self, hash: u64) -> u64 {
        self.shard(hash).load(Ordering::Acquire)
    }

    /// Ends the slots of `hash`'s shard: called after every change.
    fn changed(&self, hash: u64) {
        self.shard(hash).fetch_add(1, Ordering::AcqRel);
    }

    /// This thread's recent hit on `key`, if it is unchanged since (`epoch`
    /// is the shard's now) and live at `now`, and this is not a hit the map is
    /// to see.
    fn recent(&self, key: &str, hash: u64, epoch: u64, now: SystemTime) -> Option<Resident> {
        RECENT
            .try_with(|recent| {
                let mut recent = recent.try_borrow_mut().ok()?;
                let slot = recent[slot_of(hash)].as_mut()?;
                if slot.map != self.id || slot.hash != hash || slot.epoch != epoch || slot.key != key {
                    return None;
                }
                slot.hits = slot.hits.wrapping_add(1);
                if slot.hits % SAMPLE == 0 {
                    return None;
                }
                if now >= slot.until {
                    return None;
                }
                slot.resident.upgrade()
            })
            .ok()
            .flatten()
    }

    /// Remembers a hit on `key`, found in the map at `epoch`, to be answered
    /// until `until` (the end of its kept value's freshness or of the entry,
    /// whichever comes first).
    fn remember(&self, key: &str, hash: u64, epoch: u64, resident: &Resident, until: SystemTime) {
        let _ = RECENT.try_with(|recent| {
            let Ok(mut recent) = recent.try_borrow_mut() else {
                return;
            };
            let slot = &mut recent[slot_of(hash)];
            match slot {
                Some(slot) if slot.map == self.id && slot.key == key => {
                    slot.epoch = epoch;
                    slot.until = until;
                    if !slot.resident.is(resident) {
                        slot.resident = resident.downgrade();
                    }
                }
                Some(slot) => {
                    slot.map = self.id;
                    slot.hash = hash;
                    key.clone_into(&mut slot.key);
                    slot.epoch = epoch;
                    slot.until = until;
                    slot.resident = resident.downgrade();
                    slot.hits = 0;
                }
                None => {
                    *slot = Some(Slot {
                        map: self.id,
                        hash,
                        key: key.to_owned(),
                        epoch,
                        until,
                        resident: resident.downgrade(),
                        hits: 0,
                    });
                }
            }
        });
    }
}

/// The slot of a key's hash (its high bits; the shard takes the low ones).
fn slot_of(hash: u64) -> usize {
    usize::try_from(hash >> 60).unwrap_or(0) % SLOTS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::entry::Entry;
    use crate::share::Cloned;

    #[derive(Clone)]
    struct Value {
        resident: Resident,
        until: SystemTime,
    }

    impl Stored for Value {
        fn resident(&self) -> &Resident {
            &self.resident
        }

        fn until(&self) -> SystemTime {
            self.until
        }
    }

    fn map() -> InProcessMap<Value> {
        InProcessMap::bounded(moka::sync::Cache::builder(), MemoryCapacity::Entries(1_000))
    }

    /// An entry of `value` whose decoded value is kept, fresh for `fresh`,
    /// held until `held`.
    fn kept(value: &str, fresh: Duration, held: Duration) -> Value {
        let resident = Resident::new(Bytes::from(value.to_owned()));
        let entry = Entry {
            value: value.to_owned(),
            fresh_until_ms: crate::entry::unix_ms(SystemTime::now() + fresh),
        };
        resident.keep(Cloned, &entry);
        Value {
            resident,
            until: SystemTime::now() + held,
        }
    }

    fn long(value: &str) -> Value {
        kept(value, Duration::from_secs(600), Duration::from_secs(600))
    }

    /// The value a hit on `key` hands out, as a `#[cached]` hit would take it.
    fn hit(map: &InProcessMap<Value>, key: &str) -> Option<String> {
        let now = SystemTime::now();
        let resident = map.hit(key, now)?;
        Some(resident.take_fresh::<String>(Cloned, now)?.value)
    }

    /// Hits `key` enough times that this thread answers it from its slot.
    fn hot(map: &InProcessMap<Value>, key: &str) -> Option<String> {
        let first = hit(map, key);
        for _ in 0..2 {
            assert_eq!(hit(map, key), first, "a hit from the slot answers as the map did");
        }
        first
    }

    #[test]
    fn no_recent_hit_outlives_a_change_of_its_key() {
        let map = map();
        map.insert("k".to_owned(), long("one"));
        assert_eq!(hot(&map, "k").as_deref(), Some("one"));
        map.insert("k".to_owned(), long("two"));
        assert_eq!(hit(&map, "k").as_deref(), Some("two"), "replaced");
        assert_eq!(hot(&map, "k").as_deref(), Some("two"));
        map.invalidate("k");
        assert_eq!(hit(&map, "k"), None, "invalidated");
        map.insert("k".to_owned(), long("three"));
        assert_eq!(hot(&map, "k").as_deref(), Some("three"));
        assert!(map.remove("k").is_some());
        assert_eq!(hit(&map, "k"), None, "removed");
        map.insert("k".to_owned(), long("four"));
        assert_eq!(hot(&map, "k").as_deref(), Some("four"));
        map.invalidate_all();
        assert_eq!(hit(&map, "k"), None, "all dropped");
    }

    #[test]
    fn a_change_made_on_another_thread_ends_this_threads_recent_hit() {
        let map = map();
        map.insert("k".to_owned(), long("old"));
        assert_eq!(hot(&map, "k").as_deref(), Some("old"));
        std::thread::scope(|scope| {
            scope.spawn(|| map.insert("k".to_owned(), long("new")));
        });
        assert_eq!(hit(&map, "k").as_deref(), Some("new"));
        std::thread::scope(|scope| {
            scope.spawn(|| map.invalidate("k"));
        });
        assert_eq!(hit(&map, "k"), None);
    }

    #[test]
    fn a_hot_key_answered_from_its_slot_stays_in_a_full_map() {
        let map: InProcessMap<Value> =
            InProcessMap::bounded(moka::sync::Cache::builder(), MemoryCapacity::Entries(100));
        map.insert("hot".to_owned(), long("hot"));
        for n in 0..5_000 {
            for _ in 0..20 {
                assert_eq!(hit(&map, "hot").as_deref(), Some("hot"), "after {n} cold keys");
            }
            // Each cold key read a few times through moka (more often than
            // moka would see the hot key, were its slot's hits not sampled).
            let cold = format!("cold-{n}");
            map.insert(cold.clone(), long("cold"));
            for _ in 0..5 {
                let _ = map.get(&cold, SystemTime::now());
            }
            if n % 100 == 0 {
                map.run_pending_tasks();
            }
        }
    }

    #[test]
    fn two_maps_with_the_same_key_answer_their_own_values() {
        let (one, other) = (map(), map());
        one.insert("k".to_owned(), long("one"));
        other.insert("k".to_owned(), long("other"));
        for _ in 0..3 {
            assert_eq!(hot(&one, "k").as_deref(), Some("one"));
            assert_eq!(hot(&other, "k").as_deref(), Some("other"));
        }
    }

    #[test]
    fn a_recent_hit_ends_with_its_entry_or_its_freshness() {
        let map = map();
        map.insert(
            "short-lived".to_owned(),
            kept("v", Duration::from_secs(600), Duration::from_millis(100)),
        );
        map.insert(
            "short-fresh".to_owned(),
            kept("v", Duration::from_millis(100), Duration::from_secs(600)),
        );
        assert_eq!(hot(&map, "short-lived").as_deref(), Some("v"));
        assert_eq!(hot(&map, "short-fresh").as_deref(), Some("v"));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(hit(&map, "short-lived"), None, "past the entry's deadline");
        let now = SystemTime::now();
        let resident = map.hit("short-fresh", now).expect("live, stale");
        assert!(resident.take_fresh::<String>(Cloned, now).is_none(), "stale");
    }

    #[test]
    fn a_recent_hit_does_not_keep_a_dropped_entry_in_memory() {
        let map = map();
        map.insert("k".to_owned(), long("v"));
        assert_eq!(hot(&map, "k").as_deref(), Some("v"));
        let resident = map.hit("k", SystemTime::now()).expect("held");
        let weak = resident.downgrade();
        drop(resident);
        map.invalidate("k");
        map.run_pending_tasks();
        assert!(weak.upgrade().is_none(), "the slot still held the entry");
    }

    #[test]
    fn entries_without_a_kept_value_are_not_remembered_and_still_found() {
        let map = map();
        let plain = Value {
            resident: Resident::new(Bytes::from_static(b"bytes")),
            until: SystemTime::now() + Duration::from_secs(600),
        };
        map.insert("k".to_owned(), plain);
        for _ in 0..3 {
            let resident = map.hit("k", SystemTime::now()).expect("live");
            assert_eq!(resident.bytes().as_ref(), b"bytes");
        }
    }
}
