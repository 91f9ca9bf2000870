//! Invalidation events: what was invalidated, and how many entries went.

use tokio::sync::broadcast;

/// What an invalidation targeted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidationKind {
    /// One key ([`Cache::invalidate_key`](crate::Cache::invalidate_key), `<fn>_invalidate`).
    Key,
    /// Every entry with a tag ([`Cache::invalidate_tag`](crate::Cache::invalidate_tag)).
    Tag,
    /// Every key matching a glob ([`Cache::invalidate_pattern`](crate::Cache::invalidate_pattern)).
    Pattern,
    /// One key made stale ([`Cache::expire_key`](crate::Cache::expire_key), `<fn>_expire`).
    ExpiredKey,
    /// Every entry with a tag made stale ([`Cache::expire_tag`](crate::Cache::expire_tag)).
    ExpiredTag,
}

/// One completed invalidation, as seen by [`Cache::events`](crate::Cache::events).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invalidation {
    /// What was targeted.
    pub kind: InvalidationKind,
    /// The full key, the tag, or the full pattern.
    pub target: String,
    /// How many entries were removed (or, for the `Expired…` kinds, made stale).
    pub removed: u64,
}

/// A subscription to a cache's invalidation events; see [`Cache::events`](crate::Cache::events).
///
/// Events published while nobody is subscribed are not kept. A subscriber that
/// falls more than 1024 events behind skips the oldest.
#[derive(Debug)]
pub struct Events {
    pub(crate) receiver: broadcast::Receiver<Invalidation>,
}

impl Events {
    /// The next event; `None` once the cache is dropped.
    pub async fn next(&mut self) -> Option<Invalidation> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Invalidation> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}
