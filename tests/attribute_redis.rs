//! `#[cached]` end to end against a real `redis-server` (started by
//! `aside-testkit`): the entries the attribute writes, read back with plain Redis
//! commands — keys, TTLs — and what its companions do to them.
//!
//! Each test starts its own server and builds its own cache, handed to the
//! functions through `cache = cache` (a skipped argument).

use std::sync::atomic::{AtomicUsize, Ordering};

use aside::{cached, Cache};
use aside_testkit::RedisServer;

async fn redis(server: &RedisServer, namespace: &str) -> Cache {
    Cache::builder()
        .redis_url(&server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("connect to the test server")
}

/// The entry keys under `pattern`, read with `SCAN` (locks and tag sets excluded:
/// they do not start with the namespace).
fn keys(server: &RedisServer, pattern: &str) -> Vec<String> {
    let mut con = server.connection();
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(&mut con)
        .expect("SCAN")
        .map(|key| key.expect("key"))
        .collect();
    keys.sort();
    keys
}

/// `PTTL` of `key` in milliseconds (-2: no such key, -1: no expiry).
fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.connection())
        .expect("PTTL")
}

fn exists(server: &RedisServer, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(&mut server.connection())
        .expect("EXISTS")
        == 1
}

/// Counts how often a body ran.
#[derive(Default)]
struct Runs(AtomicUsize);

impl Runs {
    fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cached(prefix = "reports", ttl = 120, skip(cache, runs), cache = cache)]
async fn revenue(cache: &Cache, runs: &Runs, region: &str, month: u32) -> Result<u64, std::io::Error> {
    runs.tick();
    Ok(u64::from(month) * region.len() as u64)
}

#[tokio::test]
async fn a_hit_runs_no_computation_and_the_entry_expires_within_its_ttl() {
    let server = RedisServer::start();
    let cache = redis(&server, "hits").await;
    let runs = Runs::default();
    assert_eq!(revenue(&cache, &runs, "eu", 11).await.unwrap(), 22);
    assert_eq!(revenue(&cache, &runs, "eu", 11).await.unwrap(), 22);
    assert_eq!(runs.get(), 1);

    let stored = keys(&server, "hits:*");
    assert_eq!(stored, [revenue_key(&cache, "eu", 11)]);
    let ttl = pttl(&server, &stored[0]);
    assert!(ttl > 0 && ttl <= 120_000, "PTTL {ttl} ms not in (0, 120 s]");
}

#[tokio::test]
async fn the_key_companion_is_the_key_in_redis_in_the_golden_layout() {
    let server = RedisServer::start();
    let cache = redis(&server, "golden").await;
    let runs = Runs::default();
    revenue(&cache, &runs, "eu", 11).await.unwrap();
    revenue(&cache, &runs, "us", 11).await.unwrap();

    let key = revenue_key(&cache, "eu", 11);
    let stored = keys(&server, "golden:reports:revenue:*");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored.contains(&key), "{key} not in {stored:?}");
    // {namespace}:{prefix}:{name}:v{key_version}.{version}:{32 hex digits}
    let digest = key.strip_prefix("golden:reports:revenue:v1.1:").expect(&key);
    assert!(
        digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{key}"
    );
}

#[cached(prefix = "reports", key = "{region}:{month}", ttl = 60, skip(cache), cache = cache)]
async fn readable(cache: &Cache, region: &str, month: u32) -> String {
    format!("{region}/{month}")
}

#[tokio::test]
async fn key_templates_are_readable_and_escaped_in_redis() {
    let server = RedisServer::start();
    let cache = redis(&server, "readable").await;
    assert_eq!(readable(&cache, "eu:west 1", 11).await, "eu:west 1/11");
    assert_eq!(
        keys(&server, "readable:*"),
        ["readable:reports:readable:v1.1:eu%3Awest%201:11"]
    );
    assert_eq!(
        readable_key(&cache, "eu:west 1", 11),
        "readable:reports:readable:v1.1:eu%3Awest%201:11"
    );
}

#[tokio::test]
async fn invalidate_deletes_the_entry_once() {
    let server = RedisServer::start();
    let cache = redis(&server, "invalidate").await;
    let runs = Runs::default();
    revenue(&cache, &runs, "eu", 1).await.unwrap();
    revenue(&cache, &runs, "eu", 2).await.unwrap();
    let key = revenue_key(&cache, "eu", 1);
    assert!(exists(&server, &key));

    assert!(revenue_invalidate(&cache, "eu", 1).await.unwrap());
    assert!(!exists(&server, &key));
    assert!(!revenue_invalidate(&cache, "eu", 1).await.unwrap());
    assert!(
        exists(&server, &revenue_key(&cache, "eu", 2)),
        "other arguments keep their entry"
    );

    revenue(&cache, &runs, "eu", 1).await.unwrap();
    assert_eq!(runs.get(), 3, "the call after invalidation computes");
}

#[cached(ttl = 60, skip(cache, source), cache = cache)]
async fn latest(cache: &Cache, source: &AtomicUsize, feed: &str) -> usize {
    let _ = feed;
    source.load(Ordering::SeqCst)
}

