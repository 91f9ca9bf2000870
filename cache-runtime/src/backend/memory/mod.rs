//! The in-process store: a bounded moka cache with a TTL per entry, plus leases
//! under one lock and tag sets in shards, mirroring what Redis keeps.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use moka::sync::Cache as Moka;
use moka::Expiry;

mod glob;

use super::{Acquired, Backend, Record, Wake};
use crate::config::MemoryCapacity;
use crate::error::Result;
use crate::share::{InProcess, Resident};

#[derive(Clone, Debug)]
struct Slot {
    /// The bytes, and the value they decode to once a hit kept it.
    resident: Resident,
    /// When the entry expires, on the wall clock, as Redis (which this store
    /// mirrors) expires keys: the clock a kept value's freshness is judged by
    /// too, so a hit reads one clock.
    expires_at: SystemTime,
}

impl Slot {
    fn new(value: Bytes, expires_at: SystemTime) -> Slot {
        Slot {
            resident: Resident::new(value),
            expires_at,
        }
    }

    /// How long the entry has left at `now`.
    fn left(&self, now: SystemTime) -> Duration {
        self.expires_at.duration_since(now).unwrap_or_default()
    }

    fn value(&self) -> Bytes {
        self.resident.bytes().clone()
    }
}

impl super::Stored for Slot {
    fn resident(&self) -> &Resident {
        &self.resident
    }

    fn until(&self) -> SystemTime {
        self.expires_at
    }
}

struct ExpiresAt;

impl Expiry<String, Slot> for ExpiresAt {
    fn expire_after_create(&self, _: &String, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.left(SystemTime::now()))
    }

    fn expire_after_update(&self, _: &String, slot: &Slot, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(slot.left(SystemTime::now()))
    }
}

#[derive(Debug)]
struct Lease {
    token: String,
    expires_at: Instant,
}

/// Tag-set shards: registrations and invalidations of different tags mostly
/// take different locks, and none walks every set.
const TAG_SHARDS: usize = 64;
/// How often a shard drops the sets whose members have all expired.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct TagSet {
    /// Entry key → when its entry expires at the latest.
    members: HashMap<Arc<str>, Instant>,
    /// The same members ordered by that time, for pruning.
    by_expiry: BTreeSet<(Instant, Arc<str>)>,
    expires_at: Instant,
}

impl TagSet {
    fn new(now: Instant) -> TagSet {
        TagSet {
            members: HashMap::new(),
            by_expiry: BTreeSet::new(),
            expires_at: now,
        }
    }

    /// Records `entry` as expiring at `expires` at the latest (a later record
    /// wins), then prunes the members whose entries have expired.
    fn record(&mut self, entry: &str, expires: Instant, now: Instant) {
        match self.members.get_mut(entry) {
            Some(known) if *known >= expires => {}
            Some(known) => {
                let member = self
                    .by_expiry
                    .take(&(*known, Arc::from(entry)))
                    .map_or_else(|| Arc::from(entry), |(_, member)| member);
                *known = expires;
                self.by_expiry.insert((expires, member));
            }
            None => {
                let member: Arc<str> = Arc::from(entry);
                self.members.insert(Arc::clone(&member), expires);
                self.by_expiry.insert((expires, member));
            }
        }
        while let Some((expired, _)) = self.by_expiry.first() {
            if *expired >= now {
                break;
            }
            if let Some((_, member)) = self.by_expiry.pop_first() {
                self.members.remove(&member);
            }
        }
    }
}

/// One shard of the tag sets.
#[derive(Debug, Default)]
struct TagShard {
    sets: HashMap<String, TagSet>,
    next_sweep: Option<Instant>,
}

impl TagShard {
    /// Drops the sets nobody registered in for their whole lifetime, at most
    /// once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| at > now) {
            return;
        }
        self.sets.retain(|_, set| set.expires_at > now);
        self.next_sweep = Some(now + SWEEP_EVERY);
    }
}

/// Entries as encoded bytes, exactly as Redis would hold them, so both backends
/// verify and decode (and fail to) the same way; each with the cell of its
/// decoded value, which hits of `Clone` types clone out (see [`crate::share`]).
pub(crate) struct MemoryStore {
    entries: super::InProcessMap<Slot>,
    /// Lock order: a tag shard before `leases`; never two shards at once.
    tags: Box<[Mutex<TagShard>]>,
    leases: Mutex<HashMap<String, Lease>>,
    /// Lease requests so far; every [`LEASE_SWEEP_EVERY`]th sweeps expired leases.
    lease_requests: AtomicU64,
    wake: Arc<dyn Wake>,
}

