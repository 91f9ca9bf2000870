//! Properties over arbitrary input (proptest):
//!
//! - keys and tags: argument values of any Unicode text cannot forge key
//!   structure (`:`, globs, hash-slot braces, white space, non-ASCII) or make
//!   two different calls share a key — for readable `key = "..."` templates,
//!   for digested arguments, and for templated tags;
//! - distinct argument values of many types (integers, strings with separators
//!   and escapes, floats with the non-finite ones and `-0.0`, options, vectors,
//!   tuples, structs, enums) never share a key, on the digest and the template path;
//! - stored bytes: whatever bytes sit under a key in Redis, reading them is a
//!   value or a miss, never an error or a panic, and a cached call returns its
//!   own computation when they do not decode (guarantee 8).

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aside::key::Piece;
use aside::{Cache, Key, Plain, Policy};
use aside_testkit::RedisServer;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::{Deserialize, Serialize};

fn memory_cache() -> Cache {
    Cache::builder().memory().build_lazy().expect("memory cache")
}

/// The argument segment of a function key rendered under the default namespace.
fn args_segment(full_key: &str) -> &str {
    full_key
        .strip_prefix("aside:p:n:v1.1:")
        .unwrap_or_else(|| panic!("unexpected layout: {full_key}"))
}

/// Characters that would let a value forge key structure or be ambiguous.
fn forging_char(c: char) -> bool {
    !c.is_ascii() || c.is_whitespace() || c.is_control() || ":*?[]{}".contains(c)
}

fn template_key(cache: &Cache, value: &str) -> String {
    cache
        .full_key(Key::template("p", "n", 1, [Piece::value(value)]))
        .expect("a template key")
}

fn pair_key(cache: &Cache, a: &str, b: &str) -> String {
    cache
        .full_key(Key::template(
            "p",
            "n",
            1,
            [Piece::value(a), Piece::Lit(":"), Piece::value(b)],
        ))
        .expect("a template key")
}

fn digest_key(cache: &Cache, args: &(String, u32)) -> String {
    cache.full_key(Key::digest("p", "n", 1, args)).expect("a digest key")
}

fn tag(value: &str) -> Vec<String> {
    Policy::default()
        .tag([Piece::Lit("t:"), Piece::value(value)])
        .tag_list()
        .to_vec()
}

/// `cases` cases; a failing input is printed in full, not written to a regressions file.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn rendered_values_never_carry_key_structure(value in any::<String>()) {
        let cache = memory_cache();
        let key = template_key(&cache, &value);
        let args = args_segment(&key);
        prop_assert!(!args.chars().any(forging_char), "{value:?} rendered as {args:?}");
        // `~` is how `null` renders; no string renders as it.
        prop_assert!(!args.contains('~'), "{:?} rendered as {:?}", value, args);
        // The namespace, prefix, name and version segments stay where they were.
        prop_assert_eq!(key.matches(':').count(), 4, "{}", key);
    }

    #[test]
    fn distinct_values_render_distinct_keys(a in any::<String>(), b in any::<String>()) {
        let cache = memory_cache();
        prop_assume!(a != b);
        prop_assert_ne!(template_key(&cache, &a), template_key(&cache, &b));
    }

    #[test]
    fn distinct_pairs_render_distinct_keys(
        a in any::<String>(), b in any::<String>(), c in any::<String>(), d in any::<String>(),
    ) {
        // "a:b" cannot be forged by values containing ':' either.
        let cache = memory_cache();
        prop_assume!((&a, &b) != (&c, &d));
        prop_assert_ne!(pair_key(&cache, &a, &b), pair_key(&cache, &c, &d));
    }

    #[test]
    fn shifted_separators_do_not_collide(a in "[a-z:]{0,6}", b in "[a-z:]{0,6}") {
        // The classic forgery: ("x:y", "z") against ("x", "y:z").
        let cache = memory_cache();
        let joined = format!("{a}:{b}");
        if let Some((left, right)) = joined.split_once(':') {
            if (left, right) != (a.as_str(), b.as_str()) {
                prop_assert_ne!(pair_key(&cache, &a, &b), pair_key(&cache, left, right));
            }
        }
    }

    #[test]
    fn digests_are_deterministic_and_distinct(
        x in (any::<String>(), any::<u32>()),
        y in (any::<String>(), any::<u32>()),
    ) {
        let cache = memory_cache();
        let kx = digest_key(&cache, &x);
        prop_assert_eq!(&kx, &digest_key(&cache, &x.clone()), "the same arguments, the same key");
        prop_assert_eq!(&kx, &digest_key(&memory_cache(), &x), "in another cache too");
        let args = args_segment(&kx);
        prop_assert_eq!(args.len(), 32);
        prop_assert!(args.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", args);
        if x != y {
            prop_assert_ne!(kx, digest_key(&cache, &y));
        }
    }

    #[test]
    fn distinct_tag_values_render_distinct_tags(a in any::<String>(), b in any::<String>()) {
        prop_assume!(a != b);
        let (ta, tb) = (tag(&a), tag(&b));
        prop_assert_eq!(ta.len(), 1);
        prop_assert!(ta[0].starts_with("t:"));
        prop_assert!(!ta[0]["t:".len()..].chars().any(forging_char), "{:?}", ta);
        prop_assert_ne!(ta, tb);
    }
}

