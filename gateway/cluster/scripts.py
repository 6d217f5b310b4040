"""The Lua scripts that make each coordination step one atomic Redis round trip.

Scripts run with EVALSHA; a ``NOSCRIPT`` reply (Redis restarted, failed over, or someone
ran ``SCRIPT FLUSH``) is answered by one EVAL of the source, which also reloads it.
Every key a script touches is passed in KEYS and shares the call's hash tag (its bucket).

Replies (Lua tables arrive as lists):

* decide (batched: one reply per item) -> ``[b"cache", entry]`` | ``[b"stale", entry]``
  | ``[b"stale_lead", entry, token, fence]`` | ``[b"follow", holder_token, lease_pttl_ms]``
  | ``[b"lead", token, fence]``
* poll -> ``[b"result", envelope]`` or any decide reply
* complete (batched: one reply per item) -> 1 if the lease was still ours (cache written,
  lease released), else 0
* renew -> 1 if the lease was still ours and got extended, else 0
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from gateway.redis.connection import Arg, RedisCommandError, RedisCommands, Reply


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Redis names scripts by their SHA-1; nothing here relies on it being collision-proof.
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


# The decide function, shared by DECIDE and POLL. KEYS (all of one bucket): lease, cache,
# fence, inflight (the bucket's index), flight (this call's entry in it). ARGV: want_cache,
# stale_ms, new token, lease_ms, fence_ms, the call key, this node's id, and whether a
# "follow" answer counts this node as a follower of the call ('1' for decide, '0' for the
# re-decisions of a poll, which must not count a node twice), then (poll only) the token
# followed so far: a poll that finds another holder counts as a new follower of that one.
#
# The cache is consulted only for cache-mode methods. A stale entry is always served at
# once; the caller that also wins the lease refreshes it in the background, so one refresh
# runs per stale period. Every lease granted takes the next fencing number of the key
# (INCR): it orders the leaderships of one key and travels in the leader's envelopes. It
# also enters the call in the bucket's in-flight index (scored by Redis's clock, so ages
# need no synchronised node clocks), with a flight hash that lives exactly as long as the
# lease (HSET sets every field, so a dead leader's hash needs no DEL first). Redis's clock
# is read once per script call, and index entries a dead leader left behind (older than an
# hour) are trimmed from the first index granted in a call: with batching, once per batch,
# not per flight (the buckets of a herd are random, so every index is trimmed in turn).
#
# The flight hash counts the nodes following the leader: complete() writes the result for
# followers and publishes the notice only where one waits.
_DECIDE_FN = """
local now
local trimmed = false
local function grant(k, a, taken)
  if not taken then
    redis.call('SET', k[1], a[3], 'PX', a[4])
  end
  local number = redis.call('INCR', k[3])
  redis.call('PEXPIRE', k[3], a[5])
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  redis.call('ZADD', k[4], now, a[6])
  if not trimmed then
    trimmed = true
    redis.call('ZREMRANGEBYSCORE', k[4], '-inf', now - 3600)
  end
  redis.call('HSET', k[5], 'node', a[7], 'token', a[3], 'fence', number, 'followers', 0)
  redis.call('PEXPIRE', k[5], a[4])
  return number
end
local function decide(k, a)
  if a[1] == '1' then
    local entry = redis.call('GET', k[2])
    if entry then
      local left = redis.call('PTTL', k[2])
      if left < 0 or left > tonumber(a[2]) then
        return {'cache', entry}
      end
      if redis.call('EXISTS', k[1]) == 0 then
        return {'stale_lead', entry, a[3], grant(k, a)}
      end
      return {'stale', entry}
    end
  end
  -- Take a free lease in one command; only if it is held, read who holds it.
  if redis.call('SET', k[1], a[3], 'PX', a[4], 'NX') then
    return {'lead', a[3], grant(k, a, true)}
  end
  local holder = redis.call('GET', k[1])
  if holder then
    if (a[8] == '1' or (a[10] ~= nil and a[10] ~= holder)) then
      if redis.call('EXISTS', k[5]) == 1 then
        redis.call('HINCRBY', k[5], 'followers', 1)
      end
    end
    return {'follow', holder, redis.call('PTTL', k[1])}
  end
  return {'lead', a[3], grant(k, a)}  -- expired between the two commands: cannot happen
end
"""

# Runs FN over a batch (batch.py): ARGV[1] keys and ARGV[2] args per item, then the items'
# KEYS and ARGV back to back; one reply per item.
_BATCH = """
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 0, #KEYS / nk - 1 do
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[i * nk + j] end
  for j = 1, na do a[j] = ARGV[2 + i * na + j] end
  out[i + 1] = FN(k, a)
