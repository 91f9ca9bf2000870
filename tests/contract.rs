//! The runtime's contract, run against both backends: the in-process memory store
//! and a real `redis-server` started for the test.
//!
//! Each behaviour is one `async fn` taking a [`Fixture`]; `on_backends!` runs it
//! on both backends as two tests, `memory` and `redis`. The cluster runs of the
//! guarantees live in the files named after them (`tags.rs`, `stampede.rs` ...).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Cache, EntryFormat, Error, Key, Plain, Policy};
use aside_testkit::RedisServer;
use serde::{Deserialize, Serialize};
use support::{Fixture, Server};

mod support;

on_backends!(
    [memory, redis]
    round_trip,
    ttl_is_what_was_asked,
    ttl_is_clamped_at_the_ceiling,
    zero_ttl_is_refused,
    delete_and_exists,
    hit_runs_no_computation,
    only_ok_and_some_are_cached,
    entry_of_another_type_is_a_counted_miss_that_heals,
    namespaces_are_isolated,
    key_version_isolates_function_entries,
    golden_key_layout,
    oversized_values_are_returned_not_stored,
    stale_entries_are_recomputed,
    compact_entries_are_smaller_and_read_back,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    region: String,
    rows: Vec<(u32, i64)>,
}

fn report() -> Report {
    Report {
        region: "eu".into(),
        rows: (1..=12).map(|m| (m, i64::from(m) * 1000)).collect(),
    }
}

async fn round_trip(fx: Fixture) {
    let cache = fx.cache().await;
    assert_eq!(cache.get_json::<Report>("report:eu").await.unwrap(), None);
    cache
        .set_json("report:eu", &report(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get_json::<Report>("report:eu").await.unwrap(), Some(report()));
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

async fn hit_runs_no_computation(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).function("contract:report");
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let got: Result<Report, std::io::Error> = cache
            .get_or_compute("report", &policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(report())
            })
            .await;
        assert_eq!(got.unwrap(), report());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    let f = stats.function("contract:report");
    assert_eq!((f.misses, f.hits, f.computations), (1, 2, 1));
    assert_eq!((stats.total.misses, stats.total.hits), (1, 2));
    assert_eq!(f.backend_errors, 0);
}

async fn only_ok_and_some_are_cached(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60));
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let got: Result<u32, String> = cache
            .get_or_compute("err", &policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Err("db down".to_owned())
            })
            .await;
        assert_eq!(got, Err("db down".to_owned()));
    }
    assert_eq!(runs.swap(0, Ordering::SeqCst), 2, "Err is never cached");

    for _ in 0..2 {
        let got: Option<u32> = cache
            .get_or_compute("none", &policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                None
            })
            .await;
        assert_eq!(got, None);
    }
    assert_eq!(runs.swap(0, Ordering::SeqCst), 2, "None is not cached by default");

    let with_none = policy.clone().cache_none(true);
    for _ in 0..2 {
        let got: Option<u32> = cache
            .get_or_compute("none-cached", &with_none, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                None
            })
            .await;
        assert_eq!(got, None);
    }
    assert_eq!(runs.swap(0, Ordering::SeqCst), 1, "cache_none caches None");
}

async fn entry_of_another_type_is_a_counted_miss_that_heals(fx: Fixture) {
    let cache = fx.cache().await;
    cache
        .set_json("shape", &"a string, not a report", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get_json::<Report>("shape").await.unwrap(), None);
    assert_eq!(cache.stats().total.decode_errors, 1);

    let policy = Policy::new(Duration::from_secs(60));
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let got: Result<Report, ()> = cache
            .get_or_compute("shape", &policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(report())
            })
            .await;
        assert_eq!(got.unwrap(), report());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the bad entry was overwritten");
    let stats = cache.stats().total;
    assert_eq!((stats.decode_errors, stats.misses, stats.hits), (2, 1, 1));
}

