//! Redis Sentinel: finding the master through the sentinels (redis-rs's
//! `SentinelClient`, which also checks with `ROLE` that the node it names is a
//! master), and hearing when they switch to another one.
//!
//! redis-rs gives a client for the master of the moment but nothing that
//! follows a failover, so the store replaces its connection (and with it finds
//! the master again) when a reply says it is talking to the wrong node
//! ([`switching`]), and when the sentinels announce `+switch-master`
//! ([`Watch`]): after a failover the former master keeps taking writes until
//! the sentinels demote it, writes that are lost when it resyncs from the new
//! master, so waiting for `READONLY` alone would lose invalidations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisResult, TlsMode};
use tokio::task::AbortHandle;

use crate::config::SentinelTarget;

/// The channel on which sentinels announce a new master:
/// `<master-name> <old-ip> <old-port> <new-ip> <new-port>`.
const SWITCH_CHANNEL: &str = "+switch-master";
/// The first pause before subscribing again to a sentinel; doubled up to 2 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A client for the master the sentinels name now (confirmed by its `ROLE`),
/// with the URL's credentials, database and TLS.
pub(super) async fn master(target: &SentinelTarget, tls_ca: Option<&Vec<u8>>) -> RedisResult<redis::Client> {
    let addrs = target.sentinels.iter().map(|(host, port)| address(target, host, *port));
    let mut builder = SentinelClientBuilder::new(addrs, &target.master_name, SentinelServerType::Master)?;
    builder = builder.set_client_to_redis_db(target.db);
    if let Some(username) = &target.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = &target.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(username) = &target.sentinel_username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = &target.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if target.tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(ca) = tls_ca {
            builder = builder
                .set_client_to_redis_certificates(super::certificates(ca))
                .set_client_to_sentinel_certificates(super::certificates(ca));
        }
    }
    builder.build()?.async_get_client().await
}

/// A sentinel's address, plain or TLS as the URL says.
fn address(target: &SentinelTarget, host: &str, port: u16) -> ConnectionAddr {
    if target.tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

/// A client for one sentinel, with the sentinels' own credentials.
fn sentinel_client(
    target: &SentinelTarget,
    tls_ca: Option<&Vec<u8>>,
    (host, port): &(String, u16),
) -> RedisResult<redis::Client> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(username) = &target.sentinel_username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &target.sentinel_password {
        settings = settings.set_password(password);
    }
    let info = address(target, host, *port)
        .into_connection_info()?
        .set_redis_settings(settings);
    match tls_ca {
        Some(ca) if target.tls => redis::Client::build_with_tls(info, super::certificates(ca)),
        _ => redis::Client::open(info),
    }
}

/// Whether an error from the master's connection says that it is, or may no
/// longer be, the master: a replica's `READONLY`, a node demoted or resyncing
/// (`MASTERDOWN`, `LOADING`), or a connection that was cut (Sentinel has the
/// demoted master drop its clients) or refused. The connection is then
/// replaced, which asks the sentinels again; no such request was executed.
pub(super) fn switching(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_io_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
}

/// Counts the sentinels' `+switch-master` announcements of one master: a
/// connection opened before the latest one talks to a former master.
pub(crate) struct Watch {
    target: Arc<SentinelTarget>,
    tls_ca: Option<Arc<Vec<u8>>>,
    switches: Arc<AtomicU64>,
    started: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("master", &self.target.master_name)
            .field("switches", &self.switches())
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(super) fn new(target: Arc<SentinelTarget>, tls_ca: Option<Arc<Vec<u8>>>) -> Watch {
        Watch {
            target,
            tls_ca,
            switches: Arc::default(),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }

    /// How many switches were heard (or may have been missed) so far.
    pub(super) fn switches(&self) -> u64 {
        self.switches.load(Ordering::Acquire)
    }

    /// Starts listening on `runtime` (the store's), once.
    pub(super) fn start(&self, runtime: &tokio::runtime::Handle) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = runtime.spawn(listen(
            Arc::clone(&self.target),
            self.tls_ca.clone(),
            Arc::clone(&self.switches),
        ));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// Subscribes to `+switch-master` on one sentinel after another (the next
/// when one fails) and counts the switches of our master. A subscription that
/// was lost and is made again counts as a switch too: one may have been missed
/// meanwhile, and finding the master again costs one connection.
async fn listen(target: Arc<SentinelTarget>, tls_ca: Option<Arc<Vec<u8>>>, switches: Arc<AtomicU64>) {
    let mut backoff = FIRST_BACKOFF;
    let mut lost = false;
    for sentinel in target.sentinels.iter().cycle() {
        match subscribe(&target, tls_ca.as_deref(), sentinel).await {
            Ok(pubsub) => {
                backoff = FIRST_BACKOFF;
                if lost {
                    switches.fetch_add(1, Ordering::AcqRel);
                }
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    let mut fields = text.split(' ');
                    if fields.next() == Some(target.master_name.as_str()) {
                        switches.fetch_add(1, Ordering::AcqRel);
                        let new = fields.skip(2).collect::<Vec<_>>().join(":");
                        tracing::info!(target: "aside", master = %target.master_name, %new,
                            "the sentinels switched to a new master; reconnecting");
                    }
                }
                lost = true;
                tracing::debug!(target: "aside", "lost the sentinel's switch announcements; subscribing again");
            }
            Err(error) => {
                tracing::debug!(target: "aside", %error, "cannot subscribe to a sentinel's switch announcements");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    target: &SentinelTarget,
    tls_ca: Option<&Vec<u8>>,
    sentinel: &(String, u16),
) -> RedisResult<redis::aio::PubSub> {
    let client = sentinel_client(target, tls_ca, sentinel)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "subscribing to a sentinel timed out")))??;
    pubsub.subscribe(SWITCH_CHANNEL).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::switching;

    #[test]
    fn a_replica_a_resyncing_node_or_a_lost_connection_means_asking_the_sentinels_again() {
        for kind in [
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            ErrorKind::Server(ServerErrorKind::MasterDown),
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            ErrorKind::Io,
        ] {
            assert!(switching(&RedisError::from((kind, "from the node"))), "{kind:?}");
        }
        for kind in [
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::Server(ServerErrorKind::NoScript),
            ErrorKind::UnexpectedReturnType,
        ] {
            assert!(!switching(&RedisError::from((kind, "from the node"))), "{kind:?}");
        }
    }
}
