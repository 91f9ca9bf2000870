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

/// KEYS: tag set. ARGV: entry, lifetime ms, horizon ms.
/// Scores are the time of each member's latest registration on the tag node's
/// clock; they only drive pruning.
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[3])))
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
",
    )
});

/// KEYS: tag set, a private key in its slot. ARGV: ttl ms for the private key.
/// Moves every member registered so far to the private key in one step: they are
/// what this invalidation removes, while later registrations start a new set.
pub(crate) static DETACH_TAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 1
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
",
    )
});
