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

/// Lua: `record(set, member, lifetime, ceiling, now)` records `member` in the
/// tag set `set`, scored by when its entry expires at the latest (`now +
/// lifetime`, on the server's clock); prunes the members whose entries must be
/// gone; keeps the set as long as its longest-lived member, at most `ceiling`.
/// `now_ms()` is the server's clock in milliseconds. Shared by [`REGISTER`] and
/// [`ACQUIRE_LEASE`], so a record means the same whichever script makes it.
const RECORD: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function record(set, member, lifetime, ceiling, now)
  redis.call('ZADD', set, 'GT', now + lifetime, member)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', '(' .. now)
  local keep = math.min(lifetime, ceiling)
  if redis.call('PTTL', set) < keep then
    redis.call('PEXPIRE', set, keep)
  end
end
";

/// KEYS: lease, entry, then the entry's tag sets (on a single node only: they
/// live in other slots). ARGV: token, ttl ms, `1` to steal, member lifetime
/// ms, ceiling ms.
/// Takes the lease if it is free (also when `token` already holds it: a
/// re-sent request), or always when stealing, records the entry in each tag
/// set given, and returns `{1, entry}` — the entry as it is now, or false
/// (`{1}` when stealing) — else `0`.
pub(crate) static ACQUIRE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RECORD}{}",
        r"
local steal = ARGV[3] == '1'
local holder = redis.call('GET', KEYS[1])
if not steal and holder and holder ~= ARGV[1] then
  return 0
end
if steal or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if #KEYS > 2 then
  local now = now_ms()
  for i = 3, #KEYS do
    record(KEYS[i], KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), now)
  end
end
if steal then
  return {1}
end
return {1, redis.call('GET', KEYS[2])}
"
    ))
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

/// KEYS: entry, lease. ARGV: channel. Removes both and announces the entry
/// (tiered stores drop their copies, waiters look again); returns 1 if the
/// entry existed.
pub(crate) static INVALIDATE_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.pcall('PUBLISH', ARGV[1], KEYS[1])
return removed
",
    )
});

/// KEYS: the keys to delete. ARGV: channel. Deletes them and announces them
/// (one message, a JSON array); returns how many existed.
pub(crate) static DELETE_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('DEL', unpack(KEYS))
redis.pcall('PUBLISH', ARGV[1], cjson.encode(KEYS))
return removed
",
    )
});

/// KEYS: key. ARGV: value, ttl ms, channel. `SET … PX` and announces the key,
/// so tiered stores drop their copies of what it held.
///
/// Sent as `EVAL` with its text: a `SET` is one round trip, also the first one
/// on a connection (no `NOSCRIPT` and load first), which on a distant server
/// would not fit in one operation's timeout.
pub(crate) const SET_ANNOUNCED: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.pcall('PUBLISH', ARGV[3], KEYS[1])
return 1
";

/// KEYS: `n` entries, their `n` leases in the same order (all in one hash
/// slot). ARGV: `n`, channel. Removes the entries and their leases (revoking
/// computations in flight) and announces the entries (one message, a JSON
/// array); returns how many entries existed. Only deletes: a tag's detached
/// set is left as it is, and deleted whole once every batch of it has run.
pub(crate) static INVALIDATE_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(ARGV[1])
local removed = redis.call('DEL', unpack(KEYS, 1, n))
redis.call('DEL', unpack(KEYS, n + 1, 2 * n))
redis.pcall('PUBLISH', ARGV[2], cjson.encode({unpack(KEYS, 1, n)}))
return removed
",
    )
});

/// KEYS: `n` entries, their `n` leases in the same order. ARGV: `n`, the
/// entries' magic byte, the offset of their fresh-until stamp, channel, the
/// format bytes of plain entries (whose stamp may be changed in place).
/// Soft invalidation: zeroes each entry's fresh-until stamp, so it is stale at
/// once (value and TTL kept: served within its `stale` window while one caller
/// refreshes it); a key that is not a plain entry (a signed or sealed one, whose
/// stamp only its keys could rewrite) is deleted. Revokes the leases
/// (computations in flight store nothing) and announces the entries. Returns
/// how many entries existed.
pub(crate) static EXPIRE_BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = tonumber(ARGV[1])
local magic = tonumber(ARGV[2])
local at = tonumber(ARGV[3])
local zeros = string.rep('\0', 8)
local found = 0
for i = 1, n do
  local head = redis.call('GETRANGE', KEYS[i], 0, 1)
  if head ~= '' then
    found = found + 1
    if string.byte(head, 1) == magic and #head == 2 and string.find(ARGV[5], string.sub(head, 2, 2), 1, true) then
      redis.call('SETRANGE', KEYS[i], at, zeros)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
redis.call('DEL', unpack(KEYS, n + 1, 2 * n))
redis.pcall('PUBLISH', ARGV[4], cjson.encode({unpack(KEYS, 1, n)}))
return found
",
    )
});

/// KEYS: tag set. ARGV: entry, member lifetime ms, ceiling ms.
/// Records the entry in the set (see [`RECORD`]).
pub(crate) static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{RECORD}{}",
        r"
record(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), now_ms())
return 1
"
    ))
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

/// KEYS: a detached tag set, the tag's pending list. Deletes the set, whose
/// members' entries and leases are all gone, and drops it from the list.
/// `UNLINK`, not `DEL`: freeing a set of 100,000 members took Redis 36–64 ms
/// on the benchmark's busy machine; `UNLINK` frees it on a background thread.
pub(crate) static FINISH_DETACHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('UNLINK', KEYS[1])
return redis.call('SREM', KEYS[2], KEYS[1])
",
    )
});
