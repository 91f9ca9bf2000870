//! Guarantee 6, stampede: K concurrent calls for one cold key, from any number of
//! tasks and processes, run the computation once and every caller gets its result;
//! waiters are woken by the store; a dead holder's lease expires and a waiter takes
//! over; nobody waits longer than `wait`.
//!
//! Runs against the memory backend, a single `redis-server` and a 3-master cluster
//! (where it applies). The cross-process tests re-run this very test binary as child
//! processes (`aside_testkit::Children`): each child is an `#[ignore]`d test below
//! (`stampede_child`, `lease_holder_child`) that does nothing unless the parent's
//! environment variables are set.
//!
//! Timing figures are printed (run with `--nocapture` to see them), never asserted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aside::{Cache, Plain, Policy};
use aside_testkit::{child_env, child_runtime, until, Children, STUCK};
use serde::{Deserialize, Serialize};
use support::{Fixture, Server};
use tokio::sync::Semaphore;

mod support;

on_backends!(
    [memory, redis, cluster]
    one_computation_for_200_concurrent_callers,
    waiters_are_woken_by_the_store,
    a_waiter_in_the_holders_process_gives_up_after_wait,
);

on_backends!(
    [redis, cluster]
    stampede_across_processes,
    every_waiter_of_a_process_gives_up_after_wait,
);

on_backends!(
    [redis]
    a_dead_holder_is_replaced_with_the_default_settings,
    a_dead_holders_lease_expires_and_a_waiter_takes_over,
    a_waiter_gives_up_on_a_holder_that_never_finishes,
    a_miss_racing_the_store_does_not_compute_again,
);

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("unix ms fit in u64")
}

/// The cache URL of a Redis fixture, and the URL of the single node that holds the
/// test's own bookkeeping keys (all tagged `{stampede}`, so one node in a cluster).
fn urls(fx: &Fixture) -> (String, String) {
    match &fx.server {
        Server::Single(server) => (server.url(), server.url()),
        Server::Cluster(cluster) => {
            let node = cluster.node_for_key(RUNS_KEY);
            (cluster.url(), cluster.nodes()[node].url())
        }
        Server::Memory => panic!("this test needs Redis"),
    }
}

/// The fixture's backend, for the printed figures.
fn backend(fx: &Fixture) -> &'static str {
    match fx.server {
        Server::Memory => "memory",
        Server::Single(_) => "redis",
        Server::Cluster(_) => "cluster",
    }
}

/// Bookkeeping keys of the cross-process tests (outside the cache's namespace).
const RUNS_KEY: &str = "{stampede}:runs";
const FINISHED_KEY: &str = "{stampede}:finished-ms";

async fn bookkeeping(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("bookkeeping url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect for bookkeeping")
}

async fn read_counter(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let value: Option<u64> = redis::cmd("GET").arg(key).query_async(conn).await.expect("GET counter");
    value.unwrap_or(0)
}

