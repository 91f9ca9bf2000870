//! The stale window (`Policy::stale`, `#[cached(stale = ...)]`): past `ttl` the old
//! value is served at once while one caller refreshes it, and also when that
//! refresh fails; the entry lives `ttl + stale` in the store; an invalidation
//! revokes a refresh in flight; past its fresh lifetime, an entry without a
//! refresh in the background is recomputed, not served as fresh.
//!
//! Runs against the memory backend, a single `redis-server` and a 3-master cluster
//! (the last two behaviours: the memory backend and a single node).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aside::{cached, Cache, Plain, Policy};
use aside_testkit::until;
use support::Fixture;
use tokio::sync::{mpsc, Semaphore};

mod support;

on_backends!(
    [memory, redis, cluster]
    stale_value_is_served_at_once_while_one_caller_refreshes,
    a_failing_refresh_keeps_serving_the_old_value,
    the_entry_lives_ttl_plus_stale,
    an_invalidation_revokes_the_refresh_in_flight,
    a_call_after_the_invalidation_does_not_wait_for_the_revoked_refresh,
);

on_backends!(
    [memory, redis]
    stale_entries_are_recomputed,
    a_stale_window_keeps_the_entry_past_its_ttl,
);

const TTL: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(30);
/// Past the fresh lifetime of an entry written with [`TTL`].
const PAST_TTL: Duration = Duration::from_millis(1_100);
/// Bound on anything that should be quick: exceeding it means a caller is stuck.
const STUCK: Duration = Duration::from_secs(10);

fn policy(function: &'static str) -> Policy {
    Policy::new(TTL).stale(STALE).function(function)
}

/// The remaining lifetime of `key` in the store (PTTL on Redis).
async fn remaining(fx: &Fixture, cache: &Cache, key: &str) -> Option<Duration> {
    let full = cache.full_key(key).expect("key");
    fx.ttl_of(cache, &full).await
}

/// Counts computation runs; run `n` (from 1) yields `v{n}`.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Writes `v1` with a fresh lifetime of [`TTL`], then waits until it is stale.
async fn stale_entry(cache: &Cache, key: &str, policy: &Policy, runs: &Runs) {
    let Plain(first) = cache
        .get_or_compute(key, policy, || async { Plain(format!("v{}", runs.next())) })
        .await;
    assert_eq!(first, "v1");
    tokio::time::sleep(PAST_TTL).await;
}

async fn stale_value_is_served_at_once_while_one_caller_refreshes(fx: Fixture) {
    const KEY: &str = "stale:serve";
    const CALLERS: usize = 20;
    let cache = fx.cache().await;
    let policy = policy("stale:serve");
    let runs = Runs::default();
    stale_entry(&cache, KEY, &policy, &runs).await;

    // The refresh is held until every other caller has returned: if any of them
    // waited for the refresh instead of getting the old value, nothing returns.
    let gate = Arc::new(Semaphore::new(0));
    let (results, mut returned) = mpsc::unbounded_channel();
    for _ in 0..CALLERS {
        let (cache, policy, runs) = (cache.clone(), policy.clone(), runs.clone());
        let (gate, results) = (Arc::clone(&gate), results.clone());
        tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute(KEY, &policy, || async move {
                    let n = runs.next();
                    gate.acquire().await.expect("gate").forget();
                    Plain(format!("v{n}"))
                })
                .await;
            let _ = results.send(value);
        });
    }
    let mut early = Vec::new();
    for _ in 1..CALLERS {
        let value = tokio::time::timeout(STUCK, returned.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} callers returned while the refresh was in flight: {early:?}",
                    early.len(),
                    CALLERS - 1
                )
            })
            .expect("a result");
        early.push(value);
    }
    assert!(
        early.iter().all(|v| v == "v1"),
        "the others got the old value: {early:?}"
    );
    // The others may return before the refreshing caller has read the entry again
    // under its lease and started: wait for that start, then check nobody else did.
    until("the refresh started", || runs.count() >= 2).await;
    assert_eq!(runs.count(), 2, "exactly one caller refreshes");
    let stats = cache.stats().function("stale:serve");
    assert_eq!(stats.stale_hits, CALLERS as u64 - 1, "{stats:?}");

    gate.add_permits(1);
    let refreshed = tokio::time::timeout(STUCK, returned.recv())
        .await
        .expect("the refreshing caller returned")
        .expect("a result");
    assert_eq!(refreshed, "v2", "the refreshing caller gets its new value");

    let stats = cache.stats().function("stale:serve");
    assert_eq!(
        (stats.misses, stats.hits, stats.stale_hits, stats.computations),
        (1, 0, CALLERS as u64 - 1, 2),
        "{stats:?}"
    );
    assert_eq!((stats.lock_waits, stats.lock_timeouts, stats.revoked), (0, 0, 0));

    // The entry now holds v2, fresh again, for ttl + stale once more.
    let ttl = remaining(&fx, &cache, KEY).await.expect("entry");
    assert!(
        ttl > TTL + STALE - Duration::from_secs(5) && ttl <= TTL + STALE,
        "{ttl:?}"
    );
    let Plain(next) = cache
        .get_or_compute(KEY, &policy, || async { Plain(String::from("recomputed")) })
        .await;
    assert_eq!(next, "v2");
    let stats = cache.stats().function("stale:serve");
    assert_eq!((stats.hits, stats.computations), (1, 2), "{stats:?}");
}