/// The digest key and the template key of one argument value.
fn both_keys<T: Serialize>(cache: &Cache, value: &T) -> (String, String) {
    let digest = cache
        .full_key(Key::digest("p", "n", 1, &(value,)))
        .expect("a digest key");
    let template = cache
        .full_key(Key::template("p", "n", 1, [Piece::value(value)]))
        .expect("a template key");
    (digest, template)
}

/// Two values are the same argument when their `Debug` texts are: every NaN is
/// one value (printed `NaN`), `0.0` and `-0.0` are two.
fn assert_distinct_keys<T: Serialize + std::fmt::Debug>(a: &T, b: &T) -> Result<(), TestCaseError> {
    if format!("{a:?}") == format!("{b:?}") {
        return Ok(());
    }
    let cache = memory_cache();
    let (da, ta) = both_keys(&cache, a);
    let (db, tb) = both_keys(&cache, b);
    prop_assert_ne!(da, db, "digest keys of {:?} and {:?}", a, b);
    prop_assert_ne!(ta, tb, "template keys of {:?} and {:?}", a, b);
    Ok(())
}

/// Floats, the ones JSON cannot write included.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
    ]
}

/// Text full of separators, escapes and the characters rendering gives meaning to.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z:%~{}*\\\\\"' .-]{0,6}",
        Just("~".to_owned()),
        Just("null".to_owned()),
        any::<String>()
    ]
}

