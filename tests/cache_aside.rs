//! Guarantee 1, cache-aside: a hit runs no computation; a miss computes once and
//! stores — but only what should be stored: an `Ok`, a `Some` (a `None` only with
//! `cache_none`), never an `Err`, and nothing for arguments that make no key. By
//! hand (`set_json`/`get_json`) and through `get_or_compute` and `#[cached]`, with
//! the counts, entries and TTLs a caller can read back.
//!
//! Every behaviour runs on the memory backend (guarantee 9) and on a
//! `redis-server` started for the test; the parts that read the server itself
//! (`SCAN`) run on Redis only. Each test builds its own cache and hands it to the
//! annotated functions through `cache = cache` (a skipped argument).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{cached, Cache, Policy};
use support::{report, Fixture, Report, Runs};

mod support;

on_backends!(
    [memory, redis]
    round_trip,
    hit_runs_no_computation,
    only_ok_and_some_are_cached,
    a_hit_runs_no_computation,
    a_hit_runs_no_computation_and_the_entry_expires_within_its_ttl,
    result_caches_only_ok,
    option_caches_none_only_with_cache_none,
    only_ok_and_some_are_written_unless_cache_none,
    an_argument_that_cannot_be_a_key_computes_every_time,
);

async fn round_trip(fx: Fixture) {
    let cache = fx.cache().await;
    assert_eq!(cache.get_json::<Report>("report:eu").await.unwrap(), None);
    cache
        .set_json("report:eu", &report(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get_json::<Report>("report:eu").await.unwrap(), Some(report()));
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

#[cached(ttl = 60, skip(cache, runs), cache = cache)]
async fn square(cache: &Cache, runs: &Runs, n: u64) -> u64 {
    runs.tick();
    n * n
}

async fn a_hit_runs_no_computation(fx: Fixture) {
    let cache = fx.cache_in("hits").await;
    let runs = Runs::default();
    assert_eq!(square(&cache, &runs, 12).await, 144);
    assert_eq!(square(&cache, &runs, 12).await, 144);
    assert_eq!(square(&cache, &runs, 12).await, 144);
    assert_eq!(runs.get(), 1);
    // Other arguments, other entry.
    assert_eq!(square(&cache, &runs, 13).await, 169);
    assert_eq!(runs.get(), 2);
    let stats = cache.stats().function("computed:square");
    assert_eq!((stats.hits, stats.misses, stats.computations), (2, 2, 2));
}

#[cached(prefix = "reports", ttl = 120, skip(cache, runs), cache = cache)]
async fn revenue(cache: &Cache, runs: &Runs, region: &str, month: u32) -> Result<u64, std::io::Error> {
    runs.tick();
    Ok(u64::from(month) * region.len() as u64)
}

async fn a_hit_runs_no_computation_and_the_entry_expires_within_its_ttl(fx: Fixture) {
    let cache = fx.cache_in("hits").await;
    let runs = Runs::default();
    assert_eq!(revenue(&cache, &runs, "eu", 11).await.unwrap(), 22);
    assert_eq!(revenue(&cache, &runs, "eu", 11).await.unwrap(), 22);
    assert_eq!(runs.get(), 1);

    let key = revenue_key(&cache, "eu", 11);
    if !fx.is_memory() {
        let stored = fx.keys_matching("hits:*");
        assert_eq!(stored, [key.as_str()]);
    }
    let ttl = fx.pttl_of(&cache, &key).await;
    assert!(ttl > 0 && ttl <= 120_000, "PTTL {ttl} ms not in (0, 120 s]");
}

#[derive(Debug, PartialEq)]
struct Failed;

#[cached(skip(cache, runs), cache = cache)]
async fn checked(cache: &Cache, runs: &Runs, n: i64) -> Result<u64, Failed> {
    runs.tick();
    u64::try_from(n).map_err(|_| Failed)
}

async fn result_caches_only_ok(fx: Fixture) {
    let cache = fx.cache_in("result").await;
    let runs = Runs::default();
    assert_eq!(checked(&cache, &runs, -1).await, Err(Failed));
    assert_eq!(checked(&cache, &runs, -1).await, Err(Failed));
    assert_eq!(runs.get(), 2, "an Err is not stored");
    assert_eq!(checked(&cache, &runs, 5).await, Ok(5));
    assert_eq!(checked(&cache, &runs, 5).await, Ok(5));
    assert_eq!(runs.get(), 3, "an Ok is stored");
}

#[cached(skip(cache, runs), cache = cache)]
async fn find(cache: &Cache, runs: &Runs, id: u32) -> Option<String> {
    runs.tick();
    (id % 2 == 0).then(|| format!("user-{id}"))
}

#[cached(skip(cache, runs), cache = cache, cache_none = true)]
async fn find_or_none(cache: &Cache, runs: &Runs, id: u32) -> Option<String> {
    runs.tick();
    (id % 2 == 0).then(|| format!("user-{id}"))
}

async fn option_caches_none_only_with_cache_none(fx: Fixture) {
    let cache = fx.cache_in("option").await;
    let runs = Runs::default();
    assert_eq!(find(&cache, &runs, 1).await, None);
    assert_eq!(find(&cache, &runs, 1).await, None);
    assert_eq!(runs.get(), 2, "None is not stored by default");
    assert_eq!(find(&cache, &runs, 2).await.as_deref(), Some("user-2"));
    assert_eq!(find(&cache, &runs, 2).await.as_deref(), Some("user-2"));
    assert_eq!(runs.get(), 3, "Some is stored");

    let runs = Runs::default();
    assert_eq!(find_or_none(&cache, &runs, 1).await, None);
    assert_eq!(find_or_none(&cache, &runs, 1).await, None);
    assert_eq!(runs.get(), 1, "None is stored with cache_none");
    assert!(
        find_or_none_invalidate(&cache, 1).await.unwrap(),
        "the stored None is an entry"
    );
}

#[cached(skip(cache, runs), cache = cache)]
async fn checked_text(cache: &Cache, runs: &Runs, n: i64) -> Result<u64, String> {
    runs.tick();
    u64::try_from(n).map_err(|e| e.to_string())
}

#[cached(skip(cache), cache = cache, cache_none = true)]
async fn lookup(cache: &Cache, email: &str) -> Option<u64> {
    (email == "ada@example.com").then_some(1)
}

#[cached(skip(cache), cache = cache)]
async fn lookup_some(cache: &Cache, email: &str) -> Option<u64> {
    (email == "ada@example.com").then_some(1)
}

async fn only_ok_and_some_are_written_unless_cache_none(fx: Fixture) {
    let cache = fx.cache_in("outcomes").await;
    let runs = Runs::default();
    assert!(checked_text(&cache, &runs, -1).await.is_err());
    assert!(
        !fx.holds(&cache, &checked_text_key(&cache, -1)).await,
        "an Err is not written"
    );
    checked_text(&cache, &runs, 1).await.unwrap();
    assert!(fx.holds(&cache, &checked_text_key(&cache, 1)).await);

    assert_eq!(lookup_some(&cache, "nobody").await, None);
    assert!(
        !fx.holds(&cache, &lookup_some_key(&cache, "nobody")).await,
        "None is not written by default"
    );
    assert_eq!(lookup(&cache, "nobody").await, None);
    assert!(
        fx.holds(&cache, &lookup_key(&cache, "nobody")).await,
        "None is written with cache_none"
    );
}

#[cached(skip(cache, runs), cache = cache)]
async fn totals(cache: &Cache, runs: &Runs, by_pair: HashMap<(u8, u8), u32>) -> u32 {
    runs.tick();
    by_pair.values().sum()
}

async fn an_argument_that_cannot_be_a_key_computes_every_time(fx: Fixture) {
    let cache = fx.cache_in("no-key").await;
    let runs = Runs::default();
    // JSON object keys must be strings: this map has no key, so the call is not cached.
    let map = HashMap::from([((1, 2), 3)]);
    assert_eq!(totals(&cache, &runs, map.clone()).await, 3);
    assert_eq!(totals(&cache, &runs, map.clone()).await, 3);
    assert_eq!(runs.get(), 2);
    assert!(totals_key(&cache, map).starts_with("<no key: "));
}

#[path = "support/monitor.rs"]
mod monitor;
use monitor::Monitor;

/// Guarantee 1's cost, counted on the server: a miss of an entry with two tags
/// sends three requests (the read, one script that takes the lease and records
/// the entry in both tag sets, one script that stores) and a hit one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_miss_costs_three_round_trips_and_a_hit_one() {
    let fx = Fixture::redis();
    let support::Server::Single(server) = &fx.server else {
        unreachable!()
    };
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).tags(["orders", "region:eu"]);
    let runs = Runs::default();
    // Warm up: the scripts are loaded, the connections open.
    let warm: Option<u64> = cache
        .get_or_compute("warm-up", &policy, || async {
            runs.tick();
            Some(1u64)
        })
        .await;
    assert_eq!(warm, Some(1));

    let monitor = Monitor::start(server.port());
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..2 {
        let got: Option<u64> = cache
            .get_or_compute("counted-miss", &policy, || async {
                runs.tick();
                Some(2u64)
            })
            .await;
        assert_eq!(got, Some(2));
    }
    assert_eq!(runs.get(), 2, "one computation for the warm-up, one for the miss");
    aside_testkit::until("the monitor to see the miss and the hit", || {
        monitor.requests_naming("counted-miss").len() >= 4
    })
    .await;
    // Anything more would arrive right after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = monitor.requests_naming("counted-miss").len();
    assert_eq!(
        requests,
        4,
        "a tagged miss is three requests and a hit one; seen: {:#?}",
        monitor.requests_naming("counted-miss")
    );
}

