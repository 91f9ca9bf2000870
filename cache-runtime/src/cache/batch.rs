//! Batch calls: [`Cache::get_many_or_compute`], one entry per id, read
//! together, the missing ones computed together under their own leases.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::span::{self, call_span, within};
use super::Cache;
use crate::backend::Backend;
use crate::entry;
use crate::flow::{after, lease_of, terms, Shared};
use crate::key::Key;
use crate::lock::lease::{Held, Lease, Waited};
use crate::policy::Policy;
use crate::redact::Redacted;
use crate::stats::{Event, Probe};

impl Cache {
    /// Cache-aside for many ids at once: one entry per id, read with one
    /// request (`MGET`; on a cluster one per hash slot, in parallel), and one
    /// call of `compute` with only the ids that are missing. Each computed
    /// value is stored under its own key, as [`get_or_compute`](Cache::get_or_compute)
    /// would store it, with the policy's `ttl`, `stale` window and tags.
    ///
    /// `keys` pairs each id with its key. `compute` gets the missing ids and
    /// returns a map of their values:
    ///
    /// - an id **absent from the map** (say a row that does not exist) is not
    ///   stored and is absent from the result too, so the next call asks for it
    ///   again;
    /// - entries of the map for ids that were not asked for are ignored;
    /// - an `Err` is returned as is, and nothing of that computation is stored.
    ///
    /// The result holds every id that was a hit or was computed. A stale entry
    /// (within the policy's `stale` window) counts as a hit: served, not
    /// refreshed. Counters are per id: a hit, a stale hit or a miss each, and a
    /// computation for every id a computation produced a value for.
    ///
    /// Errors of the cache never reach the caller: when the store fails, every
    /// id is computed (and nothing stored), as `get_or_compute` fails open.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::collections::HashMap;
    /// use aside::{Cache, Policy};
    ///
    /// let cache = Cache::builder().memory().build().await.unwrap();
    /// let policy = Policy::default().function("users");
    /// let users = |ids: Vec<u64>| async move {
    ///     Ok::<_, std::io::Error>(ids.into_iter().map(|id| (id, format!("user {id}"))).collect::<HashMap<_, _>>())
    /// };
    /// let keys = |ids: &[u64]| ids.iter().map(|&id| (id, format!("user:{id}"))).collect::<Vec<_>>();
    ///
    /// let first = cache.get_many_or_compute(keys(&[1, 2]), &policy, users).await.unwrap();
    /// assert_eq!(first[&2], "user 2");
    ///
    /// // 1 and 2 are hits: the computation gets only 3.
    /// let mut asked = Vec::new();
    /// let second = cache
    ///     .get_many_or_compute(keys(&[1, 2, 3]), &policy, |ids: Vec<u64>| {
    ///         asked.extend(ids.iter().copied());
    ///         users(ids)
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(asked, [3]);
    /// assert_eq!(second.len(), 3);
    /// assert_eq!(cache.stats().function("users").computations, 3);
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    ///
    /// # Concurrent calls on the same ids
    ///
    /// Each missing id is computed once across tasks and processes: a call
    /// takes the leases of its missing ids (as `get_or_compute` takes one),
    /// computes the ids whose leases it got in **one** call of `compute`, and
    /// meanwhile waits for the ids another caller is computing, woken when they
    /// are stored. Its own computation runs while it waits, so two batches
    /// that each wait for the other's ids never block each other.
    ///
    /// `compute` runs a **second** time, for those waited-for ids only, when
    /// their computation ends without a value (it failed, left them out, was
    /// invalidated or cancelled: the call takes their leases over and stores
    /// them) or `wait` runs out (returned, not stored). Hence `FnMut`.
    ///
    /// An invalidation of an id during the computation refuses that id's
    /// store (guarantee 5); the other ids are stored.
    ///
    /// # Errors
    ///
    /// Only the computation's: its `Err`, as is (the ids it leased are freed
    /// for the next caller). Errors of the cache are logged and counted.
    pub async fn get_many_or_compute<I, K, T, E, F, Fut>(
        &self,
        keys: impl IntoIterator<Item = (I, K)>,
        policy: &Policy,
        compute: F,
    ) -> Result<HashMap<I, T>, E>
    where
        I: Eq + Hash + Clone,
        K: Into<Key>,
        T: Serialize + DeserializeOwned,
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<HashMap<I, T>, E>>,
    {
        let probe = self.inner.stats.probe_for(policy);
        let span = call_span!("get_many_or_compute", policy);
        // One entry per id (the last key given for an id wins); ids without a
        // usable key are computed, never stored.
        let mut index: HashMap<I, usize> = HashMap::new();
        let mut entries: Vec<(I, Option<String>)> = Vec::new();
        let mut key_failed = false;
        for (id, key) in keys {
            let entry = match self.usable_key(key, policy) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    if !std::mem::replace(&mut key_failed, true) {
                        tracing::warn!(target: "aside", function = policy.function_name(), %error,
                            "no key for some ids of this batch; computing them without the cache");
                        probe.record(Event::BackendError);
                    }
                    None
                }
            };
            match index.get(&id) {
                Some(&at) => entries[at].1 = entry,
                None => {
                    index.insert(id.clone(), entries.len());
                    entries.push((id, entry));
                }
            }
        }
        let batch = Batch {
            shared: &self.inner.shared,
            policy,
            probe: &probe,
            deadline: after(Instant::now(), policy.wait_limit()),
            compute,
        };
        let result = within(&span, batch.run(entries)).await;
        span::record(&span, "outcome", probe.outcome());
        result
    }
}

