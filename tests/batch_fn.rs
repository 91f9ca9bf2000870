//! `#[cached(batch = ids)]`: a cached function over many ids stores one entry
//! per id (the entry a single-id function with the same name would have), runs
//! its body with only the missing ids, computes each id once across concurrent
//! calls, and its companions address one id's entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::{cached, Cache};
use serde::{Deserialize, Serialize};
use support::Fixture;
use tokio::sync::Notify;

mod support;

on_backends!([memory, redis, cluster]
    a_superset_computes_only_the_new_ids,
    invalidating_one_id_recomputes_only_that_id,
    overlapping_concurrent_calls_compute_each_id_once,
    each_id_is_the_entry_a_single_id_function_reads,
    a_tag_of_the_other_arguments_drops_every_id_of_it,
    an_id_the_body_leaves_out_is_not_stored,
    ids_given_as_a_vec_or_a_vec_reference,
    the_body_runs_again_for_an_id_whose_other_caller_failed,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    region: String,
}

/// The database: knows the ids below 1000, and records the ids of each query.
#[derive(Default)]
struct Db {
    queries: Mutex<Vec<Vec<u64>>>,
    /// How long a query takes.
    delay: Duration,
}

impl Db {
    fn slow(delay: Duration) -> Db {
        Db { delay, ..Db::default() }
    }

    async fn users(&self, region: &str, ids: &[u64]) -> HashMap<u64, User> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        self.queries.lock().unwrap().push(sorted);
        tokio::time::sleep(self.delay).await;
        ids.iter()
            .filter(|&&id| id < 1000)
            .map(|&id| {
                (
                    id,
                    User {
                        id,
                        region: region.to_owned(),
                    },
                )
            })
            .collect()
    }

    /// The ids of each query, in order.
    fn queries(&self) -> Vec<Vec<u64>> {
        self.queries.lock().unwrap().clone()
    }

    /// How often each id was queried.
    fn per_id(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for id in self.queries().into_iter().flatten() {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }
}

#[cached(
    prefix = "batch-fn",
    ttl = 300,
    tags = ["users", "region:{region}"],
    skip(cache, db),
    cache = cache,
    batch = ids
)]
async fn users(cache: &Cache, db: &Db, region: &str, ids: &[u64]) -> Result<HashMap<u64, User>, std::io::Error> {
    Ok(db.users(region, ids).await)
}

/// One user, under the batch function's name: the same entries.
#[cached(
    prefix = "batch-fn",
    name = "users",
    ttl = 300,
    tags = ["users", "region:{region}"],
    skip(cache, db),
    cache = cache
)]
async fn user(cache: &Cache, db: &Db, region: &str, id: u64) -> Result<Option<User>, std::io::Error> {
    Ok(db.users(region, &[id]).await.remove(&id))
}

