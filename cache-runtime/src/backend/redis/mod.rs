//! The Redis store: one multiplexed connection per cache (redis-rs
//! `ConnectionManager`, or a `cluster-async` connection for Redis Cluster),
//! shared by every call and re-established by redis-rs when it breaks, plus one
//! pub/sub subscriber that wakes waiters when entries are stored.

mod notify;
mod scripts;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use super::Backend;
use crate::breaker::Breaker;
use crate::config::{RedisTarget, Settings};
use crate::error::{Error, Result};
use crate::key::companion_key;
use crate::lock::waiters::Waiters;

/// Invalidation scripts in flight at once.
const INVALIDATION_CONCURRENCY: usize = 64;
/// Entries per invalidation script: with their leases and the detached set,
/// at most 1,000 keys, so that no script holds Redis up for long.
const ENTRIES_PER_SCRIPT: usize = 499;
/// Members read from a detached tag set at once, removed by concurrent scripts.
const TAG_BATCH: usize = 8 * ENTRIES_PER_SCRIPT;
/// Matches of a pattern gathered over `SCAN` steps before they are removed.
const PATTERN_BATCH: usize = 4 * ENTRIES_PER_SCRIPT;
/// Keys asked of each `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// The connection of a store: single node or cluster. Both are cheap clones of a
/// shared multiplexed connection.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

pub(crate) struct RedisStore {
    target: RedisTarget,
    tls_ca: Option<Arc<Vec<u8>>>,
    op_timeout: Duration,
    connection: Arc<OnceCell<Connection>>,
    breaker: Breaker,
    channel: String,
    waiters: Arc<Waiters>,
    listener: notify::Listener,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("op_timeout", &self.op_timeout)
            .field("connected", &self.connection.initialized())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store that connects on first use; the namespace names its announcement channel.
    pub(crate) fn new(target: RedisTarget, settings: &Settings) -> RedisStore {
        let channel = format!("{}~stored", settings.namespace);
        let tls_ca = settings.tls_ca_pem.clone().map(Arc::new);
        let waiters = Arc::new(Waiters::default());
        let urls = match target.cluster_nodes() {
            Some(nodes) => nodes.to_vec(),
            None => vec![target.secret_url().to_owned()],
        };
        let listener = notify::Listener::new(urls, tls_ca.clone(), channel.clone(), Arc::clone(&waiters));
        RedisStore {
            target,
            tls_ca,
            op_timeout: settings.op_timeout,
            connection: Arc::default(),
            breaker: Breaker::default(),
            channel,
            waiters,
            listener,
        }
    }

