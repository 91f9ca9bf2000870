//! The key layout (README "Key layout"):
//! `{namespace}:{prefix}:{name}:v{key_version}.{version}:{args}`, pinned by golden
//! keys; `{args}` is the digest of the key arguments in order, or with
//! `key = "..."` their escaped rendering, so a value cannot forge a separator
//! (guarantee 10); skipped arguments are not in the key; methods are named after
//! their type; and the `_key` companion is the key the entry is stored at.
//!
//! Every behaviour runs on the memory backend and on a `redis-server` started for
//! the test; the parts that read the keys back from the server (`SCAN`) run on
//! Redis only. (Keys of generic functions: `tests/generic_keys.rs`; forged values:
//! `tests/forged_keys.rs`, `tests/properties.rs`; versions: `tests/versions.rs`.)

// `seven` takes seven key arguments on purpose (and its companions with it).
#![allow(clippy::too_many_arguments)]

use aside::{cached, Cache, Key, Plain, Policy};
use support::{Fixture, Runs};

mod support;

on_backends!(
    [memory, redis]
    golden_key_layout,
    the_key_companion_follows_the_golden_layout,
    the_key_companion_is_the_key_in_redis_in_the_golden_layout,
    digest_keys_are_the_digest_of_the_key_arguments_in_order,
    key_templates_render_escaped_values,
    key_templates_are_readable_and_escaped_in_redis,
    skipped_arguments_are_not_in_the_key,
    methods_are_named_after_their_type,
    methods_write_under_type_and_method_name,
);

async fn golden_key_layout(fx: Fixture) {
    let cache = fx.cache().await;
    let key = Key::digest("computed", "revenue_by_region", 1, &("eu", 11));
    let golden = "aside:computed:revenue_by_region:v1.1:6a8dd4d7e92c904ce2661629e20e6d38";
    assert_eq!(cache.full_key(&key).unwrap(), golden);
    let Plain(_) = cache
        .get_or_compute(&key, &Policy::default(), || async { Plain(1) })
        .await;
    if !fx.is_memory() {
        assert_eq!(fx.all_keys(), [golden]);
    }
    assert!(fx.ttl_of(&cache, golden).await.is_some());
}

#[cached(ttl = 60, skip(cache, runs), cache = cache)]
async fn square(cache: &Cache, runs: &Runs, n: u64) -> u64 {
    runs.tick();
    n * n
}

async fn the_key_companion_follows_the_golden_layout(fx: Fixture) {
    let cache = fx.cache_in("golden").await;
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

#[cached(prefix = "reports", ttl = 120, skip(cache, runs), cache = cache)]
async fn revenue(cache: &Cache, runs: &Runs, region: &str, month: u32) -> Result<u64, std::io::Error> {
    runs.tick();
    Ok(u64::from(month) * region.len() as u64)
}

async fn the_key_companion_is_the_key_in_redis_in_the_golden_layout(fx: Fixture) {
    let cache = fx.cache_in("golden").await;
    let runs = Runs::default();
    revenue(&cache, &runs, "eu", 11).await.unwrap();
    revenue(&cache, &runs, "us", 11).await.unwrap();

    let key = revenue_key(&cache, "eu", 11);
    if !fx.is_memory() {
        let stored = fx.keys_matching("golden:reports:revenue:*");
        assert_eq!(stored.len(), 2, "{stored:?}");
        assert!(stored.contains(&key), "{key} not in {stored:?}");
    }
    // {namespace}:{prefix}:{name}:v{key_version}.{version}:{32 hex digits}
    let digest = key.strip_prefix("golden:reports:revenue:v1.1:").expect(&key);
    assert!(
        digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{key}"
    );
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

async fn digest_keys_are_the_digest_of_the_key_arguments_in_order(fx: Fixture) {
    let cache = fx.cache_in("arity").await;
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

#[cached(prefix = "reports", key = "{region}:{month}", skip(cache, runs), cache = cache)]
async fn report(cache: &Cache, runs: &Runs, region: &str, month: u32) -> String {
    runs.tick();
    format!("{region}/{month}")
}

async fn key_templates_render_escaped_values(fx: Fixture) {
    let cache = fx.cache_in("readable").await;
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

#[cached(prefix = "reports", key = "{region}:{month}", ttl = 60, skip(cache), cache = cache)]
async fn readable(cache: &Cache, region: &str, month: u32) -> String {
    format!("{region}/{month}")
}

async fn key_templates_are_readable_and_escaped_in_redis(fx: Fixture) {
    let cache = fx.cache_in("readable").await;
    assert_eq!(readable(&cache, "eu:west 1", 11).await, "eu:west 1/11");
    if !fx.is_memory() {
        assert_eq!(
            fx.keys_matching("readable:*"),
            ["readable:reports:readable:v1.1:eu%3Awest%201:11"]
        );
    }
    assert_eq!(
        readable_key(&cache, "eu:west 1", 11),
        "readable:reports:readable:v1.1:eu%3Awest%201:11"
    );
}

#[cached(skip(cache, runs, pool), cache = cache)]
async fn user_name(cache: &Cache, runs: &Runs, pool: &str, id: u32) -> String {
    runs.tick();
    format!("{id}@{pool}")
}

async fn skipped_arguments_are_not_in_the_key(fx: Fixture) {
    let cache = fx.cache_in("skip").await;
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

/// A method on the default prefix, its key in `self.cache`.
mod plain {
    use aside::{cached, Cache};

    use crate::support::Runs;

    pub struct Repository {
        pub cache: Cache,
        pub runs: Runs,
    }

    impl Repository {
        #[cached(skip(self), cache = self.cache)]
        pub async fn user(&self, id: u32) -> Result<String, std::io::Error> {
            self.runs.tick();
            Ok(format!("user-{id}"))
        }
    }
}

async fn methods_are_named_after_their_type(fx: Fixture) {
    let repo = plain::Repository {
        cache: fx.cache_in("methods").await,
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

/// A method with a prefix and a tag, its key in `self.cache`.
mod tagged {
    use aside::{cached, Cache};

    use crate::support::Runs;

    pub struct Repository {
        pub cache: Cache,
        pub runs: Runs,
    }

    impl Repository {
        #[cached(prefix = "repo", skip(self), cache = self.cache, tags = ["users"])]
        pub async fn user(&self, id: u32) -> Option<String> {
            self.runs.tick();
            Some(format!("user-{id}"))
        }
    }
}

async fn methods_write_under_type_and_method_name(fx: Fixture) {
    let repo = tagged::Repository {
        cache: fx.cache_in("methods").await,
        runs: Runs::default(),
    };
    repo.user(1).await;
    repo.user(1).await;
    assert_eq!(repo.runs.get(), 1);
    let key = repo.user_key(1);
    if !fx.is_memory() {
        let stored = fx.keys_matching("methods:repo:*");
        assert_eq!(stored, [key.as_str()]);
    }
    assert!(key.starts_with("methods:repo:Repository::user:v1.1:"));
    assert_eq!(repo.cache.stats().function("repo:Repository::user").hits, 1);
}
