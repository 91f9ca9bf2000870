//! Guarantee 10, security: passwords, ACL users and TLS in the Redis URL work;
//! wrong credentials are typed errors; secrets never appear in errors, `Debug`
//! output or logs; values over the size limit are returned but not stored (by
//! hand a typed error), on the memory backend as on Redis.
//! (Argument values forging keys: `tests/forged_keys.rs` and `tests/properties.rs`.)
//!
//! The log tests capture every `tracing` event at TRACE level into a buffer and
//! search it. They run on tokio's current-thread runtime, so that the
//! thread-local subscriber sees the events of every task, the redis-rs
//! connection tasks included.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::{BreakerState, Cache, Error, Plain, Policy, Settings};
use aside_testkit::{RedisServer, ServerOptions};
use support::Fixture;

mod support;

on_backends!([memory, redis] oversized_values_are_returned_not_stored);

const OP_TIMEOUT: Duration = Duration::from_millis(100);

/// Everything logged while the guard lives, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures every event of this thread at TRACE level until the guard drops.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything an error shows: `Display` and `Debug` of it and of every source.
fn error_text(err: &Error) -> String {
    let mut text = format!("{err} | {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(" | {cause} | {cause:?}"));
        source = cause.source();
    }
    text
}

fn assert_hidden(haystack: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(
            !haystack.contains(secret),
            "{what} shows the secret `{secret}`:\n{haystack}"
        );
    }
}

/// A cached function by hand, counting its computations.
struct Doubler {
    cache: Cache,
    policy: Policy,
    runs: AtomicU64,
}

impl Doubler {
    fn new(cache: Cache) -> Doubler {
        Doubler {
            cache,
            policy: Policy::new(Duration::from_secs(300)).tags(["security"]),
            runs: AtomicU64::new(0),
        }
    }

