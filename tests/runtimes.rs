//! Guarantee 11: the global cache works from every tokio runtime that calls it.
//!
//! `Cache::global()` connects on first use, inside whatever runtime is current.
//! Nothing of its connection may die with that runtime: each later runtime —
//! the next `#[tokio::test]`, a runtime dropped and built again, current-thread
//! runtimes, one runtime per thread — must see hits and no backend errors.
//!
//! Every test here uses the global cache through `#[cached]`. The first one to
//! run in the process starts one `redis-server` (kept in a static) and points
//! `REDIS_URL` at it before the global cache is built. Each test uses functions
//! of its own and reads the counters of those functions only, so the tests may
//! share one process (`cargo test`) or run one per process (nextest).
//! `successive_tokio_tests_in_one_process` runs the three `tokio_test_*`
//! tests again in one child process, one after another, as `cargo test` does.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use aside::cached;
use aside_testkit::RedisServer;

/// The server of this process, started by the first test that needs it.
fn redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = RedisServer::start();
        // Set before any test touches the global cache (it reads the
        // environment once, on first use); every test calls this first.
        std::env::set_var("REDIS_URL", server.url());
        std::env::set_var("CACHE_NAMESPACE", "runtimes");
        server
    })
}

static RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(prefix = "runtimes", ttl = 300)]
async fn first(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[cached(prefix = "runtimes", ttl = 300)]
async fn second(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[cached(prefix = "runtimes", ttl = 300)]
async fn third(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[cached(prefix = "runtimes", ttl = 300)]
async fn replaced(round: u64, n: u64) -> u64 {
    round * 1000 + n
}

#[cached(prefix = "runtimes", ttl = 300)]
async fn current_thread(round: u64, n: u64) -> u64 {
    round * 1000 + n
}

#[cached(prefix = "runtimes", ttl = 300)]
async fn per_thread(thread: u64, n: u64) -> u64 {
    thread * 1000 + n
}

/// What a user sees of one function: (hits, misses, backend errors).
fn seen(function: &str) -> (u64, u64, u64) {
    let counters = aside::stats().function(function);
    (counters.hits, counters.misses, counters.backend_errors)
}

/// Ten cold calls, then the same ten again: ten misses, then ten hits.
async fn misses_then_hits(call: impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>) {
    for n in 0..10 {
        assert_eq!(call(n).await, n * n);
    }
    for n in 0..10 {
        assert_eq!(call(n).await, n * n);
    }
}

#[tokio::test]
async fn tokio_test_first() {
    redis();
    misses_then_hits(|n| Box::pin(first(n))).await;
    assert_eq!(seen("runtimes:first"), (10, 10, 0), "(hits, misses, backend errors)");
}

#[tokio::test]
async fn tokio_test_second() {
    redis();
    misses_then_hits(|n| Box::pin(second(n))).await;
    assert_eq!(seen("runtimes:second"), (10, 10, 0), "(hits, misses, backend errors)");
}

#[tokio::test]
async fn tokio_test_third() {
    redis();
    misses_then_hits(|n| Box::pin(third(n))).await;
    assert_eq!(seen("runtimes:third"), (10, 10, 0), "(hits, misses, backend errors)");
}

/// The three tests above, in one process, one runtime after another.
#[test]
fn successive_tokio_tests_in_one_process() {
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["tokio_test_", "--test-threads=1", "--nocapture"])
        .env_remove("REDIS_URL")
        .env_remove("CACHE_NAMESPACE")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("3 passed"),
        "the three #[tokio::test]s in one process:\n{stdout}\n{stderr}"
    );
}

#[test]
fn a_runtime_dropped_and_built_again() {
    redis();
    for round in 0..4 {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            for pass in 0..2 {
                for n in 0..5 {
                    assert_eq!(replaced(round, n).await, round * 1000 + n, "pass {pass}");
                }
            }
        });
        drop(runtime);
        let (hits, misses, errors) = seen("runtimes:replaced");
        assert_eq!(
            (hits, misses, errors),
            (5 * (round + 1), 5 * (round + 1), 0),
            "after runtime {round}: (hits, misses, backend errors)"
        );
    }
}

#[test]
fn current_thread_runtimes() {
    redis();
    for round in 0..3 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(async {
            for _pass in 0..2 {
                for n in 0..5 {
                    assert_eq!(current_thread(round, n).await, round * 1000 + n);
                }
            }
        });
    }
    assert_eq!(
        seen("runtimes:current_thread"),
        (15, 15, 0),
        "(hits, misses, backend errors)"
    );
}

