"""Coalescer / @coalesced: singleflight semantics for Deferreds."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from deferred_helpers import DeferredSource, results
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure

from gateway.primitives.coalescer import Coalescer, coalesced

pytestmark = pytest.mark.usefixtures("no_unhandled_deferred_errors")


def test_do() -> None:
    """A plain return value reaches the caller and nothing stays in flight."""
    c: Coalescer[str, str] = Coalescer()
    out = results(c.call("key", lambda: "bar"))
    assert out == ["bar"]
    assert c.in_flight == 0


def test_do_deferred() -> None:
    """A Deferred result reaches the caller when fn's Deferred fires."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    out = results(c.call("key", backend))
    assert out == []
    backend.deferreds[0].callback("bar")
    assert out == ["bar"]


def test_do_err() -> None:
    """A failure of fn's Deferred reaches the caller as that failure."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    out = results(c.call("key", backend))
    backend.deferreds[0].errback(ValueError("some error"))
    assert len(out) == 1
    assert isinstance(out[0], Failure)
    assert out[0].check(ValueError)
    assert str(out[0].value) == "some error"


def test_exception_raised_inside_fn() -> None:
    """An exception raised synchronously by fn fails the caller's Deferred instead of raising."""
    c: Coalescer[str, str] = Coalescer()

    def boom() -> str:
        raise KeyError("nope")

    out = results(c.call("key", boom))
    assert out[0].check(KeyError)
    assert c.in_flight == 0


def test_dup_suppress() -> None:
    """Ten concurrent callers with one key cause one fn call and all get its value."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    outs = [results(c.call("key", backend)) for _ in range(10)]
    assert len(backend.args) == 1
    backend.deferreds[0].callback("bar")
    assert outs == [["bar"]] * 10


def test_different_keys_are_not_coalesced() -> None:
    """Calls with different keys each call fn."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    c.call("a", backend)
    c.call("b", backend)
    assert len(backend.args) == 2
    assert c.in_flight == 2


def test_every_caller_gets_its_own_deferred() -> None:
    """Coalesced callers get distinct Deferred objects, not the shared one."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    d1 = c.call("key", backend)
    d2 = c.call("key", backend)
    assert d1 is not d2
    assert backend.deferreds[0] not in (d1, d2)


def test_forget() -> None:
    """After forget(key) the next call starts a new fn call while the old one is in flight."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    first = results(c.call("key", backend))
    c.forget("key")
    second = results(c.call("key", backend))
    assert len(backend.args) == 2
    backend.deferreds[0].callback("old")
    backend.deferreds[1].callback("new")
    assert (first, second) == (["old"], ["new"])


def test_old_call_finishing_after_forget_keeps_new_entry() -> None:
    """A forgotten call that finishes does not unregister the newer call for the same key."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    c.call("key", backend)
    c.forget("key")
    c.call("key", backend)
    backend.deferreds[0].callback("old")
    assert "key" in c
    joined = results(c.call("key", backend))
    assert len(backend.args) == 2
    backend.deferreds[1].callback("new")
    assert joined == ["new"]


def test_reentrant_callback_starts_fresh_call() -> None:
    """A waiter's callback calling again with the same key runs fn again, not the old call."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    again: list[Deferred[str]] = []
    c.call("key", backend).addCallback(lambda _: again.append(c.call("key", backend)))
    backend.deferreds[0].callback("first")
    assert len(backend.args) == 2
    out = results(again[0])
    backend.deferreds[1].callback("second")
    assert out == ["second"]


def test_entry_removed_before_waiters_fire() -> None:
    """When the first waiter's callback runs, the key is no longer in flight."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    seen: list[bool] = []
    c.call("key", backend).addCallback(lambda _: seen.append("key" in c))
    backend.deferreds[0].callback("v")
    assert seen == [False]


def test_available_result_not_pooled() -> None:
    """An already-fired Deferred from fn is not pooled: the next call calls fn again."""
    c: Coalescer[str, int] = Coalescer()
    calls: list[int] = []

    def cached() -> Deferred[int]:
        calls.append(1)
        return succeed(len(calls))

    assert results(c.call("key", cached)) == [1]
    assert c.in_flight == 0
    assert results(c.call("key", cached)) == [2]


def test_paused_deferred_is_pooled() -> None:
    """A called-but-paused Deferred (waiting on an inner one) counts as in flight."""
    c: Coalescer[str, str] = Coalescer()
    inner: Deferred[str] = Deferred()
    outer: Deferred[str] = Deferred()
    outer.addCallback(lambda _: inner)
    outer.callback("ignored")
    first = results(c.call("key", lambda: outer))
    second = results(c.call("key", lambda: succeed("unexpected")))
    inner.callback("inner")
    assert (first, second) == (["inner"], ["inner"])


def test_cancel_one_waiter() -> None:
    """Cancelling one caller fails only that caller; the shared call and others go on."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    d1 = c.call("key", backend)
    out1 = results(d1)
    out2 = results(c.call("key", backend))
    d1.cancel()
    assert out1[0].check(CancelledError)
    assert backend.cancelled == []
    backend.deferreds[0].callback("v")
    assert out2 == ["v"]