async fn namespaces_are_isolated(fx: Fixture) {
    let shop = fx.builder().namespace("shop").build().await.unwrap();
    let blog = fx.builder().namespace("blog").build().await.unwrap();
    shop.set_json("home", &"shop page", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(blog.get_json::<String>("home").await.unwrap(), None);
    assert!(!blog.delete("home").await.unwrap());
    assert_eq!(
        shop.get_json::<String>("home").await.unwrap().as_deref(),
        Some("shop page")
    );
    if !fx.is_memory() {
        assert_eq!(fx.all_keys(), ["shop:home"]);
    }
}

async fn key_version_isolates_function_entries(fx: Fixture) {
    let v1 = fx.cache().await;
    let v2 = fx.builder().key_version(2).build().await.unwrap();
    let key = Key::digest("computed", "revenue", 1, &("eu", 11));
    let policy = Policy::new(Duration::from_secs(60));
    let Plain(old) = v1
        .get_or_compute(&key, &policy, || async { Plain("old shape".to_owned()) })
        .await;
    let Plain(new) = v2
        .get_or_compute(&key, &policy, || async { Plain("new shape".to_owned()) })
        .await;
    assert_eq!((old.as_str(), new.as_str()), ("old shape", "new shape"));
    let (k1, k2) = (v1.full_key(&key).unwrap(), v2.full_key(&key).unwrap());
    assert!(k1.contains(":v1.1:") && k2.contains(":v2.1:"), "{k1} {k2}");
    // The old entry is untouched (it expires on its own), just unreachable from v2.
    assert!(fx.ttl_of(&v1, &k1).await.is_some());
    // The function's own version isolates the same way.
    let bumped = Key::digest("computed", "revenue", 2, &("eu", 11));
    let Plain(fresh) = v1
        .get_or_compute(&bumped, &policy, || async { Plain("bumped".to_owned()) })
        .await;
    assert_eq!(fresh, "bumped");
}

async fn golden_key_layout(fx: Fixture) {
    let cache = fx.cache().await;
    let key = Key::digest("computed", "revenue_by_region", 1, &("eu", 11));
    let golden = "aside:computed:revenue_by_region:v1.1:6a8dd4d7e92c904ce2661629e20e6d38";
    assert_eq!(cache.full_key(&key).unwrap(), golden);
    let Plain(_) = cache
        .get_or_compute(&key, &Policy::default(), || async { Plain(1) })
        .await;
    if !fx.is_memory() {
        assert_eq!(fx.all_keys(), [golden]);
    }
    assert!(fx.ttl_of(&cache, golden).await.is_some());
}

async fn oversized_values_are_returned_not_stored(fx: Fixture) {
    let cache = fx.builder().max_value_size(256).build().await.unwrap();
    let big = "x".repeat(1024);
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let Plain(value) = cache
            .get_or_compute("big", &Policy::default(), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Plain(big.clone())
            })
            .await;
        assert_eq!(value.len(), 1024);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert!(!cache.exists("big").await.unwrap());
    assert_eq!(cache.stats().total.oversized, 2);
    let err = cache.set_json("big", &big, Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { size: 1036, limit: 256 }), "{err}");
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

/// A struct that leaves a field out when serializing it: in MessagePack's array
/// form, `total` would land in `note`'s place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sparse {
    id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    total: u64,
}

