"""Cost of the coalescing primitives: time per call and memory per waiting caller.

    python -m benchmarks.primitives          # a markdown table
    python -m benchmarks.primitives --json   # one JSON object

Timings are the best of several rounds (least disturbed by the rest of the machine). fn
returns an unfired Deferred that the benchmark then fires, as a backend call would.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import twisted
from twisted.internet.defer import Deferred

from benchmarks.common import markdown_table
from gateway.primitives.asyncdict import DeferredDict
from gateway.primitives.coalescer import Coalescer
from gateway.primitives.pool import DeferredPool

CALLS = 20_000  # operations per timing round
ROUNDS = 7
JOINERS = 1_000  # callers joining one in-flight call, per round of the joined-caller case
WAITERS = 10_000  # waiting callers measured with tracemalloc


def _noop(result: object) -> None:
    return None


class _Backend:
    """fn for the benchmarks: hands out an unfired Deferred and remembers it for firing."""

    def __init__(self) -> None:
        self.last: Deferred[int] = Deferred()

    def __call__(self) -> Deferred[int]:
        self.last = Deferred()
        return self.last


def _best_us_per_op(run: Callable[[], int]) -> float:
    """Best time per operation over ROUNDS runs of ``run`` (which returns its op count)."""
    best = float("inf")
    gc.collect()
    gc.disable()  # collections would land in random rounds and blur the comparison
    try:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            ops = run()
            best = min(best, (time.perf_counter() - start) / ops)
    finally:
        gc.enable()
    return best * 1e6


def bench_direct() -> float:
    """Call fn directly, add the caller's callback and fire fn's Deferred."""
    fn = _Backend()

    def run() -> int:
        for i in range(CALLS):
            fn().addBoth(_noop)
            fn.last.callback(i)
        return CALLS

    return _best_us_per_op(run)


def bench_coalescer_call() -> float:
    """Coalescer.call with nothing in flight (starts fn), caller's callback, fire fn's Deferred."""
    fn = _Backend()
    coalescer: Coalescer[str, int] = Coalescer()

    def run() -> int:
        for i in range(CALLS):
            coalescer.call("key", fn).addBoth(_noop)
            fn.last.callback(i)
        return CALLS

    return _best_us_per_op(run)


def bench_coalescer_joined() -> float:
    """Cost of one more caller joining an in-flight call, including delivering its result."""
    fn = _Backend()
    coalescer: Coalescer[str, int] = Coalescer()
    rounds = max(1, CALLS // JOINERS)
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(ROUNDS):
            elapsed = 0.0
            for i in range(rounds):
                coalescer.call("key", fn).addBoth(_noop)  # the starting call: not timed
                start = time.perf_counter()
                for _ in range(JOINERS):
                    coalescer.call("key", fn).addBoth(_noop)
                fn.last.callback(i)
                elapsed += time.perf_counter() - start
            best = min(best, elapsed / (rounds * JOINERS))
    finally:
        gc.enable()
    return best * 1e6


def bench_pool_add() -> float:
    """DeferredPool.add of an unfired Deferred, then firing it (pool empties every time)."""
    pool = DeferredPool()

    def run() -> int:
        for i in range(CALLS):
            d: Deferred[int] = Deferred()
            pool.add(d)
            d.callback(i)
        return CALLS

    return _best_us_per_op(run)


def bench_dict_wait_then_set() -> float:
    """DeferredDict.get of a missing key (keep_values=False), then set() waking it."""
    dd: DeferredDict[int, int] = DeferredDict(keep_values=False)

    def run() -> int:
        for i in range(CALLS):
            dd.get(i).addBoth(_noop)
            dd.set(i, i)
        return CALLS

    return _best_us_per_op(run)


def _bytes_per(make_waiter: Callable[[], Any], count: int) -> float:
    """Bytes traced while ``count`` waiters are alive, per waiter."""
    keep: list[Any] = [None] * count  # allocated up front so it is not measured
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            keep[i] = make_waiter()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count


def mem_coalescer_waiter() -> float:
    """Bytes per caller waiting on one in-flight key (its Deferred plus the pool's slot)."""
    fn = _Backend()
    coalescer: Coalescer[str, int] = Coalescer()
    coalescer.call("key", fn)
    per_waiter = _bytes_per(lambda: coalescer.call("key", fn), WAITERS)
    fn.last.callback(0)
    return per_waiter


def mem_plain_deferred() -> float:
    """Bytes per bare unfired Deferred, the floor for any waiting caller."""
    return _bytes_per(Deferred, WAITERS)


def mem_dict_waiter() -> float:
    """Bytes per DeferredDict.get waiter on one missing key."""
    dd: DeferredDict[str, int] = DeferredDict()
    per_waiter = _bytes_per(lambda: dd.get("key"), WAITERS)
    dd.set("key", 0)
    return per_waiter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.primitives", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    # One discarded pass first: the first loop to run otherwise pays for warming caches.
    bench_direct()
    bench_coalescer_call()
    direct = bench_direct()
    call = bench_coalescer_call()
    timings = {
        "direct_fn_us": direct,
        "coalescer_call_us": call,
        "coalescer_call_overhead_us": call - direct,
        "coalescer_joined_caller_us": bench_coalescer_joined(),
        "pool_add_fire_us": bench_pool_add(),
        "asyncdict_get_set_us": bench_dict_wait_then_set(),
    }
    memory = {
        "plain_deferred_bytes": mem_plain_deferred(),
        "coalescer_waiter_bytes": mem_coalescer_waiter(),
        "asyncdict_waiter_bytes": mem_dict_waiter(),
    }
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "calls_per_round": CALLS,
        "rounds": ROUNDS,
        "waiters": WAITERS,
        **{k: round(v, 3) for k, v in timings.items()},
        **{k: round(v, 1) for k, v in memory.items()},
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0

    print(render(result), flush=True)
    return 0


def render(result: dict[str, Any]) -> str:
    """The markdown table of a ``--json`` result (also what ``run`` copies into results.md)."""
    waiters = result["waiters"]
    rows = [
        ("fn() directly + fire", "direct_fn_us", "µs/call"),
        ("Coalescer.call (starts fn) + fire", "coalescer_call_us", "µs/call"),
        ("  overhead vs direct", "coalescer_call_overhead_us", "µs/call"),
        ("Coalescer.call joining an in-flight call", "coalescer_joined_caller_us", "µs/caller"),
        ("DeferredPool.add + fire", "pool_add_fire_us", "µs/op"),
        ("DeferredDict.get (waits) + set", "asyncdict_get_set_us", "µs/op"),
        ("bare unfired Deferred", "plain_deferred_bytes", "bytes"),
        (f"Coalescer waiter ({waiters} on one key)", "coalescer_waiter_bytes", "bytes"),
        (f"DeferredDict waiter ({waiters} on one key)", "asyncdict_waiter_bytes", "bytes"),
    ]
    table = markdown_table(
        ["operation", "value", "unit"], [[name, result[key], unit] for name, key, unit in rows]
    )
    command = result.get("command", "python -m benchmarks.primitives")
    return "\n".join(
        [
            f"Produced by `{command}` (Python {result['python']}, Twisted {result['twisted']}):"
            f" in-process, no sockets; times are the best of {result['rounds']} rounds of"
            f" {result['calls_per_round']:,} operations, memory from tracemalloc.",
            "",
            table,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