def test_cancel_all_waiters_cancels_shared_call() -> None:
    """When every caller has cancelled, fn's Deferred is cancelled and the key is freed."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    d1 = c.call("key", backend)
    d2 = c.call("key", backend)
    out1, out2 = results(d1), results(d2)
    d1.cancel()
    d2.cancel()
    assert backend.cancelled == [0]
    assert out1[0].check(CancelledError)
    assert out2[0].check(CancelledError)
    assert "key" not in c


def test_call_after_all_cancelled_starts_fresh() -> None:
    """A call after every caller cancelled runs fn again instead of joining the cancelled call."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    first = c.call("key", backend)
    first.addErrback(lambda f: f.trap(CancelledError))
    first.cancel()
    out = results(c.call("key", backend))
    assert len(backend.args) == 2
    backend.deferreds[1].callback("v")
    assert out == ["v"]


def test_detached_call_outlives_its_callers() -> None:
    """Detached: every caller cancelling neither cancels fn's Deferred nor forgets the key."""
    c: Coalescer[str, str] = Coalescer(detached=True)
    backend = DeferredSource()
    first = c.call("key", backend)
    first.addErrback(lambda f: f.trap(CancelledError))
    first.cancel()
    assert backend.cancelled == []
    assert "key" in c


def test_detached_call_joined_after_every_caller_left() -> None:
    """Detached: a caller arriving after all others left joins the running call, not a new one."""
    c: Coalescer[str, str] = Coalescer(detached=True)
    backend = DeferredSource()
    first = c.call("key", backend)
    first.addErrback(lambda f: f.trap(CancelledError))
    first.cancel()
    out = results(c.call_shared("key", backend))
    assert len(backend.args) == 1
    backend.deferreds[0].callback("v")
    assert out == [("v", True)]
    assert "key" not in c


def test_waiter_callback_cancelling_another_waiter() -> None:
    """A waiter's callback may cancel a later waiter; the waiters after it still get the value."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    d2_holder: list[Deferred[str]] = []
    c.call("key", backend).addCallback(lambda _: d2_holder[0].cancel())
    d2_holder.append(c.call("key", backend))
    out2 = results(d2_holder[0])
    out3 = results(c.call("key", backend))
    backend.deferreds[0].callback("v")
    assert out2[0].check(CancelledError)
    assert out3 == ["v"]


def test_raising_waiter_callback_does_not_affect_others() -> None:
    """An exception in one waiter's callback stays in that waiter's chain."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    d1 = c.call("key", backend)
    d1.addCallback(lambda _: 1 / 0)
    out1 = results(d1)
    out2 = results(c.call("key", backend))
    backend.deferreds[0].callback("v")
    assert out1[0].check(ZeroDivisionError)
    assert out2 == ["v"]


def test_call_shared_flags() -> None:
    """call_shared fires with shared=False for the caller that started fn, True for joiners."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    first = results(c.call_shared("key", backend))
    second = results(c.call_shared("key", backend))
    backend.deferreds[0].callback("v")
    assert (first, second) == ([("v", False)], [("v", True)])


def test_counters() -> None:
    """calls counts every call, coalesced the joins and failures each failed fn call."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    for _ in range(3):
        results(c.call("key", backend))
    backend.deferreds[0].errback(RuntimeError("down"))
    results(c.call("key", lambda: "ok"))
    assert (c.calls, c.coalesced, c.failures) == (4, 2, 1)