/// How many lease requests pass between two sweeps of expired leases (leases
/// of computations that were never finished, nor released: a panicking
/// computation, or a lease taken just before its caller was dropped).
const LEASE_SWEEP_EVERY: u64 = 1024;

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    pub(crate) fn new(capacity: MemoryCapacity, wake: Arc<dyn Wake>) -> MemoryStore {
        let entries = super::InProcessMap::bounded(Moka::builder().expire_after(ExpiresAt), capacity);
        MemoryStore {
            entries,
            tags: (0..TAG_SHARDS).map(|_| Mutex::default()).collect(),
            leases: Mutex::new(HashMap::new()),
            lease_requests: AtomicU64::new(0),
            wake,
        }
    }

    /// What the store holds.
    pub(crate) fn size(&self) -> super::InProcessSize {
        self.entries.size()
    }

    /// The entry at `key` unless it expired.
    fn live(&self, key: &str) -> Option<Slot> {
        self.entries.get(key, SystemTime::now())
    }

    /// The entry at `key` with its decoded value, for a hit that needs no
    /// decode when the value is kept.
    pub(crate) fn copy(&self, key: &str) -> Option<InProcess> {
        let now = SystemTime::now();
        self.entries.hit(key, now).map(|resident| InProcess {
            resident,
            copy: false,
            looked_at: now,
        })
    }

    /// The lease of `entry` if it is held and not expired.
    fn held<'a>(leases: &'a mut HashMap<String, Lease>, entry: &str) -> Option<&'a Lease> {
        if leases
            .get(entry)
            .is_some_and(|lease| lease.expires_at <= Instant::now())
        {
            leases.remove(entry);
        }
        leases.get(entry)
    }

    /// Whether `token` holds the lease of `entry`.
    fn holds(&self, entry: &str, token: &str) -> bool {
        Self::held(&mut lock(&self.leases), entry).is_some_and(|lease| lease.token == token)
    }

    /// Records `entry` in each of its tag sets (see [`Backend::register`]).
    fn record(&self, entry: &str, record: Record<'_>) {
        let now = Instant::now();
        for tag_key in record.tag_keys {
            let mut shard = self.tag_shard(tag_key);
            shard.sweep(now);
            let set = shard.sets.entry(tag_key.clone()).or_insert_with(|| TagSet::new(now));
            if set.expires_at <= now {
                *set = TagSet::new(now);
            }
            set.record(entry, now + record.lifetime, now);
            set.expires_at = set.expires_at.max(now + record.lifetime.min(record.ceiling));
        }
    }

    /// Frees the lease of `entry` if `token` holds it, and wakes its waiters.
    pub(crate) fn release_now(&self, entry: &str, token: &str) {
        let released = {
            let mut leases = lock(&self.leases);
            let held = leases.get(entry).is_some_and(|lease| lease.token == token);
            if held {
                leases.remove(entry);
            }
            held
        };
        if released {
            self.wake.wake(entry);
        }
    }

    /// The shard that holds `tag_key`'s set.
    fn tag_shard(&self, tag_key: &str) -> MutexGuard<'_, TagShard> {
        let hash = xxhash_rust::xxh3::xxh3_64(tag_key.as_bytes());
        let index = usize::try_from(hash % TAG_SHARDS as u64).unwrap_or(0);
        lock(&self.tags[index])
    }

    /// Makes `entry` stale (see [`Backend::expire_entry`]) and revokes its lease.
    fn expire_now(&self, entry: &str) -> bool {
        let mut leases = lock(&self.leases);
        leases.remove(entry);
        let Some(slot) = self.live(entry) else {
            return false;
        };
        match crate::entry::expired(slot.resident.bytes()) {
            Some(stale) => self
                .entries
                .insert(entry.to_owned(), Slot::new(Bytes::from(stale), slot.expires_at)),
            // Not an entry of a cached function: nothing to serve stale.
            None => self.entries.invalidate(entry),
        }
        true
    }

    fn remove_entry_and_lease(&self, entry: &str) -> bool {
        let mut leases = lock(&self.leases);
        leases.remove(entry);
        self.entries
            .remove(entry)
            .is_some_and(|slot| slot.expires_at > SystemTime::now())
    }
}

