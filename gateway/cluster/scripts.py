"""The Lua scripts that make each coordination step one atomic Redis round trip.

Scripts run with EVALSHA; a ``NOSCRIPT`` reply (Redis restarted, failed over, or someone
ran ``SCRIPT FLUSH``) is answered by one EVAL of the source, which also reloads it.
Every key a script touches is passed in KEYS and shares the call's hash tag (its bucket).

Replies (Lua tables arrive as lists):

* decide -> ``[b"cache", entry]`` | ``[b"stale", entry]``
  | ``[b"stale_lead", entry, token, fence]`` | ``[b"follow", holder_token, lease_pttl_ms]``
  | ``[b"lead", token, fence]``
* poll -> ``[b"result", envelope]`` or any decide reply
* complete -> 1 if the lease was still ours (cache written, lease released), else 0
* renew -> 1 if the lease was still ours and got extended, else 0
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from gateway.cluster.connection import Arg, RedisCommandError, RedisCommands, Reply


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Redis names scripts by their SHA-1; nothing here relies on it being collision-proof.
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


# decide(lease, cache, fence, want_cache, stale_ms, token, lease_ms, fence_ms). The cache is
# consulted only for cache-mode methods. A stale entry is always served at once; the caller
# that also wins the lease refreshes it in the background, so one refresh runs per stale
# period. Every lease granted takes the next fencing number of the key (INCR): it orders the
# leaderships of one key and travels in the leader's envelopes.
_DECIDE_FN = """
local function grant(lease, fence, token, lease_ms, fence_ms)
  redis.call('SET', lease, token, 'PX', lease_ms)
  local number = redis.call('INCR', fence)
  redis.call('PEXPIRE', fence, fence_ms)
  return number
end
local function decide(lease, cache, fence, want_cache, stale_ms, token, lease_ms, fence_ms)
  if want_cache == '1' then
    local entry = redis.call('GET', cache)
    if entry then
      local left = redis.call('PTTL', cache)
      if left < 0 or left > tonumber(stale_ms) then
        return {'cache', entry}
      end
      if redis.call('EXISTS', lease) == 0 then
        return {'stale_lead', entry, token, grant(lease, fence, token, lease_ms, fence_ms)}
      end
      return {'stale', entry}
    end
  end
  local holder = redis.call('GET', lease)
  if holder then
    return {'follow', holder, redis.call('PTTL', lease)}
  end
  return {'lead', token, grant(lease, fence, token, lease_ms, fence_ms)}
end
"""

# KEYS: lease, cache, fence. ARGV: want_cache, stale_ms, new_token, lease_ms, fence_ms.
DECIDE = Script("decide", _DECIDE_FN + "return decide(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV))\n")

# KEYS: lease, cache, fence, result:<followed token>. ARGV as decide, then the followed
# token if its session has ended ('' otherwise). A follower whose wait ran out checks for its
# leader's result and, only if there is none, decides again - in the same round trip. A lease
# still held by a leader whose session ended is freed first (only if it is still exactly
# that leader's), so this follower may take it over at once instead of after lease_ttl.
POLL = Script(
    "poll",
    _DECIDE_FN
    + """
local r = redis.call('GET', KEYS[4])
if r then return {'result', r} end
if ARGV[6] ~= '' and redis.call('GET', KEYS[1]) == ARGV[6] then
  redis.call('DEL', KEYS[1])
end
return decide(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
""",
)

# KEYS: lease, result:<token>, cache, done channel. ARGV: token, envelope, handoff_ms,
# cache_ms (0: do not cache), call key, inline ('1': the notice carries the envelope).
# The result is written first, so a node that still saw the lease (and follows this token)
# always finds it. The cache entry is written, and the lease released, only while the lease
# is still ours - checked here, atomically: a leader that lost its lease (paused past it,
# taken over) still hands its result to its own followers but can never overwrite what a
# newer leader cached. The notice is "<token> <byte length of key> <key>[<envelope>]".
COMPLETE = Script(
    "complete",
    """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4])
  end
  redis.call('DEL', KEYS[1])
end
local notice = ARGV[1] .. ' ' .. #ARGV[5] .. ' ' .. ARGV[5]
if ARGV[6] == '1' then notice = notice .. ARGV[2] end
redis.call('PUBLISH', KEYS[4], notice)
if ours then return 1 end
return 0
""",
)

# KEYS: lease. ARGV: token, lease_ms. Compare-then-extend: never extend someone else's lease.
RENEW = Script(
    "renew",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
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


ALL = (DECIDE, POLL, COMPLETE, RENEW, DROP)


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