    async fn call(&self, n: u64) -> u64 {
        let Plain(value) = self
            .cache
            .get_or_compute(format!("double:{n}"), &self.policy, || async {
                self.runs.fetch_add(1, Ordering::SeqCst);
                Plain(2 * n)
            })
            .await;
        assert_eq!(value, 2 * n);
        value
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// A miss that stores, then a hit; the entry is read back from `server`.
    async fn caches(&self, server: &RedisServer, n: u64) {
        let runs = self.runs();
        self.call(n).await;
        assert_eq!(self.runs(), runs + 1, "a miss computes");
        self.call(n).await;
        assert_eq!(self.runs(), runs + 1, "a stored entry is a hit");
        let full = self.cache.full_key(format!("double:{n}")).unwrap();
        let stored: bool = redis::cmd("EXISTS").arg(&full).query(&mut server.connection()).unwrap();
        assert!(stored, "{full} is in redis");
    }

    /// Failing calls: each computes; the breaker ends up open.
    async fn fails_open(&self, calls: u64) {
        let runs = self.runs();
        for n in 0..calls {
            self.call(n).await;
        }
        assert_eq!(self.runs(), runs + calls, "every call computed");
        assert_eq!(self.cache.stats().breaker, BreakerState::Open);
    }
}

fn lazy(url: &str) -> Cache {
    Cache::builder()
        .redis_url(url)
        .op_timeout(OP_TIMEOUT)
        .build_lazy()
        .expect("a valid URL")
}

#[tokio::test]
async fn requirepass_works_and_the_password_never_shows() {
    // Characters that URLs must percent-encode, so both spellings are searched for.
    const RIGHT: &str = "r1ght:p@ss/word";
    const RIGHT_ENCODED: &str = "r1ght%3Ap%40ss%2Fword";
    const WRONG: &str = "wr0ng-guess-4242";
    let (logs, _guard) = Logs::capture();
    let server = RedisServer::start_with(ServerOptions::new().password(RIGHT));
    assert!(server.url().contains(RIGHT_ENCODED));

    let cache = Cache::builder()
        .redis_url(&server.url())
        .build()
        .await
        .expect("right password");
    cache.ping().await.expect("ping");
    let doubler = Doubler::new(cache);
    doubler.caches(&server, 1).await;
    assert_hidden(
        &format!("{:?}", doubler.cache),
        &[RIGHT, RIGHT_ENCODED],
        "Debug of the cache",
    );

    let wrong_url = format!("redis://:{WRONG}@127.0.0.1:{}", server.port());
    let err = Cache::builder()
        .redis_url(&wrong_url)
        .build()
        .await
        .expect_err("a wrong password fails at build");
    let Error::Connect { target, .. } = &err else {
        panic!("expected Error::Connect, got {err:?}");
    };
    assert_eq!(*target, format!("redis://:***@127.0.0.1:{}", server.port()));
    assert_hidden(&error_text(&err), &[WRONG, RIGHT, RIGHT_ENCODED], "the error");
    println!("wrong password: {err}");

    // Lazily built, the wrong password makes calls fail open, and they log.
    let failing = Doubler::new(lazy(&wrong_url));
    failing.fails_open(8).await;
    assert_hidden(&format!("{:?}", failing.cache), &[WRONG], "Debug of the cache");

    let text = logs.text();
    assert_hidden(&text, &[WRONG, RIGHT, RIGHT_ENCODED], "the logs");
    assert!(
        text.contains(&format!("redis://:***@127.0.0.1:{}", server.port())),
        "the logs name the server by its redacted URL:\n{text}"
    );
    assert!(text.contains("circuit breaker open"), "{text}");
}

#[tokio::test]
async fn acl_users_work_and_their_passwords_never_show() {
    const APP_PASS: &str = "app-s3cret-9876";
    const WRONG: &str = "app-guess-1234";
    let (logs, _guard) = Logs::capture();
    let server = RedisServer::start_with(ServerOptions::new().acl_user("app", APP_PASS, "+@all ~* &*"));

    let url = server.url_for_user("app", APP_PASS);
    let doubler = Doubler::new(Cache::builder().redis_url(&url).build().await.expect("ACL user"));
    doubler.caches(&server, 1).await;
    let whoami: String = {
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        redis::cmd("ACL").arg("WHOAMI").query(&mut conn).unwrap()
    };
    assert_eq!(whoami, "app");

    for bad in [server.url_for_user("app", WRONG), server.url_for_user("nobody", WRONG)] {
        let err = Cache::builder()
            .redis_url(&bad)
            .build()
            .await
            .expect_err("wrong credentials fail at build");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert_hidden(&error_text(&err), &[WRONG, APP_PASS], "the error");
        assert!(err.to_string().contains(":***@127.0.0.1"), "{err}");
    }

    let failing = Doubler::new(lazy(&server.url_for_user("app", WRONG)));
    failing.fails_open(8).await;

    let text = logs.text();
    assert_hidden(&text, &[WRONG, APP_PASS], "the logs");
    assert!(
        text.contains(&format!("redis://app:***@127.0.0.1:{}", server.port())),
        "{text}"
    );
}

/// An ACL user allowed only the namespace's keys (`aside:*` entries,
/// `{aside:*}:lease` leases, `aside~*` tag sets, `{aside~*}:*` tag sets being
/// invalidated) and announcement channel (`aside~stored`) can do everything the
/// cache does: the runtime touches nothing outside its namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_the_namespace_can_do_everything() {
    let server = RedisServer::start_with(ServerOptions::new().acl_user(
        "scoped",
        "scoped-pass",
        "+@all ~aside:* ~{aside:* ~aside~* ~{aside~* &aside~*",
    ));
    let cache = Cache::builder()
        .redis_url(&server.url_for_user("scoped", "scoped-pass"))
        .build()
        .await
        .expect("connect");
    let doubler = Doubler::new(cache.clone());
    for n in 0..5 {
        doubler.caches(&server, n).await;
    }
    assert_eq!(cache.invalidate_tag("security").await.unwrap(), 5);
    doubler.caches(&server, 1).await;
    assert_eq!(cache.invalidate_pattern("double:*").await.unwrap(), 1);
    doubler.caches(&server, 2).await;
    assert!(cache.invalidate_key("double:2").await.unwrap());