async fn incr(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("INCR")
        .arg(key)
        .query_async(conn)
        .await
        .expect("INCR counter")
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// 1. One process, 200 tasks
// ---------------------------------------------------------------------------

async fn one_computation_for_200_concurrent_callers(fx: Fixture) {
    const CALLERS: u64 = 200;
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60)).function("stampede:cold");
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cache, policy, runs) = (cache.clone(), policy.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                let Plain(value) = cache
                    .get_or_compute("stampede:cold", &policy, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Plain(String::from("the one value"))
                    })
                    .await;
                (value, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (value, elapsed) = task.await.expect("caller task");
        assert_eq!(value, "the one value");
        slowest = slowest.max(elapsed);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the computation ran once");

    let stats = cache.stats().function("stampede:cold");
    assert_eq!(stats.computations, 1, "{stats:?}");
    // Every call is either a hit or a miss (no stale window here)...
    assert_eq!(stats.hits + stats.misses, CALLERS, "{stats:?}");
    // ...and every miss either computed or waited for the one that did.
    assert_eq!(stats.misses, stats.computations + stats.lock_waits, "{stats:?}");
    assert_eq!(
        (
            stats.lock_timeouts,
            stats.stale_hits,
            stats.backend_errors,
            stats.revoked
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    // Stored: the next call is a hit.
    let Plain(again) = cache
        .get_or_compute("stampede:cold", &policy, || async { Plain(String::from("recomputed")) })
        .await;
    assert_eq!(again, "the one value");
    println!(
        "stampede: 1 process x {CALLERS} tasks ({}): 1 computation; hits {} misses {} lock_waits {}; last caller returned after {slowest:?}",
        backend(&fx),
        stats.hits,
        stats.misses,
        stats.lock_waits
    );
}

// ---------------------------------------------------------------------------
// 2. Across processes
// ---------------------------------------------------------------------------

const CHILD_RESULT: &str = "ASIDE-STAMPEDE-CHILD-RESULT ";
const STAMPEDE_VALUE: &str = "computed once across processes";

#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    pid: u32,
    /// When the child actually started its calls (unix ms), against the agreed start.
    started_ms: u64,
    start_ms: u64,
    tasks: Vec<TaskReport>,
    computations: u64,
    misses: u64,
    hits: u64,
    lock_waits: u64,
    lock_timeouts: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TaskReport {
    value_ok: bool,
    returned_ms: u64,
    computed: bool,
}

/// One child of [`stampede_across_processes`]: K tasks on one cold key, started at
/// the agreed instant. Does nothing when run outside that test.
#[test]
#[ignore = "child process of stampede_across_processes"]
fn stampede_child() {
    let Some(env) = child_env(&[
        "ASIDE_STAMPEDE_URL",
        "ASIDE_STAMPEDE_BOOKKEEPING_URL",
        "ASIDE_STAMPEDE_KEY",
        "ASIDE_STAMPEDE_TASKS",
        "ASIDE_STAMPEDE_START_MS",
    ]) else {
        eprintln!("stampede_child: not started by stampede_across_processes; nothing to do");
        return;
    };
    let tasks: usize = env["ASIDE_STAMPEDE_TASKS"].parse().expect("task count");
    let start_ms: u64 = env["ASIDE_STAMPEDE_START_MS"].parse().expect("start ms");
    let key = env["ASIDE_STAMPEDE_KEY"].clone();
    child_runtime().block_on(async move {
        let cache = Cache::builder()
            .redis_url(&env["ASIDE_STAMPEDE_URL"])
            .build()
            .await
            .expect("child cache");
        let bookkeeping_url = env["ASIDE_STAMPEDE_BOOKKEEPING_URL"].clone();
        let policy = Policy::new(Duration::from_secs(60)).function("stampede:across");
        // Everything is connected; now wait for the agreed start.
        tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(unix_ms()))).await;
        let started_ms = unix_ms();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (cache, policy, key) = (cache.clone(), policy.clone(), key.clone());
                let bookkeeping_url = bookkeeping_url.clone();
                tokio::spawn(async move {
                    let computed = Arc::new(AtomicBool::new(false));
                    let flag = Arc::clone(&computed);
                    let Plain(value) = cache
                        .get_or_compute(key.as_str(), &policy, || async move {
                            flag.store(true, Ordering::SeqCst);
                            let mut conn = bookkeeping(&bookkeeping_url).await;
                            incr(&mut conn, RUNS_KEY).await;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let _: () = redis::cmd("SET")
                                .arg(FINISHED_KEY)
                                .arg(unix_ms())
                                .query_async(&mut conn)
                                .await
                                .expect("SET finished");
                            Plain(String::from(STAMPEDE_VALUE))
                        })
                        .await;
                    TaskReport {
                        value_ok: value == STAMPEDE_VALUE,
                        returned_ms: unix_ms(),
                        computed: computed.load(Ordering::SeqCst),
                    }
                })
            })
            .collect();
        let mut reports = Vec::new();
        for handle in handles {
            reports.push(handle.await.expect("child task"));
        }
        let stats = cache.stats().function("stampede:across");
        let report = ChildReport {
            pid: std::process::id(),
            started_ms,
            start_ms,
            tasks: reports,
            computations: stats.computations,
            misses: stats.misses,
            hits: stats.hits,
            lock_waits: stats.lock_waits,
            lock_timeouts: stats.lock_timeouts,
        };
        println!("{CHILD_RESULT}{}", serde_json::to_string(&report).expect("report"));
    });
}

