//! Which results are cached: `Ok` of a `Result`, `Some` of an `Option` (and `None`
//! when asked), any other value always.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::policy::Policy;

/// The result of a computation handed to [`Cache::get_or_compute`](crate::Cache::get_or_compute):
/// what of it is stored, and how a stored value becomes a result again.
///
/// Implemented for `Result<T, E>` (only `Ok` is stored), `Option<T>` (`None` only
/// with [`Policy::cache_none`]) and [`Plain<T>`] (always stored). Sealed: the
/// cache's guarantees rest on these three meanings of "cacheable", so it cannot
/// be implemented elsewhere; wrap another type in [`Plain`].
pub trait Outcome: Sized + sealed::Sealed {
    /// The stored type.
    type Value: Serialize + DeserializeOwned;

    /// The part of `self` to store, or `None` when this result is not cached.
    fn cacheable(&self, policy: &Policy) -> Option<&Self::Value>;

    /// Rebuilds a result from a stored value.
    fn from_cached(value: Self::Value) -> Self;

    /// The part of `self` that would be stored, whatever the policy says (for
    /// [`Adaptive`]'s functions). Not public API.
    #[doc(hidden)]
    fn value(&self) -> Option<&Self::Value>;

    /// A value that could be stored but was declined ([`Adaptive::unless`]): it is
    /// returned, and handed to the callers waiting for it, but not stored. Not public API.
    #[doc(hidden)]
    fn declined(&self) -> Option<&Self::Value> {
        None
    }

    /// The fresh lifetime this result asks for instead of the policy's `ttl`
    /// ([`Adaptive::ttl_from`]). Not public API.
    #[doc(hidden)]
    fn fresh_for(&self) -> Option<Duration> {
        None
    }
}

mod sealed {
    /// Keeps [`Outcome`](super::Outcome) to the types of this module.
    pub trait Sealed {}

    impl<T, E> Sealed for Result<T, E> {}
    impl<T> Sealed for Option<T> {}
    impl<T> Sealed for super::Plain<T> {}
    impl<O> Sealed for super::Adaptive<O> {}
}

impl<T: Serialize + DeserializeOwned, E> Outcome for Result<T, E> {
    type Value = T;

    fn cacheable(&self, _: &Policy) -> Option<&T> {
        self.as_ref().ok()
    }

    fn from_cached(value: T) -> Self {
        Ok(value)
    }

    fn value(&self) -> Option<&T> {
        self.as_ref().ok()
    }
}

impl<T: Serialize + DeserializeOwned> Outcome for Option<T> {
    type Value = Option<T>;

    fn cacheable(&self, policy: &Policy) -> Option<&Option<T>> {
        (self.is_some() || policy.caches_none()).then_some(self)
    }

    fn from_cached(value: Option<T>) -> Self {
        value
    }

    fn value(&self) -> Option<&Option<T>> {
        Some(self)
    }
}

/// A value that is always cached: wrap a computation's result in it when it is
/// neither a `Result` nor an `Option`.
///
/// ```
/// # async fn demo() {
/// use aside::{Cache, Plain, Policy};
/// let cache = Cache::builder().memory().build().await.unwrap();
/// let Plain(answer) = cache
///     .get_or_compute("answer", &Policy::default(), || async { Plain(42) })
///     .await;
/// assert_eq!(answer, 42);
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Plain<T>(pub T);

impl<T: Serialize + DeserializeOwned> Outcome for Plain<T> {
    type Value = T;

    fn cacheable(&self, _: &Policy) -> Option<&T> {
        Some(&self.0)
    }

    fn from_cached(value: T) -> Self {
        Plain(value)
    }

    fn value(&self) -> Option<&T> {
        Some(&self.0)
    }
}

