//! Decoded values kept in process: a `#[cached]` function whose value type can
//! be cloned (`Clone + Send + Sync + 'static`) is served from the memory store
//! and from a tiered store's copies by cloning the value the first hit decoded,
//! not by decoding the entry's bytes on every hit; any other type is decoded
//! every time. What is kept never outlives what it was decoded from: an
//! invalidation, a new value or the end of the fresh life ends it.
//!
//! What a user notices is counted on the value type itself: how many times it
//! was deserialized, and what the calls returned.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use aside::{cached, Cache, CacheStatus, MemoryCapacity, Plain, Policy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use support::Fixture;

mod support;

on_backends!(
    [memory, redis, cluster]
    hits_clone_the_kept_value_instead_of_decoding,
    an_invalidation_ends_the_kept_value,
    a_kept_value_is_not_served_past_its_fresh_life,
    no_call_after_a_write_returned_answers_an_older_value,
    what_is_held_in_process_stays_within_its_capacity,
);

on_backends!(
    [memory]
    a_type_that_cannot_be_cloned_is_decoded_on_every_hit,
    generic_and_borrowing_functions_still_work,
);

/// Deserializations per name, across the tests of this binary.
static DECODED: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

fn decoded(name: &str) -> usize {
    DECODED.lock().unwrap().get(name).copied().unwrap_or(0)
}

fn count_decode(name: &str) {
    *DECODED.lock().unwrap().entry(name.to_owned()).or_default() += 1;
}

/// A stored value that counts its own deserializations.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Counted {
    name: String,
    n: usize,
    rows: Vec<u64>,
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            name: String,
            n: usize,
            rows: Vec<u64>,
        }
        let raw = Raw::deserialize(d)?;
        count_decode(&raw.name);
        Ok(Counted {
            name: raw.name,
            n: raw.n,
            rows: raw.rows,
        })
    }
}

/// The same, without `Clone`.
#[derive(Debug, PartialEq, Serialize)]
struct Unclonable {
    name: String,
}

impl<'de> Deserialize<'de> for Unclonable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            name: String,
        }
        let raw = Raw::deserialize(d)?;
        count_decode(&raw.name);
        Ok(Unclonable { name: raw.name })
    }
}

#[cached(ttl = 300, skip(cache, runs), cache = cache)]
async fn counted(cache: &Cache, name: &str, runs: &AtomicUsize) -> Result<Counted, Infallible> {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(Counted {
        name: name.to_owned(),
        n,
        rows: (0..64).collect(),
    })
}

#[cached(ttl = 1, stale = 60, skip(cache, runs), cache = cache)]
async fn short_lived(cache: &Cache, name: &str, runs: &AtomicUsize) -> Counted {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    Counted {
        name: name.to_owned(),
        n,
        rows: vec![],
    }
}

#[cached(ttl = 300, skip(cache, runs), cache = cache)]
async fn unclonable(cache: &Cache, name: &str, runs: &AtomicUsize) -> Option<Unclonable> {
    runs.fetch_add(1, Ordering::SeqCst);
    Some(Unclonable { name: name.to_owned() })
}

/// A cache on the fixture whose in-process tier serves hits: the memory store,
/// or a tiered store whose channel is confirmed.
async fn in_process(fx: &Fixture) -> Cache {
    if fx.is_memory() {
        return fx.cache().await;
    }
    let cache = fx.builder().tiered().build().await.expect("a tiered cache");
    // A few heartbeats: the tier serves once its channel is confirmed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    cache
}

/// A name no other test of this binary uses.
fn name(test: &str, fx: &Fixture) -> String {
    let backend = match fx.server {
        support::Server::Memory => "memory",
        support::Server::Single(_) => "redis",
        support::Server::Cluster(_) => "cluster",
    };
    format!("{test}-{backend}")
}

async fn hits_clone_the_kept_value_instead_of_decoding(fx: Fixture) {
    let cache = in_process(&fx).await;
    let name = name("hits", &fx);
    let runs = AtomicUsize::new(0);
    let first = counted(&cache, &name, &runs).await.unwrap();
    if !fx.is_memory() {
        // The announcement of the store evicts what a read before it copied:
        // let it arrive, then let a read fill the copy and a hit decode it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for _ in 0..2 {
            assert_eq!(counted(&cache, &name, &runs).await.unwrap(), first);
        }
    }
    let before = decoded(&name);
    for _ in 0..50 {
        let (hit, status) = counted_with_status(&cache, &name, &runs).await;
        assert_eq!((hit.unwrap(), status), (first.clone(), CacheStatus::Hit));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // One decode per hit without the kept value. With it: the first hit on the
    // memory store; none on a warm tiered copy, or a few when a loaded machine
    // delays the heartbeats past their confirmation and the tier starts over.
    let during = decoded(&name) - before;
    let most = if fx.is_memory() { 1 } else { 10 };
    assert!(
        during <= most,
        "{during} decodes for 50 hits: the kept value was not used"
    );
    if !fx.is_memory() {
        let stats = cache.stats().function("computed:counted");
        assert!(stats.l1_hits >= 40, "{} L1 hits of 52", stats.l1_hits);
    }
}