async fn stampede_across_processes(fx: Fixture) {
    const PROCESSES: usize = 4;
    const TASKS: usize = 25;
    let (url, bookkeeping_url) = urls(&fx);
    // Time for every child to start, connect and wait at the line.
    let start_ms = unix_ms() + 2_000;
    let mut children = Children::default();
    for _ in 0..PROCESSES {
        children.spawn(
            "stampede_child",
            &[
                ("ASIDE_STAMPEDE_URL", url.clone()),
                ("ASIDE_STAMPEDE_BOOKKEEPING_URL", bookkeeping_url.clone()),
                ("ASIDE_STAMPEDE_KEY", "stampede:across".to_owned()),
                ("ASIDE_STAMPEDE_TASKS", TASKS.to_string()),
                ("ASIDE_STAMPEDE_START_MS", start_ms.to_string()),
            ],
        );
    }
    let outputs = children.wait(Duration::from_secs(60)).await;
    let mut reports = Vec::new();
    for output in &outputs {
        assert!(
            output.status.success(),
            "a child failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            output.status,
            output.stdout,
            output.stderr
        );
        let line = output
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(CHILD_RESULT))
            .unwrap_or_else(|| {
                panic!(
                    "a child printed no result line (did it run the child test?):\n--- stdout\n{}\n--- stderr\n{}",
                    output.stdout, output.stderr
                )
            });
        let report: ChildReport = serde_json::from_str(line).expect("child report JSON");
        reports.push(report);
    }
    assert_eq!(reports.len(), PROCESSES);

    let mut conn = bookkeeping(&bookkeeping_url).await;
    assert_eq!(
        read_counter(&mut conn, RUNS_KEY).await,
        1,
        "the computation ran once across {PROCESSES} processes: {reports:#?}"
    );
    let finished_ms = read_counter(&mut conn, FINISHED_KEY).await;
    assert!(finished_ms > 0, "the computation recorded its finish");

    let tasks: Vec<&TaskReport> = reports.iter().flat_map(|r| &r.tasks).collect();
    assert_eq!(tasks.len(), PROCESSES * TASKS);
    assert!(
        tasks.iter().all(|t| t.value_ok),
        "every task in every process got the value: {reports:#?}"
    );
    assert_eq!(tasks.iter().filter(|t| t.computed).count(), 1, "{reports:#?}");
    assert_eq!(reports.iter().map(|r| r.computations).sum::<u64>(), 1);
    for report in &reports {
        assert_eq!(report.lock_timeouts, 0, "{report:?}");
        assert_eq!(
            report.hits + report.misses,
            TASKS as u64,
            "every call is a hit or a miss: {report:?}"
        );
    }

    // Figures: how long after the computation finished each waiter returned.
    let mut after: Vec<i64> = tasks
        .iter()
        .filter(|t| !t.computed)
        .map(|t| t.returned_ms as i64 - finished_ms as i64)
        .collect();
    after.sort_unstable();
    let p50 = after[after.len() / 2];
    let max = *after.last().expect("waiters");
    let late: Vec<String> = reports
        .iter()
        .filter(|r| r.started_ms > r.start_ms + 50)
        .map(|r| format!("pid {} +{} ms", r.pid, r.started_ms - r.start_ms))
        .collect();
    if !late.is_empty() {
        println!("stampede: children started late: {}", late.join(", "));
    }
    let waits: u64 = reports.iter().map(|r| r.lock_waits).sum();
    let hits: u64 = reports.iter().map(|r| r.hits).sum();
    println!(
        "stampede: {PROCESSES} processes x {TASKS} tasks: 1 computation; waiters returned p50 {p50} ms, max {max} ms after the store \
         (measured from the computation's finish; {}; lock_waits {waits}, hits {hits})",
        backend(&fx)
    );
}

