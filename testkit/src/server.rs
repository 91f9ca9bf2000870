//! One `redis-server` child process on a free loopback port.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binary::redis_server_binary;
use crate::port::{self, CLUSTER_BUS_OFFSET};
use crate::spawn::spawn;
use crate::tls;

/// How long a starting server has to answer `PING`.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Fresh ports tried by [`RedisServer::start_with`] when another process takes the port first.
const START_ATTEMPTS: usize = 10;
/// Binds of the same port tried by [`RedisServer::restart`].
const RESTART_ATTEMPTS: usize = 25;
/// Pause between the binds of [`RESTART_ATTEMPTS`].
const RESTART_BACKOFF: Duration = Duration::from_millis(200);
/// Connect timeout of [`RedisServer::connection`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each log file quoted when a server fails to start.
const LOG_TAIL_LINES: usize = 40;

/// How to configure a [`RedisServer`]: password, ACL users, extra arguments.
///
/// The default is an open server (no password, only the `default` user).
///
/// ```no_run
/// use aside_testkit::{RedisServer, ServerOptions};
///
/// let server = RedisServer::start_with(
///     ServerOptions::new()
///         .password("s3cret")
///         .acl_user("app", "app-pass", "+@all ~*")
///         .arg("--maxmemory")
///         .arg("64mb"),
/// );
/// let _app = redis::Client::open(server.url_for_user("app", "app-pass")).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    password: Option<String>,
    acl_users: Vec<AclUser>,
    extra_args: Vec<String>,
    cluster: bool,
    tls: bool,
    /// Sentinel mode: the contents of the sentinel's config file.
    sentinel_conf: Option<String>,
}

#[derive(Clone, Debug)]
struct AclUser {
    name: String,
    password: String,
    rules: String,
}

