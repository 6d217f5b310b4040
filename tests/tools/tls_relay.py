"""A TLS terminator in front of a plain TCP port, for testing ``rediss://`` against real Redis.

Usage: python tls_relay.py CERT KEY TARGET_PORT
Prints "tls relay listening on 127.0.0.1:PORT" once ready; SIGTERM stops it.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor, ssl
from twisted.protocols.portforward import ProxyFactory


def main() -> None:
    cert, key, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
    context = ssl.DefaultOpenSSLContextFactory(key, cert)
    port = reactor.listenSSL(0, ProxyFactory("127.0.0.1", target), context, interface="127.0.0.1")
    line = f"tls relay listening on 127.0.0.1:{port.getHost().port}"
    reactor.callWhenRunning(print, line, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
