//! Wake-ups for callers waiting on another caller's computation.
//!
//! A waiter registers for an entry key *before* it re-checks the store, then
//! sleeps until the key is announced as stored (by the Redis pub/sub subscriber
//! or by the memory store), so no store between the check and the sleep is missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::backend::Wake;

/// Entry keys some caller waits on, each with the `Notify` its waiters sleep on.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    keys: Mutex<HashMap<String, Slot>>,
}

#[derive(Debug)]
struct Slot {
    notify: Arc<Notify>,
    waiters: usize,
}

impl Waiters {
    /// Registers interest in `key`; the returned guard's `notified()` completes on
    /// the next [`wake`](Waiters::wake) of `key`.
    pub(crate) fn register(self: &Arc<Self>, key: &str) -> Registration {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let slot = keys.entry(key.to_owned()).or_insert_with(|| Slot {
            notify: Arc::new(Notify::new()),
            waiters: 0,
        });
        slot.waiters += 1;
        Registration {
            waiters: Arc::clone(self),
            key: key.to_owned(),
            notify: Arc::clone(&slot.notify),
        }
    }

    /// Wakes every waiter of `key`.
    pub(crate) fn wake(&self, key: &str) {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = keys.get(key) {
            slot.notify.notify_waiters();
        }
    }
}

impl Wake for Waiters {
    fn wake(&self, entry: &str) {
        Waiters::wake(self, entry);
    }
}

/// One waiter's interest in one key; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    waiters: Arc<Waiters>,
    key: String,
    notify: Arc<Notify>,
}

impl Registration {
    /// The shared `Notify`; call `notified()` on it and `enable()` the future
    /// before re-checking the store.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = self.waiters.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = keys.get_mut(&self.key) {
            slot.waiters -= 1;
            if slot.waiters == 0 {
                keys.remove(&self.key);
            }
        }
    }
}