async fn a_failing_refresh_keeps_serving_the_old_value(fx: Fixture) {
    const KEY: &str = "stale:failing";
    let cache = fx.cache().await;
    let policy = policy("stale:failing");
    let runs = Runs::default();
    // Run 1 succeeds; every later run fails (the source went down).
    let compute = || async {
        match runs.next() {
            1 => Ok(String::from("v1")),
            n => Err(format!("run {n}: source down")),
        }
    };
    let first: Result<String, String> = cache.get_or_compute(KEY, &policy, compute).await;
    assert_eq!(first.as_deref(), Ok("v1"));
    let written = remaining(&fx, &cache, KEY).await.expect("entry");
    tokio::time::sleep(PAST_TTL).await;

    let refreshed: Result<String, String> = cache.get_or_compute(KEY, &policy, compute).await;
    assert_eq!(
        refreshed.as_deref(),
        Ok("v1"),
        "the caller whose refresh failed gets the stale value"
    );
    assert_eq!(runs.count(), 2, "the refresh ran (and failed)");
    let stats = cache.stats().function("stale:failing");
    assert_eq!(
        (stats.stale_hits, stats.computations, stats.revoked),
        (1, 2, 0),
        "{stats:?}"
    );

    // Nothing was written: the entry is still there, with what was left of its lifetime.
    let left = remaining(&fx, &cache, KEY)
        .await
        .expect("the entry survived the failed refresh");
    assert!(
        left <= written.saturating_sub(PAST_TTL) && left > written - Duration::from_secs(5),
        "written with {written:?}, {left:?} left"
    );

    // Later calls in the window keep getting v1; within the back-off after a
    // failed refresh they do not try again (issue 14: a failing refresh backs
    // off instead of every next caller paying the failure's latency).
    for call in 0..3 {
        let later: Result<String, String> = cache.get_or_compute(KEY, &policy, compute).await;
        assert_eq!(later.as_deref(), Ok("v1"), "later call {call}");
    }
    let stats = cache.stats().function("stale:failing");
    assert_eq!((stats.stale_hits, stats.computations), (4, 2), "{stats:?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let after_backoff: Result<String, String> = cache.get_or_compute(KEY, &policy, compute).await;
    assert_eq!(after_backoff.as_deref(), Ok("v1"));
    let stats = cache.stats().function("stale:failing");
    assert_eq!(
        (stats.stale_hits, stats.computations),
        (5, 3),
        "after the back-off one caller tries again: {stats:?}"
    );
    let still = remaining(&fx, &cache, KEY).await.expect("entry");
    assert!(still <= left, "not extended: {still:?} after {left:?}");
    println!(
        "failing refresh: written with {written:?}; {left:?} left after the failed refresh, {still:?} after 3 more"
    );
}

async fn the_entry_lives_ttl_plus_stale(fx: Fixture) {
    const KEY: &str = "stale:lifetime";
    let ttl = Duration::from_secs(10);
    let stale = Duration::from_secs(60);
    let cache = fx.cache().await;
    let policy = Policy::new(ttl).stale(stale).function("stale:lifetime");
    let Plain(value) = cache.get_or_compute(KEY, &policy, || async { Plain(1u32) }).await;
    assert_eq!(value, 1);
    let left = remaining(&fx, &cache, KEY).await.expect("entry");
    assert!(
        left > ttl + stale - Duration::from_secs(5) && left <= ttl + stale,
        "PTTL {left:?}, expected in ({:?}, {:?}]",
        ttl + stale - Duration::from_secs(5),
        ttl + stale
    );
    if !fx.is_memory() {
        // Read back from the servers: the entry alone (the lease is gone), with that
        // expiry.
        let full = cache.full_key(KEY).unwrap();
        assert_eq!(fx.all_keys(), std::slice::from_ref(&full));
        let ms = fx.pttl(&full).expect("entry on its node");
        assert!(ms > 65_000 && ms <= 70_000, "PTTL {ms}");
    }
    // Within ttl it is fresh: a hit.
    let Plain(again) = cache.get_or_compute(KEY, &policy, || async { Plain(2u32) }).await;
    assert_eq!(again, 1);
    assert_eq!(cache.stats().function("stale:lifetime").hits, 1);
}

/// A stale entry's refresh is in flight when `invalidate_key` runs; the refresh
/// then finishes. Its store is refused (revoked), and the next call computes anew
/// rather than returning the refresh's value.
async fn an_invalidation_revokes_the_refresh_in_flight(fx: Fixture) {
    const KEY: &str = "stale:revoke";
    let cache = fx.cache().await;
    let policy = policy("stale:revoke");
    let runs = Runs::default();
    stale_entry(&cache, KEY, &policy, &runs).await;

    let gate = Arc::new(Semaphore::new(0));
    let refresh = {
        let (cache, policy, runs, gate) = (cache.clone(), policy.clone(), runs.clone(), Arc::clone(&gate));
        tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute(KEY, &policy, || async move {
                    let n = runs.next();
                    gate.acquire().await.expect("gate").forget();
                    Plain(format!("v{n}"))
                })
                .await;
            value
        })
    };
    until("the refresh computes", || runs.count() == 2).await;

    assert!(cache.invalidate_key(KEY).await.unwrap(), "the stale entry existed");
    gate.add_permits(1);
    let refreshed = tokio::time::timeout(STUCK, refresh)
        .await
        .expect("the refresh returned")
        .expect("refresh task");
    // Its own caller started before the invalidation; it gets its result.
    assert_eq!(refreshed, "v2");
    let stats = cache.stats().function("stale:revoke");
    assert_eq!(stats.revoked, 1, "the refresh's store was refused: {stats:?}");

    let Plain(next) = cache
        .get_or_compute(KEY, &policy, || async { Plain(format!("v{}", runs.next())) })
        .await;
    assert_eq!(
        next, "v3",
        "after the invalidation a new call computes, not returns the revoked refresh"
    );
    assert_eq!(runs.count(), 3);
    let Plain(hit) = cache
        .get_or_compute(KEY, &policy, || async { Plain(format!("v{}", runs.next())) })
        .await;
    assert_eq!(hit, "v3");
    let stats = cache.stats().function("stale:revoke");
    assert_eq!((stats.revoked, stats.computations, stats.hits), (1, 3, 1), "{stats:?}");
}

