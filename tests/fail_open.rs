//! Guarantee 7, fail-open: with Redis down, stalled, partitioned, refusing the
//! credentials or never there, every `get_or_compute` call returns what it
//! computes — never a cache error, never a panic (a by-hand read reports the
//! failure); after a few failures the
//! circuit breaker skips Redis; and caching resumes on its own once Redis is back.
//!
//! Each test starts its own `redis-server` and injects one fault: kill and
//! restart (`stop`/`restart`), a stall (`freeze`/`thaw`, SIGSTOP/SIGCONT), a
//! partition and connection resets (a `TcpProxy` in front of the server), a wrong
//! password, nothing listening, a cancelled call, a slow link, writes held back
//! (`CLIENT PAUSE`). Recovery is polled in a bounded loop (10 s); how long it
//! took is printed (`--nocapture`), never asserted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aside::{BreakerState, Cache, Error, Policy};
use aside_testkit::{ProxyMode, RedisServer, ServerOptions, TcpProxy};
use support::{Fixture, Server};

mod support;

/// Short, so that timeouts and the breaker trip quickly.
const OP_TIMEOUT: Duration = Duration::from_millis(100);
/// Consecutive availability failures that open the breaker (the runtime's documented threshold).
const FAILURES_TO_OPEN: u64 = 5;
/// How long a test waits for caching to resume before failing: the breaker's
/// longest probe backoff (5 s) twice over.
const RESUME_LIMIT: Duration = Duration::from_secs(10);

/// A cached function written by hand, as `#[cached]` expands to: `square(n)` is
/// cached under `square:{n}` and counts its computations.
struct Square {
    cache: Cache,
    policy: Policy,
    runs: AtomicU64,
}

impl Square {
    fn new(cache: Cache) -> Square {
        Square {
            cache,
            // A short `wait`, so that a call that waits for another's computation
            // shows up in seconds, not the default ten.
            policy: Policy::new(Duration::from_secs(300))
                .wait(Duration::from_secs(2))
                .function("fail_open:square"),
            runs: AtomicU64::new(0),
        }
    }

    /// A cache on `url` that connected at build time.
    async fn connect(url: &str) -> Square {
        let cache = Cache::builder()
            .redis_url(url)
            .op_timeout(OP_TIMEOUT)
            .build()
            .await
            .expect("the cache connects to a healthy redis-server");
        Square::new(cache)
    }

    /// A cache on `url` that connects on first use.
    fn lazy(url: &str) -> Square {
        let cache = Cache::builder()
            .redis_url(url)
            .op_timeout(OP_TIMEOUT)
            .build_lazy()
            .expect("a valid URL");
        Square::new(cache)
    }

    fn key(n: u64) -> String {
        format!("square:{n}")
    }

    fn full_key(&self, n: u64) -> String {
        self.cache.full_key(Self::key(n)).expect("a valid key")
    }

    /// One cached call; the computation returns `Ok(n * n)`.
    async fn call(&self, n: u64) -> Result<u64, String> {
        self.cache
            .get_or_compute(Self::key(n), &self.policy, || async {
                self.runs.fetch_add(1, Ordering::SeqCst);
                Ok::<u64, String>(n * n)
            })
            .await
    }

    /// One call that must return the computed value and run the computation
    /// (the cache is unusable); returns how long it took.
    async fn computed(&self, n: u64) -> Duration {
        let runs = self.runs();
        let started = Instant::now();
        assert_eq!(self.call(n).await, Ok(n * n), "the computed value, never a cache error");
        let took = started.elapsed();
        assert_eq!(self.runs(), runs + 1, "a failing cache computes");
        took
    }

