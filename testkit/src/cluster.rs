//! A three-master Redis Cluster made of [`RedisServer`]s.

use std::fs::File;
use std::process::{Command, Stdio};
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
    /// `(first slot, last slot, node index)` as reported by `CLUSTER SLOTS` at start.
    slots: Vec<(u16, u16, usize)>,
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
        RedisCluster { nodes, slots }
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
    /// (hash tags respected), per the slot map read when the cluster started.
    ///
    /// ```no_run
    /// let cluster = aside_testkit::RedisCluster::start();
    /// assert_eq!(cluster.node_for_key("{user:1}:a"), cluster.node_for_key("{user:1}:b"));
    /// ```
    pub fn node_for_key(&self, key: &str) -> usize {
        let slot = key_slot(key);
        self.slots
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| *node)
            .expect("the slot map covers all 16384 slots")
    }
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

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for redis-cli") {
            break status;
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
}
