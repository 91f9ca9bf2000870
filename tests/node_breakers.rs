//! One circuit breaker per master on a cluster: a dead or frozen master fails
//! open the calls for its own slots only, the live masters' entries keep being
//! served from the cache, and once the master is back its slots are cached
//! again on their own. After a reshard a key answers to its new owner's breaker.
//!
//! Each test starts its own 3-master cluster (`aside_testkit::RedisCluster`, node
//! timeout 2 s) with `cluster-require-full-coverage no`, so that the live
//! masters keep serving their slots after the cluster declares the failure (with
//! the default `yes` they answer `CLUSTERDOWN` for every slot 2–4 s after a
//! master dies, whatever the client does). The latencies of the calls are
//! printed (`--nocapture`); nothing is asserted on them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aside::BreakerState;
use aside_testkit::{key_slot, RedisCluster};

const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// What one computation of the cached function costs.
const WORK: Duration = Duration::from_millis(20);
/// Keys of the cached function, spread over the three masters.
const KEYS: u64 = 60;
/// How long calls are made while a master is down.
const OUTAGE: Duration = Duration::from_secs(5);

#[path = "support/square.rs"]
mod square;
use square::Square;

/// Lets the live masters serve their slots while one is down.
fn serve_partial_coverage(cluster: &RedisCluster) {
    for node in cluster.nodes() {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query(&mut node.connection())
            .expect("CONFIG SET cluster-require-full-coverage no");
    }
}

/// The address a cluster's slot map gives master `node`, as `Stats::breakers` keys it.
fn address(cluster: &RedisCluster, node: usize) -> String {
    format!("127.0.0.1:{}", cluster.nodes()[node].port())
}

/// The keys `0..KEYS` by the master that serves them.
fn by_node(cluster: &RedisCluster, square: &Square) -> BTreeMap<usize, Vec<u64>> {
    let mut by_node: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for n in 0..KEYS {
        by_node
            .entry(cluster.node_for_key(&square.full_key(n)))
            .or_default()
            .push(n);
    }
    assert_eq!(by_node.len(), 3, "keys on every master: {by_node:?}");
    by_node
}

