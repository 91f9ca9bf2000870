//! Freshness control (issue 14): refresh ahead (`refresh_ahead`), stale values
//! refreshed in the background, a refresh that fails backing off, the soft
//! timeout (`soft_timeout`), and soft invalidation (`<fn>_expire`,
//! `Cache::expire_tag`). Each through `#[cached]` or the runtime call a user
//! would write, on the memory backend, a single `redis-server` and a 3-master
//! cluster; the refresh shared by two processes on Redis only.
//!
//! Computations that must not finish yet wait on a [`Gate`], so "served at once"
//! is shown by a value returned while its refresh is still blocked, never by a
//! timed assertion.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aside::{cached, Cache, CacheStatus, Plain, Policy};
use aside_testkit::until;
use support::Fixture;
use tokio::sync::Semaphore;

mod support;

on_backends!(
    [memory, redis, cluster]
    refresh_ahead_serves_at_once_and_refreshes_in_the_background,
    an_invalidation_during_a_refresh_ahead_refuses_its_store,
    every_caller_of_a_stale_entry_is_served_at_once,
    a_failing_refresh_backs_off,
    a_slow_refresh_past_the_soft_timeout_finishes_in_the_background,
    a_quick_refresh_within_the_soft_timeout_is_returned,
    expire_turns_an_entry_stale_and_keeps_it,
    expire_without_a_stale_window_recomputes,
    expire_tag_turns_every_tagged_entry_stale,
    expire_revokes_a_computation_in_flight,
);

on_backends!([redis, cluster] refresh_ahead_runs_once_across_processes);