    /// One call that must be a hit: the stored value, no computation.
    async fn hit(&self, n: u64) {
        let runs = self.runs();
        assert_eq!(self.call(n).await, Ok(n * n));
        assert_eq!(self.runs(), runs, "square({n}) is a hit");
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    fn breaker(&self) -> BreakerState {
        self.cache.stats().breaker
    }

    /// Calls until the breaker opens, each returning its computed value;
    /// returns how many calls that took and prints each call's latency.
    async fn call_until_open(&self, n: u64, what: &str) -> u64 {
        let mut calls = 0;
        let mut latencies = Vec::new();
        while self.breaker() != BreakerState::Open {
            calls += 1;
            assert!(
                calls <= 2 * FAILURES_TO_OPEN,
                "{what}: the breaker is still {:?} after {} failing calls; stats {:?}",
                self.breaker(),
                calls - 1,
                self.cache.stats()
            );
            latencies.push(self.computed(n).await);
        }
        println!("{what}: breaker open after {calls} calls, latencies {latencies:?}");
        calls
    }

    /// Calls `square(n)` every 20 ms until its value is stored in `server` (read
    /// back over a plain connection) and the next call is a hit. Every call
    /// returns the value. Returns how long it took.
    async fn wait_until_caching_resumes(&self, server: &RedisServer, n: u64, what: &str) -> Duration {
        let started = Instant::now();
        let full_key = self.full_key(n);
        loop {
            assert_eq!(self.call(n).await, Ok(n * n));
            let stored: bool = redis::cmd("EXISTS")
                .arg(&full_key)
                .query(&mut server.connection())
                .expect("EXISTS over a plain connection");
            if stored {
                let runs = self.runs();
                assert_eq!(self.call(n).await, Ok(n * n));
                if self.runs() == runs {
                    let took = started.elapsed();
                    println!("{what}: caching resumed after {took:?}, stats {:?}", self.cache.stats());
                    return took;
                }
            }
            assert!(
                started.elapsed() < RESUME_LIMIT,
                "{what}: caching did not resume within {RESUME_LIMIT:?}; stats {:?}",
                self.cache.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_calls_compute_and_the_breaker_opens() {
    let mut server = RedisServer::start();
    let square = Square::connect(&server.url()).await;
    square.computed(1).await;
    square.hit(1).await;
    assert_eq!(square.cache.stats().total.backend_errors, 0);

    server.stop();
    let before = square.cache.stats();
    let calls = square.call_until_open(1, "redis killed").await;
    let opened = square.cache.stats();
    assert_eq!(
        calls, FAILURES_TO_OPEN,
        "one failure per call; {FAILURES_TO_OPEN} open the breaker"
    );
    assert_eq!(opened.breaker_opened, 1);
    assert_eq!(opened.total.backend_errors - before.total.backend_errors, calls);
    assert_eq!(opened.breaker_skips, 0, "nothing skipped before the breaker opened");

    // Open: Redis is skipped, and every call still returns its value.
    for n in 2..22 {
        square.computed(n).await;
    }
    let skipping = square.cache.stats();
    assert!(
        skipping.breaker_skips > 0,
        "calls skip redis while the breaker is open: {skipping:?}"
    );
    assert_eq!(
        skipping.breaker_opened, 1,
        "a failed probe does not count as a new opening"
    );
    assert_eq!(skipping.total.backend_errors - opened.total.backend_errors, 20);
    assert_eq!(skipping.total.computations, 1 + calls + 20);
    assert_eq!(skipping.total.hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_resumes_on_its_own_after_a_restart() {
    let mut server = RedisServer::start();
    let square = Square::connect(&server.url()).await;
    square.computed(1).await;
    square.hit(1).await;

    server.stop();
    square.call_until_open(1, "redis killed").await;
    for n in 2..6 {
        square.computed(n).await;
    }

    server.restart();
    square.wait_until_caching_resumes(&server, 7, "redis restarted").await;
    assert_eq!(square.breaker(), BreakerState::Closed);
    // The restarted server is empty: square(1) computes once more, then hits.
    square.computed(1).await;
    square.hit(1).await;
    assert_eq!(square.cache.stats().breaker_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_and_caching_resumes_after_thaw() {
    let server = RedisServer::start();
    let square = Square::connect(&server.url()).await;
    square.computed(1).await;
    square.hit(1).await;

    server.freeze();
    // square(1) is stored, but the server does not answer: every call computes.
    let errors = square.cache.stats().total.backend_errors;
    square.call_until_open(1, "redis frozen").await;
    for _ in 0..5 {
        square.computed(1).await;
    }
    let frozen = square.cache.stats();
    assert_eq!(frozen.breaker_opened, 1);
    assert!(frozen.total.backend_errors >= errors + FAILURES_TO_OPEN + 5);

    server.thaw();
    square.wait_until_caching_resumes(&server, 1, "redis thawed").await;
    assert_eq!(square.breaker(), BreakerState::Closed);
    square.computed(2).await;
    square.hit(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_and_reset_connections_fail_open_and_recover() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let square = Square::connect(&proxy.url()).await;
    square.computed(1).await;
    square.hit(1).await;

    // A partition: requests vanish, nothing is answered.
    proxy.set_mode(ProxyMode::Blackhole);
    square.call_until_open(1, "blackhole").await;
    for n in 2..12 {
        square.computed(n).await;
    }
    assert!(square.cache.stats().breaker_skips > 0);
    proxy.set_mode(ProxyMode::Forward);
    square.wait_until_caching_resumes(&server, 20, "blackhole healed").await;
    square.hit(1).await;

    // Every connection is reset, and new ones as soon as they are accepted.
    proxy.set_mode(ProxyMode::Reset);
    square.call_until_open(1, "reset").await;
    for n in 2..12 {
        square.computed(n).await;
    }
    proxy.set_mode(ProxyMode::Forward);
    square.wait_until_caching_resumes(&server, 30, "resets over").await;
    square.hit(1).await;
    square.hit(20).await;

    let stats = square.cache.stats();
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert_eq!(stats.breaker_opened, 2, "opened once per fault: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_open_and_build_reports_it() {
    let server = RedisServer::start_with(ServerOptions::new().password("right-horse-battery"));
    let wrong = format!("redis://:wrong-staple@127.0.0.1:{}", server.port());

    let square = Square::lazy(&wrong);
    for n in 0..8 {
        square.computed(n).await;
    }
    let stats = square.cache.stats();
    assert_eq!(stats.total.backend_errors, 8);
    assert_eq!(stats.total.hits, 0);
    assert_eq!(
        stats.breaker,
        BreakerState::Open,
        "refused credentials trip the breaker"
    );
    let stored: u64 = redis::cmd("DBSIZE").query(&mut server.connection()).unwrap();
    assert_eq!(stored, 0, "nothing was written with the wrong password");

    let err = Cache::builder()
        .redis_url(&wrong)
        .build()
        .await
        .expect_err("build() connects and authenticates now");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-staple"), "{err}");

    // The right password through the same lazy path caches.
    let right = Square::lazy(&server.url());
    right.computed(1).await;
    right.hit(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.stop(); // nothing listens on its port now; the port stays reserved

    let err = Cache::builder()
        .redis_url(&url)
        .build()
        .await
        .expect_err("nothing listens on the port");
    assert!(
        matches!(err, Error::Connect { .. } | Error::Timeout { .. }),
        "a typed connection error: {err:?}"
    );
    assert!(err.is_backend());
    println!("build() against a closed port: {err}");

    let square = Square::lazy(&url);
    square.call_until_open(1, "nothing listening").await;
    for n in 2..8 {
        square.computed(n).await;
    }
    assert_eq!(square.cache.stats().total.backend_errors, square.runs());

    // A cache that never connected starts caching once the server appears.
    server.restart();
    square
        .wait_until_caching_resumes(&server, 9, "redis started late")
        .await;
    square.hit(9).await;
}

/// A call is cancelled while it is the breaker's probe (a request handler's own
/// timeout, a client that went away): caching must still resume once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_probe_does_not_keep_the_breaker_open() {
    let server = RedisServer::start();
    let square = Square::connect(&server.url()).await;
    square.computed(1).await;

    server.freeze();
    square.call_until_open(1, "redis frozen").await;
    // Past the first probe backoff (0.5 s), the next call is the probe. Redis is
    // frozen, so it waits for the operation timeout (100 ms); its caller gives up
    // after 20 ms and drops it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cancelled = tokio::time::timeout(Duration::from_millis(20), square.call(2)).await;
    assert!(cancelled.is_err(), "the probe was still waiting for the frozen server");
    println!("after the cancelled probe: {:?}", square.cache.stats());

    server.thaw();
    square
        .wait_until_caching_resumes(&server, 3, "thawed after a cancelled probe")
        .await;
    assert_eq!(square.breaker(), BreakerState::Closed);
}

/// A lazily built cache — as `Cache::global()`, which `#[cached]` uses, is built —
/// must connect on a link where setting up a connection (TCP, TLS, the client's
/// handshake) takes longer than one operation's timeout while every operation
/// fits in it: a TLS Redis 70 ms away (each way), with the default 250 ms timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_cache_connects_over_a_slow_link() {
    let server = RedisServer::start_with(ServerOptions::new().tls());
    let proxy = TcpProxy::start(server.tls_port().expect("a TLS port"));
    proxy.set_latency(Duration::from_millis(70));
    let url = format!("rediss://127.0.0.1:{}", proxy.port());
    let builder = || Cache::builder().redis_url(&url).tls_ca_pem(server.tls_ca_pem());

    // Connected up front, every operation over the link fits in the timeout.
    let started = Instant::now();
    let eager = builder().build().await.expect("connect over the slow link");
    println!("connecting over the slow link took {:?}", started.elapsed());
    assert_eq!(eager.settings().op_timeout(), Duration::from_millis(250));
    eager.set_json("probe", &1, Duration::from_secs(60)).await.expect("SET");
    assert_eq!(eager.get_json::<u32>("probe").await.expect("GET"), Some(1));
    println!("ping over the slow link: {:?}", eager.ping().await.expect("PING"));

    // Built lazily, it must get connected too (calls fail open meanwhile).
    let lazy = Square::new(builder().build_lazy().expect("a valid URL"));
    let started = Instant::now();
    loop {
        lazy.computed(1).await;
        match lazy.cache.ping().await {
            Ok(rtt) => {
                println!("the lazy cache connected after {:?}; ping {rtt:?}", started.elapsed());
                break;
            }
            Err(error) => assert!(
                started.elapsed() < RESUME_LIMIT,
                "the lazy cache never connected within {RESUME_LIMIT:?}: {error}; stats {:?}",
                lazy.cache.stats()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lease acquisition that times out may still run on the server later (here:
/// the server holds writes back with `CLIENT PAUSE ... WRITE`, then runs them).
/// That lease must not outlive the call that gave up on it: nobody computes
/// under it, so it would make every caller of the key wait (`wait`) and keep the
/// key from being cached until it expires (`lock_ttl`, 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_lease_acquisition_leaves_no_lease_behind() {
    let server = RedisServer::start();
    let square = Square::connect(&server.url()).await;
    square.computed(0).await; // loads the lease scripts into the server
    square.hit(0).await;

    let mut admin = server.connection();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query(&mut admin)
        .unwrap();
    // GET is a read and passes; the lease script waits for the pause, past the timeout.
    let paused = Instant::now();
    square.computed(1).await;
    let errors = square.cache.stats().total.backend_errors;
    assert_eq!(errors, 1, "the lease acquisition timed out: {:?}", square.cache.stats());
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(paused.elapsed())).await;

    let lease = format!("{{{}}}:lease", square.full_key(1));
    let pttl: i64 = redis::cmd("PTTL").arg(&lease).query(&mut admin).unwrap();
    println!("after the pause: {lease} PTTL {pttl} ms (-2: absent)");
    square
        .wait_until_caching_resumes(&server, 1, "after the paused lease")
        .await;
    let stats = square.cache.stats();
    assert_eq!(
        stats.total.lock_timeouts, 0,
        "no call waited for a computation that nobody runs: {stats:?}"
    );
}

/// A stopped server makes calls compute, never fail.
#[tokio::test]
async fn redis_down_means_compute_not_error() {
    let mut fx = Fixture::redis();
    let cache = fx
        .builder()
        .op_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let Server::Single(server) = &mut fx.server else {
        unreachable!()
    };
    server.stop();
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let got: Result<u32, ()> = cache
            .get_or_compute("down", &Policy::default(), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(42)
            })
            .await;
        assert_eq!(got, Ok(42));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(cache.stats().total.backend_errors >= 3);
    assert!(
        cache.get_json::<u32>("down").await.is_err(),
        "by-hand reads report the failure"
    );
}
