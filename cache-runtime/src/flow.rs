//! One cached call, from the first read to the store. Its state — the cache's
//! shared parts, the policy, the stats probe, the entry's lease terms and the
//! computation — is one value, [`Call`], and each step of the protocol
//! described in [`lock`](crate::lock) is a method of it.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, Store};
use crate::codec::Codec;
use crate::config::Settings;
use crate::entry::{self, Entry};
use crate::key::Key;
use crate::lock::flight::{Flights, Landing, Pilot, Role};
use crate::lock::lease::{Held, Lease, Waited};
use crate::lock::waiters::Waiters;
use crate::lock::REFRESH_BACKOFF;
use crate::outcome::Outcome;
use crate::policy::{clamp, jittered, Policy, MIN_TTL};
use crate::redact::Redacted;
use crate::share::{Decode, InProcess, Sharing};
use crate::stats::{Event, Probe};

/// What every call of one cache shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<Store>,
    pub(crate) codec: Codec,
    pub(crate) waiters: Arc<Waiters>,
    /// Callers computing or waiting for a cold entry.
    flights: Arc<Flights>,
    /// Callers that gave up waiting for another process, computing without storing.
    fallbacks: Arc<Flights>,
    /// Background refreshes (refresh ahead, detached stale refreshes): at most
    /// one per entry in this process.
    pub(crate) refreshes: Arc<Flights>,
}

impl Shared {
    pub(crate) fn new(settings: Settings, store: Store, waiters: Arc<Waiters>) -> Shared {
        Shared {
            codec: Codec::new(&settings),
            settings,
            store: Arc::new(store),
            waiters,
            flights: Arc::default(),
            fallbacks: Arc::default(),
            refreshes: Arc::default(),
        }
    }
}

/// One call of [`get_or_compute`](crate::Cache::get_or_compute) or
/// [`refresh`](crate::Cache::refresh) for the full key `entry`.
pub(crate) struct Call<'c, F, S = Decode> {
    shared: &'c Shared,
    policy: &'c Policy,
    probe: &'c Probe<'c>,
    entry: &'c str,
    /// When the call started — after a fresh entry kept in this process was
    /// looked for, which needs no clock (see [`lookup`]): which shared values
    /// it may take (see [`Landing::value_for`]), and its [`deadline`](Call::deadline).
    started: Instant,
    waited: bool,
    compute: F,
    /// How a hit on an in-process entry hands out its decoded value.
    share: S,
}

impl<'c, O, F, Fut> Call<'c, F>
where
    O: Outcome,
    F: FnOnce() -> Fut,
    Fut: Future<Output = O>,
{
    /// A call whose hits decode the entry (see [`sharing`](Call::sharing)).
    pub(crate) fn new(
        shared: &'c Shared,
        entry: &'c str,
        policy: &'c Policy,
        probe: &'c Probe<'c>,
        compute: F,
    ) -> Self {
        let started = Instant::now();
        Call {
            shared,
            policy,
            probe,
            entry,
            started,
            waited: false,
            compute,
            share: Decode,
        }
    }

    /// The same call, handing out the values of in-process entries as `share` says.
    pub(crate) fn sharing<S: Sharing<O::Value>>(self, share: S) -> Call<'c, F, S> {
        Call {
            shared: self.shared,
            policy: self.policy,
            probe: self.probe,
            entry: self.entry,
            started: self.started,
            waited: self.waited,
            compute: self.compute,
            share,
        }
    }
}

