//! Guarantee 3, versions: another namespace, another `key_version`
//! (`CACHE_KEY_VERSION`) or another function `version` puts entries under other
//! keys, so old entries are unreachable — not read, not decoded as the new type —
//! and are left in the store to expire on their own.
//!
//! Every behaviour runs on the memory backend and on a `redis-server` started for
//! the test; the parts that read the keys back from the server (`SCAN`) run on
//! Redis only.

use std::time::Duration;

use aside::{cached, Cache, Key, Plain, Policy};
use support::{Fixture, Runs};

mod support;

on_backends!(
    [memory, redis]
    namespaces_are_isolated,
    key_version_isolates_function_entries,
    a_version_bump_makes_the_old_entry_unreachable,
    a_version_bump_writes_a_new_key_and_leaves_the_old_to_expire,
);

async fn namespaces_are_isolated(fx: Fixture) {
    let shop = fx.builder().namespace("shop").build().await.unwrap();
    let blog = fx.builder().namespace("blog").build().await.unwrap();
    shop.set_json("home", &"shop page", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(blog.get_json::<String>("home").await.unwrap(), None);
    assert!(!blog.delete("home").await.unwrap());
    assert_eq!(
        shop.get_json::<String>("home").await.unwrap().as_deref(),
        Some("shop page")
    );
    if !fx.is_memory() {
        assert_eq!(fx.all_keys(), ["shop:home"]);
    }
}

async fn key_version_isolates_function_entries(fx: Fixture) {
    let v1 = fx.cache().await;
    let v2 = fx.builder().key_version(2).build().await.unwrap();
    let key = Key::digest("computed", "revenue", 1, &("eu", 11));
    let policy = Policy::new(Duration::from_secs(60));
    let Plain(old) = v1
        .get_or_compute(&key, &policy, || async { Plain("old shape".to_owned()) })
        .await;
    let Plain(new) = v2
        .get_or_compute(&key, &policy, || async { Plain("new shape".to_owned()) })
        .await;
    assert_eq!((old.as_str(), new.as_str()), ("old shape", "new shape"));
    let (k1, k2) = (v1.full_key(&key).unwrap(), v2.full_key(&key).unwrap());
    assert!(k1.contains(":v1.1:") && k2.contains(":v2.1:"), "{k1} {k2}");
    // The old entry is untouched (it expires on its own), just unreachable from v2.
    assert!(fx.ttl_of(&v1, &k1).await.is_some());
    // The function's own version isolates the same way.
    let bumped = Key::digest("computed", "revenue", 2, &("eu", 11));
    let Plain(fresh) = v1
        .get_or_compute(&bumped, &policy, || async { Plain("bumped".to_owned()) })
        .await;
    assert_eq!(fresh, "bumped");
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

async fn a_version_bump_makes_the_old_entry_unreachable(fx: Fixture) {
    let cache = fx.cache_in("versions").await;
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

async fn a_version_bump_writes_a_new_key_and_leaves_the_old_to_expire(fx: Fixture) {
    let cache = fx.cache_in("versions").await;
    let runs = Runs::default();
    profile_v1(&cache, &runs, 1).await;
    assert_eq!(profile_v2(&cache, &runs, 1).await, (1, "v2".to_owned()));
    assert_eq!(runs.get(), 2, "the v1 entry is not reachable from v2");
    let old = profile_v1_key(&cache, 1);
    let new = profile_v2_key(&cache, 1);
    assert!(old.starts_with("versions:computed:profile:v1.1:") && new.starts_with("versions:computed:profile:v1.2:"));
    if !fx.is_memory() {
        assert_eq!(fx.keys_matching("versions:*"), [old.clone(), new]);
    }
    assert!(fx.pttl_of(&cache, &old).await > 0, "the old entry expires on its own");
}
