//! The Redis store: one multiplexed connection per cache (redis-rs
//! `ConnectionManager`, a `cluster-async` connection for Redis Cluster, or a
//! multiplexed connection to the master that Redis Sentinel names), shared by
//! every call and re-established when it breaks, plus one pub/sub subscriber
//! that wakes waiters when entries are stored. Their background work runs on
//! the store's own thread ([`background`]), never on a caller's runtime.

mod background;
pub(crate) mod l1;
mod nodes;
mod notify;
mod scripts;
mod sentinel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, FutureExt, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use super::{Acquired, Backend, Record, Wake};
use crate::breaker::{now_ms, BreakerState};
use crate::config::{RedisTarget, Settings};
use crate::error::{Error, Result};
use crate::key::companion_key;
use l1::L1;
use nodes::{Breakers, Route};

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
/// Redirections and waits the cluster client follows for one request before
/// giving up on it (each bounded by the operation timeout anyway).
const CLUSTER_RETRIES: u32 = 10;
/// The cluster client's shortest and longest wait before re-sending a request
/// (`TRYAGAIN`, a node not connected yet), in milliseconds. redis-rs's
/// defaults (1.28 s at least) outlast any operation timeout, so every
/// `TRYAGAIN` of a migrating slot would end as a timeout.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (2, 40);
/// What part of the operation timeout tells a wedged cluster connection from
/// one master timing out: a connection that answered any request within it,
/// or answers another master's `PING` within it, is not wedged. Short, as the
/// breaker skips every call of the master meanwhile.
const WEDGE_CHECK_PART: u32 = 4;
/// The first pause before re-sending a request the cluster turned away while
/// a slot migrates; doubled up to [`RESHARD_MAX_PAUSE`], within the operation timeout.
const RESHARD_FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest such pause.
const RESHARD_MAX_PAUSE: Duration = Duration::from_millis(32);

/// The connection of a store: single node, cluster or sentinel-managed master.
/// Each is a cheap clone of a shared multiplexed connection.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    /// With how long a request turned away by a migrating slot is re-sent.
    Cluster(ClusterConnection, Duration),
    /// The master the sentinels named, with the count of switches heard
    /// before it was looked up ([`sentinel::Watch::switches`]). Not
    /// re-established in place: when it breaks or stops being the master, the
    /// store replaces it ([`RedisStore::replace`]) and the next call asks the
    /// sentinels again.
    Sentinel(MultiplexedConnection, u64),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Sentinel(conn, _) => conn.req_packed_command(cmd),
            Connection::Cluster(conn, patience) => Box::pin(resending(*patience, conn, move |mut conn| {
                async move { conn.req_packed_command(cmd).await }.boxed()
            })),
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
            Connection::Sentinel(conn, _) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn, patience) => Box::pin(resending(*patience, conn, move |mut conn| {
                async move { conn.req_packed_commands(cmd, offset, count).await }.boxed()
            })),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Sentinel(conn, _) => conn.get_db(),
            Connection::Cluster(conn, _) => conn.get_db(),
        }
    }
}

/// Whether the cluster turned a request away, unexecuted, because a slot is
/// moving (`TRYAGAIN`, `MOVED`/`ASK` left after redis-rs's own redirections, a
/// node it has no connection to yet): sending it again soon succeeds, and it
/// says nothing about Redis being down.
fn resharding(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::Moved | ServerErrorKind::Ask)
            | ErrorKind::ClusterConnectionNotFound
    )
}

