//! Conditional caching and TTL from the value (`unless`, `ttl_from`, and
//! `aside::Adaptive` by hand): what is stored, for how long (read back with
//! `PTTL` from the servers), and how many computations run — concurrent callers
//! of a declined value included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aside::{cached, Adaptive, Cache, Plain, Policy, TTL_CEILING};
use support::Fixture;

mod support;

on_backends!([memory, redis, cluster]
    empty_results_are_returned_and_not_stored,
    the_ttl_comes_from_the_value,
    a_ttl_from_the_value_is_clamped_to_the_ceiling_and_the_floor,
    concurrent_callers_of_a_declined_value_share_one_computation,
    a_declined_refresh_returns_the_new_value_and_keeps_the_stale_one,
    by_hand_with_adaptive,
    a_tagged_entry_with_a_longer_ttl_from_is_still_invalidated_by_its_tag,
);

/// Counts how often a body ran.
#[derive(Default)]
struct Runs(AtomicUsize);

impl Runs {
    fn tick(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

// `unless` and `ttl_from` take `fn(&T)`, and `T` is `Vec<u32>` here.
#[allow(clippy::ptr_arg)]
fn is_empty_page(page: &Vec<u32>) -> bool {
    page.is_empty()
}

/// One minute per result, so a busy search lives longer than a rare one.
#[allow(clippy::ptr_arg)]
fn minute_per_result(page: &Vec<u32>) -> Duration {
    Duration::from_secs(60 * page.len() as u64)
}

#[cached(ttl = 600, skip(cache, runs), cache = cache, unless = is_empty_page)]
async fn search(cache: &Cache, runs: &Runs, query: &str) -> Result<Vec<u32>, std::io::Error> {
    runs.tick();
    Ok(if query == "rust" { vec![1, 2, 3] } else { Vec::new() })
}

async fn empty_results_are_returned_and_not_stored(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    for round in 1..=3 {
        assert!(search(&cache, &runs, "nothing").await.unwrap().is_empty());
        assert_eq!(runs.get(), round, "an empty page is computed on every call");
    }
    assert_eq!(
        fx.ttl_of(&cache, &search_key(&cache, "nothing")).await,
        None,
        "and never stored"
    );

    assert_eq!(search(&cache, &runs, "rust").await.unwrap(), [1, 2, 3]);
    assert_eq!(search(&cache, &runs, "rust").await.unwrap(), [1, 2, 3]);
    assert_eq!(runs.get(), 4, "a page with results is stored: the second call is a hit");
    let ttl = fx.ttl_of(&cache, &search_key(&cache, "rust")).await.expect("stored");
    assert!(
        ttl > Duration::from_secs(590) && ttl <= Duration::from_secs(600),
        "{ttl:?}"
    );
}

#[cached(ttl = 600, stale = 30, skip(cache), cache = cache, ttl_from = minute_per_result)]
async fn ranked(cache: &Cache, results: u32) -> Vec<u32> {
    (0..results).collect()
}

async fn the_ttl_comes_from_the_value(fx: Fixture) {
    let cache = fx.cache().await;
    for results in [1, 2, 5] {
        assert_eq!(ranked(&cache, results).await.len(), results as usize);
        let ttl = fx.ttl_of(&cache, &ranked_key(&cache, results)).await.expect("stored");
        // Fresh for one minute per result, then the 30 s stale window.
        let expected = Duration::from_secs(60 * u64::from(results) + 30);
        assert!(
            ttl <= expected && ttl > expected - Duration::from_secs(5),
            "{results} results: PTTL {ttl:?}, expected about {expected:?}"
        );
    }
}

fn a_week(_: &u32) -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn nothing(_: &u32) -> Duration {
    Duration::ZERO
}

#[cached(ttl = 60, skip(cache), cache = cache, ttl_from = a_week)]
async fn long_lived(cache: &Cache, n: u32) -> u32 {
    n
}

#[cached(ttl = 60, skip(cache), cache = cache, ttl_from = nothing)]
async fn short_lived(cache: &Cache, n: u32) -> u32 {
    n
}

async fn a_ttl_from_the_value_is_clamped_to_the_ceiling_and_the_floor(fx: Fixture) {
    let cache = fx.cache().await;
    assert_eq!(long_lived(&cache, 1).await, 1);
    let ttl = fx.ttl_of(&cache, &long_lived_key(&cache, 1)).await.expect("stored");
    assert!(
        ttl <= TTL_CEILING && ttl > TTL_CEILING - Duration::from_secs(5),
        "{ttl:?}"
    );

    assert_eq!(short_lived(&cache, 1).await, 1);
    let ttl = fx
        .ttl_of(&cache, &short_lived_key(&cache, 1))
        .await
        .expect("stored for the floor");
    assert!(ttl <= aside::policy::MIN_TTL && ttl > Duration::ZERO, "{ttl:?}");
}

#[cached(ttl = 600, skip(cache, runs), cache = cache, unless = is_empty_page)]
async fn slow_search(cache: &Cache, runs: &Runs, query: &str) -> Result<Vec<u32>, std::io::Error> {
    runs.tick();
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(if query == "rust" { vec![7] } else { Vec::new() })
}

async fn concurrent_callers_of_a_declined_value_share_one_computation(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Arc::new(Runs::default());
    let calls = (0..50).map(|_| {
        let (cache, runs) = (cache.clone(), Arc::clone(&runs));
        tokio::spawn(async move { slow_search(&cache, &runs, "nothing").await.unwrap() })
    });
    let pages = futures_util::future::join_all(calls).await;
    assert!(pages.into_iter().all(|page| page.unwrap().is_empty()));
    assert_eq!(
        runs.get(),
        1,
        "50 callers of one cold key: one computation, its value for all"
    );
    assert_eq!(
        fx.ttl_of(&cache, &slow_search_key(&cache, "nothing")).await,
        None,
        "still not stored"
    );
    // The next call, after the flight, computes again.
    assert!(slow_search(&cache, &runs, "nothing").await.unwrap().is_empty());
    assert_eq!(runs.get(), 2);
}

async fn a_declined_refresh_returns_the_new_value_and_keeps_the_stale_one(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(1)).stale(Duration::from_secs(60));
    let page = |contents: Vec<u32>| {
        let (cache, policy) = (cache.clone(), policy.clone());
        async move {
            let Plain(page) = cache
                .get_or_compute("page", &policy, || async move {
                    Adaptive::new(Plain(contents)).unless(is_empty_page)
                })
                .await
                .into_inner();
            page
        }
    };
    assert_eq!(page(vec![1]).await, [1]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale now: the caller that refreshes gets its (empty, declined) value ...
    assert_eq!(page(Vec::new()).await, Vec::<u32>::new());
    // ... and the stale entry stays for the others.
    assert_eq!(cache.get_json::<Vec<u32>>("page").await.unwrap(), Some(vec![1]));
}

async fn by_hand_with_adaptive(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    let policy = Policy::new(Duration::from_secs(300));
    let lookup = |id: u32| {
        let (cache, policy, runs) = (cache.clone(), policy.clone(), &runs);
        async move {
            cache
                .get_or_compute(format!("user:{id}"), &policy, || async move {
                    runs.tick();
                    let found = (id == 1).then(|| "ada".to_owned());
                    // Known absent for 10 s only; present for an hour.
                    Adaptive::new(found)
                        .ttl_from(|found: &Option<String>| Duration::from_secs(if found.is_some() { 3600 } else { 10 }))
                })
                .await
                .into_inner()
        }
    };
    let with_none = Policy::new(Duration::from_secs(300)).cache_none(true);
    let cache2 = cache.clone();
    let absent = || {
        let (cache, policy, runs) = (cache2.clone(), with_none.clone(), &runs);
        async move {
            cache
                .get_or_compute("user:2", &policy, || async move {
                    runs.tick();
                    Adaptive::new(None::<String>).ttl_from(|_| Duration::from_secs(10))
                })
                .await
                .into_inner()
        }
    };
    assert_eq!(lookup(1).await.as_deref(), Some("ada"));
    assert_eq!(lookup(1).await.as_deref(), Some("ada"));
    assert_eq!(runs.get(), 1);
    let ttl = cache.ttl("user:1").await.unwrap().expect("stored");
    assert!(
        ttl > Duration::from_secs(3590) && ttl <= Duration::from_secs(3600),
        "{ttl:?}"
    );
    assert_eq!(absent().await, None);
    assert_eq!(absent().await, None);
    assert_eq!(runs.get(), 2, "`None` is stored with `cache_none`, for its own 10 s");
    let ttl = cache.ttl("user:2").await.unwrap().expect("stored");
    assert!(
        ttl > Duration::from_secs(5) && ttl <= Duration::from_secs(10),
        "{ttl:?}"
    );
    if !fx.is_memory() {
        let full = cache.full_key("user:2").unwrap();
        let ms = fx.pttl(&full).expect("on the server");
        assert!(ms > 5_000 && ms <= 10_000, "PTTL {ms}");
    }
}

async fn a_tagged_entry_with_a_longer_ttl_from_is_still_invalidated_by_its_tag(fx: Fixture) {
    let cache = fx.cache().await;
    // The policy's lifetime is 2 s; the value asks for an hour: the tag record
    // must cover the hour.
    let policy = Policy::new(Duration::from_secs(2)).tags(["catalogue"]);
    let Plain(n) = cache
        .get_or_compute("long", &policy, || async {
            Adaptive::new(Plain(5)).ttl_from(|_| Duration::from_secs(3600))
        })
        .await
        .into_inner();
    assert_eq!(n, 5);
    if !fx.is_memory() {
        for key in fx.all_keys().iter().filter(|k| k.contains("~tag:")) {
            let ms = fx.pttl(key).expect("tag set exists");
            assert!(ms > 3_000_000, "{key}: PTTL {ms} does not cover the entry's hour");
        }
    }
    assert_eq!(cache.invalidate_tag("catalogue").await.unwrap(), 1);
    assert!(!cache.exists("long").await.unwrap());
}