impl<'c, O, F, Fut, S> Call<'c, F, S>
where
    O: Outcome,
    F: FnOnce() -> Fut,
    Fut: Future<Output = O>,
    S: Sharing<O::Value>,
{
    /// The entry's lease terms: built when the call needs the lease, which a hit never does.
    fn lease(&self) -> Lease<'c> {
        lease_of(self.shared, self.entry, self.policy)
    }

    /// When the call stops waiting for another's computation: one deadline for
    /// the whole call, however it waits.
    fn deadline(&self) -> Instant {
        after(self.started, self.policy.wait_limit())
    }

    /// `get_or_compute` once [`kept_fresh`] did not answer: a hit, a stale
    /// value, or a miss. `held`: the entry this process holds, if any.
    async fn lookup_past(self, held: Option<InProcess>) -> O {
        let found = self.read_from(Start::Looked(held)).await;
        self.answer(found).await
    }

    /// What the store holds for the entry.
    pub(crate) fn read(&self) -> impl Future<Output = Found<O::Value>> + 'c {
        self.read_from(Start::Here)
    }

    /// What the store holds for the entry, the read starting at `start`. The
    /// future borrows the call's parts, not the call (whose computation need
    /// not be `Sync`).
    fn read_from(&self, start: Start) -> impl Future<Output = Found<O::Value>> + 'c {
        let (shared, entry, policy, probe, share) = (self.shared, self.entry, self.policy, self.probe, self.share);
        async move {
            let held = match start {
                Start::Here => match kept_fresh(shared, entry, share, probe) {
                    Ok(kept) => return Found::Fresh(kept),
                    Err(held) => held,
                },
                Start::Looked(held) => held,
            };
            let stored = match &held {
                Some(held) => Ok(Some(held.resident.bytes().clone())),
                None => shared.store.get(entry).await,
            };
            match stored {
                Ok(Some(bytes)) => match shared.codec.decode::<O::Value>(entry, &bytes, probe) {
                    Some(found) if found.is_fresh() => {
                        if let Some(held) = held {
                            held.resident.keep(share, &found);
                            if held.copy {
                                probe.record(Event::L1Hit);
                            }
                        }
                        Found::Fresh(found)
                    }
                    Some(found) if !policy.stale_window().is_zero() => Found::Stale(found.value),
                    _ => Found::Cold,
                },
                Ok(None) => Found::Cold,
                Err(_) => Found::Failed,
            }
        }
    }

    /// Answers the call from what [`read`](Call::read) found: the value of a
    /// fresh entry, or a refresh of a stale one, or a miss.
    pub(crate) async fn answer(self, found: Found<O::Value>) -> O {
        match found {
            Found::Fresh(entry) => {
                self.probe.record(Event::Hit);
                O::from_cached(entry.value)
            }
            // The cold paths are boxed: the lease protocol makes their futures large,
            // and every hit would otherwise carry (and move) that size.
            Found::Stale(old) => Box::pin(self.revalidate(old)).await,
            Found::Cold => {
                self.probe.record(Event::Miss);
                Box::pin(self.miss()).await
            }
            Found::Failed => {
                // The store is failing: no lock, no store, just the value.
                self.probe.record(Event::BackendError);
                self.probe.record(Event::Miss);
                self.compute_unstored(None).await
            }
        }
    }

    /// A background refresh (refresh ahead, or a stale entry refreshed while
    /// its callers are served the old value): computes and stores under the
    /// lease if the lease is free and the store holds no newer value than the
    /// one that started the refresh. `Some` with the value when it computed or
    /// found one; `None` when another computation holds the lease or the
    /// store failed. A refresh that fails keeps the lease for
    /// [`REFRESH_BACKOFF`], so the callers that
    /// follow are served the old value instead of each trying again.
    pub(crate) async fn refresh_in_background(self) -> Option<O> {
        match self.lease().take().await {
            Ok(Some((held, stored))) => {
                let now = entry::unix_ms(std::time::SystemTime::now());
                let newer = stored
                    .and_then(|bytes| self.shared.codec.read::<O::Value>(self.entry, &bytes))
                    .filter(|entry| entry.is_fresh() && !self.policy.due_ahead(entry.fresh_until_ms, now));
                if let Some(entry) = newer {
                    held.release().await;
                    return Some(O::from_cached(entry.value));
                }
                Some(self.compute_leased(held, None, true).await)
            }
            Ok(None) => None,
            Err(_) => {
                self.probe.record(Event::BackendError);
                None
            }
        }
    }

    /// `refresh`: takes the lease even from a computation in flight, computes and stores.
    pub(crate) async fn overwrite(self) -> O {
        match self.lease().steal().await {
            Ok(held) => self.compute_leased(held, None, false).await,
            Err(_) => {
                self.probe.record(Event::BackendError);
                self.compute_unstored(None).await
            }
        }
    }

    /// A cold key: one leader per process (the others follow it), one lease
    /// holder across processes.
    async fn miss(mut self) -> O {
        loop {
            match self.shared.flights.join(self.entry) {
                Role::Leader(pilot) => return self.lead(pilot).await,
                Role::Follower(follower) => {
                    self.note_wait();
                    let landing = match follower.landing(Some(self.deadline())).await {
                        Ok(landing) => landing,
                        Err(_) => return self.give_up().await,
                    };
                    if let Some(value) = landing
                        .value_for(self.started)
                        .and_then(|bytes| self.decode_shared(bytes))
                    {
                        return O::from_cached(value);
                    }
                    match landing {
                        // Not cacheable: each follower computes its own, at once,
                        // rather than one after another.
                        Landing::Computed { value: None, .. } => return self.compute_unstored(None).await,
                        Landing::GaveUp => return self.give_up().await,
                        _ => {}
                    }
                    // Read what the leader stored, if it is still there; otherwise
                    // (revoked, cancelled) lead or follow again.
                    match self.shared.store.get(self.entry).await {
                        Ok(Some(bytes)) => {
                            if let Some(entry) = self.shared.codec.decode::<O::Value>(self.entry, &bytes, self.probe) {
                                if entry.is_fresh() {
                                    return O::from_cached(entry.value);
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            self.probe.record(Event::BackendError);
                            return self.compute_unstored(None).await;
                        }
                    }
                }
            }
        }
    }

    /// This process's leader: takes the lease and computes, or waits for the
    /// process that holds it.
    async fn lead(mut self, pilot: Pilot) -> O {
        loop {
            match self.lease().take().await {
                Ok(Some((held, stored))) => {
                    // Another process may have stored between our miss and our lease.
                    if let Some(value) =
                        stored.and_then(|bytes| self.shared.codec.fresh::<O::Value>(self.entry, &bytes))
                    {
                        held.release().await;
                        return O::from_cached(value);
                    }
                    return self.compute_leased(held, Some(pilot), false).await;
                }
                Ok(None) => {
                    self.note_wait();
                    let (codec, entry) = (&self.shared.codec, self.entry);
                    let accept = |bytes: Bytes| codec.fresh::<O::Value>(entry, &bytes);
                    match self.lease().wait_for_value(self.deadline(), accept).await {
                        Ok(Some(value)) => return O::from_cached(value),
                        Ok(None) => continue,
                        Err(Waited::TimedOut) => {
                            pilot.land(Landing::GaveUp);
                            return self.give_up().await;
                        }
                        Err(Waited::StoreFailed) => {
                            self.probe.record(Event::BackendError);
                            return self.compute_unstored(Some(pilot)).await;
                        }
                    }
                }
                Err(_) => {
                    self.probe.record(Event::BackendError);
                    return self.compute_unstored(Some(pilot)).await;
                }
            }
        }
    }

    /// A stale entry: one caller (cluster-wide) recomputes; everyone else, and
    /// that caller when its recomputation fails, gets the old value.
    async fn revalidate(self, old: O::Value) -> O {
        let (probe, entry) = (self.probe, self.entry);
        match self.lease().take().await {
            Ok(Some((held, stored))) => {
                // Someone may have refreshed it between our read and our lease.
                if let Some(value) = stored.and_then(|bytes| self.shared.codec.fresh::<O::Value>(entry, &bytes)) {
                    held.release().await;
                    return O::from_cached(value);
                }
                let policy = self.policy;
                let outcome = self.compute_leased(held, None, true).await;
                // A declined value (`unless`) is a value all the same: the
                // caller gets it, and the stale entry stays for the others.
                if outcome.cacheable(policy).is_some() || outcome.declined().is_some() {
                    return outcome;
                }
                tracing::debug!(target: "aside", entry = %Redacted(entry), "refresh failed; serving the stale value");
            }
            Ok(None) => {}
            Err(_) => probe.record(Event::BackendError),
        }
        probe.record(Event::StaleHit);
        O::from_cached(old)
    }

    /// Computes while holding the lease (the entry is recorded in its tag sets
    /// already), then stores if the lease still holds (or frees it when there is
    /// nothing to store), and lands the flight. With `backoff` (a stale value is
    /// at hand), a result that failed keeps the lease for
    /// [`REFRESH_BACKOFF`] instead of freeing it.
    async fn compute_leased(self, held: Held<'c>, pilot: Option<Pilot>, backoff: bool) -> O {
        let started = Instant::now();
        let outcome = held.hold((self.compute)()).await;
        self.probe.computed(started.elapsed());
        let encoded = outcome.cacheable(self.policy).map(|value| {
            let format = self.shared.codec.format();
            let (fresh, lifetime) = terms(
                self.policy,
                &self.shared.settings,
                // Fields, not `self.lease()`: the computation was moved out.
                lease_of(self.shared, self.entry, self.policy).lifetime,
                outcome.fresh_for(),
            );
            self.shared
                .codec
                .encode(self.entry, value, fresh, lifetime, |value, fresh| {
                    entry::encode_as(value, fresh, format)
                })
        });
        // Which followers may take the value: those that called before `valid_from`.
        let mut valid_from = started;
        let shared = match encoded {
            None => {
                // Declined (`unless`): not stored, but this process's followers
                // take it rather than compute again — all of them, as if they had
                // read it from the store, when the lease shows that no
                // invalidation of the entry began until now.
                let declined = share(self.shared, self.entry, self.policy, outcome.declined(), pilot.as_ref());
                if declined.is_some() {
                    let checked = Instant::now();
                    if held.still_held().await {
                        valid_from = checked;
                    }
                }
                if backoff && outcome.declined().is_none() {
                    held.back_off(REFRESH_BACKOFF).await;
                } else {
                    held.release().await;
                }
                declined
            }
            Some(Err(error)) => {
                self.shared.codec.count_unstored(self.probe, self.entry, &error);
                held.release().await;
                None
            }
            Some(Ok((bytes, ttl))) => {
                match self.shared.codec.fits(&bytes) {
                    Err(error) => {
                        self.shared.codec.count_unstored(self.probe, self.entry, &error);
                        held.release().await;
                    }
                    Ok(()) => match held.store(bytes.clone(), ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            self.probe.record(Event::Revoked);
                            tracing::debug!(target: "aside", entry = %Redacted(self.entry),
                                "invalidated while computing; result not stored");
                        }
                        Err(_) => self.probe.record(Event::BackendError),
                    },
                }
                Some(bytes)
            }
        };
        if let Some(pilot) = pilot {
            pilot.land(Landing::Computed {
                value: shared,
                started: valid_from,
            });
        }
        outcome
    }

    /// `wait` ran out: compute without the lease, and so without storing. The
    /// callers of this process that give up on the same entry share one such
    /// computation.
    async fn give_up(self) -> O {
        self.probe.record(Event::LockTimeout);
        tracing::debug!(target: "aside", entry = %Redacted(self.entry),
            "waited too long for another computation; computing without storing");
        match self.shared.fallbacks.join(self.entry) {
            Role::Leader(pilot) => self.compute_unstored(Some(pilot)).await,
            Role::Follower(follower) => {
                // That computation runs here, in this process: wait for it whole.
                if let Ok(landing) = follower.landing(None).await {
                    if let Some(value) = landing
                        .value_for(self.started)
                        .and_then(|bytes| self.decode_shared(bytes))
                    {
                        return O::from_cached(value);
                    }
                }
                self.compute_unstored(None).await
            }
        }
    }

    /// Computes without the lease and stores nothing (fail-open, or a wait that
    /// ran out); the value goes to the flight's followers that may take it.
    async fn compute_unstored(self, pilot: Option<Pilot>) -> O {
        let started = Instant::now();
        let outcome = (self.compute)().await;
        self.probe.computed(started.elapsed());
        if let Some(pilot) = pilot {
            let value = outcome.cacheable(self.policy).or(outcome.declined());
            let value = share(self.shared, self.entry, self.policy, value, Some(&pilot));
            pilot.land(Landing::Computed { value, started });
        }
        outcome
    }

    /// The computation, for a call that hands it to a task of its own.
    pub(crate) fn into_compute(self) -> F {
        self.compute
    }

    /// Counts the first wait of the call.
    fn note_wait(&mut self) {
        if !std::mem::replace(&mut self.waited, true) {
            self.probe.record(Event::LockWait);
        }
    }

    /// A value another caller of this process computed and handed over.
    fn decode_shared(&self, bytes: &Bytes) -> Option<O::Value> {
        self.shared
            .codec
            .read::<O::Value>(self.entry, bytes)
            .map(|entry| entry.value)
    }
}