/// Sends a request, and again after a short pause (doubling) while the
/// cluster turns it away because a slot is moving, for at most `patience`.
/// Only errors that mean "not executed" are re-sent, so nothing runs twice.
async fn resending<'a, T>(
    patience: Duration,
    conn: &ClusterConnection,
    send: impl Fn(ClusterConnection) -> RedisFuture<'a, T>,
) -> RedisResult<T> {
    let started = Instant::now();
    let mut pause = RESHARD_FIRST_PAUSE;
    loop {
        match send(conn.clone()).await {
            Err(error) if resharding(&error) && started.elapsed() + pause < patience => {
                tracing::trace!(target: "aside", %error, "a slot is moving; sending again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RESHARD_MAX_PAUSE);
            }
            result => return result,
        }
    }
}

/// Adds up the batches of one invalidation, keeping the first failure. Every
/// batch runs to its end even after one failed, so the others' entries are
/// gone when the invalidation is run again, and a batch that is the breaker's
/// probe is not cancelled half-way (which would count as a failed probe).
async fn sum_removed(sum: Result<u64>, removed: Result<u64>) -> Result<u64> {
    Ok(sum? + removed?)
}

pub(crate) struct RedisStore {
    target: RedisTarget,
    tls_ca: Option<Arc<Vec<u8>>>,
    op_timeout: Duration,
    /// Replaced (by a fresh, empty cell) when a cluster connection is wedged
    /// (see [`RedisStore::replace_wedged`]) or a sentinel's master changes.
    connection: std::sync::RwLock<Arc<OnceCell<Connection>>>,
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
        RedisStore {
            l1,
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
    pub(crate) fn copy(&self, key: &str) -> Option<Bytes> {
        self.l1.as_ref()?.get(key)
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
    async fn delivering<T, F, Fut>(&self, on: Option<Route<'_>>, mut invalidate: F) -> Result<T>
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
        let cell = self.usable_cell();
        let attempt = async {
            let connection = self.connection_in(&cell).await?;
            request(connection).await.map_err(|source| Error::Redis { op, source })
        };
        // Polled as a task of the store's runtime would be: what redis-rs spawns
        // on a lost connection, and the timer, belong to the store.
        let bounded = async {
            match tokio::time::timeout(self.op_timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    op,
                    after: self.op_timeout,
                }),
            }
        };
        let result = self.background.enter(bounded).await;
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
            if self.switching_master(error) {
                self.replace(&cell, "the master's connection broke or it is the master no more");
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
            && self.wedged(&cell, breaker.master()).await
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

    /// Invalidates many entries (and their leases) in scripts over many keys at
    /// once, grouped by hash slot on a cluster; returns how many existed.
    async fn invalidate_entries(&self, entries: Vec<String>) -> Result<u64> {
        let groups = self.by_slot(entries).await?;
        self.remove_batches(groups, None).await
    }

    /// `entries` in groups whose keys (and leases) share a hash slot: one group
    /// on a single node.
    async fn by_slot(&self, entries: Vec<String>) -> Result<Vec<Vec<String>>> {
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
    async fn remove_batches(&self, groups: Vec<Vec<String>>, detached: Option<(&str, &str)>) -> Result<u64> {
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
    async fn expire_entries(&self, entries: Vec<String>) -> Result<u64> {
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
    async fn delete_entries(&self, entries: Vec<String>) -> Result<u64> {
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
    async fn empty_detached(&self, detached: &str, pending: &str) -> Result<u64> {
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
    async fn finish_detached(&self, detached: &str, pending: &str) -> Result<()> {
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

/// A client for one node's URL, trusting `tls_ca` for `rediss://` when given.
pub(super) fn client(url: &str, tls_ca: Option<&Vec<u8>>) -> RedisResult<redis::Client> {
    match tls_ca {
        Some(ca) if url.starts_with("rediss") => redis::Client::build_with_tls(url, certificates(ca)),
        _ => redis::Client::open(url),
    }
}

pub(super) fn certificates(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

/// Opens the store's connection; `switches` is the count of master switches
/// heard so far, kept with a sentinel-managed connection.
async fn open(
    target: &RedisTarget,
    tls_ca: Option<&Vec<u8>>,
    op_timeout: Duration,
    switches: u64,
) -> RedisResult<Connection> {
    let connect_timeout = op_timeout.max(Duration::from_secs(1));
    if let Some(sentinel) = target.sentinel() {
        // The sentinels' answers and the master's `ROLE` each take a round
        // trip; bound them all, as a silent sentinel would otherwise hold the
        // connection cell, and every call waiting on it, for good.
        let lookup = async {
            let master = sentinel::master(sentinel, tls_ca).await?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(None);
            master.get_multiplexed_async_connection_with_config(&config).await
        };
        let connection = tokio::time::timeout(connect_timeout * 4, lookup).await.map_err(|_| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "finding the master through the sentinels timed out",
            ))
        })??;
        return Ok(Connection::Sentinel(connection, switches));
    }
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
            // Redirections (`MOVED`, `ASK`) and `TRYAGAIN` are routine while slots
            // move: follow enough of them, with short waits, that a request
            // served by the cluster within the operation timeout gets through.
            let (min_wait, max_wait) = CLUSTER_RETRY_WAIT_MS;
            let mut builder = ClusterClientBuilder::new(nodes.to_vec())
                .connection_timeout(connect_timeout)
                .response_timeout(op_timeout.saturating_mul(8))
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(min_wait)
                .max_retry_wait(max_wait)
                .retry_wait_formula(2, 2);
            if let (Some(ca), true) = (tls_ca, target.is_tls()) {
                builder = builder.certs(certificates(ca));
            }
            let client = builder.build()?;
            Ok(Connection::Cluster(client.get_async_connection().await?, op_timeout))
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
        let Some(l1) = &self.l1 else {
            let value: Option<Vec<u8>> = self.run("GET", Route::Key(key), redis::cmd("GET").arg(key)).await?;
            return Ok(value.map(Bytes::from));
        };
        if let Some(copy) = l1.get(key) {
            return Ok(Some(copy));
        }
        if !self.listening.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // The tier serves nothing until its channel is confirmed.
            self.listen(Duration::ZERO).await;
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
                    self.listen(Duration::ZERO).await;
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
        // live in other slots: recorded after the lease, then the lease checked.
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
            self.register(entry, record).await?;
            // An invalidation between the lease and the records revoked it.
            if !steal && !self.renew_lease(entry, token, ttl).await? {
                return Ok(Acquired::Busy);
            }
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

    /// [`Backend::expire_tag`] without the tier's eviction.
    async fn expire_tag_pages(&self, tag_key: &str) -> Result<u64> {
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
}

/// Each invalidation run once; [`RedisStore::delivering`] runs them again.
impl RedisStore {
    async fn invalidate_entry_once(&self, entry: &str) -> Result<bool> {
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

    async fn invalidate_tag_once(&self, tag_key: &str) -> Result<u64> {
        // Detach the whole set in one step: every member registered before now —
        // whatever its score — is removed below, registrations from now on start a
        // new set, and the loop ends however busy the tag is. Sets detached before
        // and not yet emptied (by an invalidation cut short, or one still running)
        // are emptied too before this one returns.
        let pending = companion_key(tag_key, "pending");
        let detached = companion_key(tag_key, &format!("invalidating:{}", super::new_token()));
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

    async fn invalidate_pattern_once(&self, pattern: &str) -> Result<u64> {
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
