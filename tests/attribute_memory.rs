//! `#[cached]` end to end on the in-process memory backend: what a caller of an
//! annotated function observes (values, how often the body runs, keys, companions).
//!
//! Every test builds its own cache and hands it to the functions through
//! `cache = cache` (a skipped argument) or `cache = self.cache`, so tests do not
//! depend on the global cache or on each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use aside::{cached, Cache, Key};
use serde::{Deserialize, Serialize};

async fn memory(namespace: &str) -> Cache {
    Cache::builder()
        .memory()
        .namespace(namespace)
        .build()
        .await
        .expect("memory cache")
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

#[cached(ttl = 60, skip(cache, runs), cache = cache)]
async fn square(cache: &Cache, runs: &Runs, n: u64) -> u64 {
    runs.tick();
    n * n
}

#[tokio::test]
async fn a_hit_runs_no_computation() {
    let cache = memory("hits").await;
    let runs = Runs::default();
    assert_eq!(square(&cache, &runs, 12).await, 144);
    assert_eq!(square(&cache, &runs, 12).await, 144);
    assert_eq!(square(&cache, &runs, 12).await, 144);
    assert_eq!(runs.get(), 1);
    // Other arguments, other entry.
    assert_eq!(square(&cache, &runs, 13).await, 169);
    assert_eq!(runs.get(), 2);
    let stats = cache.stats().function("computed:square");
    assert_eq!((stats.hits, stats.misses, stats.computations), (2, 2, 2));
}

#[derive(Debug, PartialEq)]
struct Failed;

#[cached(skip(cache, runs), cache = cache)]
async fn checked(cache: &Cache, runs: &Runs, n: i64) -> Result<u64, Failed> {
    runs.tick();
    u64::try_from(n).map_err(|_| Failed)
}

#[tokio::test]
async fn result_caches_only_ok() {
    let cache = memory("result").await;
    let runs = Runs::default();
    assert_eq!(checked(&cache, &runs, -1).await, Err(Failed));
    assert_eq!(checked(&cache, &runs, -1).await, Err(Failed));
    assert_eq!(runs.get(), 2, "an Err is not stored");
    assert_eq!(checked(&cache, &runs, 5).await, Ok(5));
    assert_eq!(checked(&cache, &runs, 5).await, Ok(5));
    assert_eq!(runs.get(), 3, "an Ok is stored");
}

#[cached(skip(cache, runs), cache = cache)]
async fn find(cache: &Cache, runs: &Runs, id: u32) -> Option<String> {
    runs.tick();
    (id % 2 == 0).then(|| format!("user-{id}"))
}

#[cached(skip(cache, runs), cache = cache, cache_none = true)]
async fn find_or_none(cache: &Cache, runs: &Runs, id: u32) -> Option<String> {
    runs.tick();
    (id % 2 == 0).then(|| format!("user-{id}"))
}

#[tokio::test]
async fn option_caches_none_only_with_cache_none() {
    let cache = memory("option").await;
    let runs = Runs::default();
    assert_eq!(find(&cache, &runs, 1).await, None);
    assert_eq!(find(&cache, &runs, 1).await, None);
    assert_eq!(runs.get(), 2, "None is not stored by default");
    assert_eq!(find(&cache, &runs, 2).await.as_deref(), Some("user-2"));
    assert_eq!(find(&cache, &runs, 2).await.as_deref(), Some("user-2"));
    assert_eq!(runs.get(), 3, "Some is stored");

    let runs = Runs::default();
    assert_eq!(find_or_none(&cache, &runs, 1).await, None);
    assert_eq!(find_or_none(&cache, &runs, 1).await, None);
    assert_eq!(runs.get(), 1, "None is stored with cache_none");
    assert!(
        find_or_none_invalidate(&cache, 1).await.unwrap(),
        "the stored None is an entry"
    );
}

#[cached(skip(cache, runs, pool), cache = cache)]
async fn user_name(cache: &Cache, runs: &Runs, pool: &str, id: u32) -> String {
    runs.tick();
    format!("{id}@{pool}")
}

#[tokio::test]
async fn skipped_arguments_are_not_in_the_key() {
    let cache = memory("skip").await;
    let runs = Runs::default();
    assert_eq!(user_name(&cache, &runs, "primary", 7).await, "7@primary");
    // Another pool, same key arguments: the first result.
    assert_eq!(user_name(&cache, &runs, "replica", 7).await, "7@primary");
    assert_eq!(runs.get(), 1);
    // The key companions take only the key arguments (and the cache, which `cache = cache` names).
    assert_eq!(
        user_name_key(&cache, 7),
        cache
            .full_key(Key::digest("computed", "user_name", 1, &(7u32,)))
            .unwrap()
    );
}

#[tokio::test]
async fn invalidate_returns_true_then_false_and_the_next_call_computes() {
    let cache = memory("invalidate").await;
    let runs = Runs::default();
    square(&cache, &runs, 3).await;
    assert!(square_invalidate(&cache, 3).await.unwrap());
    assert!(!square_invalidate(&cache, 3).await.unwrap());
    assert!(!square_invalidate(&cache, 4).await.unwrap(), "never stored");
    square(&cache, &runs, 3).await;
    assert_eq!(runs.get(), 2);
}

#[cached(skip(cache, source), cache = cache)]
async fn reading(cache: &Cache, source: &AtomicU64, sensor: &str) -> u64 {
    let _ = sensor;
    source.load(Ordering::SeqCst)
}

#[tokio::test]
async fn refresh_computes_now_and_overwrites_the_entry() {
    let cache = memory("refresh").await;
    let source = AtomicU64::new(1);
    assert_eq!(reading(&cache, &source, "t1").await, 1);
    source.store(2, Ordering::SeqCst);
    assert_eq!(reading(&cache, &source, "t1").await, 1, "still the stored value");
    assert_eq!(reading_refresh(&cache, &source, "t1").await, 2, "refresh runs the body");
    source.store(3, Ordering::SeqCst);
    assert_eq!(
        reading(&cache, &source, "t1").await,
        2,
        "the refreshed value was stored"
    );
    assert_eq!(cache.stats().function("computed:reading").computations, 2);
}

#[tokio::test]
async fn the_key_companion_follows_the_golden_layout() {
    let cache = memory("golden").await;
    let runs = Runs::default();
    let key = square_key(&cache, 12);
    let digest = key.strip_prefix("golden:computed:square:v1.1:").expect(&key);
    assert_eq!(digest.len(), 32, "{key}");
    assert!(
        digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{key}"
    );
    assert_eq!(
        key,
        cache.full_key(Key::digest("computed", "square", 1, &(12u64,))).unwrap()
    );
    // The entry is at that key.
    square(&cache, &runs, 12).await;
    assert_eq!(
        cache
            .get_json::<u64>(Key::digest("computed", "square", 1, &(12u64,)))
            .await
            .unwrap(),
        Some(144)
    );
}

#[cached(prefix = "reports", key = "{region}:{month}", skip(cache, runs), cache = cache)]
async fn report(cache: &Cache, runs: &Runs, region: &str, month: u32) -> String {
    runs.tick();
    format!("{region}/{month}")
}

#[tokio::test]
async fn key_templates_render_escaped_values() {
    let cache = memory("readable").await;
    let runs = Runs::default();
    assert_eq!(
        report_key(&cache, "eu:west 1", 11),
        "readable:reports:report:v1.1:eu%3Awest%201:11"
    );
    // A value cannot forge the separator: these two calls have different keys.
    assert_ne!(report_key(&cache, "a:1", 2), report_key(&cache, "a", 12));
    assert_eq!(report(&cache, &runs, "a:1", 2).await, "a:1/2");
    assert_eq!(report(&cache, &runs, "a", 12).await, "a/12");
    assert_eq!(runs.get(), 2);
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
async fn a_version_bump_makes_the_old_entry_unreachable() {
    let cache = memory("versions").await;
    let runs = Runs::default();
    assert_eq!(profile_v1(&cache, &runs, 1).await, "v1:1");
    // The same name and arguments under version 2: a miss, although the v1 entry
    // exists (and would not even decode as the new type).
    assert_eq!(profile_v2(&cache, &runs, 1).await, (1, "v2".to_owned()));
    assert_eq!(runs.get(), 2);
    assert_eq!(cache.stats().function("computed:profile").decode_errors, 0);
    assert!(profile_v2_key(&cache, 1).starts_with("versions:computed:profile:v1.2:"));
    assert_eq!(
        profile_v1_key(&cache, 1).replace(":v1.1:", ":v1.2:"),
        profile_v2_key(&cache, 1)
    );
}

#[cached(skip(cache), cache = cache)]
async fn describe<T: Serialize + std::fmt::Debug + Sync>(cache: &Cache, value: T) -> String {
    format!("{value:?}")
}

#[tokio::test]
async fn generic_functions_key_on_their_arguments() {
    let cache = memory("generic").await;
    assert_eq!(describe(&cache, 1u8).await, "1");
    assert_eq!(describe(&cache, "one").await, "\"one\"");
    assert_eq!(describe(&cache, vec![1, 2]).await, "[1, 2]");
    assert_eq!(describe(&cache, "one").await, "\"one\"");
    let stats = cache.stats().function("computed:describe");
    assert_eq!((stats.misses, stats.hits), (3, 1));
    // `_key` needs no type parameter of a skipped argument, only the key argument's
    // (inferred from it). The type parameter is part of the key (issue 11): the
    // same JSON of two types is two keys.
    assert_ne!(
        describe_key(&cache, 1u8),
        describe_key(&cache, 1u64),
        "same JSON, other type, other key"
    );
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

#[tokio::test]
async fn tagged_calls_work_and_count_per_function() {
    let cache = memory("tags").await;
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

struct Repository {
    cache: Cache,
    runs: Runs,
}

impl Repository {
    #[cached(skip(self), cache = self.cache)]
    async fn user(&self, id: u32) -> Result<String, std::io::Error> {
        self.runs.tick();
        Ok(format!("user-{id}"))
    }
}

#[tokio::test]
async fn methods_are_named_after_their_type() {
    let repo = Repository {
        cache: memory("methods").await,
        runs: Runs::default(),
    };
    assert_eq!(repo.user(1).await.unwrap(), "user-1");
    assert_eq!(repo.user(1).await.unwrap(), "user-1");
    assert_eq!(repo.runs.get(), 1);
    assert!(repo.user_key(1).starts_with("methods:computed:Repository::user:v1.1:"));
    assert_eq!(repo.cache.stats().function("computed:Repository::user").hits, 1);
    assert!(repo.user_invalidate(1).await.unwrap());
    assert_eq!(repo.user_refresh(1).await.unwrap(), "user-1");
    assert_eq!(repo.runs.get(), 2);
}

#[cached(skip(cache, runs), cache = cache)]
async fn totals(cache: &Cache, runs: &Runs, by_pair: HashMap<(u8, u8), u32>) -> u32 {
    runs.tick();
    by_pair.values().sum()
}

#[tokio::test]
async fn an_argument_that_cannot_be_a_key_computes_every_time() {
    let cache = memory("no-key").await;
    let runs = Runs::default();
    // JSON object keys must be strings: this map has no key, so the call is not cached.
    let map = HashMap::from([((1, 2), 3)]);
    assert_eq!(totals(&cache, &runs, map.clone()).await, 3);
    assert_eq!(totals(&cache, &runs, map.clone()).await, 3);
    assert_eq!(runs.get(), 2);
    assert!(totals_key(&cache, map).starts_with("<no key: "));
}

#[cached(skip(cache), cache = cache)]
async fn six(cache: &Cache, a: u8, b: &str, c: bool, d: Option<u8>, e: [u8; 2], f: char) -> usize {
    usize::from(a) + b.len() + usize::from(c) + usize::from(d.unwrap_or(0)) + e.len() + f.len_utf8()
}

#[cached(skip(cache), cache = cache)]
async fn seven(cache: &Cache, a: u8, b: &str, c: bool, d: Option<u8>, e: [u8; 2], f: char, g: i64) -> usize {
    usize::from(a)
        + b.len()
        + usize::from(c)
        + usize::from(d.unwrap_or(0))
        + e.len()
        + f.len_utf8()
        + g.unsigned_abs() as usize
}

#[tokio::test]
async fn digest_keys_are_the_digest_of_the_key_arguments_in_order() {
    let cache = memory("arity").await;
    let digest = |name: &'static str, args: &dyn erased::Args| cache.full_key(args.key(name)).unwrap();
    assert_eq!(
        six_key(&cache, 1, "b", true, None, [1, 2], 'f'),
        digest("six", &(1u8, "b", true, None::<u8>, [1u8, 2], 'f'))
    );
    assert_eq!(
        seven_key(&cache, 1, "b", true, None, [1, 2], 'f', -7),
        digest("seven", &(1u8, "b", true, None::<u8>, [1u8, 2], 'f', -7i64))
    );
    assert_ne!(
        six_key(&cache, 1, "b", true, None, [1, 2], 'f'),
        six_key(&cache, 1, "b", true, Some(0), [1, 2], 'f')
    );
    assert_eq!(six(&cache, 1, "b", true, None, [1, 2], 'f').await, 6);
    assert_eq!(seven(&cache, 1, "b", true, None, [1, 2], 'f', -7).await, 13);
}

/// `Key::digest` of a tuple, behind a trait object so the test can list tuples of any type.
mod erased {
    use aside::Key;
    use serde::Serialize;

    pub trait Args {
        fn key(&self, name: &'static str) -> Key;
    }

    impl<T: Serialize> Args for T {
        fn key(&self, name: &'static str) -> Key {
            Key::digest("computed", name, 1, self)
        }
    }
}