// ---------------------------------------------------------------------------
// 3. The computing process dies; a holder that never finishes
// ---------------------------------------------------------------------------

/// A lease holder for the tests below: takes the lease of the key, counts its
/// computation in Redis, then computes for `ASIDE_HOLDER_SECS` (the parent kills
/// it long before). Does nothing when run outside those tests.
#[test]
#[ignore = "child process of the lease holder tests"]
fn lease_holder_child() {
    let Some(env) = child_env(&[
        "ASIDE_HOLDER_URL",
        "ASIDE_HOLDER_KEY",
        "ASIDE_HOLDER_LOCK_TTL_MS",
        "ASIDE_HOLDER_SECS",
    ]) else {
        eprintln!("lease_holder_child: not started by a lease holder test; nothing to do");
        return;
    };
    let lock_ttl = Duration::from_millis(env["ASIDE_HOLDER_LOCK_TTL_MS"].parse().expect("ms"));
    let hold = Duration::from_secs(env["ASIDE_HOLDER_SECS"].parse().expect("secs"));
    child_runtime().block_on(async move {
        let url = env["ASIDE_HOLDER_URL"].clone();
        let cache = Cache::builder().redis_url(&url).build().await.expect("cache");
        let policy = Policy::new(Duration::from_secs(60)).lock_ttl(lock_ttl);
        let Plain(value) = cache
            .get_or_compute(env["ASIDE_HOLDER_KEY"].as_str(), &policy, || async move {
                let mut conn = bookkeeping(&url).await;
                incr(&mut conn, RUNS_KEY).await;
                tokio::time::sleep(hold).await;
                Plain(String::from("child"))
            })
            .await;
        println!("lease_holder_child: computed {value:?} (should have been killed first)");
    });
}

fn spawn_holder(children: &mut Children, url: &str, key: &str, lock_ttl: Duration, secs: u64) {
    children.spawn(
        "lease_holder_child",
        &[
            ("ASIDE_HOLDER_URL", url.to_owned()),
            ("ASIDE_HOLDER_KEY", key.to_owned()),
            ("ASIDE_HOLDER_LOCK_TTL_MS", lock_ttl.as_millis().to_string()),
            ("ASIDE_HOLDER_SECS", secs.to_string()),
        ],
    );
}

/// Polls the run counter until the child's computation has started (it counts
/// after taking the lease).
async fn until_runs(url: &str, runs: u64) {
    let mut conn = redis::Client::open(url)
        .expect("bookkeeping url")
        .get_connection()
        .expect("connect for bookkeeping");
    until("the lease holder's computation started", || {
        let value: Option<u64> = redis::cmd("GET").arg(RUNS_KEY).query(&mut conn).expect("GET counter");
        value.unwrap_or(0) >= runs
    })
    .await;
}

/// A caller of the parent process waiting on a child's lease: when it computes,
/// it counts the run and returns "parent"; it answers with its value and when.
fn spawn_parent_waiter(
    cache: &Cache,
    policy: &Policy,
    url: &str,
    key: &'static str,
) -> tokio::task::JoinHandle<(String, Instant)> {
    let (cache, policy, url) = (cache.clone(), policy.clone(), url.to_owned());
    tokio::spawn(async move {
        let Plain(value) = cache
            .get_or_compute(key, &policy, || async move {
                incr(&mut bookkeeping(&url).await, RUNS_KEY).await;
                Plain(String::from("parent"))
            })
            .await;
        (value, Instant::now())
    })
}

