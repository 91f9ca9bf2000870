//! What fail-open costs (guarantee 7), measured against a `redis-server` this
//! benchmark starts on a free loopback port, then kills and restarts:
//!
//! 1. the latency of each call after Redis dies, until the circuit breaker opens
//!    (default operation timeout, 250 ms), against a healthy hit;
//! 2. the cost per call once the breaker is open — `get_or_compute` with a
//!    trivial computation against the same computation called directly;
//! 3. how long after Redis returns caching resumes on its own (a call every 10 ms
//!    until one is a hit).
//!
//! ```text
//! cargo bench --bench fail_open             # full run
//! cargo bench --bench fail_open -- --quick  # a smoke run, a few seconds
//! ```
//!
//! Figures are printed, never asserted. Rounds alternate between aside and the
//! direct call and the median round counts, so a breaker probe (a real Redis
//! attempt every 0.5–5 s) or drift on a shared machine does not decide the result.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aside::{BreakerState, Cache, Plain, Policy};
use aside_testkit::RedisServer;

struct Settings {
    /// Rounds of the open-breaker measurement, per side.
    rounds: usize,
    /// Calls per round.
    calls_per_round: u64,
    /// Healthy hits measured for the baseline of figure 1.
    hits: u64,
}

fn settings() -> Settings {
    if std::env::args().any(|a| a == "--quick") {
        Settings {
            rounds: 5,
            calls_per_round: 2_000,
            hits: 200,
        }
    } else {
        Settings {
            rounds: 10,
            calls_per_round: 10_000,
            hits: 2_000,
        }
    }
}

fn main() {
    let settings = settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run(&settings));
}

/// The trivial computation both sides run.
async fn trivial(n: u64) -> Plain<u64> {
    Plain(black_box(n).wrapping_mul(3).wrapping_add(1))
}

async fn call(cache: &Cache, policy: &Policy, key: &str, n: u64) -> u64 {
    let Plain(value) = cache.get_or_compute(key, policy, || trivial(n)).await;
    value
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn micros_per_call(d: Duration, calls: u64) -> f64 {
    d.as_secs_f64() * 1e6 / calls as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run(settings: &Settings) {
    let mut server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(&server.url())
        .build()
        .await
        .expect("connect to the benchmark's redis-server");
    let policy = Policy::new(Duration::from_secs(300)).function("bench:fail_open");
    println!(
        "fail-open: redis-server on port {}, operation timeout {:?}",
        server.port(),
        cache.settings().op_timeout()
    );

    // Baseline of figure 1: a healthy hit.
    call(&cache, &policy, "hot", 1).await;
    let started = Instant::now();
    for _ in 0..settings.hits {
        black_box(call(&cache, &policy, "hot", 1).await);
    }
    let hit = micros_per_call(started.elapsed(), settings.hits);
    assert_eq!(cache.stats().total.hits, settings.hits, "the baseline calls are hits");
    println!("fail-open: healthy hit (baseline): {hit:.1} µs/call");

    // 1. Redis dies: time each call until the breaker opens.
    server.stop();
    let died = Instant::now();
    let mut latencies = Vec::new();
    while cache.stats().breaker != BreakerState::Open && latencies.len() < 100 {
        let started = Instant::now();
        black_box(call(&cache, &policy, "hot", 1).await);
        latencies.push(started.elapsed());
    }
    let listed: Vec<String> = latencies.iter().map(|d| format!("{:.2}", ms(*d))).collect();
    println!("fail-open: first call after redis died: {:.2} ms", ms(latencies[0]));
    println!(
        "fail-open: calls until the breaker opened: {} in {:.0} ms, each [{}] ms",
        latencies.len(),
        ms(died.elapsed()),
        listed.join(", ")
    );

    // 2. Breaker open: aside against the computation alone, alternating rounds.
    let before = cache.stats();
    let (mut aside, mut direct) = (Vec::new(), Vec::new());
    let mut calls = 0;
    for _ in 0..settings.rounds {
        let started = Instant::now();
        for n in 0..settings.calls_per_round {
            black_box(call(&cache, &policy, "hot", n).await);
        }
        aside.push(micros_per_call(started.elapsed(), settings.calls_per_round));
        calls += settings.calls_per_round;

        let started = Instant::now();
        for n in 0..settings.calls_per_round {
            let Plain(value) = trivial(n).await;
            black_box(value);
        }
        direct.push(micros_per_call(started.elapsed(), settings.calls_per_round));
    }
    let after = cache.stats();
    let probes = calls - (after.breaker_skips - before.breaker_skips);
    let (aside_mean, aside_worst) = (median(aside.clone()), aside.iter().copied().fold(0.0, f64::max));
    let direct_mean = median(direct);
    println!(
        "fail-open: breaker open: aside {aside_mean:.3} µs/call, direct call {direct_mean:.3} µs/call, added {:.3} µs",
        aside_mean - direct_mean
    );
    println!(
        "fail-open: ({} rounds of {} calls each side, median round; worst aside round {aside_worst:.3} µs/call; \
         {probes} of {calls} calls were breaker probes reaching for redis)",
        settings.rounds, settings.calls_per_round
    );

    // 3. Redis returns: call every 10 ms until a call is a hit.
    let down_for = died.elapsed();
    server.restart();
    let returned = Instant::now();
    let mut first_store = None;
    let resumed = loop {
        let computations = cache.stats().total.computations;
        black_box(call(&cache, &policy, "resume", 7).await);
        let now = cache.stats();
        if now.total.computations == computations {
            break returned.elapsed();
        }
        if first_store.is_none() && now.breaker == BreakerState::Closed {
            first_store = Some(returned.elapsed());
        }
        assert!(
            returned.elapsed() < Duration::from_secs(60),
            "caching did not resume within 60 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "fail-open: caching resumed {:.0} ms after redis returned (breaker closed after {:.0} ms; \
         redis had been down {:.1} s, breaker opened {} time(s))",
        ms(resumed),
        first_store.map_or(f64::NAN, ms),
        down_for.as_secs_f64(),
        cache.stats().breaker_opened
    );
}
