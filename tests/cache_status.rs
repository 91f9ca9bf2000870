//! Per-call outcome (`<fn>_with_status`, `Cache::get_or_compute_with_status`):
//! each `CacheStatus` as a user meets it, with the computations it implies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aside::{cached, Cache, CacheStatus, Plain, Policy};
use aside_testkit::RedisServer;
use support::Fixture;

mod support;

on_backends!([memory, redis, cluster]
    a_miss_then_hits,
    a_stale_value_while_one_caller_refreshes,
    concurrent_callers_of_a_cold_key_are_coalesced,
    a_call_without_a_key_is_bypassed,
    x_cache_tells_a_stale_response_from_a_hit,
);

/// Counts how often a body ran.
#[derive(Default)]
struct Runs(AtomicUsize);

impl Runs {
    fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cached(ttl = 60, skip(cache, runs), cache = cache)]
async fn price(cache: &Cache, runs: &Runs, sku: &str) -> Result<u64, std::io::Error> {
    runs.tick();
    Ok(sku.len() as u64)
}

async fn a_miss_then_hits(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    let (price_of, status) = price_with_status(&cache, &runs, "abc").await;
    assert_eq!((price_of.unwrap(), status), (3, CacheStatus::Miss));
    for _ in 0..2 {
        let (price_of, status) = price_with_status(&cache, &runs, "abc").await;
        assert_eq!((price_of.unwrap(), status), (3, CacheStatus::Hit));
    }
    assert_eq!(
        price(&cache, &runs, "abc").await.unwrap(),
        3,
        "the plain function shares the entry"
    );
    assert_eq!(runs.get(), 1);
    assert!(fx.ttl_of(&cache, &price_key(&cache, "abc")).await.is_some(), "stored");
}

#[allow(dead_code)] // only its `_with_status` companion is called
#[cached(ttl = 1, stale = 60, skip(cache, runs), cache = cache)]
async fn dashboard(cache: &Cache, runs: &Runs, team: u32) -> u32 {
    runs.tick();
    tokio::time::sleep(Duration::from_millis(400)).await;
    team * 10 + runs.get() as u32
}

async fn a_stale_value_while_one_caller_refreshes(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Arc::new(Runs::default());
    assert_eq!(dashboard_with_status(&cache, &runs, 1).await, (11, CacheStatus::Miss));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One caller refreshes (slowly); the one after it gets the stale value at once.
    let refresher = tokio::spawn({
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        async move { dashboard_with_status(&cache, &runs, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(dashboard_with_status(&cache, &runs, 1).await, (11, CacheStatus::Stale));
    assert_eq!(
        refresher.await.unwrap(),
        (12, CacheStatus::Miss),
        "the refresher computed"
    );
    assert_eq!(dashboard_with_status(&cache, &runs, 1).await, (12, CacheStatus::Hit));
    assert_eq!(runs.get(), 2);
}

#[allow(dead_code)] // only its `_with_status` companion is called
#[cached(ttl = 60, skip(cache, runs), cache = cache)]
async fn report(cache: &Cache, runs: &Runs, month: u32) -> u32 {
    runs.tick();
    tokio::time::sleep(Duration::from_millis(300)).await;
    month
}

async fn concurrent_callers_of_a_cold_key_are_coalesced(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Arc::new(Runs::default());
    let calls = (0..20).map(|_| {
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        tokio::spawn(async move { report_with_status(&cache, &runs, 11).await })
    });
    let answers: Vec<(u32, CacheStatus)> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(runs.get(), 1);
    assert!(answers.iter().all(|(month, _)| *month == 11));
    let count = |status: CacheStatus| answers.iter().filter(|(_, s)| *s == status).count();
    assert_eq!(count(CacheStatus::Miss), 1, "{answers:?}");
    // Callers that started after the computation read the stored value: hits.
    assert_eq!(
        count(CacheStatus::Coalesced) + count(CacheStatus::Hit),
        19,
        "{answers:?}"
    );
    assert!(count(CacheStatus::Coalesced) >= 1, "{answers:?}");
}

async fn a_call_without_a_key_is_bypassed(fx: Fixture) {
    let cache = fx.cache().await;
    // A tag with a brace cannot be recorded: the call computes without the cache.
    let policy = Policy::default().tags(["{bad}"]);
    for _ in 0..2 {
        let (Plain(n), status) = cache
            .get_or_compute_with_status("k", &policy, || async { Plain(5) })
            .await;
        assert_eq!((n, status), (5, CacheStatus::Bypassed));
    }
    assert!(!cache.exists("k").await.unwrap());
}

#[tokio::test]
async fn the_off_backend_bypasses_every_call() {
    let cache = Cache::builder().off().build().await.unwrap();
    let runs = Runs::default();
    for _ in 0..2 {
        let (price_of, status) = price_with_status(&cache, &runs, "ab").await;
        assert_eq!((price_of.unwrap(), status), (2, CacheStatus::Bypassed));
    }
    assert_eq!(runs.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_bypassed_and_says_so() {
    let mut server = RedisServer::start();
    let cache = Cache::builder().redis_url(&server.url()).build().await.unwrap();
    let runs = Runs::default();
    assert_eq!(price_with_status(&cache, &runs, "a").await.1, CacheStatus::Miss);
    server.stop();
    let (price_of, status) = price_with_status(&cache, &runs, "a").await;
    assert_eq!(
        (price_of.unwrap(), status),
        (1, CacheStatus::Bypassed),
        "fail-open, and said so"
    );
    assert_eq!(runs.get(), 2);
}

#[test]
fn statuses_read_as_x_cache_values() {
    let all = [
        CacheStatus::Hit,
        CacheStatus::Stale,
        CacheStatus::Miss,
        CacheStatus::Coalesced,
        CacheStatus::Bypassed,
    ];
    let names: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["HIT", "STALE", "MISS", "COALESCED", "BYPASS"]);
    let from_cache: Vec<bool> = all.iter().map(|s| s.from_cache()).collect();
    assert_eq!(from_cache, [true, true, false, true, false]);
}

/// The HTTP layer's `X-Cache` of a `GET` to `router`.
async fn x_cache(router: &axum::Router) -> String {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get("/board")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    response.headers()["x-cache"].to_str().unwrap().to_owned()
}

async fn x_cache_tells_a_stale_response_from_a_hit(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Arc::new(Runs::default());
    let handler = {
        let runs = Arc::clone(&runs);
        move || {
            let runs = Arc::clone(&runs);
            async move {
                runs.tick();
                tokio::time::sleep(Duration::from_millis(400)).await;
                format!("board {}", runs.get())
            }
        }
    };
    let layer = aside::http::CacheLayer::new(cache)
        .name("board")
        .ttl(Duration::from_secs(1))
        .stale(Duration::from_secs(60));
    let router = axum::Router::new().route("/board", axum::routing::get(handler).layer(layer));
    assert_eq!(x_cache(&router).await, "MISS");
    assert_eq!(x_cache(&router).await, "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refresher = tokio::spawn({
        let router = router.clone();
        async move { x_cache(&router).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        x_cache(&router).await,
        "STALE",
        "served stale while the route runs again"
    );
    assert_eq!(refresher.await.unwrap(), "MISS");
    assert_eq!(x_cache(&router).await, "HIT");
    assert_eq!(runs.get(), 2);
}
