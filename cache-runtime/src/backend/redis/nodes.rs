//! The circuit breakers of a store: one for a single node or a master that
//! Redis Sentinel names; on a cluster, one per master, so that a dead master
//! fails open the calls for its own slots only.
//!
//! A request on a key answers to the breaker of the master that serves the
//! key's hash slot in the store's copy of the cluster's slot map (`CLUSTER
//! SLOTS`). The store reads it on its first calls, again at most
//! [`MAP_MAX_AGE`] later while calls are made, and soon after a call fails or is
//! turned away by a moving slot, so after a reshard a key's breaker is its new
//! owner's. A request for one node (a `SCAN` step, a `PING`) answers to that
//! node's breaker. A request that names neither, and any request before the
//! map is read (or on a slot no master serves), answers to the cluster's shared
//! breaker — the only one of a single node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use crate::breaker::{now_ms, Breaker, BreakerState, NodeBreaker};
use crate::error::{Error, Result};

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// No master serves the slot (in [`SlotMap::owners`]).
const UNSERVED: u16 = u16::MAX;
/// How old the slot map may grow while calls are made before it is read again.
pub(crate) const MAP_MAX_AGE: Duration = Duration::from_secs(1);
/// The shortest time between two reads of the slot map that calls' failures
/// ask for.
const MAP_MIN_GAP: Duration = Duration::from_millis(100);
/// Nodes asked for the slot map, one after the other, before a read gives up.
const MAP_ATTEMPTS: usize = 3;
/// The operation that reads the slot map, in errors.
const OP: &str = "CLUSTER SLOTS";

/// Which breaker a request answers to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Route<'a> {
    /// A request on this key (any other keys it names share its slot).
    Key(&'a str),
    /// A request for the node at this address, as the slot map names it.
    Node(&'a str, u16),
    /// A request that names no key and no node.
    Any,
}

/// A master of the cluster and its breaker.
#[derive(Debug)]
pub(crate) struct Master {
    host: String,
    port: u16,
    breaker: Breaker,
}

impl Master {
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl std::fmt::Display for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which master serves each slot, as one node told it.
#[derive(Debug)]
struct SlotMap {
    /// Per slot, the index of its master in `masters`, or [`UNSERVED`].
    owners: Vec<u16>,
    masters: Vec<Arc<Master>>,
}

/// The breaker a request answers to: the shared one or a master's.
pub(crate) enum Picked<'a> {
    Shared(&'a Breaker),
    Master(Arc<Master>),
}

impl std::ops::Deref for Picked<'_> {
    type Target = Breaker;

    fn deref(&self) -> &Breaker {
        match self {
            Picked::Shared(breaker) => breaker,
            Picked::Master(master) => &master.breaker,
        }
    }
}

impl Picked<'_> {
    /// The master, when the breaker is one's.
    pub(crate) fn master(&self) -> Option<&Master> {
        match self {
            Picked::Shared(_) => None,
            Picked::Master(master) => Some(master),
        }
    }
}

/// The breakers of one store; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    /// A single node's, a sentinel-managed master's, or on a cluster the one of
    /// requests no master is known for.
    shared: Breaker,
    /// On a cluster: the slot map and the masters' breakers.
    cluster: Option<Cluster>,
}

#[derive(Debug, Default)]
struct Cluster {
    map: RwLock<Option<Arc<SlotMap>>>,
    /// Whether a read of the slot map is on its way.
    reading: AtomicBool,
    /// Milliseconds (see [`now_ms`]) from which the map is due to be read again.
    due_at: AtomicU64,
    /// When the latest read started.
    read_at: AtomicU64,
    /// When a request through the cluster connection was last answered:
    /// a wedged connection answers none (see [`Breakers::silent_since`]).
    answered_at: AtomicU64,
    /// How often the breakers of masters no longer in the map opened and skipped.
    retired: (AtomicU64, AtomicU64),
}

impl Breakers {
    /// One breaker, for a single node or a sentinel-managed master.
    pub(crate) fn single() -> Breakers {
        Breakers::default()
    }

    /// A breaker per master of a cluster, once its slot map is read.
    pub(crate) fn cluster() -> Breakers {
        Breakers {
            shared: Breaker::default(),
            cluster: Some(Cluster::default()),
        }
    }

    /// The breaker of a single node or a sentinel-managed master; on a
    /// cluster, that of requests no master is known for.
    pub(crate) fn shared(&self) -> &Breaker {
        &self.shared
    }

