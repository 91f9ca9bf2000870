//! Batch memoization, `Cache::get_many_or_compute`: one entry per id, the hits
//! read together, one computation for the missing ids only, each missing id
//! computed once across concurrent batches, an invalidation during the
//! computation refusing that id's store, and fail-open when Redis is down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::{Cache, Policy};
use support::{Fixture, Server};
use tokio::sync::Notify;

mod support;

on_backends!([memory, redis, cluster]
    ninety_cached_ids_leave_one_computation_of_the_ten_missing,
    overlapping_concurrent_batches_compute_each_id_once,
    invalidating_one_id_during_the_computation_refuses_only_its_store,
    an_id_the_computation_leaves_out_is_absent_and_asked_again,
    a_stale_entry_counts_as_a_hit,
    an_id_whose_other_computation_fails_is_taken_over_and_stored,
    an_id_waited_for_past_wait_is_computed_without_storing,
    an_empty_batch_asks_nothing,
);
on_backends!([redis, cluster] a_batch_with_redis_down_computes_everything_without_an_error);
on_backends!([redis] a_tiered_batch_reads_its_copies_and_drops_an_invalidated_one);

/// The value of user `id`.
fn user(id: u64) -> String {
    format!("user #{id}")
}

fn key(id: u64) -> String {
    format!("batch:user:{id}")
}

fn keys(ids: impl IntoIterator<Item = u64>) -> Vec<(u64, String)> {
    ids.into_iter().map(|id| (id, key(id))).collect()
}

fn policy() -> Policy {
    Policy::new(Duration::from_secs(300)).function("batch:users")
}

/// The ids each computation received, in order of the computations.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Vec<u64>>>>);

impl Calls {
    fn record(&self, ids: &[u64]) {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        self.0.lock().unwrap().push(sorted);
    }

    fn all(&self) -> Vec<Vec<u64>> {
        self.0.lock().unwrap().clone()
    }

    /// How often each id was computed, over every computation.
    fn per_id(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for ids in self.all() {
            for id in ids {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }
}

/// A batch of `ids` whose computation records what it received and returns
/// every id's value.
async fn users(cache: &Cache, calls: &Calls, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
    cache
        .get_many_or_compute(keys(ids), &policy(), |ids: Vec<u64>| {
            calls.record(&ids);
            async move { Ok::<_, std::convert::Infallible>(ids.into_iter().map(|id| (id, user(id))).collect()) }
        })
        .await
        .unwrap()
}

fn expected(ids: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
    ids.into_iter().map(|id| (id, user(id))).collect()
}

/// Forgets the commands counted so far, on every node.
fn reset_command_stats(fixture: &Fixture) {
    for mut conn in fixture.node_connections() {
        let () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).unwrap();
    }
}

/// `cmdstat_<command>:calls=<n>` for each command the single node ran since
/// the last reset, but those the test itself sends (`INFO`, `CONFIG`).
fn command_stats(fixture: &Fixture) -> Vec<String> {
    let mut conn = fixture.node_connections().remove(0);
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).unwrap();
    info.lines()
        .filter(|line| {
            line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info") && !line.starts_with("cmdstat_config")
        })
        .map(|line| line.split(",usec=").next().unwrap_or(line).to_owned())
        .collect()
}

