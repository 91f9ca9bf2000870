//! How a Redis store removes entries: one key, a tag's detached sets, a
//! pattern's `SCAN` matches, or soft expiries — in batches over many keys at
//! once (transactions on one node, scripts grouped by hash slot on a cluster),
//! several in flight, each announcing what it removed; and how an invalidation
//! that could not be delivered is sent again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, FutureExt, Stream, StreamExt};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, FromRedisValue, RedisResult, RedisWrite, Script, ToRedisArgs};

use super::connection::{resending, Connection};
use super::nodes::{Master, Route};
use super::{lease_key, scripts, RedisStore};
use crate::error::{Error, Result};
use crate::key::companion_key;

/// Invalidation scripts in flight at once.
const INVALIDATION_CONCURRENCY: usize = 64;

/// Entries per invalidation script: with their leases, at most 1,000 keys, so
/// that no script holds Redis up for long.
const ENTRIES_PER_SCRIPT: usize = 500;

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
const TAG_PAGE: usize = 8 * ENTRIES_PER_SCRIPT;

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

/// `entries` in groups whose keys (and leases) share a hash slot on a
/// cluster; one group on a single node.
fn grouped(entries: Vec<String>, cluster: bool) -> Vec<Vec<String>> {
    if !cluster {
        return vec![entries];
    }
    let mut slots: std::collections::HashMap<Slot, Vec<String>> = std::collections::HashMap::new();
    for entry in entries {
        slots.entry(Slot::for_key(&entry)).or_default().push(entry);
    }
    slots.into_values().collect()
}

/// The lease key of an entry, written straight into a command's buffer
/// (the same bytes as [`lease_key`]).
struct LeaseOf<'a>(&'a str);

impl ToRedisArgs for LeaseOf<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        // Writing to the command's own buffer cannot fail.
        let _ = arg
            .write_all(b"{")
            .and_then(|()| arg.write_all(self.0.as_bytes()))
            .and_then(|()| arg.write_all(b"}:lease"));
    }
}

/// The batch script that removes `entries`, and with `leases` their leases
/// too, with its `EVALSHA`: KEYS the entries (then their leases), ARGV their
/// count (with leases) and `channel`. Built in one buffer, without a copy of
/// each key per step as `Script::invoke_async` makes.
fn batch_command(entries: &[String], leases: bool, channel: &str) -> (&'static Script, Cmd) {
    let (script, per_entry) = if leases {
        (&*scripts::INVALIDATE_BATCH, 2)
    } else {
        (&*scripts::DELETE_BATCH, 1)
    };
    let keys = per_entry * entries.len();
    let mut cmd = Cmd::with_capacity(
        5 + keys,
        64 + entries
            .iter()
            .map(|entry| per_entry * (entry.len() + 16))
            .sum::<usize>(),
    );
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    for entry in entries {
        cmd.arg(entry);
    }
    if leases {
        for entry in entries {
            cmd.arg(LeaseOf(entry));
        }
        cmd.arg(entries.len());
    }
    cmd.arg(channel);
    (script, cmd)
}

/// The removal of `entries` (and, with `leases`, of their leases) as one
/// transaction: `MULTI`, `DEL` of the entries, `DEL` of their leases, `PUBLISH`
/// of the entries as a JSON array, `EXEC`. What [`scripts::INVALIDATE_BATCH`]
/// and [`scripts::DELETE_BATCH`] do, as atomically, for about a third less of
/// Redis's time: no Lua values are made of the keys (measured on 500-entry
/// batches: 440–480 µs against 720–870 µs a script).
fn batch_transaction(entries: &[String], leases: bool, channel: &str) -> redis::Pipeline {
    let mut transaction = redis::pipe();
    transaction.atomic().cmd("DEL").arg(entries);
    if leases {
        let deletion = transaction.cmd("DEL");
        for entry in entries {
            deletion.arg(LeaseOf(entry));
        }
        deletion.ignore();
    }
    let announced = serde_json::to_string(entries).unwrap_or_default();
    transaction.cmd("PUBLISH").arg(channel).arg(announced).ignore();
    transaction
}

