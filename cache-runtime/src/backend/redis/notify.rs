//! The one pub/sub subscriber of a Redis store: it hears every announcement of
//! the cache's namespace — an entry stored, a lease freed, entries invalidated
//! or expired — and wakes the local waiters of those entries, and drops the
//! first tier's copies of them (tiered stores). On Redis Cluster, `PUBLISH`
//! reaches every node, so one subscription to any node hears the whole cluster.
//! Under Redis Sentinel it subscribes on the master the sentinels name (replicas
//! hear announcements too: `PUBLISH` is replicated), asking them again whenever
//! the subscription is lost.
//!
//! A payload is one entry key, a JSON array of entry keys (a batch), or a
//! heartbeat `#<token>` (tiered stores, see [`super::l1`]). Keys start with
//! the namespace, whose characters are letters, digits, `-`, `_` and `.`, so the
//! three never look alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::l1::{BEAT, L1};
use crate::backend::Wake;
use crate::config::SentinelTarget;

/// Where the subscriber connects. Holds credentials: never logged.
#[derive(Clone)]
pub(crate) enum Source {
    /// These nodes' URLs, one after another when one fails.
    Nodes(Vec<String>),
    /// The master the sentinels name at each (re)connection.
    Sentinel(Arc<SentinelTarget>),
}

/// A subscription of a tiered store that hears nothing for this long — not
/// even its own heartbeat — is cut and made again.
const SILENCE: Duration = Duration::from_secs(2);

/// The subscriber: started on the first wait, reconnecting by itself.
pub(crate) struct Listener {
    source: Source,
    tls_ca: Option<Arc<Vec<u8>>>,
    channel: String,
    waiters: Arc<dyn Wake>,
    l1: Option<Arc<L1>>,
    started: AtomicBool,
    subscribed: watch::Sender<bool>,
    task: Mutex<Option<AbortHandle>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("channel", &self.channel)
            .field("subscribed", &*self.subscribed.borrow())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// `source` carries credentials; they are never logged.
    pub(crate) fn new(
        source: Source,
        tls_ca: Option<Arc<Vec<u8>>>,
        channel: String,
        waiters: Arc<dyn Wake>,
        l1: Option<Arc<L1>>,
    ) -> Listener {
        Listener {
            source,
            tls_ca,
            channel,
            waiters,
            l1,
            started: AtomicBool::new(false),
            subscribed: watch::channel(false).0,
            task: Mutex::new(None),
        }
    }

    /// Starts the subscriber if needed and waits until it is subscribed, at most
    /// `limit`. Polled within the store's runtime ([`super::background`]), so the
    /// subscriber runs there.
    pub(crate) async fn ready(&self, limit: Duration) {
        if !self.started.swap(true, Ordering::AcqRel) {
            let task = tokio::spawn(run(
                self.source.clone(),
                self.tls_ca.clone(),
                self.channel.clone(),
                Heard {
                    waiters: Arc::clone(&self.waiters),
                    l1: self.l1.clone(),
                },
                self.subscribed.clone(),
            ));
            *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        }
        let mut subscribed = self.subscribed.subscribe();
        let _ = tokio::time::timeout(limit, subscribed.wait_for(|on| *on)).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// Where what the subscriber hears goes.
struct Heard {
    waiters: Arc<dyn Wake>,
    l1: Option<Arc<L1>>,
}

impl Heard {
    fn payload(&self, payload: &str) {
        if payload.starts_with('#') {
            if let Some(l1) = self.l1.as_ref().filter(|l1| l1.beat() == payload) {
                l1.confirmed();
            }
        } else if payload.starts_with('[') {
            for key in serde_json::from_str::<Vec<String>>(payload).unwrap_or_default() {
                self.entry(&key);
            }
        } else {
            self.entry(payload);
        }
    }

    fn entry(&self, key: &str) {
        if let Some(l1) = &self.l1 {
            l1.evict(key);
        }
        self.waiters.wake(key);
    }

    fn lost(&self) {
        if let Some(l1) = &self.l1 {
            l1.lost();
        }
    }
}

async fn run(
    source: Source,
    tls_ca: Option<Arc<Vec<u8>>>,
    channel: String,
    heard: Heard,
    subscribed: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        let client = match &source {
            Source::Nodes(urls) => super::client(&urls[attempt % urls.len()], tls_ca.as_deref()),
            Source::Sentinel(target) => super::sentinel::master(target, tls_ca.as_deref()).await,
        };
        let beat_client = client.as_ref().ok().cloned();
        match subscribe(client, &channel).await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                subscribed.send_replace(true);
                tracing::debug!(target: "aside", channel = %channel, "listening for stored entries");
                let beating = heard
                    .l1
                    .as_ref()
                    .zip(beat_client)
                    .map(|(l1, client)| tokio::spawn(beat(client, channel.clone(), l1.beat().to_owned())));
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = if beating.is_some() {
                        // Silence counts as the end of the subscription.
                        tokio::time::timeout(SILENCE, messages.next()).await.ok().flatten()
                    } else {
                        messages.next().await
                    };
                    let Some(message) = message else { break };
                    if let Ok(payload) = message.get_payload::<String>() {
                        heard.payload(&payload);
                    }
                }
                if let Some(beating) = beating {
                    beating.abort();
                }
                heard.lost();
                subscribed.send_replace(false);
                tracing::debug!(target: "aside", channel = %channel, "store announcements lost; reconnecting");
            }
            Err(error) => {
                tracing::debug!(target: "aside", %error, "cannot subscribe to store announcements; waiters re-check on their own");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Publishes `payload` on `channel` every [`BEAT`], over a connection of its
/// own made by `client` (to the node the subscriber listens on), until
/// aborted: the subscriber hearing it confirms the channel.
async fn beat(client: redis::Client, channel: String, payload: String) {
    let mut connection = None;
    let mut ticks = tokio::time::interval(BEAT);
    loop {
        ticks.tick().await;
        if connection.is_none() {
            connection = tokio::time::timeout(BEAT * 5, client.get_multiplexed_async_connection())
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some(conn) = connection.as_mut() {
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(&channel).arg(&payload);
            let sent = tokio::time::timeout(BEAT * 5, publish.query_async::<i64>(conn)).await;
            if !matches!(sent, Ok(Ok(_))) {
                connection = None;
            }
        }
    }
}

async fn subscribe(client: redis::RedisResult<redis::Client>, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = client?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out")))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}
