//! How a Redis store removes entries: one key, a tag's detached sets, a
//! pattern's `SCAN` matches, or soft expiries — in scripts over many keys at
//! once (grouped by hash slot on a cluster), several in flight, each announcing
//! what it removed; and how an invalidation that could not be delivered is
//! sent again.

use std::time::Duration;

use futures_util::{stream, FutureExt, StreamExt};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};

use super::connection::{resending, Connection};
use super::nodes::Route;
use super::{lease_key, scripts, RedisStore};
use crate::error::{Error, Result};
use crate::key::companion_key;

/// Invalidation scripts in flight at once.
const INVALIDATION_CONCURRENCY: usize = 64;

/// Entries per invalidation script: with their leases and the detached set,
/// at most 1,000 keys, so that no script holds Redis up for long.
const ENTRIES_PER_SCRIPT: usize = 499;

/// How often one invalidation batch is sent when it times out.
const BATCH_ATTEMPTS: u32 = 3;

/// How many operation timeouts an invalidation keeps being retried for while
/// the connection is replaced or the breaker probes: see [`RedisStore::delivering`].
const DELIVERY_TIMEOUTS: u32 = 8;

/// The first pause before an invalidation is sent again; doubled up to
/// [`DELIVERY_MAX_PAUSE`].
const DELIVERY_FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The longest such pause.
const DELIVERY_MAX_PAUSE: Duration = Duration::from_millis(80);

/// Members read from a detached tag set at once, removed by concurrent scripts.
const TAG_BATCH: usize = 8 * ENTRIES_PER_SCRIPT;

/// Matches of a pattern gathered over `SCAN` steps before they are removed.
const PATTERN_BATCH: usize = 4 * ENTRIES_PER_SCRIPT;

/// Keys asked of each `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// Adds up the batches of one invalidation, keeping the first failure. Every
/// batch runs to its end even after one failed, so the others' entries are
/// gone when the invalidation is run again, and a batch that is the breaker's
/// probe is not cancelled half-way (which would count as a failed probe).
async fn sum_removed(sum: Result<u64>, removed: Result<u64>) -> Result<u64> {
    Ok(sum? + removed?)
}

/// Each group cut into chunks of at most `size`.
fn chunked(groups: Vec<Vec<String>>, size: usize) -> Vec<Vec<String>> {
    groups
        .into_iter()
        .flat_map(|group| {
            let mut chunks = Vec::new();
            let mut group = group.into_iter().peekable();
            while group.peek().is_some() {
                chunks.push(group.by_ref().take(size).collect::<Vec<_>>());
            }
            chunks
        })
        .collect()
}

/// A batch handler for [`RedisStore::scan_each`].
trait AsyncBatch {
    fn batch(&mut self, keys: Vec<String>) -> impl std::future::Future<Output = Result<u64>> + Send;
}

