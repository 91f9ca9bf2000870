//! The harness against real `redis-server` processes.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use aside_testkit::{key_slot, ProxyMode, RedisCluster, RedisSentinel, RedisServer, ServerOptions, TcpProxy};
use redis::{Connection, RedisResult};

fn connect_error(result: RedisResult<Connection>) -> redis::RedisError {
    match result {
        Ok(_) => panic!("expected the connection to fail"),
        Err(err) => err,
    }
}

fn ping(con: &mut Connection) -> RedisResult<String> {
    redis::cmd("PING").query(con)
}

fn connect_with_timeouts(url: &str, timeout: Duration) -> RedisResult<Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    Ok(con)
}

#[test]
fn set_and_get_through_connection() {
    let server = RedisServer::start();
    assert_ne!(server.port(), 6379);
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));

    let mut con = server.connection();
    redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .arg("EX")
        .arg(60)
        .query::<()>(&mut con)
        .unwrap();
    let value: String = redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
    assert_eq!(value, "hello");
    let ttl: i64 = redis::cmd("TTL").arg("greeting").query(&mut con).unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
}

#[test]
fn concurrent_servers_get_distinct_ports() {
    let servers: Vec<RedisServer> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(RedisServer::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ports: HashSet<u16> = servers.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), servers.len());
    for server in &servers {
        assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
    }
}

#[test]
fn stop_refuses_connections_and_restart_reuses_the_port_empty() {
    let mut server = RedisServer::start();
    let port = server.port();
    let first_pid = server.pid();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut server.connection())
        .unwrap();
    assert!(server.is_running());

    server.stop();
    assert!(!server.is_running());
    let err = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let err = connect_error(server.client().get_connection_with_timeout(Duration::from_secs(1)));
    assert!(err.is_connection_refusal(), "{err}");

    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), first_pid);
    assert!(server.is_running());
    let mut con = server.connection();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    let value: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(value, None, "a restarted server starts empty");
}

#[test]
fn freeze_stalls_and_thaw_resumes() {
    let server = RedisServer::start();
    let mut con = server.connection();
    con.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    server.freeze();
    let started = Instant::now();
    let err = ping(&mut con).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The kernel still accepts new connections; they are never answered.
    let mut raw = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 16];
    let err = raw.read(&mut buf).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));

    server.thaw();
    // The raw connection's PING is answered once the server runs again.
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let read = raw.read(&mut buf).unwrap();
    assert_eq!(&buf[..read], b"+PONG\r\n");
    let mut fresh = server.connection();
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}

#[test]
fn password_server_requires_auth() {
    let server = RedisServer::start_with(ServerOptions::new().password("s3cr:t@pw"));
    assert_eq!(
        server.url(),
        format!("redis://:s3cr%3At%40pw@127.0.0.1:{}", server.port())
    );

    let mut anonymous = redis::Client::open(format!("redis://127.0.0.1:{}", server.port()))
        .unwrap()
        .get_connection()
        .unwrap();
    let err = ping(&mut anonymous).unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");

    let mut authed = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    assert_eq!(ping(&mut authed).unwrap(), "PONG");
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn acl_user_can_connect_within_its_rules() {
    let server = RedisServer::start_with(
        ServerOptions::new()
            .acl_user("app", "app-pass", "+@all ~app:*")
            .acl_user("reader", "read-pass", "+get +ping ~*"),
    );

    let mut app = redis::Client::open(server.url_for_user("app", "app-pass"))
        .unwrap()
        .get_connection()
        .unwrap();
    let whoami: String = redis::cmd("ACL").arg("WHOAMI").query(&mut app).unwrap();
    assert_eq!(whoami, "app");
    redis::cmd("SET").arg("app:1").arg("x").query::<()>(&mut app).unwrap();
    let err = redis::cmd("SET")
        .arg("other:1")
        .arg("x")
        .query::<()>(&mut app)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    let mut reader = redis::Client::open(server.url_for_user("reader", "read-pass"))
        .unwrap()
        .get_connection()
        .unwrap();
    let value: String = redis::cmd("GET").arg("app:1").query(&mut reader).unwrap();
    assert_eq!(value, "x");

    let wrong = redis::Client::open(server.url_for_user("app", "wrong"))
        .unwrap()
        .get_connection();
    assert!(wrong.is_err());
}

#[test]
fn cluster_spreads_keys_and_node_for_key_finds_them() {
    let cluster = RedisCluster::start();
    let ports: Vec<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.url(),
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    assert_eq!(
        cluster.node_urls(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
    );

    let client = redis::cluster::ClusterClient::new(cluster.node_urls()).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        redis::cmd("SET")
            .arg(key)
            .arg(format!("value of {key}"))
            .query::<()>(&mut con)
            .unwrap();
    }

    let mut node_cons: Vec<Connection> = cluster.nodes().iter().map(RedisServer::connection).collect();
    let mut used = HashSet::new();
    for key in &keys {
        let node = cluster.node_for_key(key);
        used.insert(node);
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut node_cons[node])
            .unwrap();
        assert_eq!(slot, key_slot(key));
        let value: String = redis::cmd("GET").arg(key).query(&mut node_cons[node]).unwrap();
        assert_eq!(value, format!("value of {key}"));
        // Every other master redirects to that node.
        for (other, other_con) in node_cons.iter_mut().enumerate() {
            if other != node {
                let err = redis::cmd("GET")
                    .arg(key)
                    .query::<Option<String>>(other_con)
                    .unwrap_err();
                assert_eq!(err.code(), Some("MOVED"), "{err}");
                let (addr, moved_slot) = err.redirect_node().unwrap();
                assert_eq!(addr, format!("127.0.0.1:{}", ports[node]));
                assert_eq!(moved_slot, slot);
            }
        }
    }
    assert_eq!(used.len(), 3, "30 keys land on all three masters");
    assert_eq!(cluster.node_for_key("{tag}:a"), cluster.node_for_key("{tag}:b"));
}