    // Concurrent callers wait for one computation (lease, pub/sub announcement).
    let runs = Arc::new(AtomicU64::new(0));
    let policy = Policy::default();
    let calls = (0..20).map(|_| {
        let (cache, policy, runs) = (cache.clone(), policy.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            let Plain(value) = cache
                .get_or_compute("shared", &policy, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Plain(7)
                })
                .await;
            value
        })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap(), 7);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.total.backend_errors, 0, "no command was refused: {stats:?}");
}

#[tokio::test]
async fn tls_with_the_servers_ca_works() {
    let server = RedisServer::start_with(ServerOptions::new().tls().password("tls-pass-555"));
    let cache = Cache::builder()
        .redis_url(&server.tls_url())
        .tls_ca_pem(server.tls_ca_pem())
        .build()
        .await
        .expect("TLS with the server's CA");
    let rtt = cache.ping().await.expect("ping over TLS");
    println!("ping over TLS: {rtt:?}");
    Doubler::new(cache).caches(&server, 1).await;

    // CACHE_TLS_CA_FILE names the CA in the environment's settings.
    let (url, ca_file) = (server.tls_url(), server.tls_ca_file().display().to_string());
    let settings = Settings::from_lookup(|name| match name {
        "REDIS_URL" => Some(url.clone()),
        "CACHE_TLS_CA_FILE" => Some(ca_file.clone()),
        _ => None,
    })
    .expect("valid settings");
    let cache = Cache::connect(settings).await.expect("TLS with CACHE_TLS_CA_FILE");
    Doubler::new(cache).caches(&server, 2).await;
}

#[tokio::test]
async fn tls_without_a_trusted_ca_is_a_typed_error_and_fails_open() {
    let server = RedisServer::start_with(ServerOptions::new().tls());
    let other = RedisServer::start_with(ServerOptions::new().tls());

    // The system's roots do not know the test CA; nor does another server's CA.
    let untrusted = [
        Cache::builder().redis_url(&server.tls_url()),
        Cache::builder()
            .redis_url(&server.tls_url())
            .tls_ca_pem(other.tls_ca_pem()),
    ];
    for builder in untrusted {
        let err = builder.build().await.expect_err("an untrusted certificate");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        println!("untrusted certificate: {err}");
    }

    // Plain text to the TLS port, and TLS to the plain port, fail too.
    let tls_port = server.tls_port().unwrap();
    for url in [
        format!("redis://127.0.0.1:{tls_port}"),
        format!("rediss://127.0.0.1:{}", server.port()),
    ] {
        let err = Cache::builder()
            .redis_url(&url)
            .tls_ca_pem(server.tls_ca_pem())
            .op_timeout(Duration::from_millis(500))
            .build()
            .await
            .expect_err("a protocol mismatch");
        assert!(err.is_backend(), "{url}: {err:?}");
    }

    // Lazily built without the CA: calls compute.
    Doubler::new(lazy(&server.tls_url())).fails_open(8).await;
    // A CA that is not PEM is refused when building.
    let err = Cache::builder()
        .redis_url(&server.tls_url())
        .tls_ca_pem(b"not a certificate".to_vec())
        .build_lazy()
        .expect_err("not PEM");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_size_limit_are_returned_but_not_stored() {
    const LIMIT: usize = 1024;
    let server = RedisServer::start();
    let caches = [
        ("redis", Cache::builder().redis_url(&server.url())),
        ("memory", Cache::builder().memory()),
    ];
    for (backend, builder) in caches {
        let cache = builder.max_value_size(LIMIT).build().await.expect("build");
        let policy = Policy::default();
        let runs = AtomicU64::new(0);
        let call = |key: &'static str, len: usize| {
            let (cache, policy, runs) = (&cache, &policy, &runs);
            async move {
                let Plain(value) = cache
                    .get_or_compute(key, policy, || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Plain("x".repeat(len))
                    })
                    .await;
                assert_eq!(value.len(), len, "{backend}: the caller gets the whole value");
            }
        };

        call("big", 4 * LIMIT).await;
        call("big", 4 * LIMIT).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "{backend}: an oversized value is never a hit"
        );
        assert!(!cache.exists("big").await.unwrap(), "{backend}: not stored");
        let stats = cache.stats();
        assert_eq!(stats.total.oversized, 2, "{backend}: {stats:?}");
        assert_eq!(stats.total.backend_errors, 0, "{backend}");

        call("small", LIMIT / 2).await;
        call("small", LIMIT / 2).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "{backend}: a value under the limit is stored"
        );

        let err = cache
            .set_json("big", &"x".repeat(4 * LIMIT), Duration::from_secs(60))
            .await
            .expect_err("set_json refuses an oversized value");
        assert!(matches!(err, Error::ValueTooLarge { limit: LIMIT, .. }), "{err:?}");
        assert!(!cache.exists("big").await.unwrap());
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut server.connection()).unwrap();
    assert_eq!(
        keys,
        ["aside:small"],
        "only the small entry: no oversized value, no lease left behind"
    );
}

