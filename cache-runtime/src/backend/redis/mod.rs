//! The Redis store: one multiplexed connection per cache (redis-rs
//! `ConnectionManager`, a `cluster-async` connection for Redis Cluster, or a
//! multiplexed connection to the master that Redis Sentinel names), shared by
//! every call and re-established when it breaks, plus one pub/sub subscriber
//! that wakes waiters when entries are stored. Their background work runs on
//! the store's own thread ([`background`]), never on a caller's runtime. On a
//! single node, requests made on a multi-thread runtime take that runtime's
//! own connection of the store instead ([`lanes`]), which closes with it.
//!
//! This file holds the store and its per-call path (the breaker, timeouts, the
//! wedged-connection check) and the [`Backend`] methods; beside it:
//! [`connection`] (opening the connection, re-sending what a migrating slot
//! turned away), [`invalidate`] (batched removals and expiries, and their
//! re-delivery), [`scripts`], [`notify`] (the subscriber), [`l1`] (the tiered
//! store's first tier), [`lanes`] (connections on the callers' runtimes),
//! [`nodes`] (a breaker per cluster master) and [`sentinel`].

mod background;
mod connection;
mod invalidate;
pub(crate) mod l1;
mod lanes;
mod nodes;
mod notify;
mod scripts;
mod sentinel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, RedisResult, Value};
use tokio::sync::OnceCell;

use super::{Acquired, Backend, Record, Wake};
use crate::breaker::{now_ms, BreakerState};
use crate::config::{RedisTarget, Settings};
use crate::error::{Error, Result};
use crate::key::companion_key;
use crate::share::InProcess;
use connection::{certificates, client, open, resharding, Connection};
use l1::L1;
use nodes::{Breakers, Route};

/// What part of the operation timeout tells a wedged cluster connection from
/// one master timing out: a connection that answered any request within it,
/// or answers another master's `PING` within it, is not wedged. Short, as the
/// breaker skips every call of the master meanwhile.
const WEDGE_CHECK_PART: u32 = 4;
pub(crate) struct RedisStore {
    target: RedisTarget,
    tls_ca: Option<Arc<Vec<u8>>>,
    op_timeout: Duration,
    /// Replaced (by a fresh, empty cell) when a cluster connection is wedged
    /// (see [`RedisStore::replace_wedged`]) or a sentinel's master changes.
    connection: std::sync::RwLock<Arc<OnceCell<Connection>>>,
    /// On a single node (not behind Sentinel): the connections opened on the
    /// callers' multi-thread runtimes, which their requests take ([`lanes`]).
    lanes: Option<Arc<lanes::Lanes>>,
    /// Under Redis Sentinel: the sentinels' announcements of a new master.
    switches: Option<sentinel::Watch>,
    /// The count of switches the breaker last heard of: a new master is worth
    /// probing at once, without waiting out the backoff the old one earned.
    switches_probed: std::sync::atomic::AtomicU64,
    /// One breaker, or on a cluster one per master ([`nodes`]).
    breakers: Arc<Breakers>,
    /// Where stores and invalidations are announced: waiters wake, tiered
    /// stores drop their copies.
    channel: String,
    listener: notify::Listener,
    /// The in-process first tier of a tiered store (`CACHE_BACKEND=tiered`).
    l1: Option<Arc<L1>>,
    /// Whether the listener was started for the first tier.
    listening: std::sync::atomic::AtomicBool,
    /// Set once a store's announcement was refused (an ACL user without
    /// channel rights), so the warning is logged once.
    announce_refused: std::sync::atomic::AtomicBool,
    /// Declared last: dropped after everything that runs on it.
    background: background::Background,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("op_timeout", &self.op_timeout)
            .field("connected", &self.current_cell().initialized())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store that connects on first use; the namespace names its announcement
    /// channel. `tiered`: with a first tier in process memory (see [`l1`]).
    pub(crate) fn new(target: RedisTarget, settings: &Settings, waiters: Arc<dyn Wake>, tiered: bool) -> RedisStore {
        let channel = format!("{}~stored", settings.namespace);
        let tls_ca = settings.tls_ca_pem.clone().map(Arc::new);
        let source = match (target.cluster_nodes(), target.sentinel()) {
            (Some(nodes), _) => notify::Source::Nodes(nodes.to_vec()),
            (None, Some(sentinel)) => notify::Source::Sentinel(Arc::clone(sentinel)),
            (None, None) => notify::Source::Nodes(vec![target.secret_url().to_owned()]),
        };
        let breakers = Arc::new(match target.cluster_nodes() {
            Some(_) => Breakers::cluster(),
            None => Breakers::single(),
        });
        let l1 = tiered.then(|| Arc::new(L1::new(settings.memory_capacity, format!("#{}", super::new_token()))));
        let listener = notify::Listener::new(source, tls_ca.clone(), channel.clone(), waiters, l1.clone());
        let switches = target
            .sentinel()
            .map(|sentinel| sentinel::Watch::new(Arc::clone(sentinel), tls_ca.clone()));
        let lanes = (target.cluster_nodes().is_none() && target.sentinel().is_none())
            .then(|| lanes::Lanes::new(target.clone(), tls_ca.clone(), settings.op_timeout));
        RedisStore {
            l1,
            lanes,
            listening: std::sync::atomic::AtomicBool::new(false),
            target,
            tls_ca,
            op_timeout: settings.op_timeout,
            connection: std::sync::RwLock::default(),
            switches,
            switches_probed: std::sync::atomic::AtomicU64::new(0),
            breakers,
            channel,
            listener,
            announce_refused: std::sync::atomic::AtomicBool::new(false),
            background: background::Background::default(),
        }
    }

