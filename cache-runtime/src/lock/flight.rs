//! In-process coalescing: concurrent callers of one entry share one *flight*.
//! One of them leads; the others follow it and learn how it landed.
//!
//! A leader that computed hands its encoded value to the followers whose call
//! started no later than its computation did. For them the value is as good as
//! their own: no invalidation can have returned before they started and begun
//! after that computation started. Followers that joined later read the store
//! instead, which an invalidation has cleaned: handing them the value could
//! serve it after an invalidation that returned before they called.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;

/// How a flight ended.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// The leader is still at work.
    InFlight,
    /// The leader computed, starting at `started`: the encoded entry when the
    /// result is cacheable, `None` when it is not (an `Err`, an uncached `None`).
    Computed { value: Option<Bytes>, started: Instant },
    /// The leader waited `wait` for another process and gave up: its followers
    /// give up too, and share one computation.
    GaveUp,
    /// The leader left without a value for them (it found one in the store, or
    /// was cancelled): followers look at the store, and one leads next.
    Left,
}

impl Landing {
    /// The shared value, if a caller that started at `call_started` may take it.
    pub(crate) fn value_for(&self, call_started: Instant) -> Option<&Bytes> {
        match self {
            Landing::Computed {
                value: Some(bytes),
                started,
            } if call_started <= *started => Some(bytes),
            _ => None,
        }
    }
}

/// The flights of one cache, by entry key: at most one leader per key.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    inflight: Mutex<HashMap<String, watch::Receiver<Landing>>>,
}

/// A caller's part in a flight.
pub(crate) enum Role {
    Leader(Pilot),
    Follower(Follower),
}

impl Flights {
    /// Joins the flight of `key`, leading it if there is none.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Role {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(receiver) = inflight.get(key) {
            if matches!(*receiver.borrow(), Landing::InFlight) {
                return Role::Follower(Follower {
                    receiver: receiver.clone(),
                });
            }
        }
        let (sender, receiver) = watch::channel(Landing::InFlight);
        inflight.insert(key.to_owned(), receiver);
        Role::Leader(Pilot {
            flights: Arc::clone(self),
            key: key.to_owned(),
            sender,
        })
    }
}

/// A follower's view of its flight.
pub(crate) struct Follower {
    receiver: watch::Receiver<Landing>,
}

impl Follower {
    /// Waits for the leader to land, until `deadline` if there is one.
    pub(crate) async fn landing(mut self, deadline: Option<Instant>) -> Result<Landing, super::WaitTimeout> {
        let landed = self.receiver.wait_for(|landing| !matches!(landing, Landing::InFlight));
        let landed = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), landed)
                .await
                .map_err(|_| super::WaitTimeout)?,
            None => landed.await,
        };
        // The sender lands before it is dropped, so a closed channel means the
        // same as leaving.
        Ok(landed.map(|landing| landing.clone()).unwrap_or(Landing::Left))
    }
}

/// The leader's handle. [`land`](Pilot::land) tells the followers how it went;
/// dropped without landing — its caller was cancelled — it lands as
/// [`Landing::Left`], so a follower leads at once.
pub(crate) struct Pilot {
    flights: Arc<Flights>,
    key: String,
    sender: watch::Sender<Landing>,
}

impl Pilot {
    /// `true` if some caller follows this flight (a value is worth sharing).
    pub(crate) fn has_followers(&self) -> bool {
        // One receiver is the flight's own entry in the map.
        self.sender.receiver_count() > 1
    }

    /// Ends the flight with `landing`.
    pub(crate) fn land(self, landing: Landing) {
        self.leave();
        self.sender.send_replace(landing);
    }

    /// Removes the flight, so callers from now on start a new one.
    fn leave(&self) {
        let mut inflight = self.flights.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inflight
            .get(&self.key)
            .is_some_and(|receiver| receiver.same_channel(&self.sender.subscribe()))
        {
            inflight.remove(&self.key);
        }
    }
}

impl Drop for Pilot {
    fn drop(&mut self) {
        if matches!(*self.sender.borrow(), Landing::InFlight) {
            self.leave();
            self.sender.send_replace(Landing::Left);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lead(flights: &Arc<Flights>, key: &str) -> Pilot {
        match flights.join(key) {
            Role::Leader(pilot) => pilot,
            Role::Follower(_) => panic!("{key}: expected to lead"),
        }
    }

    fn follow(flights: &Arc<Flights>, key: &str) -> Follower {
        match flights.join(key) {
            Role::Follower(follower) => follower,
            Role::Leader(_) => panic!("{key}: expected to follow"),
        }
    }

    #[tokio::test]
    async fn one_leader_per_key_and_followers_wait_for_it() {
        let flights = Arc::new(Flights::default());
        let pilot = lead(&flights, "k");
        let follower = follow(&flights, "k");
        let _other = lead(&flights, "other");
        assert!(pilot.has_followers());
        let waiting = tokio::spawn(follower.landing(None));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "followers wait while the leader flies");
        let started = Instant::now();
        pilot.land(Landing::Computed {
            value: Some(Bytes::from_static(b"v")),
            started,
        });
        let landing = waiting.await.unwrap().unwrap();
        assert!(landing.value_for(started).is_some());
        let _next = lead(&flights, "k");
    }

    #[tokio::test]
    async fn a_cancelled_leader_lands_as_left() {
        let flights = Arc::new(Flights::default());
        let pilot = lead(&flights, "k");
        let follower = follow(&flights, "k");
        drop(pilot);
        assert!(matches!(follower.landing(None).await, Ok(Landing::Left)));
        let _next = lead(&flights, "k");
    }

    #[test]
    fn only_callers_older_than_the_computation_take_its_value() {
        let before = Instant::now();
        let started = before + Duration::from_millis(5);
        let landing = Landing::Computed {
            value: Some(Bytes::from_static(b"v")),
            started,
        };
        assert!(landing.value_for(before).is_some());
        assert!(landing.value_for(started).is_some());
        assert!(landing.value_for(started + Duration::from_millis(1)).is_none());
        assert!(Landing::Left.value_for(before).is_none());
    }

    #[tokio::test]
    async fn followers_stop_waiting_at_their_deadline() {
        let flights = Arc::new(Flights::default());
        let _pilot = lead(&flights, "k");
        let follower = follow(&flights, "k");
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(follower.landing(Some(deadline)).await.is_err());
    }
}
