//! A master, one replica and three sentinels watching them: Redis Sentinel.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::server::{encode_userinfo, RedisServer, ServerOptions};

/// The name the sentinels monitor the master under.
const MASTER_NAME: &str = "aside-test";
/// Sentinels watching the master; two must agree that it is down.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// How long the master must be silent before a sentinel deems it down: low
/// for a test (a dead master's replica is promoted about a second after it),
/// yet well above the stalls of a loaded machine, which would otherwise set
/// off failovers nobody asked for.
const DOWN_AFTER_MS: u64 = 5000;
/// Sentinel's failover timeout (also the pause before it retries a failover).
const FAILOVER_TIMEOUT_MS: u64 = 5000;
/// `SENTINEL DEBUG` periods, in milliseconds, below the defaults (10 s
/// between `INFO` polls, 2 s between hello messages) so that the sentinels
/// notice a replica and a demoted master within seconds. Not lower: a sentinel
/// turns a node that claims to be master back into a replica once it has
/// claimed so for 4 publish periods without the sentinel hearing of a
/// promotion, and the leader needs up to a second (its fixed `INFO` period
/// during a failover) to confirm one; with 200 ms the other sentinels demoted
/// the replica being promoted. Nor the ping period: with the master down, a
/// replica's `INFO` counts as current for 5 ping periods while it is polled
/// once a second, so with 100 ms no replica was ever good enough to promote.
/// `SENTINEL DEBUG` exists since Redis 7.0; older sentinels keep their
/// defaults, which only makes starting and failing over slower.
const DEBUG_PERIODS: [(&str, u64); 4] = [
    ("info-period", 100),
    ("ping-period", 500),
    ("ask-period", 100),
    ("publish-period", 750),
];
/// How long starting the set, or one failover, may take before it is stuck.
const DEADLINE: Duration = Duration::from_secs(30);
/// Pause between checks of the sentinels' view.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Quiet time after a failover before [`RedisSentinel::failover`] starts the
/// next one. A sentinel that has not yet heard of a promotion turns the newly
/// promoted master back into a replica if it still holds it for a demoted
/// master it must convert (seen with back-to-back failovers): the sentinels
/// then deem the master down and fail over again on their own.
const QUIET_BETWEEN_FAILOVERS: Duration = Duration::from_secs(3);

/// Redis Sentinel on loopback ports: a master, one replica (`--replicaof`) and
/// three sentinels (`redis-server <conf> --sentinel`, each with a writable
/// config file in its temp dir; quorum 2, `down-after-milliseconds` 5000,
/// `failover-timeout` 5000). Every process is a [`RedisServer`], killed on drop.
///
/// [`url`](Self::url) is the `redis+sentinel://` URL of the set;
/// [`failover`](Self::failover) makes the replica the master.
///
/// ```no_run
/// use aside_testkit::RedisSentinel;
///
/// let set = RedisSentinel::start();
/// assert!(set.url().starts_with("redis+sentinel://127.0.0.1:"));
/// let old = set.master().port();
/// let new = set.failover().port();
/// assert_ne!(old, new);
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    /// Declared first: dropped (killed) before the data nodes, so no sentinel
    /// acts on their deaths.
    sentinels: Vec<RedisServer>,
    /// The first started as master, the second as its replica; which one is the
    /// master now is the sentinels' to say.
    nodes: Vec<RedisServer>,
    /// When the last failover was over.
    failed_over: Mutex<Option<Instant>>,
    options: SentinelOptions,
}

/// How to configure a [`RedisSentinel`]: the data nodes' password, an ACL user
/// of the sentinels. The default is open nodes and open sentinels.
///
/// ```no_run
/// use aside_testkit::{RedisSentinel, SentinelOptions};
///
/// let set = RedisSentinel::start_with(
///     SentinelOptions::new()
///         .password("s3cret")
///         .sentinel_user("watcher", "pw", "+@all resetchannels"),
/// );
/// assert!(set.url().ends_with("?sentinel_username=watcher&sentinel_password=pw"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct SentinelOptions {
    password: Option<String>,
    sentinel_user: Option<(String, String, String)>,
}

impl SentinelOptions {
    /// Open nodes and sentinels; the same as `SentinelOptions::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The master and the replica require `password` (`requirepass`, and
    /// `masterauth` so that either can sync from the other; the sentinels get
    /// it as `auth-pass`). [`RedisSentinel::url`] carries it before the hosts.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Adds an ACL user to every sentinel (`user NAME on >PASSWORD RULES`);
    /// [`RedisSentinel::url`] then logs in to the sentinels as that user
    /// (`?sentinel_username=&sentinel_password=`). With `resetchannels` in the
    /// rules it may ask for the master but not subscribe to `+switch-master`.
    pub fn sentinel_user(
        mut self,
        name: impl Into<String>,
        password: impl Into<String>,
        rules: impl Into<String>,
    ) -> Self {
        self.sentinel_user = Some((name.into(), password.into(), rules.into()));
        self
    }
}