/// Calls `answer` (every 5 ms) until it gives something; panics after
/// `aside_testkit::STUCK` (a stuck bound, not a timing assertion).
async fn until_some<T, Fut>(what: &str, mut answer: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + aside_testkit::STUCK;
    loop {
        if let Some(found) = answer().await {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Counts computations; run `n` (from 1) yields `v{n}`.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn next(&self) -> String {
        format!("v{}", self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Holds computations until opened; counts those that reached it.
#[derive(Clone)]
struct Gate {
    permits: Arc<Semaphore>,
    arrived: Arc<AtomicUsize>,
}

impl Gate {
    fn closed() -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(0)),
            arrived: Arc::default(),
        }
    }

    fn open() -> Gate {
        let gate = Gate::closed();
        gate.permits.add_permits(Semaphore::MAX_PERMITS);
        gate
    }

    async fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.permits.acquire().await.expect("gate").forget();
        self.permits.add_permits(1);
    }

    fn unlock(&self) {
        self.permits.add_permits(1);
    }

    fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

/// A hot key: 2 s fresh, refreshed ahead after half of it.
#[cached(ttl = 2, refresh_ahead = 0.5, cache = cache, skip(cache, runs, gate))]
async fn headline(cache: Cache, runs: Runs, gate: Gate, region: u32) -> String {
    let _ = region;
    gate.pass().await;
    runs.next()
}

/// Past the first half of [`headline`]'s fresh life.
const DUE: Duration = Duration::from_millis(1_100);

async fn refresh_ahead_serves_at_once_and_refreshes_in_the_background(fx: Fixture) {
    let cache = fx.cache().await;
    let (runs, gate) = (Runs::default(), Gate::open());
    let call = || headline_with_status(cache.clone(), runs.clone(), gate.clone(), 1);
    assert_eq!(call().await, ("v1".to_owned(), CacheStatus::Miss));
    assert_eq!(call().await, ("v1".to_owned(), CacheStatus::Hit), "fresh, not due yet");
    assert_eq!(runs.count(), 1);

    tokio::time::sleep(DUE).await;
    // Due: every caller is answered from the entry, and one refresh runs.
    let closed = Gate::closed();
    let answers = futures_util::future::join_all(
        (0..20).map(|_| headline_with_status(cache.clone(), runs.clone(), closed.clone(), 1)),
    )
    .await;
    assert!(
        answers
            .iter()
            .all(|answer| *answer == ("v1".to_owned(), CacheStatus::Hit)),
        "every caller is served the current value while the refresh is held: {answers:?}"
    );
    until("the refresh to start", || closed.arrived() == 1).await;
    closed.unlock();
    until("the refreshed value to be served", || runs.count() == 2).await;
    let refreshed = until_some("the refreshed entry", || async {
        let answer = call().await;
        (answer.0 == "v2").then_some(answer)
    })
    .await;
    assert_eq!(refreshed, ("v2".to_owned(), CacheStatus::Hit));
    assert_eq!(runs.count(), 2, "one refresh for twenty due hits");
    assert_eq!(closed.arrived(), 1, "the refresh ran once");
    let full = headline_key(cache.clone(), 1);
    let ttl = fx.ttl_of(&cache, &full).await.expect("the refreshed entry is stored");
    assert!(ttl > DUE, "the refresh stored a new lifetime: {ttl:?}");
}

async fn refresh_ahead_runs_once_across_processes(fx: Fixture) {
    // Two caches on one store, as two processes would be.
    let (one, other) = (fx.cache().await, fx.cache().await);
    let (runs, gate) = (Runs::default(), Gate::open());
    assert_eq!(headline(one.clone(), runs.clone(), gate.clone(), 7).await, "v1");
    tokio::time::sleep(DUE).await;
    let closed = Gate::closed();
    let calls = (0..10).flat_map(|_| {
        [
            headline(one.clone(), runs.clone(), closed.clone(), 7),
            headline(other.clone(), runs.clone(), closed.clone(), 7),
        ]
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(answers.iter().all(|answer| answer == "v1"), "{answers:?}");
    until("a refresh to start", || closed.arrived() == 1).await;
    closed.unlock();
    until("the refresh to finish", || runs.count() == 2).await;
    let fresh = until_some("the refreshed entry in both", || async {
        let seen = (
            headline(one.clone(), runs.clone(), gate.clone(), 7).await,
            headline(other.clone(), runs.clone(), gate.clone(), 7).await,
        );
        (seen == ("v2".to_owned(), "v2".to_owned())).then_some(seen)
    })
    .await;
    assert_eq!(fresh.0, "v2");
    assert_eq!(closed.arrived(), 1, "one refresh across both processes");
    assert_eq!(runs.count(), 2);
}

async fn an_invalidation_during_a_refresh_ahead_refuses_its_store(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    assert_eq!(headline(cache.clone(), runs.clone(), Gate::open(), 2).await, "v1");
    tokio::time::sleep(DUE).await;
    let held = Gate::closed();
    assert_eq!(headline(cache.clone(), runs.clone(), held.clone(), 2).await, "v1");
    until("the refresh to start", || held.arrived() == 1).await;
    assert!(headline_invalidate(cache.clone(), 2).await.unwrap());
    held.unlock();
    until("the refresh's store to be refused", || cache.stats().total.revoked == 1).await;
    assert_eq!(runs.count(), 2);
    let after = headline_with_status(cache.clone(), runs.clone(), Gate::open(), 2).await;
    assert_eq!(
        after,
        ("v3".to_owned(), CacheStatus::Miss),
        "the value computed before the invalidation was not stored"
    );
}

const TTL: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(30);
const PAST_TTL: Duration = Duration::from_millis(1_100);

/// Stores `v1` under `key` with [`TTL`] and [`STALE`], then waits until it is stale.
async fn stale_entry(cache: &Cache, key: &str, policy: &Policy, runs: &Runs) {
    let runs = runs.clone();
    let Plain(first) = cache
        .get_or_compute_detached(key.to_owned(), policy, move || async move { Plain(runs.next()) })
        .await;
    assert_eq!(first, "v1");
    tokio::time::sleep(PAST_TTL).await;
}

async fn every_caller_of_a_stale_entry_is_served_at_once(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(TTL).stale(STALE);
    let runs = Runs::default();
    stale_entry(&cache, "report", &policy, &runs).await;
    let gate = Gate::closed();
    let calls = (0..20).map(|_| {
        let (runs, gate) = (runs.clone(), gate.clone());
        cache.get_or_compute_detached_with_status("report", &policy, move || async move {
            gate.pass().await;
            Plain(runs.next())
        })
    });
    let answers = futures_util::future::join_all(calls).await;
    assert!(
        answers
            .iter()
            .all(|answer| *answer == (Plain("v1".to_owned()), CacheStatus::Stale)),
        "the caller that starts the refresh is served the old value too: {answers:?}"
    );
    until("the refresh to start", || gate.arrived() == 1).await;
    gate.unlock();
    let (Plain(value), status) = until_some("the refreshed value", || async {
        let answer = cache
            .get_or_compute_detached_with_status("report", &policy, || async { Plain("never".to_owned()) })
            .await;
        (answer.1 == CacheStatus::Hit).then_some(answer)
    })
    .await;
    assert_eq!((value.as_str(), status), ("v2", CacheStatus::Hit));
    assert_eq!(gate.arrived(), 1, "one refresh for twenty stale calls");
}

async fn a_failing_refresh_backs_off(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(TTL).stale(STALE);
    let runs = Runs::default();
    stale_entry(&cache, "flaky", &policy, &runs).await;
    let failures = Runs::default();
    let failing = |failures: &Runs| {
        let failures = failures.clone();
        move || async move {
            failures.next();
            Err::<String, String>("database down".to_owned())
        }
    };
    let first = cache
        .get_or_compute_detached_with_status("flaky", &policy, failing(&failures))
        .await;
    assert_eq!(first, (Ok("v1".to_owned()), CacheStatus::Stale));
    until("the refresh to fail", || failures.count() == 1).await;
    // Within the back-off every caller gets the old value without a new try.
    for _ in 0..20 {
        let answer = cache
            .get_or_compute_detached("flaky", &policy, failing(&failures))
            .await;
        assert_eq!(answer, Ok("v1".to_owned()));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(failures.count(), 1, "a failed refresh is not tried again at once");
    // After it, one caller tries again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let answer = cache
        .get_or_compute_detached("flaky", &policy, failing(&failures))
        .await;
    assert_eq!(answer, Ok("v1".to_owned()));
    until("the refresh to be tried again", || failures.count() == 2).await;
}

/// A report refreshed under a soft timeout of 100 ms.
#[cached(ttl = 1, stale = "30s", soft_timeout = "100ms", cache = cache, skip(cache, runs, gate))]
async fn report(cache: Cache, runs: Runs, gate: Gate, month: u32) -> String {
    let _ = month;
    gate.pass().await;
    runs.next()
}

async fn a_slow_refresh_past_the_soft_timeout_finishes_in_the_background(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    assert_eq!(report(cache.clone(), runs.clone(), Gate::open(), 11).await, "v1");
    tokio::time::sleep(PAST_TTL).await;
    let slow = Gate::closed();
    let answer = report_with_status(cache.clone(), runs.clone(), slow.clone(), 11).await;
    assert_eq!(
        answer,
        ("v1".to_owned(), CacheStatus::Stale),
        "the old value after the soft timeout"
    );
    assert_eq!(slow.arrived(), 1, "the refresh is under way");
    assert_eq!(runs.count(), 1, "and not finished");
    slow.unlock();
    until("the slow refresh to finish", || runs.count() == 2).await;
    let stored = until_some("the slow refresh to be stored", || async {
        let answer = report_with_status(cache.clone(), runs.clone(), Gate::open(), 11).await;
        (answer.1 == CacheStatus::Hit).then_some(answer)
    })
    .await;
    assert_eq!(stored, ("v2".to_owned(), CacheStatus::Hit));
    assert_eq!(runs.count(), 2);
}

async fn a_quick_refresh_within_the_soft_timeout_is_returned(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    let open = Gate::open();
    assert_eq!(report(cache.clone(), runs.clone(), open.clone(), 12).await, "v1");
    tokio::time::sleep(PAST_TTL).await;
    let answer = report_with_status(cache.clone(), runs.clone(), open.clone(), 12).await;
    assert_eq!(
        answer,
        ("v2".to_owned(), CacheStatus::Miss),
        "refreshed within the soft timeout"
    );
    let answer = report_with_status(cache.clone(), runs.clone(), open, 12).await;
    assert_eq!(answer, ("v2".to_owned(), CacheStatus::Hit));
}

/// A heavy report: 5 minutes fresh, a minute-old answer is fine.
#[cached(ttl = 300, stale = "1m", tags = ["reports", "month:{month}"], cache = cache, skip(cache, runs, gate))]
async fn monthly(cache: &Cache, runs: &Runs, gate: &Gate, month: u32) -> String {
    let _ = month;
    gate.pass().await;
    runs.next()
}

async fn expire_turns_an_entry_stale_and_keeps_it(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    assert_eq!(monthly(&cache, &runs, &Gate::open(), 3).await, "v1");
    let full = monthly_key(&cache, 3);
    let before = fx.ttl_of(&cache, &full).await.expect("stored");
    assert!(monthly_expire(&cache, 3).await.unwrap(), "there was an entry");
    let after = fx.ttl_of(&cache, &full).await.expect("still stored");
    assert!(
        after <= before && after > Duration::from_secs(300),
        "the lifetime is kept: {after:?}"
    );

    // One caller refreshes; the others are served the old value meanwhile.
    let held = Gate::closed();
    let refreshing = tokio::spawn({
        let (cache, runs, held) = (cache.clone(), runs.clone(), held.clone());
        async move { monthly_with_status(&cache, &runs, &held, 3).await }
    });
    until("the refresh to start", || held.arrived() == 1).await;
    let meanwhile = monthly_with_status(&cache, &runs, &Gate::open(), 3).await;
    assert_eq!(meanwhile, ("v1".to_owned(), CacheStatus::Stale));
    held.unlock();
    assert_eq!(refreshing.await.unwrap(), ("v2".to_owned(), CacheStatus::Miss));
    assert_eq!(
        monthly_with_status(&cache, &runs, &Gate::open(), 3).await,
        ("v2".to_owned(), CacheStatus::Hit)
    );
    assert!(!monthly_expire(&cache, 4).await.unwrap(), "no entry, nothing expired");
}

async fn expire_without_a_stale_window_recomputes(fx: Fixture) {
    let cache = fx.cache().await;
    let policy = Policy::new(Duration::from_secs(300));
    let runs = Runs::default();
    let call = || {
        let runs = runs.clone();
        cache.get_or_compute_with_status("plain", &policy, move || async move { Plain(runs.next()) })
    };
    assert_eq!(call().await, (Plain("v1".to_owned()), CacheStatus::Miss));
    assert!(cache.expire_key("plain").await.unwrap());
    assert_eq!(
        call().await,
        (Plain("v2".to_owned()), CacheStatus::Miss),
        "never served stale"
    );
    assert_eq!(call().await, (Plain("v2".to_owned()), CacheStatus::Hit));
}

async fn expire_tag_turns_every_tagged_entry_stale(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    let open = Gate::open();
    for month in 1..=3 {
        monthly(&cache, &runs, &open, month).await;
    }
    let untagged = Policy::new(Duration::from_secs(300));
    let Plain(_) = cache.get_or_compute("untagged", &untagged, || async { Plain(0) }).await;
    assert_eq!(cache.expire_tag("reports").await.unwrap(), 3);
    assert_eq!(cache.expire_tag("month:2").await.unwrap(), 1);
    for month in 1..=3 {
        assert!(
            fx.holds(&cache, &monthly_key(&cache, month)).await,
            "month {month} is kept"
        );
    }
    let (_, status) = cache
        .get_or_compute_with_status("untagged", &untagged, || async { Plain(1) })
        .await;
    assert_eq!(status, CacheStatus::Hit, "an entry without the tag stays fresh");
    let refreshed = monthly_with_status(&cache, &runs, &open, 1).await;
    assert_eq!(
        refreshed,
        ("v4".to_owned(), CacheStatus::Miss),
        "a stale entry is refreshed"
    );
    // The entries keep their tags: a hard invalidation still finds them.
    assert_eq!(cache.invalidate_tag("reports").await.unwrap(), 3);
}

async fn expire_revokes_a_computation_in_flight(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = Runs::default();
    let held = Gate::closed();
    let cold = tokio::spawn({
        let (cache, runs, held) = (cache.clone(), runs.clone(), held.clone());
        async move { monthly(&cache, &runs, &held, 9).await }
    });
    until("the computation to start", || held.arrived() == 1).await;
    assert!(!monthly_expire(&cache, 9).await.unwrap(), "nothing stored yet");
    held.unlock();
    assert_eq!(cold.await.unwrap(), "v1", "its caller still gets its value");
    until("its store to be refused", || cache.stats().total.revoked == 1).await;
    assert_eq!(
        monthly_with_status(&cache, &runs, &Gate::open(), 9).await,
        ("v2".to_owned(), CacheStatus::Miss),
        "the value computed before the expiry was not stored"
    );
}
