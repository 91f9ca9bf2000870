//! The Lua scripts that make multi-step changes atomic. Each touches keys of one
//! hash slot only (an entry and its lease, or one tag set), so they run unchanged
//! on Redis Cluster.
//!
//! Each is also safe to run twice: redis-rs's cluster client re-sends a request
//! whose answer it did not get, and a second run must not undo the first (a
//! second detach must not overwrite the members the first one saved).

use std::sync::LazyLock;

use redis::Script;

/// What a script that writes and then announces returns when the write was
/// done but the announcement refused (`PUBLISH` is sent with `redis.pcall`, so
/// an ACL user without channel rights — Redis 7's default `resetchannels` —
/// never leaves a write half-done or reported as failed).
pub(crate) const DONE_UNANNOUNCED: i64 = 2;

/// KEYS: entry, lease. ARGV: token, value, ttl ms, channel.
/// Stores only while `token` holds the lease; frees it and announces the store.
/// Returns 1 (stored), [`DONE_UNANNOUNCED`] or 0 (not the holder: refused).
pub(crate) static STORE_LEASED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  local sent = redis.pcall('PUBLISH', ARGV[4], KEYS[1])
  if type(sent) == 'table' and sent.err then
    return 2
  end
  return 1
end
return 0
",
    )
});

/// KEYS: lease, entry. ARGV: token, ttl ms. Takes the lease if it is free
/// (also when `token` already holds it: a re-sent request) and returns
/// `{1, entry}` — the entry as it is now, or false — else `0`.
pub(crate) static ACQUIRE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return {1, redis.call('GET', KEYS[2])}
",
    )
});

/// KEYS: lease. ARGV: token, ttl ms. Extends the lease while `token` holds it.
pub(crate) static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS: entry, lease. ARGV: token, channel. Frees the lease while `token`
/// holds it and announces the entry, so its waiters (in every process) look
/// again at once. Returns 1 (freed), [`DONE_UNANNOUNCED`] or 0 (not the holder).
///
/// Sent as `EVAL` with its text, never `EVALSHA`: it is what cleans up after an
/// operation that timed out, and it may reach a server that never loaded it
/// after its caller has gone, when nobody is left to load it and retry.
pub(crate) const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  local sent = redis.pcall('PUBLISH', ARGV[2], KEYS[1])
  if type(sent) == 'table' and sent.err then
    return 2
  end
  return 1
end
return 0
";

/// KEYS: entry, lease. Removes both; returns 1 if the entry existed.
pub(crate) static INVALIDATE_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return removed
",
    )
});

/// KEYS: `n` entries, their `n` leases in the same order, then optionally the
/// detached tag set they were read from and the tag's pending list. ARGV: `n`.
/// Removes the entries and their leases (revoking computations in flight), then
/// drops the entries from the detached set, so that whoever reads the set next
/// finds only members nobody has removed yet, and drops an emptied set from
/// the pending list; returns how many entries existed.
/// All keys share a hash slot: on a cluster the set is left out (it lives in
/// the tag's slot) and its members are dropped once every batch has run.
pub(crate) static INVALIDATE_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(ARGV[1])
local removed = redis.call('DEL', unpack(KEYS, 1, n))
redis.call('DEL', unpack(KEYS, n + 1, 2 * n))
local set = KEYS[2 * n + 1]
if set then
  redis.call('ZREM', set, unpack(KEYS, 1, n))
  local pending = KEYS[2 * n + 2]
  if pending and redis.call('EXISTS', set) == 0 then
    redis.call('SREM', pending, set)
  end
end
return removed
",
    )
});

/// KEYS: tag set. ARGV: entry, member lifetime ms, ceiling ms.
/// Scores are when each member's entry expires at the latest (now + its
/// lifetime, on the tag node's clock): members whose entries must be gone are
/// pruned, and the set lives as long as its longest-lived member, at most the
/// ceiling.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lifetime = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', now + lifetime, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local keep = math.min(lifetime, tonumber(ARGV[3]))
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return 1
",
    )
});

/// KEYS: tag set, the tag's pending list, a private key in its slot.
/// Moves every member registered so far to the private key in one step (it
/// keeps the set's expiry: as long as any member's entry may live) and lists it
/// as pending: those members are what this invalidation removes, while later
/// registrations start a new set. Returns every pending detached set — this
/// one and those of invalidations still running or cut short — for the caller
/// to empty: an interrupted invalidation is finished by the next.
pub(crate) static DETACH_TAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  redis.call('SADD', KEYS[2], KEYS[3])
  local ttl = redis.call('PTTL', KEYS[3])
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return redis.call('SMEMBERS', KEYS[2])
",
    )
});

/// KEYS: a detached tag set, the tag's pending list. Drops the set from the list
/// once it is empty; returns 1 if it did.
pub(crate) static FINISH_DETACHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], KEYS[1])
  return 1
end
return 0
",
    )
});
