//! Shared fixtures of the integration tests: a cache on the memory backend, on a
//! single `redis-server`, or on a 3-master cluster, each started for the test,
//! with helpers to read keys and TTLs back from the servers themselves.
#![allow(dead_code)] // each test file uses part of it

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Cache, CacheBuilder};
use aside_testkit::{RedisCluster, RedisServer};
use serde::{Deserialize, Serialize};

/// What a cache under test runs on.
pub enum Server {
    Memory,
    Single(RedisServer),
    Cluster(RedisCluster),
}

/// A backend started for one test.
pub struct Fixture {
    pub server: Server,
}

impl Fixture {
    pub fn memory() -> Fixture {
        Fixture { server: Server::Memory }
    }

    pub fn redis() -> Fixture {
        Fixture {
            server: Server::Single(RedisServer::start()),
        }
    }

    pub fn cluster() -> Fixture {
        Fixture {
            server: Server::Cluster(RedisCluster::start()),
        }
    }

    pub fn is_memory(&self) -> bool {
        matches!(self.server, Server::Memory)
    }

    /// A builder for a cache on this fixture's backend.
    pub fn builder(&self) -> CacheBuilder {
        match &self.server {
            Server::Memory => Cache::builder().memory(),
            Server::Single(server) => Cache::builder().redis_url(&server.url()),
            Server::Cluster(cluster) => Cache::builder().redis_url(&cluster.url()),
        }
    }

    pub async fn cache(&self) -> Cache {
        self.builder().build().await.expect("build the cache")
    }

    /// A cache on this fixture's backend under `namespace`.
    pub async fn cache_in(&self, namespace: &str) -> Cache {
        self.builder()
            .namespace(namespace)
            .build()
            .await
            .expect("build the cache")
    }

    /// Plain connections to every node (one for a single server).
    pub fn node_connections(&self) -> Vec<redis::Connection> {
        match &self.server {
            Server::Memory => Vec::new(),
            Server::Single(server) => vec![server.connection()],
            Server::Cluster(cluster) => cluster.nodes().iter().map(RedisServer::connection).collect(),
        }
    }

    /// Every key on every node, read with SCAN.
    pub fn all_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for mut conn in self.node_connections() {
            let found: Vec<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter(&mut conn)
                .expect("SCAN")
                .collect::<Result<_, _>>()
                .expect("SCAN batch");
            keys.extend(found);
        }
        keys.sort();
        keys
    }

    /// The keys matching the glob `pattern` on every node, read with `SCAN MATCH`,
    /// sorted; empty on memory (callers read it only off memory).
    pub fn keys_matching(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for mut conn in self.node_connections() {
            let found: Vec<String> = redis::cmd("SCAN")
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
            keys.extend(found);
        }
        keys.sort();
        keys
    }

    /// A plain connection to the node that holds `key`; `None` on memory.
    fn connection_for(&self, key: &str) -> Option<redis::Connection> {
        match &self.server {
            Server::Memory => None,
            Server::Single(server) => Some(server.connection()),
            Server::Cluster(cluster) => Some(cluster.nodes()[cluster.node_for_key(key)].connection()),
        }
    }

    /// `PTTL` of a key, asked of the node that holds it; `None` when missing.
    pub fn pttl(&self, key: &str) -> Option<i64> {
        let mut conn = self.connection_for(key)?;
        let ms: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).expect("PTTL");
        (ms != -2).then_some(ms)
    }

    /// The bytes stored at a full key, read from the node that holds it; `None`
    /// when missing or on memory.
    pub fn stored_bytes(&self, key: &str) -> Option<Vec<u8>> {
        let mut conn = self.connection_for(key)?;
        redis::cmd("GET").arg(key).query(&mut conn).expect("GET")
    }

    /// Writes `bytes` at a full key on the node that holds it, for ten minutes,
    /// as anyone who can reach the Redis could. Redis fixtures only.
    pub fn put_bytes(&self, key: &str, bytes: &[u8]) {
        let mut conn = self.connection_for(key).expect("raw writes need a Redis fixture");
        let () = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .arg("EX")
            .arg(600)
            .query(&mut conn)
            .expect("SET");
    }

    /// The remaining lifetime of a full key: from the server, or from the memory store.
    pub async fn ttl_of(&self, cache: &Cache, full_key: &str) -> Option<Duration> {
        if self.is_memory() {
            let namespace = format!("{}:", cache.settings().namespace());
            let key = full_key.strip_prefix(&namespace).expect("key in namespace");
            return cache.ttl(key).await.expect("ttl");
        }
        self.pttl(full_key)
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    /// The remaining lifetime of a full key in milliseconds, as `PTTL` gives it
    /// (-2: no such key, -1: no expiry): from the server, or from the memory store.
    pub async fn pttl_of(&self, cache: &Cache, full_key: &str) -> i64 {
        if self.is_memory() {
            return self
                .ttl_of(cache, full_key)
                .await
                .map_or(-2, |ttl| i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        }
        self.pttl(full_key).unwrap_or(-2)
    }

    /// `true` if a full key exists: `EXISTS` on the node that holds it, or the memory store.
    pub async fn holds(&self, cache: &Cache, full_key: &str) -> bool {
        match self.connection_for(full_key) {
            Some(mut conn) => {
                redis::cmd("EXISTS")
                    .arg(full_key)
                    .query::<i64>(&mut conn)
                    .expect("EXISTS")
                    == 1
            }
            None => {
                let namespace = format!("{}:", cache.settings().namespace());
                let key = full_key.strip_prefix(&namespace).expect("key in namespace");
                cache.exists(key).await.expect("exists")
            }
        }
    }
}

/// Counts how often a body ran.
#[derive(Default)]
pub struct Runs(AtomicUsize);

impl Runs {
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A value with some structure to store: a region's monthly rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub region: String,
    pub rows: Vec<(u32, i64)>,
}

/// The one [`Report`] the tests store.
pub fn report() -> Report {
    Report {
        region: "eu".into(),
        rows: (1..=12).map(|m| (m, i64::from(m) * 1000)).collect(),
    }
}

/// Runs each listed `async fn(Fixture)` as one test per listed backend.
///
/// ```ignore
/// on_backends!([memory, redis, cluster] round_trip, ttl_is_clamped);
/// ```
#[macro_export]
macro_rules! on_backends {
    ($backends:tt $($behaviour:ident),* $(,)?) => {
        $( on_backends!(@one $backends $behaviour); )*
    };
    (@one [$($backend:ident),*] $behaviour:ident) => {
        mod $behaviour {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    super::$behaviour(super::support::Fixture::$backend()).await;
                }
            )*
        }
    };
}
