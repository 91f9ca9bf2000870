//! Tags and invalidation (guarantee 4): counts, exact matching, templated tags,
//! pattern invalidation, events, and bounded tag bookkeeping — on the memory
//! backend, a single Redis node and a 3-master cluster; and `#[cached]` functions
//! with templated tags cache and count per function like any other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::key::Piece;
use aside::{cached, Cache, InvalidationKind, Key, Plain, Policy};
use aside_testkit::TcpProxy;
use serde::{Deserialize, Serialize};
use support::{Fixture, Server};

mod support;

on_backends!([memory, redis] tagged_calls_work_and_count_per_function);

on_backends!(
    [memory, redis, cluster]
    invalidate_tag_counts_tagged_entries_and_spares_the_rest,
    templated_tags_invalidate_their_own_entries,
    tags_match_exactly,
    invalidate_pattern_counts_matches_and_spares_other_prefixes,
    invalidate_key_reports_whether_an_entry_existed,
    invalidations_are_announced_as_events,
);

on_backends!(
    [redis, cluster]
    tag_sets_are_pruned_as_members_age,
    invalidating_many_entries_runs_in_batches,
    an_interrupted_invalidate_tag_is_finished_by_the_next,
    tag_sets_hold_live_entries_not_history,
);

/// Runs one cached call of `key` under `policy`, counting computations in `runs`.
async fn call(cache: &Cache, key: &str, policy: &Policy, runs: &AtomicUsize) -> u32 {
    let Plain(value) = cache
        .get_or_compute(key, policy, || async {
            Plain(u32::try_from(runs.fetch_add(1, Ordering::SeqCst)).unwrap_or(u32::MAX))
        })
        .await;
    value
}

async fn invalidate_tag_counts_tagged_entries_and_spares_the_rest(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    let orders = Policy::default().tags(["orders"]);
    let plain = Policy::default();
    for key in ["revenue:1", "revenue:2", "revenue:3"] {
        call(&cache, key, &orders, &runs).await;
    }
    for key in ["config", "banner"] {
        call(&cache, key, &plain, &runs).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 5);

    assert_eq!(cache.invalidate_tag("orders").await.unwrap(), 3);
    assert_eq!(
        cache.invalidate_tag("orders").await.unwrap(),
        0,
        "nothing left under the tag"
    );
    for key in ["revenue:1", "revenue:2", "revenue:3"] {
        assert!(!cache.exists(key).await.unwrap(), "{key} was invalidated");
    }
    // Untagged entries are still hits.
    let before = runs.load(Ordering::SeqCst);
    call(&cache, "config", &plain, &runs).await;
    call(&cache, "banner", &plain, &runs).await;
    assert_eq!(runs.load(Ordering::SeqCst), before);
    // Tagged ones recompute, and are tagged again.
    call(&cache, "revenue:1", &orders, &runs).await;
    assert_eq!(runs.load(Ordering::SeqCst), before + 1);
    assert_eq!(cache.invalidate_tag("orders").await.unwrap(), 1);
    assert_eq!(cache.stats().total.invalidations, 4);
}

async fn templated_tags_invalidate_their_own_entries(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    let region = |name: &str| {
        Policy::default()
            .tags(["orders"])
            .tag([Piece::Lit("region:"), Piece::value(name)])
    };
    for (key, name) in [("eu:1", "eu"), ("eu:2", "eu"), ("us:1", "us"), ("eu west:1", "eu west")] {
        call(&cache, key, &region(name), &runs).await;
    }
    assert_eq!(cache.invalidate_tag("region:eu").await.unwrap(), 2);
    assert!(cache.exists("us:1").await.unwrap());
    // The space was escaped in the tag, so "region:eu west" is not a tag; the escaped form is.
    assert_eq!(cache.invalidate_tag("region:eu west").await.unwrap(), 0);
    assert_eq!(cache.invalidate_tag("region:eu%20west").await.unwrap(), 1);
    assert_eq!(
        cache.invalidate_tag("orders").await.unwrap(),
        1,
        "only us:1 is left under orders"
    );
}

async fn tags_match_exactly(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    call(&cache, "x", &Policy::default().tags(["region:x"]), &runs).await;
    call(&cache, "x1", &Policy::default().tags(["region:x:1"]), &runs).await;
    call(&cache, "star", &Policy::default().tags(["region:*"]), &runs).await;
    assert_eq!(cache.invalidate_tag("region:x").await.unwrap(), 1);
    assert!(cache.exists("x1").await.unwrap(), "region:x never touches region:x:1");
    assert!(cache.exists("star").await.unwrap());
    assert_eq!(
        cache.invalidate_tag("region:*").await.unwrap(),
        1,
        "a tag is never a glob"
    );
    assert!(cache.exists("x1").await.unwrap());
}

