//! A three-master Redis Cluster made of [`RedisServer`]s.

use std::fs::File;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use crate::binary::redis_cli_binary;
use crate::server::{log_tail, RedisServer, ServerOptions};
use crate::spawn::spawn;

/// Number of hash slots in a Redis Cluster.
const SLOT_COUNT: u16 = 16384;
/// Masters in a [`RedisCluster`].
const MASTERS: usize = 3;
/// How long the cluster has to be created and report `cluster_state:ok` everywhere.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long `redis-cli --cluster create` may wait for the nodes to join before
/// they are introduced again, and again as often (see [`meet_again`]).
const MEET_AGAIN_EVERY: Duration = Duration::from_secs(3);
/// Keys moved per `MIGRATE` while resharding, as `redis-cli --cluster reshard` does (`--cluster-pipeline`).
const MIGRATE_BATCH: usize = 10;
/// Checks in a row, [`POLL_INTERVAL`] apart, in which every master must name
/// the new owner of moved slots before a reshard is over.
const SETTLED_CHECKS: u32 = 3;
/// `MIGRATE`'s own timeout, in milliseconds.
const MIGRATE_TIMEOUT_MS: u64 = 5000;

/// A Redis Cluster of three masters and no replicas, each a [`RedisServer`]
/// (`--cluster-enabled yes`, `nodes.conf` in its temp dir, node timeout 2 s),
/// created with `redis-cli --cluster create`.
///
/// Dropping it kills every node.
///
/// ```no_run
/// use aside_testkit::RedisCluster;
///
/// let cluster = RedisCluster::start();
/// let client = redis::cluster::ClusterClient::new(cluster.node_urls()).unwrap();
/// let mut con = client.get_connection().unwrap();
/// redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con).unwrap();
/// let node = cluster.node_for_key("k");
/// let v: String = redis::cmd("GET").arg("k").query(&mut cluster.nodes()[node].connection()).unwrap();
/// assert_eq!(v, "v");
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// `(first slot, last slot, node index)` as reported by `CLUSTER SLOTS` at
    /// start, and again after each [`reshard`](RedisCluster::reshard).
    slots: Mutex<Vec<(u16, u16, usize)>>,
}

impl RedisCluster {
    /// Starts three cluster-mode servers, joins them with `redis-cli --cluster
    /// create ... --cluster-replicas 0 --cluster-yes`, and waits until every node
    /// reports `cluster_state:ok` and `CLUSTER SLOTS` covers all 16384 slots.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is not installed, `redis-cli` fails
    /// (its output is quoted), or the cluster is not ready within 30 s.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// assert_eq!(cluster.nodes().len(), 3);
    /// ```
    pub fn start() -> RedisCluster {
        let started = Instant::now();
        let nodes: Vec<RedisServer> = (0..MASTERS)
            .map(|_| RedisServer::start_with(ServerOptions::new().cluster_mode()))
            .collect();
        create(&nodes, started + READY_DEADLINE);
        let slots = wait_until_ready(&nodes, started + READY_DEADLINE);
        RedisCluster {
            nodes,
            slots: Mutex::new(slots),
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, the form `REDIS_URL` takes.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    /// ```
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis://127.0.0.1:PN` for each node, in node order; what
    /// `redis::cluster::ClusterClient::new` takes.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// let client = redis::cluster::ClusterClient::new(cluster.node_urls()).unwrap();
    /// ```
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, for plain per-node connections and assertions.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// for node in cluster.nodes() {
    ///     let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut node.connection()).unwrap();
    /// }
    /// ```
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to [`stop`](RedisServer::stop), [`restart`](RedisServer::restart)
    /// or [`freeze`](RedisServer::freeze) one. A restarted node is empty but keeps
    /// its `nodes.conf`, so it serves the same slots again; `restart` returns once it
    /// answers `PING`, and it reports `cluster_state:ok` again a second or two later
    /// (Redis's rejoin delay), which a test should wait for.
    ///
    /// ```no_run
    /// let mut cluster = aside_testkit::RedisCluster::start();
    /// let node = cluster.node_for_key("user:1");
    /// cluster.nodes_mut()[node].stop();
    /// ```
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The index in [`nodes`](Self::nodes) of the master serving `key`'s hash slot
    /// (hash tags respected), per the slot map read when the cluster started or
    /// last resharded.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// assert_eq!(cluster.node_for_key("{user:1}:a"), cluster.node_for_key("{user:1}:b"));
    /// ```
    pub fn node_for_key(&self, key: &str) -> usize {
        self.node_for_slot(key_slot(key))
    }

    /// The index of the master serving `slot`, per the slot map read when the
    /// cluster started or last resharded.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// assert_eq!(cluster.node_for_slot(0), 0);
    /// ```
    pub fn node_for_slot(&self, slot: u16) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| *node)
            .expect("the slot map covers all 16384 slots")
    }

