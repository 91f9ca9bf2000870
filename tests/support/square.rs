//! A cached function by hand on a cluster, keyed as `#[cached]` keys it (a digest
//! of its argument), that counts its computations: what the cluster tests call
//! to see which keys are hits while masters die, freeze or move slots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::{Cache, Key, Plain, Policy};
use aside_testkit::RedisCluster;

pub struct Square {
    pub cache: Cache,
    policy: Policy,
    prefix: &'static str,
    /// What one computation costs.
    work: Duration,
    runs: AtomicU64,
}

impl Square {
    /// `square` under `prefix`, on a cache with `op_timeout`, computing for `work`.
    pub async fn connect(cluster: &RedisCluster, prefix: &'static str, op_timeout: Duration, work: Duration) -> Square {
        let cache = Cache::builder()
            .redis_url(&cluster.url())
            .op_timeout(op_timeout)
            .build()
            .await
            .expect("the cache connects to the cluster");
        Square {
            cache,
            policy: Policy::new(Duration::from_secs(300)).function(format!("{prefix}:square")),
            prefix,
            work,
            runs: AtomicU64::new(0),
        }
    }

    fn key(&self, n: u64) -> Key {
        Key::digest(self.prefix, "square", 1, &n)
    }

    pub fn full_key(&self, n: u64) -> String {
        self.cache.full_key(self.key(n)).expect("a valid key")
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// One call; returns whether it was a hit. Its value is always `n * n`.
    pub async fn call(&self, n: u64) -> bool {
        self.timed_call(n).await.0
    }

    /// One call: whether it was a hit, and how long it took.
    pub async fn timed_call(&self, n: u64) -> (bool, Duration) {
        let runs = self.runs();
        let started = Instant::now();
        let Plain(value) = self
            .cache
            .get_or_compute(self.key(n), &self.policy, || async {
                self.runs.fetch_add(1, Ordering::SeqCst);
                if !self.work.is_zero() {
                    tokio::time::sleep(self.work).await;
                }
                Plain(n * n)
            })
            .await;
        let took = started.elapsed();
        assert_eq!(value, n * n, "every call returns its value");
        (self.runs() == runs, took)
    }
}
