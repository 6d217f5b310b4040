"""A short hostile-client soak (benchmarks/hostile.py) against a real gateway and backend."""

from __future__ import annotations

import pytest

from benchmarks import hostile
from benchmarks.hostile_clients import KINDS


@pytest.mark.integration
def test_hostile_clients_cost_legit_clients_no_call() -> None:
    """In front of the in-order example backend (its default, as real Thrift servers), beside
    every kind of hostile client (non-readers and heavy pipeliners among them), each legit call
    gets exactly its own answer: none lost, failed, timed out or crossed."""
    args = hostile.parse_args(
        [
            "--seconds", "3",
            "--quiet-seconds", "1",
            "--head-start", "1",
            "--hostile-connections", "4",
            "--partial-bytes", str(256 * 1024),
            "--bomb-transforms", "200",
        ]
    )  # fmt: skip
    report = hostile.soak(args)
    legit = report["hostile"]
    assert legit["ok"] > 0
    assert (legit["lost"], legit["failed"], legit["crossed"], legit["unmatched"]) == (0, 0, 0, 0)
    assert legit["lost_connections"] == 0
    # Every kind ran and reached the gateway.
    assert sorted(report["hostile_clients"]) == sorted(KINDS)
    assert all(tally.get("connections", 0) > 0 for tally in report["hostile_clients"].values())