/// A result that decides for itself whether it is stored and for how long:
/// adaptive caching, what `#[cached(unless = ..., ttl_from = ...)]` generates.
///
/// Wrap a computation's result in it and judge the value that would be stored
/// (`T` of `Result<T, E>`, the whole `Option<T>`, the value of a [`Plain`]):
///
/// - [`unless`](Adaptive::unless): when the function says `true`, the value is
///   returned — to this caller and to the callers of this process waiting for
///   the same cold key — but not stored, so the next call computes again (an
///   empty search result, a placeholder). A stale value, if any, stays.
/// - [`ttl_from`](Adaptive::ttl_from): the value's own fresh lifetime instead of
///   the policy's `ttl` (a token that expires, a short life for `None`), clamped
///   to the ceiling (`CACHE_MAX_TTL`, at most [`TTL_CEILING`](crate::TTL_CEILING))
///   and raised to [`MIN_TTL`](crate::policy::MIN_TTL); the policy's
///   `stale` window and jitter apply after it as after `ttl`.
///
/// ```
/// # async fn demo() {
/// use std::time::Duration;
/// use aside::{Adaptive, Cache, Policy};
///
/// let cache = Cache::builder().memory().build().await.unwrap();
/// let policy = Policy::new(Duration::from_secs(300));
/// let search = |query: &'static str| {
///     let (cache, policy) = (cache.clone(), policy.clone());
///     async move {
///         cache
///             .get_or_compute(format!("search:{query}"), &policy, || async move {
///                 let hits: Vec<String> = if query == "rust" { vec!["aside".into()] } else { vec![] };
///                 Adaptive::new(Ok::<_, std::io::Error>(hits))
///                     .unless(Vec::is_empty)
///                     .ttl_from(|hits| Duration::from_secs(60 * hits.len() as u64))
///             })
///             .await
///             .into_inner()
///     }
/// };
/// assert!(search("nothing").await.unwrap().is_empty());
/// assert!(!cache.exists("search:nothing").await.unwrap()); // empty: not stored
/// assert_eq!(search("rust").await.unwrap(), ["aside"]);
/// let ttl = cache.ttl("search:rust").await.unwrap().unwrap();
/// assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50)); // one hit: one minute
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adaptive<O> {
    outcome: O,
    declined: bool,
    fresh_for: Option<Duration>,
}

impl<O: Outcome> Adaptive<O> {
    /// `outcome`, stored as it would be without the wrapper until told otherwise.
    pub fn new(outcome: O) -> Self {
        Adaptive {
            outcome,
            declined: false,
            fresh_for: None,
        }
    }

    /// Declines to store the value when `unless` says `true` of it; not called
    /// when there is no value to store (an `Err`).
    #[must_use]
    pub fn unless(mut self, unless: impl FnOnce(&O::Value) -> bool) -> Self {
        if let Some(value) = self.outcome.value() {
            self.declined |= unless(value);
        }
        self
    }

    /// Keeps the value fresh for what `ttl_from` says of it instead of the
    /// policy's `ttl` (clamped; see the type's docs); not called when there is
    /// no value to store.
    #[must_use]
    pub fn ttl_from(mut self, ttl_from: impl FnOnce(&O::Value) -> Duration) -> Self {
        if let Some(value) = self.outcome.value() {
            self.fresh_for = Some(ttl_from(value));
        }
        self
    }

    /// Whether the value was declined by [`unless`](Adaptive::unless).
    pub fn is_declined(&self) -> bool {
        self.declined
    }

    /// The wrapped result.
    pub fn into_inner(self) -> O {
        self.outcome
    }
}

impl<O: Outcome> Outcome for Adaptive<O> {
    type Value = O::Value;

    fn cacheable(&self, policy: &Policy) -> Option<&O::Value> {
        if self.declined {
            None
        } else {
            self.outcome.cacheable(policy)
        }
    }

    fn from_cached(value: O::Value) -> Self {
        Adaptive::new(O::from_cached(value))
    }

    fn value(&self) -> Option<&O::Value> {
        self.outcome.value()
    }

    fn declined(&self) -> Option<&O::Value> {
        if self.declined {
            self.outcome.value()
        } else {
            self.outcome.declined()
        }
    }

    fn fresh_for(&self) -> Option<Duration> {
        self.fresh_for.or_else(|| self.outcome.fresh_for())
    }
}
