//! Which results are cached: `Ok` of a `Result`, `Some` of an `Option` (and `None`
//! when asked), any other value always.

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
}

mod sealed {
    /// Keeps [`Outcome`](super::Outcome) to the types of this module.
    pub trait Sealed {}

    impl<T, E> Sealed for Result<T, E> {}
    impl<T> Sealed for Option<T> {}
    impl<T> Sealed for super::Plain<T> {}
}

impl<T: Serialize + DeserializeOwned, E> Outcome for Result<T, E> {
    type Value = T;

    fn cacheable(&self, _: &Policy) -> Option<&T> {
        self.as_ref().ok()
    }

    fn from_cached(value: T) -> Self {
        Ok(value)
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
}