async fn an_invalidation_ends_the_kept_value(fx: Fixture) {
    let cache = in_process(&fx).await;
    let name = name("invalidated", &fx);
    let runs = AtomicUsize::new(0);
    let first = counted(&cache, &name, &runs).await.unwrap();
    assert_eq!(counted(&cache, &name, &runs).await.unwrap(), first);
    assert_eq!(counted(&cache, &name, &runs).await.unwrap(), first, "served kept");
    assert!(counted_invalidate(&cache, &name).await.unwrap());
    let second = counted(&cache, &name, &runs).await.unwrap();
    assert_eq!((first.n, second.n), (1, 2), "the invalidated value was served");
    for _ in 0..5 {
        assert_eq!(counted(&cache, &name, &runs).await.unwrap(), second);
    }
    // A new value written over the entry (a refresh) ends it too.
    let third = counted_refresh(&cache, &name, &runs).await.unwrap();
    assert_eq!(third.n, 3);
    assert_eq!(counted(&cache, &name, &runs).await.unwrap(), third);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// Tasks on both workers hit one key over and over while it is refreshed and
/// invalidated: once a write returned, no call that starts after it answers a
/// value older than the write (each thread answers a hot key from its own
/// recent hits, which every change must end).
async fn no_call_after_a_write_returned_answers_an_older_value(fx: Fixture) {
    let cache = in_process(&fx).await;
    let name = name("linear", &fx);
    let runs = Arc::new(AtomicUsize::new(0));
    // The lowest `n` a call starting now may answer.
    let floor = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    counted(&cache, &name, &runs).await.unwrap();
    let hitters: Vec<_> = (0..8)
        .map(|_| {
            let (cache, name, runs) = (cache.clone(), name.clone(), Arc::clone(&runs));
            let (floor, stop) = (Arc::clone(&floor), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut calls = 0;
                while !stop.load(Ordering::SeqCst) {
                    let lowest = floor.load(Ordering::SeqCst);
                    let got = counted(&cache, &name, &runs).await.unwrap().n;
                    assert!(
                        got >= lowest,
                        "answered {got} after a write that made {lowest} the oldest"
                    );
                    calls += 1;
                    if calls % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                calls
            })
        })
        .collect();
    for round in 0..100 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if round % 2 == 0 {
            let written = counted_refresh(&cache, &name, &runs).await.unwrap().n;
            floor.store(written, Ordering::SeqCst);
        } else {
            // What any computation started before the invalidation counted.
            let before = runs.load(Ordering::SeqCst);
            assert!(counted_invalidate(&cache, &name).await.is_ok());
            floor.store(before + 1, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut calls = 0;
    for hitter in hitters {
        calls += hitter.await.expect("a hitter saw an older value");
    }
    assert!(calls > 1_000, "only {calls} calls: the check checked little");
}

/// Ten times more ~1 KB entries than fit, read through a store bounded at
/// 100 KB (the memory store, or a tier): what it holds, as `Cache::stats`
/// reports it, stays within the bound, and is not nothing.
async fn what_is_held_in_process_stays_within_its_capacity(fx: Fixture) {
    const BOUND: u64 = 100_000;
    let builder = fx.builder().memory_capacity(MemoryCapacity::Bytes(BOUND));
    let cache = if fx.is_memory() {
        builder.build().await.expect("a memory cache")
    } else {
        let cache = builder.tiered().build().await.expect("a tiered cache");
        tokio::time::sleep(Duration::from_millis(400)).await;
        cache
    };
    let policy = Policy::new(Duration::from_secs(300));
    let page = "x".repeat(1_000);
    for pass in 0..2 {
        for n in 0..1_000 {
            let Plain(value) = cache
                .get_or_compute(format!("held-{n}"), &policy, || async { Plain(page.clone()) })
                .await;
            assert_eq!(value.len(), 1_000, "pass {pass}, entry {n}");
        }
        if pass == 0 && !fx.is_memory() {
            // The stores' announcements evict the copies their reads made.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let held = cache.stats().in_process;
    assert!(held.weight <= BOUND, "{held:?} over {BOUND} bytes");
    assert!(held.entries > 10, "{held:?}: nothing kept");
    assert!(held.entries < 110, "{held:?}: ~1 KB each cannot be more than 100");
    let untiered = fx.builder().build().await.expect("a cache");
    if !fx.is_memory() {
        assert_eq!(
            untiered.stats().in_process.entries,
            0,
            "Redis without a tier holds nothing"
        );
    }
}

async fn a_kept_value_is_not_served_past_its_fresh_life(fx: Fixture) {
    let cache = in_process(&fx).await;
    let name = name("fresh-life", &fx);
    let runs = AtomicUsize::new(0);
    let first = short_lived(&cache, &name, &runs).await;
    let (hit, status) = short_lived_with_status(&cache, &name, &runs).await;
    assert_eq!((hit, status), (first.clone(), CacheStatus::Hit), "kept");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Stale now: this caller refreshes it, and gets the new value.
    let (refreshed, status) = short_lived_with_status(&cache, &name, &runs).await;
    assert_eq!(
        (refreshed.n, status),
        (2, CacheStatus::Miss),
        "a kept value outlived its fresh life"
    );
}

async fn a_type_that_cannot_be_cloned_is_decoded_on_every_hit(fx: Fixture) {
    let cache = fx.cache().await;
    let name = name("unclonable", &fx);
    let runs = AtomicUsize::new(0);
    for _ in 0..10 {
        let value = unclonable(&cache, &name, &runs).await.expect("a value");
        assert_eq!(value.name, name);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(decoded(&name), 9, "one decode per hit");
}

/// The value type names a type parameter of the function: decoded every hit
/// (the attribute cannot tell whether it is `'static`).
#[cached(ttl = 300, skip(cache), cache = cache)]
async fn parsed<T: Clone + Send + Sync + Serialize + DeserializeOwned>(cache: &Cache, raw: &str) -> Result<T, String> {
    serde_json::from_str(raw).map_err(|e| e.to_string())
}

/// The value borrows for the arguments' lifetime.
#[cached(ttl = 300, skip(cache), cache = cache)]
async fn label<'a>(cache: &Cache, id: u32, fallback: &'a str) -> Cow<'a, str> {
    if id == 0 {
        Cow::Borrowed(fallback)
    } else {
        Cow::Owned(format!("#{id}"))
    }
}

/// A method of a generic type whose value is the type's parameter, bounded so
/// that it could be cloned, but not `'static`.
struct Rows<T> {
    cache: Cache,
    row: PhantomData<T>,
}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned> Rows<T> {
    #[cached(ttl = 300, skip(self, raw), cache = self.cache)]
    async fn row(&self, id: u32, raw: &str) -> Result<T, String> {
        let _ = id;
        serde_json::from_str(raw).map_err(|e| e.to_string())
    }
}

/// A database whose rows could be cloned, but are not said to be `'static`.
trait Database {
    type Row: Clone + Send + Sync + Serialize + DeserializeOwned;
}

struct Strings;

impl Database for Strings {
    type Row = String;
}

/// A method whose value is an associated type of the `impl`'s parameter.
struct Table<Db> {
    cache: Cache,
    db: PhantomData<Db>,
}

impl<Db: Database> Table<Db> {
    #[cached(ttl = 300, skip(self, raw), cache = self.cache)]
    async fn find(&self, id: u32, raw: &str) -> Result<Db::Row, String> {
        let _ = id;
        serde_json::from_str(raw).map_err(|e| e.to_string())
    }
}

async fn generic_and_borrowing_functions_still_work(fx: Fixture) {
    let cache = fx.cache().await;
    for _ in 0..2 {
        assert_eq!(parsed::<Vec<u8>>(&cache, "[1,2]").await, Ok(vec![1, 2]));
        assert_eq!(label(&cache, 0, "none").await, "none");
        assert_eq!(label(&cache, 7, "none").await, "#7");
    }
    let rows = Rows::<Arc<str>> {
        cache: cache.clone(),
        row: PhantomData,
    };
    assert_eq!(rows.row(1, "\"a\"").await.as_deref(), Ok("a"));
    assert_eq!(rows.row(1, "\"changed\"").await.as_deref(), Ok("a"), "a hit");
    let table = Table::<Strings> {
        cache: cache.clone(),
        db: PhantomData,
    };
    assert_eq!(table.find(1, "\"row\"").await.as_deref(), Ok("row"));
    assert_eq!(table.find(1, "\"changed\"").await.as_deref(), Ok("row"), "a hit");
    let stats = cache.stats().function("computed:parsed");
    assert_eq!((stats.computations, stats.hits), (1, 1));
}
