//! Lanes: a single-node store's connections on its callers' multi-thread runtimes.
//!
//! The store's own connection is driven on the store's thread
//! ([`background`](super::background)), so that it outlives any caller's runtime.
//! That costs every request two hand-overs between threads, and a third busy
//! thread beside the runtime's workers: with many tasks on few cores, a hit
//! through it gets through about 15 % fewer calls a second than raw redis-rs on
//! the same runtime.
//!
//! So a request made on a multi-thread runtime goes through that runtime's lane:
//! a connection of this store opened on that runtime, on its first request
//! there, and driven by its workers like any redis-rs connection of the
//! application. Until the lane is open (and for good if it cannot be), the
//! request takes the store's connection, as every request on a current-thread
//! runtime does: a current-thread runtime drives its connections only inside
//! `block_on`, which a caller's future polled elsewhere would never reach.
//!
//! A lane is opened by a task spawned on its runtime. The task then stays
//! parked for the runtime's life, holding a guard: when the runtime shuts down
//! (and drops its tasks, the lane's driver among them), the guard takes the
//! lane out, so no request meets a dead connection and nothing piles up in a
//! process that builds runtimes by the hundred (`#[tokio::test]`). Dropping the
//! store aborts the parked tasks.
//!
//! A multi-thread runtime built without IO or timers cannot carry a lane;
//! tokio says so by panicking inside the opening task (it offers no other way
//! to ask), which ends that task only: the lane is marked refused, and that
//! runtime's requests keep the store's connection. With `panic = "abort"` no
//! lane is ever tried. A lane that fails to connect (Redis down) is tried again
//! after [`RETRY_AFTER`]; the store's connection and its breaker meanwhile
//! decide what the calls do.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Id, RuntimeFlavor};
use tokio::task::AbortHandle;

use super::connection::{open, Connection};
use crate::config::RedisTarget;

/// How long a runtime whose lane failed to connect uses the store's connection
/// before its lane is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The lanes of one single-node store, by runtime; see the module docs.
pub(super) struct Lanes {
    target: RedisTarget,
    tls_ca: Option<Arc<Vec<u8>>>,
    op_timeout: Duration,
    /// Few entries (one per live multi-thread runtime), so a list. Read by
    /// every request; written only when a lane opens, fails or goes.
    lanes: RwLock<Vec<(Id, Lane)>>,
}

enum Lane {
    /// Its task is opening it; requests take the store's connection meanwhile.
    Opening(AbortHandle),
    Open(Connection, AbortHandle),
    /// Not to be tried again before the instant; `None`: never (the runtime
    /// has no IO or no timers).
    Refused(Option<Instant>),
}

impl Lanes {
    /// Lanes for a store of `target` (a single node; not behind Sentinel,
    /// whose master may change under a lane).
    pub(super) fn new(target: RedisTarget, tls_ca: Option<Arc<Vec<u8>>>, op_timeout: Duration) -> Arc<Lanes> {
        Arc::new(Lanes {
            target,
            tls_ca,
            op_timeout,
            lanes: RwLock::default(),
        })
    }

    /// The connection of the caller's runtime's lane, when it is open. On a
    /// multi-thread runtime without one, starts opening it (unless it was
    /// refused lately) and returns `None`: this request takes the store's
    /// connection.
    pub(super) fn current(self: &Arc<Self>) -> Option<Connection> {
        if !cfg!(panic = "unwind") {
            return None;
        }
        let runtime = Handle::try_current().ok()?;
        if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        let id = runtime.id();
        {
            let lanes = self.lanes.read().unwrap_or_else(|e| e.into_inner());
            match lanes.iter().find(|(lane, _)| *lane == id).map(|(_, lane)| lane) {
                Some(Lane::Open(connection, _)) => return Some(connection.clone()),
                Some(Lane::Opening(_) | Lane::Refused(None)) => return None,
                Some(Lane::Refused(Some(until))) if Instant::now() < *until => return None,
                Some(Lane::Refused(Some(_))) | None => {}
            }
        }
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        let at = lanes.iter().position(|(lane, _)| *lane == id);
        // Another request may have started it meanwhile.
        if let Some(Lane::Opening(_) | Lane::Open(..) | Lane::Refused(None)) = at.map(|at| &lanes[at].1) {
            return None;
        }
        let task = runtime.spawn(keep(Arc::downgrade(self), id));
        let opening = Lane::Opening(task.abort_handle());
        match at {
            Some(at) => lanes[at].1 = opening,
            None => {
                // A lane refused for a while has no task that would take it out
                // when its runtime goes: drop those whose while is over (their
                // runtime, if it lives, starts them again), so runtimes built
                // and dropped while Redis is down leave nothing behind.
                let now = Instant::now();
                lanes.retain(|(_, lane)| !matches!(lane, Lane::Refused(Some(until)) if *until <= now));
                lanes.push((id, opening));
            }
        }
        None
    }

    /// What the lane of `id` became: open, or refused (`None` when `opened`
    /// failed), unless it was taken out meanwhile.
    fn opened(&self, id: Id, opened: Option<Connection>) {
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, lane)) = lanes.iter_mut().find(|(lane, _)| *lane == id) {
            let Lane::Opening(task) = lane else { return };
            *lane = match opened {
                Some(connection) => Lane::Open(connection, task.clone()),
                None => Lane::Refused(Some(Instant::now() + RETRY_AFTER)),
            };
        }
    }

    /// The lane of `id`'s task ended: its runtime shut down (the lane goes) or
    /// it cannot carry a lane (`refused`: it stays, refused for good).
    fn ended(&self, id: Id, refused: bool) {
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = lanes.iter().position(|(lane, _)| *lane == id) {
            if refused {
                lanes[at].1 = Lane::Refused(None);
            } else if !matches!(lanes[at].1, Lane::Refused(_)) {
                lanes.swap_remove(at);
            }
        }
    }

    /// How many lanes are open now (for tests).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        let lanes = self.lanes.read().unwrap_or_else(|e| e.into_inner());
        lanes.iter().filter(|(_, lane)| matches!(lane, Lane::Open(..))).count()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for (_, lane) in self.lanes.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            if let Lane::Opening(task) | Lane::Open(_, task) = lane {
                task.abort();
            }
        }
    }
}