impl ServerOptions {
    /// Options for an open server; the same as `ServerOptions::default()`.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start_with(aside_testkit::ServerOptions::new());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `password` from the `default` user (`requirepass`);
    /// [`RedisServer::url`] then carries it (`redis://:password@127.0.0.1:PORT`).
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().password("s3cret"));
    /// assert!(server.url().starts_with("redis://:s3cret@"));
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Adds an enabled ACL user with `password` and the whitespace-separated ACL
    /// `rules`, for example `"+@all ~*"` or `"+get +set ~app:*"`. Connect with
    /// [`RedisServer::url_for_user`].
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().acl_user("app", "pw", "+@all ~*"));
    /// let url = server.url_for_user("app", "pw");
    /// ```
    pub fn acl_user(mut self, name: impl Into<String>, password: impl Into<String>, rules: impl Into<String>) -> Self {
        self.acl_users.push(AclUser {
            name: name.into(),
            password: password.into(),
            rules: rules.into(),
        });
        self
    }

    /// Appends one raw `redis-server` command-line argument, after the harness's own.
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(
    ///     ServerOptions::new().arg("--enable-debug-command").arg("local"),
    /// );
    /// ```
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Appends raw `redis-server` command-line arguments, after the harness's own.
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(
    ///     ServerOptions::new().args(["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]),
    /// );
    /// ```
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Also serves TLS on a second port: the harness makes a throwaway CA and a
    /// server certificate for `127.0.0.1` (with the `openssl` tool) in the server's
    /// temp dir. The plaintext port stays open (readiness probes and assertions
    /// use it); connect over TLS with [`RedisServer::tls_url`], trusting
    /// [`RedisServer::tls_ca_pem`]. Clients need no certificate of their own.
    ///
    /// # Panics
    ///
    /// [`RedisServer::start_with`] panics when `openssl` is missing, or when this
    /// `redis-server` was built without TLS (its log is quoted).
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().tls());
    /// assert!(server.tls_url().starts_with("rediss://127.0.0.1:"));
    /// let ca: Vec<u8> = server.tls_ca_pem();
    /// ```
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Cluster mode: a bus port is reserved too and `nodes.conf` lives in the temp dir.
    pub(crate) fn cluster_mode(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Sentinel mode (`redis-server <dir>/sentinel.conf --sentinel`): `conf` is
    /// written to the server's temp dir on its first start; Sentinel rewrites
    /// it as it learns the topology, and a restart keeps what it learnt.
    pub(crate) fn sentinel_mode(mut self, conf: String) -> Self {
        self.sentinel_conf = Some(conf);
        self
    }

    fn command_line(&self, port: u16, tls_port: Option<u16>, dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if self.sentinel_conf.is_some() {
            args.extend([dir.join(SENTINEL_CONF).display().to_string(), "--sentinel".into()]);
        }
        args.extend([
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--logfile".into(),
            dir.join(LOG_FILE).display().to_string(),
            "--daemonize".into(),
            "no".into(),
        ]);
        if let Some(password) = &self.password {
            args.extend(["--requirepass".into(), password.clone()]);
        }
        for user in &self.acl_users {
            args.extend([
                "--user".into(),
                user.name.clone(),
                "on".into(),
                format!(">{}", user.password),
            ]);
            args.extend(user.rules.split_whitespace().map(String::from));
        }
        if let Some(tls_port) = tls_port {
            args.extend([
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                dir.join(tls::SERVER_CERT).display().to_string(),
                "--tls-key-file".into(),
                dir.join(tls::SERVER_KEY).display().to_string(),
                "--tls-ca-cert-file".into(),
                dir.join(tls::CA_CERT).display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
        }
        if self.cluster {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(String::from),
            );
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

const LOG_FILE: &str = "redis.log";
/// A sentinel's config file, in its temp dir: Sentinel must be able to rewrite it.
const SENTINEL_CONF: &str = "sentinel.conf";
const STDOUT_FILE: &str = "stdout.log";
const STDERR_FILE: &str = "stderr.log";

/// One `redis-server` child process on a free loopback port, with its own temp dir.
///
/// It runs with `--save "" --appendonly no`: nothing is persisted, so a
/// [`restart`](Self::restart)ed server starts empty. Dropping it kills the
/// process (`SIGKILL`), waits for it and removes the temp dir. On Linux the
/// server is also killed when the test process dies abruptly.
///
/// It never uses port 6379 and never talks to a Redis it did not start.
///
/// ```no_run
/// use aside_testkit::RedisServer;
///
/// let server = RedisServer::start();
/// let mut con = server.connection();
/// redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con).unwrap();
/// let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
/// assert_eq!(v, "v");
/// ```
pub struct RedisServer {
    port: u16,
    tls_port: Option<u16>,
    options: ServerOptions,
    dir: TempDir,
    child: Option<Child>,
    pid: u32,
}

impl RedisServer {
    /// Starts an open server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed, or does not answer within 10 s
    /// (the message quotes the end of its log).
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// assert_ne!(server.port(), 6379);
    /// ```
    pub fn start() -> RedisServer {
        Self::start_with(ServerOptions::new())
    }

    /// Starts a server configured by `options` on a free port and waits until it
    /// answers `PING`. If another process takes the port first, it retries on a new one.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().password("s3cret"));
    /// ```
    pub fn start_with(options: ServerOptions) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("aside-redis-")
            .tempdir()
            .expect("create a temp dir for redis-server");
        if options.tls {
            tls::generate(dir.path());
        }
        for _ in 0..START_ATTEMPTS {
            let port = if options.cluster {
                port::reserve_cluster()
            } else {
                port::reserve()
            };
            let tls_port = options.tls.then(port::reserve);
            match launch(&options, port, tls_port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        tls_port,
                        pid: child.id(),
                        options,
                        dir,
                        child: Some(child),
                    };
                }
                // Another process bound it between our probe and redis-server's
                // bind. It stays in the reserved set: it is taken anyway.
                Err(Failure::AddressInUse) => continue,
                Err(failure) => panic!("{}", failure.describe(port, dir.path())),
            }
        }
        panic!(
            "redis-server could not bind a free port in {START_ATTEMPTS} attempts; {}",
            log_tail(dir.path())
        );
    }

    /// The TCP port the server listens on (on 127.0.0.1).
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// let addr = ("127.0.0.1", server.port());
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:PASSWORD@127.0.0.1:PORT` when a
    /// password is set.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    /// ```
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("redis://:{}@127.0.0.1:{}", encode_userinfo(password), self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `redis://USER:PASSWORD@127.0.0.1:PORT`, for an ACL user (see
    /// [`ServerOptions::acl_user`]). Both parts are percent-encoded.
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().acl_user("app", "pw", "+@all ~*"));
    /// let client = redis::Client::open(server.url_for_user("app", "pw")).unwrap();
    /// ```
    pub fn url_for_user(&self, user: &str, password: &str) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}",
            encode_userinfo(user),
            encode_userinfo(password),
            self.port
        )
    }

    /// The TLS port (on 127.0.0.1) of a server started with [`ServerOptions::tls`].
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// assert_eq!(RedisServer::start().tls_port(), None);
    /// assert!(RedisServer::start_with(ServerOptions::new().tls()).tls_port().is_some());
    /// ```
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:TLS_PORT`, or `rediss://:PASSWORD@127.0.0.1:TLS_PORT`
    /// when a password is set. The server's certificate is signed by
    /// [`tls_ca_pem`](Self::tls_ca_pem), which the client must trust.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`ServerOptions::tls`].
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().tls());
    /// assert_eq!(server.tls_url(), format!("rediss://127.0.0.1:{}", server.tls_port().unwrap()));
    /// ```
    pub fn tls_url(&self) -> String {
        let port = self.expect_tls();
        match &self.options.password {
            Some(password) => format!("rediss://:{}@127.0.0.1:{port}", encode_userinfo(password)),
            None => format!("rediss://127.0.0.1:{port}"),
        }
    }

    /// The PEM text of the CA that signed the server's TLS certificate.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`ServerOptions::tls`].
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().tls());
    /// assert!(String::from_utf8(server.tls_ca_pem()).unwrap().contains("BEGIN CERTIFICATE"));
    /// ```
    pub fn tls_ca_pem(&self) -> Vec<u8> {
        fs::read(self.tls_ca_file()).expect("read the test CA certificate")
    }

    /// The path of the CA certificate file (PEM), e.g. for `CACHE_TLS_CA_FILE`.
    /// It lives as long as the server.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`ServerOptions::tls`].
    ///
    /// ```no_run
    /// use aside_testkit::{RedisServer, ServerOptions};
    ///
    /// let server = RedisServer::start_with(ServerOptions::new().tls());
    /// assert!(server.tls_ca_file().is_file());
    /// ```
    pub fn tls_ca_file(&self) -> PathBuf {
        self.expect_tls();
        self.dir.path().join(tls::CA_CERT)
    }

    fn expect_tls(&self) -> u16 {
        self.tls_port.unwrap_or_else(|| {
            panic!(
                "the redis-server on port {} has no TLS port: start it with ServerOptions::new().tls()",
                self.port
            )
        })
    }

    /// A client for [`url`](Self::url), for assertions.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// let mut con = server.client().get_connection().unwrap();
    /// ```
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a RedisServer URL is valid")
    }

    /// A synchronous connection for assertions (5 s connect timeout, no read timeout).
    ///
    /// # Panics
    ///
    /// When the server is stopped, frozen or refuses the connection.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// let mut con = server.connection();
    /// let ttl: i64 = redis::cmd("PTTL").arg("some:key").query(&mut con).unwrap();
    /// assert_eq!(ttl, -2);
    /// ```
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .unwrap_or_else(|err| panic!("connect to the test redis-server on port {}: {err}", self.port))
    }

    /// Kills the server (`SIGKILL`) and waits for it. The port stays reserved for
    /// [`restart`](Self::restart); connections to it are refused meanwhile.
    /// Stopping a stopped server does nothing.
    ///
    /// ```no_run
    /// let mut server = aside_testkit::RedisServer::start();
    /// server.stop();
    /// assert!(server.client().get_connection().is_err());
    /// ```
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if it already exited; waiting reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same options and waits
    /// until it answers `PING`; a running server is stopped first.
    ///
    /// Nothing is persisted, so the restarted server is **empty**. A cluster node
    /// keeps its `nodes.conf` and so rejoins the cluster with its slots.
    ///
    /// # Panics
    ///
    /// When the port stays taken for about 5 s, or the server does not answer within 10 s.
    ///
    /// ```no_run
    /// let mut server = aside_testkit::RedisServer::start();
    /// server.stop();
    /// server.restart();
    /// let pong: String = redis::cmd("PING").query(&mut server.connection()).unwrap();
    /// ```
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..RESTART_ATTEMPTS {
            match launch(&self.options, self.port, self.tls_port, self.dir.path()) {
                Ok(child) => {
                    self.pid = child.id();
                    self.child = Some(child);
                    return;
                }
                Err(Failure::AddressInUse) => thread::sleep(RESTART_BACKOFF),
                Err(failure) => panic!("{}", failure.describe(self.port, self.dir.path())),
            }
        }
        panic!(
            "redis-server could not bind port {} again for restart: it stayed in use; {}",
            self.port,
            log_tail(self.dir.path())
        );
    }

    /// Stops the process with `SIGSTOP`: the kernel still accepts connections, but
    /// nothing is answered until [`thaw`](Self::thaw). Simulates a stalled server.
    ///
    /// # Panics
    ///
    /// When the server is stopped.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// server.freeze();
    /// // ... calls time out ...
    /// server.thaw();
    /// ```
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP, "freeze");
    }

    /// Resumes a [`freeze`](Self::freeze)d server with `SIGCONT`; requests sent
    /// meanwhile are then answered.
    ///
    /// # Panics
    ///
    /// When the server is stopped.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// server.freeze();
    /// server.thaw();
    /// ```
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT, "thaw");
    }

    /// Whether the process is alive (a frozen server counts as running).
    ///
    /// ```no_run
    /// let mut server = aside_testkit::RedisServer::start();
    /// assert!(server.is_running());
    /// server.stop();
    /// assert!(!server.is_running());
    /// ```
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id of the most recently started `redis-server` process.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// assert!(server.pid() > 0);
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's temp dir (its `--dir`, log and `nodes.conf`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn signal(&self, signal: libc::c_int, what: &str) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("cannot {what} the redis-server on port {}: it is stopped", self.port));
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own,
        // not yet reaped child, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            panic!(
                "cannot {what} the redis-server on port {}: {}",
                self.port,
                io::Error::last_os_error()
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if self.options.cluster {
            port::release(&[self.port, self.port + CLUSTER_BUS_OFFSET]);
        } else {
            port::release(&[self.port]);
        }
        if let Some(tls_port) = self.tls_port {
            port::release(&[tls_port]);
        }
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("tls_port", &self.tls_port)
            .field("pid", &self.pid)
            .field("stopped", &self.child.is_none())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Why a launch did not produce a ready server.