/// The terms of the lease of the full key `entry` under `policy`.
pub(crate) fn lease_of<'c>(shared: &'c Shared, entry: &'c str, policy: &'c Policy) -> Lease<'c> {
    let settings = &shared.settings;
    let lifetime = clamp(policy.ttl().saturating_add(policy.stale_window()), settings.max_ttl).ttl;
    Lease {
        store: &shared.store,
        waiters: &shared.waiters,
        entry,
        namespace: &settings.namespace,
        tags: policy.tag_list(),
        lifetime: lifetime.max(Duration::from_millis(1)),
        ceiling: settings.max_ttl,
        ttl: clamp(policy.lock_lease(), settings.max_ttl).ttl,
    }
}

/// `get_or_compute`: a fresh entry kept decoded in this process answers at
/// once — no clock read, no lease terms, no [`Call`]; any other goes through
/// a call: a hit decoding the bytes, a stale value, or a miss. `start`: whether
/// this process's memory is still to be looked in ([`look_here`] may have).
pub(crate) async fn lookup<O, F, Fut, S>(
    shared: &Shared,
    entry: &str,
    policy: &Policy,
    probe: &Probe<'_>,
    share: S,
    compute: F,
    start: Start,
) -> O
where
    O: Outcome,
    F: FnOnce() -> Fut,
    Fut: Future<Output = O>,
    S: Sharing<O::Value>,
{
    let held = match start {
        Start::Here => match kept_fresh(shared, entry, share, probe) {
            Ok(kept) => return hit(probe, kept),
            Err(held) => held,
        },
        Start::Looked(held) => held,
    };
    Call::new(shared, entry, policy, probe, compute)
        .sharing(share)
        .lookup_past(held)
        .await
}