async fn invalidate_pattern_counts_matches_and_spares_other_prefixes(fx: Fixture) {
    let cache = fx.cache().await;
    for id in 0..120 {
        cache
            .set_json(format!("user:{id}"), &id, Duration::from_secs(60))
            .await
            .unwrap();
    }
    cache
        .set_json("users:count", &120, Duration::from_secs(60))
        .await
        .unwrap();
    let runs = AtomicUsize::new(0);
    let policy = Policy::default().tags(["orders"]);
    for month in 1..=3 {
        let revenue = Key::digest("computed", "revenue", 1, &("eu", month));
        let other = Key::digest("computed2", "revenue", 1, &("eu", month));
        for key in [revenue, other] {
            let Plain(_) = cache
                .get_or_compute(key, &policy, || async { Plain(runs.fetch_add(1, Ordering::SeqCst)) })
                .await;
        }
    }
    assert_eq!(cache.invalidate_pattern("user:*").await.unwrap(), 120);
    assert!(cache.exists("users:count").await.unwrap());
    assert_eq!(cache.invalidate_pattern("computed:*").await.unwrap(), 3);
    let other = Key::digest("computed2", "revenue", 1, &("eu", 1));
    assert!(
        cache.exists(&other).await.unwrap(),
        "computed:* never matches computed2:"
    );
    assert_eq!(cache.invalidate_pattern("computed:*").await.unwrap(), 0);
    // The tag set still names the removed entries; invalidating it counts only live ones.
    assert_eq!(cache.invalidate_tag("orders").await.unwrap(), 3);
    if !fx.is_memory() {
        // Bookkeeping keys are never matched by a pattern: only what is left remains.
        assert_eq!(fx.all_keys(), ["aside:users:count"]);
    }
}

async fn invalidate_key_reports_whether_an_entry_existed(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    let key = Key::digest("computed", "report", 1, &(2026, 11));
    let Plain(_) = cache
        .get_or_compute(&key, &Policy::default(), || async {
            Plain(runs.fetch_add(1, Ordering::SeqCst))
        })
        .await;
    assert!(cache.invalidate_key(&key).await.unwrap());
    assert!(!cache.invalidate_key(&key).await.unwrap());
    assert!(aside::Cache::global().invalidate_key("never-written").await.is_ok());
}

async fn invalidations_are_announced_as_events(fx: Fixture) {
    let cache = fx.cache().await;
    let mut events = cache.events();
    let runs = AtomicUsize::new(0);
    call(&cache, "a", &Policy::default().tags(["t"]), &runs).await;
    call(&cache, "b", &Policy::default().tags(["t"]), &runs).await;
    cache.set_json("p:1", &1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.invalidate_tag("t").await.unwrap(), 2);
    assert!(!cache.invalidate_key("a").await.unwrap());
    assert_eq!(cache.invalidate_pattern("p:*").await.unwrap(), 1);
    let seen: Vec<_> = std::iter::from_fn(|| events.try_next())
        .map(|e| (e.kind, e.target, e.removed))
        .collect();
    assert_eq!(
        seen,
        [
            (InvalidationKind::Tag, "t".to_owned(), 2),
            (InvalidationKind::Key, "aside:a".to_owned(), 0),
            (InvalidationKind::Pattern, "aside:p:*".to_owned(), 1),
        ]
    );
}

/// Members whose entries must have expired (registered longer ago than twice the
/// ceiling) are pruned when the set is next written.
async fn tag_sets_are_pruned_as_members_age(fx: Fixture) {
    let cache = fx.builder().max_ttl(Duration::from_secs(1)).build().await.unwrap();
    let runs = AtomicUsize::new(0);
    let policy = Policy::new(Duration::from_secs(1)).tags(["hot"]);
    for i in 0..50 {
        call(&cache, &format!("old:{i}"), &policy, &runs).await;
    }
    let mut conn = fx
        .node_connections()
        .into_iter()
        .next()
        .map(|_| ())
        .map(|()| open_tag_node(&fx, "aside~tag:hot"));
    let card = |conn: &mut Option<redis::Connection>| -> i64 {
        redis::cmd("ZCARD")
            .arg("aside~tag:hot")
            .query(conn.as_mut().unwrap())
            .unwrap()
    };
    assert_eq!(card(&mut conn), 50);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    call(&cache, "new", &policy, &runs).await;
    assert_eq!(card(&mut conn), 1, "members older than the horizon were pruned");
    let ttl = fx.pttl("aside~tag:hot").unwrap();
    assert!(
        ttl > 0 && ttl <= 1000,
        "the set lives as long as its newest member: {ttl}"
    );
}