async fn ninety_cached_ids_leave_one_computation_of_the_ten_missing(fixture: Fixture) {
    let cache = fixture.cache_in("batch-ninety").await;
    let calls = Calls::default();
    let missing: Vec<u64> = (0..100).filter(|id| id % 10 == 3).collect();
    let cached: Vec<u64> = (0..100).filter(|id| id % 10 != 3).collect();
    assert_eq!(users(&cache, &calls, cached.clone()).await, expected(cached.clone()));
    assert_eq!(calls.all(), vec![cached.clone()], "a cold batch is one computation");

    let before = cache.stats().function("batch:users");
    assert_eq!(users(&cache, &calls, 0..100).await, expected(0..100));
    assert_eq!(
        &calls.all()[1..],
        std::slice::from_ref(&missing),
        "one computation, with exactly the missing ids"
    );
    let counted = cache.stats().function("batch:users");
    assert_eq!(
        (
            counted.hits - before.hits,
            counted.misses - before.misses,
            counted.computations - before.computations
        ),
        (90, 10, 10),
        "counted per id"
    );

    // Every id is an entry of its own, with the policy's TTL.
    for id in [0, 3, 99] {
        let ttl = fixture
            .ttl_of(&cache, &cache.full_key(key(id)).unwrap())
            .await
            .expect("stored");
        assert!(
            ttl > Duration::from_secs(290) && ttl <= Duration::from_secs(300),
            "{ttl:?}"
        );
    }

    // Now all hits: one round trip on a single node, one `MGET`.
    reset_command_stats(&fixture);
    assert_eq!(users(&cache, &calls, 0..100).await, expected(0..100));
    assert_eq!(calls.all().len(), 2, "a warm batch computes nothing");
    if let Server::Single(_) = fixture.server {
        assert_eq!(command_stats(&fixture), ["cmdstat_mget:calls=1"]);
    }
    assert_eq!(cache.stats().function("batch:users").hits - counted.hits, 100);
}

async fn overlapping_concurrent_batches_compute_each_id_once(fixture: Fixture) {
    // Two handles on one Redis stand for two processes; the memory store is one process's.
    let first = fixture.cache_in("batch-overlap").await;
    let second = if fixture.is_memory() {
        first.clone()
    } else {
        fixture.cache_in("batch-overlap").await
    };
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for batch in 0..6u64 {
        let cache = if batch % 2 == 0 { first.clone() } else { second.clone() };
        let calls = calls.clone();
        // 0..20, 5..25, ... 25..45: each cold id is asked by up to four batches at once.
        let ids: Vec<u64> = (batch * 5..batch * 5 + 20).collect();
        tasks.push(tokio::spawn(async move {
            let got = cache
                .get_many_or_compute(keys(ids.clone()), &policy(), |asked: Vec<u64>| {
                    calls.record(&asked);
                    async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::io::Error>(asked.into_iter().map(|id| (id, user(id))).collect())
                    }
                })
                .await
                .unwrap();
            (ids, got)
        }));
    }
    for task in tasks {
        let (ids, got) = task.await.unwrap();
        assert_eq!(got, expected(ids), "every batch gets all its values");
    }
    let per_id = calls.per_id();
    assert_eq!(per_id.keys().copied().collect::<Vec<_>>(), (0..45).collect::<Vec<_>>());
    assert!(
        per_id.values().all(|&count| count == 1),
        "each id computed once: {per_id:?}, computations {:?}",
        calls.all()
    );
}

async fn invalidating_one_id_during_the_computation_refuses_only_its_store(fixture: Fixture) {
    let cache = fixture.cache_in("batch-invalidate").await;
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let calls = Calls::default();
    let batch = {
        let (cache, started, go, calls) = (cache.clone(), started.clone(), go.clone(), calls.clone());
        tokio::spawn(async move {
            cache
                .get_many_or_compute(keys(1..=5), &policy(), |ids: Vec<u64>| {
                    calls.record(&ids);
                    let (started, go) = (started.clone(), go.clone());
                    async move {
                        started.notify_one();
                        go.notified().await;
                        Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, user(id))).collect())
                    }
                })
                .await
                .unwrap()
        })
    };
    started.notified().await;
    cache.invalidate_key(key(3)).await.unwrap();
    go.notify_one();
    assert_eq!(
        batch.await.unwrap(),
        expected(1..=5),
        "the caller gets what it computed"
    );

    for id in 1..=5 {
        let stored = fixture.holds(&cache, &cache.full_key(key(id)).unwrap()).await;
        assert_eq!(stored, id != 3, "user {id} stored?");
    }
    assert_eq!(cache.stats().function("batch:users").revoked, 1);
    assert_eq!(users(&cache, &calls, 1..=5).await, expected(1..=5));
    assert_eq!(
        calls.all(),
        vec![vec![1, 2, 3, 4, 5], vec![3]],
        "only the invalidated id is computed again"
    );
}