async fn a_dead_holders_lease_expires_and_a_waiter_takes_over(fx: Fixture) {
    const KEY: &str = "stampede:takeover";
    let (url, _) = urls(&fx);
    let mut conn = bookkeeping(&url).await;
    let mut children = Children::default();
    spawn_holder(&mut children, &url, KEY, Duration::from_secs(1), 30);
    until_runs(&url, 1).await;

    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60))
        .lock_ttl(Duration::from_secs(1))
        .wait(Duration::from_secs(20))
        .function("stampede:takeover");
    let waiter = spawn_parent_waiter(&cache, &policy, &url, KEY);
    until("the waiter waits for the child's lease", || {
        cache.stats().function("stampede:takeover").lock_waits == 1
    })
    .await;
    // Let the waiter settle into its wait, with the lease renewed meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Instant::now();
    children.kill(0);
    let (value, returned) = tokio::time::timeout(STUCK, waiter)
        .await
        .expect("the waiter returned")
        .expect("waiter task");

    assert_eq!(value, "parent", "the waiter computed the value itself");
    assert_eq!(
        read_counter(&mut conn, RUNS_KEY).await,
        2,
        "the dead child's computation and the waiter's"
    );
    let stats = cache.stats().function("stampede:takeover");
    assert_eq!(
        (stats.misses, stats.lock_waits, stats.computations),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(
        stats.lock_timeouts, 0,
        "it took the expired lease over, not gave up after `wait`: {stats:?}"
    );
    // It took the lease, so it stored: the next call is a hit.
    let Plain(again) = cache
        .get_or_compute(KEY, &policy, || async { Plain(String::from("again")) })
        .await;
    assert_eq!(again, "parent");
    println!(
        "takeover: the waiter returned {:?} after the lease holder was killed (lock_ttl 1 s, re-check every 500 ms)",
        returned - killed
    );
}

async fn a_waiter_gives_up_on_a_holder_that_never_finishes(fx: Fixture) {
    const KEY: &str = "stampede:never";
    let (url, _) = urls(&fx);
    let mut conn = bookkeeping(&url).await;
    let mut children = Children::default();
    spawn_holder(&mut children, &url, KEY, Duration::from_secs(30), 3_600);
    until_runs(&url, 1).await;

    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60))
        .wait(Duration::from_secs(1))
        .function("stampede:never");
    let started = Instant::now();
    let counter = &mut conn;
    let Plain(value) = tokio::time::timeout(
        STUCK,
        cache.get_or_compute(KEY, &policy, || async move {
            incr(counter, RUNS_KEY).await;
            Plain(String::from("parent"))
        }),
    )
    .await
    .expect("the waiter gave up waiting");
    let waited = started.elapsed();

    assert_eq!(value, "parent");
    let stats = cache.stats().function("stampede:never");
    assert_eq!(
        (stats.misses, stats.lock_waits, stats.lock_timeouts, stats.computations),
        (1, 1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(read_counter(&mut conn, RUNS_KEY).await, 2);
    // Computed without the lease: not stored.
    assert!(!cache.exists(KEY).await.unwrap());
    children.kill(0);
    println!("give-up: with wait = 1 s the waiter returned its own value after {waited:?}");
}

/// A waiter of the same process (same `Cache`) as the computing caller also gives
/// up after `wait`, rather than waiting as long as the computation takes.
async fn a_waiter_in_the_holders_process_gives_up_after_wait(fx: Fixture) {
    const KEY: &str = "stampede:local-holder";
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60))
        .wait(Duration::from_secs(1))
        .function("stampede:local-holder");
    let holding = Arc::new(AtomicBool::new(false));
    let holder = {
        let (cache, policy, holding) = (cache.clone(), policy.clone(), Arc::clone(&holding));
        tokio::spawn(async move {
            cache
                .get_or_compute(KEY, &policy, || async move {
                    holding.store(true, Ordering::SeqCst);
                    std::future::pending::<Plain<String>>().await
                })
                .await
        })
    };
    until("the holder computes", || holding.load(Ordering::SeqCst)).await;

    let started = Instant::now();
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        cache.get_or_compute(KEY, &policy, || async { Plain(String::from("waiter")) }),
    )
    .await;
    holder.abort();
    let Ok(Plain(value)) = waited else {
        panic!(
            "a caller with wait = 1 s was still waiting for another task's computation after 10 s \
             (stats {:?})",
            cache.stats().function("stampede:local-holder")
        );
    };
    assert_eq!(value, "waiter");
    let stats = cache.stats().function("stampede:local-holder");
    assert_eq!(stats.lock_timeouts, 1, "{stats:?}");
    println!(
        "give-up (same process): the waiter returned its own value after {:?}",
        started.elapsed()
    );
}