/// With the default 24 h ceiling, members go when their own entries expire
/// (TTL plus lease), not a fixed horizon after they were recorded: a busy tag
/// of short-lived entries holds its live members, and an invalidation pays for
/// those only.
async fn tag_sets_hold_live_entries_not_history(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    let short = Policy::new(Duration::from_secs(1))
        .lock_ttl(Duration::from_secs(1))
        .tags(["feed"]);
    let long = Policy::new(Duration::from_secs(300)).tags(["feed"]);
    for i in 0..50 {
        call(&cache, &format!("short:{i}"), &short, &runs).await;
    }
    call(&cache, "long", &long, &runs).await;
    let mut conn = open_tag_node(&fx, "aside~tag:feed");
    let card = |conn: &mut redis::Connection| -> i64 { redis::cmd("ZCARD").arg("aside~tag:feed").query(conn).unwrap() };
    assert_eq!(card(&mut conn), 51);
    // Each member's score is the latest its entry can expire, on the server's clock.
    let (now, score): (Vec<String>, Option<f64>) = redis::pipe()
        .cmd("TIME")
        .cmd("ZSCORE")
        .arg("aside~tag:feed")
        .arg("aside:long")
        .query(&mut conn)
        .unwrap();
    let now_ms = now[0].parse::<f64>().unwrap() * 1e3 + (now[1].parse::<f64>().unwrap() / 1e3).floor();
    let left = score.unwrap() - now_ms;
    assert!(
        left > 300_000.0 && left <= 330_000.0,
        "scored by its expiry, TTL plus lease: {left} ms from now"
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    call(&cache, "short:new", &short, &runs).await;
    assert_eq!(
        card(&mut conn),
        2,
        "the 50 expired members are pruned at the next record; the live ones stay"
    );
    assert_eq!(cache.invalidate_tag("feed").await.unwrap(), 2);
}

fn open_tag_node(fx: &Fixture, key: &str) -> redis::Connection {
    match &fx.server {
        support::Server::Single(server) => server.connection(),
        support::Server::Cluster(cluster) => cluster.nodes()[cluster.node_for_key(key)].connection(),
        support::Server::Memory => unreachable!(),
    }
}

/// More members than one batch (500): all are found and removed, none is counted twice.
async fn invalidating_many_entries_runs_in_batches(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    let policy = Policy::default().tags(["bulk"]);
    use futures_util::StreamExt;
    futures_util::stream::iter(0..1_234)
        .for_each_concurrent(32, |i| {
            let (cache, policy, runs) = (&cache, &policy, &runs);
            async move {
                call(cache, &format!("bulk:{i}"), policy, runs).await;
            }
        })
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1_234);
    assert_eq!(
        cache.stats().total.backend_errors,
        0,
        "every entry was stored and tagged"
    );
    let started = std::time::Instant::now();
    assert_eq!(cache.invalidate_tag("bulk").await.unwrap(), 1_234);
    println!("invalidate_tag over 1234 entries: {:?}", started.elapsed());
    assert_eq!(
        fx.all_keys(),
        Vec::<String>::new(),
        "entries, leases and the tag set are all gone"
    );
}

/// Computes (and tags) every key of `keys` that is not cached, 32 at a time,
/// until all are stored (on a loaded machine a few calls may time out and fail
/// open without storing).
async fn populate(cache: &Cache, keys: &[String], policy: &Policy, runs: &AtomicUsize) {
    use futures_util::StreamExt;
    for _ in 0..10 {
        futures_util::stream::iter(keys)
            .for_each_concurrent(32, |key| async move {
                call(cache, key, policy, runs).await;
            })
            .await;
        let mut stored = 0;
        for key in keys {
            stored += usize::from(cache.exists(key.as_str()).await.unwrap_or(false));
        }
        if stored == keys.len() {
            return;
        }
    }
    panic!("could not store every entry");
}

/// The entries of `prefix` still in Redis, read from the servers themselves.
fn entries_left(fx: &Fixture, prefix: &str) -> usize {
    fx.all_keys().iter().filter(|key| key.starts_with(prefix)).count()
}

