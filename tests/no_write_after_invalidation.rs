//! Guarantee 5: once an invalidation returns, no call that starts afterwards gets
//! a value whose computation started before it — not even from a computation
//! that was in flight during the invalidation, nor from a refresh.
//!
//! A "data version" stands for the database: writers bump it, then invalidate;
//! computations read it when they start.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aside::{Cache, Key, Plain, Policy};
use support::Fixture;
use tokio::sync::Notify;

mod support;

on_backends!(
    [memory, redis, cluster]
    in_flight_computation_is_not_stored_after_tag_invalidation,
    in_flight_computation_is_not_stored_after_key_invalidation,
    in_flight_computation_is_not_stored_after_pattern_invalidation,
    in_flight_refresh_is_not_stored_after_invalidation,
    followers_of_a_revoked_computation_recompute,
    randomized_readers_never_see_a_version_older_than_a_returned_invalidation,
);

/// How a test invalidates the entry under test.
#[derive(Clone, Copy)]
enum By {
    Tag,
    Key,
    Pattern,
}

async fn invalidate(cache: &Cache, key: &Key, by: By) {
    match by {
        By::Tag => {
            cache.invalidate_tag("orders").await.unwrap();
        }
        By::Key => {
            cache.invalidate_key(key).await.unwrap();
        }
        By::Pattern => {
            cache.invalidate_pattern("computed:revenue:*").await.unwrap();
        }
    }
}

/// A computation of the current data version that pauses between reading the
/// version and returning, until released.
struct Gate {
    version: AtomicU64,
    started: Notify,
    release: Notify,
    runs: AtomicUsize,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            version: AtomicU64::new(1),
            started: Notify::new(),
            release: Notify::new(),
            runs: AtomicUsize::new(0),
        })
    }

    /// Reads the version; if `pause`, waits for [`Gate::release`] before returning it.
    async fn compute(&self, pause: bool) -> Plain<u64> {
        let seen = self.version.load(Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
        if pause {
            self.started.notify_one();
            self.release.notified().await;
        }
        Plain(seen)
    }
}

async fn in_flight_is_not_stored(fx: Fixture, by: By, refresh: bool) {
    let cache = fx.cache().await;
    let key = Key::digest("computed", "revenue", 1, &("eu", 11));
    let policy = Policy::new(Duration::from_secs(300))
        .tags(["orders"])
        .function("computed:revenue");
    let gate = Gate::new();

    let in_flight = tokio::spawn({
        let (cache, key, policy, gate) = (cache.clone(), key.clone(), policy.clone(), Arc::clone(&gate));
        async move {
            if refresh {
                cache.refresh(&key, &policy, || gate.compute(true)).await
            } else {
                cache.get_or_compute(&key, &policy, || gate.compute(true)).await
            }
        }
    });
    gate.started.notified().await;
    // The data changes, then the writer invalidates — while version 1 is being computed.
    gate.version.store(2, Ordering::SeqCst);
    invalidate(&cache, &key, by).await;
    gate.release.notify_one();
    let Plain(old) = in_flight.await.unwrap();
    assert_eq!(old, 1, "the in-flight call itself started before the invalidation");

    // Every call that starts now sees version 2, whichever way it asks.
    for _ in 0..3 {
        let Plain(now) = cache.get_or_compute(&key, &policy, || gate.compute(false)).await;
        assert_eq!(now, 2);
    }
    assert_eq!(cache.get_json::<u64>(&key).await.unwrap(), Some(2));
    assert_eq!(
        gate.runs.load(Ordering::SeqCst),
        2,
        "one revoked computation, one fresh one"
    );
    assert_eq!(cache.stats().function("computed:revenue").revoked, 1);
}

async fn in_flight_computation_is_not_stored_after_tag_invalidation(fx: Fixture) {
    in_flight_is_not_stored(fx, By::Tag, false).await;
}

async fn in_flight_computation_is_not_stored_after_key_invalidation(fx: Fixture) {
    in_flight_is_not_stored(fx, By::Key, false).await;
}

async fn in_flight_computation_is_not_stored_after_pattern_invalidation(fx: Fixture) {
    in_flight_is_not_stored(fx, By::Pattern, false).await;
}