/// One batch call: the cache's shared parts, the policy, the stats probe, the
/// deadline of its waits and the computation.
struct Batch<'c, F> {
    shared: &'c Shared,
    policy: &'c Policy,
    probe: &'c Probe<'c>,
    /// When it stops waiting for other callers' computations.
    deadline: Instant,
    compute: F,
}

impl<'c, F> Batch<'c, F> {
    async fn run<I, T, E, Fut>(self, entries: Vec<(I, Option<String>)>) -> Result<HashMap<I, T>, E>
    where
        I: Eq + Hash + Clone,
        T: Serialize + DeserializeOwned,
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<HashMap<I, T>, E>>,
    {
        let (shared, policy, probe) = (self.shared, self.policy, self.probe);
        let mut result = HashMap::with_capacity(entries.len());
        let (keyed, unkeyed): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, entry)| entry.is_some());
        let keyed: Vec<(I, String)> = keyed
            .into_iter()
            .filter_map(|(id, entry)| entry.map(|entry| (id, entry)))
            .collect();
        // Computed without the cache: ids without a key, and every id when the store fails.
        let mut unstored: Vec<I> = unkeyed.into_iter().map(|(id, _)| id).collect();
        for _ in &unstored {
            probe.record(Event::Miss);
        }
        let full: Vec<String> = keyed.iter().map(|(_, entry)| entry.clone()).collect();
        let mut cold: Vec<(I, String)> = Vec::new();
        match shared.store.get_many(&full).await {
            Ok(found) => {
                for ((id, entry), bytes) in keyed.into_iter().zip(found) {
                    let decoded = bytes.and_then(|bytes| shared.codec.decode::<T>(&entry, &bytes, probe));
                    match decoded {
                        Some(found) if found.is_fresh() => {
                            probe.record(Event::Hit);
                            result.insert(id, found.value);
                        }
                        Some(found) if !policy.stale_window().is_zero() => {
                            probe.record(Event::StaleHit);
                            result.insert(id, found.value);
                        }
                        _ => {
                            probe.record(Event::Miss);
                            cold.push((id, entry));
                        }
                    }
                }
            }
            Err(_) => {
                probe.record(Event::BackendError);
                for (id, _) in keyed {
                    probe.record(Event::Miss);
                    unstored.push(id);
                }
            }
        }
        if cold.is_empty() && unstored.is_empty() {
            return Ok(result);
        }
        self.compute_cold(cold, unstored, result).await
    }

    /// Takes the leases of the `cold` ids, computes those it got and the
    /// `unstored` ones in one call while waiting for the others, stores under
    /// each lease, and then computes, in a second call, what the waits did not
    /// bring (storing the ids whose leases it took over).
    async fn compute_cold<I, T, E, Fut>(
        self,
        cold: Vec<(I, String)>,
        mut unstored: Vec<I>,
        mut result: HashMap<I, T>,
    ) -> Result<HashMap<I, T>, E>
    where
        I: Eq + Hash + Clone,
        T: Serialize + DeserializeOwned,
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<HashMap<I, T>, E>>,
    {
        let Batch {
            shared,
            policy,
            probe,
            deadline,
            mut compute,
        } = self;
        let failed = std::sync::atomic::AtomicBool::new(false);
        let step = Step {
            shared,
            policy,
            probe,
            cold: &cold,
            store_failed: &failed,
        };
        let leases: Vec<Lease<'_>> = cold.iter().map(|(_, entry)| lease_of(shared, entry, policy)).collect();
        let taken = join_all(leases.iter().map(Lease::take)).await;
        let mut held: Vec<(usize, Held<'_>)> = Vec::new();
        let mut busy: Vec<usize> = Vec::new();
        let mut found_after = Vec::new();
        for (at, taken) in taken.into_iter().enumerate() {
            let (id, entry) = &cold[at];
            match taken {
                Ok(Some((lease, stored))) => {
                    // Another process may have stored between our read and our lease.
                    match stored.and_then(|bytes| shared.codec.fresh::<T>(entry, &bytes)) {
                        Some(value) => {
                            found_after.push(lease.release());
                            result.insert(id.clone(), value);
                        }
                        None => held.push((at, lease)),
                    }
                }
                Ok(None) => busy.push(at),
                Err(_) => {
                    step.store_failed();
                    unstored.push(id.clone());
                }
            }
        }
        join_all(found_after).await;
        if !busy.is_empty() {
            probe.record(Event::LockWait);
        }

        // This call's own computation, while it waits for the others'.
        let settling = join_all(busy.iter().map(|&at| step.settle::<T>(&leases[at], deadline)));
        let (computed, settled) = tokio::join!(step.compute(&mut compute, &leases, held, unstored), settling);
        result.extend(computed?);

        // What the waits did not bring: computed here, stored under the leases taken over.
        let mut held = Vec::new();
        let mut unstored = Vec::new();
        for (at, settled) in busy.into_iter().zip(settled) {
            let id = cold[at].0.clone();
            match settled {
                Settled::Value(value) => {
                    result.insert(id, value);
                }
                Settled::Held(lease) => held.push((at, lease)),
                Settled::Compute => unstored.push(id),
            }
        }
        result.extend(step.compute(&mut compute, &leases, held, unstored).await?);
        Ok(result)
    }
}

