//! The lease of one entry: the token of the one computation allowed to store
//! it, across every process sharing the store. Invalidation revokes it.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::waiters::Waiters;
use super::FALLBACK_RECHECK;
use crate::backend::{new_token, Acquired, Backend, Record, Store};
use crate::redact::Redacted;
use crate::tags;

/// The terms of one entry's lease: where it lives, how long it is held, and
/// the tag sets the entry is recorded in while computed.
#[derive(Clone, Copy)]
pub(crate) struct Lease<'a> {
    pub(crate) store: &'a Arc<Store>,
    pub(crate) waiters: &'a Arc<Waiters>,
    pub(crate) entry: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) tags: &'a [String],
    /// How long the entry lives in the store (fresh + stale, clamped).
    pub(crate) lifetime: Duration,
    /// The TTL ceiling: no tag set outlives it.
    pub(crate) ceiling: Duration,
    /// How long the lease lasts unless renewed.
    pub(crate) ttl: Duration,
}

/// Why a wait for another caller's value ended without one.
#[derive(Debug)]
pub(crate) enum Waited {
    /// `wait` ran out.
    TimedOut,
    /// The store failed or is skipped (circuit open): fail open now.
    StoreFailed,
}

impl<'a> Lease<'a> {
    /// Records the entry in its tag sets again (it may have been pruned, or its
    /// set expired or been detached by an invalidation, meanwhile).
    async fn register(&self) -> crate::Result<()> {
        if self.tags.is_empty() {
            return Ok(());
        }
        let tag_keys = self.tag_keys();
        self.store.register(self.entry, self.record(&tag_keys)).await
    }

    /// The full keys of the entry's tag sets.
    fn tag_keys(&self) -> Vec<String> {
        self.tags.iter().map(|tag| tags::tag_key(self.namespace, tag)).collect()
    }

    /// The entry's record in `tag_keys`, scored by the latest the entry can
    /// expire counted from now: a store needs the lease, taken or renewed
    /// before the record and lasting `ttl`, and the entry then lives `lifetime`.
    fn record<'k>(&self, tag_keys: &'k [String]) -> Record<'k> {
        Record {
            tag_keys,
            lifetime: self.lifetime.saturating_add(self.ttl),
            ceiling: self.ceiling,
        }
    }

    /// Tries for the lease, recording the entry in its tag sets with it (see the
    /// protocol in [`lock`](crate::lock)). `Ok(None)`: another computation holds
    /// it (or an invalidation revoked it at once). With the lease come the
    /// entry's bytes as they were when it was taken: another process may have
    /// stored since the caller's miss.
    pub(crate) async fn take(&self) -> crate::Result<Option<(Held<'a>, Option<Bytes>)>> {
        // Armed before the request is sent: if this future is dropped while the
        // request is under way, the lease it may have taken is freed.
        let held = Held::new(*self);
        let tag_keys = self.tag_keys();
        let stored = match self
            .store
            .acquire_lease(self.entry, &held.token, self.ttl, false, self.record(&tag_keys))
            .await
        {
            Ok(Acquired::Taken(stored)) => stored,
            Ok(Acquired::Busy) => {
                held.disarm();
                return Ok(None);
            }
            // The request may still run after our timeout (a paused server): the
            // dropped guard frees what it may take, or every caller would wait
            // out the lease.
            Err(error) => return Err(error),
        };
        Ok(Some((held, stored)))
    }

    /// Takes the lease even from a computation in flight (whose store is then refused).
    pub(crate) async fn steal(&self) -> crate::Result<Held<'a>> {
        let held = Held::new(*self);
        let tag_keys = self.tag_keys();
        self.store
            .acquire_lease(self.entry, &held.token, self.ttl, true, self.record(&tag_keys))
            .await?;
        Ok(held)
    }

    /// Waits for another caller's computation of the entry: `Ok(Some(value))`
    /// when a value `accept` takes is stored, `Ok(None)` when the lease is gone
    /// without one (take it).
    pub(crate) async fn wait_for_value<T>(
        &self,
        deadline: Instant,
        accept: impl Fn(Bytes) -> Option<T>,
    ) -> Result<Option<T>, Waited> {
        let registration = self.waiters.register(self.entry);
        let left = deadline.saturating_duration_since(Instant::now());
        self.store.listen(left.min(Duration::from_millis(250))).await;
        loop {
            let mut woken = pin!(registration.notify().notified());
            woken.as_mut().enable();
            // Check after registering, so a store in between is not missed.
            match self.store.get(self.entry).await {
                Ok(found) => {
                    if let Some(value) = found.and_then(&accept) {
                        return Ok(Some(value));
                    }
                }
                Err(_) => return Err(Waited::StoreFailed),
            }
            match self.store.lease_held(self.entry).await {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(_) => return Err(Waited::StoreFailed),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Waited::TimedOut);
            }
            let _ = tokio::time::timeout(left.min(FALLBACK_RECHECK), woken).await;
        }
    }
}

