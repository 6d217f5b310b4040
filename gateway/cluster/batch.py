"""One EVALSHA per reactor turn (per slot in a Redis Cluster) for the flights' script steps.

A herd of distinct keys starts many flights in one reactor turn (one read of many client
sockets). Sent one by one, each flight's ``decide`` is its own EVALSHA: Redis parses,
looks up and sets up a script call per flight, and that per-call overhead - not the few
key operations inside - is most of its CPU per flight. :class:`ScriptBatcher` queues the
steps a turn asks for and, at the end of the turn (``callLater(0)``), sends each script's
queue as one call of its batched form (``BatchedScript``: the items' KEYS and ARGV
concatenated, one reply per item). Twisted already writes everything a turn sends on a
connection in one ``send``; this also makes it one command. The followers' result GETs of
one turn go out the same way, as one MGET.

On one Redis (or a Sentinel-managed one) a batch may hold any keys. In a Redis Cluster a
script may only touch one slot, so the queue is split by the call's hash tag (its bucket,
``{b}``): one batch per slot, routed like any script by its first key. A batch holds at
most ``max_batch`` items, so one script never blocks Redis for long.

A failed batch fails each of its items with the same error (the caller of each step
handles it as before: Redis trouble means falling back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.cluster.decision import UnexpectedReply
from gateway.cluster.scripts import Script, ScriptRunner
from gateway.reactors import DelayedCall, as_clock
from gateway.redis.connection import Arg, RedisCommands, Reply

MAX_BATCH = 128


@dataclass(frozen=True)
class BatchedScript:
    """A script whose items take ``nkeys`` KEYS and ``nargs`` ARGV each (see scripts.py)."""

    script: Script
    nkeys: int
    nargs: int


@dataclass
class _Item:
    keys: Sequence[str]
    args: Sequence[Arg]
    done: Deferred[Reply]


def hash_tag(key: str) -> str:
    """The ``{...}`` part of a key (its slot in a Redis Cluster), or the key itself."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if 0 <= start < end - 1 else key


class ScriptBatcher:
    """Queues batched-script items for the end of the reactor turn (see the module doc)."""

    def __init__(
        self,
        redis: RedisCommands,
        scripts: ScriptRunner,
        clock: IReactorTime,
        *,
        per_slot: bool,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._clock = as_clock(clock)
        self._per_slot = per_slot
        self._max = max(1, max_batch)
        self._queues: dict[tuple[BatchedScript | None, str], list[_Item]] = {}  # None: GET
        self._timer: DelayedCall | None = None
        self.batches = 0  # EVALSHAs and MGETs sent (one per batch)
        self.items = 0  # steps sent in them

    def run(
        self, batched: BatchedScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> Deferred[Reply]:
        """Fires with this item's reply once its batch is answered."""
        if len(keys) != batched.nkeys or len(args) != batched.nargs:
            raise ValueError(f"{batched.script.name}: item of the wrong shape")
        return self._queue(batched, keys, args)

    def get(self, key: str) -> Deferred[Reply]:
        """GET ``key``, as part of this turn's MGET."""
        return self._queue(None, [key], ())

    def _queue(
        self, batched: BatchedScript | None, keys: Sequence[str], args: Sequence[Arg]
    ) -> Deferred[Reply]:
        group = hash_tag(keys[0]) if self._per_slot else ""
        done: Deferred[Reply] = Deferred()
        queue = self._queues.setdefault((batched, group), [])
        queue.append(_Item(keys, args, done))
        if len(queue) >= self._max:
            del self._queues[(batched, group)]
            self._send(batched, queue)
        elif self._timer is None:
            self._timer = self._clock.callLater(0, self._flush)
        return done

    def _flush(self) -> None:
        self._timer = None
        queues, self._queues = self._queues, {}
        for (batched, _), items in queues.items():
            self._send(batched, items)

    def _send(self, batched: BatchedScript | None, items: list[_Item]) -> None:
        keys = [key for item in items for key in item.keys]
        self.batches += 1
        self.items += len(items)
        if batched is None:
            d = self._redis.execute("MGET", *keys)
        else:
            args: list[Arg] = [batched.nkeys, batched.nargs]
            args.extend(arg for item in items for arg in item.args)
            d = self._scripts.run(batched.script, keys, args)
        d.addCallbacks(_deliver, _fail_all, callbackArgs=(items,), errbackArgs=(items,))


def _deliver(reply: Reply, items: list[_Item]) -> None:
    if not isinstance(reply, list) or len(reply) != len(items):
        unexpected = UnexpectedReply(f"unexpected batch reply {reply!r:.80}")
        _fail_all(Failure(unexpected), items)  # type: ignore[no-untyped-call]  # Twisted's
        return
    for item, one in zip(items, reply, strict=True):
        if not item.done.called:  # a caller may have cancelled its step (a drain)
            item.done.callback(one)


def _fail_all(failure: Failure, items: list[_Item]) -> None:
    for item in items:
        if not item.done.called:
            item.done.errback(failure)