#[test]
fn one_runtime_per_thread() {
    redis();
    let worker = |thread: u64| {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime of this thread");
            runtime.block_on(async {
                for _pass in 0..2 {
                    for n in 0..5 {
                        assert_eq!(per_thread(thread, n).await, thread * 1000 + n);
                    }
                }
            });
        })
    };
    // The first worker ends (and its runtime with it) before the others start,
    // as a pool's first thread may be retired while the rest serve.
    worker(0).join().expect("the first thread's calls");
    let threads: Vec<_> = (1..4).map(worker).collect();
    for thread in threads {
        thread.join().expect("a thread's calls");
    }
    assert_eq!(
        seen("runtimes:per_thread"),
        (20, 20, 0),
        "(hits, misses, backend errors)"
    );
}

/// The clients `server` has now, as `INFO clients` counts them.
fn connected_clients(admin: &mut redis::Connection) -> usize {
    let info: String = redis::cmd("INFO").arg("clients").query(admin).expect("INFO clients");
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("connected_clients in INFO")
}

/// Waits (up to 10 s) until `server` has `count` clients.
fn until_clients(admin: &mut redis::Connection, count: usize, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connected_clients(admin) != count {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {} clients, expected {count}",
            connected_clients(admin)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A multi-thread runtime's calls go through a connection of their own, driven
/// by that runtime's workers; it closes with the runtime, so a process that
/// builds runtime after runtime keeps one store connection, not one per runtime
/// it ever had, and each new runtime still gets hits and no errors.
#[test]
fn each_multi_thread_runtime_gets_a_connection_that_ends_with_it() {
    use aside::{Cache, Plain, Policy};

    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(&server.url())
        .namespace("lanes")
        .build_lazy()
        .expect("a lazy cache");
    let policy = Policy::new(std::time::Duration::from_secs(300)).function("lanes:square");
    let runs = std::sync::Arc::new(AtomicU64::new(0));
    let square = |n: u64| {
        let (cache, policy, runs) = (cache.clone(), policy.clone(), runs.clone());
        async move {
            let Plain(square) = cache
                .get_or_compute(format!("square:{n}"), &policy, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Plain(n * n)
                })
                .await;
            square
        }
    };
    let mut admin = server.connection();
    // The store's own connection, opened from a current-thread runtime.
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    assert_eq!(single.block_on(square(0)), 0);
    drop(single);
    let base = connected_clients(&mut admin);

    for round in 1..=5 {
        let runtime = tokio::runtime::Runtime::new().expect("a multi-thread runtime");
        runtime.block_on(async {
            assert_eq!(square(round).await, round * round);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            // The runtime's own connection opens beside the store's.
            while connected_clients(&mut admin) != base + 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: no connection of the runtime's own"
                );
                assert_eq!(square(round).await, round * round);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            for n in 0..=round {
                assert_eq!(
                    square(n).await,
                    n * n,
                    "round {round}: served through the runtime's connection"
                );
            }
        });
        drop(runtime);
        until_clients(&mut admin, base, &format!("after runtime {round} ended"));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        6,
        "each square computed once, whatever the runtime"
    );
    let counters = cache.stats().function("lanes:square");
    assert_eq!(counters.backend_errors, 0, "{counters:?}");
    assert_eq!(counters.misses, 6, "{counters:?}");
}

/// A cache dropped while its multi-thread runtime lives on closes every
/// connection it opened, the runtime's own included: a service (or a test
/// suite on one runtime) that builds caches and drops them leaks none.
#[test]
fn a_dropped_cache_closes_its_connections_while_the_runtime_lives_on() {
    use aside::{Cache, Plain, Policy};

    let server = RedisServer::start();
    let mut admin = server.connection();
    let alone = connected_clients(&mut admin);
    let runtime = tokio::runtime::Runtime::new().expect("a multi-thread runtime");
    let tasks = runtime.metrics().num_alive_tasks();
    let policy = Policy::new(std::time::Duration::from_secs(300)).function("drop:double");
    for round in 0..3u64 {
        let cache = Cache::builder()
            .redis_url(&server.url())
            .namespace("drop")
            .build_lazy()
            .expect("a lazy cache");
        runtime.block_on(async {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            // The store's connection and this runtime's own.
            while connected_clients(&mut admin) < alone + 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the cache never opened both"
                );
                let Plain(double) = cache
                    .get_or_compute("double", &policy, || async move { Plain(round * 2) })
                    .await;
                assert_eq!(double, 0, "round {round}: the first round's entry");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert_eq!(cache.stats().function("drop:double").backend_errors, 0);
        assert!(
            runtime.metrics().num_alive_tasks() > tasks,
            "the runtime drives the cache's connection"
        );
        drop(cache);
        until_clients(
            &mut admin,
            alone,
            &format!("after the cache of round {round} was dropped"),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while runtime.metrics().num_alive_tasks() != tasks {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {} tasks of the dropped cache still on the runtime",
                runtime.metrics().num_alive_tasks() - tasks
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