    /// This process's copy of `key` in the first tier, if it holds a usable one.
    pub(crate) fn copy(&self, key: &str) -> Option<InProcess> {
        self.l1.as_ref()?.copy(key)
    }

    /// What the first tier holds (nothing, untiered).
    pub(crate) fn copies_size(&self) -> crate::backend::InProcessSize {
        self.l1.as_ref().map(|l1| l1.size()).unwrap_or_default()
    }

    /// Whether this store keeps copies in process (it is tiered).
    pub(crate) fn keeps_copies(&self) -> bool {
        self.l1.is_some()
    }

    /// Drops this process's copy of `key` from the first tier, if any.
    fn forget(&self, key: &str) {
        if let Some(l1) = &self.l1 {
            l1.evict(key);
        }
    }

    /// Drops every copy of the first tier, if any (after a tag or pattern
    /// invalidation, whose keys this process does not all know).
    fn forget_all(&self) {
        if let Some(l1) = &self.l1 {
            l1.evict_all();
        }
    }

    /// Runs `future` on the store's own runtime, detached: it outlives the
    /// caller's future and the caller's runtime. Works from a `Drop`
    /// implementation with no runtime at hand.
    #[allow(dead_code)] // for the lock's clean-up of cancelled leaders
    pub(crate) fn spawn_background<F>(&self, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(future);
    }

