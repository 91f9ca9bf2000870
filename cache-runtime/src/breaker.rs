//! The circuit breaker in front of Redis: after a few consecutive failures it
//! opens and calls skip Redis entirely (computing directly, at the cost of an
//! atomic load); after a backoff one call probes, and a success closes it again.
//!
//! State changes are logged once each, at `warn` (open) and `info` (closed).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub(crate) const FAILURES_TO_OPEN: u32 = 5;
/// The first wait before probing; doubled after each failed probe.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait before probing.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A probe that has not reported after this long is presumed lost (its task
/// starved or stuck) and the next call probes instead: a probe must never keep
/// the breaker half-open, skipping Redis, for good.
pub(crate) const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// Whether calls reach Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to Redis.
    #[default]
    Closed,
    /// Calls skip Redis until the next probe.
    Open,
    /// One probe is on its way; other calls skip Redis.
    HalfOpen,
}

/// One breaker's state and counts: on a cluster, a master's (see
/// [`Stats::breakers`](crate::Stats::breakers)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeBreaker {
    /// Whether calls for this node reach it.
    pub state: BreakerState,
    /// How many times this breaker opened.
    pub opened: u64,
    /// Operations it skipped while open.
    pub skips: u64,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `epoch()` at which a probe may go.
    probe_at: AtomicU64,
    backoff_ms: AtomicU64,
    probing: AtomicBool,
    /// Milliseconds since `epoch()` at which the current probe is presumed lost.
    probe_lost_at: AtomicU64,
    opened: AtomicU64,
    skipped: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since a fixed instant of the process, the breakers' clock.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Permission to call Redis; report how it went with [`Permit::record`]. A probe