enum Failure {
    /// The port (or cluster bus port) was taken.
    AddressInUse,
    /// The binary could not be executed.
    Spawn(PathBuf, io::Error),
    /// The process exited before answering `PING`.
    Exited(ExitStatus),
    /// The process did not answer `PING` before the deadline (and was killed).
    Timeout,
}

impl Failure {
    fn describe(&self, port: u16, dir: &Path) -> String {
        match self {
            Failure::AddressInUse => format!("port {port} is in use"),
            Failure::Spawn(path, err) => {
                format!("cannot execute redis-server at {}: {err}", path.display())
            }
            Failure::Exited(status) => format!(
                "redis-server on port {port} exited during startup ({status}); {}",
                log_tail(dir)
            ),
            Failure::Timeout => format!(
                "redis-server on port {port} did not answer PING within {READY_DEADLINE:?}; {}",
                log_tail(dir)
            ),
        }
    }
}

/// Spawns `redis-server` on `port` (and `tls_port`) and waits until it answers
/// `PING` on `port`.
fn launch(options: &ServerOptions, port: u16, tls_port: Option<u16>, dir: &Path) -> Result<Child, Failure> {
    for name in [LOG_FILE, STDOUT_FILE, STDERR_FILE] {
        // Only the current attempt's output should be quoted on failure.
        let _ = fs::remove_file(dir.join(name));
    }
    if let Some(conf) = &options.sentinel_conf {
        let path = dir.join(SENTINEL_CONF);
        if !path.exists() {
            fs::write(&path, conf).unwrap_or_else(|err| panic!("write the sentinel config {}: {err}", path.display()));
        }
    }
    let binary = redis_server_binary();
    let mut command = Command::new(&binary);
    command
        .args(options.command_line(port, tls_port, dir))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(output_file(dir, STDOUT_FILE))
        .stderr(output_file(dir, STDERR_FILE));
    let mut child = spawn(command).map_err(|err| Failure::Spawn(binary, err))?;
    let url = match &options.password {
        Some(password) => format!("redis://:{}@127.0.0.1:{port}", encode_userinfo(password)),
        None => format!("redis://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(if output_mentions(dir, "Address already in use") {
                Failure::AddressInUse
            } else {
                Failure::Exited(status)
            });
        }
        if answers_as(&url, child.id()) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::Timeout);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether the server at `url` answers `PING` and is the process `pid`, not some