impl RedisSentinel {
    /// Starts the master, its replica and the sentinels, and waits until the
    /// replica is in sync and every sentinel knows the replica (its link up)
    /// and the other sentinels: from then on a [`failover`](Self::failover) can
    /// promote the replica.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed, or the set is not ready within 30 s.
    pub fn start() -> RedisSentinel {
        Self::start_with(SentinelOptions::new())
    }

    /// As [`start`](Self::start), configured by `options`.
    ///
    /// ```no_run
    /// use aside_testkit::{RedisSentinel, SentinelOptions};
    ///
    /// let set = RedisSentinel::start_with(SentinelOptions::new().password("s3cret"));
    /// assert!(set.url().starts_with("redis+sentinel://:s3cret@127.0.0.1:"));
    /// ```
    pub fn start_with(options: SentinelOptions) -> RedisSentinel {
        let deadline = Instant::now() + DEADLINE;
        let password = &options.password;
        // A replica's full sync starts at once, not after the default 5 s
        // wait for more replicas: after a failover the demoted master syncs.
        let node = || {
            let options = ServerOptions::new().args(["--repl-diskless-sync-delay", "0"]);
            match password {
                Some(password) => options
                    .password(password.clone())
                    .args(["--masterauth", password.as_str()]),
                None => options,
            }
        };
        let master = RedisServer::start_with(node());
        let replica = RedisServer::start_with(node().args([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ]));
        let conf = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {port} {QUORUM}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n{auth}{user}",
            port = master.port(),
            auth = password
                .as_ref()
                .map(|password| format!("sentinel auth-pass {MASTER_NAME} {password}\n"))
                .unwrap_or_default(),
            user = options
                .sentinel_user
                .as_ref()
                .map(|(name, password, rules)| format!("user {name} on >{password} {rules}\n"))
                .unwrap_or_default(),
        );
        let sentinels: Vec<RedisServer> = (0..SENTINELS)
            .map(|_| RedisServer::start_with(ServerOptions::new().sentinel_mode(conf.clone())))
            .collect();
        for sentinel in &sentinels {
            let mut debug = redis::cmd("SENTINEL");
            debug.arg("DEBUG");
            for (name, ms) in DEBUG_PERIODS {
                debug.arg(name).arg(ms);
            }
            // Older sentinels have no `SENTINEL DEBUG`: they are only slower.
            let _ = debug.query::<()>(&mut sentinel.connection());
        }
        let set = RedisSentinel {
            sentinels,
            nodes: vec![master, replica],
            failed_over: Mutex::new(None),
            options,
        };
        set.wait_for("the replica to sync and every sentinel to know it", deadline, || {
            set.settled(set.nodes[0].port())
        });
        set
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/aside-test`, with
    /// `:PASSWORD@` before the hosts and `?sentinel_username=U&sentinel_password=P`
    /// after when [`SentinelOptions`] set them.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let auth = match &self.options.password {
            Some(password) => format!(":{}@", encode_userinfo(password)),
            None => String::new(),
        };
        let query = match &self.options.sentinel_user {
            Some((name, password, _)) => format!(
                "?sentinel_username={}&sentinel_password={}",
                encode_userinfo(name),
                encode_userinfo(password)
            ),
            None => String::new(),
        };
        format!("redis+sentinel://{auth}{}/{MASTER_NAME}{query}", hosts.join(","))
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The sentinel processes.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data nodes: the master and the replica, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node the first sentinel names as master now.
    ///
    /// # Panics
    ///
    /// When that sentinel does not answer or names no node of this set.
    pub fn master(&self) -> &RedisServer {
        let port = master_port(&self.sentinels[0]).expect("the first sentinel names the master");
        self.node(port)
    }

    /// The node that is not [`master`](Self::master).
    pub fn replica(&self) -> &RedisServer {
        let master = self.master().port();
        self.nodes
            .iter()
            .find(|node| node.port() != master)
            .expect("two data nodes")
    }

    /// Runs `SENTINEL FAILOVER` (again while a sentinel answers `NOGOODSLAVE`
    /// or `INPROG`) and waits until the failover is over: every sentinel names
    /// the former replica as master, it accepts writes, and the former master
    /// has been turned into its replica, in sync. Returns the new master.
    ///
    /// Between the promotion and the end of this call the former master may
    /// still take writes for a moment (Sentinel demotes it once it notices it
    /// still acting as master): what a client sees then is what it would see
    /// in production.
    ///
    /// A failover soon after the previous one first waits for 3 s of quiet
    /// (see `QUIET_BETWEEN_FAILOVERS` in the source).
    ///
    /// # Panics
    ///
    /// When the failover is not over within 30 s.
    pub fn failover(&self) -> &RedisServer {
        let mut failed_over = self.failed_over.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(quiet) = failed_over.map(|at| at + QUIET_BETWEEN_FAILOVERS) {
            thread::sleep(quiet.saturating_duration_since(Instant::now()));
        }
        let deadline = Instant::now() + DEADLINE;
        let old = self.master().port();
        loop {
            let asked: redis::RedisResult<()> = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(MASTER_NAME)
                .query(&mut self.sentinels[0].connection());
            match asked {
                Ok(()) => break,
                Err(err) if Instant::now() < deadline && refused_for_now(&err) => thread::sleep(POLL_INTERVAL),
                Err(err) => panic!("SENTINEL FAILOVER {MASTER_NAME}: {err}"),
            }
        }
        self.wait_for("the sentinels to name a new master that takes writes", deadline, || {
            self.promoted_from(old)
        });
        let new = self.master().port();
        self.wait_for("the former master to become the new one's replica", deadline, || {
            self.settled(new)
        });
        *failed_over = Some(Instant::now());
        self.node(new)
    }

    /// Kills the master (`SIGKILL`) and waits until the sentinels have noticed
    /// (after `down-after-milliseconds`, 5 s), agreed and promoted the replica,
    /// every sentinel names it and it accepts writes. Returns the new master;
    /// the old one stays down (it is in [`nodes`](Self::nodes), stopped).
    ///
    /// # Panics
    ///
    /// When no new master takes writes within 30 s.
    pub fn kill_master(&mut self) -> &RedisServer {
        let old = self.master().port();
        let deadline = Instant::now() + DEADLINE;
        self.nodes
            .iter_mut()
            .find(|node| node.port() == old)
            .expect("the master is a node of this set")
            .stop();
        self.wait_for(
            "the sentinels to promote the replica of a dead master",
            deadline,
            || self.promoted_from(old),
        );
        *self.failed_over.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.master()
    }

    /// Whether every sentinel names one master other than `old`, and it takes writes.
    fn promoted_from(&self, old: u16) -> bool {
        let ports: Vec<Option<u16>> = self.sentinels.iter().map(master_port).collect();
        let Some(Some(new)) = ports.first().copied() else {
            return false;
        };
        new != old
            && ports.iter().all(|port| *port == Some(new))
            && redis::cmd("SET")
                .arg("aside-testkit:failover")
                .arg(new)
                .query::<()>(&mut self.node(new).connection())
                .is_ok()
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port() == port)
            .unwrap_or_else(|| panic!("the sentinels name port {port}, which is no node of this set"))
    }

    /// Whether the node on `master` is master, the other node its replica in
    /// sync, and every sentinel names `master`, sees the replica's link up and
    /// knows the other sentinels.
    fn settled(&self, master: u16) -> bool {
        let Some(replica) = self.nodes.iter().find(|node| node.port() != master) else {
            return false;
        };
        let replication = info_replication(replica);
        if replication.get("role").map(String::as_str) != Some("slave")
            || replication.get("master_port") != Some(&master.to_string())
            || replication.get("master_link_status").map(String::as_str) != Some("up")
        {
            return false;
        }
        self.sentinels.iter().all(|sentinel| {
            master_port(sentinel) == Some(master)
                && sentinel_view(sentinel, "REPLICAS").is_some_and(|replicas| {
                    replicas.iter().any(|r| {
                        r.get("port") == Some(&replica.port().to_string())
                            && r.get("flags").map(String::as_str) == Some("slave")
                            && r.get("master-link-status").map(String::as_str) == Some("ok")
                    })
                })
                && sentinel_view(sentinel, "SENTINELS").is_some_and(|others| others.len() == SENTINELS - 1)
        })
    }

    fn wait_for(&self, what: &str, deadline: Instant, mut ready: impl FnMut() -> bool) {
        while !ready() {
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .sentinels
                    .iter()
                    .chain(&self.nodes)
                    .map(|server| format!("port {}: {}", server.port(), crate::server::log_tail(server.dir())))
                    .collect();
                panic!("timed out waiting for {what}:\n{}", logs.join("\n"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

/// `NOGOODSLAVE` (no replica the sentinel trusts yet) and `INPROG` (a failover
/// running) pass: the same request succeeds a little later.
fn refused_for_now(err: &redis::RedisError) -> bool {
    matches!(err.code(), Some("NOGOODSLAVE" | "INPROG"))
}

/// The master's port as `sentinel` names it, if it answers.
fn master_port(sentinel: &RedisServer) -> Option<u16> {
    let mut con = sentinel
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(MASTER_NAME)
        .query(&mut con)
        .ok()?;
    addr.map(|(_, port)| port)
}

/// `SENTINEL REPLICAS` or `SENTINEL SENTINELS` of the master, as field maps.
fn sentinel_view(sentinel: &RedisServer, what: &str) -> Option<Vec<HashMap<String, String>>> {
    let mut con = sentinel
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    redis::cmd("SENTINEL").arg(what).arg(MASTER_NAME).query(&mut con).ok()
}

/// `INFO replication` of `node` as a map (empty when it does not answer).
fn info_replication(node: &RedisServer) -> HashMap<String, String> {
    let text: String = node
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .and_then(|mut con| redis::cmd("INFO").arg("replication").query(&mut con))
        .unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
