//! Stampede protection: one computation per cold key across every task and
//! process, and the lease that lets invalidation revoke it.
//!
//! # The protocol, for one entry key `E`
//!
//! 1. **In process**, concurrent callers of `E` share one [flight]: one
//!    of them leads, the others wait for it to land. A leader that computed
//!    hands its value to the followers that called before its computation
//!    started; the others read the store.
//! 2. The leader takes the [lease] (`{E}:lease`, set only if free,
//!    expiring after `lock_ttl`) and records `E` in each of its tag sets, then
//!    computes. On a single node both are one script; on a cluster, where tag
//!    sets live in other slots, the records follow the lease (in parallel, one
//!    round trip). A tag invalidation detaches the whole tag set in one
//!    step and removes every member's entry together with its lease. One that
//!    detaches before the record cannot see the lease, but the computation has
//!    not started yet; one that detaches after it revokes the lease. On a
//!    single node an invalidation that revokes the lease before the leader has
//!    its answer makes the answer "busy"; on a cluster one that revokes it
//!    between the lease's answer and the records' lets the computation run,
//!    and its store is refused. (Recording *before* taking the lease — or
//!    beside it, in parallel — would be wrong: an invalidation could carry the
//!    record away and remove the entry before the lease is taken; the
//!    computation would then store an entry that no tag set names.)
//! 3. With the lease it computes, renewing the lease (and its tag records)
//!    every third of `lock_ttl`, then stores with one atomic step that writes
//!    only if its token still holds the lease, frees the lease and announces
//!    the store. An invalidation in between removed the lease: the store is
//!    refused, so no value computed before an invalidation outlives it.
//! 4. A leader that does not store — its result is not cacheable, its store
//!    failed, or its caller was **cancelled** (the future dropped) — frees the
//!    lease (compare-and-delete on its token, from a task that outlives the
//!    dropped future) and announces it, so a waiter takes over at once. A leader
//!    whose **process died** stops renewing: its lease expires within
//!    `lock_ttl` (3 s by default) and a waiter, re-checking every
//!    [`FALLBACK_RECHECK`], takes over.
//! 5. Without the lease a caller waits: woken by the store or release
//!    announcement (Redis pub/sub, one subscriber per cache), re-checking every
//!    [`FALLBACK_RECHECK`] in case one was lost. When the lease is gone without a
//!    value a waiter takes the lease itself. When the store fails it computes at
//!    once (fail-open). After `wait` it gives up and computes without storing;
//!    the callers of one process that give up share one such computation.

pub(crate) mod flight;
pub(crate) mod lease;
pub(crate) mod waiters;

use std::time::Duration;

/// How often a waiter re-checks the store when no announcement arrives.
pub(crate) const FALLBACK_RECHECK: Duration = Duration::from_millis(500);

/// How long a refresh of a stale entry that failed keeps the lease, so the
/// callers that follow take the stale value at once instead of each trying
/// again and paying the failure's latency.
pub(crate) const REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// A wait for another caller ran out (`wait`).
#[derive(Debug)]
pub(crate) struct WaitTimeout;
