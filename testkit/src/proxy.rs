//! A TCP proxy in front of a server, for fault injection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the proxy waits to connect to its target.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Size of each forwarding buffer.
const BUFFER_SIZE: usize = 16 * 1024;

/// What a [`TcpProxy`] does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward bytes both ways between clients and the target.
    #[default]
    Forward,
    /// A network partition: connections are accepted and held; everything clients
    /// send is read and discarded and nothing is answered, on existing connections
    /// too. Leaving this mode closes the connections that lived through it (their
    /// requests were lost, so they cannot be trusted again).
    Blackhole,
    /// Close every current connection with a TCP reset, and reset new ones as soon
    /// as they are accepted.
    Reset,
}

impl ProxyMode {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => ProxyMode::Blackhole,
            2 => ProxyMode::Reset,
            _ => ProxyMode::Forward,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            ProxyMode::Forward => 0,
            ProxyMode::Blackhole => 1,
            ProxyMode::Reset => 2,
        }
    }
}

/// A TCP proxy on a free loopback port in front of `127.0.0.1:target_port`,
/// run by std threads, whose [`ProxyMode`] can be switched at any time to
/// simulate partitions and resets. Dropping it closes every socket and joins
/// its threads.
///
/// ```no_run
/// use std::time::Duration;
/// use aside_testkit::{ProxyMode, RedisServer, TcpProxy};
///
/// let server = RedisServer::start();
/// let proxy = TcpProxy::start(server.port());
/// let client = redis::Client::open(proxy.url()).unwrap();
/// let mut con = client.get_connection().unwrap();
/// con.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
///
/// proxy.set_mode(ProxyMode::Blackhole);
/// assert!(redis::cmd("PING").query::<String>(&mut con).is_err());
/// ```
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    mode: AtomicU8,
    /// Added before each forwarded chunk, in microseconds.
    latency_us: AtomicU64,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
    /// Open connections by id: the client socket and, when forwarding, the upstream one.
    connections: Mutex<HashMap<u64, (TcpStream, Option<TcpStream>)>>,
    /// Forwarding threads, joined on drop.
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Starts a proxy in [`ProxyMode::Forward`] in front of `127.0.0.1:target_port`.
    /// The target need not be up: while it is down, new connections are reset.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    ///
    /// ```no_run
    /// let server = aside_testkit::RedisServer::start();
    /// let proxy = aside_testkit::TcpProxy::start(server.port());
    /// ```
    pub fn start(target_port: u16) -> TcpProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the TcpProxy port");
        let port = listener.local_addr().expect("read the TcpProxy port").port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from((Ipv4Addr::LOCALHOST, target_port)),
            mode: AtomicU8::new(ProxyMode::Forward.as_u8()),
            latency_us: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("tcp-proxy-{port}"))
                .spawn(move || accept_loop(&shared, &listener))
                .expect("start the TcpProxy thread")
        };
        TcpProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's own port on 127.0.0.1.
    ///
    /// ```no_run
    /// let proxy = aside_testkit::TcpProxy::start(7000);
    /// assert_ne!(proxy.port(), 7000);
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` for the proxy's port (without credentials).
    ///
    /// ```no_run
    /// let proxy = aside_testkit::TcpProxy::start(7000);
    /// let client = redis::Client::open(proxy.url()).unwrap();
    /// ```
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The current mode.
    ///
    /// ```no_run
    /// use aside_testkit::{ProxyMode, TcpProxy};
    ///
    /// let proxy = TcpProxy::start(7000);
    /// assert_eq!(proxy.mode(), ProxyMode::Forward);
    /// ```
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Switches to `mode`, taking effect at once for new and existing connections.
    ///
    /// ```no_run
    /// use aside_testkit::{ProxyMode, RedisServer, TcpProxy};
    ///
    /// let server = RedisServer::start();
    /// let proxy = TcpProxy::start(server.port());
    /// proxy.set_mode(ProxyMode::Reset);    // every connection drops
    /// proxy.set_mode(ProxyMode::Forward);  // new connections work again
    /// ```
    pub fn set_mode(&self, mode: ProxyMode) {
        let previous = ProxyMode::from_u8(self.shared.mode.swap(mode.as_u8(), Ordering::SeqCst));
        if mode == ProxyMode::Reset || (previous == ProxyMode::Blackhole && mode != ProxyMode::Blackhole) {
            self.shared.close_all();
        }
    }
}