/// With a holder in another process that never finishes, the waiters of one
/// process give up after `wait` and share one computation of their own (not
/// stored: they never had the lease), rather than each running it.
///
/// Shown without timing: they all get the value of one computation, which waits
/// (up to 5 s) for every waiter to have given up before it returns.
async fn every_waiter_of_a_process_gives_up_after_wait(fx: Fixture) {
    const KEY: &str = "stampede:many-waiters";
    const WAITERS: usize = 3;
    // The holder: another cache (another process, as far as the protocol goes).
    let holder_cache = fx.cache().await;
    let holding = Arc::new(AtomicBool::new(false));
    let holder = {
        let holding = Arc::clone(&holding);
        tokio::spawn(async move {
            holder_cache
                .get_or_compute(KEY, &Policy::default(), || async move {
                    holding.store(true, Ordering::SeqCst);
                    std::future::pending::<Plain<String>>().await
                })
                .await
        })
    };
    until("the holder computes", || holding.load(Ordering::SeqCst)).await;

    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(60))
        .wait(Duration::from_secs(1))
        .function("stampede:many-waiters");
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (cache, policy, runs) = (cache.clone(), policy.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                let probe = cache.clone();
                let Plain(run) = cache
                    .get_or_compute(KEY, &policy, || async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while probe.stats().function("stampede:many-waiters").lock_timeouts < WAITERS as u64
                            && Instant::now() < deadline
                        {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Plain(run)
                    })
                    .await;
                (run, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for waiter in waiters {
        results.push(waiter.await.expect("waiter task"));
    }
    holder.abort();
    let stats = cache.stats().function("stampede:many-waiters");
    println!("give-up ({WAITERS} waiters of one process): {results:?}; {stats:?}");
    assert_eq!(stats.lock_timeouts, WAITERS as u64, "every waiter gave up: {stats:?}");
    assert_eq!(
        (stats.computations, runs.load(Ordering::SeqCst)),
        (1, 1),
        "the waiters that gave up shared one computation: {stats:?}"
    );
    assert!(
        results.iter().all(|(run, _)| *run == 1),
        "every waiter got that computation's value: {results:?}"
    );
    assert!(
        !cache.exists(KEY).await.unwrap(),
        "computed without the lease: not stored"
    );
}

// ---------------------------------------------------------------------------
// 4. Woken by the store
// ---------------------------------------------------------------------------

async fn waiters_are_woken_by_the_store(fx: Fixture) {
    const KEY: &str = "stampede:wake";
    let holder_cache = fx.cache().await;
    // On Redis the waiter is another cache (another process, as far as the
    // protocol goes), woken by the store's announcement; on the memory backend,
    // where caches share nothing, a task of the same cache woken by the landing.
    let waiter_cache = if fx.is_memory() {
        holder_cache.clone()
    } else {
        fx.cache().await
    };
    let policy = Policy::new(Duration::from_secs(60)).function("stampede:wake");
    let gate = Arc::new(Semaphore::new(0));
    let holding = Arc::new(AtomicBool::new(false));
    let holder = {
        let (cache, policy) = (holder_cache.clone(), policy.clone());
        let (gate, holding) = (Arc::clone(&gate), Arc::clone(&holding));
        tokio::spawn(async move {
            let mut finished = None;
            let Plain(value) = cache
                .get_or_compute(KEY, &policy, || async {
                    holding.store(true, Ordering::SeqCst);
                    gate.acquire().await.expect("gate").forget();
                    finished = Some(Instant::now());
                    Plain(String::from("holder"))
                })
                .await;
            (value, finished.expect("the holder computed"), Instant::now())
        })
    };
    until("the holder computes", || holding.load(Ordering::SeqCst)).await;
    let waiter = {
        let (cache, policy) = (waiter_cache.clone(), policy.clone());
        tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute(KEY, &policy, || async { Plain(String::from("waiter")) })
                .await;
            (value, Instant::now())
        })
    };
    until("the waiter waits", || {
        waiter_cache.stats().function("stampede:wake").lock_waits == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(1);

    let (held, finished, holder_returned) = holder.await.expect("holder task");
    let (value, waiter_returned) = tokio::time::timeout(STUCK, waiter)
        .await
        .expect("the waiter returned")
        .expect("waiter task");
    assert_eq!(held, "holder");
    assert_eq!(value, "holder", "the waiter got the holder's value");
    let holder_stats = holder_cache.stats().function("stampede:wake");
    let waiter_stats = waiter_cache.stats().function("stampede:wake");
    assert_eq!(holder_stats.computations, 1, "{holder_stats:?}");
    assert_eq!(
        (waiter_stats.lock_waits, waiter_stats.lock_timeouts),
        (1, 0),
        "{waiter_stats:?}"
    );
    if !fx.is_memory() {
        assert_eq!(waiter_stats.computations, 0, "{waiter_stats:?}");
    }
    println!(
        "wake-up ({}): the waiter returned {:?} after the holder's computation finished ({:?} after the holder's call returned); \
         the fallback re-check interval is 500 ms",
        backend(&fx),
        waiter_returned.saturating_duration_since(finished),
        waiter_returned.saturating_duration_since(holder_returned),
    );
}

// ---------------------------------------------------------------------------
// A miss that races the store
// ---------------------------------------------------------------------------

fn client_list(conn: &mut redis::Connection) -> String {
    redis::cmd("CLIENT").arg("LIST").query(conn).expect("CLIENT LIST")
}

/// The clients held by `CLIENT PAUSE` (flag `b`), as `CLIENT LIST` lines.
fn paused_clients(list: &str) -> Vec<&str> {
    list.lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field.strip_prefix("flags=").is_some_and(|f| f.contains('b')))
        })
        .collect()
}

