//! Entries no one else can forge (guarantee 10, "with a signing key, entries
//! written by anyone else are never served") and no one else can read:
//!
//! - with `CACHE_SIGNING_KEY`, an entry written without the key, with another
//!   key, tampered with, or copied from another key — another user's — is a miss
//!   counted in `unverified`: recomputed, overwritten, never served, whichever
//!   path reads it (the first read, the lease's stored bytes, the waiters of a
//!   stampede in this process and in another);
//! - with `CACHE_ENCRYPTION_KEY`, the bytes in Redis show nothing of the value,
//!   and a sealed entry opens only under its own key;
//! - during a rotation entries of the previous key are served and new ones are
//!   written with the current key;
//! - keys that are short or not hex are typed errors naming the setting, and no
//!   key ever shows in an error or in `Debug`.
//!
//! Forgeries are written the way anyone with access to the Redis could: a cache
//! without the key (or with another) on the same server, or plain `SET`s through
//! the fixture's own connection. Those parts run on Redis and the cluster; the
//! memory backend checks that a cache with keys behaves as one without.

mod support;

use std::sync::Arc;
use std::time::Duration;

use aside::session::SessionStore;
use aside::{Cache, Error, Plain, Policy, Settings};
use futures_util::future::join_all;
use support::{report, Fixture, Report, Runs};

const SIGNING: &str = "5151515151515151515151515151515151515151515151515151515151515151";
const SIGNING_NEXT: &str = "5252525252525252525252525252525252525252525252525252525252525252";
const SEALING: &str = "e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1";
const SEALING_NEXT: &str = "e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2";

on_backends!(
    [memory, redis, cluster]
    caches_with_keys_hit_and_miss_as_without,
);
on_backends!(
    [redis, cluster]
    entries_written_without_the_key_are_recomputed_never_served,
    an_entry_copied_under_another_users_key_is_refused,
    tampered_entries_are_refused,
    rotation_serves_the_previous_keys_entries_and_writes_with_the_current_key,
    sealed_values_do_not_show_in_redis,
);
on_backends!(
    [redis]
    a_stampede_over_a_forged_entry_computes_once_and_serves_no_forgery,
    a_forged_session_is_not_loaded,
);

async fn signed(fx: &Fixture, key: &str) -> Cache {
    fx.builder().signing_key(key).build().await.expect("a signing cache")
}

async fn sealed(fx: &Fixture, key: &str) -> Cache {
    fx.builder().encryption_key(key).build().await.expect("a sealing cache")
}

/// A user's profile through `cache`, computed as `computed` when missing.
async fn profile(cache: &Cache, runs: &Runs, user: &str, computed: &str) -> String {
    let policy = Policy::new(Duration::from_secs(60)).function("profile");
    let Plain(profile) = cache
        .get_or_compute(format!("profile:{user}"), &policy, || async {
            runs.tick();
            Plain(computed.to_owned())
        })
        .await;
    profile
}

