//! Dropping or replacing one entry: `Cache::delete`/`exists` by hand, and the
//! `_invalidate` and `_refresh` companions of `#[cached]`. An invalidation says
//! whether there was an entry (`true` once, then `false`), deletes only that
//! entry, and the next call computes (guarantee 1); a refresh runs the body now
//! and overwrites the entry the next calls are served from.
//!
//! Every behaviour runs on the memory backend and on a `redis-server` started for
//! the test; entries are read back from the server (`EXISTS`, `SCAN`) where there
//! is one. (Tags and patterns: `tests/tags.rs`; invalidation racing a computation:
//! `tests/no_write_after_invalidation.rs`, guarantee 5.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use aside::{cached, Cache};
use support::{Fixture, Runs};

mod support;

on_backends!(
    [memory, redis]
    delete_and_exists,
    invalidate_returns_true_then_false_and_the_next_call_computes,
    invalidate_deletes_the_entry_once,
    refresh_computes_now_and_overwrites_the_entry,
    refresh_overwrites_the_entry_in_redis,
);

async fn delete_and_exists(fx: Fixture) {
    let cache = fx.cache().await;
    assert!(!cache.exists("gone").await.unwrap());
    assert!(!cache.delete("gone").await.unwrap());
    cache.set_json("gone", &"x", Duration::from_secs(60)).await.unwrap();
    assert!(cache.exists("gone").await.unwrap());
    assert!(cache.delete("gone").await.unwrap());
    assert!(!cache.delete("gone").await.unwrap());
    assert!(!cache.exists("gone").await.unwrap());
}

#[cached(ttl = 60, skip(cache, runs), cache = cache)]
async fn square(cache: &Cache, runs: &Runs, n: u64) -> u64 {
    runs.tick();
    n * n
}

async fn invalidate_returns_true_then_false_and_the_next_call_computes(fx: Fixture) {
    let cache = fx.cache_in("invalidate").await;
    let runs = Runs::default();
    square(&cache, &runs, 3).await;
    assert!(square_invalidate(&cache, 3).await.unwrap());
    assert!(!square_invalidate(&cache, 3).await.unwrap());
    assert!(!square_invalidate(&cache, 4).await.unwrap(), "never stored");
    square(&cache, &runs, 3).await;
    assert_eq!(runs.get(), 2);
}

#[cached(prefix = "reports", ttl = 120, skip(cache, runs), cache = cache)]
async fn revenue(cache: &Cache, runs: &Runs, region: &str, month: u32) -> Result<u64, std::io::Error> {
    runs.tick();
    Ok(u64::from(month) * region.len() as u64)
}

async fn invalidate_deletes_the_entry_once(fx: Fixture) {
    let cache = fx.cache_in("invalidate").await;
    let runs = Runs::default();
    revenue(&cache, &runs, "eu", 1).await.unwrap();
    revenue(&cache, &runs, "eu", 2).await.unwrap();
    let key = revenue_key(&cache, "eu", 1);
    assert!(fx.holds(&cache, &key).await);

    assert!(revenue_invalidate(&cache, "eu", 1).await.unwrap());
    assert!(!fx.holds(&cache, &key).await);
    assert!(!revenue_invalidate(&cache, "eu", 1).await.unwrap());
    assert!(
        fx.holds(&cache, &revenue_key(&cache, "eu", 2)).await,
        "other arguments keep their entry"
    );

    revenue(&cache, &runs, "eu", 1).await.unwrap();
    assert_eq!(runs.get(), 3, "the call after invalidation computes");
}

#[cached(skip(cache, source), cache = cache)]
async fn reading(cache: &Cache, source: &AtomicU64, sensor: &str) -> u64 {
    let _ = sensor;
    source.load(Ordering::SeqCst)
}

async fn refresh_computes_now_and_overwrites_the_entry(fx: Fixture) {
    let cache = fx.cache_in("refresh").await;
    let source = AtomicU64::new(1);
    assert_eq!(reading(&cache, &source, "t1").await, 1);
    source.store(2, Ordering::SeqCst);
    assert_eq!(reading(&cache, &source, "t1").await, 1, "still the stored value");
    assert_eq!(reading_refresh(&cache, &source, "t1").await, 2, "refresh runs the body");
    source.store(3, Ordering::SeqCst);
    assert_eq!(
        reading(&cache, &source, "t1").await,
        2,
        "the refreshed value was stored"
    );
    assert_eq!(cache.stats().function("computed:reading").computations, 2);
}

#[cached(ttl = 60, skip(cache, source), cache = cache)]
async fn latest(cache: &Cache, source: &AtomicUsize, feed: &str) -> usize {
    let _ = feed;
    source.load(Ordering::SeqCst)
}

async fn refresh_overwrites_the_entry_in_redis(fx: Fixture) {
    let cache = fx.cache_in("refresh").await;
    let source = AtomicUsize::new(1);
    assert_eq!(latest(&cache, &source, "news").await, 1);
    source.store(2, Ordering::SeqCst);
    assert_eq!(latest(&cache, &source, "news").await, 1);
    assert_eq!(latest_refresh(&cache, &source, "news").await, 2);
    source.store(3, Ordering::SeqCst);
    assert_eq!(
        latest(&cache, &source, "news").await,
        2,
        "served from the overwritten entry"
    );
    if !fx.is_memory() {
        assert_eq!(fx.keys_matching("refresh:*"), [latest_key(&cache, "news")]);
    }
}
