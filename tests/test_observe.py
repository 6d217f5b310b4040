"""Node-side observers (hot keys, error kinds, flight ages) and what /metrics makes of them."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.observe import (
    MAX_HOT_KEYS,
    PREVIEW_LIMIT,
    ErrorKinds,
    HotKey,
    HotKeys,
    Observations,
    error_kind,
    split_call_key,
)
from gateway.proxy.metrics import Metrics
from gateway.stats import NodeStats

KEY = "supervisor.alertSupervisor:0123456789abcdef0123456789abcdef"


def test_hot_keys_sum_callers_per_key_until_drained() -> None:
    """Flights of the same key add up; drain returns the hottest first and starts afresh."""
    hot = HotKeys()
    hot.record("supervisor.alertSupervisor", "aaa", 3)
    hot.record("poetry.getPoem", "bbb", 10)
    hot.record("supervisor.alertSupervisor", "aaa", 4)
    assert hot.drain() == [
        HotKey("poetry.getPoem", "bbb", 10),
        HotKey("supervisor.alertSupervisor", "aaa", 7),
    ]
    assert hot.drain() == []


def test_hot_keys_drain_top_keeps_the_hottest() -> None:
    """drain(top=n) hands over only the n keys with most callers (and forgets the rest)."""
    hot = HotKeys()
    for i in range(10):
        hot.record("m", f"k{i}", i + 1)
    assert [k.key_id for k in hot.drain(top=3)] == ["k9", "k8", "k7"]
    assert len(hot) == 0


def test_hot_keys_are_bounded_between_drains() -> None:
    """Once max_keys distinct keys are held, new keys are only counted as dropped callers;
    keys already held keep counting."""
    hot = HotKeys(max_keys=2)
    hot.record("m", "a", 1)
    hot.record("m", "b", 1)
    hot.record("m", "c", 5)
    hot.record("m", "a", 2)
    assert hot.dropped == 5
    assert {k.key_id: k.callers for k in hot.drain()} == {"a": 3, "b": 1}
    hot.record("m", "c", 1)  # room again after the drain
    assert [k.key_id for k in hot.drain()] == ["c"]
    assert MAX_HOT_KEYS >= 100


def test_previews_are_kept_truncated_and_only_when_given() -> None:
    """A preview longer than PREVIEW_LIMIT is cut; keys recorded without one have none."""
    hot = HotKeys()
    hot.record("m", "a", 1, preview="x" * (PREVIEW_LIMIT + 50))
    hot.record("m", "b", 1)
    previews = {k.key_id: k.preview for k in hot.drain()}
    assert previews == {"a": "x" * PREVIEW_LIMIT, "b": None}


def test_split_call_key() -> None:
    """A call key splits into "<backend>.<upstream name>" and a 12-hex-digit key id."""
    assert split_call_key(KEY) == ("supervisor.alertSupervisor", "0123456789ab")
    assert split_call_key("b.Supervisor:getStats:" + "f" * 32) == (
        "b.Supervisor:getStats",
        "ffffffffffff",
    )
    assert split_call_key("odd") == ("odd", "-")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (errors.BackendUnreachable("x"), "backend_unreachable"),
        (errors.ConnectionLost("x"), "connection_lost"),
        (errors.BackendTimeout("x"), "backend_timeout"),
        (errors.Overloaded("x"), "overloaded"),
        (errors.ShuttingDown("x"), "shutting_down"),
        (errors.UnknownRoute("x"), "unknown_route"),
        (errors.RemoteCallFailed("x"), "remote_failed"),
        (ValueError("x"), "internal"),
        (None, "internal"),
    ],
)
def test_error_kind_names_each_gateway_error(exc: BaseException | None, kind: str) -> None:
    """Each GatewayError class maps to its own kind (subclasses before bases)."""
    assert error_kind(exc) == kind


class Flights:
    def __init__(self, oldest: float | None) -> None:
        self.oldest = oldest

    def oldest_started_at(self) -> float | None:
        return self.oldest


def render(observations: Observations, now: float = 1000.0) -> str:
    metrics = Metrics(NodeStats(), "n1", lambda: "cluster", observations, now=lambda: now)
    return metrics.render().decode()


def test_oldest_in_flight_gauge_is_computed_at_scrape_time() -> None:
    """gateway_oldest_in_flight_seconds is now - the oldest start; 0 when nothing is in
    flight; absent while nothing feeds flight ages (a false 0 would hide stuck calls)."""
    observations = Observations()
    assert "gateway_oldest_in_flight_seconds" not in render(observations)
    observations.flights = Flights(oldest=940.0)
    assert 'gateway_oldest_in_flight_seconds{node="n1"} 60.0' in render(observations)
    observations.flights = Flights(oldest=None)
    assert 'gateway_oldest_in_flight_seconds{node="n1"} 0.0' in render(observations)


def test_error_kinds_and_build_info_are_exported() -> None:
    """Counted error kinds appear as gateway_errors_by_kind_total{node,kind}; the version as
    gateway_build_info."""
    observations = Observations(errors=ErrorKinds())
    for kind in ("overloaded", "overloaded", "backend_timeout"):
        observations.errors.count(kind)
    text = render(observations)
    assert 'gateway_errors_by_kind_total{kind="overloaded",node="n1"} 2.0' in text
    assert 'gateway_errors_by_kind_total{kind="backend_timeout",node="n1"} 1.0' in text
    assert 'gateway_build_info{version="' in text
