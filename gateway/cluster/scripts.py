"""The Lua scripts that make each coordination step one atomic Redis round trip.

Scripts run with EVALSHA; a ``NOSCRIPT`` reply (Redis restarted, failed over, or someone
ran ``SCRIPT FLUSH``) is answered by one EVAL of the source, which also reloads it.
Every key a script touches is passed in KEYS and shares the call's hash tag.

Replies (Lua tables arrive as lists):

* decide -> ``[b"cache", entry]`` | ``[b"stale", entry]`` | ``[b"stale_lead", entry, token]``
  | ``[b"follow", holder_token, lease_pttl_ms]`` | ``[b"lead", token]``
* poll -> ``[b"result", envelope]`` or any decide reply
* complete -> 1 if the lease was still ours and got released, else 0
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


# decide(lease, cache, want_cache, stale_ms, token, lease_ms). The cache is consulted only
# for cache-mode methods. A stale entry is always served at once; the caller that also wins
# the lease refreshes it in the background, so one refresh runs per stale period.
_DECIDE_FN = """
local function decide(lease, cache, want_cache, stale_ms, token, lease_ms)
  if want_cache == '1' then
    local entry = redis.call('GET', cache)
    if entry then
      local left = redis.call('PTTL', cache)
      if left < 0 or left > tonumber(stale_ms) then
        return {'cache', entry}
      end
      if redis.call('SET', lease, token, 'NX', 'PX', lease_ms) then
        return {'stale_lead', entry, token}
      end
      return {'stale', entry}
    end
  end
  local holder = redis.call('GET', lease)
  if holder then
    return {'follow', holder, redis.call('PTTL', lease)}
  end
  redis.call('SET', lease, token, 'PX', lease_ms)
  return {'lead', token}
end
"""

# KEYS: lease, cache. ARGV: want_cache, stale_ms, new_token, lease_ms.
DECIDE = Script("decide", _DECIDE_FN + "return decide(KEYS[1], KEYS[2], unpack(ARGV))\n")

# KEYS: lease, cache, result:<followed token>. ARGV as decide. A follower whose wait ran
# out checks for its leader's result and, only if there is none, decides again (it may
# take the lease over) - in the same round trip.
POLL = Script(
    "poll",
    _DECIDE_FN
    + """
local r = redis.call('GET', KEYS[3])
if r then return {'result', r} end
return decide(KEYS[1], KEYS[2], unpack(ARGV))
""",
)

# KEYS: lease, result:<token>, cache. ARGV: token, envelope, handoff_ms, cache_ms (0: do
# not cache), done channel, inline ('1': the message carries the envelope).
# The result is written before the lease goes, so a node that still saw the lease (and
# follows this token) always finds the result; the lease is deleted only if it is still
# ours, since an expired lease may already belong to a node that took over.
COMPLETE = Script(
    "complete",
    """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[4])
end
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
local message = ARGV[1]
if ARGV[6] == '1' then message = message .. '\\n' .. ARGV[2] end
redis.call('PUBLISH', ARGV[5], message)
return released
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