async fn an_id_the_computation_leaves_out_is_absent_and_asked_again(fixture: Fixture) {
    let cache = fixture.cache_in("batch-absent").await;
    let calls = Calls::default();
    // No user 13: the computation has no value for it.
    let lookup = |ids: Vec<u64>| {
        calls.record(&ids);
        async move {
            Ok::<_, std::io::Error>(
                ids.into_iter()
                    .filter(|&id| id != 13)
                    .map(|id| (id, user(id)))
                    .collect::<HashMap<_, _>>(),
            )
        }
    };
    let got = cache
        .get_many_or_compute(keys(10..15), &policy(), lookup)
        .await
        .unwrap();
    assert_eq!(got, expected([10, 11, 12, 14]));
    let got = cache
        .get_many_or_compute(keys(10..15), &policy(), lookup)
        .await
        .unwrap();
    assert_eq!(got, expected([10, 11, 12, 14]));
    assert_eq!(
        calls.all(),
        vec![vec![10, 11, 12, 13, 14], vec![13]],
        "the absent id is asked again"
    );
    // An error is returned as is, and the next call asks again.
    let failed = cache
        .get_many_or_compute(keys([13, 20]), &policy(), |_ids: Vec<u64>| async {
            Err::<HashMap<u64, String>, _>("db down")
        })
        .await;
    assert_eq!(failed, Err("db down"));
    assert!(!fixture.holds(&cache, &cache.full_key(key(20)).unwrap()).await);
}

async fn a_batch_with_redis_down_computes_everything_without_an_error(mut fixture: Fixture) {
    let cache = fixture
        .builder()
        .namespace("batch-down")
        .op_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let calls = Calls::default();
    assert_eq!(users(&cache, &calls, 0..30).await, expected(0..30));
    match &mut fixture.server {
        Server::Single(server) => server.stop(),
        Server::Cluster(cluster) => cluster.nodes_mut()[1].stop(),
        Server::Memory => unreachable!("Redis fixtures only"),
    }
    for round in 0..3 {
        assert_eq!(users(&cache, &calls, 0..30).await, expected(0..30), "round {round}");
    }
    let computed = calls.all();
    assert_eq!(computed.len(), 4, "one computation per batch: {computed:?}");
    assert!(
        computed[1..].iter().all(|ids| *ids == (0..30).collect::<Vec<_>>()),
        "every id computed when the store fails: {computed:?}"
    );
    assert!(cache.stats().function("batch:users").backend_errors >= 1);
}

async fn a_stale_entry_counts_as_a_hit(fixture: Fixture) {
    let cache = fixture.cache_in("batch-stale").await;
    let policy = Policy::new(Duration::from_secs(1))
        .stale(Duration::from_secs(60))
        .function("batch:stale");
    let calls = Calls::default();
    let lookup = |ids: Vec<u64>| {
        calls.record(&ids);
        async move { Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, user(id))).collect::<HashMap<_, _>>()) }
    };
    assert_eq!(
        cache.get_many_or_compute(keys(0..5), &policy, lookup).await.unwrap(),
        expected(0..5)
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // 0..5 are stale: served; 5 is missing: computed alone.
    assert_eq!(
        cache.get_many_or_compute(keys(0..6), &policy, lookup).await.unwrap(),
        expected(0..6)
    );
    assert_eq!(calls.all(), vec![vec![0, 1, 2, 3, 4], vec![5]]);
    let counted = cache.stats().function("batch:stale");
    assert_eq!((counted.stale_hits, counted.misses, counted.computations), (5, 6, 6));
}

