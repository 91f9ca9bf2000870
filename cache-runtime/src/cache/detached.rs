//! Detached calls: [`Cache::get_or_compute_detached`], whose computation may
//! outlive its caller, so that refreshes run in the background (refresh ahead,
//! stale values served at once, soft timeouts).

use std::future::Future;
use std::time::SystemTime;

use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::span::{self, call_span, within};
use super::Cache;
use crate::entry;
use crate::flow::{Call, Found};
use crate::key::Key;
use crate::lock::flight::Role;
use crate::lock::REFRESH_BACKOFF;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::stats::Event;
use crate::CacheStatus;

impl Cache {
    /// [`get_or_compute`](Cache::get_or_compute) for a computation that owns
    /// what it uses (`'static`), so that refreshes can run in a task of their
    /// own, on the caller's runtime:
    ///
    /// - **Refresh ahead** ([`Policy::refresh_ahead`]): a hit late in its
    ///   entry's fresh life returns at once and starts one background refresh,
    ///   so a key that keeps being read never goes cold.
    /// - **Stale values** ([`Policy::stale`]): every caller of a stale entry,
    ///   the one whose call starts the refresh included, gets the old value at
    ///   once; the refresh runs in the background.
    /// - **Soft timeout** ([`Policy::soft_timeout`]): the caller that starts
    ///   the refresh of a stale entry waits this long for the new value, then
    ///   takes the old one; the computation finishes and stores in the background.
    ///
    /// A cold key is computed by the caller as `get_or_compute` does. This is
    /// what `#[cached]` calls when `refresh_ahead` or `soft_timeout` is given.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use aside::{Cache, Plain, Policy};
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::new(Duration::from_secs(1)).stale(Duration::from_secs(60));
    /// let call = |n: u32| cache.get_or_compute_detached("n", &policy, move || async move { Plain(n) });
    /// assert_eq!(call(1).await, Plain(1)); // miss: computed by this caller
    /// tokio::time::sleep(Duration::from_millis(1100)).await;
    /// assert_eq!(call(2).await, Plain(1)); // stale: served at once, refreshed in the background
    /// tokio::time::sleep(Duration::from_millis(100)).await;
    /// assert_eq!(call(3).await, Plain(2)); // the refreshed value
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    ///
    /// # Concurrent calls on the same key
    ///
    /// As for `get_or_compute`: one computation per cold key across tasks and
    /// processes. A background refresh runs once per entry in this process, and
    /// once across processes (under the entry's lease); an invalidation during
    /// it refuses its store. A refresh that fails keeps the lease a moment, so
    /// the callers that follow get the old value instead of each trying again.
    ///
    /// # Panics
    ///
    /// When a refresh must start and the caller is not inside a tokio runtime.
    pub async fn get_or_compute_detached<O, F, Fut>(&self, key: impl Into<Key>, policy: &Policy, compute: F) -> O
    where
        O: Outcome + Send + 'static,
        O::Value: Send,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = O> + Send + 'static,
    {
        self.get_or_compute_detached_with_status(key, policy, compute).await.0
    }

    /// [`get_or_compute_detached`](Cache::get_or_compute_detached), and how the
    /// call was answered.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use aside::{Cache, CacheStatus, Plain, Policy};
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::new(Duration::from_secs(1)).stale(Duration::from_secs(60));
    /// let call = |n: u32| cache.get_or_compute_detached_with_status("n", &policy, move || async move { Plain(n) });
    /// assert_eq!(call(1).await, (Plain(1), CacheStatus::Miss));
    /// tokio::time::sleep(Duration::from_millis(1100)).await;
    /// assert_eq!(call(2).await, (Plain(1), CacheStatus::Stale));
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    pub async fn get_or_compute_detached_with_status<O, F, Fut>(
        &self,
        key: impl Into<Key>,
        policy: &Policy,
        compute: F,
    ) -> (O, CacheStatus)
    where
        O: Outcome + Send + 'static,
        O::Value: Send,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = O> + Send + 'static,
    {
        let has_stale = !policy.stale_window().is_zero();
        if policy.refresh_ahead_fraction().is_none() && !has_stale {
            // Nothing would run in the background.
            return self.get_or_compute_with_status(key, policy, compute).await;
        }
        let probe = self.inner.stats.probe_for(policy);
        let span = call_span!("get_or_compute", policy);
        let Ok(entry) = self.call_key(key.into(), policy, &probe, &span) else {
            let outcome = within(&span, Self::uncached(&probe, compute)).await;
            return (outcome, self.status_of(&probe));
        };
        let call = Call::new(&self.inner.shared, &entry, policy, &probe, compute);
        let found = within(&span, call.read()).await;
        let (outcome, status) = match found {
            Found::Fresh(fresh) if policy.due_ahead(fresh.fresh_until_ms, entry::unix_ms(SystemTime::now())) => {
                probe.record(Event::Hit);
                self.spawn_refresh(entry.clone(), policy, call.into_compute(), None);
                (O::from_cached(fresh.value), CacheStatus::Hit)
            }
            Found::Stale(old) => {
                let (reply, refreshed) = oneshot::channel();
                let started = self.spawn_refresh(entry.clone(), policy, call.into_compute(), Some(reply));
                let fresh = match policy.soft_timeout_limit() {
                    Some(limit) if started && !limit.is_zero() => {
                        tokio::time::timeout(limit, refreshed).await.ok().and_then(Result::ok)
                    }
                    _ => None,
                };
                match fresh.filter(|outcome| outcome.cacheable(policy).is_some() || outcome.declined().is_some()) {
                    Some(outcome) => (outcome, CacheStatus::Miss),
                    None => {
                        probe.record(Event::StaleHit);
                        (O::from_cached(old), CacheStatus::Stale)
                    }
                }
            }
            found => {
                let outcome = within(&span, call.answer(found)).await;
                (outcome, self.status_of(&probe))
            }
        };
        span::record(&span, "outcome", probe.outcome());
        (outcome, status)
    }

    /// Starts a background refresh of `entry` unless one runs in this process;
    /// `true` if it started. Its result goes to `reply`, if given.
    fn spawn_refresh<O, F, Fut>(
        &self,
        entry: String,
        policy: &Policy,
        compute: F,
        reply: Option<oneshot::Sender<O>>,
    ) -> bool
    where
        O: Outcome + Send + 'static,
        O::Value: Send,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = O> + Send + 'static,
    {
        let Role::Leader(pilot) = self.inner.shared.refreshes.join(&entry) else {
            return false;
        };
        let cache = self.clone();
        let policy = policy.clone();
        let span = call_span!("refresh_in_background", policy);
        tokio::spawn(
            async move {
                // Dropped when the refresh ends, however it ends: the next one may start.
                let _pilot = pilot;
                let probe = cache.inner.stats.probe_for(&policy);
                let refreshed = Call::new(&cache.inner.shared, &entry, &policy, &probe, compute)
                    .refresh_in_background()
                    .await;
                let settled = refreshed
                    .as_ref()
                    .is_some_and(|outcome| outcome.cacheable(&policy).is_some() || outcome.declined().is_some());
                if let (Some(reply), Some(outcome)) = (reply, refreshed) {
                    // The caller may have stopped waiting (its soft timeout): the value is stored anyway.
                    let _ = reply.send(outcome);
                }
                if !settled {
                    // Busy elsewhere, failed, or the store failed: this process's
                    // callers do not start another for a while (each would cost a
                    // lease request), as the lease keeps other processes back.
                    tokio::time::sleep(REFRESH_BACKOFF).await;
                }
            }
            .instrument(span),
        );
        true
    }
}