/// The parts of a batch call its steps share.
struct Step<'c, 'b, I> {
    shared: &'c Shared,
    policy: &'c Policy,
    probe: &'c Probe<'c>,
    /// The missing ids with their full keys; indexes into it name them.
    cold: &'b [(I, String)],
    /// Set once the store failed (counted once a call).
    store_failed: &'b std::sync::atomic::AtomicBool,
}

/// How a wait for an id another caller computes ended.
enum Settled<'a, T> {
    /// Its value was stored.
    Value(T),
    /// Its lease was freed without a value, and is ours now.
    Held(Held<'a>),
    /// `wait` ran out, or the store failed: compute it, do not store it.
    Compute,
}

impl<'c, I> Step<'c, '_, I>
where
    I: Eq + Hash + Clone,
{
    /// Counts a failure of the store, once a call.
    fn store_failed(&self) {
        if !self.store_failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.probe.record(Event::BackendError);
        }
    }

    /// Waits for the value of an id whose lease another caller holds, as
    /// `get_or_compute`'s leader does: a lease freed without a value (its
    /// computation failed or left the id out, or the store came between the
    /// read and the check) is taken, and the entry read with it.
    async fn settle<'l, T: Serialize + DeserializeOwned>(
        &self,
        lease: &Lease<'l>,
        deadline: Instant,
    ) -> Settled<'l, T> {
        let (codec, entry) = (&self.shared.codec, lease.entry);
        loop {
            match lease
                .wait_for_value(deadline, |bytes| codec.fresh::<T>(entry, &bytes))
                .await
            {
                Ok(Some(value)) => return Settled::Value(value),
                Ok(None) => match lease.take().await {
                    Ok(Some((held, stored))) => match stored.and_then(|bytes| codec.fresh::<T>(entry, &bytes)) {
                        Some(value) => {
                            held.release().await;
                            return Settled::Value(value);
                        }
                        None => return Settled::Held(held),
                    },
                    Ok(None) => continue,
                    Err(_) => {
                        self.store_failed();
                        return Settled::Compute;
                    }
                },
                Err(Waited::TimedOut) => {
                    self.probe.record(Event::LockTimeout);
                    tracing::debug!(target: "aside", entry = %Redacted(entry),
                        "waited too long for another computation; computing without storing");
                    return Settled::Compute;
                }
                Err(Waited::StoreFailed) => {
                    self.store_failed();
                    return Settled::Compute;
                }
            }
        }
    }

    /// One call of `compute` for the ids whose leases are `held` and the
    /// `unstored` ones, renewing the leases meanwhile; stores each held id
    /// under its lease (or frees it), and returns the values of the asked ids.
    async fn compute<T, E, F, Fut>(
        &self,
        compute: &mut F,
        leases: &[Lease<'_>],
        held: Vec<(usize, Held<'_>)>,
        unstored: Vec<I>,
    ) -> Result<HashMap<I, T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Vec<I>) -> Fut,
        Fut: Future<Output = Result<HashMap<I, T>, E>>,
    {
        let asked: Vec<I> = held
            .iter()
            .map(|(at, _)| self.cold[*at].0.clone())
            .chain(unstored)
            .collect();
        if asked.is_empty() {
            return Ok(HashMap::new());
        }
        let started = Instant::now();
        let renewed: Vec<&Held<'_>> = held.iter().map(|(_, lease)| lease).collect();
        let lease_ttl = leases.first().map_or(Duration::from_secs(1), |lease| lease.ttl);
        let computed = hold_all(&renewed, lease_ttl, compute(asked.clone())).await;
        let took = started.elapsed();
        let mut values = match computed {
            Ok(values) => values,
            Err(error) => {
                computations(self.probe, asked.len(), took);
                join_all(held.into_iter().map(|(_, lease)| lease.release())).await;
                return Err(error);
            }
        };
        computations(
            self.probe,
            asked.iter().filter(|id| values.contains_key(id)).count(),
            took,
        );
        let stores = held.into_iter().map(|(at, lease)| {
            let (id, entry) = &self.cold[at];
            store(
                self.shared,
                self.policy,
                self.probe,
                &leases[at],
                lease,
                entry,
                values.get(id),
            )
        });
        join_all(stores).await;
        let mut answered = HashMap::with_capacity(asked.len());
        for id in asked {
            if let Some(value) = values.remove(&id) {
                answered.insert(id, value);
            }
        }
        Ok(answered)
    }
}