impl RedisStore {
    /// Runs an invalidation until it is served or cannot be: one that timed
    /// out, or met the breaker opened by that timeout, is run again — on the
    /// new connection that replaced a wedged one, or once the breaker's probe
    /// is back — for up to [`DELIVERY_TIMEOUTS`] operation timeouts. An
    /// invalidation the caller must retry by hand is one it can lose; against
    /// a Redis that is down, the breaker's backoff ends the retries at once.
    ///
    /// Every invalidation is idempotent (a tag's is resumed from its pending
    /// list), so running one again removes what the first run had not; what
    /// a run that failed had removed is not in the count returned.
    ///
    /// `on`: the route of the one key the invalidation touches, whose breaker
    /// must let it through; `None` when it touches keys anywhere (a tag's or a
    /// pattern's), and every breaker must.
    pub(super) async fn delivering<T, F, Fut>(&self, on: Option<Route<'_>>, mut invalidate: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.op_timeout * DELIVERY_TIMEOUTS;
        let mut pause = DELIVERY_FIRST_PAUSE;
        loop {
            let result = invalidate().await;
            let now = tokio::time::Instant::now();
            let reachable = || match on {
                Some(route) => self.breakers.reachable_within(route, deadline - now),
                None => self.breakers.all_reachable_within(deadline - now),
            };
            let retry = match &result {
                Err(Error::Timeout { .. } | Error::CircuitOpen) if now < deadline => reachable(),
                Err(error) if now < deadline && self.switching_master(error) => reachable(),
                _ => false,
            };
            if !retry {
                return result;
            }
            tracing::debug!(target: "aside", redis = %self.target, "invalidation not served; sending it again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(DELIVERY_MAX_PAUSE);
        }
    }

    /// Every key matching `pattern` on every master, one `SCAN` batch at a time.
    async fn scan_each(&self, pattern: &str, mut each: impl AsyncBatch) -> Result<u64> {
        let nodes = match self.connection().await? {
            Connection::Single(_) | Connection::Sentinel(..) => vec![None],
            Connection::Cluster(conn, _) => self
                .background
                .enter(self.breakers.read_map(&conn, self.op_timeout))
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let mut total = 0;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) = match &node {
                    None => self.run("SCAN", Route::Any, &scan).await?,
                    Some(master) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: master.host().to_owned(),
                            port: master.port(),
                        });
                        let value = self
                            .call("SCAN", Route::Node(master.host(), master.port()), |conn| async move {
                                match conn {
                                    Connection::Cluster(conn, patience) => {
                                        resending(patience, &conn, |mut conn| {
                                            let (scan, routing) = (scan.clone(), routing.clone());
                                            async move { conn.route_command(scan, routing).await }.boxed()
                                        })
                                        .await
                                    }
                                    Connection::Single(mut conn) => scan.query_async(&mut conn).await,
                                    Connection::Sentinel(mut conn, _) => scan.query_async(&mut conn).await,
                                }
                            })
                            .await?;
                        redis::from_redis_value(value).map_err(|e| Error::Redis {
                            op: "SCAN",
                            source: e.into(),
                        })?
                    }
                };
                total += each.batch(keys).await?;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Invalidates many entries (and their leases) in scripts over many keys at
    /// once, grouped by hash slot on a cluster; returns how many existed.
    pub(super) async fn invalidate_entries(&self, entries: Vec<String>) -> Result<u64> {
        let groups = self.by_slot(entries).await?;
        self.remove_batches(groups, None).await
    }

    /// `entries` in groups whose keys (and leases) share a hash slot: one group
    /// on a single node.
    pub(super) async fn by_slot(&self, entries: Vec<String>) -> Result<Vec<Vec<String>>> {
        if !matches!(self.connection().await?, Connection::Cluster(..)) {
            return Ok(vec![entries]);
        }
        let mut slots: std::collections::HashMap<Slot, Vec<String>> = std::collections::HashMap::new();
        for entry in entries {
            slots.entry(Slot::for_key(&entry)).or_default().push(entry);
        }
        Ok(slots.into_values().collect())
    }

    /// Removes each group's entries and leases with [`scripts::INVALIDATE_BATCH`]
    /// (at most [`ENTRIES_PER_SCRIPT`] a script, several in flight), dropping them
    /// from the detached set too when given with the tag's pending list (single
    /// node: they share a slot); returns how many entries existed.
    pub(super) async fn remove_batches(&self, groups: Vec<Vec<String>>, detached: Option<(&str, &str)>) -> Result<u64> {
        stream::iter(chunked(groups, ENTRIES_PER_SCRIPT))
            .map(|entries| async move {
                let leases: Vec<String> = entries.iter().map(|entry| lease_key(entry)).collect();
                let (entries, leases, channel) = (&entries, &leases, &self.channel);
                // Idempotent (deletes, and a removal from the detached set): one
                // that timed out — its request lost while the cluster client
                // follows a slot being moved — is sent again.
                let mut attempt = 1;
                let route = Route::Key(entries.first().map_or("", String::as_str));
                loop {
                    let sent = self
                        .call("invalidate batch", route, |mut conn| async move {
                            let mut invocation = scripts::INVALIDATE_BATCH.prepare_invoke();
                            invocation.key(entries).key(leases);
                            if let Some((detached, pending)) = detached {
                                invocation.key(detached).key(pending);
                            }
                            invocation.arg(entries.len()).arg(channel);
                            invocation.invoke_async::<u64>(&mut conn).await
                        })
                        .await;
                    match sent {
                        Err(Error::Timeout { .. }) if attempt < BATCH_ATTEMPTS => attempt += 1,
                        sent => break sent,
                    }
                }
            })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .fold(Ok(0), sum_removed)
            .await
    }

    /// Makes entries stale at once and revokes their leases with
    /// [`scripts::EXPIRE_BATCH`], grouped by hash slot, at most
    /// [`ENTRIES_PER_SCRIPT`] a script, several in flight; returns how many existed.
    pub(super) async fn expire_entries(&self, entries: Vec<String>) -> Result<u64> {
        let groups = self.by_slot(entries).await?;
        stream::iter(chunked(groups, ENTRIES_PER_SCRIPT))
            .map(|entries| async move {
                let leases: Vec<String> = entries.iter().map(|entry| lease_key(entry)).collect();
                let (entries, leases, channel) = (&entries, &leases, &self.channel);
                let route = Route::Key(entries.first().map_or("", String::as_str));
                self.call("expire batch", route, |mut conn| async move {
                    let mut invocation = scripts::EXPIRE_BATCH.prepare_invoke();
                    invocation
                        .key(entries)
                        .key(leases)
                        .arg(entries.len())
                        .arg(crate::entry::MAGIC)
                        .arg(crate::entry::STAMP_AT)
                        .arg(channel)
                        .arg(&crate::entry::PLAIN_FORMATS[..]);
                    invocation.invoke_async::<u64>(&mut conn).await
                })
                .await
            })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .fold(Ok(0), sum_removed)
            .await
    }

    /// Deletes entries (not their leases) with plain `DEL`s of at most 1,000
    /// keys sharing a hash slot, several in flight; returns how many existed.
    pub(super) async fn delete_entries(&self, entries: Vec<String>) -> Result<u64> {
        let groups = self.by_slot(entries).await?;
        stream::iter(chunked(groups, 2 * ENTRIES_PER_SCRIPT))
            .map(|keys| async move {
                let (keys, channel) = (&keys, &self.channel);
                let route = Route::Key(keys.first().map_or("", String::as_str));
                self.call("delete batch", route, |mut conn| async move {
                    let mut invocation = scripts::DELETE_BATCH.prepare_invoke();
                    invocation.key(keys).arg(channel);
                    invocation.invoke_async::<u64>(&mut conn).await
                })
                .await
            })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .fold(Ok(0), sum_removed)
            .await
    }

    /// Empties one detached tag set — this invalidation's, or one another left
    /// (cut short, or still running) — and drops it from the tag's pending list;
    /// returns how many entries existed. Members leave the set only once their
    /// entries and leases are gone, so whoever reads it finds every member not
    /// yet removed, and a set is never written again once detached.
    pub(super) async fn empty_detached(&self, detached: &str, pending: &str) -> Result<u64> {
        let single = !matches!(self.connection().await?, Connection::Cluster(..));
        let mut removed = 0;
        loop {
            let mut read = redis::cmd("ZRANGE");
            read.arg(detached).arg(0).arg(TAG_BATCH - 1);
            let members: Vec<String> = self.run("ZRANGE", Route::Key(detached), &read).await?;
            if members.is_empty() {
                self.finish_detached(detached, pending).await?;
                break;
            }
            // Nothing is added to a detached set: a short read took all that is left.
            let last = members.len() < TAG_BATCH;
            if single {
                // The scripts also drop the set from the pending list once it is empty.
                removed += self.remove_batches(vec![members], Some((detached, pending))).await?;
            } else {
                let mut forget = redis::cmd("ZREM");
                forget.arg(detached).arg(&members);
                removed += self.invalidate_entries(members).await?;
                let _: u64 = self.run("ZREM", Route::Key(detached), &forget).await?;
                if last {
                    self.finish_detached(detached, pending).await?;
                }
            }
            if last {
                break;
            }
        }
        Ok(removed)
    }

    /// Drops an emptied detached set from the tag's pending list.
    pub(super) async fn finish_detached(&self, detached: &str, pending: &str) -> Result<()> {
        let _: i64 = self
            .call("finish detached tag", Route::Key(detached), |mut conn| async move {
                scripts::FINISH_DETACHED
                    .key(detached)
                    .key(pending)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// [`Backend::expire_tag`](crate::backend::Backend::expire_tag) without the tier's eviction.
    pub(super) async fn expire_tag_pages(&self, tag_key: &str) -> Result<u64> {
        // The members stay in the set (their entries still carry the tag); it is
        // read a page at a time, each page expired before the next is read.
        let mut expired = 0;
        let mut from = 0;
        loop {
            let mut read = redis::cmd("ZRANGE");
            read.arg(tag_key).arg(from).arg(from + TAG_BATCH - 1);
            let members: Vec<String> = self.run("ZRANGE", Route::Key(tag_key), &read).await?;
            let last = members.len() < TAG_BATCH;
            if !members.is_empty() {
                expired += self.expire_entries(members).await?;
            }
            if last {
                return Ok(expired);
            }
            from += TAG_BATCH;
        }
    }

    pub(super) async fn invalidate_entry_once(&self, entry: &str) -> Result<bool> {
        let lease = lease_key(entry);
        let removed: i64 = self
            .call("invalidate", Route::Key(entry), |mut conn| async move {
                scripts::INVALIDATE_ENTRY
                    .key(entry)
                    .key(&lease)
                    .arg(&self.channel)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(removed == 1)
    }

    pub(super) async fn invalidate_tag_once(&self, tag_key: &str) -> Result<u64> {
        // Detach the whole set in one step: every member registered before now —
        // whatever its score — is removed below, registrations from now on start a
        // new set, and the loop ends however busy the tag is. Sets detached before
        // and not yet emptied (by an invalidation cut short, or one still running)
        // are emptied too before this one returns.
        let pending = companion_key(tag_key, "pending");
        let detached = companion_key(tag_key, &format!("invalidating:{}", crate::backend::new_token()));
        let (pending, detached) = (&pending, &detached);
        let sets: Vec<String> = self
            .call("detach tag", Route::Key(tag_key), |mut conn| async move {
                scripts::DETACH_TAG
                    .key(tag_key)
                    .key(pending)
                    .key(detached)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let mut removed = 0;
        for set in &sets {
            removed += self.empty_detached(set, pending).await?;
        }
        Ok(removed)
    }

    pub(super) async fn invalidate_pattern_once(&self, pattern: &str) -> Result<u64> {
        /// Matches gathered over `SCAN` steps and removed [`PATTERN_BATCH`] at a
        /// time (the rest by `flush`), so each removal runs a few large scripts.
        struct Gathered<'a> {
            store: &'a RedisStore,
            /// Whether the keys scanned are leases, `{E}:lease`, standing for `E`.
            leases: bool,
            entries: Vec<String>,
        }
        impl Gathered<'_> {
            async fn flush(&mut self) -> Result<u64> {
                let entries = std::mem::take(&mut self.entries);
                if entries.is_empty() {
                    return Ok(0);
                }
                if self.leases {
                    self.store.invalidate_entries(entries).await
                } else {
                    self.store.delete_entries(entries).await
                }
            }
        }
        impl AsyncBatch for &mut Gathered<'_> {
            async fn batch(&mut self, keys: Vec<String>) -> Result<u64> {
                if self.leases {
                    let entries = keys
                        .iter()
                        .filter_map(|lease| lease.strip_prefix('{')?.strip_suffix("}:lease"))
                        .map(str::to_owned);
                    self.entries.extend(entries);
                } else {
                    self.entries.extend(keys);
                }
                if self.entries.len() < PATTERN_BATCH {
                    return Ok(0);
                }
                self.flush().await
            }
        }
        // Leases first, then entries: a computation that stores while the lease
        // scan runs has its entry in place before the entry scan starts, and one
        // that stores later is found by the lease scan and revoked. Either is
        // removed before this returns, whenever its batch runs. A lease the entry
        // scan could meet was taken after this began, by a computation that
        // started after it: the entry scan only deletes entries.
        let mut leases = Gathered {
            store: self,
            leases: true,
            entries: Vec::new(),
        };
        let mut removed = self.scan_each(&lease_key(pattern), &mut leases).await?;
        removed += leases.flush().await?;
        let mut entries = Gathered {
            store: self,
            leases: false,
            entries: Vec::new(),
        };
        removed += self.scan_each(pattern, &mut entries).await?;
        removed += entries.flush().await?;
        Ok(removed)
    }
}