#[derive(Clone, Debug, Serialize)]
struct Args {
    id: u32,
    ratio: f64,
    name: Option<String>,
    weights: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
enum Shape {
    Point,
    Circle(f64),
    Rect { w: f64, h: Option<f64> },
}

fn args() -> impl Strategy<Value = Args> {
    (any::<u32>(), float(), proptest::option::of(text()), vec(float(), 0..3)).prop_map(|(id, ratio, name, weights)| {
        Args {
            id,
            ratio,
            name,
            weights,
        }
    })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Point),
        float().prop_map(Shape::Circle),
        (float(), proptest::option::of(float())).prop_map(|(w, h)| Shape::Rect { w, h }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn distinct_floats_get_distinct_keys(a in float(), b in float()) {
        assert_distinct_keys(&a, &b)?;
        assert_distinct_keys(&(a as f32), &(b as f32))?;
    }

    #[test]
    fn distinct_optional_floats_get_distinct_keys(
        a in proptest::option::of(float()),
        b in proptest::option::of(float()),
    ) {
        assert_distinct_keys(&a, &b)?;
    }

    #[test]
    fn distinct_integers_get_distinct_keys(a in any::<i64>(), b in any::<i64>(), c in any::<u8>(), d in any::<u8>()) {
        assert_distinct_keys(&a, &b)?;
        assert_distinct_keys(&c, &d)?;
        assert_distinct_keys(&Some(a), &Some(b))?;
    }

    #[test]
    fn distinct_texts_get_distinct_keys(a in text(), b in text()) {
        assert_distinct_keys(&a, &b)?;
        assert_distinct_keys(&Some(a.clone()), &None)?;
        assert_distinct_keys(&vec![a], &vec![b])?;
    }

    #[test]
    fn distinct_vectors_and_tuples_get_distinct_keys(
        a in vec(proptest::option::of(float()), 0..4),
        b in vec(proptest::option::of(float()), 0..4),
        x in (text(), float(), any::<bool>()),
        y in (text(), float(), any::<bool>()),
    ) {
        assert_distinct_keys(&a, &b)?;
        assert_distinct_keys(&x, &y)?;
    }

    #[test]
    fn distinct_structs_and_enums_get_distinct_keys(a in args(), b in args(), s in shape(), t in shape()) {
        assert_distinct_keys(&a, &b)?;
        assert_distinct_keys(&s, &t)?;
        assert_distinct_keys(&(a, s), &(b, t))?;
    }
}

/// The values issue 11 measured sharing one entry, each pair checked outright.
#[test]
fn non_finite_floats_and_none_never_share_a_key() {
    let values = [
        None,
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(f64::NAN),
        Some(0.0),
        Some(-0.0),
    ];
    let cache = memory_cache();
    let keys: Vec<_> = values.iter().map(|v| both_keys(&cache, v)).collect();
    for (i, a) in keys.iter().enumerate() {
        for (j, b) in keys.iter().enumerate().skip(i + 1) {
            assert_ne!(a.0, b.0, "digest: {:?} and {:?}", values[i], values[j]);
            assert_ne!(a.1, b.1, "template: {:?} and {:?}", values[i], values[j]);
        }
    }
    // Bare floats too, as `f(x: f64)` digests them.
    let bare: HashSet<String> = [f64::INFINITY, f64::NEG_INFINITY, f64::NAN]
        .iter()
        .map(|v| cache.full_key(Key::digest("p", "n", 1, &(v,))).unwrap())
        .collect();
    assert_eq!(bare.len(), 3);
}

/// Many values at once: no two of a few thousand arbitrary strings share a key.
#[test]
fn no_collisions_among_many_values() {
    let cache = memory_cache();
    let mut runner = TestRunner::new(config(16));
    runner
        .run(&proptest::collection::hash_set(any::<String>(), 0..400), |values| {
            let keys: HashSet<String> = values.iter().map(|v| template_key(&cache, v)).collect();
            prop_assert_eq!(keys.len(), values.len());
            let digests: HashSet<String> = values.iter().map(|v| digest_key(&cache, &(v.clone(), 7))).collect();
            prop_assert_eq!(digests.len(), values.len());
            Ok(())
        })
        .unwrap();
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u32,
    name: String,
    scores: Vec<i64>,
}

fn record() -> impl Strategy<Value = Record> {
    (any::<u32>(), ".{0,12}", vec(any::<i64>(), 0..4)).prop_map(|(id, name, scores)| Record { id, name, scores })
}

const MAGIC: u8 = 0xA5;
const FORMAT: u8 = 1;

/// Bytes that might sit under a key: anything; the entry header followed by
/// anything; a header with a timestamp followed by JSON of the right type, of
/// another type, or damaged.
fn stored_bytes() -> impl Strategy<Value = Vec<u8>> {
    let header = |stamp: u64| {
        let mut bytes = vec![MAGIC, FORMAT];
        bytes.extend_from_slice(&stamp.to_be_bytes());
        bytes
    };
    let stamp = prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()];
    prop_oneof![
        vec(any::<u8>(), 0..200),
        vec(any::<u8>(), 0..200).prop_map(|tail| [&[MAGIC, FORMAT][..], &tail].concat()),
        (stamp.clone(), record())
            .prop_map(move |(stamp, r)| { [header(stamp), serde_json::to_vec(&r).unwrap()].concat() }),
        (stamp.clone(), any::<String>())
            .prop_map(move |(stamp, s)| { [header(stamp), serde_json::to_vec(&s).unwrap()].concat() }),
        (stamp, record(), any::<prop::sample::Index>(), any::<u8>()).prop_map(move |(stamp, r, at, byte)| {
            let mut json = serde_json::to_vec(&r).unwrap();
            let at = at.index(json.len());
            json[at] = byte;
            [header(stamp), json].concat()
        }),
    ]
}

/// What the runtime should make of `bytes`: the record and whether it is fresh,
/// or `None` when they are not an entry of a `Record` (the format is documented
/// in `cache-runtime/src/entry.rs`).
fn expected(bytes: &[u8]) -> Option<(Record, bool)> {
    if bytes.len() < 10 || bytes[0] != MAGIC || bytes[1] != FORMAT {
        return None;
    }
    let stamp = u64::from_be_bytes(bytes[2..10].try_into().unwrap());
    let record = serde_json::from_slice::<Record>(&bytes[10..]).ok()?;
    let now = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    Some((record, now < stamp))
}