impl TcpProxy {
    /// Delays every chunk forwarded, in each direction, by `latency` (zero by
    /// default): a request and its reply then take at least twice `latency`, a
    /// slow network. Chunks in one direction queue behind each other. Takes
    /// effect at once, for existing connections too.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use aside_testkit::{RedisServer, TcpProxy};
    ///
    /// let server = RedisServer::start();
    /// let proxy = TcpProxy::start(server.port());
    /// proxy.set_latency(Duration::from_millis(50)); // every round trip >= 100 ms
    /// ```
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(micros, Ordering::SeqCst);
    }

    /// The delay added to each forwarded chunk (see [`set_latency`](Self::set_latency)).
    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it sees the flag and returns.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_secs(1),
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.shared.close_all();
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

impl std::fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProxy")
            .field("port", &self.port)
            .field("target", &self.shared.target)
            .field("mode", &self.mode())
            .field("latency", &self.latency())
            .finish()
    }
}

impl Shared {
    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }

    fn mode(&self) -> ProxyMode {
        ProxyMode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    /// Resets and forgets every open connection; their threads wake up and exit.
    fn close_all(&self) {
        let connections: Vec<_> = lock(&self.connections).drain().map(|(_, c)| c).collect();
        for (client, upstream) in connections {
            abort(&client);
            if let Some(upstream) = upstream {
                abort(&upstream);
            }
        }
    }

    /// Closes connection `id` normally (one side hung up or a write failed).
    fn close(&self, id: u64) {
        if let Some((client, upstream)) = lock(&self.connections).remove(&id) {
            let _ = client.shutdown(Shutdown::Both);
            if let Some(upstream) = upstream {
                let _ = upstream.shutdown(Shutdown::Both);
            }
        }
    }

    fn spawn_worker(self: &Arc<Self>, id: u64, from: TcpStream, to: Option<TcpStream>) {
        let shared = Arc::clone(self);
        let worker = thread::Builder::new()
            .name(format!("tcp-proxy-conn-{id}"))
            .spawn(move || pump(&shared, id, from, to));
        match worker {
            Ok(handle) => {
                let mut workers = lock(&self.workers);
                workers.retain(|w| !w.is_finished());
                workers.push(handle);
            }
            Err(err) => {
                eprintln!("aside-testkit: TcpProxy could not start a thread: {err}");
                self.close(id);
            }
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for incoming in listener.incoming() {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        let _ = client.set_nodelay(true);
        match shared.mode() {
            ProxyMode::Reset => abort(&client),
            ProxyMode::Blackhole => {
                let _ = register(shared, client, None);
            }
            ProxyMode::Forward => {
                match TcpStream::connect_timeout(&shared.target, UPSTREAM_CONNECT_TIMEOUT) {
                    Ok(upstream) => {
                        let _ = upstream.set_nodelay(true);
                        let _ = register(shared, client, Some(upstream));
                    }
                    // The target is down: behave like it, refuse at once.
                    Err(_) => abort(&client),
                }
            }
        }
    }
}

/// Tracks a new connection and starts its forwarding threads.
fn register(shared: &Arc<Shared>, client: TcpStream, upstream: Option<TcpStream>) -> io::Result<()> {
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let client_reader = client.try_clone()?;
    let upstream_writer = upstream.as_ref().map(TcpStream::try_clone).transpose()?;
    let back = match &upstream {
        Some(upstream) => Some((upstream.try_clone()?, client.try_clone()?)),
        None => None,
    };
    lock(&shared.connections).insert(id, (client, upstream));
    shared.spawn_worker(id, client_reader, upstream_writer);
    if let Some((upstream_reader, client_writer)) = back {
        shared.spawn_worker(id, upstream_reader, Some(client_writer));
    }
    Ok(())
}

/// Copies `from` to `to` while the mode is Forward (each chunk after the
/// latency), discards while Blackhole, and closes the connection on Reset, EOF
/// or error.
fn pump(shared: &Shared, id: u64, mut from: TcpStream, mut to: Option<TcpStream>) {
    let mut buffer = vec![0u8; BUFFER_SIZE];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let latency = shared.latency();
        if !latency.is_zero() && shared.mode() == ProxyMode::Forward {
            thread::sleep(latency);
        }
        match shared.mode() {
            ProxyMode::Forward => {
                let forwarded = match &mut to {
                    Some(to) => to.write_all(&buffer[..read]).is_ok(),
                    // Accepted while blackholed: there is no upstream.
                    None => false,
                };
                if !forwarded {
                    break;
                }
            }
            ProxyMode::Blackhole => {}
            ProxyMode::Reset => break,
        }
    }
    if shared.mode() == ProxyMode::Reset {
        abort(&from);
    }
    shared.close(id);
}

/// Closes `stream` with a TCP reset: `SO_LINGER` 0 makes the final close send
/// RST, and the shutdown wakes every thread blocked on a clone of it, whose
/// exit drops the last descriptor.
fn abort(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the lifetime of `stream`, and `linger` is a
    // valid `struct linger` whose size is passed alongside it.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