#[tokio::test]
async fn cluster_urls_hide_their_password_in_errors_and_logs() {
    const SECRET: &str = "cluster-s3cret-77";
    let (logs, _guard) = Logs::capture();
    let server = RedisServer::start_with(ServerOptions::new().password("other-pass"));
    let mut gone = RedisServer::start();
    gone.stop();
    let urls = [
        // Nothing listens.
        format!(
            "redis+cluster://:{SECRET}@127.0.0.1:{},127.0.0.1:{}",
            gone.port(),
            gone.port()
        ),
        // A server that refuses the password.
        format!("redis+cluster://:{SECRET}@127.0.0.1:{}", server.port()),
        format!("redis+cluster://app:{SECRET}@127.0.0.1:{}", server.port()),
    ];
    for url in &urls {
        let err = Cache::builder()
            .redis_url(url)
            .op_timeout(OP_TIMEOUT)
            .build()
            .await
            .expect_err("no usable cluster");
        assert!(err.is_backend(), "{err:?}");
        assert_hidden(&error_text(&err), &[SECRET], "the error");
        println!("{err}");
        Doubler::new(lazy(url)).fails_open(6).await;
    }
    let text = logs.text();
    assert_hidden(&text, &[SECRET], "the logs");
    assert!(text.contains(":***@127.0.0.1"), "{text}");
}

/// Redis 7 gives a new ACL user no channel rights (`acl-pubsub-default
/// resetchannels`): `ACL SETUSER app on >pw ~* +@all` may not `PUBLISH`. Stores
/// still succeed (no backend error), concurrent callers still share one
/// computation, and one warning names the missing permission.
#[tokio::test]
async fn a_least_privilege_acl_user_without_channel_rights_caches() {
    let (logs, _guard) = Logs::capture();
    let server = RedisServer::start_with(ServerOptions::new().acl_user("app", "app-pw", "+@all ~*"));
    let cache = Cache::builder()
        .redis_url(&server.url_for_user("app", "app-pw"))
        .build()
        .await
        .expect("connect");
    let doubler = Doubler::new(cache.clone());
    for n in 0..3 {
        doubler.caches(&server, n).await;
    }
    let runs = Arc::new(AtomicU64::new(0));
    let policy = Policy::default();
    let calls = (0..10).map(|_| {
        let (cache, policy, runs) = (cache.clone(), policy.clone(), Arc::clone(&runs));
        async move {
            let Plain(value) = cache
                .get_or_compute("shared", &policy, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Plain(7)
                })
                .await;
            value
        }
    });
    assert_eq!(futures_util::future::join_all(calls).await, vec![7; 10]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Invalidations announce what they removed too: refused the channel, they
    // still remove every entry (a transaction that would publish is not sent
    // again as one; the script's announcement fails alone).
    let tagged = Policy::default().tags(["orders"]);
    for n in 0..3u64 {
        let Plain(_) = cache
            .get_or_compute(format!("order:{n}"), &tagged, || async move { Plain(n) })
            .await;
        let Plain(_) = cache
            .get_or_compute(format!("report:{n}"), &Policy::default(), || async move { Plain(n) })
            .await;
    }
    assert_eq!(cache.invalidate_tag("orders").await.expect("invalidate_tag"), 3);
    assert_eq!(
        cache.invalidate_pattern("report:*").await.expect("invalidate_pattern"),
        3
    );
    assert_eq!(
        cache.invalidate_pattern("report:*").await.expect("invalidate_pattern"),
        0
    );
    // A cache whose first announcement is an invalidation's: its refused
    // transaction is sent again as the script.
    for n in 0..3u64 {
        let Plain(_) = cache
            .get_or_compute(format!("report:{n}"), &Policy::default(), || async move { Plain(n) })
            .await;
    }
    let fresh = Cache::builder()
        .redis_url(&server.url_for_user("app", "app-pw"))
        .build()
        .await
        .expect("connect");
    assert_eq!(
        fresh.invalidate_pattern("report:*").await.expect("invalidate_pattern"),
        3
    );
    assert_eq!(fresh.stats().total.backend_errors, 0, "{:?}", fresh.stats());
    for n in 0..3u64 {
        for key in [format!("order:{n}"), format!("report:{n}")] {
            let full = cache.full_key(key.as_str()).unwrap();
            let stored: bool = redis::cmd("EXISTS").arg(&full).query(&mut server.connection()).unwrap();
            assert!(!stored, "{full} was removed");
        }
    }
    assert_eq!(cache.stats().total.backend_errors, 0, "{:?}", cache.stats());
    let text = logs.text();
    assert!(
        text.contains("&aside~stored"),
        "the warning names the channel to grant: {text}"
    );
}

