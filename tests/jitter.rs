//! TTL jitter (`jitter = "10%"`, `Policy::jitter`, `CACHE_TTL_JITTER`): entries
//! written together expire at spread times, read back with `PTTL` from the
//! servers; never longer than asked, never above the ceiling.

use std::time::Duration;

use aside::{cached, Adaptive, Cache, Error, Plain, Policy, TTL_CEILING};
use support::Fixture;

mod support;

on_backends!([memory, redis, cluster]
    entries_written_together_get_spread_ttls,
    the_cache_default_applies_unless_the_policy_says_otherwise,
    a_jittered_ttl_never_exceeds_the_ceiling,
    the_stale_window_follows_the_drawn_ttl,
);

#[cached(ttl = 1000, jitter = "10%", skip(cache), cache = cache)]
async fn report(cache: &Cache, n: u32) -> u32 {
    n
}

/// The TTLs of `keys` (full keys), in seconds.
async fn ttls(fx: &Fixture, cache: &Cache, keys: &[String]) -> Vec<f64> {
    let mut ttls = Vec::new();
    for key in keys {
        let ttl = fx.ttl_of(cache, key).await.unwrap_or_else(|| panic!("{key} stored"));
        ttls.push(ttl.as_secs_f64());
    }
    ttls
}

fn spread(ttls: &[f64]) -> f64 {
    let max = ttls.iter().copied().fold(f64::MIN, f64::max);
    let min = ttls.iter().copied().fold(f64::MAX, f64::min);
    max - min
}

async fn entries_written_together_get_spread_ttls(fx: Fixture) {
    let cache = fx.cache().await;
    let calls = (0..60).map(|n| {
        let cache = cache.clone();
        async move { report(&cache, n).await }
    });
    futures_util::future::join_all(calls).await;
    let keys: Vec<String> = (0..60).map(|n| report_key(&cache, n)).collect();
    let ttls = ttls(&fx, &cache, &keys).await;
    for ttl in &ttls {
        assert!(*ttl <= 1000.0 && *ttl > 895.0, "PTTL {ttl} s outside [900, 1000]");
    }
    assert!(spread(&ttls) > 40.0, "60 draws from a 100 s range spread: {ttls:?}");
    if !fx.is_memory() {
        // On the server itself.
        let ms = fx.pttl(&keys[0]).expect("stored");
        assert!((895_000..=1_000_000).contains(&ms), "PTTL {ms}");
    }
}

async fn the_cache_default_applies_unless_the_policy_says_otherwise(fx: Fixture) {
    let cache = fx.builder().ttl_jitter(0.2).build().await.unwrap();
    assert!((cache.settings().ttl_jitter() - 0.2).abs() < 1e-9);
    let defaulted = Policy::new(Duration::from_secs(500));
    let exact = Policy::new(Duration::from_secs(500)).jitter(0.0);
    for n in 0..30u32 {
        let Plain(_) = cache
            .get_or_compute(format!("d:{n}"), &defaulted, || async move { Plain(n) })
            .await;
        let Plain(_) = cache
            .get_or_compute(format!("e:{n}"), &exact, || async move { Plain(n) })
            .await;
    }
    let full = |prefix: &str| -> Vec<String> {
        (0..30)
            .map(|n| cache.full_key(format!("{prefix}:{n}")).unwrap())
            .collect()
    };
    let defaulted = ttls(&fx, &cache, &full("d")).await;
    assert!(defaulted.iter().all(|t| *t <= 500.0 && *t > 395.0), "{defaulted:?}");
    assert!(spread(&defaulted) > 20.0, "{defaulted:?}");
    let exact = ttls(&fx, &cache, &full("e")).await;
    assert!(
        exact.iter().all(|t| *t <= 500.0 && *t > 495.0),
        "jitter(0.0) turns it off: {exact:?}"
    );
}

async fn a_jittered_ttl_never_exceeds_the_ceiling(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).jitter(0.1);
    let mut keys = Vec::new();
    for n in 0..20u32 {
        let key = format!("week:{n}");
        let Plain(_) = cache
            .get_or_compute(key.as_str(), &policy, || async move {
                Adaptive::new(Plain(n)).ttl_from(|_| Duration::from_secs(7 * 86_400))
            })
            .await
            .into_inner();
        keys.push(cache.full_key(key).unwrap());
    }
    let ceiling = TTL_CEILING.as_secs_f64();
    let ttls = ttls(&fx, &cache, &keys).await;
    for ttl in &ttls {
        assert!(*ttl <= ceiling && *ttl > ceiling * 0.9 - 5.0, "PTTL {ttl} s");
    }
    assert!(
        spread(&ttls) > 600.0,
        "spread below the ceiling, not all clamped to it: {ttls:?}"
    );
}

async fn the_stale_window_follows_the_drawn_ttl(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(100))
        .stale(Duration::from_secs(50))
        .jitter(0.1);
    let mut keys = Vec::new();
    for n in 0..20u32 {
        let Plain(_) = cache
            .get_or_compute(format!("s:{n}"), &policy, || async move { Plain(n) })
            .await;
        keys.push(cache.full_key(format!("s:{n}")).unwrap());
    }
    let ttls = ttls(&fx, &cache, &keys).await;
    assert!(ttls.iter().all(|t| *t <= 150.0 && *t > 139.0), "{ttls:?}");
}

#[test]
fn a_jitter_out_of_range_is_a_typed_configuration_error() {
    let error = Cache::builder().memory().ttl_jitter(1.5).build_lazy().unwrap_err();
    assert!(matches!(error, Error::Config { var: "ttl_jitter", .. }), "{error}");
    let error =
        aside::Settings::from_lookup(|name| (name == "CACHE_TTL_JITTER").then(|| "150%".to_owned())).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Config {
                var: "CACHE_TTL_JITTER",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("150%"), "{error}");
}

/// The attribute accepts the runtime's largest jitter exactly (above it, the UI
/// case `jitter_above_half`): the two crates agree.
#[cached(ttl = 60, jitter = "50%")]
async fn at_the_largest_jitter(n: u32) -> u32 {
    n
}

#[tokio::test]
async fn the_attribute_and_the_runtime_share_the_largest_jitter() {
    assert_eq!(aside::config::MAX_TTL_JITTER, 0.5);
    assert_eq!(at_the_largest_jitter(3).await, 3);
}
