"""The example Supervisor backend (framed, binary) behind TLS, for the backend-TLS tests.

Run as a process (stopped by PID)::

    python tests/tools/tls_backend.py CERT_PEM KEY_PEM [CLIENT_CA_PEM]

With CLIENT_CA_PEM every client must present a certificate signed by it. Prints
``example-backend supervisor listening on 127.0.0.1:PORT (tls)`` once it serves.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import ssl

from gateway.examples.backend import build_factory


def main(argv: list[str]) -> int:
    cert, key = Path(argv[0]).read_text(), Path(argv[1]).read_text()
    reactor: Any = _reactor
    ssl_any: Any = ssl
    server = ssl_any.PrivateCertificate.loadPEM(cert + key)
    # With authorities, options() requires a client certificate signed by one of them.
    authorities = [ssl_any.Certificate.loadPEM(Path(path).read_text()) for path in argv[2:]]
    factory = build_factory(reactor, service="supervisor")
    context = server.options(*authorities)
    port = reactor.listenSSL(0, factory, context, interface="127.0.0.1")
    line = f"example-backend supervisor listening on 127.0.0.1:{port.getHost().port} (tls)"
    reactor.callWhenRunning(print, line, flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
