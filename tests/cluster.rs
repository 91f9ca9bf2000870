//! A 3-master Redis Cluster: a function's entries spread over every master; one
//! master dying leaves the others serving their entries while calls for its
//! slots fail open; `invalidate_pattern` reaches every master; and an entry's
//! lease lives in the entry's hash slot.
//!
//! Each test starts its own cluster (`aside_testkit::RedisCluster`, cluster node
//! timeout 2 s). What the cluster does after a master dies is printed
//! (`--nocapture`); see the comments in `killing_one_master_*`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aside::{Cache, Key, Plain, Policy};
use aside_testkit::{key_slot, RedisCluster};
use tokio::sync::{mpsc, oneshot};

const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// The harness's `cluster-node-timeout`: no node is flagged as failing earlier.
const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_secs(2);

#[path = "support/square.rs"]
mod square;
use square::Square;

#[path = "support/monitor.rs"]
mod monitor;
use monitor::Monitor;

/// Whether `node` holds `key`, asked of the node itself.
fn node_has(cluster: &RedisCluster, node: usize, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query(&mut cluster.nodes()[node].connection())
        .expect("EXISTS on the node")
}

/// Every key on one node matching `pattern`, with SCAN.
fn scan_node(cluster: &RedisCluster, node: usize, pattern: &str) -> Vec<String> {
    let mut conn = cluster.nodes()[node].connection();
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(&mut conn)
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN batch");
    keys.sort();
    keys
}

