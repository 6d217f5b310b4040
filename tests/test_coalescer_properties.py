"""Hypothesis: random interleavings of call/fire/fail/cancel/forget against a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from gateway.primitives.coalescer import Coalescer

KEYS = ("a", "b", "c")


class Boom(Exception):
    """The failure a window ends with when the test fails it."""


@dataclass
class Window:
    """One fn call in flight (the model's view) and the Deferred fn returned."""

    key: str
    fn_deferred: Deferred[Any]
    callers: list[Caller] = field(default_factory=list)
    closed: bool = False
    cancelled: bool = False


@dataclass
class Caller:
    """One call()'s Deferred, what it fired with, and what the model expects."""

    deferred: Deferred[tuple[Any, bool]]
    shared: bool
    got: list[Any] = field(default_factory=list)
    expected: Any = None  # ("value", v) | ("error", exc) | ("cancelled",) once decided
    window: Window | None = None


class Harness:
    """Drives a Coalescer and a model side by side and checks they agree."""

    def __init__(self) -> None:
        self.coalescer: Coalescer[str, Any] = Coalescer()
        self.current: dict[str, Window] = {}
        self.windows: list[Window] = []
        self.callers: list[Caller] = []
        self.fn_calls = 0
        self.counter = 0

    def _fn(self, key: str) -> Deferred[Any]:
        self.fn_calls += 1
        window = Window(key, Deferred(self._cancelled))
        self.windows.append(window)
        self.current[key] = window
        return window.fn_deferred

    def _cancelled(self, d: Deferred[Any]) -> None:
        window = next(w for w in self.windows if w.fn_deferred is d)
        window.cancelled = True

    def _track(self, d: Deferred[tuple[Any, bool]], shared: bool) -> Caller:
        caller = Caller(d, shared)

        def collect(r: Any) -> None:
            caller.got.append(r)

        d.addBoth(collect)
        self.callers.append(caller)
        return caller

    def call(self, key: str) -> None:
        window = self.current.get(key)
        caller = self._track(self.coalescer.call_shared(key, self._fn, key), window is not None)
        window = self.current[key]
        caller.window = window
        window.callers.append(caller)

    def call_available(self, key: str) -> None:
        self.counter += 1
        value = self.counter
        window = self.current.get(key)
        calls_before = self.fn_calls

        def available() -> Deferred[Any]:
            self.fn_calls += 1
            return succeed(value)

        caller = self._track(self.coalescer.call_shared(key, available), window is not None)
        if window is None:
            # An available result is handed over at once and not pooled.
            assert self.fn_calls == calls_before + 1
            caller.expected = ("value", value)
        else:
            caller.window = window
            window.callers.append(caller)

    def _close(self, window: Window, outcome: Any) -> None:
        window.closed = True
        if self.current.get(window.key) is window:
            del self.current[window.key]
        for caller in window.callers:
            if caller.expected is None:
                caller.expected = outcome

    def _oldest_open(self, key: str) -> Window | None:
        return next((w for w in self.windows if w.key == key and not w.closed), None)

    def fire(self, key: str) -> None:
        window = self._oldest_open(key)
        if window is None:
            return
        self.counter += 1
        self._close(window, ("value", self.counter))
        window.fn_deferred.callback(self.counter)

    def fail(self, key: str) -> None:
        window = self._oldest_open(key)
        if window is None:
            return
        error = Boom(key)
        self._close(window, ("error", error))
        window.fn_deferred.errback(error)

    def cancel(self, index: int) -> None:
        if not self.callers:
            return
        caller = self.callers[index % len(self.callers)]
        if caller.expected is None:
            caller.expected = ("cancelled",)
            window = caller.window
            assert window is not None
            if all(c.expected == ("cancelled",) for c in window.callers):
                # The last interested caller left: the shared call gets cancelled.
                self._close(window, ("cancelled",))
        caller.deferred.cancel()

    def forget(self, key: str) -> None:
        self.current.pop(key, None)
        self.coalescer.forget(key)

    def check(self) -> None:
        assert self.coalescer.in_flight == len(self.current)
        assert self.fn_calls == len(self.windows) + sum(1 for c in self.callers if c.window is None)
        for window in self.windows:
            every_caller_cancelled = all(c.expected == ("cancelled",) for c in window.callers)
            # fn's Deferred is cancelled exactly when all its callers cancelled before it fired.
            assert window.cancelled == (every_caller_cancelled and window.closed)
        for caller in self.callers:
            if caller.expected is None:
                assert caller.got == []
                continue
            assert len(caller.got) == 1, caller
            (got,) = caller.got
            kind = caller.expected[0]
            if kind == "value":
                assert got == (caller.expected[1], caller.shared)
            else:
                assert isinstance(got, Failure)
                if kind == "error":
                    assert got.value is caller.expected[1]
                else:
                    assert got.check(CancelledError)


ops = st.one_of(
    st.tuples(st.just("call"), st.sampled_from(KEYS)),
    st.tuples(st.just("call_available"), st.sampled_from(KEYS)),
    st.tuples(st.just("fire"), st.sampled_from(KEYS)),
    st.tuples(st.just("fail"), st.sampled_from(KEYS)),
    st.tuples(st.just("forget"), st.sampled_from(KEYS)),
    st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=50)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60))
def test_every_caller_gets_exactly_its_windows_result(steps: list[tuple[str, Any]]) -> None:
    """Every non-cancelled caller gets exactly one result, that of the fn call it joined."""
    harness = Harness()
    for op, arg in steps:
        getattr(harness, op)(arg)
        harness.check()
    # Finish whatever is still in flight; then every caller has exactly one result.
    for key in KEYS:
        while harness._oldest_open(key) is not None:
            harness.fire(key)
    harness.check()
    assert all(len(c.got) == 1 for c in harness.callers)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(KEYS), max_size=40), st.data())
def test_fn_runs_once_per_in_flight_window(keys: list[str], data: st.DataObject) -> None:
    """Between a key's first call and its fn's result, fn runs exactly once for that key."""
    coalescer: Coalescer[str, str] = Coalescer()
    started: dict[str, list[Deferred[str]]] = {k: [] for k in KEYS}

    def fn(key: str) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        started[key].append(d)
        return d

    for key in keys:
        coalescer.call(key, fn, key)
        assert len([d for d in started[key] if not d.called]) == 1
        if data.draw(st.booleans(), label="fire now"):
            started[key][-1].callback(key)
    total_windows = sum(len(v) for v in started.values())
    assert coalescer.calls - coalescer.coalesced == total_windows
