//! Policies at the edges of their types: a `wait` that does not fit in an
//! `Instant`, a lease shorter than its renewal could keep alive.

use std::time::Duration;

use aside::{Plain, Policy};
use support::Fixture;

mod support;

on_backends!([memory, redis] an_endless_wait_computes_and_stores, a_tiny_lock_ttl_still_stores);

async fn an_endless_wait_computes_and_stores(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).wait(Duration::MAX);
    let Plain(value) = cache.get_or_compute("edges:wait", &policy, || async { Plain(7) }).await;
    assert_eq!(value, 7);
    let Plain(again) = cache.get_or_compute("edges:wait", &policy, || async { Plain(0) }).await;
    assert_eq!(again, 7, "stored");
}

/// A 1 ms lease would expire before its first renewal: it is raised to the
/// floor, so a computation longer than it still stores.
async fn a_tiny_lock_ttl_still_stores(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).lock_ttl(Duration::from_millis(1));
    assert_eq!(policy.lock_lease(), aside::policy::MIN_LOCK_TTL);
    let Plain(value) = cache
        .get_or_compute("edges:lease", &policy, || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Plain(7)
        })
        .await;
    assert_eq!(value, 7);
    let Plain(again) = cache
        .get_or_compute("edges:lease", &policy, || async { Plain(0) })
        .await;
    assert_eq!(again, 7, "stored despite the tiny lease asked for");
}

/// The attribute accepts the runtime's floor exactly (its compile error below it
/// is the UI case `lock_ttl_below_the_renewal_floor`): the two crates agree.
#[aside::cached(lock_ttl = "1s", ttl = 60)]
async fn at_the_floor(n: u32) -> u32 {
    n
}

#[tokio::test]
async fn the_attribute_and_the_runtime_share_the_lease_floor() {
    assert_eq!(aside::policy::MIN_LOCK_TTL, Duration::from_secs(1));
    assert_eq!(at_the_floor(3).await, 3);
}

/// `#[cached]` without `ttl` stores for the runtime's `DEFAULT_TTL`, and
/// `ttl = "24h"` — the attribute's upper bound — for exactly the ceiling.
#[aside::cached(prefix = "edges", skip(cache), cache = cache)]
async fn defaulted(cache: &aside::Cache, n: u32) -> u32 {
    n
}

#[aside::cached(prefix = "edges", ttl = "24h", skip(cache), cache = cache)]
async fn a_day(cache: &aside::Cache, n: u32) -> u32 {
    n
}

#[tokio::test]
async fn the_attribute_and_the_runtime_share_the_default_ttl_and_the_ceiling() {
    let cache = aside::Cache::builder().memory().build().await.unwrap();
    assert_eq!(defaulted(&cache, 1).await, 1);
    assert_eq!(a_day(&cache, 1).await, 1);
    let ttl = |key: String| {
        let cache = cache.clone();
        async move {
            let namespace = format!("{}:", cache.settings().namespace());
            let key = key.strip_prefix(&namespace).expect("in namespace").to_owned();
            cache.ttl(key).await.unwrap().expect("stored")
        }
    };
    let defaulted_ttl = ttl(defaulted_key(&cache, 1)).await;
    assert!(
        defaulted_ttl <= aside::policy::DEFAULT_TTL
            && defaulted_ttl > aside::policy::DEFAULT_TTL - Duration::from_secs(5)
    );
    let day = ttl(a_day_key(&cache, 1)).await;
    assert!(day <= aside::TTL_CEILING && day > aside::TTL_CEILING - Duration::from_secs(5));
}