/// Whether an aborted transaction was refused only because the user may not
/// `PUBLISH` on the channel (ACL without channel rights).
fn refused_announcement(error: &redis::RedisError) -> bool {
    error.clone().into_server_errors().is_some_and(|errors| {
        !errors.is_empty()
            && errors.iter().all(|(_, refused)| {
                refused.code() == "NOPERM" && refused.details().is_some_and(|details| details.contains("channel"))
            })
    })
}

/// Runs `cmd`, an `EVALSHA` of `script`, loading the script first if the
/// server does not have it (as `Script::invoke_async` does).
async fn evalsha<T: FromRedisValue>(script: &Script, cmd: &Cmd, conn: &mut Connection) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        answer => answer,
    }
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

    /// The nodes a `SCAN` must walk: every master of a cluster (`Some`), or
    /// the one server (`None`).
    async fn scan_nodes(&self) -> Result<Vec<Option<Arc<Master>>>> {
        Ok(match self.connection().await? {
            Connection::Single(_) | Connection::Sentinel(..) => vec![None],
            Connection::Cluster(conn, _) => self
                .background
                .enter(self.breakers.read_map(&conn, self.op_timeout))
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        })
    }

    /// One `SCAN` step on `node` (a cluster's master; `None`: the one server):
    /// the next cursor and the keys matching `pattern`.
    async fn scan_step(&self, node: Option<&Master>, pattern: &str, cursor: u64) -> Result<(u64, Vec<String>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT);
        let Some(master) = node else {
            return self.run("SCAN", Route::Any, &scan).await;
        };
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
        })
    }

    /// Every key matching `pattern` on `node`, one `SCAN` step an item; the
    /// next step is asked for as soon as the item is taken. Ends after the
    /// last step or a failed one.
    fn scan_steps<'a>(
        &'a self,
        node: Option<&'a Master>,
        pattern: &'a str,
    ) -> impl Stream<Item = Result<Vec<String>>> + Send + 'a {
        stream::unfold(Some(0), move |cursor| async move {
            match self.scan_step(node, pattern, cursor?).await {
                Ok((next, keys)) => Some((Ok(keys), (next != 0).then_some(next))),
                Err(error) => Some((Err(error), None)),
            }
        })
    }

    /// `entries` in groups whose keys (and leases) share a hash slot: one group
    /// on a single node.
    pub(super) async fn by_slot(&self, entries: Vec<String>) -> Result<Vec<Vec<String>>> {
        let cluster = matches!(self.connection().await?, Connection::Cluster(..));
        Ok(grouped(entries, cluster))
    }

    /// Removes `entries` (sharing a hash slot) and their leases: one
    /// transaction on a single node ([`batch_transaction`]), one
    /// [`scripts::INVALIDATE_BATCH`] on a cluster or for a user who may not
    /// publish; returns how many entries existed.
    async fn remove_batch(&self, entries: Vec<String>) -> Result<u64> {
        let entries = &entries;
        // Idempotent (deletes only): one that timed out — its request lost
        // while the cluster client follows a slot being moved — is sent again.
        let mut attempt = 1;
        let route = Route::Key(entries.first().map_or("", String::as_str));
        loop {
            let sent = self
                .call("invalidate batch", route, |conn| self.batch(conn, entries, true))
                .await;
            match sent {
                Err(Error::Timeout { .. }) if attempt < BATCH_ATTEMPTS => attempt += 1,
                sent => break sent,
            }
        }
    }

    /// Sends one batch removal of `entries` (with `leases`, of their leases
    /// too) on `conn`: as a transaction on a single node (unless the user was
    /// found unable to publish), else as the batch script
    /// ([`batch_command`]). The count of `entries` that existed.
    async fn batch(&self, mut conn: Connection, entries: &[String], leases: bool) -> RedisResult<u64> {
        // A cluster keeps the script: a transaction that meets a slot being
        // moved is refused whole, where the client follows a script's redirect.
        let single = matches!(conn, Connection::Single(_) | Connection::Sentinel(..));
        if single && !self.announce_refused.load(std::sync::atomic::Ordering::Relaxed) {
            match batch_transaction(entries, leases, &self.channel)
                .query_async::<(u64,)>(&mut conn)
                .await
            {
                Ok((removed,)) => return Ok(removed),
                // Refused whole, nothing ran: sent again as the script, whose
                // announcement may fail alone, and whose other refusals (a
                // replica's `READONLY` mid-failover) are the errors the
                // callers' retries know.
                Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort) => {
                    if refused_announcement(&error) {
                        self.announcement_refused();
                    }
                }
                Err(error) => return Err(error),
            }
        }
        let (script, cmd) = batch_command(entries, leases, &self.channel);
        evalsha(script, &cmd, &mut conn).await
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

    /// Deletes entries sharing a hash slot (not their leases) and announces
    /// them: one transaction on a single node, else one
    /// [`scripts::DELETE_BATCH`]; returns how many existed.
    async fn delete_batch(&self, keys: Vec<String>) -> Result<u64> {
        let keys = &keys;
        let route = Route::Key(keys.first().map_or("", String::as_str));
        self.call("delete batch", route, |conn| self.batch(conn, keys, false))
            .await
    }

    /// Empties one detached tag set — this invalidation's, or one another left
    /// (cut short, or still running) — then deletes it and drops it from the
    /// tag's pending list; returns how many entries existed.
    ///
    /// Nothing is added to or removed from a detached set until it is deleted
    /// whole, once every member's entry and lease are gone: whoever reads it
    /// meanwhile finds every member, ranks stay put, and the set is read a page
    /// at a time by rank, the next page while the scripts of the previous run.
    /// An invalidation cut short leaves the set listed, and the next one
    /// removes all of it again (deleting twice is harmless).
    pub(super) async fn empty_detached(&self, detached: &str, pending: &str) -> Result<u64> {
        let cluster = matches!(self.connection().await?, Connection::Cluster(..));
        let pages = self.pages(detached);
        let batches = pages.flat_map(move |page| {
            let batches: Vec<Result<Vec<String>>> = match page {
                Ok(members) => chunked(grouped(members, cluster), ENTRIES_PER_SCRIPT)
                    .into_iter()
                    .map(Ok)
                    .collect(),
                Err(error) => vec![Err(error)],
            };
            stream::iter(batches)
        });
        let removed = batches
            .map(|batch| async move { self.remove_batch(batch?).await })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .fold(Ok(0), sum_removed)
            .await?;
        self.finish_detached(detached, pending).await?;
        Ok(removed)
    }

    /// The members of a detached set, [`TAG_PAGE`] an item by rank; the next
    /// page is asked for as soon as the item is taken. A short page is the
    /// last (a set another invalidation deleted meanwhile was emptied by it
    /// before); so is a failed read.
    fn pages<'a>(&'a self, detached: &'a str) -> impl Stream<Item = Result<Vec<String>>> + Send + 'a {
        stream::unfold(Some(0), move |from| async move {
            let from = from?;
            let mut read = redis::cmd("ZRANGE");
            read.arg(detached).arg(from).arg(from + TAG_PAGE - 1);
            let page: Result<Vec<String>> = self.run("ZRANGE", Route::Key(detached), &read).await;
            let next = matches!(&page, Ok(members) if members.len() == TAG_PAGE).then_some(from + TAG_PAGE);
            Some((page, next))
        })
    }

    /// Deletes an emptied detached set and drops it from the tag's pending list.
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
            read.arg(tag_key).arg(from).arg(from + TAG_PAGE - 1);
            let members: Vec<String> = self.run("ZRANGE", Route::Key(tag_key), &read).await?;
            let last = members.len() < TAG_PAGE;
            if !members.is_empty() {
                expired += self.expire_entries(members).await?;
            }
            if last {
                return Ok(expired);
            }
            from += TAG_PAGE;
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
        // On each node, leases first, then entries: a computation that stores
        // while the lease scan runs has its entry in place before the entry
        // scan starts, and one that stores later is found by the lease scan and
        // revoked (its batch deletes the entry too, should the store come
        // first). One pass over both could miss both: the lease visited after
        // the store, the entry before it. An entry and its lease share a node,
        // so the nodes run side by side, and each found batch is removed while
        // the scan goes on. A lease the entry scan could meet was taken after
        // this began, by a computation that started after it: the entry scan
        // only deletes entries.
        let nodes = self.scan_nodes().await?;
        let cluster = nodes.iter().any(Option::is_some);
        let leases = lease_key(pattern);
        let leases = &leases;
        let per_node = nodes.iter().map(|node| {
            let node = node.as_deref();
            let leased = self.scan_steps(node, leases).map(|step| {
                step.map(|keys| {
                    let entries = keys
                        .iter()
                        .filter_map(|lease| lease.strip_prefix('{')?.strip_suffix("}:lease"))
                        .map(str::to_owned)
                        .collect();
                    (Found::Leased, entries)
                })
            });
            let stored = self
                .scan_steps(node, pattern)
                .map(|step| step.map(|keys| (Found::Stored, keys)));
            leased.chain(stored).boxed()
        });
        stream::select_all(per_node)
            .flat_map(move |step| {
                let batches: Vec<Result<(Found, Vec<String>)>> = match step {
                    Ok((found, keys)) => {
                        let size = match found {
                            Found::Leased => ENTRIES_PER_SCRIPT,
                            Found::Stored => 2 * ENTRIES_PER_SCRIPT,
                        };
                        chunked(grouped(keys, cluster), size)
                            .into_iter()
                            .map(|keys| Ok((found, keys)))
                            .collect()
                    }
                    Err(error) => vec![Err(error)],
                };
                stream::iter(batches)
            })
            .map(|batch| async move {
                match batch? {
                    (Found::Leased, entries) => self.remove_batch(entries).await,
                    (Found::Stored, entries) => self.delete_batch(entries).await,
                }
            })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .fold(Ok(0), sum_removed)
            .await
    }
}