end
return out
"""

DECIDE = Script("decide", _DECIDE_FN + _BATCH.replace("FN", "decide"))
DECIDE_KEYS, DECIDE_ARGS = 5, 8

# KEYS as decide, then result:<followed token>. ARGV as decide, then the followed token if
# its session has ended ('' otherwise), then the followed token. A follower whose wait ran
# out checks for its leader's result and, only if there is none, decides again - in the
# same round trip. A lease still held by a leader whose session ended is freed first (only
# if it is still exactly that leader's), so this follower may take it over at once instead
# of after lease_ttl.
POLL = Script(
    "poll",
    _DECIDE_FN
    + """
local r = redis.call('GET', KEYS[6])
if r then return {'result', r} end
if ARGV[9] ~= '' and redis.call('GET', KEYS[1]) == ARGV[9] then
  redis.call('DEL', KEYS[1])
end
return decide(KEYS, ARGV)
""",
)

# KEYS: lease, result:<token>, cache, done channel, inflight, flight. ARGV: token, envelope,
# handoff_ms, cache_ms (0: do not cache), call key, inline ('1': the notice carries the
# envelope). The cache entry is written, the lease released and the call taken out of the
# in-flight index only while the lease is still ours - checked here, atomically: a leader
# that lost its lease (paused past it, taken over) still hands its result to its own
# followers but can never overwrite what a newer leader cached. The result (for a node that
# still saw the lease and follows this token) and the notice are written only where a
# follower may wait: always for a deposed leader (its flight hash may be a newer leader's),
# else when the flight hash counts followers, or is gone (so none could be counted). A
# flight without followers - a distinct key - costs no result key and no PUBLISH, which
# would be sent to every node's subscription. The notice is
# "<token> <byte length of key> <key>[<envelope>]".
_COMPLETE_FN = """
local function complete(k, a)
  local ours = redis.call('GET', k[1]) == a[1]
  local share = true
  if ours then
    share = redis.call('HGET', k[6], 'followers') ~= '0'
    if tonumber(a[4]) > 0 then
      redis.call('SET', k[3], a[2], 'PX', a[4])
    end
    redis.call('DEL', k[1], k[6])
    redis.call('ZREM', k[5], a[5])
  end
  if share then
    redis.call('SET', k[2], a[2], 'PX', a[3])
    local notice = a[1] .. ' ' .. #a[5] .. ' ' .. a[5]
    if a[6] == '1' then notice = notice .. a[2] end
    redis.call('PUBLISH', k[4], notice)
  end
  if ours then return 1 end
  return 0
end
"""
COMPLETE = Script("complete", _COMPLETE_FN + _BATCH.replace("FN", "complete"))
COMPLETE_KEYS, COMPLETE_ARGS = 6, 6

# KEYS: lease, flight. ARGV: token, lease_ms. Compare-then-extend: never extend someone
# else's lease; the call's in-flight entry lives as long as its lease.
RENEW = Script(
    "renew",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)


# KEYS: cache. ARGV: the entry a node could not use (bad signature or malformed).
# Compare-and-delete: an entry somebody rewrote meanwhile is left alone.
DROP = Script(
    "drop",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)


# KEYS: the session keys a follower's node watches; ARGV: their "alive" channels. One
# liveness reading of every watched session per check, in one round trip: the replies of
# PTTL, GET (the renewing client id) and PUBSUB NUMSUB, interleaved per session as if each
# had been sent on its own.
SESSIONS = Script(
    "sessions",
    """
local counts = redis.call('PUBSUB', 'NUMSUB', unpack(ARGV))
local out = {}
for i, key in ipairs(KEYS) do
  out[3 * i - 2] = redis.call('PTTL', key)
  out[3 * i - 1] = redis.call('GET', key)
  out[3 * i] = {counts[2 * i - 1], counts[2 * i]}
end
return out
""",
)


ALL = (DECIDE, POLL, COMPLETE, RENEW, DROP, SESSIONS)


class ScriptRunner:
    """Runs :class:`Script` objects on one connection, reloading them after ``NOSCRIPT``."""

    def __init__(self, redis: RedisCommands) -> None:
        self._redis = redis
        self.reloads = 0

    def preload(self, scripts: Sequence[Script] = ()) -> Deferred[None]:
        """SCRIPT LOAD ``scripts`` (default: all) so first calls skip the NOSCRIPT detour.

        Best effort: a failure is ignored, EVALSHA's NOSCRIPT handling covers it.
        """
        sent = [self._redis.execute("SCRIPT", "LOAD", s.source) for s in scripts or ALL]
        return gatherResults(sent, consumeErrors=True).addBoth(lambda _: None)

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Deferred[Reply]:
        d = self._redis.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        return d.addErrback(self._reload, script, keys, args)

    def _reload(
        self, failure: Failure, script: Script, keys: Sequence[str], args: Sequence[Arg]
    ) -> Deferred[Reply]:
        exc = failure.value
        if not (isinstance(exc, RedisCommandError) and str(exc).startswith("NOSCRIPT")):
            failure.raiseException()
        self.reloads += 1
        # EVAL both runs and caches the script, so the next EVALSHA finds it again.
        return self._redis.execute("EVAL", script.source, len(keys), *keys, *args)
