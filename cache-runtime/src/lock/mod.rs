//! Stampede protection: one computation per cold key across every task and
//! process, and the lease that lets invalidation revoke it.
//!
//! # The protocol, for one entry key `E`
//!
//! 1. **In process**, concurrent callers of `E` share one *flight*: one of them
//!    leads, the others wait for its encoded result (no extra Redis traffic).
//! 2. The leader takes the **lease** (`{E}:lease`, set only if free, expiring
//!    after `lock_ttl`), then records `E` in each of its tag sets, then computes.
//!    A tag invalidation detaches the whole tag set in one step (`RENAME`) and
//!    removes every member's entry together with its lease. One that detaches
//!    before the record cannot see the lease, but the computation has not
//!    started yet; one that detaches after it revokes the lease. (Recording
//!    *before* taking the lease would be wrong: an invalidation could carry the
//!    record away before the computation starts, and later invalidations would
//!    no longer find it.)
//! 3. With the lease it computes, renewing the lease (and its tag records)
//!    every third of `lock_ttl`, then stores with one atomic step that writes
//!    only if its token still holds the lease, frees the lease and announces
//!    the store. An invalidation in between removed the lease: the store is
//!    refused, so no value computed before an invalidation outlives it.
//! 4. Without the lease it waits: woken by the store announcement (Redis
//!    pub/sub, one subscriber per cache), re-checking every
//!    [`FALLBACK_RECHECK`] in case an announcement was lost. When the lease is
//!    gone without a value (the holder died and its lease expired, or it was
//!    revoked) a waiter takes the lease itself. After `wait` it computes
//!    without storing.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use crate::backend::{Backend, Store};

pub(crate) mod waiters;

/// How often a waiter re-checks the store when no announcement arrives.
pub(crate) const FALLBACK_RECHECK: Duration = Duration::from_millis(500);

/// A lease token: unique across processes (a per-process random seed and a counter).
pub(crate) fn new_token() -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let local = 0u8;
        let entropy = format!(
            "{}:{nanos}:{:p}:{:?}",
            std::process::id(),
            &local,
            std::thread::current().id()
        );
        xxhash_rust::xxh3::xxh3_64(entropy.as_bytes())
    });
    format!("{seed:016x}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether a flight's leader is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Landing {
    InFlight,
    Landed,
}

/// In-process coalescing: at most one leader per key.
///
/// Followers get no value from their leader, only the news that it is done; they
/// then read the store. The leader may have stored *before* an invalidation that
/// returned before a follower joined: handing that value over would serve it
/// after the invalidation, reading the store does not.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    inflight: Mutex<std::collections::HashMap<String, watch::Receiver<Landing>>>,
}

/// A caller's part in a flight.
pub(crate) enum Role {
    Leader(Pilot),
    Follower(watch::Receiver<Landing>),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Role {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(receiver) = inflight.get(key) {
            if *receiver.borrow() == Landing::InFlight {
                return Role::Follower(receiver.clone());
            }
        }
        let (sender, receiver) = watch::channel(Landing::InFlight);
        inflight.insert(key.to_owned(), receiver);
        Role::Leader(Pilot {
            flights: Arc::clone(self),
            key: key.to_owned(),
            sender,
        })
    }
}

/// A follower's wait for its leader to be done (or cancelled), until `deadline`.
pub(crate) async fn follow(mut receiver: watch::Receiver<Landing>, deadline: Instant) -> Result<(), WaitTimeout> {
    let landed = receiver.wait_for(|landing| *landing == Landing::Landed);
    match tokio::time::timeout_at(deadline.into(), landed).await {
        Ok(_) => Ok(()),
        Err(_) => Err(WaitTimeout),
    }
}

/// The leader's handle; dropping it — done or cancelled — releases the followers.
pub(crate) struct Pilot {
    flights: Arc<Flights>,
    key: String,
    sender: watch::Sender<Landing>,
}

impl Drop for Pilot {
    fn drop(&mut self) {
        {
            let mut inflight = self.flights.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight
                .get(&self.key)
                .is_some_and(|r| r.same_channel(&self.sender.subscribe()))
            {
                inflight.remove(&self.key);
            }
        }
        self.sender.send_replace(Landing::Landed);
    }
}

/// What one entry's computation needs to know to record, lease and store.
pub(crate) struct Plan<'a> {
    pub(crate) store: &'a Store,
    pub(crate) entry: &'a str,
    pub(crate) tag_keys: Vec<String>,
    /// How long the entry lives in the store (fresh + stale, clamped).
    pub(crate) lifetime: Duration,
    /// The ceiling on every TTL (`CACHE_MAX_TTL`).
    pub(crate) ceiling: Duration,
    pub(crate) lease_ttl: Duration,
    /// When this call stops waiting for another's computation and computes
    /// itself: one deadline for the whole call, however it waits.
    pub(crate) deadline: Instant,
}