def test_failures_not_counted_when_every_caller_cancelled() -> None:
    """A call failing only because every caller cancelled it is not a failure; a real one is."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    first = c.call("key", backend)
    results(first)
    first.cancel()
    assert (backend.cancelled, c.failures) == ([0], 0)
    out = results(c.call("key", backend))
    backend.deferreds[1].errback(RuntimeError("down"))
    assert out[0].check(RuntimeError)
    assert c.failures == 1


def test_failure_reaches_every_waiter_as_own_copy() -> None:
    """Each waiter gets its own Failure object carrying the same exception."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    out1 = results(c.call("key", backend))
    out2 = results(c.call("key", backend))
    error = RuntimeError("down")
    backend.deferreds[0].errback(error)
    assert out1[0] is not out2[0]
    assert out1[0].value is error
    assert out2[0].value is error


def test_shared_failure_not_logged_as_unhandled() -> None:
    """A failure every waiter handled is not logged as "Unhandled error in Deferred"."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    results(c.call("key", backend))
    results(c.call("key", backend))
    backend.deferreds[0].errback(RuntimeError("down"))
    del backend
    gc.collect()  # the no_unhandled_deferred_errors fixture fails the test if one is logged


def test_failure_not_remembered() -> None:
    """After a failed call the next call runs fn again and can succeed."""
    c: Coalescer[str, str] = Coalescer()
    results(c.call("key", lambda: fail(RuntimeError("down"))))
    assert results(c.call("key", lambda: "up")) == ["up"]


def test_args_and_kwargs_passed_to_fn() -> None:
    """call passes its extra positional and keyword arguments to fn."""
    c: Coalescer[str, tuple[int, int]] = Coalescer()

    def add(a: int, *, b: int) -> tuple[int, int]:
        return (a, b)

    assert results(c.call("key", add, 1, b=2)) == [(1, 2)]


def test_in_flight_and_contains() -> None:
    """in_flight and `in` report the keys with a call underway."""
    c: Coalescer[str, str] = Coalescer()
    backend = DeferredSource()
    c.call("a", backend)
    c.call("a", backend)
    c.call("b", backend)
    assert (c.in_flight, "a" in c, "z" in c) == (2, True, False)


def test_call_unhashable_key_raises_type_error() -> None:
    """Coalescer.call with an unhashable key raises a TypeError naming the key."""
    c: Coalescer[Any, str] = Coalescer()
    with pytest.raises(TypeError, match=r"must be hashable.*\[1, 2\]"):
        c.call([1, 2], lambda: "x")
    assert c.calls == 0


class Client:
    """A class using @coalesced, counting calls of the wrapped method."""

    def __init__(self) -> None:
        self.backend = DeferredSource()

    @coalesced(key=lambda self, name, **kw: name)
    def fetch(self, name: str, extra: int = 0) -> Deferred[str]:
        result: Deferred[str] = self.backend(name, extra)
        return result

    @coalesced(key=lambda self, names: names)
    def fetch_many(self, names: list[str]) -> str:
        return ",".join(names)


def test_decorator_coalesces_per_key() -> None:
    """Concurrent calls of a decorated method with the same key call the method once."""
    client = Client()
    out1 = results(client.fetch("a"))
    out2 = results(client.fetch("a", extra=1))
    assert client.backend.args == [("a", 0)]
    client.backend.deferreds[0].callback("A")
    assert (out1, out2) == (["A"], ["A"])


def test_decorator_per_instance() -> None:
    """Two instances never share an in-flight call, even with equal keys."""
    one, two = Client(), Client()
    one.fetch("a")
    two.fetch("a")
    assert (len(one.backend.args), len(two.backend.args)) == (1, 1)


def test_decorator_coalescer_stored_on_instance() -> None:
    """The per-instance Coalescer lives in the instance's __dict__, not on the class."""
    client = Client()
    client.fetch("a")
    on_instance = [v for v in vars(client).values() if isinstance(v, Coalescer)]
    on_class = [v for v in vars(Client).values() if isinstance(v, Coalescer)]
    assert (len(on_instance), on_class) == (1, [])


def test_decorator_keeps_method_metadata() -> None:
    """The decorated method keeps its name and qualified name."""
    assert Client.fetch.__qualname__ == "Client.fetch"


def test_decorator_unhashable_key_names_key_function() -> None:
    """An unhashable key from the key function raises TypeError naming the function and key."""
    client = Client()
    with pytest.raises(TypeError, match=r"Client\.<lambda>.*\['x'\]"):
        client.fetch_many(["x"])