async fn caches_with_keys_hit_and_miss_as_without(fx: Fixture) {
    let caches = [
        signed(&fx, SIGNING).await,
        sealed(&fx, SEALING).await,
        fx.builder()
            .signing_key(SIGNING)
            .encryption_key(SEALING)
            .namespace("both")
            .build()
            .await
            .unwrap(),
    ];
    for (i, cache) in caches.iter().enumerate() {
        let user = format!("user-{i}");
        let runs = Runs::default();
        for _ in 0..3 {
            assert_eq!(profile(cache, &runs, &user, "Ada").await, "Ada");
        }
        assert_eq!(runs.get(), 1, "cache {i}: computed once, then hits");
        let by_hand = format!("report:{i}");
        cache
            .set_json(by_hand.as_str(), &report(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            cache.get_json::<Report>(by_hand.as_str()).await.unwrap(),
            Some(report())
        );
        let stats = cache.stats().function("profile");
        assert_eq!((stats.hits, stats.misses, stats.unverified), (2, 1, 0), "cache {i}");
        assert_eq!(
            (cache.stats().total.unverified, cache.stats().total.decode_errors),
            (0, 0)
        );
    }
}

async fn entries_written_without_the_key_are_recomputed_never_served(fx: Fixture) {
    let plain = fx.cache().await;
    let other_key = signed(&fx, SIGNING_NEXT).await;
    let cache = signed(&fx, SIGNING).await;
    let (forgers, runs) = (Runs::default(), Runs::default());
    // One forgery through the cached-function path, one by hand, one signed with another key.
    assert_eq!(
        profile(&plain, &forgers, "ada", "forged by a cache without the key").await,
        "forged by a cache without the key"
    );
    plain
        .set_json("profile:bob", &"forged by hand", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        profile(&other_key, &forgers, "cy", "forged with another key").await,
        "forged with another key"
    );

    for (n, user) in ["ada", "bob", "cy"].into_iter().enumerate() {
        let genuine = format!("{user}'s own profile");
        assert_eq!(profile(&cache, &runs, user, &genuine).await, genuine);
        assert_eq!(runs.get(), n + 1, "{user}: recomputed");
        // Overwritten with a signed entry: the next call is a hit.
        assert_eq!(profile(&cache, &runs, user, "not computed again").await, genuine);
        assert_eq!(runs.get(), n + 1, "{user}: then a hit");
        let stored = fx
            .stored_bytes(&cache.full_key(format!("profile:{user}")).unwrap())
            .unwrap();
        assert_eq!(stored[..2], [0xA5, 0x81], "{user}: stored signed");
    }
    let stats = cache.stats().function("profile");
    assert_eq!(
        (stats.unverified, stats.misses, stats.hits, stats.computations),
        (3, 3, 3, 3)
    );
    assert_eq!(cache.stats().total.decode_errors, 0, "refused, not misread");
    // `get_json` refuses a forgery too.
    plain
        .set_json("total", &1_000_000, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get_json::<u64>("total").await.unwrap(), None);
    assert_eq!(cache.stats().total.unverified, 4);
}

async fn an_entry_copied_under_another_users_key_is_refused(fx: Fixture) {
    for cache in [signed(&fx, SIGNING).await, sealed(&fx, SEALING).await] {
        let runs = Runs::default();
        assert_eq!(profile(&cache, &runs, "alice", "alice: admin").await, "alice: admin");
        // Mallory copies Alice's genuine entry over their own, byte for byte
        // (in a cluster, across hash slots).
        let alice = fx.stored_bytes(&cache.full_key("profile:alice").unwrap()).unwrap();
        let mallory_key = cache.full_key("profile:mallory").unwrap();
        fx.put_bytes(&mallory_key, &alice);
        assert_eq!(
            profile(&cache, &runs, "mallory", "mallory: guest").await,
            "mallory: guest"
        );
        assert_eq!(runs.get(), 2, "mallory's profile was computed");
        assert_eq!(cache.stats().total.unverified, 1);
        // Alice's own entry still serves Alice.
        assert_eq!(profile(&cache, &runs, "alice", "recomputed").await, "alice: admin");
        assert_eq!(runs.get(), 2);
        cache.invalidate_pattern("profile:*").await.unwrap();
    }
}

async fn tampered_entries_are_refused(fx: Fixture) {
    for cache in [signed(&fx, SIGNING).await, sealed(&fx, SEALING).await] {
        let runs = Runs::default();
        assert_eq!(profile(&cache, &runs, "eve", "eve: guest").await, "eve: guest");
        let key = cache.full_key("profile:eve").unwrap();
        let mut bytes = fx.stored_bytes(&key).unwrap();
        match bytes.windows(5).position(|w| w == b"guest") {
            // Signed: the value is in the clear; rewrite it in place.
            Some(at) => bytes[at..at + 5].copy_from_slice(b"admin"),
            // Sealed: flip one bit of the ciphertext.
            None => bytes[30] ^= 1,
        }
        fx.put_bytes(&key, &bytes);
        assert_eq!(profile(&cache, &runs, "eve", "eve: guest").await, "eve: guest");
        assert_eq!(runs.get(), 2, "recomputed");
        let stats = cache.stats().total;
        assert_eq!((stats.unverified, stats.decode_errors), (1, 0));
        cache.invalidate_key("profile:eve").await.unwrap();
    }
}

async fn a_stampede_over_a_forged_entry_computes_once_and_serves_no_forgery(fx: Fixture) {
    // Two caches with the key on one Redis: two processes, each with many callers.
    let processes = [signed(&fx, SIGNING).await, signed(&fx, SIGNING).await];
    let forged = fx.cache().await;
    forged
        .set_json("hot", &"forged", Duration::from_secs(60))
        .await
        .unwrap();
    let runs = Arc::new(Runs::default());
    let policy = Policy::new(Duration::from_secs(60));
    let calls = processes.iter().flat_map(|cache| {
        (0..20).map(|_| {
            let (cache, runs, policy) = (cache.clone(), runs.clone(), policy.clone());
            async move {
                let Plain(value) = cache
                    .get_or_compute("hot", &policy, || async {
                        runs.tick();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Plain("genuine".to_owned())
                    })
                    .await;
                value
            }
        })
    });
    let values = join_all(calls).await;
    assert!(values.iter().all(|v| v == "genuine"), "{values:?}");
    assert_eq!(runs.get(), 1, "one computation for 40 callers");
}

async fn rotation_serves_the_previous_keys_entries_and_writes_with_the_current_key(fx: Fixture) {
    let old = [signed(&fx, SIGNING).await, sealed(&fx, SEALING).await];
    let rotated = [
        fx.builder()
            .signing_key(SIGNING_NEXT)
            .signing_key_previous(SIGNING)
            .build()
            .await
            .unwrap(),
        fx.builder()
            .encryption_key(SEALING_NEXT)
            .encryption_key_previous(SEALING)
            .build()
            .await
            .unwrap(),
    ];
    let next_only = [signed(&fx, SIGNING_NEXT).await, sealed(&fx, SEALING_NEXT).await];
    for (i, ((old, rotated), next_only)) in old.iter().zip(&rotated).zip(&next_only).enumerate() {
        let runs = Runs::default();
        let (before, after) = (format!("before-{i}"), format!("after-{i}"));
        profile(old, &runs, &before, "written under the old key").await;
        // Served under the previous key: no computation.
        assert_eq!(
            profile(rotated, &runs, &before, "recomputed").await,
            "written under the old key"
        );
        assert_eq!(runs.get(), 1);
        // New entries use the current key: a cache with only the new key reads
        // them, one with only the old key refuses them.
        profile(rotated, &runs, &after, "written under the new key").await;
        assert_eq!(runs.get(), 2);
        assert_eq!(
            profile(next_only, &runs, &after, "recomputed").await,
            "written under the new key"
        );
        assert_eq!(runs.get(), 2);
        assert_eq!(profile(old, &runs, &after, "old key refuses").await, "old key refuses");
        assert_eq!(runs.get(), 3);
        assert_eq!(old.stats().total.unverified, 1);
        assert_eq!(rotated.stats().total.unverified + next_only.stats().total.unverified, 0);
    }
}

async fn sealed_values_do_not_show_in_redis(fx: Fixture) {
    let cache = sealed(&fx, SEALING).await;
    let plain = fx.cache().await;
    let secret = "IBAN DE89 3704 0044 0532 0130 00";
    let runs = Runs::default();
    assert_eq!(profile(&cache, &runs, "ada", secret).await, secret);
    cache
        .set_json("by-hand", &secret, Duration::from_secs(60))
        .await
        .unwrap();
    for key in ["profile:ada", "by-hand"] {
        let stored = fx.stored_bytes(&cache.full_key(key).unwrap()).unwrap();
        assert!(!stored.windows(4).any(|w| w == b"IBAN"), "{key}: {stored:?}");
        assert!(!stored.windows(4).any(|w| w == b"0532"), "{key}");
        assert_eq!(stored[..2], [0xA5, 0x82], "{key}: stored sealed");
    }
    // Read back by the cache with the key, and by no one else.
    assert_eq!(profile(&cache, &runs, "ada", "recomputed").await, secret);
    assert_eq!(
        cache.get_json::<String>("by-hand").await.unwrap().as_deref(),
        Some(secret)
    );
    assert_eq!(plain.get_json::<String>("by-hand").await.unwrap(), None);
    // A nonce per entry: the same value seals differently each time.
    cache.set_json("again", &secret, Duration::from_secs(60)).await.unwrap();
    assert_ne!(
        fx.stored_bytes(&cache.full_key("again").unwrap()).unwrap()[2..26],
        fx.stored_bytes(&cache.full_key("by-hand").unwrap()).unwrap()[2..26]
    );
}

async fn a_forged_session_is_not_loaded(fx: Fixture) {
    use tower_sessions::session::{Id, Record};
    use tower_sessions::SessionStore as _;

    let store = SessionStore::new(signed(&fx, SIGNING).await);
    let mut record = Record {
        id: Id::default(),
        data: [("user_id".to_owned(), serde_json::json!(7))].into_iter().collect(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    store.create(&mut record).await.unwrap();
    assert_eq!(store.load(&record.id).await.unwrap().as_ref(), Some(&record));
    // Someone with access to Redis writes an admin session under a fresh id.
    let forger = SessionStore::new(fx.cache().await);
    let mut forged = Record {
        id: Id::default(),
        data: [("user_id".to_owned(), serde_json::json!("admin"))]
            .into_iter()
            .collect(),
        ..record.clone()
    };
    forger.create(&mut forged).await.unwrap();
    assert_eq!(store.load(&forged.id).await.unwrap(), None);
    assert_eq!(store.cache().stats().total.unverified, 1);
}

#[test]
fn bad_keys_are_typed_errors_that_never_show_the_key() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        Settings::from_lookup(move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
    };
    let short = "deadbeefdeadbeef";
    let not_hex = "correct horse battery staple, correct horse battery staple, yes!";
    let cases: [(Result<Settings, Error>, &str, &str); 6] = [
        (
            env(&[("CACHE_SIGNING_KEY", "deadbeefdeadbeef")]),
            "CACHE_SIGNING_KEY",
            short,
        ),
        (
            env(&[(
                "CACHE_SIGNING_KEY",
                "correct horse battery staple, correct horse battery staple, yes!",
            )]),
            "CACHE_SIGNING_KEY",
            not_hex,
        ),
        (
            env(&[("CACHE_ENCRYPTION_KEY", "deadbeefdeadbeef")]),
            "CACHE_ENCRYPTION_KEY",
            short,
        ),
        (
            env(&[("CACHE_SIGNING_KEY_PREVIOUS", SIGNING)]),
            "CACHE_SIGNING_KEY_PREVIOUS",
            SIGNING,
        ),
        (Cache::builder().signing_key(short).settings(), "signing_key", short),
        (
            Cache::builder().encryption_key(SIGNING).signing_key(SIGNING).settings(),
            "encryption_key",
            SIGNING,
        ),
    ];
    for (result, var, key) in cases {
        let err = result.expect_err(var);
        assert!(matches!(&err, Error::Config { var: v, .. } if *v == var), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(key), "{shown}");
    }
    let builder = Cache::builder().signing_key(SIGNING).encryption_key(SEALING);
    let shown = format!("{builder:?}");
    assert!(!shown.contains("5151") && !shown.contains("e1e1"), "{shown}");
    let cache = Cache::lazy(builder.settings().unwrap());
    let shown = format!("{cache:?}");
    assert!(!shown.contains("5151") && !shown.contains("e1e1"), "{shown}");
    assert!(cache.settings().signs_entries() && cache.settings().encrypts_entries());
}
