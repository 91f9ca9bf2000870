//! The connection of a Redis store: one multiplexed connection per cache — a
//! redis-rs `ConnectionManager` to a single node, a `cluster-async` connection
//! to a cluster, or a connection to the master Redis Sentinel names — how it is
//! opened, and how a cluster request turned away by a migrating slot is sent again.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::sentinel;
use crate::config::RedisTarget;

/// Redirections and waits the cluster client follows for one request before
/// giving up on it (each bounded by the operation timeout anyway).
const CLUSTER_RETRIES: u32 = 10;

/// The cluster client's shortest and longest wait before re-sending a request
/// (`TRYAGAIN`, a node not connected yet), in milliseconds. redis-rs's
/// defaults (1.28 s at least) outlast any operation timeout, so every
/// `TRYAGAIN` of a migrating slot would end as a timeout.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (2, 40);

/// The first pause before re-sending a request the cluster turned away while
/// a slot migrates; doubled up to [`RESHARD_MAX_PAUSE`], within the operation timeout.
const RESHARD_FIRST_PAUSE: Duration = Duration::from_millis(2);

/// The longest such pause.
const RESHARD_MAX_PAUSE: Duration = Duration::from_millis(32);

/// The connection of a store: single node, cluster or sentinel-managed master.
/// Each is a cheap clone of a shared multiplexed connection.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    /// With how long a request turned away by a migrating slot is re-sent.
    Cluster(ClusterConnection, Duration),
    /// The master the sentinels named, with the count of switches heard
    /// before it was looked up ([`sentinel::Watch::switches`]). Not
    /// re-established in place: when it breaks or stops being the master, the
    /// store replaces it ([`RedisStore::replace`](super::RedisStore::replace)) and the next call asks the
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
pub(super) fn resharding(error: &redis::RedisError) -> bool {
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
pub(super) async fn resending<'a, T>(
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
pub(super) async fn open(
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