    /// Connects now (and authenticates), so a bad address or password surfaces early.
    /// On a cluster, also reads the slot map, so the first calls already answer
    /// to their masters' breakers.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<()> {
        let connection = self
            .background
            .enter(async { tokio::time::timeout(timeout, self.connection()).await })
            .await
            .map_err(|_| Error::Timeout {
                op: "connect",
                after: timeout,
            })??;
        if let Connection::Cluster(conn, _) = connection {
            if self.breakers.claim_map_read() {
                self.background
                    .enter(self.breakers.read_claimed_map(&conn, self.op_timeout))
                    .await;
            }
        }
        Ok(())
    }

    /// The cell the connection lives in now.
    fn current_cell(&self) -> Arc<OnceCell<Connection>> {
        Arc::clone(&self.connection.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Drops a cluster connection whose timeouts opened the breaker (or failed
    /// its probe), so the next call — the breaker's probe — opens a new one.
    ///
    /// redis-rs's cluster driver can deadlock for good while slots move: a
    /// node reconnection that has begun taking its connection lock is left
    /// unpolled while a slot-map refresh waits for that lock (both are needed
    /// at once when a request times out amid `MOVED` replies). Every request
    /// then waits for ever; from here that looks like Redis timing out on every
    /// call, the breaker opening, and its probes timing out too. A single-node
    /// connection recovers by itself and is left alone.
    ///
    /// A sentinel-managed master that stops answering is replaced the same
    /// way: the new connection asks the sentinels which node is master now.
    ///
    /// `true` when `cell` was replaced by this call.
    fn replace_wedged(&self, cell: &Arc<OnceCell<Connection>>) -> bool {
        match cell.get() {
            Some(Connection::Cluster(..)) => self.replace(cell, "the cluster connection stopped answering"),
            Some(Connection::Sentinel(..)) => self.replace(cell, "the master stopped answering"),
            _ => false,
        }
    }

    /// Puts a fresh, empty cell in place of `cell` (unless another call did
    /// already), so the next call opens a new connection; logs `why` at `warn`.
    /// `true` when `cell` was replaced by this call.
    fn replace(&self, cell: &Arc<OnceCell<Connection>>, why: &str) -> bool {
        let mut current = self.connection.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, cell) {
            return false;
        }
        *current = Arc::default();
        tracing::warn!(target: "aside", redis = %self.target, "{why}; opening a new connection");
        true
    }

    /// The cell to use now: the current one, unless it holds a connection to a
    /// master the sentinels have since replaced, which is dropped first.
    fn usable_cell(&self) -> Arc<OnceCell<Connection>> {
        let cell = self.current_cell();
        let (Some(Connection::Sentinel(_, seen)), Some(switches)) = (cell.get(), &self.switches) else {
            return cell;
        };
        if *seen == switches.switches() {
            return cell;
        }
        self.replace(&cell, "the sentinels switched to a new master");
        self.current_cell()
    }

    /// Whether `error` means a sentinel-managed connection talks to a node
    /// that is not (or may no longer be) the master; the connection that
    /// gave it is replaced by [`RedisStore::call`], so a request sent again
    /// goes to the master the sentinels name.
    fn switching_master(&self, error: &Error) -> bool {
        match error {
            Error::Redis { source, .. } => self.switches.is_some() && sentinel::switching(source),
            _ => false,
        }
    }

    async fn connection(&self) -> Result<Connection> {
        self.connection_in(&self.current_cell()).await
    }

    async fn connection_in(&self, cell: &Arc<OnceCell<Connection>>) -> Result<Connection> {
        if let Some(connection) = cell.get() {
            return Ok(connection.clone());
        }
        // Connect in a task of its own: a caller's operation timeout must not cancel
        // a connection that takes longer than one operation (TLS, a distant server),
        // or a lazily built cache would start over on every call and never connect.
        // It runs on the store's runtime, so the drivers redis-rs spawns while
        // connecting live there, not on the caller's runtime.
        let cell = Arc::clone(cell);
        let (target, tls_ca, op_timeout) = (self.target.clone(), self.tls_ca.clone(), self.op_timeout);
        let handle = self.background.handle().map_err(|error| Error::Connect {
            target: self.target.to_string(),
            source: error.into(),
        })?;
        // Read before the sentinels are asked: a switch announced while they
        // answer makes this connection stale at once, never unnoticed.
        let switches = self.switches.as_ref().map(|watch| {
            watch.start(handle);
            watch.switches()
        });
        let connecting = handle.spawn(async move {
            cell.get_or_try_init(|| open(&target, tls_ca.as_deref(), op_timeout, switches.unwrap_or_default()))
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
    /// the circuit breaker of `route` (on a cluster, its master's).
    async fn call<T, F, Fut>(&self, op: &'static str, route: Route<'_>, request: F) -> Result<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        if let Some(watch) = &self.switches {
            let switches = watch.switches();
            if self
                .switches_probed
                .swap(switches, std::sync::atomic::Ordering::Relaxed)
                != switches
            {
                self.breakers.shared().probe_now();
            }
        }
        let breaker = self.breakers.pick(route);
        let Some(permit) = breaker.allow() else {
            // Skipping Redis touches no tokio resource, so a loop of skipped
            // calls would never yield: it could starve the very task whose
            // probe closes the breaker. Spend the task's cooperative budget as
            // a Redis request would.
            tokio::task::coop::consume_budget().await;
            return Err(Error::CircuitOpen);
        };
        // A lane (single node only) needs none of the store's connection
        // handling below: the store's cell is not even read, which spares each
        // request on a multi-thread runtime a lock and a reference count that
        // all its workers would otherwise write.
        let lane = self.lanes.as_ref().and_then(|lanes| lanes.current());
        let on_lane = lane.is_some();
        let cell = (!on_lane).then(|| self.usable_cell());
        let attempt = async {
            let connection = match (lane, &cell) {
                (Some(connection), _) => connection,
                (None, Some(cell)) => self.connection_in(cell).await?,
                // Not reached: without a lane there is a cell.
                (None, None) => self.connection().await?,
            };
            request(connection).await.map_err(|source| Error::Redis { op, source })
        };
        let bounded = async {
            match tokio::time::timeout(self.op_timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    op,
                    after: self.op_timeout,
                }),
            }
        };
        // Boxed: a Redis request's future (connection, timer, codec) is a few
        // kilobytes, and every future that awaits a store call would otherwise
        // carry it inline and move it — a hit served in process memory too.
        let bounded = Box::pin(bounded);
        let result = if on_lane {
            // On the caller's runtime, whose workers drive the lane.
            bounded.await
        } else {
            // Polled as a task of the store's runtime would be: what redis-rs
            // spawns on a lost connection, and the timer, belong to the store.
            self.background.enter(bounded).await
        };
        // A request still told `TRYAGAIN` at the end of the operation timeout
        // (a slot half-migrated) says nothing either way: it neither opens the
        // breaker for every key nor counts as Redis answering (`None`). Still
        // redirected (`MOVED`/`ASK`), or still without a connection to the
        // slot's node, after re-sending for the whole operation timeout is
        // what a dead master looks like: its failures count as any node's do.
        let available = match &result {
            Ok(_) => Some(true),
            Err(Error::Redis { source, .. })
                if matches!(
                    source.kind(),
                    redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                ) =>
            {
                None
            }
            Err(Error::Redis { source, .. }) if resharding(source) => Some(false),
            Err(error) => Some(!error.is_unavailability()),
        };
        if let Err(error) = &result {
            tracing::debug!(target: "aside", redis = %self.target, op, %error, "redis operation failed");
            if let (true, Some(cell)) = (self.switching_master(error), &cell) {
                self.replace(cell, "the master's connection broke or it is the master no more");
            }
        }
        let probe = permit.is_probe();
        let node: &dyn std::fmt::Display = match breaker.master() {
            Some(master) => master,
            None => &self.target,
        };
        match available {
            Some(available) => permit.record(available, node),
            None => permit.abstain(node),
        }
        if available == Some(true) {
            self.breakers.answered();
        } else {
            // Perhaps the slot moved, or its master was replaced.
            self.breakers.map_doubted();
        }
        let Some(cell) = cell else {
            // A lane is a single node's connection, which recovers by itself.
            return result;
        };
        if let Some(Connection::Cluster(conn, _)) = cell.get() {
            if self.breakers.claim_map_read() {
                let (breakers, conn, timeout) = (Arc::clone(&self.breakers), conn.clone(), self.op_timeout);
                self.background.spawn(async move {
                    breakers.read_claimed_map(&conn, timeout).await;
                });
            }
        }
        if matches!(result, Err(Error::Timeout { .. }))
            && breaker.state() != BreakerState::Closed
            && self
                .breakers
                .silent_since(now_ms().saturating_sub(millis(self.op_timeout / WEDGE_CHECK_PART)))
            && Box::pin(self.wedged(&cell, breaker.master())).await
            && self.replace_wedged(&cell)
            && !probe
        {
            // The calls that opened the breaker timed out on a connection that
            // had been answering; the new one may well answer at once, so the
            // next call probes it instead of every call skipping Redis for the
            // backoff. A probe that times out on a new connection keeps the
            // backoff: that is Redis (or a node) down, not a wedged driver.
            self.breakers.probe_now();
        }
        result
    }

    /// Whether a connection whose request to `failing` (a cluster's master;
    /// `None` off a cluster) timed out while its breaker opened, and that
    /// answered nothing lately, is wedged: on a cluster, when another master
    /// whose breaker is closed does not answer a `PING` through it either
    /// within a [`WEDGE_CHECK_PART`] of the operation timeout.
    /// One master timing out while the others answer is that master down (its
    /// breaker's business); a new connection would only cost the live
    /// masters' calls the time it takes to connect, a frozen master included.
    async fn wedged(&self, cell: &Arc<OnceCell<Connection>>, failing: Option<&nodes::Master>) -> bool {
        let (Some(Connection::Cluster(conn, _)), Some(failing)) = (cell.get(), failing) else {
            return true;
        };
        let other = self
            .breakers
            .masters()
            .into_iter()
            .flatten()
            .find(|master| !std::ptr::eq(&**master, failing) && master.breaker().state() == BreakerState::Closed);
        let Some(other) = other else {
            return true;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: other.host().to_owned(),
            port: other.port(),
        });
        let mut conn = conn.clone();
        let patience = self.op_timeout / WEDGE_CHECK_PART;
        let ping = tokio::time::timeout(patience, conn.route_command(redis::cmd("PING"), routing));
        match self.background.enter(ping).await {
            Ok(Ok(_)) => {
                self.breakers.answered();
                false
            }
            _ => true,
        }
    }

    /// Logs once that the Redis user may not publish store announcements.
    fn announcement_refused(&self) {
        if !self.announce_refused.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(target: "aside", channel = %self.channel,
                "the Redis user may not publish on the cache's channel (ACL: grant `&{}`): entries are stored, but waiters in other processes notice them only by re-checking every 500 ms",
                self.channel);
        }
    }

    /// The breakers' states, and how often they opened and skipped.
    pub(crate) fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    async fn run<T: FromRedisValue>(&self, op: &'static str, route: Route<'_>, cmd: &Cmd) -> Result<T> {
        self.call(op, route, |mut conn| async move { cmd.query_async(&mut conn).await })
            .await
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
        self.call(op, Route::Key(lease), |mut conn| async move {
            script.key(lease).arg(token).arg(ms).invoke_async(&mut conn).await
        })
        .await
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
        let Some(l1) = &self.l1 else {
            let value: Option<Vec<u8>> = self.run("GET", Route::Key(key), redis::cmd("GET").arg(key)).await?;
            return Ok(value.map(Bytes::from));
        };
        if let Some(copy) = l1.get(key) {
            return Ok(Some(copy));
        }
        if !self.listening.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // The tier serves nothing until its channel is confirmed. Boxed:
            // once per store, it should not weigh on every read's future.
            Box::pin(self.listen(Duration::ZERO)).await;
        }
        let generation = l1.generation(key);
        let value: Option<Vec<u8>> = self.run("GET", Route::Key(key), redis::cmd("GET").arg(key)).await?;
        let value = value.map(Bytes::from);
        if let Some(bytes) = &value {
            l1.fill(key, bytes, generation);
        }
        Ok(value)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let mut found: Vec<Option<Bytes>> = vec![None; keys.len()];
        // The keys to ask Redis for (by index), with their L1 generations.
        let mut asked: Vec<(usize, u64)> = Vec::with_capacity(keys.len());
        match &self.l1 {
            None => asked.extend((0..keys.len()).map(|index| (index, 0))),
            Some(l1) => {
                if !self.listening.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    Box::pin(self.listen(Duration::ZERO)).await;
                }
                for (index, key) in keys.iter().enumerate() {
                    match l1.get(key) {
                        Some(copy) => found[index] = Some(copy),
                        None => asked.push((index, l1.generation(key))),
                    }
                }
            }
        }
        if asked.is_empty() {
            return Ok(found);
        }
        // On a cluster the client splits an `MGET` by hash slot, sends the
        // parts in parallel and puts the answers back in order.
        let mut mget = redis::cmd("MGET");
        for &(index, _) in &asked {
            mget.arg(&keys[index]);
        }
        // The breaker of the first key's master answers for the whole request
        // (on a cluster it may span several masters).
        let route = Route::Key(&keys[asked[0].0]);
        let values: Vec<Option<Vec<u8>>> = self.run("MGET", route, &mget).await?;
        for (&(index, generation), value) in asked.iter().zip(values) {
            let value = value.map(Bytes::from);
            if let (Some(l1), Some(bytes)) = (&self.l1, &value) {
                l1.fill(&keys[index], bytes, generation);
            }
            found[index] = value;
        }
        Ok(found)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let mut set = redis::cmd("EVAL");
        set.arg(scripts::SET_ANNOUNCED)
            .arg(1)
            .arg(key)
            .arg(&value[..])
            .arg(millis(ttl))
            .arg(&self.channel);
        let set = self.run::<i64>("SET", Route::Key(key), &set).await;
        self.forget(key);
        set.map(|_| ())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let found: u64 = self
            .run("EXISTS", Route::Key(key), redis::cmd("EXISTS").arg(key))
            .await?;
        Ok(found > 0)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms: i64 = self.run("PTTL", Route::Key(key), redis::cmd("PTTL").arg(key)).await?;
        Ok(match ms {
            -2 => None,
            // -1: no expiry. The runtime never writes such a key; report it as "forever".
            -1 => Some(Duration::MAX),
            ms => Some(Duration::from_millis(ms.unsigned_abs())),
        })
    }

    async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        let Some(masters) = self.breakers.masters() else {
            let _: String = self.run("PING", Route::Any, &redis::cmd("PING")).await?;
            return Ok(started.elapsed());
        };
        // Every master, each through its own breaker, as redis-rs sends a
        // PING to every master: the cluster answers if all of them do.
        let each = masters.iter().map(|master| {
            self.call(
                "PING",
                Route::Node(master.host(), master.port()),
                move |conn| async move {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: master.host().to_owned(),
                        port: master.port(),
                    });
                    match conn {
                        Connection::Cluster(mut conn, _) => conn.route_command(redis::cmd("PING"), routing).await,
                        Connection::Single(mut conn) => redis::cmd("PING").query_async(&mut conn).await,
                        Connection::Sentinel(mut conn, _) => redis::cmd("PING").query_async(&mut conn).await,
                    }
                },
            )
        });
        futures_util::future::try_join_all(each).await?;
        Ok(started.elapsed())
    }

    async fn register(&self, entry: &str, record: Record<'_>) -> Result<()> {
        let (lifetime, ceiling) = (millis(record.lifetime), millis(record.ceiling));
        let each = record.tag_keys.iter().map(|tag_key| {
            self.call("register tag", Route::Key(tag_key), move |mut conn| async move {
                let mut invocation = scripts::REGISTER.key(tag_key);
                invocation.arg(entry).arg(lifetime).arg(ceiling);
                invocation.invoke_async::<i64>(&mut conn).await
            })
        });
        futures_util::future::try_join_all(each).await.map(|_| ())
    }

    async fn acquire_lease(
        &self,
        entry: &str,
        token: &str,
        ttl: Duration,
        steal: bool,
        record: Record<'_>,
    ) -> Result<Acquired> {
        // On a single node the tag sets go into the script: one round trip, and
        // the lease is still ours when the answer comes. On a cluster they
        // live in other slots: recorded after the lease, in parallel.
        let on_cluster = self.target.cluster_nodes().is_some();
        let in_script: &[String] = if on_cluster { &[] } else { record.tag_keys };
        let lease = &lease_key(entry);
        let answer: Value = self
            .call("acquire lease", Route::Key(lease), |mut conn| async move {
                let mut invocation = scripts::ACQUIRE_LEASE.key(lease);
                invocation.key(entry);
                for tag_key in in_script {
                    invocation.key(tag_key);
                }
                invocation
                    .arg(token)
                    .arg(millis(ttl))
                    .arg(u8::from(steal))
                    .arg(millis(record.lifetime))
                    .arg(millis(record.ceiling));
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let stored = match answer {
            Value::Array(parts) if parts.first() == Some(&Value::Int(1)) => match parts.get(1) {
                Some(value) => redis::from_redis_value_ref::<Option<Vec<u8>>>(value)
                    .map_err(|e| Error::Redis {
                        op: "acquire lease",
                        source: e.into(),
                    })?
                    .map(Bytes::from),
                None => None,
            },
            _ => return Ok(Acquired::Busy),
        };
        if on_cluster && !record.tag_keys.is_empty() {
            // After the lease, never beside it: a record that landed first could
            // be carried away, its entry and (absent) lease removed, by an
            // invalidation done before the lease lands; the entry would then be
            // stored in no tag set. Recorded after the lease, it is found by
            // every invalidation that detaches later, which revokes the lease.
            // No check of the lease follows: one revoked between the two answers
            // only refuses the store, as one revoked while computing does.
            self.register(entry, record).await?;
        }
        Ok(Acquired::Taken(stored))
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
            .arg(2)
            .arg(entry)
            .arg(lease_key(entry))
            .arg(token)
            .arg(&self.channel);
        let released: i64 = self.run("release lease", Route::Key(entry), &release).await?;
        if released == scripts::DONE_UNANNOUNCED {
            self.announcement_refused();
        }
        Ok(())
    }

    async fn lease_held(&self, entry: &str) -> Result<bool> {
        self.exists(&lease_key(entry)).await
    }

    async fn store_leased(&self, entry: &str, token: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let stored = self.store_leased_once(entry, token, value, ttl).await;
        self.forget(entry);
        stored
    }

    async fn invalidate_entry(&self, entry: &str) -> Result<bool> {
        let removed = self
            .delivering(Some(Route::Key(entry)), || self.invalidate_entry_once(entry))
            .await;
        self.forget(entry);
        removed
    }

    async fn invalidate_tag(&self, tag_key: &str) -> Result<u64> {
        let removed = self.delivering(None, || self.invalidate_tag_once(tag_key)).await;
        self.forget_all();
        removed
    }

    async fn expire_entry(&self, entry: &str) -> Result<bool> {
        let expired = self.expire_entries(vec![entry.to_owned()]).await;
        self.forget(entry);
        Ok(expired? == 1)
    }

    async fn expire_tag(&self, tag_key: &str) -> Result<u64> {
        let expired = self.expire_tag_pages(tag_key).await;
        self.forget_all();
        expired
    }

    async fn invalidate_pattern(&self, pattern: &str) -> Result<u64> {
        let removed = self.delivering(None, || self.invalidate_pattern_once(pattern)).await;
        self.forget_all();
        removed
    }

    async fn listen(&self, limit: Duration) {
        self.background.enter(self.listener.ready(limit)).await;
    }
}

/// The steps of the trait's methods, without the tier's evictions.
impl RedisStore {
    /// The store step of [`Backend::store_leased`].
    async fn store_leased_once(&self, entry: &str, token: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let lease = lease_key(entry);
        let ms = millis(ttl);
        let channel = &self.channel;
        let stored: i64 = self
            .call("store", Route::Key(entry), |mut conn| async move {
                let mut invocation = scripts::STORE_LEASED.key(entry);
                invocation.key(&lease).arg(token).arg(&value[..]).arg(ms).arg(channel);
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if stored == scripts::DONE_UNANNOUNCED {
            self.announcement_refused();
        }
        Ok(stored != 0)
    }
}