/// Counts `count` computations sharing the time `took`.
fn computations(probe: &Probe<'_>, count: usize, took: Duration) {
    let share = took / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    for _ in 0..count {
        probe.computed(share);
    }
}

/// Runs `computation` while renewing every lease in `leases` (and their tag
/// records) every third of their TTL, as [`Held::hold`] does for one.
async fn hold_all<O>(leases: &[&Held<'_>], ttl: Duration, computation: impl Future<Output = O>) -> O {
    if leases.is_empty() {
        return computation.await;
    }
    let mut computation = pin!(computation);
    let period = (ttl / 3).max(Duration::from_millis(1));
    let mut renewal = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            output = &mut computation => return output,
            _ = renewal.tick() => {
                join_all(leases.iter().map(|lease| lease.renew())).await;
            }
        }
    }
}

/// Stores one computed id under its lease, or frees the lease when the
/// computation gave no value for it or the value cannot be stored.
async fn store<T: Serialize + DeserializeOwned>(
    shared: &Shared,
    policy: &Policy,
    probe: &Probe<'_>,
    terms_of: &Lease<'_>,
    lease: Held<'_>,
    entry: &str,
    value: Option<&T>,
) {
    let Some(value) = value else {
        lease.release().await;
        return;
    };
    let (fresh, lifetime) = terms(policy, &shared.settings, terms_of.lifetime, None);
    let format = shared.codec.format();
    let encoded = shared
        .codec
        .encode(entry, value, fresh, lifetime, |value, fresh| {
            entry::encode_as(value, fresh, format)
        })
        .and_then(|(bytes, ttl)| shared.codec.fits(&bytes).map(|()| (bytes, ttl)));
    match encoded {
        Err(error) => {
            shared.codec.count_unstored(probe, entry, &error);
            lease.release().await;
        }
        Ok((bytes, ttl)) => match lease.store(bytes, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                probe.record(Event::Revoked);
                tracing::debug!(target: "aside", entry = %Redacted(entry),
                    "invalidated while computing; result not stored");
            }
            Err(_) => probe.record(Event::BackendError),
        },
    }
}
