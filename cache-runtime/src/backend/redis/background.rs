//! The runtime a Redis store owns: one thread running a current-thread tokio
//! runtime, started on first use and stopped when the store is dropped.
//!
//! Everything of the store that outlives one request runs there: the redis-rs
//! connection driver (and its reconnections), the cluster connection's driver,
//! the connect task, the pub/sub listener, and futures handed to
//! [`Background::spawn`]. Requests through that connection only talk to those
//! tasks through channels, so a caller's runtime may be dropped, replaced,
//! current-thread or one of many (guarantee 11): nothing the store needs dies
//! with it. (A request made on a multi-thread runtime may instead take that
//! runtime's own connection, which dies with it and is replaced by nothing the
//! store needs: see [`lanes`](super::lanes).)
//!
//! redis-rs spawns some of its work on whatever runtime is current when it
//! notices a lost connection, inside a caller's request. [`Background::enter`]
//! polls a request with this runtime as the current one (as `async-compat`
//! does), so that work lands here too, and the request's timers run on this
//! runtime's clock whatever the caller's runtime has enabled.

use std::future::Future;
use std::sync::{Mutex, OnceLock};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The name of the store's thread, as seen in `top -H` and debuggers.
const THREAD_NAME: &str = "aside-redis";

/// The store's runtime; see the module docs.
#[derive(Default)]
pub(crate) struct Background {
    handle: OnceLock<Handle>,
    /// Dropped (or sent) to stop the runtime; `None` until it is started.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("started", &self.handle.get().is_some())
            .finish()
    }
}

impl Background {
    /// The runtime's handle, starting its thread on first use.
    ///
    /// # Errors
    ///
    /// When the thread or its runtime cannot be created (out of threads or
    /// file descriptors); a later call tries again.
    pub(crate) fn handle(&self) -> std::io::Result<&Handle> {
        if let Some(handle) = self.handle.get() {
            return Ok(handle);
        }
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = self.handle.get() {
            return Ok(handle);
        }
        let (handle, stopper) = start()?;
        *stop = Some(stopper);
        Ok(self.handle.get_or_init(|| handle))
    }

    /// Runs `future` on the store's runtime, detached. Works from anywhere, a
    /// `Drop` implementation without a current runtime included. Dropped (not
    /// run) if the runtime cannot be started or the store is gone.
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.handle() {
            Ok(handle) => {
                handle.spawn(future);
            }
            Err(error) => {
                tracing::warn!(target: "aside", %error, "cannot start the cache's background thread; background work dropped");
            }
        }
    }

    /// Polls `future` with the store's runtime as the current one: what it
    /// spawns runs on the store's runtime, and its timers and sockets belong to it.
    /// Without a started runtime (it could not start) `future` runs as it is.
    pub(crate) async fn enter<F: Future>(&self, future: F) -> F::Output {
        let handle = self.handle().ok().cloned();
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(move |cx| {
            let _entered = handle.as_ref().map(Handle::enter);
            future.as_mut().poll(cx)
        })
        .await
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The thread ends its runtime (cancelling every task of the store) and
        // exits on its own; never joined, as the last handle may be dropped on
        // that very thread.
        if let Some(stop) = self.stop.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the thread and its runtime; returns the runtime's handle and its stop signal.
fn start() -> std::io::Result<(Handle, oneshot::Sender<()>)> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (started, handle) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(THREAD_NAME.to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(error));
                    return;
                }
            };
            if started.send(Ok(runtime.handle().clone())).is_err() {
                return;
            }
            // Stopped, or every sender dropped: either way the store is gone.
            let _ = runtime.block_on(stopped);
            tracing::debug!(target: "aside", "the cache's background runtime stops");
        })?;
    let handle = handle
        .recv()
        .map_err(|_| std::io::Error::other("the background thread ended before its runtime started"))??;
    Ok((handle, stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn spawned_work_runs_without_a_current_runtime() {
        let background = Background::default();
        let (done, ran) = std::sync::mpsc::channel();
        background.spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _ = done.send(std::thread::current().name().map(str::to_owned));
        });
        let thread = ran.recv_timeout(Duration::from_secs(10)).expect("the future ran");
        assert_eq!(thread.as_deref(), Some(THREAD_NAME));
    }

    #[test]
    fn work_of_a_dropped_caller_runtime_keeps_running() {
        let background = Background::default();
        let (done, ran) = std::sync::mpsc::channel();
        let caller = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        // No timer on the caller's runtime: the sleep and the spawned task are the store's.
        caller.block_on(background.enter(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = done.send(());
            });
        }));
        drop(caller);
        ran.recv_timeout(Duration::from_secs(10))
            .expect("the task outlived the caller's runtime");
    }

    #[test]
    fn dropping_it_stops_the_thread() {
        let background = Background::default();
        let (done, ended) = std::sync::mpsc::channel::<()>();
        background.spawn(async move {
            // Holds `done` until the runtime drops this task.
            std::future::pending::<()>().await;
            drop(done);
        });
        drop(background);
        assert_eq!(
            ended.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
