//! Guarantee 2: every key the runtime writes — entries, leases, tag sets — has an
//! expiry in (0, 24 h], read back from the servers with SCAN and PTTL after a
//! mixed workload that leaves a computation in flight. An entry lives the TTL it
//! was asked for; a longer one is clamped at the ceiling (the default 24 h, or a
//! lower `max_ttl`), and a zero TTL is refused (by hand a typed error, through
//! `get_or_compute` the value, not stored) — on the memory backend too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aside::key::Piece;
use aside::{Error, Key, Plain, Policy};
use support::Fixture;
use tokio::sync::Notify;

mod support;

on_backends!([redis, cluster] every_key_expires_within_the_ceiling);

on_backends!(
    [memory, redis]
    ttl_is_what_was_asked,
    ttl_is_clamped_at_the_ceiling,
    zero_ttl_is_refused,
);

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

async fn ttl_is_what_was_asked(fx: Fixture) {
    let cache = fx.cache().await;
    cache.set_json("ttl:120", &1, Duration::from_secs(120)).await.unwrap();
    let ttl = fx.ttl_of(&cache, "aside:ttl:120").await.expect("key exists");
    assert!(
        ttl > Duration::from_secs(115) && ttl <= Duration::from_secs(120),
        "{ttl:?}"
    );

    let policy = Policy::new(Duration::from_secs(30));
    let key = Key::digest("computed", "ttl_probe", 1, &(7,));
    let Plain(value) = cache.get_or_compute(&key, &policy, || async { Plain(7) }).await;
    assert_eq!(value, 7);
    let full = cache.full_key(&key).unwrap();
    let ttl = fx.ttl_of(&cache, &full).await.expect("entry exists");
    assert!(
        ttl > Duration::from_secs(25) && ttl <= Duration::from_secs(30),
        "{ttl:?}"
    );
}

async fn ttl_is_clamped_at_the_ceiling(fx: Fixture) {
    let cache = fx.cache().await;
    cache
        .set_json("week", &1, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    let ttl = fx.ttl_of(&cache, "aside:week").await.expect("key exists");
    assert!(
        ttl <= Duration::from_secs(86_400) && ttl > Duration::from_secs(86_400 - 60),
        "{ttl:?}"
    );

    // A lowered ceiling applies to get_or_compute's writes too.
    let hour = fx
        .builder()
        .namespace("lowered")
        .max_ttl(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let policy = Policy::new(Duration::from_secs(86_400));
    let Plain(_) = hour.get_or_compute("day", &policy, || async { Plain(1) }).await;
    let ttl = fx.ttl_of(&hour, "lowered:day").await.expect("key exists");
    assert!(
        ttl <= Duration::from_secs(3600) && ttl > Duration::from_secs(3500),
        "{ttl:?}"
    );
    // Still a hit afterwards: the clamped entry is fresh.
    let Plain(again) = hour.get_or_compute("day", &policy, || async { Plain(2) }).await;
    assert_eq!(again, 1);
}

async fn zero_ttl_is_refused(fx: Fixture) {
    let cache = fx.cache().await;
    let err = cache.set_json("zero", &1, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::InvalidTtl(_)), "{err}");
    assert!(!cache.exists("zero").await.unwrap());

    // Through get_or_compute the caller still gets the value; nothing is stored.
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let Plain(v) = cache
            .get_or_compute("zero", &Policy::new(Duration::ZERO), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Plain(5)
            })
            .await;
        assert_eq!(v, 5);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