    /// Moves the first `count` slots that master `from` serves to master `to`,
    /// keys included, while the cluster keeps serving: what
    /// `redis-cli --cluster reshard --cluster-from F --cluster-to T
    /// --cluster-slots N --cluster-yes` does. Returns the slots moved (fewer
    /// than `count` when `from` has fewer).
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// let moved = cluster.reshard(0, 1, 100);
    /// assert_eq!(cluster.node_for_slot(moved[0]), 1);
    /// ```
    ///
    /// # Panics
    ///
    /// When a node refuses a step (its reply is quoted).
    pub fn reshard(&self, from: usize, to: usize, count: usize) -> Vec<u16> {
        let slots: Vec<u16> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, _, node)| *node == from)
            .flat_map(|(first, last, _)| *first..=*last)
            .take(count)
            .collect();
        self.move_slots(&slots, to);
        slots
    }

    /// Moves each of `slots` to master `to`, one slot after another, keys
    /// included, the way `redis-cli --cluster reshard` moves a slot: the target
    /// marks it `IMPORTING`, its owner `MIGRATING` (clients now meet `ASK` and
    /// `TRYAGAIN`), its keys are `MIGRATE`d in batches, then every master is told
    /// its new owner (`SETSLOT NODE`, target first; clients now meet `MOVED`).
    /// Slots `to` already serves are left alone.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// let slot = aside_testkit::key_slot("user:1");
    /// cluster.move_slots(&[slot], (cluster.node_for_slot(slot) + 1) % 3);
    /// ```
    ///
    /// # Panics
    ///
    /// When a node refuses a step (its reply is quoted).
    pub fn move_slots(&self, slots: &[u16], to: usize) {
        let mut connections: Vec<redis::Connection> = self.nodes.iter().map(RedisServer::connection).collect();
        let ids: Vec<String> = connections
            .iter_mut()
            .map(|con| redis::cmd("CLUSTER").arg("MYID").query(con).expect("CLUSTER MYID"))
            .collect();
        let target_port = self.nodes[to].port();
        let mut owners = owners(&self.slots.lock().unwrap_or_else(PoisonError::into_inner));
        for &slot in slots {
            let from = owners[usize::from(slot)];
            if from == to {
                continue;
            }
            let setslot = |con: &mut redis::Connection, state: &str, id: &str| {
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(state)
                    .arg(id)
                    .query::<()>(con)
                    .unwrap_or_else(|err| panic!("CLUSTER SETSLOT {slot} {state}: {err}"));
            };
            setslot(&mut connections[to], "IMPORTING", &ids[from]);
            setslot(&mut connections[from], "MIGRATING", &ids[to]);
            loop {
                let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(MIGRATE_BATCH)
                    .query(&mut connections[from])
                    .expect("CLUSTER GETKEYSINSLOT");
                if keys.is_empty() {
                    break;
                }
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(target_port)
                    .arg("")
                    .arg(0)
                    .arg(MIGRATE_TIMEOUT_MS)
                    .arg("KEYS")
                    .arg(&keys)
                    .query::<()>(&mut connections[from])
                    .unwrap_or_else(|err| panic!("MIGRATE of slot {slot}: {err}"));
            }
            setslot(&mut connections[to], "NODE", &ids[to]);
            setslot(&mut connections[from], "NODE", &ids[to]);
            for other in (0..self.nodes.len()).filter(|node| *node != from && *node != to) {
                setslot(&mut connections[other], "NODE", &ids[to]);
            }
            owners[usize::from(slot)] = to;
        }
        self.settle(&mut connections, &ids[to], slots, to);
        *self.slots.lock().unwrap_or_else(PoisonError::into_inner) = ranges(&owners);
    }

    /// Waits until every master names `to` as the owner of each of `slots`,
    /// telling any that does not again: a node can still hear a stale claim by
    /// gossip after `SETSLOT NODE` (the old owner's, with a config epoch it has
    /// not yet seen superseded), and the next reshard would then ask a node
    /// that no longer owns the slot to migrate it.
    fn settle(&self, connections: &mut [redis::Connection], to_id: &str, slots: &[u16], to: usize) {
        // The new owner's claim must carry the greatest config epoch, or a node
        // that still holds the old owner's (greater) one hands the slots back
        // to it by an UPDATE message, after all agreed.
        let _: redis::RedisResult<String> = redis::cmd("CLUSTER").arg("BUMPEPOCH").query(&mut connections[to]);
        let deadline = Instant::now() + READY_DEADLINE;
        let mut agreed_in_a_row = 0;
        loop {
            let mut settled = true;
            for (node, con) in connections.iter_mut().enumerate() {
                let reply: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(con)
                    .unwrap_or_else(|err| panic!("CLUSTER SLOTS on node {node}: {err}"));
                let seen = owners(&parse_slots(&reply, &self.nodes).unwrap_or_else(|err| panic!("{err}")));
                for &slot in slots.iter().filter(|slot| seen[usize::from(**slot)] != to) {
                    settled = false;
                    let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(to_id)
                        .query(con);
                }
            }
            agreed_in_a_row = if settled { agreed_in_a_row + 1 } else { 0 };
            if agreed_in_a_row == SETTLED_CHECKS {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the masters do not agree that node {to} owns the moved slots after {READY_DEADLINE:?}"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }
}

/// The owner of each slot per `map`.
fn owners(map: &[(u16, u16, usize)]) -> Vec<usize> {
    let mut owners = vec![usize::MAX; usize::from(SLOT_COUNT)];
    for (first, last, owner) in map {
        for s in *first..=*last {
            owners[usize::from(s)] = *owner;
        }
    }
    owners
}

/// The slot map of `owners`: ranges of consecutive slots with one owner.
fn ranges(owners: &[usize]) -> Vec<(u16, u16, usize)> {
    let mut ranges: Vec<(u16, u16, usize)> = Vec::new();
    for (s, &owner) in (0..SLOT_COUNT).zip(owners) {
        match ranges.last_mut() {
            Some((_, last, current)) if *current == owner && *last + 1 == s => *last = s,
            _ => ranges.push((s, s, owner)),
        }
    }
    ranges
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of the key, or of its
/// hash tag (the part between the first `{` and the next `}`, when non-empty),
/// modulo 16384 — the same as `CLUSTER KEYSLOT`.
///
/// ```
/// assert_eq!(aside_testkit::key_slot("foo"), 12182);
/// assert_eq!(aside_testkit::key_slot("{user1000}.following"), aside_testkit::key_slot("user1000"));
/// ```
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16_xmodem(hashed) % SLOT_COUNT
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with (the `crc16`
/// crate redis-rs routes by).
fn crc16_xmodem(data: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(data)
}

/// Runs `redis-cli --cluster create` over `nodes`.
fn create(nodes: &[RedisServer], deadline: Instant) {
    let dir = nodes[0].dir();
    let output_path = dir.join("cluster-create.log");
    let output = File::create(&output_path).expect("create the redis-cli output file");
    let mut command = Command::new(redis_cli_binary());
    command.arg("--cluster").arg("create");
    command.args(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())));
    command
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            output.try_clone().expect("clone the redis-cli output file"),
        ))
        .stderr(Stdio::from(output));
    let mut child = spawn(command).expect("execute redis-cli");
    let mut meet_at = Instant::now() + MEET_AGAIN_EVERY;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for redis-cli") {
            break status;
        }
        if Instant::now() > meet_at {
            meet_again(nodes);
            meet_at = Instant::now() + MEET_AGAIN_EVERY;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-cli --cluster create did not finish within {READY_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&output_path).unwrap_or_default()
            );
        }
        thread::sleep(POLL_INTERVAL);
    };
    if !status.success() {
        panic!(
            "redis-cli --cluster create failed ({status}):\n{}",
            std::fs::read_to_string(&output_path).unwrap_or_default()
        );
    }
}