/// On one node, a batch of a tag's invalidation is one transaction: the
/// entries deleted by one `DEL`, their leases by another, and one `PUBLISH`
/// naming them, between `MULTI` and `EXEC` — no script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_batch_is_one_transaction_on_one_node() {
    let fx = Fixture::redis();
    let support::Server::Single(server) = &fx.server else {
        unreachable!()
    };
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).tags(["batched"]);
    for n in 0..3u64 {
        let got: Option<u64> = cache
            .get_or_compute(format!("batched-{n}"), &policy, || async move { Some(n) })
            .await;
        assert_eq!(got, Some(n));
    }
    let monitor = Monitor::start(server.port());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.invalidate_tag("batched").await.unwrap(), 3);
    aside_testkit::until("the monitor to see the transaction", || {
        monitor.requests_naming("batched-0").len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = monitor.requests_naming("batched-0");
    let commands: Vec<&str> = requests
        .iter()
        .filter_map(|line| line.split("] \"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(commands, ["DEL", "DEL", "PUBLISH"], "{requests:#?}");
    for n in 0..3 {
        assert!(
            requests[0].contains(&format!("batched-{n}\"")),
            "one DEL of every entry: {requests:#?}"
        );
        assert!(
            requests[1].contains(&format!("batched-{n}}}:lease\"")),
            "one DEL of every lease: {requests:#?}"
        );
    }
    let full = cache.full_key("batched-0").unwrap();
    let stored: bool = redis::cmd("EXISTS").arg(&full).query(&mut server.connection()).unwrap();
    assert!(!stored);
}