/// [`lookup`]'s first step for a key not rendered yet: the full key written
/// into a buffer the thread reuses, which is all a hit in this process needs
/// it for. `None` when the store keeps nothing in process, or the key does not
/// render (the call that renders it reports why); otherwise what [`kept_fresh`]
/// found, and for anything but a hit the full key, which the call goes on with.
pub(crate) fn look_here<T, S: Sharing<T>>(shared: &Shared, key: &Key, share: S, probe: &Probe<'_>) -> Option<Here<T>> {
    if !shared.store.keeps_in_process() {
        return None;
    }
    let (namespace, key_version) = (&shared.settings.namespace, shared.settings.key_version);
    key.with_rendered(namespace, key_version, |entry| {
        kept_fresh(shared, entry, share, probe).map_err(|held| (held, entry.to_owned()))
    })
    .ok()
}

/// What [`look_here`] found: a hit, or what the process holds of the entry
/// and the entry's full key.
pub(crate) type Here<T> = Result<Entry<T>, (Option<InProcess>, String)>;

/// A hit on a value kept decoded in this process, counted.
pub(crate) fn hit<O: Outcome>(probe: &Probe<'_>, kept: Entry<O::Value>) -> O {
    probe.record(Event::Hit);
    O::from_cached(kept.value)
}

