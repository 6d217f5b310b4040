"""The interop matrix's backend: tests/idl/interop.thrift served by an independent Thrift stack.

Run as a process by tests/test_interop.py (and stopped by PID)::

    python tests/interop_backend.py thrift GEN_PY_DIR     # stock Apache Thrift Python
    python tests/interop_backend.py thriftpy2             # thriftpy2 (loads the IDL itself)

One process serves every transport/protocol configuration of its stack, each on its own
OS-chosen loopback port, and prints ``interop-backend CONFIG listening on 127.0.0.1:PORT``
per configuration, then ``interop-backend ready``. The handler is the same for both stacks:
echo every argument back, raise the declared exceptions on request, count oneway calls. The
stock THeader configuration also prints the info headers of every call that carries a
``probe`` header (``interop-backend headers METHOD KEY=VALUE ...``), so a test can see which
headers reached the backend.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

IDL = Path(__file__).resolve().parent / "idl" / "interop.thrift"
HOST = "127.0.0.1"


class Handler:
    """The Interop service, written once for both stacks (``types`` holds their generated
    classes, ``app_exc`` their TApplicationException)."""

    def __init__(self, types: Any, app_exc: Any) -> None:
        self._types = types
        self._app_exc = app_exc
        self._fired: dict[str, int] = {}
        self._lock = threading.Lock()

    def ping(self) -> None:
        return None

    def echoBool(self, v: Any) -> Any:
        return v

    echoByte = echoI16 = echoI32 = echoI64 = echoDouble = echoString = echoBinary = echoBool
    echoEnum = echoScalars = echoUnion = echoEverything = echoList = echoSet = echoMap = echoBool

    def fail(self, code: int) -> str:
        if code == 1:
            raise self._types.NotFound(item="thing", code=404)
        if code == 2:
            raise self._types.Invalid(reason="bad input \u2717")
        if code == 3:
            # An undeclared failure. Raised as TApplicationException because thriftpy2 closes
            # the connection on any other undeclared exception instead of answering.
            raise self._app_exc(self._app_exc.INTERNAL_ERROR, "undeclared failure")
        return "ok"

    def fire(self, token: str) -> None:
        with self._lock:
            self._fired[token] = self._fired.get(token, 0) + 1

    def fired(self, token: str) -> int:
        with self._lock:
            return self._fired.get(token, 0)

    def big(self, size: int) -> bytes:
        return bytes(i % 251 for i in range(256)) * (size // 256) + bytes(
            i % 251 for i in range(size % 256)
        )

    def sizeOf(self, blob: bytes) -> int:
        return len(blob)


class HeaderProbe:
    """A stock processor that prints the info headers of calls carrying a ``probe`` header.

    Printed after the call is answered: a client may see its reply a moment before the line.
    """

    def __init__(self, processor: Any) -> None:
        self._processor = processor

    def process(self, iprot: Any, oprot: Any) -> Any:
        result = self._processor.process(iprot, oprot)
        headers = iprot.trans.get_headers()
        if b"probe" in headers:
            pairs = " ".join(f"{k.decode()}={v.decode()}" for k, v in sorted(headers.items()))
            print(f"interop-backend headers {pairs}", flush=True)
        return result


def _serve(name: str, server: Any, port_of: Any) -> None:
    """Run ``server.serve()`` in a daemon thread and print its real port once bound."""
    threading.Thread(target=server.serve, name=name, daemon=True).start()
    deadline = time.monotonic() + 10
    while (port := port_of()) == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"interop-backend {name}: did not bind")
        time.sleep(0.005)
    print(f"interop-backend {name} listening on {HOST}:{port}", flush=True)


def _stock(gen_dir: str) -> None:
    sys.path.insert(0, gen_dir)
    from interop_gen import Interop, ttypes  # type: ignore[import-not-found]  # generated
    from thrift.protocol.TBinaryProtocol import TBinaryProtocolFactory
    from thrift.protocol.TCompactProtocol import TCompactProtocolFactory
    from thrift.protocol.THeaderProtocol import THeaderProtocolFactory
    from thrift.server.TServer import TThreadedServer
    from thrift.Thrift import TApplicationException
    from thrift.TMultiplexedProcessor import TMultiplexedProcessor
    from thrift.transport.TSocket import TServerSocket
    from thrift.transport.TTransport import (
        TBufferedTransportFactory,
        TFramedTransportFactory,
        TTransportFactoryBase,
    )

    processor = Interop.Processor(Handler(ttypes, TApplicationException))
    multiplexed = TMultiplexedProcessor()
    multiplexed.registerProcessor("Interop", processor)
    protocols = {"binary": TBinaryProtocolFactory(), "compact": TCompactProtocolFactory()}
    transports = {"framed": TFramedTransportFactory(), "buffered": TBufferedTransportFactory()}
    configs: dict[str, tuple[Any, Any, Any]] = {
        f"thrift-{t}-{p}": (processor, transports[t], protocols[p])
        for t in transports
        for p in protocols
    }
    configs["thrift-header"] = (
        HeaderProbe(processor),
        TTransportFactoryBase(),
        THeaderProtocolFactory(),
    )
    configs["thrift-multiplexed"] = (multiplexed, transports["framed"], protocols["binary"])
    for name, (proc, trans, prot) in configs.items():
        socket = TServerSocket(host=HOST, port=0)
        server = TThreadedServer(proc, socket, trans, prot, daemon=True)

        def port_of(socket: Any = socket) -> int:
            return socket.handle.getsockname()[1] if socket.handle is not None else 0

        _serve(name, server, port_of)


def _thriftpy2() -> None:
    import thriftpy2
    from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
    from thriftpy2.server import TThreadedServer
    from thriftpy2.thrift import TApplicationException, TProcessor
    from thriftpy2.transport import (
        TBufferedTransportFactory,
        TFramedTransportFactory,
        TServerSocket,
    )

    module = thriftpy2.load(str(IDL), module_name="interop_thrift")
    processor = TProcessor(module.Interop, Handler(module, TApplicationException))
    protocols = {"binary": TBinaryProtocolFactory(), "compact": TCompactProtocolFactory()}
    transports = {"framed": TFramedTransportFactory(), "buffered": TBufferedTransportFactory()}
    for t, trans in transports.items():
        for p, prot in protocols.items():
            socket = TServerSocket(host=HOST, port=0, client_timeout=None)
            server = TThreadedServer(processor, socket, itrans_factory=trans, iprot_factory=prot)

            def port_of(socket: Any = socket) -> int:
                return socket.sock.getsockname()[1] if socket.sock is not None else 0

            _serve(f"thriftpy2-{t}-{p}", server, port_of)


def main(argv: list[str]) -> None:
    if argv[:1] == ["thrift"] and len(argv) == 2:
        _stock(argv[1])
    elif argv == ["thriftpy2"]:
        _thriftpy2()
    else:
        raise SystemExit("usage: interop_backend.py thrift GEN_PY_DIR | thriftpy2")
    print("interop-backend ready", flush=True)
    threading.Event().wait()  # serve until SIGTERM


if __name__ == "__main__":
    main(sys.argv[1:])