/// "Log out everywhere" that is cut short — its caller gives up (a timeout, a
/// dropped request) on a single node, a stalled master on a cluster — after it
/// took the tag's members: the next invalidation of the tag finishes the work,
/// removes every entry left and counts exactly those.
async fn an_interrupted_invalidate_tag_is_finished_by_the_next(fx: Fixture) {
    const N: usize = 6_000;
    let tag = "sessions:user:7";
    let tag_key = format!("aside~tag:{tag}");
    let policy = Policy::default().tags([tag]);
    let runs = AtomicUsize::new(0);
    let keys: Vec<String> = (0..N).map(|i| format!("session:{i}")).collect();
    let (cache, _proxy) = match &fx.server {
        Server::Single(server) => {
            let proxy = TcpProxy::start(server.port());
            let cache = Cache::builder().redis_url(&proxy.url()).build().await.unwrap();
            populate(&cache, &keys, &policy, &runs).await;
            assert_eq!(entries_left(&fx, "aside:session:"), N);
            // Every round trip takes at least 40 ms from now on: the caller gives
            // up once the set is detached, long before every entry is gone.
            proxy.set_latency(Duration::from_millis(20));
            let mut cut = Duration::from_millis(150);
            for _ in 0..8 {
                let outcome = tokio::time::timeout(cut, cache.invalidate_tag(tag)).await;
                assert!(outcome.is_err(), "the invalidation finished within {cut:?}");
                // A request sent before the cut still lands.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if fx.pttl(&tag_key).is_none() {
                    break;
                }
                cut += Duration::from_millis(40);
            }
            proxy.set_latency(Duration::ZERO);
            (cache, Some(proxy))
        }
        Server::Cluster(cluster) => {
            let cache = fx.cache().await;
            populate(&cache, &keys, &policy, &runs).await;
            assert_eq!(entries_left(&fx, "aside:session:"), N);
            // One invalidation first, so every master has loaded the scripts:
            // loading one asks all masters, the stalled one too.
            let warm: Vec<String> = (0..64).map(|i| format!("warm:{i}")).collect();
            populate(&cache, &warm, &Policy::default().tags(["warm"]), &runs).await;
            assert_eq!(cache.invalidate_tag("warm").await.unwrap(), 64);
            // A master holding entries but not the tag set stalls past the
            // operation timeout while the invalidation runs.
            let tag_node = cluster.node_for_key(&tag_key);
            let stalled = &cluster.nodes()[(tag_node + 1) % cluster.nodes().len()];
            stalled.freeze();
            let outcome = cache.invalidate_tag(tag).await;
            stalled.thaw();
            assert!(outcome.is_err(), "a stalled master fails the invalidation: {outcome:?}");
            (cache, None)
        }
        Server::Memory => unreachable!("a memory invalidation cannot be cut short"),
    };
    assert!(fx.pttl(&tag_key).is_none(), "the interrupted invalidation took the set");
    // Requests sent before the cut may still land; let them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck = std::time::Instant::now();
    while cache.ping().await.is_err() {
        assert!(stuck.elapsed() < Duration::from_secs(30), "Redis never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = entries_left(&fx, "aside:session:");
    assert!(left > 0, "the interruption came after every entry was gone");
    assert_eq!(
        cache.invalidate_tag(tag).await.unwrap(),
        left as u64,
        "the retry removes, and counts, what was left"
    );
    assert_eq!(entries_left(&fx, "aside:session:"), 0, "every session is gone");
    assert_eq!(cache.invalidate_tag(tag).await.unwrap(), 0);
    assert_eq!(fx.all_keys(), Vec::<String>::new(), "no bookkeeping is left behind");
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Customer {
    id: u64,
    region: String,
}

#[cached(prefix = "orders", tags = ["orders", "region:{customer.region}", "customer:{customer.id}"], skip(cache), cache = cache)]
async fn orders(cache: &Cache, customer: &Customer, page: u32) -> Vec<u64> {
    vec![customer.id, u64::from(page)]
}

async fn tagged_calls_work_and_count_per_function(fx: Fixture) {
    let cache = fx.cache_in("tags").await;
    let ada = Customer {
        id: 1,
        region: "eu west".to_owned(),
    };
    assert_eq!(orders(&cache, &ada, 1).await, [1, 1]);
    assert_eq!(orders(&cache, &ada, 1).await, [1, 1]);
    assert_eq!(orders(&cache, &ada, 2).await, [1, 2]);
    let stats = cache.stats().function("orders:orders");
    assert_eq!((stats.hits, stats.misses, stats.computations), (1, 2, 2));
    assert_eq!(stats.backend_errors, 0, "every tag rendered");
}