/// The entry this process holds (the memory store's own, or the tiered
/// store's copy) if it is fresh and its value is kept decoded, handed out as
/// `share` says (a tiered copy's counts as an L1 hit). Otherwise `Err` with
/// the entry held, whose bytes are to be decoded, or `None`: the store is asked.
fn kept_fresh<T, S: Sharing<T>>(
    shared: &Shared,
    entry: &str,
    share: S,
    probe: &Probe<'_>,
) -> Result<Entry<T>, Option<InProcess>> {
    let Some(held) = shared.store.in_process(entry) else {
        return Err(None);
    };
    match held.resident.take_fresh(share, held.looked_at) {
        Some(kept) => {
            if held.copy {
                probe.record(Event::L1Hit);
            }
            Ok(kept)
        }
        None => Err(Some(held)),
    }
}

/// Where a call's read starts.
pub(crate) enum Start {
    /// In this process's memory ([`kept_fresh`]).
    Here,
    /// Past it: what it holds of the entry, if anything.
    Looked(Option<InProcess>),
}

/// What the store holds for one entry, as a call sees it.
pub(crate) enum Found<T> {
    /// A fresh entry.
    Fresh(Entry<T>),
    /// A stale value within the policy's `stale` window.
    Stale(T),
    /// No usable entry: none, expired, or one that does not decode (counted).
    Cold,
    /// The store failed or is skipped.
    Failed,
}