/// What an `invalidate_pattern` scan found: entries with a lease (a
/// computation in flight), or stored entries.
#[derive(Clone, Copy)]
enum Found {
    Leased,
    Stored,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments `cmd` sends, the command's name first.
    fn args_of(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// `LeaseOf` writes what `lease_key` builds: the batch revokes the very
    /// leases computations take.
    #[test]
    fn a_batch_names_each_entry_then_its_lease_as_lease_key_does() {
        let entries = vec!["aside:f:v1.1:x".to_owned(), "aside:g:v1.1:y".to_owned()];
        let (_, cmd) = batch_command(&entries, true, "aside~stored");
        let args = args_of(&cmd);
        let expected: Vec<Vec<u8>> = [
            "EVALSHA".to_owned(),
            scripts::INVALIDATE_BATCH.get_hash().to_owned(),
            "4".to_owned(),
            entries[0].clone(),
            entries[1].clone(),
            lease_key(&entries[0]),
            lease_key(&entries[1]),
            "2".to_owned(),
            "aside~stored".to_owned(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect();
        assert_eq!(args, expected);
    }

    /// Without leases, the deletion script: KEYS the entries, ARGV the channel.
    #[test]
    fn a_deletion_names_the_entries_and_the_channel() {
        let entries = vec!["aside:f:v1.1:x".to_owned(), "aside:g:v1.1:y".to_owned()];
        let (script, cmd) = batch_command(&entries, false, "aside~stored");
        assert_eq!(script.get_hash(), scripts::DELETE_BATCH.get_hash());
        let args = args_of(&cmd);
        let expected: Vec<Vec<u8>> = [
            "EVALSHA",
            scripts::DELETE_BATCH.get_hash(),
            "2",
            &entries[0],
            &entries[1],
            "aside~stored",
        ]
        .into_iter()
        .map(|arg| arg.as_bytes().to_vec())
        .collect();
        assert_eq!(args, expected);
    }
}
