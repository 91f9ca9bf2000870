//! Keys never collide across type parameters or same-named types (guarantee 10):
//! two instantiations of a generic function, two `Self` types of one generic
//! `impl`, and two same-named types in different modules each get their own
//! entries, on the digest and on the `key = "..."` path, while the readable
//! `{name}` segment stays what it was.
//!
//! The functions return what only their instantiation knows (its type's name), so
//! a shared entry would show as a wrong value, not only as a decode error
//! (`generic_functions_key_on_their_arguments` compares the keys themselves).

use std::any::type_name;
use std::marker::PhantomData;

use aside::{cached, Cache};
use serde::de::DeserializeOwned;
use serde::Serialize;
use support::Fixture;

mod support;

on_backends!(
    [memory, redis]
    instantiations_of_a_generic_function_have_their_own_entries,
    methods_of_a_generic_type_have_their_own_entries,
    same_named_types_in_two_modules_have_their_own_entries,
    generic_functions_key_on_their_arguments,
);

on_backends!(
    [memory]
    a_type_parameter_only_in_the_return_type_tells_entries_apart,
    key_templates_of_generic_functions_have_their_own_entries,
    const_parameters_tell_entries_apart,
    impl_trait_arguments_tell_entries_apart,
    companions_are_told_the_instantiation,
);

/// The entry keys of one function (memory: from its `_key` companion; Redis: as stored).
fn stored(fx: &Fixture, pattern: &str) -> Vec<String> {
    let mut keys: Vec<String> = fx
        .all_keys()
        .into_iter()
        .filter(|key| key.starts_with(pattern))
        .collect();
    keys.sort();
    keys
}

#[cached(skip(cache), cache = cache)]
async fn describe<T>(cache: &Cache, n: u32) -> String {
    format!("{}:{n}", type_name::<T>())
}

async fn instantiations_of_a_generic_function_have_their_own_entries(fx: Fixture) {
    let cache = fx.cache().await;
    for _ in 0..2 {
        assert_eq!(describe::<u8>(&cache, 1).await, "u8:1");
        assert_eq!(describe::<u16>(&cache, 1).await, "u16:1");
    }
    let stats = cache.stats().function("computed:describe");
    assert_eq!((stats.computations, stats.hits), (2, 2));
    if !fx.is_memory() {
        let keys = stored(&fx, "aside:computed:describe:v1.1:");
        assert_eq!(keys.len(), 2, "{keys:?}");
    }
}

#[cached(name = "parse_as", skip(cache), cache = cache)]
async fn parse_as<T: Serialize + DeserializeOwned + std::str::FromStr + Send>(cache: &Cache, text: &str) -> Option<T> {
    text.parse().ok()
}

async fn a_type_parameter_only_in_the_return_type_tells_entries_apart(fx: Fixture) {
    let cache = fx.cache().await;
    for _ in 0..2 {
        assert_eq!(parse_as::<u32>(&cache, "12").await, Some(12));
        assert_eq!(parse_as::<String>(&cache, "12").await, Some("12".to_owned()));
        assert_eq!(parse_as::<f64>(&cache, "12").await, Some(12.0));
    }
    let stats = cache.stats().function("computed:parse_as");
    assert_eq!((stats.computations, stats.hits, stats.decode_errors), (3, 3, 0));
}

struct Repo<T> {
    cache: Cache,
    row: PhantomData<T>,
}

impl<T> Repo<T> {
    fn new(cache: &Cache) -> Self {
        Repo {
            cache: cache.clone(),
            row: PhantomData,
        }
    }

    #[cached(skip(self), cache = self.cache)]
    async fn label(&self, id: u32) -> String {
        format!("{}#{id}", type_name::<T>())
    }

    #[cached(skip(self), cache = self.cache, key = "{id}")]
    async fn readable(&self, id: u32) -> String {
        format!("{}#{id}", type_name::<T>())
    }
}

async fn methods_of_a_generic_type_have_their_own_entries(fx: Fixture) {
    let cache = fx.cache().await;
    let (bytes, words) = (Repo::<u8>::new(&cache), Repo::<u16>::new(&cache));
    for _ in 0..2 {
        assert_eq!(bytes.label(7).await, "u8#7");
        assert_eq!(words.label(7).await, "u16#7");
        assert_eq!(bytes.readable(7).await, "u8#7");
        assert_eq!(words.readable(7).await, "u16#7");
    }
    let stats = cache.stats().function("computed:Repo::label");
    assert_eq!((stats.computations, stats.hits), (2, 2));
    let stats = cache.stats().function("computed:Repo::readable");
    assert_eq!((stats.computations, stats.hits), (2, 2));
    assert_ne!(bytes.label_key(7), words.label_key(7));
    // The readable part stays readable: `{id}`, then what tells the types apart.
    let readable = bytes.readable_key(7);
    let told_apart = readable
        .strip_prefix("aside:computed:Repo::readable:v1.1:7:")
        .expect(&readable);
    assert_eq!(told_apart.len(), 32, "{readable}");
    if !fx.is_memory() {
        let keys = stored(&fx, "aside:computed:Repo::label:v1.1:");
        assert_eq!(keys, {
            let mut both = vec![bytes.label_key(7), words.label_key(7)];
            both.sort();
            both
        });
    }
}

mod a {
    use aside::{cached, Cache};

    pub struct Report {
        pub cache: Cache,
    }

