//! Freshness control on Redis, as a caller sees it: how many misses a steady
//! reader of a hot key meets across 10 expiries with `refresh_ahead` (and
//! without, the baseline), and how long a caller of a stale entry waits for a
//! 2 s computation with `soft_timeout = "200ms"` (and without).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aside::{cached, CacheStatus};

use crate::REDIS;

/// Computations of the functions below.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Refreshed ahead after half of its 1 s fresh life. (Called through its
/// `_with_status` companion only.)
#[allow(dead_code)]
#[cached(prefix = "bench", ttl = 1, refresh_ahead = 0.5, cache = REDIS)]
async fn hot_ahead(region: u32) -> u64 {
    let _ = region;
    RUNS.fetch_add(1, Ordering::Relaxed) as u64
}

/// The same key shape, left to expire.
#[allow(dead_code)]
#[cached(prefix = "bench", ttl = 1, cache = REDIS)]
async fn hot_plain(region: u32) -> u64 {
    let _ = region;
    RUNS.fetch_add(1, Ordering::Relaxed) as u64
}

/// A 2 s report whose stale value is served after 200 ms.
#[cached(prefix = "bench", ttl = 1, stale = "60s", soft_timeout = "200ms", cache = REDIS)]
async fn slow_soft(month: u32) -> u64 {
    let _ = month;
    tokio::time::sleep(Duration::from_secs(2)).await;
    RUNS.fetch_add(1, Ordering::Relaxed) as u64
}

/// The same without a soft timeout: the caller that refreshes waits.
#[cached(prefix = "bench", ttl = 1, stale = "60s", cache = REDIS)]
async fn slow_plain(month: u32) -> u64 {
    let _ = month;
    tokio::time::sleep(Duration::from_secs(2)).await;
    RUNS.fetch_add(1, Ordering::Relaxed) as u64
}

/// Misses of a reader calling every 20 ms for 10 fresh lives (10.5 s), after its first call.
async fn misses_over_ten_expiries<F, Fut>(call: F) -> (usize, usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = CacheStatus>,
{
    let _ = call().await;
    let until = Instant::now() + Duration::from_millis(10_500);
    let (mut calls, mut misses) = (0, 0);
    while Instant::now() < until {
        calls += 1;
        if call().await == CacheStatus::Miss {
            misses += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (misses, calls)
}

/// The latency of the call that finds the entry stale.
async fn stale_call_latency<F, Fut>(call: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    call().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let started = Instant::now();
    call().await;
    started.elapsed()
}

pub async fn freshness() {
    let region = std::process::id();
    let (ahead, calls) = misses_over_ten_expiries(|| async { hot_ahead_with_status(region).await.1 }).await;
    let (plain, plain_calls) = misses_over_ten_expiries(|| async { hot_plain_with_status(region).await.1 }).await;
    println!(
        "refresh ahead, a reader every 20 ms across 10 expiries of a 1 s entry: \
         aside refresh_ahead = 0.5 {ahead} misses of {calls} calls, without {plain} misses of {plain_calls} calls"
    );
    let soft = stale_call_latency(|| slow_soft(region)).await;
    let waited = stale_call_latency(|| slow_plain(region)).await;
    println!(
        "soft timeout, the caller of a stale entry whose computation takes 2 s: \
         aside soft_timeout = 200ms {:.0} ms, without {:.0} ms, ratio {:.2}",
        soft.as_secs_f64() * 1e3,
        waited.as_secs_f64() * 1e3,
        soft.as_secs_f64() / waited.as_secs_f64()
    );
    // Let the background refresh finish before the next section measures.
    tokio::time::sleep(Duration::from_secs(2)).await;
}