impl Plan<'_> {
    /// Records the entry in its tag sets (again: it may have been pruned, or its
    /// set expired or been detached by an invalidation, meanwhile).
    pub(crate) async fn register(&self) -> crate::Result<()> {
        if self.tag_keys.is_empty() {
            return Ok(());
        }
        // The latest the entry can expire, counted from now: a store needs the
        // lease, taken or renewed before this record and lasting `lease_ttl`,
        // and the entry then lives `lifetime`. Members are pruned after it, and
        // a set lives as long as its longest-lived member (within the ceiling).
        let member_lifetime = self.lifetime.saturating_add(self.lease_ttl);
        self.store
            .register(self.entry, &self.tag_keys, member_lifetime, self.ceiling)
            .await
    }

    /// Tries for the lease; with it, records the entry in its tag sets. On
    /// `Ok(true)` the caller may compute.
    pub(crate) async fn acquire(&self, token: &str, steal: bool) -> crate::Result<bool> {
        match self.store.acquire_lease(self.entry, token, self.lease_ttl, steal).await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(error) => {
                // The request may still run after our timeout (a paused server): free
                // what it may take, or every caller would wait out the lease.
                let _ = self.store.release_lease(self.entry, token).await;
                return Err(error);
            }
        }
        if let Err(error) = self.register().await {
            let _ = self.store.release_lease(self.entry, token).await;
            return Err(error);
        }
        Ok(true)
    }

    /// Runs `computation` while renewing the lease (and the tag records) every
    /// third of its TTL. Renewal failures are logged; the store will tell.
    pub(crate) async fn hold<T>(&self, token: &str, computation: impl Future<Output = T>) -> T {
        let mut computation = pin!(computation);
        let period = (self.lease_ttl / 3).max(Duration::from_millis(10));
        let mut renewal = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                output = &mut computation => return output,
                _ = renewal.tick() => {
                    match self.store.renew_lease(self.entry, token, self.lease_ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::debug!(target: "aside", entry = self.entry,
                            "lease lost while computing (invalidated or expired); the result will not be stored"),
                        Err(error) => tracing::debug!(target: "aside", entry = self.entry, %error, "lease renewal failed"),
                    }
                    if let Err(error) = self.register().await {
                        tracing::debug!(target: "aside", entry = self.entry, %error, "tag renewal failed");
                    }
                }
            }
        }
    }

    /// Re-records the entry (it may have been pruned or expired meanwhile), then
    /// stores it if `token` still holds the lease.
    pub(crate) async fn store(&self, token: &str, bytes: Bytes, ttl: Duration) -> crate::Result<bool> {
        self.register().await?;
        self.store.store_leased(self.entry, token, bytes, ttl).await
    }

    /// Waits for another caller's computation of the entry: `Ok(Some(value))` when
    /// a value `accept` takes is stored, `Ok(None)` when the lease is gone without
    /// one (take it), `Err(WaitTimeout)` when `wait` ran out.
    pub(crate) async fn wait_for_value<T>(
        &self,
        accept: impl Fn(Bytes) -> Option<T>,
    ) -> Result<Option<T>, WaitTimeout> {
        let deadline = self.deadline;
        let registration = self.store.waiters().register(self.entry);
        let left = deadline.saturating_duration_since(Instant::now());
        self.store.listen(left.min(Duration::from_millis(250))).await;
        loop {
            let mut woken = pin!(registration.notify().notified());
            woken.as_mut().enable();
            // Check after registering, so a store in between is not missed.
            if let Some(value) = self.store.get(self.entry).await.ok().flatten().and_then(&accept) {
                return Ok(Some(value));
            }
            if let Ok(false) = self.store.lease_held(self.entry).await {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitTimeout);
            }
            let _ = tokio::time::timeout(left.min(FALLBACK_RECHECK), woken).await;
        }
    }
}

/// `wait` ran out before another caller's value arrived.
#[derive(Debug)]
pub(crate) struct WaitTimeout;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique() {
        let tokens: std::collections::HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 1000);
    }

    #[tokio::test]
    async fn one_leader_per_key_and_followers_wait_for_it() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(pilot) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(receiver) = flights.join("k") else {
            panic!("second caller follows")
        };
        assert!(matches!(flights.join("other"), Role::Leader(_)));
        let follower = tokio::spawn(follow(receiver, Instant::now() + Duration::from_secs(60)));
        tokio::task::yield_now().await;
        assert!(!follower.is_finished(), "followers wait while the leader flies");
        drop(pilot);
        assert!(follower.await.unwrap().is_ok());
        assert!(matches!(flights.join("k"), Role::Leader(_)), "a landed flight is gone");
    }

    #[tokio::test]
    async fn followers_stop_waiting_at_their_deadline() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(_pilot) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(receiver) = flights.join("k") else {
            panic!("second caller follows")
        };
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(follow(receiver, deadline).await.is_err());
    }
}