#[tokio::test]
async fn refresh_overwrites_the_entry_in_redis() {
    let server = RedisServer::start();
    let cache = redis(&server, "refresh").await;
    let source = AtomicUsize::new(1);
    assert_eq!(latest(&cache, &source, "news").await, 1);
    source.store(2, Ordering::SeqCst);
    assert_eq!(latest(&cache, &source, "news").await, 1);
    assert_eq!(latest_refresh(&cache, &source, "news").await, 2);
    source.store(3, Ordering::SeqCst);
    assert_eq!(
        latest(&cache, &source, "news").await,
        2,
        "served from the overwritten entry"
    );
    assert_eq!(keys(&server, "refresh:*"), [latest_key(&cache, "news")]);
}

#[cached(name = "profile", version = 1, skip(cache, runs), cache = cache)]
async fn profile_v1(cache: &Cache, runs: &Runs, user: u32) -> String {
    runs.tick();
    format!("v1:{user}")
}

#[cached(name = "profile", version = 2, skip(cache, runs), cache = cache)]
async fn profile_v2(cache: &Cache, runs: &Runs, user: u32) -> (u32, String) {
    runs.tick();
    (user, "v2".to_owned())
}

#[tokio::test]
async fn a_version_bump_writes_a_new_key_and_leaves_the_old_to_expire() {
    let server = RedisServer::start();
    let cache = redis(&server, "versions").await;
    let runs = Runs::default();
    profile_v1(&cache, &runs, 1).await;
    assert_eq!(profile_v2(&cache, &runs, 1).await, (1, "v2".to_owned()));
    assert_eq!(runs.get(), 2, "the v1 entry is not reachable from v2");
    let old = profile_v1_key(&cache, 1);
    let new = profile_v2_key(&cache, 1);
    assert!(old.starts_with("versions:computed:profile:v1.1:") && new.starts_with("versions:computed:profile:v1.2:"));
    assert_eq!(keys(&server, "versions:*"), [old.clone(), new]);
    assert!(pttl(&server, &old) > 0, "the old entry expires on its own");
}

#[cached(ttl = 30, stale = "90s", skip(cache), cache = cache)]
async fn dashboard(cache: &Cache, team: u32) -> Vec<u32> {
    vec![team; 2]
}

#[tokio::test]
async fn a_stale_window_keeps_the_entry_past_its_ttl() {
    let server = RedisServer::start();
    let cache = redis(&server, "stale").await;
    dashboard(&cache, 1).await;
    let ttl = pttl(&server, &dashboard_key(&cache, 1));
    assert!(
        ttl > 30_000 && ttl <= 120_000,
        "PTTL {ttl} ms not in (30 s, 30 s + 90 s]"
    );
}

#[cached(skip(cache, runs), cache = cache)]
async fn checked(cache: &Cache, runs: &Runs, n: i64) -> Result<u64, String> {
    runs.tick();
    u64::try_from(n).map_err(|e| e.to_string())
}

#[cached(skip(cache), cache = cache, cache_none = true)]
async fn lookup(cache: &Cache, email: &str) -> Option<u64> {
    (email == "ada@example.com").then_some(1)
}

#[cached(skip(cache), cache = cache)]
async fn lookup_some(cache: &Cache, email: &str) -> Option<u64> {
    (email == "ada@example.com").then_some(1)
}

#[tokio::test]
async fn only_ok_and_some_are_written_unless_cache_none() {
    let server = RedisServer::start();
    let cache = redis(&server, "outcomes").await;
    let runs = Runs::default();
    assert!(checked(&cache, &runs, -1).await.is_err());
    assert!(!exists(&server, &checked_key(&cache, -1)), "an Err is not written");
    checked(&cache, &runs, 1).await.unwrap();
    assert!(exists(&server, &checked_key(&cache, 1)));

    assert_eq!(lookup_some(&cache, "nobody").await, None);
    assert!(
        !exists(&server, &lookup_some_key(&cache, "nobody")),
        "None is not written by default"
    );
    assert_eq!(lookup(&cache, "nobody").await, None);
    assert!(
        exists(&server, &lookup_key(&cache, "nobody")),
        "None is written with cache_none"
    );
}

struct Repository {
    cache: Cache,
    runs: Runs,
}

impl Repository {
    #[cached(prefix = "repo", skip(self), cache = self.cache, tags = ["users"])]
    async fn user(&self, id: u32) -> Option<String> {
        self.runs.tick();
        Some(format!("user-{id}"))
    }
}

#[tokio::test]
async fn methods_write_under_type_and_method_name() {
    let server = RedisServer::start();
    let repo = Repository {
        cache: redis(&server, "methods").await,
        runs: Runs::default(),
    };
    repo.user(1).await;
    repo.user(1).await;
    assert_eq!(repo.runs.get(), 1);
    let stored = keys(&server, "methods:repo:*");
    assert_eq!(stored, [repo.user_key(1)]);
    assert!(stored[0].starts_with("methods:repo:Repository::user:v1.1:"));
    assert_eq!(repo.cache.stats().function("repo:Repository::user").hits, 1);
}