    impl Report {
        #[cached(skip(self), cache = self.cache)]
        pub async fn total(&self, month: u32) -> String {
            format!("a:{month}")
        }
    }
}

mod b {
    use aside::{cached, Cache};

    pub struct Report {
        pub cache: Cache,
    }

    impl Report {
        #[cached(skip(self), cache = self.cache)]
        pub async fn total(&self, month: u32) -> String {
            format!("b:{month}")
        }
    }
}

async fn same_named_types_in_two_modules_have_their_own_entries(fx: Fixture) {
    let cache = fx.cache().await;
    let a = a::Report { cache: cache.clone() };
    let b = b::Report { cache: cache.clone() };
    for _ in 0..2 {
        assert_eq!(a.total(11).await, "a:11");
        assert_eq!(b.total(11).await, "b:11");
    }
    // One name for both (`Report::total`, as before), two entries.
    let stats = cache.stats().function("computed:Report::total");
    assert_eq!((stats.computations, stats.hits), (2, 2));
    assert!(a.total_key(11).starts_with("aside:computed:Report::total:v1.1:"));
    assert_ne!(a.total_key(11), b.total_key(11));
    if !fx.is_memory() {
        assert_eq!(stored(&fx, "aside:computed:Report::total:").len(), 2);
    }
}

#[cached(skip(cache), cache = cache, key = "{region}:{month}")]
async fn regional<T>(cache: &Cache, region: &str, month: u32) -> String {
    format!("{}/{region}/{month}", type_name::<T>())
}

async fn key_templates_of_generic_functions_have_their_own_entries(fx: Fixture) {
    let cache = fx.cache().await;
    for _ in 0..2 {
        assert_eq!(regional::<u8>(&cache, "eu", 11).await, "u8/eu/11");
        assert_eq!(regional::<i8>(&cache, "eu", 11).await, "i8/eu/11");
    }
    let stats = cache.stats().function("computed:regional");
    assert_eq!((stats.computations, stats.hits), (2, 2));
    let key = regional_key::<u8>(&cache, "eu west", 11);
    assert!(key.starts_with("aside:computed:regional:v1.1:eu%20west:11:"), "{key}");
    assert_ne!(key, regional_key::<i8>(&cache, "eu west", 11));
}

#[cached(skip(cache), cache = cache)]
async fn sized<const N: usize>(cache: &Cache, n: u32) -> usize {
    N + n as usize
}

async fn const_parameters_tell_entries_apart(fx: Fixture) {
    let cache = fx.cache().await;
    for _ in 0..2 {
        assert_eq!(sized::<2>(&cache, 1).await, 3);
        assert_eq!(sized::<3>(&cache, 1).await, 4);
    }
    assert_eq!(cache.stats().function("computed:sized").computations, 2);
}

#[cached(skip(cache), cache = cache)]
async fn width(cache: &Cache, n: impl Serialize + Send) -> usize {
    std::mem::size_of_val(&n)
}

async fn impl_trait_arguments_tell_entries_apart(fx: Fixture) {
    let cache = fx.cache().await;
    for _ in 0..2 {
        // The same JSON, `1`, of two types.
        assert_eq!(width(&cache, 1u8).await, 1);
        assert_eq!(width(&cache, 1u64).await, 8);
    }
    assert_eq!(cache.stats().function("computed:width").computations, 2);
}

async fn companions_are_told_the_instantiation(fx: Fixture) {
    let cache = fx.cache().await;
    assert_eq!(describe::<u8>(&cache, 1).await, "u8:1");
    assert_eq!(describe::<u16>(&cache, 1).await, "u16:1");
    assert_ne!(describe_key::<u8>(&cache, 1), describe_key::<u16>(&cache, 1));
    assert!(describe_key::<u8>(&cache, 1).starts_with("aside:computed:describe:v1.1:"));
    // Dropping one instantiation's entry leaves the other's.
    assert!(describe_invalidate::<u8>(&cache, 1).await.unwrap());
    assert!(!describe_invalidate::<u8>(&cache, 1).await.unwrap());
    assert!(describe_invalidate::<u16>(&cache, 1).await.unwrap());
    assert_eq!(describe_refresh::<u16>(&cache, 1).await, "u16:1");
    assert_eq!(describe::<u16>(&cache, 1).await, "u16:1");
    assert_eq!(cache.stats().function("computed:describe").computations, 3);
}

/// `describe` of the values themselves (the one above is keyed by a type only).
#[cached(name = "describe", skip(cache), cache = cache)]
async fn describe_value<T: Serialize + std::fmt::Debug + Sync>(cache: &Cache, value: T) -> String {
    format!("{value:?}")
}

async fn generic_functions_key_on_their_arguments(fx: Fixture) {
    let cache = fx.cache_in("generic").await;
    assert_eq!(describe_value(&cache, 1u8).await, "1");
    assert_eq!(describe_value(&cache, "one").await, "\"one\"");
    assert_eq!(describe_value(&cache, vec![1, 2]).await, "[1, 2]");
    assert_eq!(describe_value(&cache, "one").await, "\"one\"");
    let stats = cache.stats().function("computed:describe");
    assert_eq!((stats.misses, stats.hits), (3, 1));
    // `_key` needs no type parameter of a skipped argument, only the key argument's
    // (inferred from it). The type parameter is part of the key (issue 11): the
    // same JSON of two types is two keys.
    assert_ne!(
        describe_value_key(&cache, 1u8),
        describe_value_key(&cache, 1u64),
        "same JSON, other type, other key"
    );
}