    fn map(&self) -> Option<Arc<SlotMap>> {
        let cluster = self.cluster.as_ref()?;
        cluster.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The breaker `route` answers to.
    pub(crate) fn pick(&self, route: Route<'_>) -> Picked<'_> {
        let Some(cluster) = &self.cluster else {
            return Picked::Shared(&self.shared);
        };
        let map = cluster.map.read().unwrap_or_else(|e| e.into_inner());
        let master = match (&*map, route) {
            (Some(map), Route::Key(key)) => map
                .masters
                .get(usize::from(map.owners[usize::from(slot(key.as_bytes()))])),
            (Some(map), Route::Node(host, port)) => map.masters.iter().find(|m| m.port == port && m.host == host),
            _ => None,
        };
        match master {
            Some(master) => Picked::Master(Arc::clone(master)),
            None => Picked::Shared(&self.shared),
        }
    }

    /// The masters of the slot map the store holds, if it read one.
    pub(crate) fn masters(&self) -> Option<Vec<Arc<Master>>> {
        self.map().map(|map| map.masters.clone())
    }

    /// Claims the next read of the slot map when one is due (on a cluster:
    /// none read yet, the map older than [`MAP_MAX_AGE`], or a call failed).
    /// The claimant must run [`Breakers::read_claimed_map`].
    pub(crate) fn claim_map_read(&self) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let now = now_ms();
        now >= cluster.due_at.load(Ordering::Acquire)
            && cluster
                .reading
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Asks for the slot map to be read again soon: a call failed or was
    /// turned away, perhaps because its slot moved.
    pub(crate) fn map_doubted(&self) {
        if let Some(cluster) = &self.cluster {
            let soon = cluster.read_at.load(Ordering::Acquire).saturating_add(ms(MAP_MIN_GAP));
            cluster.due_at.fetch_min(soon, Ordering::AcqRel);
        }
    }

    /// Runs the read of the slot map claimed by [`Breakers::claim_map_read`]
    /// (see [`Breakers::read_map`]), ending the claim however it ends.
    pub(crate) async fn read_claimed_map(&self, conn: &ClusterConnection, timeout: Duration) {
        /// Ends the claim, the read cancelled included.
        struct Claim<'a>(&'a Breakers);
        impl Drop for Claim<'_> {
            fn drop(&mut self) {
                if let Some(cluster) = &self.0.cluster {
                    cluster.reading.store(false, Ordering::Release);
                }
            }
        }
        let _claim = Claim(self);
        let _ = self.read_map(conn, timeout).await;
    }