async fn compact_entries_are_smaller_and_read_back(fx: Fixture) {
    let packed = fx
        .builder()
        .entry_format(EntryFormat::MessagePack)
        .build()
        .await
        .unwrap();
    let policy = Policy::new(Duration::from_secs(60)).function("compact");
    let runs = AtomicUsize::new(0);
    let call = |cache: &Cache, key: &'static str| {
        let (policy, runs) = (&policy, &runs);
        let cache = cache.clone();
        async move {
            let got: Result<Report, ()> = cache
                .get_or_compute(key, policy, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(report())
                })
                .await;
            got.unwrap()
        }
    };
    assert_eq!(call(&packed, "compact:report").await, report());
    assert_eq!(call(&packed, "compact:report").await, report());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second call is a hit");
    assert_eq!(
        packed.get_json::<Report>("compact:report").await.unwrap(),
        Some(report())
    );

    if let Some(bytes) = fx.stored_bytes(&packed.full_key("compact:report").unwrap()) {
        let json = serde_json::to_vec(&report()).unwrap();
        assert_eq!(bytes[..2], [0xA5, 2], "header of a MessagePack entry");
        assert!(
            bytes.len() < json.len(),
            "{} bytes packed, {} as JSON",
            bytes.len(),
            json.len()
        );

        // A fleet switching formats one process at a time: each reads the other's.
        let plain = fx.cache().await;
        assert_eq!(call(&plain, "compact:report").await, report());
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the JSON cache hit the packed entry");
        assert_eq!(call(&plain, "compact:json").await, report());
        assert_eq!(fx.stored_bytes(&plain.full_key("compact:json").unwrap()).unwrap()[1], 1);
        assert_eq!(call(&packed, "compact:json").await, report());
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the packed cache hit the JSON entry");
    }

    // A value whose array form does not read back is stored as JSON: a hit next time.
    let sparse = Sparse {
        id: 7,
        note: None,
        total: 42,
    };
    let sparse_runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let Plain(got) = packed
            .get_or_compute("compact:sparse", &policy, || async {
                sparse_runs.fetch_add(1, Ordering::SeqCst);
                Plain(sparse.clone())
            })
            .await;
        assert_eq!(got, sparse);
    }
    assert_eq!(sparse_runs.load(Ordering::SeqCst), 1, "never a permanent miss");
    if let Some(bytes) = fx.stored_bytes(&packed.full_key("compact:sparse").unwrap()) {
        assert_eq!(bytes[1], 1, "stored as JSON");
    }
    assert_eq!(packed.stats().function("compact").decode_errors, 0);
}

/// Redis only: bytes that are not an entry at all, or an entry of a future format.
#[tokio::test]
async fn redis_corrupt_entries_are_counted_misses() {
    let fx = Fixture::redis();
    let Server::Single(server) = &fx.server else {
        unreachable!()
    };
    let cache = fx.cache().await;
    let mut conn = server.connection();
    let mut future_format = vec![0xA5u8, 9];
    future_format.extend_from_slice(&[0; 8]);
    future_format.extend_from_slice(b"{\"a\":1}");
    let cases: [(&str, &[u8]); 3] = [
        ("garbage", b"\x00\x01not json"),
        ("plain-json", b"{\"region\":\"eu\"}"),
        ("future", &future_format),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let _: () = redis::cmd("SET")
            .arg(format!("aside:{name}"))
            .arg(*bytes)
            .query(&mut conn)
            .unwrap();
        let got: Result<Report, ()> = cache
            .get_or_compute(*name, &Policy::default(), || async { Ok(report()) })
            .await;
        assert_eq!(got.unwrap(), report());
        assert_eq!(cache.stats().total.decode_errors, i as u64 + 1);
        // Healed: the next call is a hit.
        assert_eq!(cache.get_json::<Report>(*name).await.unwrap(), Some(report()));
    }
}

/// Redis only: a stopped server makes calls compute, never fail.
#[tokio::test]
async fn redis_down_means_compute_not_error() {
    let mut fx = Fixture::redis();
    let cache = fx
        .builder()
        .op_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let Server::Single(server) = &mut fx.server else {
        unreachable!()
    };
    server.stop();
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let got: Result<u32, ()> = cache
            .get_or_compute("down", &Policy::default(), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(42)
            })
            .await;
        assert_eq!(got, Ok(42));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(cache.stats().total.backend_errors >= 3);
    assert!(
        cache.get_json::<u32>("down").await.is_err(),
        "by-hand reads report the failure"
    );
}

/// Redis only: a wrong password is a typed error at build time, without the password.
#[tokio::test]
async fn redis_wrong_password_is_a_typed_early_error() {
    let server = RedisServer::start_with(aside_testkit::ServerOptions::new().password("right-horse"));
    let url = format!("redis://:wrong-battery@127.0.0.1:{}", server.port());
    let err = Cache::builder().redis_url(&url).build().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-battery"), "{shown}");
    assert!(shown.contains("127.0.0.1"), "{shown}");

    let good = Cache::builder().redis_url(&server.url()).build().await.unwrap();
    assert!(good.ping().await.unwrap() < Duration::from_secs(1));
}
