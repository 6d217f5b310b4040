"""Gateway memory under a client that pipelines calls and never reads the replies.

    python -m benchmarks.unread_client [--calls 300000] [--read] [--json]

Starts an example backend (answering at once) and one gateway node on loopback, connects one
raw socket and writes ``--calls`` distinct framed ``alertSupervisor`` calls (encoded by the
stock thrift library) with blocking sends, never reading (``--read``: a thread drains the
replies, the control run). It stops writing when a send has blocked for ``--stall`` seconds
(the gateway stopped reading), waits until the gateway's call count is stable, and reports
the gateway's RSS (/proc/PID/status VmRSS) before and after. Every process is stopped by PID.
Reports, never asserts.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.Thrift import TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from gateway.examples.gen.supervisor.Supervisor import alertSupervisor_args
from gateway.processes import metric, start_example_backend, start_gateway


def framed_call(seqid: int) -> bytes:
    buf = TMemoryBuffer()
    protocol = TBinaryProtocol(buf)
    protocol.writeMessageBegin("alertSupervisor", TMessageType.CALL, seqid)
    alertSupervisor_args(message=f"m{seqid}").write(protocol)
    protocol.writeMessageEnd()
    body: bytes = buf.getvalue()
    return struct.pack(">i", len(body)) + body


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def run(calls: int, read: bool, stall: float) -> dict[str, Any]:
    data = b"".join(framed_call(i) for i in range(1, calls + 1))
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, admin=True, node_id="unread") as gw,
    ):
        time.sleep(0.5)
        before = rss_mib(gw.pid)
        sock = socket.create_connection((gw.host, gw.port))
        sock.settimeout(stall)
        if read:
            threading.Thread(target=drain, args=(sock,), daemon=True).start()
        view, offset, started, blocked = memoryview(data), 0, time.monotonic(), False
        while offset < len(data):
            try:
                offset += sock.send(view[offset : offset + 65536])
            except TimeoutError:
                blocked = True
                break
        write_seconds = time.monotonic() - started
        last, stable = -1.0, 0
        while stable < 4:  # the call count unchanged for 2 s
            read_calls = metric(gw.admin_url, "gateway_calls_total") or 0.0
            stable, last = (stable + 1, last) if read_calls == last else (0, read_calls)
            time.sleep(0.5)
        after = rss_mib(gw.pid)
        sock.close()
        return {
            "calls": calls,
            "client_reads": read,
            "bytes": len(data),
            "bytes_written": offset,
            "write_seconds": round(write_seconds, 1),
            "writes_blocked": blocked,
            "calls_read_by_gateway": int(last),
            "errors": metric(gw.admin_url, "gateway_errors_total"),
            "rss_before_mib": round(before, 1),
            "rss_after_mib": round(after, 1),
            "rss_growth_mib": round(after - before, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--read", action="store_true", help="control run: the client reads")
    parser.add_argument("--stall", type=float, default=20.0, help="seconds a send may block")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.calls, args.read, args.stall)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