/// Starts `get_or_compute` of `id` in a task; its computation waits for `go`
/// once started, then returns `answer`.
async fn hold_lease(
    cache: &Cache,
    policy: Policy,
    id: u64,
    go: Arc<Notify>,
    answer: Result<String, String>,
) -> tokio::task::JoinHandle<Result<String, String>> {
    let started = Arc::new(Notify::new());
    let task = {
        let (cache, started) = (cache.clone(), started.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute(key(id), &policy, || async move {
                    started.notify_one();
                    go.notified().await;
                    answer
                })
                .await
        })
    };
    started.notified().await;
    task
}

async fn an_id_whose_other_computation_fails_is_taken_over_and_stored(fixture: Fixture) {
    let cache = fixture.cache_in("batch-take-over").await;
    let go = Arc::new(Notify::new());
    let holder = hold_lease(&cache, policy(), 7, go.clone(), Err("db down".into())).await;
    let calls = Calls::default();
    let batch = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move { users(&cache, &calls, 5..10).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        calls.all(),
        vec![vec![5, 6, 8, 9]],
        "7 is waited for, the others computed"
    );
    go.notify_one();
    assert_eq!(holder.await.unwrap(), Err("db down".to_owned()));
    assert_eq!(batch.await.unwrap(), expected(5..10));
    assert_eq!(
        calls.all(),
        vec![vec![5, 6, 8, 9], vec![7]],
        "7 computed once its holder failed"
    );
    assert!(
        fixture.holds(&cache, &cache.full_key(key(7)).unwrap()).await,
        "and stored"
    );
    assert_eq!(cache.stats().function("batch:users").lock_waits, 1);
}

async fn an_id_waited_for_past_wait_is_computed_without_storing(fixture: Fixture) {
    let cache = fixture.cache_in("batch-wait").await;
    let short = policy().wait(Duration::from_millis(300));
    let go = Arc::new(Notify::new());
    let holder = hold_lease(&cache, short.clone(), 7, go.clone(), Ok("the holder's".into())).await;
    let calls = Calls::default();
    let got = cache
        .get_many_or_compute(keys(5..10), &short, |ids: Vec<u64>| {
            calls.record(&ids);
            async move { Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, user(id))).collect()) }
        })
        .await
        .unwrap();
    assert_eq!(got, expected(5..10), "7 computed by the batch itself");
    assert_eq!(calls.all(), vec![vec![5, 6, 8, 9], vec![7]]);
    assert_eq!(cache.stats().function("batch:users").lock_timeouts, 1);
    go.notify_one();
    assert_eq!(holder.await.unwrap(), Ok("the holder's".to_owned()));
    let stored: Option<String> = cache.get_json(key(7)).await.unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("the holder's"),
        "only the lease holder stored 7"
    );
}

async fn a_tiered_batch_reads_its_copies_and_drops_an_invalidated_one(fixture: Fixture) {
    let cache = fixture
        .builder()
        .namespace("batch-tiered")
        .tiered()
        .build()
        .await
        .unwrap();
    let calls = Calls::default();
    assert_eq!(users(&cache, &calls, 0..20).await, expected(0..20));
    // The tier serves copies once its channel is confirmed: within a few seconds.
    let started = std::time::Instant::now();
    loop {
        reset_command_stats(&fixture);
        assert_eq!(users(&cache, &calls, 0..20).await, expected(0..20));
        let ran = command_stats(&fixture);
        if !ran.iter().any(|stat| stat.starts_with("cmdstat_mget")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "every id served from this process's copies: {ran:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cache.invalidate_key(key(3)).await.unwrap());
    assert_eq!(users(&cache, &calls, 0..20).await, expected(0..20));
    assert_eq!(
        calls.all(),
        vec![(0..20).collect(), vec![3]],
        "only the invalidated id computed again"
    );
}

async fn an_empty_batch_asks_nothing(fixture: Fixture) {
    let cache = fixture.cache_in("batch-empty").await;
    let calls = Calls::default();
    assert_eq!(users(&cache, &calls, []).await, HashMap::new());
    assert!(calls.all().is_empty(), "no computation for no ids");
    assert_eq!(cache.stats().total.backend_errors, 0);
}