async fn in_flight_refresh_is_not_stored_after_invalidation(fx: Fixture) {
    in_flight_is_not_stored(fx, By::Tag, true).await;
}

/// Callers that joined a computation in flight (same process) do not get its
/// value once it is revoked: they compute again, after the invalidation.
async fn followers_of_a_revoked_computation_recompute(fx: Fixture) {
    let cache = fx.cache().await;
    let key = Key::digest("computed", "revenue", 1, &("us", 1));
    let policy = Policy::new(Duration::from_secs(300)).tags(["orders"]);
    let gate = Gate::new();
    let leader = tokio::spawn({
        let (cache, key, policy, gate) = (cache.clone(), key.clone(), policy.clone(), Arc::clone(&gate));
        async move { cache.get_or_compute(&key, &policy, || gate.compute(true)).await }
    });
    gate.started.notified().await;
    gate.version.store(2, Ordering::SeqCst);
    cache.invalidate_tag("orders").await.unwrap();
    // Joins the leader's flight after the invalidation returned.
    let follower = tokio::spawn({
        let (cache, key, policy, gate) = (cache.clone(), key.clone(), policy.clone(), Arc::clone(&gate));
        async move { cache.get_or_compute(&key, &policy, || gate.compute(false)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.release.notify_one();
    assert_eq!(leader.await.unwrap().0, 1);
    assert_eq!(follower.await.unwrap().0, 2);
}

/// Many readers on a few tagged keys while a writer bumps the version and
/// invalidates the tag, for a few seconds. A read that starts after an
/// invalidation returned must see at least the version written before it.
async fn randomized_readers_never_see_a_version_older_than_a_returned_invalidation(fx: Fixture) {
    let cache = fx.cache().await;
    let version = Arc::new(AtomicU64::new(0));
    // (instant the invalidation returned, version written before it)
    let invalidations: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let run_for = Duration::from_millis(2500);
    let started = Instant::now();

    let writer = tokio::spawn({
        let (cache, version, invalidations) = (cache.clone(), Arc::clone(&version), Arc::clone(&invalidations));
        async move {
            let mut rounds = 0u64;
            while started.elapsed() < run_for {
                let written = version.fetch_add(1, Ordering::SeqCst) + 1;
                cache.invalidate_tag("data").await.unwrap();
                invalidations.lock().unwrap().push((Instant::now(), written));
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(rounds % 7 * 3)).await;
            }
        }
    });

    let readers: Vec<_> = (0..24u64)
        .map(|reader| {
            let (cache, version) = (cache.clone(), Arc::clone(&version));
            tokio::spawn(async move {
                let policy = Policy::new(Duration::from_secs(60)).tags(["data"]);
                let mut seen = Vec::new();
                let mut step = reader;
                while started.elapsed() < run_for {
                    step = step.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let key = format!("item:{}", (step >> 33) % 4);
                    let pause = Duration::from_millis((step >> 40) % 15);
                    let began = Instant::now();
                    let Plain(value) = cache
                        .get_or_compute(key.as_str(), &policy, || async {
                            let v = version.load(Ordering::SeqCst);
                            tokio::time::sleep(pause).await;
                            Plain(v)
                        })
                        .await;
                    seen.push((began, value));
                    // Memory hits never wait on I/O; let the writer run.
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();

    writer.await.unwrap();
    let invalidations = invalidations.lock().unwrap().clone();
    let mut reads = 0;
    for reader in readers {
        for (began, value) in reader.await.unwrap() {
            reads += 1;
            let floor = invalidations
                .iter()
                .filter(|(returned, _)| *returned < began)
                .map(|(_, v)| *v)
                .max();
            if let Some(floor) = floor {
                assert!(
                    value >= floor,
                    "a read that began after version {floor} was invalidated returned {value}"
                );
            }
        }
    }
    let stats = cache.stats().total;
    println!(
        "{reads} reads, {} invalidations, {} computations, {} revoked, {} hits",
        invalidations.len(),
        stats.computations,
        stats.revoked,
        stats.hits
    );
    assert!(invalidations.len() > 20 && reads > 200, "the run exercised the race");
    assert!(stats.hits > 0, "some reads were served from the cache");
}