/// As above, but the new call comes while the revoked refresh is still computing:
/// it computes at once (the invalidation freed the lease), and the refresh
/// finishing afterwards does not overwrite its value.
async fn a_call_after_the_invalidation_does_not_wait_for_the_revoked_refresh(fx: Fixture) {
    const KEY: &str = "stale:revoke-overlap";
    let cache = fx.cache().await;
    let policy = policy("stale:revoke-overlap");
    let runs = Runs::default();
    stale_entry(&cache, KEY, &policy, &runs).await;

    let gate = Arc::new(Semaphore::new(0));
    let refresh = {
        let (cache, policy, runs, gate) = (cache.clone(), policy.clone(), runs.clone(), Arc::clone(&gate));
        tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute(KEY, &policy, || async move {
                    let n = runs.next();
                    gate.acquire().await.expect("gate").forget();
                    Plain(format!("v{n}"))
                })
                .await;
            value
        })
    };
    until("the refresh computes", || runs.count() == 2).await;
    assert!(cache.invalidate_key(KEY).await.unwrap());

    // The refresh is still held at the gate.
    let Plain(next) = tokio::time::timeout(
        STUCK,
        cache.get_or_compute(KEY, &policy, || async { Plain(format!("v{}", runs.next())) }),
    )
    .await
    .expect("the new call does not wait for the revoked refresh");
    assert_eq!(next, "v3");

    gate.add_permits(1);
    let refreshed = tokio::time::timeout(STUCK, refresh)
        .await
        .expect("the refresh returned")
        .expect("refresh task");
    assert_eq!(refreshed, "v2");
    let Plain(hit) = cache
        .get_or_compute(KEY, &policy, || async { Plain(format!("v{}", runs.next())) })
        .await;
    assert_eq!(hit, "v3", "the revoked refresh did not overwrite the new value");
    let stats = cache.stats().function("stale:revoke-overlap");
    assert_eq!((stats.revoked, stats.computations, stats.hits), (1, 3, 1), "{stats:?}");
}

async fn stale_entries_are_recomputed(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(1)).stale(Duration::from_secs(30));
    let runs = AtomicUsize::new(0);
    let call = || {
        cache.get_or_compute("fresh-for-1s", &policy, || async {
            Plain(runs.fetch_add(1, Ordering::SeqCst))
        })
    };
    assert_eq!(call().await.0, 0);
    assert_eq!(call().await.0, 0);
    // The entry lives ttl + stale in the store...
    let ttl = fx.ttl_of(&cache, "aside:fresh-for-1s").await.expect("exists");
    assert!(ttl > Duration::from_secs(25), "{ttl:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // ...but past its fresh lifetime it is not served as fresh.
    assert_eq!(call().await.0, 1);
}

#[cached(ttl = 30, stale = "90s", skip(cache), cache = cache)]
async fn dashboard(cache: &Cache, team: u32) -> Vec<u32> {
    vec![team; 2]
}

async fn a_stale_window_keeps_the_entry_past_its_ttl(fx: Fixture) {
    let cache = fx.cache_in("stale").await;
    dashboard(&cache, 1).await;
    let ttl = fx.pttl_of(&cache, &dashboard_key(&cache, 1)).await;
    assert!(
        ttl > 30_000 && ttl <= 120_000,
        "PTTL {ttl} ms not in (30 s, 30 s + 90 s]"
    );
}
