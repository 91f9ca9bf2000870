//! Guarantee 2: every key the runtime writes — entries, leases, tag sets — has an
//! expiry in (0, 24 h], read back from the servers with SCAN and PTTL after a
//! mixed workload that leaves a computation in flight.

use std::sync::Arc;
use std::time::Duration;

use aside::key::Piece;
use aside::{Key, Plain, Policy};
use support::Fixture;
use tokio::sync::Notify;

mod support;

on_backends!([redis, cluster] every_key_expires_within_the_ceiling);

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

async fn every_key_expires_within_the_ceiling(fx: Fixture) {
    let cache = fx.cache().await;
    // Hand-written keys, one asking for a week.
    cache.set_json("short", &1, Duration::from_secs(5)).await.unwrap();
    cache
        .set_json("week", &1, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    // Function entries with tags, one asking for two days plus a stale window.
    for month in 1..=6u32 {
        let key = Key::digest("computed", "revenue", 1, &("eu", month));
        let policy = Policy::new(Duration::from_secs(172_800))
            .stale(Duration::from_secs(3600))
            .tags(["orders"])
            .tag([Piece::Lit("month:"), Piece::value(&month)]);
        let Plain(_) = cache.get_or_compute(key, &policy, || async { Plain(month) }).await;
    }
    // A lease with a week-long lock TTL, held by a computation still in flight.
    let release = Arc::new(Notify::new());
    let in_flight = tokio::spawn({
        let (cache, release) = (cache.clone(), Arc::clone(&release));
        async move {
            let policy = Policy::new(Duration::from_secs(60))
                .lock_ttl(Duration::from_secs(7 * 86_400))
                .tags(["slow"]);
            let Plain(v) = cache
                .get_or_compute("slow", &policy, || async {
                    release.notified().await;
                    Plain(1)
                })
                .await;
            v
        }
    });
    // An invalidation, and a refresh.
    cache.invalidate_tag("month:1").await.unwrap();
    let Plain(_) = cache
        .refresh("refreshed", &Policy::new(Duration::from_secs(30)), || async {
            Plain(2)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let keys = fx.all_keys();
    assert!(
        keys.iter().any(|k| k.ends_with(":lease")),
        "a lease is in flight: {keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains("~tag:")), "tag sets exist: {keys:?}");
    assert!(keys.len() >= 10, "{keys:?}");
    for key in &keys {
        let ttl = fx.pttl(key).expect("listed keys exist");
        assert!(ttl > 0 && ttl <= DAY_MS, "{key} has PTTL {ttl}");
    }
    release.notify_one();
    assert_eq!(in_flight.await.unwrap(), 1);
}
