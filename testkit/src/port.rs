//! Free loopback ports, never handed out twice within one process.
//!
//! A port is found by binding `127.0.0.1:0` and dropping the listener. Another
//! process may still take it before `redis-server` binds it; the server module
//! detects that ("Address already in use") and retries on a new port.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// The port of the developer's own Redis; the harness never uses it.
const DEFAULT_REDIS_PORT: u16 = 6379;
/// Offset of the Redis Cluster bus port from the client port.
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10000;

/// Ports handed out by this process and not yet released.
static RESERVED: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

fn reserved() -> MutexGuard<'static, HashSet<u16>> {
    // A panic while holding the lock leaves the set consistent: keep going.
    RESERVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A loopback port that is free right now and reserved for the caller.
pub(crate) fn reserve() -> u16 {
    loop {
        let port = probe();
        if port == DEFAULT_REDIS_PORT {
            continue;
        }
        if reserved().insert(port) {
            return port;
        }
    }
}

/// A port `p` below 55535 such that `p` and its cluster bus port `p + 10000`
/// are both free; both are reserved for the caller.
pub(crate) fn reserve_cluster() -> u16 {
    loop {
        let port = probe();
        if port == DEFAULT_REDIS_PORT || port >= u16::MAX - CLUSTER_BUS_OFFSET {
            continue;
        }
        let bus = port + CLUSTER_BUS_OFFSET;
        if bus == DEFAULT_REDIS_PORT || !is_free(bus) {
            continue;
        }
        let mut set = reserved();
        if set.contains(&port) || set.contains(&bus) {
            continue;
        }
        set.insert(port);
        set.insert(bus);
        return port;
    }
}

/// Gives `ports` back to the process-wide pool.
pub(crate) fn release(ports: &[u16]) {
    let mut set = reserved();
    for port in ports {
        set.remove(port);
    }
}

fn probe() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice() {
        let ports: Vec<u16> = (0..50).map(|_| reserve()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(!unique.contains(&DEFAULT_REDIS_PORT));
        release(&ports);
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus_port() {
        let port = reserve_cluster();
        assert!(port < u16::MAX - CLUSTER_BUS_OFFSET);
        assert!(reserved().contains(&(port + CLUSTER_BUS_OFFSET)));
        release(&[port, port + CLUSTER_BUS_OFFSET]);
    }
}