/// The task of the lane of runtime `id`: opens it on this runtime, then
/// parks until the runtime drops it (or the store aborts it).
async fn keep(lanes: Weak<Lanes>, id: Id) {
    let mut guard = Guard { lanes, id, armed: true };
    let Some(store) = guard.lanes.upgrade() else { return };
    let (target, tls_ca, op_timeout) = (store.target.clone(), store.tls_ca.clone(), store.op_timeout);
    // Not held while connecting: dropping the store must not wait for this task.
    drop(store);
    // tokio panics here on a runtime without timers, and in `open` on one
    // without IO: then this task ends, and the guard refuses the lane.
    drop(tokio::time::sleep(Duration::ZERO));
    let opened = match open(&target, tls_ca.as_deref(), op_timeout, 0).await {
        Ok(connection) => Some(connection),
        Err(error) => {
            tracing::debug!(target: "aside", redis = %target, %error,
                "cannot open a connection on this runtime; its calls use the store's connection");
            None
        }
    };
    let Some(store) = guard.lanes.upgrade() else { return };
    let connected = opened.is_some();
    store.opened(id, opened);
    drop(store);
    if connected {
        std::future::pending::<()>().await;
    }
    // Refused for a while: the entry stays, and a later request tries again.
    guard.armed = false;
}

/// Takes a lane out when its task is dropped: see [`Lanes::ended`].
struct Guard {
    lanes: Weak<Lanes>,
    id: Id,
    /// `false` once the task ends on its own, its lane refused for a while.
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(lanes) = self.lanes.upgrade() {
            lanes.ended(self.id, std::thread::panicking());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes() -> Arc<Lanes> {
        // Nothing listens there: opening fails fast, which these tests do not reach.
        let target = crate::config::RedisTarget::parse("redis://127.0.0.1:1").expect("a target");
        Lanes::new(target, None, Duration::from_millis(200))
    }

    #[test]
    fn a_current_thread_runtime_never_gets_a_lane() {
        let lanes = lanes();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async { assert!(lanes.current().is_none()) });
        assert!(lanes.lanes.read().expect("lanes").is_empty());
    }

    #[test]
    fn a_runtime_without_io_or_timers_is_refused_for_good() {
        let lanes = lanes();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            assert!(lanes.current().is_none());
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let refused = matches!(
                    lanes.lanes.read().expect("lanes").first(),
                    Some((_, Lane::Refused(None)))
                );
                if refused {
                    break;
                }
                assert!(Instant::now() < deadline, "the lane was never refused");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(lanes.current().is_none(), "never tried again");
        });
        assert_eq!(lanes.open_count(), 0);
    }

    #[test]
    fn lanes_that_cannot_connect_are_retried_and_leave_nothing_behind() {
        // A port nothing listens on: every connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let target = crate::config::RedisTarget::parse(&format!("redis://127.0.0.1:{port}")).expect("a target");
        let lanes = Lanes::new(target, None, Duration::from_millis(200));
        let refused = |lanes: &Lanes| {
            let lanes = lanes.lanes.read().expect("lanes");
            lanes
                .iter()
                .filter(|(_, lane)| matches!(lane, Lane::Refused(Some(_))))
                .count()
        };
        for round in 0..2 {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            runtime.block_on(async {
                assert!(lanes.current().is_none());
                let deadline = Instant::now() + Duration::from_secs(10);
                while refused(&lanes) == 0 || lanes.lanes.read().expect("lanes").len() != 1 {
                    assert!(Instant::now() < deadline, "round {round}: the lane was never refused");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert!(lanes.current().is_none(), "refused for a while");
            });
            drop(runtime);
            // The refused lane of the dropped runtime stays until its while is over…
            assert_eq!(lanes.lanes.read().expect("lanes").len(), 1);
            std::thread::sleep(RETRY_AFTER + Duration::from_millis(100));
            // …and the next runtime's first request drops it (each round checks
            // that the list holds its own runtime's lane only).
        }
    }

    #[test]
    fn a_lane_opens_on_its_runtime_and_goes_when_the_runtime_does() {
        let server = aside_testkit::RedisServer::start();
        let target = crate::config::RedisTarget::parse(&server.url()).expect("a target");
        let lanes = Lanes::new(target, None, Duration::from_secs(2));
        for _round in 0..3 {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            runtime.block_on(async {
                assert!(
                    lanes.current().is_none(),
                    "the first request takes the store's connection"
                );
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut connection = loop {
                    if let Some(connection) = lanes.current() {
                        break connection;
                    }
                    assert!(Instant::now() < deadline, "the lane never opened");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let pong: String = redis::cmd("PING").query_async(&mut connection).await.expect("PING");
                assert_eq!(pong, "PONG");
            });
            assert_eq!(lanes.open_count(), 1);
            drop(runtime);
            assert!(
                lanes.lanes.read().expect("lanes").is_empty(),
                "the lane went with its runtime"
            );
        }
    }
}