/// `value` encoded (and signed or sealed, with keys) for the flight's
/// followers, if it has any.
fn share<T: serde::Serialize + DeserializeOwned>(
    shared: &Shared,
    key: &str,
    policy: &Policy,
    value: Option<&T>,
    pilot: Option<&Pilot>,
) -> Option<Bytes> {
    if !pilot.is_some_and(Pilot::has_followers) {
        return None;
    }
    let fresh = policy.ttl().max(Duration::from_millis(1));
    shared.codec.pack(key, value?, fresh).ok()
}

/// How long a computed value is fresh, and how long it is kept: the policy's
/// `ttl` and `lifetime`, or the value's own TTL (`ttl_from`) raised to
/// [`MIN_TTL`], then, with a jitter, less a random share of it (after the
/// ceiling, so that entries at the ceiling are spread too), plus the stale window.
/// `fresh_for` is the result's own TTL ([`Outcome::fresh_for`]), if any.
/// The codec clamps both to the ceiling.
pub(crate) fn terms(
    policy: &Policy,
    settings: &Settings,
    lifetime: Duration,
    fresh_for: Option<Duration>,
) -> (Duration, Duration) {
    let jitter = policy.jitter_units(settings.ttl_jitter);
    let fresh = match (fresh_for, jitter) {
        (None, 0) => return (policy.ttl(), lifetime),
        (None, _) => policy.ttl(),
        (Some(asked), _) => asked.max(MIN_TTL),
    };
    if jitter == 0 || fresh.is_zero() {
        // The codec clamps (and logs) what is above the ceiling, and refuses a zero `ttl`.
        return (fresh, fresh.saturating_add(policy.stale_window()));
    }
    let fresh = jittered(fresh.min(settings.max_ttl), jitter).max(Duration::from_millis(1));
    (
        fresh,
        clamp(fresh.saturating_add(policy.stale_window()), settings.max_ttl).ttl,
    )
}

/// `start + wait`, or a date far enough away when that does not fit in an
/// `Instant` (`Policy::wait(Duration::MAX)`).
pub(crate) fn after(start: Instant, wait: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    start
        .checked_add(wait.min(CENTURY))
        .or_else(|| start.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_that_does_not_fit_in_an_instant_is_far_away() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(365 * 86_400));
        assert_eq!(after(now, Duration::from_secs(10)), now + Duration::from_secs(10));
    }
}
