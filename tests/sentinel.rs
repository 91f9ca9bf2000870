//! Redis Sentinel (`REDIS_URL=redis+sentinel://...`): a cache on a
//! sentinel-managed master caches there, and follows a failover — calls keep
//! returning their values while the master changes (fail-open, guarantee 7)
//! and caching resumes on the new master by itself; invalidation works there.
//!
//! Each test starts its own master, replica and three sentinels
//! (`aside_testkit::RedisSentinel`) and reads keys back from whichever node the
//! sentinels name as master. Waits are bounded (`until`, 30 s); how long calls
//! fell back to computing during the failover is printed (`--nocapture`),
//! never asserted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aside::{cached, Cache, CacheStatus, Policy};
use aside_testkit::{RedisSentinel, RedisServer, SentinelOptions};

/// Tasks calling cached functions while the master changes.
const CALLERS: u64 = 4;
/// Keys each caller cycles through, so that most calls are hits once warm.
const KEYS: u64 = 16;

#[cached(ttl = 300, skip(cache, runs), cache = cache)]
async fn square(cache: &Cache, runs: &AtomicU64, n: u64) -> Result<u64, String> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(n * n)
}

async fn connect(set: &RedisSentinel) -> Cache {
    Cache::builder()
        .redis_url(&set.url())
        .build()
        .await
        .expect("the cache finds the master through the sentinels")
}

/// The key's remaining lifetime on `node`, read over a plain connection.
fn pttl(node: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut node.connection())
        .expect("PTTL over a plain connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_the_sentinel_url_caches_on_the_master() {
    let set = RedisSentinel::start();
    let cache = connect(&set).await;
    let runs = AtomicU64::new(0);

    assert_eq!(square_with_status(&cache, &runs, 7).await, (Ok(49), CacheStatus::Miss));
    assert_eq!(square_with_status(&cache, &runs, 7).await, (Ok(49), CacheStatus::Hit));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the hit ran no computation");

    let key = square_key(&cache, 7);
    let ttl = pttl(set.master(), &key);
    assert!(
        ttl > 290_000 && ttl <= 300_000,
        "stored on the master with its TTL: {ttl} ms"
    );

    assert!(square_invalidate(&cache, 7).await.unwrap(), "the entry existed");
    assert_eq!(pttl(set.master(), &key), -2, "gone from the master");
    assert_eq!(square(&cache, &runs, 7).await, Ok(49));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "an invalidated entry is computed again");
    assert_eq!(cache.stats().total.backend_errors, 0);
}

/// What the callers saw, each call's status with when it returned.
#[derive(Default)]
struct Seen {
    calls: Vec<(Instant, CacheStatus)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_returns_every_value_and_caching_resumes_on_the_new_master() {
    fail_over_under_load(RedisSentinel::start(), "failover").await;
}

/// The same without the sentinels' announcements: their ACL user may ask
/// for the master but not subscribe to `+switch-master`, so the cache learns
/// of the failover only from the old master (its connection cut when the
/// sentinels demote it, or `READONLY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sentinels_announcements_a_failover_is_followed_through_the_old_master() {
    let set =
        RedisSentinel::start_with(SentinelOptions::new().sentinel_user("watcher", "watch-pw", "+@all resetchannels"));
    assert!(set.url().contains("sentinel_password=watch-pw"));
    fail_over_under_load(set, "failover without announcements").await;
}

