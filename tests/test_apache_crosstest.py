"""Apache Thrift's own cross-test clients through ``gateway serve`` (benchmarks/crosstest.py).

The suite is not in this repository and CI cannot fetch it: set ``APACHE_THRIFT`` to a tree of
the v0.17.0 release (``git archive v0.17.0 test lib/py``) to run this; the whole matrix is
``make interop-apache APACHE_THRIFT=...``. Here: the dialects the gateway wraps in layers
(THeader, JSON and their multiplexed forms, over every transport), coalesce mode.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from benchmarks import crosstest

pytestmark = pytest.mark.integration

SUITE = Path(os.environ.get("APACHE_THRIFT", "/nonexistent"))


@pytest.mark.skipif(
    not (SUITE / "test" / "py" / "TestClient.py").exists(),
    reason="set APACHE_THRIFT to a tree of Apache Thrift v0.17.0 (test/, lib/py) to run it",
)
@pytest.mark.skipif(shutil.which("thrift") is None, reason="needs Debian's thrift-compiler")
@pytest.mark.parametrize("protocol", ["header", "json", "multih", "multij"])
def test_apache_clients_through_the_gateway(
    protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Apache's TestClient in ``protocol`` over every transport passes through the gateway
    (coalesce mode) against Apache's TestServer."""
    python = os.environ.get("APACHE_THRIFT_PYTHON", sys.executable)
    status = crosstest.main(
        [str(SUITE), "--python", python, "--only", protocol, "--modes", "coalesce", "--no-direct"]
    )
    out = capsys.readouterr().out
    assert status == 0, out