/// other Redis that took the port first.
fn answers_as(url: &str, pid: u32) -> bool {
    let probe = || -> redis::RedisResult<bool> {
        let client = redis::Client::open(url)?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(250))?;
        con.set_read_timeout(Some(Duration::from_secs(1)))?;
        redis::cmd("PING").query::<String>(&mut con)?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut con)?;
        Ok(info
            .lines()
            .filter_map(|line| line.strip_prefix("process_id:"))
            .any(|value| value.trim() == pid.to_string()))
    };
    probe().unwrap_or(false)
}

fn output_file(dir: &Path, name: &str) -> Stdio {
    File::create(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

fn output_mentions(dir: &Path, needle: &str) -> bool {
    [LOG_FILE, STDOUT_FILE, STDERR_FILE]
        .iter()
        .filter_map(|name| fs::read_to_string(dir.join(name)).ok())
        .any(|text| text.contains(needle))
}

/// The last lines of the server's log, stdout and stderr, for panic messages.
pub(crate) fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for name in [LOG_FILE, STDOUT_FILE, STDERR_FILE] {
        let Ok(text) = fs::read_to_string(dir.join(name)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            continue;
        }
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        out.push_str(&format!("\n--- end of {name} ---\n{}", tail.join("\n")));
    }
    if out.is_empty() {
        "the server wrote no log".to_string()
    } else {
        out
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_userinfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported_as_address_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        match launch(&ServerOptions::new(), port, None, dir.path()) {
            Err(Failure::AddressInUse) => {}
            Err(other) => panic!("{}", other.describe(port, dir.path())),
            Ok(mut child) => {
                let _ = child.kill();
                panic!("redis-server started on a taken port");
            }
        }
    }

    #[test]
    fn userinfo_is_percent_encoded() {
        assert_eq!(encode_userinfo("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_userinfo("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn command_line_disables_persistence_and_adds_acl_users() {
        let dir = Path::new("/tmp/x");
        let args = ServerOptions::new()
            .password("pw")
            .acl_user("app", "secret", "+@all ~*")
            .arg("--maxmemory")
            .arg("1mb")
            .command_line(7000, None, dir);
        let line = args.join(" ");
        assert!(line.contains("--port 7000 --bind 127.0.0.1 --save  --appendonly no"));
        assert!(line.contains("--requirepass pw"));
        assert!(line.contains("--user app on >secret +@all ~*"));
        assert!(line.ends_with("--maxmemory 1mb"));
        assert!(!line.contains("cluster"));
        assert!(!line.contains("tls"));
    }

    #[test]
    fn tls_command_line_adds_a_tls_port_and_keeps_the_plain_one() {
        let dir = Path::new("/tmp/x");
        let line = ServerOptions::new().tls().command_line(7000, Some(7001), dir).join(" ");
        assert!(line.contains("--port 7000 "));
        assert!(
            line.contains("--tls-port 7001 --tls-cert-file /tmp/x/tls-server.crt --tls-key-file /tmp/x/tls-server.key")
        );
        assert!(line.contains("--tls-auth-clients no"));
    }
}