fn expected(region: &str, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, User> {
    ids.into_iter()
        .map(|id| {
            (
                id,
                User {
                    id,
                    region: region.to_owned(),
                },
            )
        })
        .collect()
}

async fn a_superset_computes_only_the_new_ids(fixture: Fixture) {
    let cache = fixture.cache().await;
    let db = Db::default();
    assert_eq!(
        users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap(),
        expected("eu", [1, 2, 3])
    );
    assert_eq!(
        users(&cache, &db, "eu", &[1, 2, 3, 4, 5]).await.unwrap(),
        expected("eu", 1..=5)
    );
    assert_eq!(
        db.queries(),
        [vec![1, 2, 3], vec![4, 5]],
        "the body gets only the missing ids"
    );
    assert_eq!(users(&cache, &db, "eu", &[5, 1]).await.unwrap(), expected("eu", [5, 1]));
    assert_eq!(db.queries().len(), 2, "all hits: no query");
    // Another value of an other argument is another entry for the same id.
    assert_eq!(users(&cache, &db, "us", &[1]).await.unwrap(), expected("us", [1]));
    assert_eq!(db.queries()[2], [1]);

    let counted = cache.stats().function("batch-fn:users");
    assert_eq!(
        (counted.hits, counted.misses, counted.computations),
        (5, 6, 6),
        "counted per id"
    );
}

async fn invalidating_one_id_recomputes_only_that_id(fixture: Fixture) {
    let cache = fixture.cache().await;
    let db = Db::default();
    users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap();
    assert!(
        users_invalidate(&cache, "eu", 2).await.unwrap(),
        "the entry of id 2 existed"
    );
    assert!(!users_invalidate(&cache, "eu", 2).await.unwrap(), "and is gone");
    assert!(
        !users_invalidate(&cache, "us", 1).await.unwrap(),
        "region us has no entry for id 1"
    );
    assert_eq!(
        users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap(),
        expected("eu", [1, 2, 3])
    );
    assert_eq!(db.queries(), [vec![1, 2, 3], vec![2]]);

    // Many at once: how many existed (9 was never stored).
    assert_eq!(users_invalidate_many(&cache, "eu", &[1, 3, 9]).await.unwrap(), 2);
    assert_eq!(
        users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap(),
        expected("eu", [1, 2, 3])
    );
    assert_eq!(db.queries()[2..], [vec![1, 3]]);

    // Soft invalidation: without a `stale` window the expired id is computed again.
    assert!(users_expire(&cache, "eu", 3).await.unwrap());
    users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap();
    assert_eq!(db.queries()[3..], [vec![3]]);
}

async fn overlapping_concurrent_calls_compute_each_id_once(fixture: Fixture) {
    // Two handles on one Redis stand for two processes; the memory store is one process's.
    let first = fixture.cache().await;
    let second = if fixture.is_memory() {
        first.clone()
    } else {
        fixture.cache().await
    };
    let db = Arc::new(Db::slow(Duration::from_millis(200)));
    let mut tasks = Vec::new();
    for call in 0..6u64 {
        let cache = if call % 2 == 0 { first.clone() } else { second.clone() };
        let db = db.clone();
        // 0..20, 5..25, ... 25..45: each id is asked by up to four calls at once.
        let ids: Vec<u64> = (call * 5..call * 5 + 20).collect();
        tasks.push(tokio::spawn(async move {
            let got = users(&cache, &db, "eu", &ids).await.unwrap();
            (ids, got)
        }));
    }
    for task in tasks {
        let (ids, got) = task.await.unwrap();
        assert_eq!(got, expected("eu", ids), "every call gets all its users");
    }
    let per_id = db.per_id();
    assert_eq!(per_id.keys().copied().collect::<Vec<_>>(), (0..45).collect::<Vec<_>>());
    assert!(
        per_id.values().all(|&count| count == 1),
        "each id computed once: {per_id:?}, queries {:?}",
        db.queries()
    );
}

async fn each_id_is_the_entry_a_single_id_function_reads(fixture: Fixture) {
    let cache = fixture.cache().await;
    let db = Db::default();
    users(&cache, &db, "eu", &[1, 2]).await.unwrap();

    // The key of id 2 is the key of `user(.., "eu", 2)`, and holds an entry with the TTL.
    let key = users_key(&cache, "eu", 2);
    assert_eq!(key, user_key(&cache, "eu", 2));
    assert!(key.starts_with("aside:batch-fn:users:v1.1:"), "{key}");
    assert!(fixture.holds(&cache, &key).await, "{key} is stored");
    let ttl = fixture.ttl_of(&cache, &key).await.expect("stored");
    assert!(
        ttl > Duration::from_secs(290) && ttl <= Duration::from_secs(300),
        "{ttl:?}"
    );

    // The single-id function finds it: no query.
    let two = user(&cache, &db, "eu", 2).await.unwrap();
    assert_eq!(two, Some(expected("eu", [2]).remove(&2).unwrap()));
    assert_eq!(db.queries(), [vec![1, 2]]);

    // And the batch finds what the single-id function stored.
    user(&cache, &db, "eu", 3).await.unwrap();
    users(&cache, &db, "eu", &[1, 2, 3, 4]).await.unwrap();
    assert_eq!(db.queries(), [vec![1, 2], vec![3], vec![4]]);
}

async fn a_tag_of_the_other_arguments_drops_every_id_of_it(fixture: Fixture) {
    let cache = fixture.cache().await;
    let db = Db::default();
    users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap();
    users(&cache, &db, "us", &[1, 2]).await.unwrap();
    assert_eq!(cache.invalidate_tag("region:eu").await.unwrap(), 3, "one entry per id");
    assert!(!fixture.holds(&cache, &users_key(&cache, "eu", 1)).await);
    assert!(fixture.holds(&cache, &users_key(&cache, "us", 1)).await);

    users(&cache, &db, "eu", &[1, 2, 3]).await.unwrap();
    users(&cache, &db, "us", &[1, 2]).await.unwrap();
    assert_eq!(db.queries()[2..], [vec![1, 2, 3]], "region us stayed cached");
    assert_eq!(cache.invalidate_tag("users").await.unwrap(), 5);
}

async fn an_id_the_body_leaves_out_is_not_stored(fixture: Fixture) {
    let cache = fixture.cache().await;
    let db = Db::default();
    // The database knows no id 1000 or above.
    assert_eq!(users(&cache, &db, "eu", &[7, 1000]).await.unwrap(), expected("eu", [7]));
    assert!(fixture.holds(&cache, &users_key(&cache, "eu", 7)).await);
    assert!(!fixture.holds(&cache, &users_key(&cache, "eu", 1000)).await);
    assert_eq!(users(&cache, &db, "eu", &[7, 1000]).await.unwrap(), expected("eu", [7]));
    assert_eq!(db.queries(), [vec![7, 1000], vec![1000]], "asked again, alone");
}

#[cached(prefix = "batch-fn", ttl = 60, skip(cache, db), cache = cache, batch = ids)]
async fn names(
    cache: &Cache,
    db: &Db,
    suffix: String,
    mut ids: Vec<u64>,
) -> Result<HashMap<u64, String>, std::io::Error> {
    ids.sort_unstable();
    let found = db.users("eu", &ids).await;
    Ok(found.into_keys().map(|id| (id, format!("{id}{suffix}"))).collect())
}

/// `&Vec<u64>` on purpose: the form is accepted.
#[allow(clippy::ptr_arg)]
#[cached(prefix = "batch-fn", ttl = 60, skip(cache, db), cache = cache, batch = ids)]
async fn names_of(cache: &Cache, db: &Db, ids: &Vec<u64>) -> std::io::Result<std::collections::HashMap<u64, String>> {
    let found = db.users("eu", ids).await;
    Ok(found.into_keys().map(|id| (id, id.to_string())).collect())
}

async fn ids_given_as_a_vec_or_a_vec_reference(fixture: Fixture) {
    let cache = fixture.cache().await;
    let db = Db::default();
    let suffix = "!".to_owned();
    let got = names(&cache, &db, suffix.clone(), vec![3, 1]).await.unwrap();
    assert_eq!(got, HashMap::from([(1, "1!".to_owned()), (3, "3!".to_owned())]));
    let got = names(&cache, &db, suffix.clone(), vec![1, 2, 3]).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(db.queries(), [vec![1, 3], vec![2]]);
    assert!(fixture.holds(&cache, &names_key(&cache, suffix.clone(), 2)).await);
    assert_eq!(
        names_invalidate_many(&cache, suffix, vec![1, 2, 3, 4]).await.unwrap(),
        3
    );

    let got = names_of(&cache, &db, &vec![5, 6]).await.unwrap();
    assert_eq!(got, HashMap::from([(5, "5".to_owned()), (6, "6".to_owned())]));
    names_of(&cache, &db, &vec![5, 6, 7]).await.unwrap();
    assert_eq!(db.queries()[2..], [vec![5, 6], vec![7]]);
    assert!(names_of_invalidate(&cache, 7).await.unwrap());
}

/// A database whose first query for id 7 waits for `go`, then fails.
#[derive(Default)]
struct Flaky {
    go: Notify,
    failed: AtomicBool,
    queries: Mutex<Vec<Vec<u64>>>,
}

impl Flaky {
    fn queries(&self) -> Vec<Vec<u64>> {
        self.queries.lock().unwrap().clone()
    }
}

/// `label` is owned: each run of the body gets a clone.
#[cached(prefix = "batch-fn", ttl = 60, skip(cache, db), cache = cache, batch = ids)]
async fn labels(cache: &Cache, db: &Flaky, label: String, ids: &[u64]) -> Result<HashMap<u64, String>, String> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    db.queries.lock().unwrap().push(sorted);
    if ids.contains(&7) && !db.failed.swap(true, Ordering::SeqCst) {
        db.go.notified().await;
        return Err("db down".to_owned());
    }
    Ok(ids.iter().map(|&id| (id, format!("{label} {id}"))).collect())
}