/// Keys can hold secrets (a session id, a token as an argument): no log line,
/// at any level, and no span carries one — not a decode failure's warning,
/// not a call's debug span.
#[tokio::test]
async fn keys_never_appear_in_logs() {
    const SECRET: &str = "tok-5ecr3t-e1f0";
    let (logs, _guard) = Logs::capture();
    let server = RedisServer::start();
    let cache = Cache::builder()
        .redis_url(&server.url())
        .build()
        .await
        .expect("connect");
    let key = format!("token:{SECRET}");
    cache
        .set_json(key.as_str(), &"not a number", Duration::from_secs(60))
        .await
        .unwrap();
    let Plain(n) = cache
        .get_or_compute(key.as_str(), &Policy::default(), || async { Plain(5u64) })
        .await;
    assert_eq!(n, 5);
    assert_eq!(cache.stats().total.decode_errors, 1);
    let Plain(again) = cache
        .get_or_compute(key.as_str(), &Policy::default(), || async { Plain(0u64) })
        .await;
    assert_eq!(again, 5);
    assert!(cache.invalidate_key(key.as_str()).await.unwrap());
    let text = logs.text();
    assert!(text.contains("does not decode"), "the decode failure is logged: {text}");
    assert_hidden(&text, &[SECRET], "the logs");
}

async fn oversized_values_are_returned_not_stored(fx: Fixture) {
    let cache = fx.builder().max_value_size(256).build().await.unwrap();
    let big = "x".repeat(1024);
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let Plain(value) = cache
            .get_or_compute("big", &Policy::default(), || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Plain(big.clone())
            })
            .await;
        assert_eq!(value.len(), 1024);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert!(!cache.exists("big").await.unwrap());
    assert_eq!(cache.stats().total.oversized, 2);
    let err = cache.set_json("big", &big, Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { size: 1036, limit: 256 }), "{err}");
}

/// Redis only: a wrong password is a typed error at build time, without the password.
#[tokio::test]
async fn redis_wrong_password_is_a_typed_early_error() {
    let server = RedisServer::start_with(aside_testkit::ServerOptions::new().password("right-horse"));
    let url = format!("redis://:wrong-battery@127.0.0.1:{}", server.port());
    let err = Cache::builder().redis_url(&url).build().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-battery"), "{shown}");
    assert!(shown.contains("127.0.0.1"), "{shown}");

    let good = Cache::builder().redis_url(&server.url()).build().await.unwrap();
    assert!(good.ping().await.unwrap() < Duration::from_secs(1));
}