    /// Reads the slot map through `conn` (each node asked bounded by
    /// `timeout`), makes it the one requests are routed by, and returns its
    /// masters: also what a request for every master (a `SCAN`) needs fresh.
    ///
    /// # Errors
    ///
    /// When no node asked gave the map: the last failure, a
    /// [`Timeout`](Error::Timeout) when it timed out. Off a cluster, none.
    pub(crate) async fn read_map(&self, conn: &ClusterConnection, timeout: Duration) -> Result<Vec<Arc<Master>>> {
        let Some(cluster) = &self.cluster else {
            return Ok(Vec::new());
        };
        let started = now_ms();
        cluster.read_at.store(started, Ordering::Release);
        // Due again at the latest once the map is old; sooner if a call fails.
        cluster
            .due_at
            .store(started.saturating_add(ms(MAP_MAX_AGE)), Ordering::Release);
        // Masters whose breakers are closed first: they answer.
        let mut routes: Vec<RoutingInfo> = Vec::new();
        if let Some(mut masters) = self.masters() {
            masters.sort_by_key(|master| master.breaker.state() != BreakerState::Closed);
            routes.extend(masters.iter().map(|master| {
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: master.host.clone(),
                    port: master.port,
                })
            }));
        }
        routes.truncate(MAP_ATTEMPTS - 1);
        routes.resize(MAP_ATTEMPTS, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random));
        let mut failure = Error::Timeout { op: OP, after: timeout };
        for routing in routes {
            let mut conn = conn.clone();
            let read = conn.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing);
            let ranges = match tokio::time::timeout(timeout, read).await {
                Ok(Ok(reply)) => parse_slots(&reply),
                Ok(Err(source)) => {
                    tracing::debug!(target: "aside", error = %source, "reading the cluster's slot map failed");
                    failure = Error::Redis { op: OP, source };
                    continue;
                }
                Err(_) => {
                    failure = Error::Timeout { op: OP, after: timeout };
                    continue;
                }
            };
            self.answered();
            if ranges.is_empty() {
                continue;
            }
            return Ok(self.install(cluster, &ranges));
        }
        Err(failure)
    }

    /// Makes the map of `ranges` the current one, keeping the breakers of the
    /// masters it had already; returns its masters.
    fn install(&self, cluster: &Cluster, ranges: &[(u16, u16, String, u16)]) -> Vec<Arc<Master>> {
        let mut current = cluster.map.write().unwrap_or_else(|e| e.into_inner());
        let old: &[Arc<Master>] = current.as_ref().map_or(&[], |map| &map.masters);
        let mut masters: Vec<Arc<Master>> = Vec::new();
        let mut owners = vec![UNSERVED; SLOTS];
        for (first, last, host, port) in ranges {
            let index = match masters.iter().position(|m| m.port == *port && m.host == *host) {
                Some(index) => index,
                None => {
                    let master = old
                        .iter()
                        .find(|m| m.port == *port && m.host == *host)
                        .map(Arc::clone)
                        .unwrap_or_else(|| {
                            Arc::new(Master {
                                host: host.clone(),
                                port: *port,
                                breaker: Breaker::default(),
                            })
                        });
                    masters.push(master);
                    masters.len() - 1
                }
            };
            let index = u16::try_from(index).unwrap_or(UNSERVED);
            if let Some(slots) = owners.get_mut(usize::from(*first)..=usize::from(*last)) {
                slots.fill(index);
            }
        }
        for gone in old.iter().filter(|m| !masters.iter().any(|kept| Arc::ptr_eq(kept, m))) {
            let (opened, skipped) = gone.breaker.counts();
            cluster.retired.0.fetch_add(opened, Ordering::Relaxed);
            cluster.retired.1.fetch_add(skipped, Ordering::Relaxed);
            tracing::debug!(target: "aside", node = %gone, "a master left the cluster's slot map");
        }
        *current = Some(Arc::new(SlotMap {
            owners,
            masters: masters.clone(),
        }));
        masters
    }

    /// Notes that a request through the cluster connection was answered.
    pub(crate) fn answered(&self) {
        if let Some(cluster) = &self.cluster {
            // Written at most once a millisecond: the steady state only reads.
            let now = now_ms();
            if cluster.answered_at.load(Ordering::Relaxed) < now {
                cluster.answered_at.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Whether no request through the cluster connection was answered since
    /// `since` (milliseconds, see [`now_ms`]): with a breaker per master, one
    /// master timing out is that master's trouble, while a connection that
    /// answers nobody is wedged. Always true off a cluster.
    pub(crate) fn silent_since(&self, since: u64) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|cluster| cluster.answered_at.load(Ordering::Relaxed) < since)
    }

    /// Every breaker: the shared one, then the masters'.
    fn each(&self, mut f: impl FnMut(&Breaker)) {
        f(&self.shared);
        if let Some(map) = self.map() {
            for master in &map.masters {
                f(&master.breaker);
            }
        }
    }

    /// Lets every open breaker probe at once (see [`Breaker::probe_now`]).
    pub(crate) fn probe_now(&self) {
        self.each(Breaker::probe_now);
    }

    /// Whether a request on `route` made within `within` may reach Redis.
    pub(crate) fn reachable_within(&self, route: Route<'_>, within: Duration) -> bool {
        self.pick(route).reachable_within(within)
    }

    /// Whether requests on any key made within `within` may reach Redis:
    /// every breaker may let them through by then.
    pub(crate) fn all_reachable_within(&self, within: Duration) -> bool {
        let mut all = true;
        self.each(|breaker| all &= breaker.reachable_within(within));
        all
    }

    /// The worst state of any breaker: open if one is, else half-open if one
    /// is, else closed.
    pub(crate) fn state(&self) -> BreakerState {
        let mut worst = BreakerState::Closed;
        self.each(|breaker| {
            worst = match (worst, breaker.state()) {
                (BreakerState::Open, _) | (_, BreakerState::Open) => BreakerState::Open,
                (BreakerState::HalfOpen, _) | (_, BreakerState::HalfOpen) => BreakerState::HalfOpen,
                _ => BreakerState::Closed,
            };
        });
        worst
    }

    /// How many times the breakers opened, and how many calls they skipped,
    /// all together (those of masters gone from the cluster included).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let (mut opened, mut skipped) = self.cluster.as_ref().map_or((0, 0), |cluster| {
            (
                cluster.retired.0.load(Ordering::Relaxed),
                cluster.retired.1.load(Ordering::Relaxed),
            )
        });
        self.each(|breaker| {
            let (o, s) = breaker.counts();
            opened += o;
            skipped += s;
        });
        (opened, skipped)
    }

    /// Each master's breaker, by the address the slot map gives it; empty off
    /// a cluster or before the map is read.
    pub(crate) fn per_master(&self) -> BTreeMap<String, NodeBreaker> {
        self.map()
            .map(|map| {
                map.masters
                    .iter()
                    .map(|master| (master.to_string(), master.breaker.snapshot()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `CLUSTER SLOTS` → `(first, last, host, port)` of each range's master; each
/// range is `[first, last, [host, port, id, ...], replicas...]`. Ranges it
/// cannot read are left out.
fn parse_slots(reply: &Value) -> Vec<(u16, u16, String, u16)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let first: u16 = redis::from_redis_value_ref(fields.first()?).ok()?;
            let last: u16 = redis::from_redis_value_ref(fields.get(1)?).ok()?;
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host: String = redis::from_redis_value_ref(master.first()?).ok()?;
            let port: u16 = redis::from_redis_value_ref(master.get(1)?).ok()?;
            Some((first, last, host, port))
        })
        .collect()
}

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (what
/// is between the first `{` and the next `}`, when not empty), modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn slots_are_the_ones_redis_rs_routes_by() {
        for key in [
            "foo",
            "",
            "{user1000}.following",
            "foo{}{bar}",
            "foo{{bar}}zap",
            "aside:computed:f:v1.1:abc",
            "{aside:computed:f:v1.1:abc}:lease",
        ] {
            assert_eq!(Slot::new(slot(key.as_bytes())), Some(Slot::for_key(key)), "{key}");
        }
        assert_eq!(slot(b"foo"), 12182);
    }

    fn ranges() -> Vec<(u16, u16, String, u16)> {
        vec![
            (0, 5460, "127.0.0.1".into(), 7000),
            (5461, 10922, "127.0.0.1".into(), 7001),
            (10923, 16383, "127.0.0.1".into(), 7002),
        ]
    }

    fn open(breaker: &Breaker) {
        for _ in 0..crate::breaker::FAILURES_TO_OPEN {
            if let Some(permit) = breaker.allow() {
                permit.record(false, &"test");
            }
        }
    }

    #[test]
    fn a_key_answers_to_its_slots_master_and_only_that_one_opens() {
        let breakers = Breakers::cluster();
        assert!(
            matches!(breakers.pick(Route::Key("foo")), Picked::Shared(_)),
            "no map yet"
        );
        breakers.install(breakers.cluster.as_ref().unwrap(), &ranges());
        let foo = breakers.pick(Route::Key("foo"));
        assert_eq!(foo.master().map(Master::port), Some(7002), "slot 12182");
        open(&foo);
        assert_eq!(breakers.state(), BreakerState::Open, "the worst state");
        assert!(breakers.pick(Route::Key("foo")).allow().is_none());
        let elsewhere = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| slot(k.as_bytes()) < 5461)
            .unwrap();
        let other = breakers.pick(Route::Key(&elsewhere));
        assert_eq!(other.master().map(Master::port), Some(7000));
        assert!(other.allow().is_some(), "another master's breaker stays closed");
        assert!(breakers.pick(Route::Node("127.0.0.1", 7000)).allow().is_some());
        assert!(breakers.pick(Route::Node("127.0.0.1", 7002)).allow().is_none());
        assert!(breakers.shared().allow().is_some());
        assert_eq!(breakers.counts().0, 1);
        let per_master = breakers.per_master();
        assert_eq!(per_master["127.0.0.1:7002"].state, BreakerState::Open);
        assert_eq!(per_master["127.0.0.1:7000"].state, BreakerState::Closed);
        assert!(!breakers.all_reachable_within(Duration::from_millis(10)));
        assert!(breakers.reachable_within(Route::Key(&elsewhere), Duration::ZERO));
    }

    #[test]
    fn after_a_reshard_a_key_answers_to_its_new_owner() {
        let breakers = Breakers::cluster();
        let cluster = breakers.cluster.as_ref().unwrap();
        breakers.install(cluster, &ranges());
        open(&breakers.pick(Route::Key("foo")));
        // Slot 12182 moves from 7002 to 7000; 7002 keeps its breaker (still open).
        let mut moved = ranges();
        moved[2].0 = 12183;
        moved.push((12182, 12182, "127.0.0.1".into(), 7000));
        breakers.install(cluster, &moved);
        let foo = breakers.pick(Route::Key("foo"));
        assert_eq!(foo.master().map(Master::port), Some(7000));
        assert!(foo.allow().is_some());
        assert_eq!(breakers.per_master()["127.0.0.1:7002"].state, BreakerState::Open);
        // 7002 leaves the cluster: its counts stay in the totals.
        breakers.install(cluster, &[(0, 16383, "127.0.0.1".into(), 7000)]);
        assert_eq!(breakers.counts().0, 1);
        assert_eq!(breakers.state(), BreakerState::Closed);
        assert_eq!(breakers.per_master().len(), 1);
    }

    #[test]
    fn a_single_node_has_one_breaker() {
        let breakers = Breakers::single();
        assert!(matches!(breakers.pick(Route::Key("foo")), Picked::Shared(_)));
        assert!(!breakers.claim_map_read());
        assert!(breakers.per_master().is_empty());
        assert!(breakers.silent_since(0));
    }
}