/// Calls and their latencies.
#[derive(Default)]
struct Tally {
    hits: usize,
    took: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, (hit, took): (bool, Duration)) {
        self.hits += usize::from(hit);
        self.took.push(took);
    }

    fn calls(&self) -> usize {
        self.took.len()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut took = self.took.clone();
        took.sort();
        let at = |q: f64| {
            took.get(((took.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let mean = took.iter().sum::<Duration>() / u32::try_from(took.len().max(1)).unwrap();
        write!(
            f,
            "{} calls, {} hits; latency mean {mean:?}, p50 {:?}, p99 {:?}, max {:?}",
            took.len(),
            self.hits,
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

/// Calls every key in turn, round after round, for `outage`; returns the
/// tallies of the live masters' keys and of the dead master's.
async fn call_round_robin(square: &Square, dead: &[u64], outage: Duration) -> (Tally, Tally) {
    let (mut live, mut down) = (Tally::default(), Tally::default());
    let started = Instant::now();
    while started.elapsed() < outage {
        for n in 0..KEYS {
            let call = square.timed_call(n).await;
            if dead.contains(&n) {
                down.add(call);
            } else {
                live.add(call);
            }
        }
    }
    (live, down)
}

/// Calls every key until each is a hit (cached again), for at most `limit`;
/// returns how long it took, or `None`.
async fn until_all_hit(square: &Square, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let mut all = true;
        for n in 0..KEYS {
            all &= square.timed_call(n).await.0;
        }
        if all {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn a_master_down(
    how: &str,
    down: impl FnOnce(&mut RedisCluster, usize),
    up: impl FnOnce(&mut RedisCluster, usize),
) {
    let mut cluster = RedisCluster::start();
    serve_partial_coverage(&cluster);
    let square = Square::connect(&cluster, "nodes", OP_TIMEOUT, WORK).await;
    let mut by_node = by_node(&cluster, &square);
    for n in 0..KEYS {
        square.call(n).await;
    }
    let (healthy, _) = call_round_robin(&square, &[], Duration::from_millis(500)).await;
    println!("{how}: healthy cluster: {healthy}");

    let dead = 1;
    let on_dead = by_node.remove(&dead).expect("keys on the dead master");
    let runs = square.runs();
    down(&mut cluster, dead);
    // A burst of calls for the dead master's slots: each computes.
    for &n in &on_dead {
        assert!(!square.timed_call(n).await.0, "square({n}) lives on the dead master");
    }
    let (live, failing) = call_round_robin(&square, &on_dead, OUTAGE).await;
    let stats = square.cache.stats();
    println!("{how}: live masters' keys for {OUTAGE:?} with master {dead} down: {live}");
    println!("{how}: master {dead}'s keys meanwhile: {failing}");
    println!(
        "{how}: breaker {:?}, opened {}, skips {}, backend errors {}; per master {:?}",
        stats.breaker, stats.breaker_opened, stats.breaker_skips, stats.total.backend_errors, stats.breakers
    );
    assert_eq!(live.hits, live.calls(), "the live masters' entries are all hits");
    assert_eq!(failing.hits, 0, "the dead master's keys compute");
    assert_eq!(
        square.runs() - runs,
        (on_dead.len() + failing.calls()) as u64,
        "only the dead master's keys computed"
    );
    for node in 0..3 {
        let breaker = stats.breakers[&address(&cluster, node)];
        if node == dead {
            assert!(breaker.opened >= 1, "the dead master's breaker opened: {breaker:?}");
        } else {
            assert_eq!(breaker.opened, 0, "master {node}'s breaker never opened: {breaker:?}");
            assert_eq!(breaker.state, BreakerState::Closed);
        }
    }
    assert_eq!(stats.breaker, BreakerState::Open, "the worst of the masters' breakers");

    up(&mut cluster, dead);
    let back = until_all_hit(&square, Duration::from_secs(20)).await;
    println!("{how}: every key a hit again {back:?} after master {dead} came back");
    assert!(back.is_some(), "caching resumes for every key once the master is back");
    let stats = square.cache.stats();
    assert_eq!(stats.breaker, BreakerState::Closed, "{stats:?}");
    assert!(stats.breakers.values().all(|b| b.state == BreakerState::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_open_its_slots_only() {
    a_master_down(
        "killed",
        |cluster, node| cluster.nodes_mut()[node].stop(),
        |cluster, node| cluster.nodes_mut()[node].restart(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_fails_open_its_slots_only() {
    a_master_down(
        "frozen",
        |cluster, node| cluster.nodes()[node].freeze(),
        |cluster, node| cluster.nodes()[node].thaw(),
    )
    .await;
}

/// After a reshard a key answers to its new owner's breaker: the owner dying
/// opens its breaker, not the old owner's, whose other keys stay hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reshard_a_key_answers_to_its_new_owners_breaker() {
    let mut cluster = RedisCluster::start();
    serve_partial_coverage(&cluster);
    let square = Square::connect(&cluster, "nodes", OP_TIMEOUT, WORK).await;
    let by_node = by_node(&cluster, &square);
    let (old_owner, new_owner) = (0, 2);
    let moved = by_node[&old_owner][0];
    let stayed = by_node[&old_owner][1..].to_vec();
    for n in 0..KEYS {
        square.call(n).await;
    }
    let slot = key_slot(&square.full_key(moved));
    cluster.move_slots(&[slot], new_owner);
    assert_eq!(cluster.node_for_key(&square.full_key(moved)), new_owner);
    // Calls go on for a while after the reshard, as they would.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(square.timed_call(moved).await.0, "the moved entry moved with its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    cluster.nodes_mut()[new_owner].stop();
    for _ in 0..10 {
        assert!(!square.timed_call(moved).await.0, "the new owner is dead: computed");
    }
    for &n in &stayed {
        assert!(
            square.timed_call(n).await.0,
            "square({n}) stayed on the old owner: a hit"
        );
    }
    let stats = square.cache.stats();
    println!("after the reshard and the new owner's death: {:?}", stats.breakers);
    assert!(stats.breakers[&address(&cluster, new_owner)].opened >= 1, "{stats:?}");
    assert_eq!(stats.breakers[&address(&cluster, old_owner)].opened, 0, "{stats:?}");
}
