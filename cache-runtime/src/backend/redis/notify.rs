//! The one pub/sub subscriber of a Redis store: it hears every "entry stored"
//! announcement of the cache's namespace and wakes the local waiters of that
//! entry. On Redis Cluster, `PUBLISH` reaches every node, so one subscription to
//! any node hears the whole cluster. Under Redis Sentinel it subscribes on the
//! master the sentinels name (replicas hear announcements too: `PUBLISH` is
//! replicated), asking them again whenever the subscription is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

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

/// The subscriber: started on the first wait, reconnecting by itself.
pub(crate) struct Listener {
    source: Source,
    tls_ca: Option<Arc<Vec<u8>>>,
    channel: String,
    waiters: Arc<dyn Wake>,
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
    ) -> Listener {
        Listener {
            source,
            tls_ca,
            channel,
            waiters,
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
                Arc::clone(&self.waiters),
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

async fn run(
    source: Source,
    tls_ca: Option<Arc<Vec<u8>>>,
    channel: String,
    waiters: Arc<dyn Wake>,
    subscribed: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    for attempt in 0.. {
        let client = match &source {
            Source::Nodes(urls) => super::client(&urls[attempt % urls.len()], tls_ca.as_deref()),
            Source::Sentinel(target) => super::sentinel::master(target, tls_ca.as_deref()).await,
        };
        match subscribe(client, &channel).await {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                subscribed.send_replace(true);
                tracing::debug!(target: "aside", channel = %channel, "listening for stored entries");
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(key) = message.get_payload::<String>() {
                        waiters.wake(&key);
                    }
                }
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

async fn subscribe(client: redis::RedisResult<redis::Client>, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = client?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out")))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}