/// A lease this caller holds. Dropped while still held — its computation was
/// cancelled, or its store failed — it is freed in the background
/// (compare-and-delete on its token) and the entry's waiters are woken, so one
/// of them takes over at once instead of waiting for the lease to expire.
pub(crate) struct Held<'a> {
    lease: Lease<'a>,
    token: String,
    armed: bool,
    /// When the entry was last recorded in its tag sets (at the latest: the
    /// lease and the first record are asked for after this is set).
    recorded_at: std::sync::Mutex<Instant>,
}

impl<'a> Held<'a> {
    fn new(lease: Lease<'a>) -> Held<'a> {
        Held {
            lease,
            token: new_token(),
            armed: true,
            recorded_at: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Forgets the lease without freeing it (it was not taken, or is gone).
    fn disarm(mut self) {
        self.armed = false;
    }

    /// Whether this token still holds the lease (renewing it): `false` once an
    /// invalidation revoked it, or on an error. No invalidation of the entry
    /// began before a `true` answer since the lease was taken.
    pub(crate) async fn still_held(&self) -> bool {
        let lease = &self.lease;
        matches!(
            lease.store.renew_lease(lease.entry, &self.token, lease.ttl).await,
            Ok(true)
        )
    }

    /// Notes a successful record of the entry in its tag sets.
    fn recorded(&self) {
        *self.recorded_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Runs `computation` while renewing the lease (and the tag records) every
    /// third of its TTL. Renewal failures are logged; the store will tell.
    pub(crate) async fn hold<T>(&self, computation: impl Future<Output = T>) -> T {
        let lease = &self.lease;
        let mut computation = pin!(computation);
        let period = lease.ttl / 3;
        let mut renewal = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                output = &mut computation => return output,
                _ = renewal.tick() => self.renew().await,
            }
        }
    }

    /// Renews the lease and the entry's tag records: what [`hold`](Held::hold)
    /// does every third of the lease's TTL. Failures are logged; the store will tell.
    pub(crate) async fn renew(&self) {
        let lease = &self.lease;
        match lease.store.renew_lease(lease.entry, &self.token, lease.ttl).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(target: "aside", entry = %Redacted(lease.entry),
                "lease lost while computing (invalidated or expired); the result will not be stored"),
            Err(error) => tracing::debug!(target: "aside", entry = %Redacted(lease.entry), %error,
                "lease renewal failed"),
        }
        match lease.register().await {
            Ok(()) => self.recorded(),
            Err(error) => tracing::debug!(target: "aside", entry = %Redacted(lease.entry), %error,
                "tag renewal failed"),
        }
    }

    /// Stores the entry if this token still holds the lease, freeing it.
    /// `Ok(false)`: an invalidation revoked the lease and the value was refused.
    /// On an error the lease is freed in the background.
    ///
    /// The tag records need no renewal first when the latest one succeeded
    /// within the last half lease: each covers the entry's lifetime plus a whole
    /// lease from its moment, which is past the stored entry's expiry. (A record
    /// an invalidation detached meanwhile revoked the lease: the store is refused.)
    pub(crate) async fn store(self, bytes: Bytes, ttl: Duration) -> crate::Result<bool> {
        let lease = self.lease;
        let recorded_at = *self.recorded_at.lock().unwrap_or_else(|e| e.into_inner());
        if !lease.tags.is_empty() && (recorded_at.elapsed() > lease.ttl / 2 || ttl > lease.lifetime) {
            // A value's own TTL (`ttl_from`) may outlive the policy's lifetime the
            // records were made for: they must cover the entry it is stored as.
            Lease {
                lifetime: lease.lifetime.max(ttl),
                ..lease
            }
            .register()
            .await?;
        }
        let stored = lease.store.store_leased(lease.entry, &self.token, bytes, ttl).await?;
        self.disarm();
        Ok(stored)
    }

    /// Keeps the lease for `period` from now (a refresh that failed backs off)
    /// and lets it expire then, instead of freeing it.
    pub(crate) async fn back_off(self, period: Duration) {
        let lease = self.lease;
        if let Err(error) = lease.store.renew_lease(lease.entry, &self.token, period).await {
            tracing::debug!(target: "aside", entry = %Redacted(lease.entry), %error,
                "lease back-off failed; it expires on its own");
        }
        self.disarm();
    }

    /// Frees the lease now and wakes the entry's waiters.
    pub(crate) async fn release(self) {
        let lease = self.lease;
        if let Err(error) = lease.store.release_lease(lease.entry, &self.token).await {
            tracing::debug!(target: "aside", entry = %Redacted(lease.entry), %error,
                "lease release failed; it expires on its own");
        }
        self.disarm();
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.lease.store.release_detached(self.lease.entry, &self.token);
        }
    }
}