/// Introduces every node to the first once more (`CLUSTER MEET`), ignoring
/// failures. A node drops a handshake that its peer does not finish within the
/// node timeout (2 s), and does not try it again: on a loaded machine
/// `redis-cli --cluster create`, which sends each `MEET` once, then waits for
/// ever in "Waiting for the cluster to join". Meeting a node already known is
/// harmless.
fn meet_again(nodes: &[RedisServer]) {
    let Some((first, others)) = nodes.split_first() else {
        return;
    };
    for node in others {
        let Ok(mut con) = node.client().get_connection_with_timeout(Duration::from_millis(500)) else {
            continue;
        };
        if con.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
            continue;
        }
        let _: redis::RedisResult<()> = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(first.port())
            .query(&mut con);
    }
}

/// Waits until every node reports `cluster_state:ok` and a full slot map;
/// returns the slot map with ports resolved to node indexes.
fn wait_until_ready(nodes: &[RedisServer], deadline: Instant) -> Vec<(u16, u16, usize)> {
    let mut last_problem = String::from("not probed yet");
    loop {
        let mut maps = Vec::with_capacity(nodes.len());
        for node in nodes {
            match probe(node, nodes) {
                Ok(map) => maps.push(map),
                Err(problem) => {
                    last_problem = format!("node on port {}: {problem}", node.port());
                    break;
                }
            }
        }
        if maps.len() == nodes.len() {
            return maps.swap_remove(0);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|node| log_tail(node.dir())).collect();
            panic!(
                "the test Redis Cluster was not ready within {READY_DEADLINE:?}: {last_problem}{}",
                logs.join("")
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// One node's view: `Ok(slot map)` once it is `cluster_state:ok` with all slots covered.
fn probe(node: &RedisServer, nodes: &[RedisServer]) -> Result<Vec<(u16, u16, usize)>, String> {
    let mut con = node
        .client()
        .get_connection_with_timeout(Duration::from_millis(500))
        .map_err(|err| err.to_string())?;
    con.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|err| err.to_string())?;
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut con)
        .map_err(|err| err.to_string())?;
    if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
        return Err("cluster_state is not ok yet".into());
    }
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut con)
        .map_err(|err| err.to_string())?;
    let map = parse_slots(&reply, nodes)?;
    let mut covered = vec![false; usize::from(SLOT_COUNT)];
    for (first, last, _) in &map {
        for slot in *first..=*last {
            covered[usize::from(slot)] = true;
        }
    }
    let missing = covered.iter().filter(|c| !**c).count();
    if missing > 0 {
        return Err(format!("CLUSTER SLOTS leaves {missing} slots uncovered"));
    }
    Ok(map)
}