/// One Redis server for the whole property; each case writes its own key.
#[test]
fn arbitrary_stored_bytes_are_a_value_or_a_miss_never_an_error() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cache = runtime
        .block_on(Cache::builder().redis_url(&server.url()).namespace("prop").build())
        .expect("connect");
    let raw = RefCell::new(server.connection());
    let policy = Policy::new(Duration::from_secs(300));
    let case = AtomicU64::new(0);
    let computed = Record {
        id: u32::MAX,
        name: "computed".into(),
        scores: vec![-1],
    };
    let kinds: [AtomicU32; 3] = Default::default(); // undecodable, fresh, stale

    let check = |bytes: Vec<u8>| -> Result<(), TestCaseError> {
        let key = format!("case:{}", case.fetch_add(1, Ordering::SeqCst));
        let _: () = redis::cmd("SET")
            .arg(format!("prop:{key}"))
            .arg(&bytes)
            .query(&mut *raw.borrow_mut())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expect = expected(&bytes);
        let before = cache.stats().total;

        let read = runtime.block_on(cache.get_json::<Record>(key.as_str()));
        let read = read.map_err(|e| TestCaseError::fail(format!("get_json errored: {e}")))?;
        prop_assert_eq!(read, expect.clone().map(|(r, _)| r), "get_json of {:?}", bytes);
        let after_read = cache.stats().total;
        prop_assert_eq!(
            after_read.decode_errors - before.decode_errors,
            u64::from(expect.is_none())
        );

        let runs = AtomicU64::new(0);
        let Plain(value) = runtime.block_on(cache.get_or_compute(key.as_str(), &policy, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Plain(computed.clone())
        }));
        let after_call = cache.stats().total;
        prop_assert_eq!(after_call.backend_errors, before.backend_errors);
        match &expect {
            Some((stored, true)) => {
                kinds[1].fetch_add(1, Ordering::SeqCst);
                prop_assert_eq!(&value, stored, "a fresh entry is a hit");
                prop_assert_eq!(runs.load(Ordering::SeqCst), 0);
            }
            other => {
                kinds[if other.is_none() { 0 } else { 2 }].fetch_add(1, Ordering::SeqCst);
                prop_assert_eq!(&value, &computed, "not decodable or stale: computed");
                prop_assert_eq!(runs.load(Ordering::SeqCst), 1);
                prop_assert_eq!(
                    after_call.decode_errors - after_read.decode_errors,
                    u64::from(other.is_none())
                );
                // ... and overwritten with the computed value.
                let now = runtime
                    .block_on(cache.get_json::<Record>(key.as_str()))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(now.as_ref(), Some(&computed));
            }
        }
        Ok(())
    };
    // One of each kind for sure, then arbitrary bytes.
    let entry = |stamp: u64, json: &[u8]| [&[MAGIC, FORMAT][..], &stamp.to_be_bytes(), json].concat();
    let fixed = [
        Vec::new(),
        b"plain text".to_vec(),
        vec![MAGIC],
        vec![MAGIC, FORMAT],
        entry(u64::MAX, br#"{"id":1,"name":"fresh","scores":[]}"#),
        entry(0, br#"{"id":2,"name":"stale","scores":[3]}"#),
        entry(u64::MAX, br#"{"id":1,"name":"fresh","scores":[]"#),
        entry(u64::MAX, b"\"a string\""),
        [
            &[MAGIC, FORMAT + 1][..],
            &u64::MAX.to_be_bytes(),
            br#"{"id":1,"name":"x","scores":[]}"#,
        ]
        .concat(),
    ];
    for bytes in fixed {
        check(bytes.clone()).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
    }
    TestRunner::new(config(128)).run(&stored_bytes(), check).unwrap();
    let kinds = kinds.map(AtomicU32::into_inner);
    println!(
        "stored bytes: {} undecodable, {} fresh entries, {} stale entries",
        kinds[0], kinds[1], kinds[2]
    );
    assert!(kinds.iter().all(|&n| n > 0), "every kind of bytes was tried: {kinds:?}");
}