/// `cluster_state` as `node` reports it, or why it could not be read.
fn cluster_state(cluster: &RedisCluster, node: usize) -> String {
    let read = || -> redis::RedisResult<String> {
        let mut conn = cluster.nodes()[node]
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("cluster_state:"))
            .unwrap_or("?")
            .trim()
            .to_owned())
    };
    read().unwrap_or_else(|err| format!("unreadable ({err})"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_spread_over_every_master_and_hit() {
    let cluster = RedisCluster::start();
    let square = Square::connect(&cluster, "cluster", OP_TIMEOUT, Duration::ZERO).await;
    for n in 0..30 {
        assert!(!square.call(n).await, "square({n}) is a miss the first time");
    }
    let mut per_node = [0usize; 3];
    for n in 0..30 {
        assert!(square.call(n).await, "square({n}) is a hit the second time");
        let full = square.full_key(n);
        let node = cluster.node_for_key(&full);
        assert!(node_has(&cluster, node, &full), "{full} is stored on node {node}");
        per_node[node] += 1;
    }
    println!("30 entries of one function per master: {per_node:?}");
    assert!(
        per_node.iter().all(|&count| count > 0),
        "one function's entries spread over all three masters: {per_node:?}"
    );
    assert_eq!(square.runs(), 30);
    let stats = square.cache.stats();
    assert_eq!((stats.total.hits, stats.total.misses), (30, 30));
}

/// Observed with Redis 7.0 and three masters without replicas (node timeout 2 s):
///
/// - Right after a master dies, the two live masters keep serving their slots:
///   their entries are hits, while calls for the dead master's slots fail
///   (connection refused, or the 200 ms operation timeout) and compute.
/// - The circuit breakers are one per master: a run of calls for the dead
///   master's slots (5) opens its breaker, and then those calls skip Redis
///   while the live masters' entries stay hits (`tests/node_breakers.rs`).
/// - Once the live masters declare the dead one failed (about the node timeout
///   later; with `cluster-require-full-coverage yes`, the default), they answer
///   `CLUSTERDOWN` for every slot, so live entries stop being hits as well.
///
/// Through all of it every call returns its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_master_leaves_the_others_serving_and_fails_open_for_its_slots() {
    let mut cluster = RedisCluster::start();
    let square = Square::connect(&cluster, "cluster", OP_TIMEOUT, Duration::ZERO).await;
    let mut by_node: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for n in 0..30 {
        square.call(n).await;
        by_node
            .entry(cluster.node_for_key(&square.full_key(n)))
            .or_default()
            .push(n);
    }
    assert_eq!(by_node.len(), 3, "entries on every master: {by_node:?}");
    let dead = 1;
    let on_dead = by_node.remove(&dead).unwrap();
    let on_live: Vec<u64> = by_node.into_values().flatten().collect();

    let stopped = Instant::now();
    cluster.nodes_mut()[dead].stop();

    // The live masters' entries are hits (until the cluster declares the failure,
    // which cannot happen before the node timeout).
    for &n in &on_live {
        let hit = square.call(n).await;
        assert!(
            hit || stopped.elapsed() >= CLUSTER_NODE_TIMEOUT,
            "square({n}) lives on a live master: a hit {:?} after the kill; stats {:?}",
            stopped.elapsed(),
            square.cache.stats()
        );
    }
    let phase_a = stopped.elapsed();

    // Alternating dead and live slots: the dead ones compute, the live ones hit.
    let mut alternating = Vec::new();
    for (&dead_n, &live_n) in on_dead.iter().zip(&on_live) {
        let runs = square.runs();
        let started = Instant::now();
        assert!(!square.call(dead_n).await, "square({dead_n}) lives on the dead master");
        assert_eq!(square.runs(), runs + 1);
        let dead_took = started.elapsed();
        let live_hit = square.call(live_n).await;
        alternating.push((dead_took, live_hit, stopped.elapsed()));
        assert!(
            live_hit || stopped.elapsed() >= CLUSTER_NODE_TIMEOUT,
            "square({live_n}) on a live master is a hit {:?} after the kill; stats {:?}",
            stopped.elapsed(),
            square.cache.stats()
        );
    }
    println!("live entries all hits {phase_a:?} after the kill");
    println!("alternating (dead call latency, live call hit?, since kill): {alternating:?}");

    // Dead slots in a row: each computes; the dead master's breaker opens.
    for &n in &on_dead {
        assert!(!square.call(n).await);
    }
    let stats = square.cache.stats();
    println!(
        "after {} dead-slot calls in a row: breaker {:?} (opened {}), {:?} after the kill",
        on_dead.len(),
        stats.breaker,
        stats.breaker_opened,
        stopped.elapsed()
    );
    if on_dead.len() >= 5 {
        assert!(
            stats.breaker_opened >= 1,
            "five failures in a row open the breaker: {stats:?}"
        );
    }

    // Until the live masters report the failure (or 10 s), every call still
    // returns its value; record what the live masters' entries do meanwhile.
    let mut live_hits = 0;
    let mut live_computed = 0;
    let mut declared = None;
    while stopped.elapsed() < Duration::from_secs(10) {
        for &n in on_live.iter().chain(&on_dead) {
            let hit = square.call(n).await;
            if on_live.contains(&n) {
                if hit {
                    live_hits += 1;
                } else {
                    live_computed += 1;
                }
            }
        }
        let live_node = if dead == 0 { 1 } else { 0 };
        if declared.is_none() && cluster_state(&cluster, live_node) == "fail" {
            declared = Some(stopped.elapsed());
            // One more round once the cluster is down.
            for n in on_live.iter().chain(&on_dead) {
                square.call(*n).await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = square.cache.stats();
    println!(
        "cluster declared the failure: {declared:?} after the kill; live entries meanwhile: \
         {live_hits} hits, {live_computed} computed; stats {stats:?}"
    );
    assert!(stats.total.backend_errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_pattern_removes_matches_on_every_master() {
    let cluster = RedisCluster::start();
    let cache = Cache::builder()
        .redis_url(&cluster.url())
        .op_timeout(OP_TIMEOUT)
        .build()
        .await
        .expect("connect");
    let policy = Policy::default();
    for n in 0..30 {
        let Plain(_) = cache
            .get_or_compute(format!("report:{n}"), &policy, || async { Plain(n) })
            .await;
    }
    for n in 0..10 {
        let Plain(_) = cache
            .get_or_compute(format!("other:{n}"), &policy, || async { Plain(n) })
            .await;
    }
    let reports: Vec<Vec<String>> = (0..3).map(|node| scan_node(&cluster, node, "aside:report:*")).collect();
    let per_node: Vec<usize> = reports.iter().map(Vec::len).collect();
    println!("matching entries per master: {per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "matches on every master: {per_node:?}");
    assert_eq!(per_node.iter().sum::<usize>(), 30);

    assert_eq!(cache.invalidate_pattern("report:*").await.unwrap(), 30);
    for node in 0..3 {
        assert_eq!(
            scan_node(&cluster, node, "aside:report:*"),
            Vec::<String>::new(),
            "node {node}"
        );
    }
    let others: usize = (0..3)
        .map(|node| scan_node(&cluster, node, "aside:other:*").len())
        .sum();
    assert_eq!(others, 10, "non-matching entries stay");
    assert_eq!(cache.invalidate_pattern("report:*").await.unwrap(), 0);
    assert_eq!(cache.stats().total.invalidations, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_shares_its_entrys_hash_slot() {
    let cluster = RedisCluster::start();
    let cache = Cache::builder()
        .redis_url(&cluster.url())
        .op_timeout(OP_TIMEOUT)
        .build()
        .await
        .expect("connect");
    let policy = Policy::new(Duration::from_secs(300)).function("cluster:slow");

    // Twelve computations in flight, each holding its entry's lease until released.
    const IN_FLIGHT: u64 = 12;
    let (started_tx, mut started) = mpsc::channel::<u64>(IN_FLIGHT as usize);
    let mut releases = Vec::new();
    let mut calls = Vec::new();
    for n in 0..IN_FLIGHT {
        let (release, wait) = oneshot::channel::<()>();
        releases.push(release);
        let (cache, policy, started_tx) = (cache.clone(), policy.clone(), started_tx.clone());
        calls.push(tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute(Key::digest("cluster", "slow", 1, &n), &policy, || async move {
                    started_tx.send(n).await.unwrap();
                    wait.await.unwrap();
                    Plain(n + 100)
                })
                .await;
            value
        }));
    }
    for _ in 0..IN_FLIGHT {
        started.recv().await.unwrap();
    }

    let entries: Vec<String> = (0..IN_FLIGHT)
        .map(|n| cache.full_key(Key::digest("cluster", "slow", 1, &n)).unwrap())
        .collect();
    let mut leases = Vec::new();
    for node in 0..3 {
        for lease in scan_node(&cluster, node, "*:lease") {
            leases.push((node, lease));
        }
    }
    assert_eq!(
        leases.len(),
        IN_FLIGHT as usize,
        "one lease per computation: {leases:?}"
    );
    let mut nodes_used = std::collections::BTreeSet::new();
    let mut conn = cluster.nodes()[0].connection();
    for entry in &entries {
        let lease = format!("{{{entry}}}:lease");
        let (node, _) = leases
            .iter()
            .find(|(_, found)| *found == lease)
            .unwrap_or_else(|| panic!("the lease of {entry} is {lease}; found {leases:?}"));
        let entry_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(entry)
            .query(&mut conn)
            .unwrap();
        let lease_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&lease)
            .query(&mut conn)
            .unwrap();
        assert_eq!(entry_slot, lease_slot, "{entry} and {lease}");
        assert_eq!(entry_slot, key_slot(entry));
        assert_eq!(
            *node,
            cluster.node_for_key(entry),
            "the lease lives on the entry's master"
        );
        nodes_used.insert(*node);
    }
    println!("leases in flight on masters {nodes_used:?}");

    for release in releases {
        release.send(()).unwrap();
    }
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), n as u64 + 100);
    }
    for entry in &entries {
        assert!(
            node_has(&cluster, cluster.node_for_key(entry), entry),
            "{entry} stored beside its lease"
        );
    }
    let left: usize = (0..3).map(|node| scan_node(&cluster, node, "*:lease").len()).sum();
    assert_eq!(left, 0, "leases are released after the store");
}

/// Guarantee 1's cost on a cluster, counted on the masters: a miss of an entry
/// with two tags, whose sets live in other slots, sends the read, the lease
/// script, one record per tag (in parallel, after the lease) and the store —
/// no check of the lease in between — and a hit one read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_miss_sends_the_records_and_no_lease_check() {
    let cluster = RedisCluster::start();
    let cache = Cache::builder()
        .redis_url(&cluster.url())
        .build()
        .await
        .expect("cache on the cluster");
    let policy = Policy::new(Duration::from_secs(60)).tags(["orders", "region:eu"]);
    // Warm up: the scripts are loaded on every master, the connections open.
    let warm: Option<u64> = cache.get_or_compute("warm-up", &policy, || async { Some(1u64) }).await;
    assert_eq!(warm, Some(1));
    let monitors: Vec<Monitor> = cluster.nodes().iter().map(|node| Monitor::start(node.port())).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runs = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..2 {
        let got: Option<u64> = cache
            .get_or_compute("counted-miss", &policy, || async {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Some(2u64)
            })
            .await;
        assert_eq!(got, Some(2));
    }
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one computation, then a hit"
    );
    let seen = || -> Vec<String> {
        monitors
            .iter()
            .flat_map(|monitor| monitor.requests_naming("counted-miss"))
            .collect()
    };
    aside_testkit::until("the monitors to see the miss and the hit", || seen().len() >= 6).await;
    // Anything more would arrive right after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen().len(),
        6,
        "a tagged miss is a read, the lease, two records and the store, and a hit one read; seen: {:#?}",
        seen()
    );
}