/// dropped unreported (its caller was cancelled) counts as a failed probe, so the
/// breaker never waits on a probe that will not come back.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// Whether this call is the breaker's probe.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// Reports whether Redis answered (`available`).
    pub(crate) fn record(mut self, available: bool, target: &dyn std::fmt::Display) {
        self.settled = true;
        self.breaker.settle(self.probe, available, target);
    }

    /// Reports an answer that tells nothing about Redis being up or down (a
    /// request turned away while a slot moves): the run of failures is neither
    /// broken nor extended. A probe that got it did reach Redis.
    pub(crate) fn abstain(mut self, target: &dyn std::fmt::Display) {
        self.settled = true;
        if self.probe {
            self.breaker.settle(true, true, target);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.settle(true, false, &"redis (probe cancelled)");
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            probe_at: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(ms(FIRST_BACKOFF)),
            probing: AtomicBool::new(false),
            probe_lost_at: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    /// Claims the probe: free, or held by a probe gone for [`PROBE_PATIENCE`].
    fn start_probe(&self) -> bool {
        let now = now_ms();
        let claimed = self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || {
                let lost_at = self.probe_lost_at.load(Ordering::Acquire);
                now >= lost_at
                    && self
                        .probe_lost_at
                        .compare_exchange(lost_at, u64::MAX, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            };
        if claimed {
            self.probe_lost_at
                .store(now.saturating_add(ms(PROBE_PATIENCE)), Ordering::Release);
        }
        claimed
    }

    /// A permit to call Redis, or `None` to skip it.
    pub(crate) fn allow(&self) -> Option<Permit<'_>> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            _ if now_ms() >= self.probe_at.load(Ordering::Acquire) && self.start_probe() => {
                self.state.store(HALF_OPEN, Ordering::Release);
                tracing::debug!(target: "aside", "circuit breaker probing redis");
                Some(Permit {
                    breaker: self,
                    probe: true,
                    settled: false,
                })
            }
            _ => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// How a call made with a permit (a probe or not) went.
    fn settle(&self, probe: bool, available: bool, target: &dyn std::fmt::Display) {
        if available {
            // Every successful call lands here: only read in the steady state, so the
            // breaker's cache lines stay shared between cores instead of bouncing.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            if self.state.load(Ordering::Acquire) != CLOSED && self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
                self.backoff_ms.store(ms(FIRST_BACKOFF), Ordering::Relaxed);
                tracing::info!(target: "aside", redis = %target, "circuit breaker closed: redis answers again, caching resumed");
            }
        } else if probe {
            let backoff = self.backoff_ms.load(Ordering::Relaxed);
            self.probe_at.store(now_ms().saturating_add(backoff), Ordering::Release);
            self.backoff_ms
                .store(backoff.saturating_mul(2).min(ms(MAX_BACKOFF)), Ordering::Relaxed);
            self.state.store(OPEN, Ordering::Release);
            tracing::debug!(target: "aside", redis = %target, next_probe_ms = backoff, "circuit breaker probe failed");
        } else if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= FAILURES_TO_OPEN
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.probe_at.store(
                now_ms().saturating_add(self.backoff_ms.load(Ordering::Relaxed)),
                Ordering::Release,
            );
            self.opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "aside", redis = %target, failures = FAILURES_TO_OPEN,
                "circuit breaker open: redis is failing; calls compute without the cache and redis is probed");
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Lets the next call probe at once, without the backoff: what made the
    /// calls fail has been dealt with (a wedged connection replaced by a new
    /// one), so waiting tells nothing. No effect on a closed breaker.
    pub(crate) fn probe_now(&self) {
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.probe_at.store(0, Ordering::Release);
        }
    }

    /// Whether a call made within `within` may reach Redis: the breaker is
    /// closed, its probe is on its way, or the next probe is due by then.
    pub(crate) fn reachable_within(&self, within: Duration) -> bool {
        match self.state.load(Ordering::Acquire) {
            OPEN => self.probe_at.load(Ordering::Acquire) <= now_ms().saturating_add(ms(within)),
            _ => true,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker opened, and how many calls it skipped.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }

    /// The state and counts, for [`Stats`](crate::Stats).
    pub(crate) fn snapshot(&self) -> NodeBreaker {
        let (opened, skips) = self.counts();
        NodeBreaker {
            state: self.state(),
            opened,
            skips,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(breaker: &Breaker) {
        if let Some(permit) = breaker.allow() {
            permit.record(false, &"test");
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_skips() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            fail(&breaker);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.allow().is_none());
        assert_eq!(breaker.counts(), (1, 1));
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::default();
        for _ in 0..10 {
            fail(&breaker);
            fail(&breaker);
            let permit = breaker.allow().unwrap();
            permit.record(true, &"test");
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn probes_once_after_the_backoff_and_closes_on_success() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            fail(&breaker);
        }
        breaker.probe_at.store(0, Ordering::Release);
        let probe = breaker.allow().expect("a probe after the backoff");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.allow().is_none(), "one probe at a time");
        probe.record(false, &"test");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.backoff_ms.load(Ordering::Relaxed), ms(FIRST_BACKOFF) * 2);
        breaker.probe_at.store(0, Ordering::Release);
        let probe = breaker.allow().unwrap();
        probe.record(true, &"test");
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.backoff_ms.load(Ordering::Relaxed), ms(FIRST_BACKOFF));
    }

    #[test]
    fn probe_now_skips_the_backoff_of_an_open_breaker_only() {
        let breaker = Breaker::default();
        breaker.probe_now();
        assert_eq!(breaker.probe_at.load(Ordering::Acquire), 0);
        for _ in 0..FAILURES_TO_OPEN {
            fail(&breaker);
        }
        assert!(breaker.allow().is_none(), "skipped during the backoff");
        assert!(!breaker.reachable_within(Duration::from_millis(10)));
        assert!(breaker.reachable_within(FIRST_BACKOFF * 2));
        breaker.probe_now();
        assert!(breaker.reachable_within(Duration::ZERO));
        let probe = breaker.allow().expect("a probe at once");
        assert!(probe.is_probe());
        probe.record(true, &"test");
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_cancelled_probe_counts_as_failed_and_lets_the_next_one_go() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            fail(&breaker);
        }
        breaker.probe_at.store(0, Ordering::Release);
        drop(breaker.allow().expect("a probe"));
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker.probe_at.store(0, Ordering::Release);
        assert!(breaker.allow().is_some(), "probing resumes after a cancelled probe");
    }

    #[test]
    fn a_probe_that_never_reports_does_not_keep_the_breaker_half_open() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            fail(&breaker);
        }
        breaker.probe_at.store(0, Ordering::Release);
        let lost = breaker.allow().expect("a probe");
        assert!(breaker.allow().is_none(), "one probe at a time");
        // The probe's task is starved: it neither reports nor is dropped.
        breaker.probe_lost_at.store(0, Ordering::Release);
        let probe = breaker.allow().expect("another probe once the first is presumed lost");
        probe.record(true, &"test");
        assert_eq!(breaker.state(), BreakerState::Closed);
        std::mem::forget(lost);
    }
}