async fn the_body_runs_again_for_an_id_whose_other_caller_failed(fixture: Fixture) {
    // Two handles on one Redis stand for two processes; the memory store is one process's.
    let first = fixture.cache().await;
    let second = if fixture.is_memory() {
        first.clone()
    } else {
        fixture.cache().await
    };
    let db = Arc::new(Flaky::default());
    let holder = {
        let (cache, db) = (first.clone(), db.clone());
        tokio::spawn(async move { labels(&cache, &db, "label".to_owned(), &[7]).await })
    };
    for _ in 0..200 {
        if !db.queries().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(db.queries(), [vec![7]], "the holder is computing 7");
    let batch = {
        let (cache, db) = (second.clone(), db.clone());
        tokio::spawn(async move { labels(&cache, &db, "label".to_owned(), &[5, 6, 7, 8]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        db.queries(),
        [vec![7], vec![5, 6, 8]],
        "7 is waited for, the others computed"
    );

    db.go.notify_one();
    assert_eq!(holder.await.unwrap(), Err("db down".to_owned()));
    let got = batch.await.unwrap().unwrap();
    let expected: HashMap<u64, String> = [5, 6, 7, 8].map(|id| (id, format!("label {id}"))).into();
    assert_eq!(got, expected, "7 too, from a second run with its own `label`");
    assert_eq!(db.queries(), [vec![7], vec![5, 6, 8], vec![7]]);
    assert!(
        fixture
            .holds(&second, &labels_key(&second, "label".to_owned(), 7))
            .await,
        "and stored, under the lease taken over"
    );
}
