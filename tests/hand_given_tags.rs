//! Guarantee 4 and 10 for tags and key literals given by hand: a `{` or `}` would
//! put a tag set and its detached copy, or an entry and its lease, in different
//! cluster slots (CROSSSLOT), so they are refused with `Error::Key` — on one node
//! and in memory exactly as on a cluster. `aside::tag!` builds tags from values
//! escaped as the attribute's templates escape them.

use std::sync::atomic::{AtomicUsize, Ordering};

use aside::key::Piece;
use aside::{cached, Cache, Error, Key, Plain, Policy};
use support::Fixture;

mod support;

on_backends!(
    [memory, redis, cluster]
    braced_tags_are_refused_alike,
    braced_template_literals_are_refused_alike,
    the_tag_macro_names_the_attributes_tags,
    the_tag_macro_tags_hand_made_entries,
);

/// Calls `get_or_compute` twice under `policy`; how many times it computed.
async fn runs_of_two_calls(cache: &Cache, key: impl Into<Key> + Clone, policy: &Policy) -> usize {
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let Plain(value) = cache
            .get_or_compute(key.clone(), policy, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Plain(7)
            })
            .await;
        assert_eq!(value, 7, "the caller always gets its value");
    }
    runs.into_inner()
}

async fn braced_tags_are_refused_alike(fx: Fixture) {
    let cache = fx.cache().await;
    for tag in ["region:{eu}", "{orders}", "orders}", "{"] {
        let policy = Policy::default().tags(["orders", tag]);
        assert_eq!(
            runs_of_two_calls(&cache, "tagged", &policy).await,
            2,
            "{tag:?}: computed without the cache"
        );
        assert!(!cache.exists("tagged").await.unwrap(), "{tag:?}: nothing stored");
        let refused = cache.invalidate_tag(tag).await;
        assert!(matches!(refused, Err(Error::Key(_))), "{tag:?}: {refused:?}");
    }
    // A templated tag whose literal has a brace: refused the same way.
    let policy = Policy::default().tag([Piece::Lit("{region}:"), Piece::value("eu")]);
    assert_eq!(runs_of_two_calls(&cache, "tagged", &policy).await, 2);
    // Plain tags still work, and nothing of the refused ones was left behind.
    let policy = Policy::default().tags(["orders"]);
    assert_eq!(runs_of_two_calls(&cache, "tagged", &policy).await, 1);
    assert_eq!(cache.invalidate_tag("orders").await.unwrap(), 1);
    if !fx.is_memory() {
        assert_eq!(fx.all_keys(), Vec::<String>::new());
    }
}

async fn braced_template_literals_are_refused_alike(fx: Fixture) {
    let cache = fx.cache().await;
    for lit in ["{", "}", "{slot}"] {
        let key = Key::template("computed", "report", 1, [Piece::Lit(lit), Piece::value(&11)]);
        let refused = cache.full_key(&key);
        assert!(matches!(refused, Err(Error::Key(_))), "{lit:?}: {refused:?}");
        assert_eq!(runs_of_two_calls(&cache, key.clone(), &Policy::default()).await, 2);
        assert!(matches!(cache.invalidate_key(&key).await, Err(Error::Key(_))));
        // A value is escaped, never refused: `{slot}` as a value is `%7Bslot%7D`.
        let escaped = Key::template("computed", "report", 1, [Piece::value(lit), Piece::Lit(":x")]);
        assert_eq!(runs_of_two_calls(&cache, escaped, &Policy::default()).await, 1);
    }
    if !fx.is_memory() {
        assert_eq!(fx.all_keys().len(), 3, "{:?}", fx.all_keys());
    }
}

#[cached(skip(cache, runs), cache = cache, tags = ["region:{region}", "orders"])]
async fn sales(cache: &Cache, runs: &AtomicUsize, region: &str) -> usize {
    runs.fetch_add(1, Ordering::SeqCst)
}

async fn the_tag_macro_names_the_attributes_tags(fx: Fixture) {
    let cache = fx.cache().await;
    let runs = AtomicUsize::new(0);
    let regions = ["eu", "{eu}", "eu:1", "eu west", "eu*", "é"];
    for region in regions {
        sales(&cache, &runs, region).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), regions.len());
    for (i, region) in regions.into_iter().enumerate() {
        let tag = aside::tag!("region:{}", region).unwrap();
        assert_eq!(cache.invalidate_tag(&tag).await.unwrap(), 1, "{region:?} as {tag:?}");
        // Its own entry only: asked again, it computes; the others still hit.
        sales(&cache, &runs, region).await;
        assert_eq!(runs.load(Ordering::SeqCst), regions.len() + i + 1, "{region:?}");
    }
    assert_eq!(aside::tag!("region:{}", "{eu} west").unwrap(), "region:%7Beu%7D%20west");
    assert_eq!(cache.invalidate_tag("orders").await.unwrap(), regions.len() as u64);
}

async fn the_tag_macro_tags_hand_made_entries(fx: Fixture) {
    let cache = fx.cache().await;
    let user = "{42}";
    let month = 11;
    let policy = Policy::default().tags([aside::tag!("user:{}:month:{}", user, month).unwrap()]);
    assert_eq!(runs_of_two_calls(&cache, "report", &policy).await, 1, "stored and hit");
    let tag = aside::tag!("user:{}:month:{}", user, month).unwrap();
    assert_eq!(tag, "user:%7B42%7D:month:11");
    assert_eq!(cache.invalidate_tag(&tag).await.unwrap(), 1);
    assert!(!cache.exists("report").await.unwrap());
    // Values render exactly as in `Piece::value`: floats, options, none.
    let tag = aside::tag!("t:{}:{}:{}", f64::NAN, Some(1.5), Option::<u8>::None).unwrap();
    assert_eq!(tag, "t:~nan:1.5:~");
}
