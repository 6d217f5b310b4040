"""A method's exclude_fields are part of its calls' identity (issue 16, "also check"): two
policies that reach one upstream name, one excluding a field and one not, never share keys.

Unit part on :class:`gateway.thrift.CallIdentity`; black-box part with a real ``gateway
serve``, the thriftpy2 counting backend (multiplexed, service Supervisor) and thriftpy2
clients: a multiplexed caller of ``Supervisor:lookup`` (its opts excluded) and a plain
caller of ``lookup`` (nothing excluded) both reach upstream ``Supervisor:lookup``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from counting import CountingBackend, client, gateway, write_config

from gateway.processes import GatewayProcess
from gateway.thrift import CallIdentity


def test_exclusions_change_the_key_and_no_exclusions_keep_it() -> None:
    """The same canonical args under different exclusion sets are different calls; without
    exclusions a key is exactly what it was before exclusions joined the identity."""
    args = b"\x0b\x00\x01\x00\x00\x00\x01x\x00"
    plain = CallIdentity("b", "Svc:m", args)
    excluded = CallIdentity("b", "Svc:m", args, excluded=(2,))
    assert plain.key != excluded.key
    assert excluded.key != CallIdentity("b", "Svc:m", args, excluded=(3,)).key
    assert excluded.key != CallIdentity("b", "Svc:m", args, excluded=(2, 3)).key
    # The key of a call without exclusions, as gateways before this change computed it.
    assert plain.key == "b.Svc:m:114705fa15bb2ebd399f87f298ae64f8"
    with_headers = b"\x00\x00\x00\x01t\x00"
    assert (
        CallIdentity("b", "Svc:m", args, with_headers).key
        != CallIdentity("b", "Svc:m", args, with_headers, excluded=(2,)).key
    )


@pytest.fixture
def backend() -> Iterator[CountingBackend]:
    counting = CountingBackend(multiplexed=True)
    yield counting
    counting.stop()


METHODS = """
[methods."Supervisor:lookup"]
mode = "cache"
ttl = 60
exclude_fields = [2]

[methods.lookup]
mode = "cache"
ttl = 60
"""


@pytest.mark.integration
def test_an_excluding_policy_never_answers_a_caller_of_a_non_excluding_one(
    tmp_path: Path, backend: CountingBackend, nodes: list[GatewayProcess]
) -> None:
    """A multiplexed caller whose opts are excluded caches lookup("x", {"lang": "fr"});
    a plain caller of lookup("x") without opts (a policy that excludes nothing) is not
    answered from that entry - it gets the backend's answer to its own call."""
    config = write_config(tmp_path, backend, methods=METHODS)
    node = gateway(nodes, config, "excl")
    with client(node.address, multiplexed=True) as mux:
        first = mux.lookup("x", {"lang": "fr"}, 0.0)
    with client(node.address, multiplexed=False) as plain:
        second = plain.lookup("x", None, 0.0)
    assert first.opts == {"lang": "fr"}
    assert second.opts == {}, "answered with another call's reply (opts it never sent)"
    assert backend.count("Supervisor", "lookup", "x") == 1
    assert backend.count("Supervisor", "lookup", "x", {"lang": "fr"}) == 1