/// Waits until `count` clients are held by `CLIENT PAUSE`.
async fn until_paused(conn: &mut redis::Connection, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = client_list(conn);
        if paused_clients(&list).len() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} was never held by CLIENT PAUSE WRITE:\n{list}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Process B reads the key while process A's computation is being stored, and
/// asks for the lease just after A's store freed it: B's call is concurrent with
/// A's computation, so it must return A's value, not compute a second time.
///
/// Made deterministic with `CLIENT PAUSE WRITE`: A's store script is held, B's
/// `GET` (a read) goes through and misses, B's request for the lease (a write) is
/// held behind A's store; `CLIENT UNPAUSE` runs them in that order (Redis resumes
/// paused clients first in, first out).
async fn a_miss_racing_the_store_does_not_compute_again(fx: Fixture) {
    const KEY: &str = "stampede:race";
    let Server::Single(server) = &fx.server else {
        unreachable!()
    };
    // Two caches: two processes as far as the protocol goes. A generous operation
    // timeout, so the paused commands are waited for rather than abandoned.
    let a = fx.builder().op_timeout(Duration::from_secs(10)).build().await.unwrap();
    let b = fx.builder().op_timeout(Duration::from_secs(10)).build().await.unwrap();
    let policy = Policy::new(Duration::from_secs(60)).function("stampede:race");
    // Loads the lease and store scripts into Redis (whose script cache is shared
    // by every client), so each step below is one request.
    let Plain(_) = a
        .get_or_compute("stampede:warm-up", &policy, || async { Plain(String::new()) })
        .await;

    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let holder = {
        let (a, policy, runs, gate) = (a.clone(), policy.clone(), Arc::clone(&runs), Arc::clone(&gate));
        tokio::spawn(async move {
            let Plain(value) = a
                .get_or_compute(KEY, &policy, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.expect("gate").forget();
                    Plain(String::from("a"))
                })
                .await;
            value
        })
    };
    until("A computes", || runs.load(Ordering::SeqCst) == 1).await;

    let mut admin = server.connection();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("WRITE")
        .query(&mut admin)
        .expect("CLIENT PAUSE");
    gate.add_permits(1);
    until_paused(&mut admin, 1, "A's store").await;
    let late = {
        let (b, policy, runs) = (b.clone(), policy.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            let Plain(value) = b
                .get_or_compute(KEY, &policy, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Plain(String::from("b"))
                })
                .await;
            value
        })
    };
    // B's GET (a read) is not held; its request for the lease is.
    until_paused(&mut admin, 2, "B's request for the lease").await;
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut admin)
        .expect("CLIENT UNPAUSE");

    let first = tokio::time::timeout(STUCK, holder).await.unwrap().unwrap();
    let second = tokio::time::timeout(STUCK, late).await.unwrap().unwrap();
    println!(
        "race: A got {first:?}, B got {second:?}; computations {}; B stats {:?}",
        runs.load(Ordering::SeqCst),
        b.stats().function("stampede:race")
    );
    assert_eq!(first, "a");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "B missed while A's computation was being stored, took the lease A's store had just \
         freed and computed again, without re-reading the entry"
    );
    assert_eq!(second, "a");
}