#[test]
fn restarted_cluster_node_serves_its_slots_again_empty() {
    let mut cluster = RedisCluster::start();
    let key = "restart:key";
    let node = cluster.node_for_key(key);
    redis::cmd("SET")
        .arg(key)
        .arg("before")
        .query::<()>(&mut cluster.nodes()[node].connection())
        .unwrap();

    let port = cluster.nodes()[node].port();
    cluster.nodes_mut()[node].stop();
    cluster.nodes_mut()[node].restart();
    assert_eq!(cluster.nodes()[node].port(), port);

    let mut con = cluster.nodes()[node].connection();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        assert!(Instant::now() < deadline, "node did not rejoin: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let value: Option<String> = redis::cmd("GET").arg(key).query(&mut con).unwrap();
    assert_eq!(value, None, "a restarted node starts empty");
    redis::cmd("SET").arg(key).arg("after").query::<()>(&mut con).unwrap();
}

#[test]
fn a_frozen_server_can_be_stopped_and_restarted() {
    let mut server = RedisServer::start();
    server.freeze();
    server.stop();
    assert!(!server.is_running());
    server.restart();
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn proxy_forwards_blackholes_and_resets() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    assert_ne!(proxy.port(), server.port());
    assert_eq!(proxy.mode(), ProxyMode::Forward);
    let timeout = Duration::from_millis(300);

    let mut before = connect_with_timeouts(&proxy.url(), timeout).unwrap();
    assert_eq!(ping(&mut before).unwrap(), "PONG");

    proxy.set_mode(ProxyMode::Blackhole);
    let started = Instant::now();
    let err = ping(&mut before).unwrap_err();
    assert!(err.is_timeout(), "existing connection: {err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // New connections are accepted but never answered.
    let mut raw = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    raw.set_read_timeout(Some(timeout)).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    let err = raw.read(&mut [0u8; 16]).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    let err = connect_error(connect_with_timeouts(&proxy.url(), timeout));
    assert!(err.is_timeout(), "new connection: {err}");

    proxy.set_mode(ProxyMode::Forward);
    let mut after = connect_with_timeouts(&proxy.url(), timeout).unwrap();
    assert_eq!(ping(&mut after).unwrap(), "PONG");

    proxy.set_mode(ProxyMode::Reset);
    let started = Instant::now();
    assert!(ping(&mut after).is_err(), "existing connection is dropped");
    let mut raw = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.write_all(b"PING\r\n");
    match raw.read(&mut [0u8; 16]) {
        Ok(0) => {}
        Ok(n) => panic!("Reset mode answered {n} bytes"),
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            "{err}"
        ),
    }
    assert!(connect_with_timeouts(&proxy.url(), timeout).is_err());
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "Reset fails at once, took {:?}",
        started.elapsed()
    );

    proxy.set_mode(ProxyMode::Forward);
    let mut healed = connect_with_timeouts(&proxy.url(), timeout).unwrap();
    assert_eq!(ping(&mut healed).unwrap(), "PONG");
}

