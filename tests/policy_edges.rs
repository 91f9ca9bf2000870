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