impl Backend for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.live(key).map(|slot| slot.value()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        Ok(keys.iter().map(|key| self.live(key).map(|slot| slot.value())).collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.entries
            .insert(key.to_owned(), Slot::new(value, SystemTime::now() + ttl));
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.live(key).is_some())
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        let now = SystemTime::now();
        Ok(self.entries.get(key, now).map(|slot| slot.left(now)))
    }

    async fn ping(&self) -> Result<Duration> {
        Ok(Duration::ZERO)
    }

    async fn register(&self, entry: &str, record: Record<'_>) -> Result<()> {
        self.record(entry, record);
        Ok(())
    }

    async fn acquire_lease(
        &self,
        entry: &str,
        token: &str,
        ttl: Duration,
        steal: bool,
        record: Record<'_>,
    ) -> Result<Acquired> {
        {
            let mut leases = lock(&self.leases);
            if self.lease_requests.fetch_add(1, Ordering::Relaxed) % LEASE_SWEEP_EVERY == LEASE_SWEEP_EVERY - 1 {
                let now = Instant::now();
                leases.retain(|_, lease| lease.expires_at > now);
            }
            if !steal && Self::held(&mut leases, entry).is_some() {
                return Ok(Acquired::Busy);
            }
            leases.insert(
                entry.to_owned(),
                Lease {
                    token: token.to_owned(),
                    expires_at: Instant::now() + ttl,
                },
            );
        }
        // Recorded after the lease is taken (see the protocol in `lock`), with
        // the leases unlocked: invalidations lock tag sets, then leases.
        self.record(entry, record);
        // An invalidation between the two revoked the lease: say so now,
        // before a computation starts on it.
        if !steal && !self.holds(entry, token) {
            return Ok(Acquired::Busy);
        }
        Ok(Acquired::Taken(if steal {
            None
        } else {
            self.live(entry).map(|slot| slot.value())
        }))
    }

    async fn renew_lease(&self, entry: &str, token: &str, ttl: Duration) -> Result<bool> {
        let mut leases = lock(&self.leases);
        Self::held(&mut leases, entry);
        match leases.get_mut(entry) {
            Some(lease) if lease.token == token => {
                lease.expires_at = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, entry: &str, token: &str) -> Result<()> {
        self.release_now(entry, token);
        Ok(())
    }

    async fn lease_held(&self, entry: &str) -> Result<bool> {
        Ok(Self::held(&mut lock(&self.leases), entry).is_some())
    }

    async fn store_leased(&self, entry: &str, token: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        {
            let mut leases = lock(&self.leases);
            if Self::held(&mut leases, entry).is_none_or(|lease| lease.token != token) {
                return Ok(false);
            }
            leases.remove(entry);
            self.entries
                .insert(entry.to_owned(), Slot::new(value, SystemTime::now() + ttl));
        }
        self.wake.wake(entry);
        Ok(true)
    }

    async fn invalidate_entry(&self, entry: &str) -> Result<bool> {
        Ok(self.remove_entry_and_lease(entry))
    }

    async fn invalidate_tag(&self, tag_key: &str) -> Result<u64> {
        let members = self
            .tag_shard(tag_key)
            .sets
            .remove(tag_key)
            .map(|set| set.members)
            .unwrap_or_default();
        Ok(members
            .keys()
            .map(|entry| u64::from(self.remove_entry_and_lease(entry)))
            .sum())
    }

    async fn expire_entry(&self, entry: &str) -> Result<bool> {
        Ok(self.expire_now(entry))
    }

    async fn expire_tag(&self, tag_key: &str) -> Result<u64> {
        let members: Vec<Arc<str>> = {
            let mut shard = self.tag_shard(tag_key);
            shard.sweep(Instant::now());
            shard
                .sets
                .get(tag_key)
                .map(|set| set.members.keys().cloned().collect())
                .unwrap_or_default()
        };
        Ok(members.iter().map(|entry| u64::from(self.expire_now(entry))).sum())
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let leased: Vec<String> = lock(&self.leases)
            .keys()
            .filter(|k| glob::matches(pattern, k))
            .cloned()
            .collect();
        let stored: Vec<String> = self.entries.keys().filter(|k| glob::matches(pattern, k)).collect();
        let mut removed = 0;
        for entry in leased.iter().chain(&stored) {
            removed += u64::from(self.remove_entry_and_lease(entry));
        }
        Ok(removed)
    }

    async fn listen(&self, _: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self, _: &str) {}
    }

    /// The record of an entry in `tag_keys`, living `lifetime`, under a one-day ceiling.
    fn record(tag_keys: &[String], lifetime: Duration) -> Record<'_> {
        Record {
            tag_keys,
            lifetime,
            ceiling: Duration::from_secs(86_400),
        }
    }

    #[tokio::test]
    async fn expired_leases_are_swept() {
        let store = MemoryStore::new(MemoryCapacity::Entries(100), Arc::new(NoWake));
        for n in 0..LEASE_SWEEP_EVERY {
            let taken = store
                .acquire_lease(
                    &format!("left:{n}"),
                    "t",
                    // Long enough to still be held when the acquisition checks
                    // it on a loaded machine (1 ms was not), short to wait out.
                    Duration::from_millis(100),
                    false,
                    record(&[], DAY),
                )
                .await
                .unwrap();
            assert!(matches!(taken, Acquired::Taken(None)));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        for n in 0..LEASE_SWEEP_EVERY {
            store
                .acquire_lease(
                    &format!("live:{n}"),
                    "t",
                    Duration::from_secs(60),
                    false,
                    record(&[], DAY),
                )
                .await
                .unwrap();
        }
        let held = lock(&store.leases).len();
        assert!(
            held <= usize::try_from(LEASE_SWEEP_EVERY).unwrap(),
            "the abandoned leases were swept: {held} held"
        );
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn store() -> MemoryStore {
        MemoryStore::new(MemoryCapacity::Entries(1_000), Arc::new(NoWake))
    }

    fn members(store: &MemoryStore, tag_key: &str) -> Vec<String> {
        let shard = store.tag_shard(tag_key);
        let mut members: Vec<String> = shard
            .sets
            .get(tag_key)
            .map(|set| set.members.keys().map(|m| m.to_string()).collect())
            .unwrap_or_default();
        members.sort();
        members
    }

    fn shard_of(tag_key: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(tag_key.as_bytes()) % TAG_SHARDS as u64
    }

    #[tokio::test]
    async fn members_go_when_their_entries_expire_not_after_a_fixed_horizon() {
        let store = store();
        let tag = ["t".to_owned()];
        store
            .register("short", record(&tag, Duration::from_millis(20)))
            .await
            .unwrap();
        store
            .register("long", record(&tag, Duration::from_secs(60)))
            .await
            .unwrap();
        // A shorter record never shortens a member's life.
        store
            .register("long", record(&tag, Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        store
            .register("new", record(&tag, Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(members(&store, "t"), ["long", "new"]);
    }

    #[tokio::test]
    async fn sets_whose_members_all_expired_are_swept_from_their_shard() {
        let store = store();
        let neighbour = (0..)
            .map(|i| format!("n{i}"))
            .find(|n| shard_of(n) == shard_of("gone"))
            .unwrap();
        store
            .register("e", record(&["gone".to_owned()], Duration::from_millis(20)))
            .await
            .unwrap();
        tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(50)).await;
        store
            .register("e", record(std::slice::from_ref(&neighbour), Duration::from_secs(60)))
            .await
            .unwrap();
        let shard = store.tag_shard("gone");
        assert!(
            !shard.sets.contains_key("gone"),
            "an expired set goes at the next sweep"
        );
        assert!(shard.sets.contains_key(&neighbour));
    }

    #[tokio::test]
    async fn invalidate_tag_counts_live_entries_of_the_set_only() {
        let store = store();
        let tag = ["t".to_owned()];
        for entry in ["a", "b", "c"] {
            store
                .set(entry, Bytes::from_static(b"1"), Duration::from_secs(60))
                .await
                .unwrap();
            store
                .register(entry, record(&tag, Duration::from_secs(60)))
                .await
                .unwrap();
        }
        store.invalidate_entry("c").await.unwrap();
        store
            .set("untagged", Bytes::from_static(b"1"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.invalidate_tag("t").await.unwrap(), 2);
        assert_eq!(store.invalidate_tag("t").await.unwrap(), 0);
        assert!(store.exists("untagged").await.unwrap());
    }
}