#[test]
fn proxy_resets_connections_while_the_target_is_down() {
    let mut server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    server.stop();
    assert!(connect_with_timeouts(&proxy.url(), Duration::from_millis(300)).is_err());
    server.restart();
    let mut con = connect_with_timeouts(&proxy.url(), Duration::from_secs(1)).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
}

#[test]
fn dropping_a_server_kills_it() {
    let server = RedisServer::start();
    let pid = server.pid();
    let port = server.port();
    drop(server);
    if cfg!(target_os = "linux") {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn tls_server_serves_a_certificate_signed_by_its_ca() {
    let mut server = RedisServer::start_with(ServerOptions::new().tls().password("pw"));
    let tls_port = server.tls_port().expect("a TLS port");
    assert_ne!(tls_port, server.port());
    assert_eq!(server.tls_url(), format!("rediss://:pw@127.0.0.1:{tls_port}"));
    assert!(String::from_utf8(server.tls_ca_pem())
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    // The plaintext port still answers.
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");

    let handshake = |server: &RedisServer| {
        std::process::Command::new(aside_testkit::openssl_binary())
            .args(["s_client", "-connect", &format!("127.0.0.1:{tls_port}")])
            .args(["-verify_return_error", "-verify_ip", "127.0.0.1", "-brief", "-CAfile"])
            .arg(server.tls_ca_file())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client")
    };
    let output = handshake(&server);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");

    // A restarted server serves TLS on the same port with the same CA.
    server.restart();
    assert_eq!(server.tls_port(), Some(tls_port));
    assert!(handshake(&server).status.success());
}

#[test]
fn plain_servers_have_no_tls_port() {
    let server = RedisServer::start();
    assert_eq!(server.tls_port(), None);
    assert!(std::panic::catch_unwind(|| server.tls_url()).is_err());
}

#[test]
fn proxy_latency_delays_every_round_trip() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let mut con = connect_with_timeouts(&proxy.url(), Duration::from_secs(5)).unwrap();
    proxy.set_latency(Duration::from_millis(50));
    assert_eq!(proxy.latency(), Duration::from_millis(50));
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(ping(&mut con).unwrap(), "PONG");
        let took = started.elapsed();
        // A lower bound only: the delay is a sleep in each direction.
        assert!(took >= Duration::from_millis(100), "a round trip took {took:?}");
    }
    proxy.set_latency(Duration::ZERO);
    assert_eq!(ping(&mut con).unwrap(), "PONG");
}

fn role(server: &RedisServer) -> String {
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut server.connection()).unwrap();
    redis::from_redis_value_ref(&role[0]).unwrap()
}

#[test]
fn sentinel_fails_over_to_the_replica_and_back() {
    let set = RedisSentinel::start();
    let ports: Vec<String> = set
        .sentinels()
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    assert_eq!(
        set.url(),
        format!("redis+sentinel://{}/{}", ports.join(","), set.master_name())
    );
    assert_eq!(set.sentinels().len(), 3);
    for sentinel in set.sentinels() {
        assert_eq!(role(sentinel), "sentinel");
    }
    let first = set.master().port();
    assert_eq!(first, set.nodes()[0].port());
    assert_eq!(role(set.master()), "master");
    assert_eq!(role(set.replica()), "slave");
    // Written on the master, replicated to the replica.
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut set.master().connection())
        .unwrap();

    let second = set.failover().port();
    assert_eq!(second, set.nodes()[1].port());
    assert_eq!(role(set.master()), "master");
    assert_eq!(role(set.replica()), "slave");
    let v: String = redis::cmd("GET")
        .arg("k")
        .query(&mut set.master().connection())
        .unwrap();
    assert_eq!(v, "v", "the promoted replica has the old master's data");
    let refused = redis::cmd("SET")
        .arg("k")
        .arg("w")
        .query::<()>(&mut set.replica().connection());
    assert_eq!(
        refused.unwrap_err().code(),
        Some("READONLY"),
        "the old master is a replica now"
    );

    // The demoted master is a good replica again: a second failover promotes it.
    assert_eq!(set.failover().port(), first);
    assert_eq!(role(set.master()), "master");
}
