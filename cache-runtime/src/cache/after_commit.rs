//! [`AfterCommit`]: invalidations collected while a database transaction runs,
//! sent once it has committed, and dropped with it on a rollback.

use super::Cache;
use crate::error::Result;
use crate::key::Key;

/// One invalidation waiting for its transaction.
#[derive(Debug)]
enum Pending {
    Key(Key),
    Tag(String),
    Pattern(String),
    ExpireKey(Key),
    ExpireTag(String),
}

/// Invalidations collected while a database transaction runs, sent by
/// [`commit`](AfterCommit::commit) once the transaction has committed; dropped
/// unsent when the transaction is rolled back (or the collector is dropped).
///
/// Invalidating *before* the commit is a classic bug: a reader that misses in
/// between recomputes from the database as it still is — the old data — and
/// caches that until the next invalidation. Invalidating after the commit, as
/// this does, leaves no such window: guarantee 5 covers every computation that
/// started before the invalidation.
///
/// ```
/// # async fn demo() -> aside::Result<()> {
/// use aside::{Cache, Plain, Policy};
///
/// let cache = Cache::builder().memory().build().await?;
/// let orders = Policy::default().tags(["orders"]);
/// let Plain(_) = cache.get_or_compute("total", &orders, || async { Plain(10) }).await;
///
/// let mut after = cache.after_commit();
/// // ... `INSERT INTO orders ...` inside the transaction ...
/// after.invalidate_tag("orders");
/// // ... `tx.commit().await?` ...
/// assert_eq!(after.commit().await?, 1); // now the entry goes
///
/// let Plain(_) = cache.get_or_compute("total", &orders, || async { Plain(11) }).await;
/// let mut rolled_back = cache.after_commit();
/// rolled_back.invalidate_tag("orders");
/// drop(rolled_back); // the transaction rolled back: nothing is invalidated
/// assert!(cache.exists("total").await?);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "the invalidations are sent only by `commit`"]
pub struct AfterCommit {
    cache: Cache,
    pending: Vec<Pending>,
}

impl Cache {
    /// Starts collecting invalidations to send after a database transaction
    /// commits; see [`AfterCommit`].
    pub fn after_commit(&self) -> AfterCommit {
        AfterCommit {
            cache: self.clone(),
            pending: Vec::new(),
        }
    }
}

impl AfterCommit {
    /// [`Cache::invalidate_key`], once committed.
    pub fn invalidate_key(&mut self, key: impl Into<Key>) -> &mut Self {
        self.pending.push(Pending::Key(key.into()));
        self
    }

    /// [`Cache::invalidate_tag`], once committed.
    pub fn invalidate_tag(&mut self, tag: impl Into<String>) -> &mut Self {
        self.pending.push(Pending::Tag(tag.into()));
        self
    }

    /// [`Cache::invalidate_pattern`], once committed.
    pub fn invalidate_pattern(&mut self, pattern: impl Into<String>) -> &mut Self {
        self.pending.push(Pending::Pattern(pattern.into()));
        self
    }

    /// [`Cache::expire_key`] (soft invalidation), once committed.
    pub fn expire_key(&mut self, key: impl Into<Key>) -> &mut Self {
        self.pending.push(Pending::ExpireKey(key.into()));
        self
    }

    /// [`Cache::expire_tag`] (soft invalidation), once committed.
    pub fn expire_tag(&mut self, tag: impl Into<String>) -> &mut Self {
        self.pending.push(Pending::ExpireTag(tag.into()));
        self
    }

    /// How many invalidations wait for the commit.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends the invalidations, in the order they were collected; call it once
    /// the transaction has committed. Returns how many entries they removed (or
    /// made stale).
    ///
    /// # Errors
    ///
    /// The first failure, after every invalidation was tried: one that failed
    /// does not keep the others from running.
    pub async fn commit(mut self) -> Result<u64> {
        let cache = self.cache.clone();
        let mut removed = 0;
        let mut first_error = None;
        for pending in std::mem::take(&mut self.pending) {
            let done = match pending {
                Pending::Key(key) => cache.invalidate_key(key).await.map(u64::from),
                Pending::Tag(tag) => cache.invalidate_tag(&tag).await,
                Pending::Pattern(pattern) => cache.invalidate_pattern(&pattern).await,
                Pending::ExpireKey(key) => cache.expire_key(key).await.map(u64::from),
                Pending::ExpireTag(tag) => cache.expire_tag(&tag).await,
            };
            match done {
                Ok(count) => removed += count,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(removed),
        }
    }
}

impl Drop for AfterCommit {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            tracing::debug!(target: "aside", dropped = self.pending.len(),
                "invalidations dropped with their transaction (rolled back, or never committed)");
        }
    }
}
