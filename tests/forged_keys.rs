//! Guarantee 10, keys: argument values cannot forge or collide keys and tags, a
//! tag never matches a longer one, a pattern of one prefix never reaches
//! another prefix's keys, and floats JSON cannot write (`NaN`, `inf`, `-inf`)
//! are arguments of their own, apart from `None`.

use std::collections::HashSet;
use std::time::Duration;

use aside::key::Piece;
use aside::{cached, Cache, Key, Plain, Policy};
use support::Fixture;

mod support;

on_backends!(
    [memory, redis, cluster]
    hostile_values_make_distinct_entries,
    hostile_tags_stay_distinct,
    patterns_stay_within_their_prefix,
    non_finite_floats_are_arguments_of_their_own,
);

/// Values with every character that means something to Redis keys or globs.
const HOSTILE: &[&str] = &[
    "eu", "eu:1", "eu:*", "*", "eu?", "[eu]", "{eu}", "eu west", "eu\nwest", "eu\twest", "é", "日本", "~", "%3A",
    "eu%3A1", "", " ", ":", "a:b:c", "\\", "eu-1", "eu_1", "eu.1",
];

fn readable(prefix: &'static str, region: &str, month: u32) -> Key {
    Key::template(
        prefix,
        "revenue",
        1,
        [Piece::value(region), Piece::Lit(":"), Piece::value(&month)],
    )
}

async fn hostile_values_make_distinct_entries(fx: Fixture) {
    let cache = fx.cache().await;
    let mut full_keys = HashSet::new();
    for (i, region) in HOSTILE.iter().enumerate() {
        for key in [
            readable("computed", region, 11),
            Key::digest("computed", "digested", 1, &(region, 11)),
        ] {
            let full = cache.full_key(&key).unwrap();
            assert!(!full.contains(char::is_whitespace), "{full:?}");
            let args = full.rsplit_once(":v1.1:").unwrap().1;
            assert!(!args.contains(['*', '?', '[', ']', '{', '}']), "{full:?}");
            assert!(full_keys.insert(full.clone()), "{region:?} collides: {full}");
            let Plain(stored) = cache
                .get_or_compute(&key, &Policy::default(), || async { Plain(i) })
                .await;
            assert_eq!(stored, i);
        }
    }
    // Each value reads back its own entry.
    for (i, region) in HOSTILE.iter().enumerate() {
        let Plain(got) = cache
            .get_or_compute(readable("computed", region, 11), &Policy::default(), || async {
                Plain(usize::MAX)
            })
            .await;
        assert_eq!(got, i, "{region:?}");
    }
    if !fx.is_memory() {
        assert_eq!(fx.all_keys().len(), HOSTILE.len() * 2);
    }
}

async fn hostile_tags_stay_distinct(fx: Fixture) {
    let cache = fx.cache().await;
    for (i, region) in HOSTILE.iter().enumerate() {
        let policy = Policy::default().tag([Piece::Lit("region:"), Piece::value(region)]);
        let Plain(_) = cache
            .get_or_compute(format!("entry:{i}"), &policy, || async { Plain(i) })
            .await;
    }
    // Invalidating the tag of "eu" removes the "eu" entry only — not "eu:1",
    // "eu:*" or "{eu}", whose escaped tags merely start alike.
    assert_eq!(cache.invalidate_tag("region:eu").await.unwrap(), 1);
    assert!(!cache.exists("entry:0").await.unwrap());
    for (i, value) in HOSTILE.iter().enumerate().skip(1) {
        assert!(cache.exists(format!("entry:{i}")).await.unwrap(), "{value:?}");
    }
    // A glob-looking value's tag is its escaped text, never a glob.
    assert_eq!(cache.invalidate_tag("region:*").await.unwrap(), 0);
    assert_eq!(cache.invalidate_tag("region:%2A").await.unwrap(), 1);
}

async fn patterns_stay_within_their_prefix(fx: Fixture) {
    let cache = fx.cache().await;
    for prefix in ["computed", "computed2", "compute"] {
        for region in ["eu", "eu:*"] {
            let Plain(_) = cache
                .get_or_compute(readable(prefix, region, 1), &Policy::default(), || async { Plain(1) })
                .await;
        }
    }
    cache.set_json("computed", &1, Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.invalidate_pattern("computed:*").await.unwrap(), 2);
    assert_eq!(cache.invalidate_pattern("computed:*").await.unwrap(), 0);
    assert!(cache.exists(readable("computed2", "eu", 1)).await.unwrap());
    assert!(cache.exists(readable("compute", "eu:*", 1)).await.unwrap());
    assert!(cache.exists("computed").await.unwrap());
    // A value that looks like a glob matches only itself once escaped.
    assert_eq!(
        cache
            .invalidate_pattern("compute:revenue:v1.1:eu%3A%2A:1")
            .await
            .unwrap(),
        1
    );
    assert!(cache.exists(readable("compute", "eu", 1)).await.unwrap());
}

#[cached(skip(cache), cache = cache)]
async fn describe(cache: &Cache, x: Option<f64>) -> String {
    match x {
        None => "none".to_owned(),
        Some(x) => format!("{x}"),
    }
}

#[cached(skip(cache), cache = cache, key = "{x}")]
async fn describe_readable(cache: &Cache, x: Option<f64>) -> String {
    match x {
        None => "none".to_owned(),
        Some(x) => format!("{x}"),
    }
}

async fn non_finite_floats_are_arguments_of_their_own(fx: Fixture) {
    let cache = fx.cache().await;
    let values = [
        None,
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(f64::NAN),
        Some(0.0),
        Some(-0.0),
    ];
    let expected = ["none", "inf", "-inf", "NaN", "0", "-0"];
    // Each call computes its own value; asked again, each reads its own entry.
    for _ in 0..2 {
        for (x, want) in values.iter().zip(expected) {
            assert_eq!(describe(&cache, *x).await, want, "{x:?}");
            assert_eq!(describe_readable(&cache, *x).await, want, "{x:?}");
        }
    }
    let digest = cache.stats().function("computed:describe");
    let readable = cache.stats().function("computed:describe_readable");
    assert_eq!((digest.computations, digest.hits), (6, 6));
    assert_eq!((readable.computations, readable.hits), (6, 6));
    assert_eq!(
        describe_readable_key(&cache, Some(f64::NEG_INFINITY)),
        "aside:computed:describe_readable:v1.1:~-inf"
    );
    if !fx.is_memory() {
        assert_eq!(fx.all_keys().len(), 12);
    }
}