/// `CLUSTER SLOTS` → `(first, last, node index)`; each entry is
/// `[first, last, [ip, port, id, ...], replicas...]`.
fn parse_slots(reply: &Value, nodes: &[RedisServer]) -> Result<Vec<(u16, u16, usize)>, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("unexpected CLUSTER SLOTS reply: {reply:?}"));
    };
    entries
        .iter()
        .map(|entry| {
            let malformed = || format!("unexpected CLUSTER SLOTS entry: {entry:?}");
            let Value::Array(fields) = entry else {
                return Err(malformed());
            };
            let int = |value: Option<&Value>| match value {
                Some(Value::Int(n)) => u16::try_from(*n).map_err(|_| malformed()),
                _ => Err(malformed()),
            };
            let first = int(fields.first())?;
            let last = int(fields.get(1))?;
            let Some(Value::Array(master)) = fields.get(2) else {
                return Err(malformed());
            };
            let port = int(master.get(1))?;
            let index = nodes
                .iter()
                .position(|node| node.port() == port)
                .ok_or_else(|| format!("CLUSTER SLOTS names port {port}, not one of ours"))?;
            Ok((first, last, index))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_matches_the_redis_cluster_spec() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
    }

    #[test]
    fn reassign_splits_and_merges_ranges() {
        let map = vec![(0, 99, 0), (100, 16383, 1)];
        let reassign = |map: &[(u16, u16, usize)], slot: usize, node: usize| {
            let mut owners = owners(map);
            owners[slot] = node;
            ranges(&owners)
        };
        let moved = reassign(&map, 50, 1);
        assert_eq!(moved, vec![(0, 49, 0), (50, 50, 1), (51, 99, 0), (100, 16383, 1)]);
        assert_eq!(reassign(&moved, 50, 0), map);
        assert_eq!(reassign(&map, 99, 1), vec![(0, 98, 0), (99, 16383, 1)]);
    }
}
