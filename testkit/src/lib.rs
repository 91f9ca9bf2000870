//! Real `redis-server` processes for aside's integration tests and benchmarks.
//!
//! Not published; a dev-dependency only. Everything here is synchronous
//! (`std::process`, `std::net`, `std::thread`), so it works from sync benches
//! and from inside `#[tokio::test]` alike. There are no mocks.
//!
//! - [`RedisServer`]: one `redis-server` on a free loopback port with its own temp
//!   dir and no persistence; [`stop`](RedisServer::stop),
//!   [`restart`](RedisServer::restart) (same port, empty again),
//!   [`freeze`](RedisServer::freeze)/[`thaw`](RedisServer::thaw) (a stalled server).
//!   [`ServerOptions`] adds a password, ACL users, a TLS port (with a
//!   throwaway CA: [`tls_url`](RedisServer::tls_url),
//!   [`tls_ca_pem`](RedisServer::tls_ca_pem)) or raw arguments.
//! - [`RedisCluster`]: three masters joined by `redis-cli --cluster create`.
//! - [`RedisSentinel`]: a master, its replica and three sentinels
//!   (`redis-server --sentinel`); [`failover`](RedisSentinel::failover) promotes the
//!   replica, [`kill_master`](RedisSentinel::kill_master) lets the sentinels do it.
//!   [`SentinelOptions`] adds a password to the data nodes or an ACL user to the sentinels.
//! - [`TcpProxy`]: a proxy in front of a server whose [`ProxyMode`] simulates
//!   partitions (blackhole) and connection resets.
//! - [`Children`]: the test binary re-run as child processes, each running one
//!   `#[ignore]`d entry test ([`child_env`], [`child_runtime`]); SIGKILLed on drop.
//! - [`until`]: polls a condition, failing after [`STUCK`].
//!
//! Servers never use port 6379 and never depend on a Redis already running.
//! They are killed when dropped, and on Linux also when the test process dies.
//!
//! # Finding Redis
//!
//! `redis-server` comes from `$ASIDE_REDIS_SERVER`, else `$PATH`; `redis-cli`
//! from `$ASIDE_REDIS_CLI`, else `$PATH`; `openssl` (TLS servers only) from
//! `$ASIDE_OPENSSL`, else `$PATH`. A missing binary panics with
//! installation instructions: it is a test failure, never a silent skip.
//!
//! # Example
//!
//! ```no_run
//! use aside_testkit::RedisServer;
//!
//! let mut server = RedisServer::start();
//! let mut con = server.connection();
//! redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con).unwrap();
//!
//! server.stop();
//! server.restart(); // same port, empty
//! let v: Option<String> = redis::cmd("GET").arg("k").query(&mut server.connection()).unwrap();
//! assert_eq!(v, None);
//! ```

#![cfg(unix)]
#![warn(missing_docs)]

mod binary;
mod children;
mod cluster;
mod port;
mod proxy;
mod sentinel;
mod server;
mod spawn;
mod tls;
mod until;

pub use binary::{redis_cli_binary, redis_server_binary};
pub use children::{child_env, child_runtime, ChildOutput, Children};
pub use cluster::{key_slot, RedisCluster};
pub use proxy::{ProxyMode, TcpProxy};
pub use sentinel::{RedisSentinel, SentinelOptions};
pub use server::{RedisServer, ServerOptions};
pub use tls::openssl_binary;
pub use until::{until, STUCK};