/// Several tasks call cached functions while `set` fails over: every call
/// returns its value, caching resumes on the new master by itself (a new entry
/// stored there and hit; the warm keys hit there without being computed
/// again), and invalidation works there. Prints what the callers saw.
async fn fail_over_under_load(set: RedisSentinel, what: &str) {
    let set = Arc::new(set);
    let old_master = set.master().port();
    let cache = connect(&set).await;
    let runs = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let by_hand = Policy::new(Duration::from_secs(300)).function("sentinel:by_hand");

    let fresh_runs = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (cache, runs, fresh_runs, seen, stop, by_hand) = (
                cache.clone(),
                Arc::clone(&runs),
                Arc::clone(&fresh_runs),
                Arc::clone(&seen),
                Arc::clone(&stop),
                by_hand.clone(),
            );
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // A key of the warm set: a hit, a read.
                    let n = (calls + caller) % KEYS;
                    let (value, status) = square_with_status(&cache, &runs, n).await;
                    assert_eq!(value, Ok(n * n), "every call returns its value");
                    seen.lock().unwrap().calls.push((Instant::now(), status));
                    // A key never used before: a miss, which takes the lease and
                    // stores (scripts that must reach the master).
                    let n = KEYS + 1_000_000 * (caller + 1) + calls;
                    let (value, status) = square_with_status(&cache, &fresh_runs, n).await;
                    assert_eq!(value, Ok(n * n), "every call returns its value");
                    seen.lock().unwrap().calls.push((Instant::now(), status));
                    let n = calls % KEYS;
                    let doubled: Result<u64, String> = cache
                        .get_or_compute(format!("double:{n}"), &by_hand, || async { Ok(2 * n) })
                        .await;
                    assert_eq!(doubled, Ok(2 * n), "every by-hand call returns its value");
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                calls
            })
        })
        .collect();

    // Warm: every key stored and served from the first master.
    aside_testkit::until("every key is a hit on the first master", || {
        seen.lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(_, s)| *s == CacheStatus::Hit)
            .count()
            > (CALLERS * KEYS) as usize
    })
    .await;
    let warm_runs = runs.load(Ordering::SeqCst);
    assert_eq!(warm_runs, KEYS, "one computation per warm key before the failover");

    let started = Instant::now();
    let new_master = {
        let set = Arc::clone(&set);
        tokio::task::spawn_blocking(move || set.failover().port())
            .await
            .expect("the failover completes")
    };
    let failed_over = Instant::now();
    assert_ne!(new_master, old_master);
    assert_eq!(set.master().port(), new_master);

    // Caching resumes on the new master by itself: a key no caller uses is
    // stored there, and then hit.
    let fresh = 1_000;
    let key = square_key(&cache, fresh);
    let probe_runs = AtomicU64::new(0);
    let mut resumed = None;
    while resumed.is_none() {
        assert_eq!(square(&cache, &probe_runs, fresh).await, Ok(fresh * fresh));
        if pttl(set.master(), &key) > 0 {
            let before = probe_runs.load(Ordering::SeqCst);
            let (value, status) = square_with_status(&cache, &probe_runs, fresh).await;
            assert_eq!(value, Ok(fresh * fresh));
            if status == CacheStatus::Hit && probe_runs.load(Ordering::SeqCst) == before {
                resumed = Some(Instant::now());
            }
        }
        assert!(
            failed_over.elapsed() < aside_testkit::STUCK,
            "caching did not resume on the new master; stats {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resumed = resumed.expect("set above");

    // The callers' keys are served from the new master too.
    let before = runs.load(Ordering::SeqCst);
    let settled = seen.lock().unwrap().calls.len();
    aside_testkit::until("the callers hit every key on the new master", || {
        let seen = seen.lock().unwrap();
        seen.calls[settled..]
            .iter()
            .filter(|(_, s)| *s == CacheStatus::Hit)
            .count()
            > (CALLERS * KEYS) as usize
    })
    .await;
    let square_key_of_one = square_key(&cache, 1);
    assert!(
        pttl(set.master(), &square_key_of_one) > 0,
        "the callers' entries live on the new master"
    );

    stop.store(true, Ordering::SeqCst);
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.expect("no caller panicked: every call returned its value");
    }

    // Invalidation after the failover reaches the new master.
    assert!(square_invalidate(&cache, fresh).await.unwrap(), "the entry existed");
    assert_eq!(pttl(set.master(), &key), -2, "invalidated on the new master");
    let before_recompute = probe_runs.load(Ordering::SeqCst);
    assert_eq!(square(&cache, &probe_runs, fresh).await, Ok(fresh * fresh));
    assert_eq!(
        probe_runs.load(Ordering::SeqCst),
        before_recompute + 1,
        "computed again after it"
    );

    let seen = seen.lock().unwrap();
    let bypassed: Vec<Instant> = seen
        .calls
        .iter()
        .filter(|(_, s)| *s == CacheStatus::Bypassed)
        .map(|(at, _)| *at)
        .collect();
    let window = match (bypassed.first(), bypassed.last()) {
        (Some(first), Some(last)) => format!(
            "from {:?} to {:?} after the failover began",
            first.saturating_duration_since(started),
            last.saturating_duration_since(started)
        ),
        _ => "never".to_owned(),
    };
    let warm_recomputed = runs.load(Ordering::SeqCst) - warm_runs;
    println!(
        "{what}: {calls} caller rounds ({} cached-function calls); the failover took {:?}; \
         {} calls fell back to computing, {window}; caching resumed {:?} after it was over; \
         warm keys computed again {warm_recomputed} times ({} since it resumed), new keys computed {} times; stats {:?}",
        seen.calls.len(),
        failed_over - started,
        bypassed.len(),
        resumed.saturating_duration_since(failed_over),
        runs.load(Ordering::SeqCst) - before,
        fresh_runs.load(Ordering::SeqCst),
        cache.stats().total,
    );
    assert_eq!(
        runs.load(Ordering::SeqCst) - before,
        0,
        "once caching resumed, the warm keys are hits on the new master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_open_and_caching_resumes_on_the_promoted_replica() {
    let mut set = RedisSentinel::start();
    let cache = connect(&set).await;
    let runs = Arc::new(AtomicU64::new(0));
    assert_eq!(square(&cache, &runs, 3).await, Ok(9));
    assert_eq!(square_with_status(&cache, &runs, 3).await, (Ok(9), CacheStatus::Hit));
    // Replicated before the master dies, so the promoted replica holds it.
    aside_testkit::until("the entry reaches the replica", || {
        pttl(set.replica(), &square_key(&cache, 3)) > 0
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (cache, runs, stop) = (cache.clone(), Arc::clone(&runs), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut bypassed = Vec::new();
            let mut n = 100;
            while !stop.load(Ordering::SeqCst) {
                let (value, status) = square_with_status(&cache, &runs, n).await;
                assert_eq!(
                    value,
                    Ok(n * n),
                    "every call returns its value while the master is dead"
                );
                if status == CacheStatus::Bypassed {
                    bypassed.push(Instant::now());
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            bypassed
        })
    };
    let started = Instant::now();
    let set = tokio::task::spawn_blocking(move || {
        set.kill_master();
        set
    })
    .await
    .expect("a replica is promoted");
    let promoted = Instant::now();

    // Caching resumes on the promoted replica by itself: the entry written
    // before the master died is a hit, and a new one is stored there.
    let probe_runs = AtomicU64::new(0);
    let key = square_key(&cache, 7);
    loop {
        let (value, status) = square_with_status(&cache, &runs, 3).await;
        assert_eq!(value, Ok(9));
        assert_eq!(square(&cache, &probe_runs, 7).await, Ok(49));
        if status == CacheStatus::Hit && pttl(set.master(), &key) > 0 {
            break;
        }
        assert!(
            promoted.elapsed() < aside_testkit::STUCK,
            "caching did not resume on the promoted replica; stats {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resumed = Instant::now();
    let before = probe_runs.load(Ordering::SeqCst);
    assert_eq!(
        square_with_status(&cache, &probe_runs, 7).await,
        (Ok(49), CacheStatus::Hit)
    );
    assert_eq!(probe_runs.load(Ordering::SeqCst), before, "a hit on the new master");
    assert!(
        square_invalidate(&cache, 7).await.unwrap(),
        "invalidated on the new master"
    );
    assert_eq!(pttl(set.master(), &key), -2);

    stop.store(true, Ordering::SeqCst);
    let bypassed = caller.await.expect("every call returned its value");
    println!(
        "dead master: promoted {:?} after the kill; {} calls fell back to computing, the last {:?} after the kill; \
         caching resumed {:?} after the promotion; the breaker opened {} times and skipped Redis {} times; stats {:?}",
        promoted - started,
        bypassed.len(),
        bypassed.last().map(|at| at.saturating_duration_since(started)),
        resumed.saturating_duration_since(promoted),
        cache.stats().breaker_opened,
        cache.stats().breaker_skips,
        cache.stats().total,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_set_caches_across_a_failover_and_the_password_never_shows() {
    const PASSWORD: &str = "hunter2-of-the-set";
    let set = RedisSentinel::start_with(SentinelOptions::new().password(PASSWORD));
    assert!(set.url().contains(PASSWORD));

    let wrong = Cache::builder()
        .redis_url(&set.url().replace(PASSWORD, "not-the-password"))
        .build()
        .await
        .expect_err("a wrong password fails at build");
    let text = format!("{wrong} {wrong:?}");
    assert!(matches!(wrong, aside::Error::Connect { .. }), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let cache = connect(&set).await;
    assert!(!format!("{cache:?}").contains(PASSWORD));
    let runs = AtomicU64::new(0);
    assert_eq!(square(&cache, &runs, 5).await, Ok(25));
    assert_eq!(square_with_status(&cache, &runs, 5).await, (Ok(25), CacheStatus::Hit));
    assert!(pttl(set.master(), &square_key(&cache, 5)) > 0, "stored on the master");

    // The demoted master authenticates to the new one (masterauth), and the
    // cache finds and authenticates to the new master.
    let set = Arc::new(set);
    tokio::task::spawn_blocking({
        let set = Arc::clone(&set);
        move || set.failover().port()
    })
    .await
    .expect("the failover completes");
    let key = square_key(&cache, 6);
    let deadline = Instant::now() + aside_testkit::STUCK;
    while pttl(set.master(), &key) <= 0 {
        assert_eq!(square(&cache, &runs, 6).await, Ok(36));
        assert!(
            Instant::now() < deadline,
            "nothing stored on the new master; {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = runs.load(Ordering::SeqCst);
    assert_eq!(square_with_status(&cache, &runs, 6).await, (Ok(36), CacheStatus::Hit));
    assert_eq!(square_with_status(&cache, &runs, 5).await, (Ok(25), CacheStatus::Hit));
    assert_eq!(runs.load(Ordering::SeqCst), before, "both served by the new master");
}
