//! The process-wide cache that `#[cached]` functions use unless told otherwise,
//! and the free functions acting on it.

use std::sync::OnceLock;

use crate::cache::Cache;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::key::Key;

static GLOBAL: OnceLock<Cache> = OnceLock::new();

impl Cache {
    /// The process-wide cache: the one given to [`set_global`](Cache::set_global),
    /// or else one built from the environment on first use, connecting lazily.
    ///
    /// It works from every tokio runtime that calls it, whichever connected it:
    /// successive `#[tokio::test]` runtimes, a runtime dropped and built again,
    /// current-thread runtimes, one runtime per thread. A Redis store keeps its
    /// connection's background work on a thread of its own (`aside-redis`), so
    /// none of it ends with the runtime that happened to make the first call.
    ///
    /// Invalid settings in the environment are logged at `error` and give a cache
    /// that stores nothing (`off`): the service keeps working, computing every call,
    /// and never serves a value that another process could have invalidated. Use
    /// [`Cache::from_env`] at start-up to fail early instead.
    ///
    /// ```
    /// let cache = aside::Cache::global();
    /// assert!(std::ptr::eq(cache, aside::Cache::global()));
    /// ```
    pub fn global() -> &'static Cache {
        GLOBAL.get_or_init(|| {
            let settings = Settings::from_env().unwrap_or_else(|error| {
                tracing::error!(target: "aside", %error, "invalid cache settings; the global cache is off");
                Settings {
                    backend: crate::config::BackendKind::Off,
                    ..Settings::default()
                }
            });
            Cache::lazy(settings)
        })
    }

    /// Makes `cache` the process-wide cache. Call it before any cached function runs.
    ///
    /// ```
    /// # async fn demo() -> aside::Result<()> {
    /// use aside::Cache;
    /// let cache = Cache::builder().memory().namespace("app").build().await?;
    /// Cache::set_global(cache)?;
    /// assert_eq!(Cache::global().settings().namespace(), "app");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::GlobalAlreadySet`] if the global cache was already set or used.
    pub fn set_global(cache: Cache) -> Result<()> {
        GLOBAL.set(cache).map_err(|_| Error::GlobalAlreadySet)
    }
}

/// [`Cache::invalidate_key`] on the [global](Cache::global) cache.
///
/// # Errors
///
/// As [`Cache::invalidate_key`].
pub async fn invalidate_key(key: impl Into<Key>) -> Result<bool> {
    Cache::global().invalidate_key(key).await
}

/// [`Cache::invalidate_tag`] on the [global](Cache::global) cache.
///
/// # Errors
///
/// As [`Cache::invalidate_tag`].
pub async fn invalidate_tag(tag: &str) -> Result<u64> {
    Cache::global().invalidate_tag(tag).await
}

/// [`Cache::invalidate_pattern`] on the [global](Cache::global) cache.
///
/// # Errors
///
/// As [`Cache::invalidate_pattern`].
pub async fn invalidate_pattern(pattern: &str) -> Result<u64> {
    Cache::global().invalidate_pattern(pattern).await
}

/// [`Cache::expire_key`] on the [global](Cache::global) cache.
///
/// # Errors
///
/// As [`Cache::expire_key`].
pub async fn expire_key(key: impl Into<Key>) -> Result<bool> {
    Cache::global().expire_key(key).await
}

/// [`Cache::expire_tag`] on the [global](Cache::global) cache.
///
/// # Errors
///
/// As [`Cache::expire_tag`].
pub async fn expire_tag(tag: &str) -> Result<u64> {
    Cache::global().expire_tag(tag).await
}

/// [`Cache::stats`] of the [global](Cache::global) cache.
pub fn stats() -> crate::Stats {
    Cache::global().stats()
}
