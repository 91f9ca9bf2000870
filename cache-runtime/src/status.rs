//! [`CacheStatus`]: how one call was answered, for callers that want to know
//! (`<fn>_with_status`, [`Cache::get_or_compute_with_status`](crate::Cache::get_or_compute_with_status),
//! the HTTP layer's `X-Cache`).

use std::fmt;

/// How one call was answered.
///
/// ```
/// # async fn demo() {
/// use aside::{Cache, CacheStatus, Plain, Policy};
/// let cache = Cache::builder().memory().build().await.unwrap();
/// let policy = Policy::default();
/// let (Plain(n), status) = cache.get_or_compute_with_status("n", &policy, || async { Plain(1) }).await;
/// assert_eq!((n, status), (1, CacheStatus::Miss));
/// let (Plain(n), status) = cache.get_or_compute_with_status("n", &policy, || async { Plain(2) }).await;
/// assert_eq!((n, status), (1, CacheStatus::Hit));
/// assert_eq!(status.to_string(), "HIT");
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// A fresh stored value: nothing computed.
    Hit,
    /// A stale value (within `stale`), served while one caller refreshes it, or
    /// because that refresh failed.
    Stale,
    /// Computed for this call (and stored, when cacheable): no usable entry,
    /// or this call refreshed a stale one.
    Miss,
    /// Another caller's computation answered it: this call waited for a
    /// concurrent caller of the same cold key, in this process or another, and
    /// computed nothing.
    Coalesced,
    /// Computed without the cache: the backend failed, was skipped (circuit
    /// open) or is `off`, no key could be built, or the wait for another
    /// caller's computation ran out.
    Bypassed,
}

impl CacheStatus {
    /// `HIT`, `STALE`, `MISS`, `COALESCED` or `BYPASS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Stale => "STALE",
            CacheStatus::Miss => "MISS",
            CacheStatus::Coalesced => "COALESCED",
            CacheStatus::Bypassed => "BYPASS",
        }
    }

    /// Whether the answer came out of the cache without computing: a hit, a
    /// stale value, or another caller's computation.
    pub fn from_cache(self) -> bool {
        matches!(self, CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Coalesced)
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
