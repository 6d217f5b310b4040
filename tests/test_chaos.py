"""The chaos soak (``python -m benchmarks.chaos``): its reply checks, its fault attribution,
and a short real run end to end (the 100,000-call soak itself is a benchmark, not a test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from thriftpy2.protocol import TBinaryProtocol, TCompactProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TMemoryBuffer

from benchmarks.chaos import LATE, OUTAGE, UNEXPLAINED, cause
from benchmarks.chaos_faults import Fault
from benchmarks.chaos_load import Herd, error_kind
from benchmarks.chaos_wire import CallSpec, decode_reply, guarantees, split_reply
from gateway.processes import REPO_ROOT

SPEC = CallSpec("Poetry", "echo", "k1~7", (("v", "1"),), 0.1)


def reply(protocol: str, result: object, seqid: int = 5, name: str = "echo") -> bytes:
    buf = TMemoryBuffer()
    proto = (TBinaryProtocol if protocol == "binary" else TCompactProtocol)(buf)
    kind = TMessageType.EXCEPTION if isinstance(result, TApplicationException) else None
    proto.write_message_begin(name, kind or TMessageType.REPLY, seqid)
    proto.write_struct(result)
    proto.write_message_end()
    return buf.getvalue()


def echo(service: str = "Poetry", arg: str = "k1~7", opts: dict[str, str] | None = None) -> object:
    opts = {"v": "1"} if opts is None else opts
    return guarantees.Poetry.echo_result(success=guarantees.Echo(service, "echo", arg, opts, 1, 9))


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_a_reply_is_correct_only_for_its_own_call(protocol: str) -> None:
    """An Echo of the call's own service, method and arguments is correct; another service's,
    another argument's or other options' answer is crossed; a gateway error is an error."""
    assert decode_reply(reply(protocol, echo()), protocol, SPEC).correct
    for other in (echo(service="Supervisor"), echo(arg="k1~8"), echo(opts={"v": "2"})):
        assert not decode_reply(reply(protocol, other), protocol, SPEC).correct
    error = TApplicationException(6, "gateway: backend 10.0.0.1:9 unreachable")
    decoded = decode_reply(reply(protocol, error), protocol, SPEC)
    assert decoded.kind == "gateway_error"
    assert error_kind(decoded.message) == "gateway: backend N unreachable"


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_a_buffered_reply_is_split_only_once_it_is_whole(protocol: str) -> None:
    """On a buffered stream a reply is taken only when all of it arrived (a truncated reply
    is never decoded), and the bytes after it stay for the next one."""
    whole = reply(protocol, echo())
    for cut in range(len(whole)):
        assert split_reply(whole[:cut], protocol, "buffered") == (None, whole[:cut])
    assert split_reply(whole + b"next", protocol, "buffered") == (whole, b"next")
    framed = len(whole).to_bytes(4, "big") + whole
    assert split_reply(framed[:-1], protocol, "framed") == (None, framed[:-1])
    assert split_reply(framed + b"x", protocol, "framed") == (whole, b"x")


def test_an_extra_backend_call_is_put_down_to_the_fault_near_it() -> None:
    """An extra backend call during (or up to 5 s after) a fault is that fault's; without a
    fault near it is down to a node that had lost Redis by itself then, else a late caller
    if the window's first call had finished, else unexplained."""
    herd = Herd(1, SPEC, 3, started=100.0)
    faults = [Fault("stop-node", "n2", 90.0, 92.0), Fault("kill-node", "n1", 99.0, 100.5)]
    assert cause(100.2, 100.0, herd, faults) == "kill-node"
    assert cause(105.4, 105.3, herd, faults) == "kill-node"  # settling after the restart
    assert cause(106.2, 106.0, herd, faults) == LATE  # first call (0.1 s) had finished
    assert cause(106.05, 106.0, herd, faults) == UNEXPLAINED
    busy = Herd(2, CallSpec("Supervisor", "page", "busy:k2~9"), 3, started=106.0)
    assert cause(106.05, 106.0, busy, faults) == LATE  # Busy is raised at once
    outage = Fault("node-lost-redis", "n2", 106.02, 106.1)  # its log: redis down ... up
    assert cause(106.05, 106.0, herd, faults, [outage]) == OUTAGE


@pytest.mark.integration
def test_a_short_soak_answers_every_call_and_crosses_none() -> None:
    """A 600-call soak over two nodes with faults every 0.3-0.6 s: at least one fault
    happens, every call ends (no lost call), none is answered with another call's reply,
    and every window is accounted for."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--calls", "600", "--nodes", "2",
         "--connections", "16", "--seed", "3", "--fault-gap", "0.3", "0.6", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    calls = report["calls"]
    assert calls["launched"] == 600
    assert sum(report["faults"].values()) >= 1, report["faults"]
    assert calls["crossed"] == 0 and calls["lost"] == 0, calls
    assert calls["correct"] + calls["errors"] == 600
    assert report["windows"]["backend_calls"] >= report["windows"]["total"] - calls["errors"]
    assert done.returncode == 0