    /// Connects now (and authenticates), so a bad address or password surfaces early.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.connection())
            .await
            .map_err(|_| Error::Timeout {
                op: "connect",
                after: timeout,
            })?
            .map(|_| ())
    }

    async fn connection(&self) -> Result<Connection> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        // Connect in a task of its own: a caller's operation timeout must not cancel
        // a connection that takes longer than one operation (TLS, a distant server),
        // or a lazily built cache would start over on every call and never connect.
        let cell = Arc::clone(&self.connection);
        let (target, tls_ca, op_timeout) = (self.target.clone(), self.tls_ca.clone(), self.op_timeout);
        let connecting = tokio::spawn(async move {
            cell.get_or_try_init(|| open(&target, tls_ca.as_deref(), op_timeout))
                .await
                .cloned()
        });
        let source = match connecting.await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(source)) => source,
            Err(_) => redis::RedisError::from((redis::ErrorKind::Io, "the connecting task ended early")),
        };
        Err(Error::Connect {
            target: self.target.to_string(),
            source,
        })
    }

    /// Runs `request` on the connection within the operation timeout, through
    /// the circuit breaker.
    async fn call<T, F, Fut>(&self, op: &'static str, request: F) -> Result<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let Some(permit) = self.breaker.allow() else {
            return Err(Error::CircuitOpen);
        };
        let attempt = async {
            let connection = self.connection().await?;
            request(connection).await.map_err(|source| Error::Redis { op, source })
        };
        let result = match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                op,
                after: self.op_timeout,
            }),
        };
        let available = match &result {
            Ok(_) => true,
            Err(error) => !error.is_unavailability(),
        };
        if let Err(error) = &result {
            tracing::debug!(target: "aside", redis = %self.target, op, %error, "redis operation failed");
        }
        permit.record(available, &self.target);
        result
    }

    /// The breaker's state, and how often it opened and skipped.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    async fn run<T: FromRedisValue>(&self, op: &'static str, cmd: &Cmd) -> Result<T> {
        self.call(op, |mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Every key matching `pattern` on every master, one `SCAN` batch at a time.
    async fn scan_each(&self, pattern: &str, mut each: impl AsyncBatch) -> Result<u64> {
        let nodes = match self.connection().await? {
            Connection::Single(_) => vec![None],
            Connection::Cluster(_) => self.masters().await?.into_iter().map(Some).collect(),
        };
        let mut total = 0;
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) = match &node {
                    None => self.run("SCAN", &scan).await?,
                    Some((host, port)) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        let value = self
                            .call("SCAN", |conn| async move {
                                match conn {
                                    Connection::Cluster(mut conn) => conn.route_command(scan, routing).await,
                                    Connection::Single(mut conn) => scan.query_async(&mut conn).await,
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

    /// The (host, port) of every master of the cluster.
    async fn masters(&self) -> Result<Vec<(String, u16)>> {
        let slots: Vec<Value> = self.run("CLUSTER SLOTS", redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut masters = Vec::new();
        for range in slots {
            let Value::Array(fields) = range else {
                continue;
            };
            let Some(Value::Array(master)) = fields.get(2) else {
                continue;
            };
            let host: Option<String> = master.first().and_then(|v| redis::from_redis_value_ref(v).ok());
            let port: Option<u16> = master.get(1).and_then(|v| redis::from_redis_value_ref(v).ok());
            if let (Some(host), Some(port)) = (host, port) {
                if !masters.contains(&(host.clone(), port)) {
                    masters.push((host, port));
                }
            }
        }
        Ok(masters)
    }

    /// Runs a lease script (KEYS: the lease; ARGV: the token and a TTL in ms).
    async fn lease_script(
        &self,
        op: &'static str,
        script: &redis::Script,
        lease: &str,
        token: &str,
        ms: u64,
    ) -> Result<i64> {
        self.call(op, |mut conn| async move {
            script.key(lease).arg(token).arg(ms).invoke_async(&mut conn).await
        })
        .await
    }

    /// Invalidates many entries (and their leases) in scripts over many keys at
    /// once, grouped by hash slot on a cluster; returns how many existed.
    async fn invalidate_entries(&self, entries: Vec<String>) -> Result<u64> {
        let groups = self.by_slot(entries).await?;
        self.remove_batches(groups, None).await
    }

    /// `entries` in groups whose keys (and leases) share a hash slot: one group
    /// on a single node.
    async fn by_slot(&self, entries: Vec<String>) -> Result<Vec<Vec<String>>> {
        if matches!(self.connection().await?, Connection::Single(_)) {
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
    async fn remove_batches(&self, groups: Vec<Vec<String>>, detached: Option<(&str, &str)>) -> Result<u64> {
        let chunks = groups
            .into_iter()
            .flat_map(|group| {
                let mut chunks = Vec::new();
                let mut group = group.into_iter().peekable();
                while group.peek().is_some() {
                    chunks.push(group.by_ref().take(ENTRIES_PER_SCRIPT).collect::<Vec<_>>());
                }
                chunks
            })
            .collect::<Vec<_>>();
        stream::iter(chunks)
            .map(|entries| async move {
                let leases: Vec<String> = entries.iter().map(|entry| lease_key(entry)).collect();
                let (entries, leases) = (&entries, &leases);
                self.call("invalidate batch", |mut conn| async move {
                    let mut invocation = scripts::INVALIDATE_BATCH.prepare_invoke();
                    invocation.key(entries).key(leases);
                    if let Some((detached, pending)) = detached {
                        invocation.key(detached).key(pending);
                    }
                    invocation.arg(entries.len());
                    invocation.invoke_async::<u64>(&mut conn).await
                })
                .await
            })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .try_fold(0, |sum, removed| async move { Ok(sum + removed) })
            .await
    }

    /// Deletes entries (not their leases) with plain `DEL`s of at most 1,000
    /// keys sharing a hash slot, several in flight; returns how many existed.
    async fn delete_entries(&self, entries: Vec<String>) -> Result<u64> {
        let chunks: Vec<Vec<String>> = self
            .by_slot(entries)
            .await?
            .into_iter()
            .flat_map(|group| {
                let mut chunks = Vec::new();
                let mut group = group.into_iter().peekable();
                while group.peek().is_some() {
                    chunks.push(group.by_ref().take(2 * ENTRIES_PER_SCRIPT).collect::<Vec<_>>());
                }
                chunks
            })
            .collect();
        stream::iter(chunks)
            .map(|keys| async move {
                let mut delete = redis::cmd("DEL");
                delete.arg(&keys);
                self.run::<u64>("DEL", &delete).await
            })
            .buffer_unordered(INVALIDATION_CONCURRENCY)
            .try_fold(0, |sum, removed| async move { Ok(sum + removed) })
            .await
    }

    /// Empties one detached tag set — this invalidation's, or one another left
    /// (cut short, or still running) — and drops it from the tag's pending list;
    /// returns how many entries existed. Members leave the set only once their
    /// entries and leases are gone, so whoever reads it finds every member not
    /// yet removed, and a set is never written again once detached.
    async fn empty_detached(&self, detached: &str, pending: &str) -> Result<u64> {
        let single = matches!(self.connection().await?, Connection::Single(_));
        let mut removed = 0;
        loop {
            let mut read = redis::cmd("ZRANGE");
            read.arg(detached).arg(0).arg(TAG_BATCH - 1);
            let members: Vec<String> = self.run("ZRANGE", &read).await?;
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
                let _: u64 = self.run("ZREM", &forget).await?;
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
    async fn finish_detached(&self, detached: &str, pending: &str) -> Result<()> {
        let _: i64 = self
            .call("finish detached tag", |mut conn| async move {
                scripts::FINISH_DETACHED
                    .key(detached)
                    .key(pending)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }
}

/// A batch handler for [`RedisStore::scan_each`].
trait AsyncBatch {
    fn batch(&mut self, keys: Vec<String>) -> impl std::future::Future<Output = Result<u64>> + Send;
}

/// A client for one node's URL, trusting `tls_ca` for `rediss://` when given.
pub(super) fn client(url: &str, tls_ca: Option<&Vec<u8>>) -> RedisResult<redis::Client> {
    match tls_ca {
        Some(ca) if url.starts_with("rediss") => redis::Client::build_with_tls(url, certificates(ca)),
        _ => redis::Client::open(url),
    }
}

fn certificates(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

async fn open(target: &RedisTarget, tls_ca: Option<&Vec<u8>>, op_timeout: Duration) -> RedisResult<Connection> {
    let connect_timeout = op_timeout.max(Duration::from_secs(1));
    match target.cluster_nodes() {
        None => {
            let client = client(target.secret_url(), tls_ca)?;
            // `call` bounds every operation with CACHE_OP_TIMEOUT, reconnection waits
            // included; a second, redis-rs response timer per request would only cost.
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(Some(connect_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Ok(Connection::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
        Some(nodes) => {
            // As for a single node, `call` bounds each operation; the client's own
            // timer only has to catch connections that went silent.
            let mut builder = ClusterClientBuilder::new(nodes.to_vec())
                .connection_timeout(connect_timeout)
                .response_timeout(op_timeout.saturating_mul(8))
                .retries(2);
            if let (Some(ca), true) = (tls_ca, target.is_tls()) {
                builder = builder.certs(certificates(ca));
            }
            let client = builder.build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?))
        }
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn lease_key(entry: &str) -> String {
    companion_key(entry, "lease")
}

impl Backend for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let value: Option<Vec<u8>> = self.run("GET", redis::cmd("GET").arg(key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        self.run(
            "SET",
            redis::cmd("SET").arg(key).arg(&value[..]).arg("PX").arg(millis(ttl)),
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let removed: u64 = self.run("DEL", redis::cmd("DEL").arg(key)).await?;
        Ok(removed > 0)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let found: u64 = self.run("EXISTS", redis::cmd("EXISTS").arg(key)).await?;
        Ok(found > 0)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms: i64 = self.run("PTTL", redis::cmd("PTTL").arg(key)).await?;
        Ok(match ms {
            -2 => None,
            // -1: no expiry. The runtime never writes such a key; report it as "forever".
            -1 => Some(Duration::MAX),
            ms => Some(Duration::from_millis(ms.unsigned_abs())),
        })
    }

    async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let _: String = self.run("PING", &redis::cmd("PING")).await?;
        Ok(started.elapsed())
    }

    async fn register(&self, entry: &str, tag_keys: &[String], lifetime: Duration, ceiling: Duration) -> Result<()> {
        let (lifetime, ceiling) = (millis(lifetime), millis(ceiling));
        let each = tag_keys.iter().map(|tag_key| {
            self.call("register tag", move |mut conn| async move {
                let mut invocation = scripts::REGISTER.key(tag_key);
                invocation.arg(entry).arg(lifetime).arg(ceiling);
                invocation.invoke_async::<i64>(&mut conn).await
            })
        });
        futures_util::future::try_join_all(each).await.map(|_| ())
    }

    async fn acquire_lease(&self, entry: &str, token: &str, ttl: Duration, steal: bool) -> Result<bool> {
        let lease = lease_key(entry);
        let ms = millis(ttl);
        if steal {
            let _: () = self
                .run("SET", redis::cmd("SET").arg(&lease).arg(token).arg("PX").arg(ms))
                .await?;
            return Ok(true);
        }
        let acquired = self
            .lease_script("acquire lease", &scripts::ACQUIRE_LEASE, &lease, token, ms)
            .await?;
        Ok(acquired == 1)
    }

    async fn renew_lease(&self, entry: &str, token: &str, ttl: Duration) -> Result<bool> {
        let renewed = self
            .lease_script(
                "renew lease",
                &scripts::RENEW_LEASE,
                &lease_key(entry),
                token,
                millis(ttl),
            )
            .await?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, entry: &str, token: &str) -> Result<()> {
        let mut release = redis::cmd("EVAL");
        release
            .arg(scripts::RELEASE_LEASE)
            .arg(1)
            .arg(lease_key(entry))
            .arg(token);
        let _: i64 = self.run("release lease", &release).await?;
        Ok(())
    }

    async fn lease_held(&self, entry: &str) -> Result<bool> {
        self.exists(&lease_key(entry)).await
    }

    async fn store_leased(&self, entry: &str, token: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let lease = lease_key(entry);
        let ms = millis(ttl);
        let channel = &self.channel;
        let stored: i64 = self
            .call("store", |mut conn| async move {
                let mut invocation = scripts::STORE_LEASED.key(entry);
                invocation.key(&lease).arg(token).arg(&value[..]).arg(ms).arg(channel);
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(stored == 1)
    }

    async fn invalidate_entry(&self, entry: &str) -> Result<bool> {
        let lease = lease_key(entry);
        let removed: i64 = self
            .call("invalidate", |mut conn| async move {
                scripts::INVALIDATE_ENTRY
                    .key(entry)
                    .key(&lease)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(removed == 1)
    }

    async fn invalidate_tag(&self, tag_key: &str) -> Result<u64> {
        // Detach the whole set in one step: every member registered before now —
        // whatever its score — is removed below, registrations from now on start a
        // new set, and the loop ends however busy the tag is. Sets detached before
        // and not yet emptied (by an invalidation cut short, or one still running)
        // are emptied too before this one returns.
        let pending = companion_key(tag_key, "pending");
        let detached = companion_key(tag_key, &format!("invalidating:{}", crate::lock::new_token()));
        let (pending, detached) = (&pending, &detached);
        let sets: Vec<String> = self
            .call("detach tag", |mut conn| async move {
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

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
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

    fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    async fn listen(&self, limit: Duration) {
        self.listener.ready(limit).await;
    }
}