/// A process holding the lease is SIGKILLed; with the default `lock_ttl` and
/// `wait`, its lease expires before the waiters of another process give up,
/// and exactly one of them takes over and stores; the others get its value.
async fn a_dead_holder_is_replaced_with_the_default_settings(fx: Fixture) {
    const KEY: &str = "stampede:default-takeover";
    const WAITERS: usize = 5;
    let defaults = Policy::new(Duration::from_secs(60));
    let (url, _) = urls(&fx);
    let mut conn = bookkeeping(&url).await;
    let mut children = Children::default();
    spawn_holder(&mut children, &url, KEY, defaults.lock_lease(), 3_600);
    until_runs(&url, 1).await;

    let cache = fx.cache().await;
    let policy = defaults.function("stampede:default-takeover");
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| spawn_parent_waiter(&cache, &policy, &url, KEY))
        .collect();
    until("the waiters wait for the child's lease", || {
        cache.stats().function("stampede:default-takeover").lock_waits == WAITERS as u64
    })
    .await;
    let killed = Instant::now();
    children.kill(0);
    let mut served = Vec::new();
    for waiter in waiters {
        served.push(
            tokio::time::timeout(STUCK, waiter)
                .await
                .expect("served")
                .expect("waiter task"),
        );
    }
    assert!(served.iter().all(|(value, _)| value == "parent"), "{served:?}");
    assert_eq!(
        read_counter(&mut conn, RUNS_KEY).await,
        2,
        "the dead child's computation and one takeover"
    );
    let stats = cache.stats().function("stampede:default-takeover");
    assert_eq!(stats.computations, 1, "{stats:?}");
    assert_eq!(
        stats.lock_timeouts, 0,
        "the lease expired before anyone gave up: {stats:?}"
    );
    let Plain(again) = cache
        .get_or_compute(KEY, &policy, || async { Plain(String::from("again")) })
        .await;
    assert_eq!(again, "parent", "the takeover stored");
    let slowest = served.iter().map(|(_, at)| *at - killed).max().unwrap_or_default();
    println!("default takeover: {WAITERS} waiters served {slowest:?} after the holder was killed (lock_ttl 3 s)");
}
