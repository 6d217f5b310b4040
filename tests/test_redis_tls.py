"""rediss:// for real: a gateway node reaches a real redis-server through a TLS terminator."""

from __future__ import annotations

import datetime
import ipaddress
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.localredis import RedisServer
from gateway.processes import (
    redis_mode,
    start_example_backend,
    start_gateway,
    start_process,
    wait_for_redis_mode,
)

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """(TLS port, CA file): TLS on the outside, the fixture's real redis-server inside."""
    cert, key = self_signed(tmp_path)
    relay = start_process(
        [sys.executable, str(HERE / "tools" / "tls_relay.py"), str(cert), str(key),
         str(redis_server.port)]
    )  # fmt: skip
    try:
        match = relay.wait_for_line(r"tls relay listening on 127\.0\.0\.1:(\d+)", timeout=15)
        yield int(match.group(1)), cert
    finally:
        relay.stop()


def test_rediss_with_trusted_ca_reaches_cluster_mode(
    tls_redis: tuple[int, Path], redis_server: RedisServer
) -> None:
    """With ssl_ca_certs the node verifies the server, runs in cluster mode and heartbeats."""
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    with (
        start_example_backend() as backend,
        start_gateway(backend=backend.address, redis=url, node_id="tls-node", admin=True) as gw,
    ):
        wait_for_redis_mode([gw], "cluster", timeout=15)
        plain = redis.Redis.from_url(redis_server.url)
        try:
            deadline = time.monotonic() + 5
            while plain.zscore("gw:nodes", "tls-node") is None:
                assert time.monotonic() < deadline, "no heartbeat arrived through TLS"
                time.sleep(0.1)
        finally:
            plain.close()


def test_rediss_with_an_untrusted_certificate_stays_local(tls_redis: tuple[int, Path]) -> None:
    """Without the CA the certificate fails verification: the node never trusts it."""
    port, _ = tls_redis
    with (
        start_example_backend() as backend,
        start_gateway(
            backend=backend.address,
            redis=f"rediss://127.0.0.1:{port}/0",
            node_id="tls-x",
            admin=True,
        ) as gw,
    ):
        # The node tried the TLS URL and the handshake failed (no certificate it trusts).
        gw.process.wait_for_line(
            rf"redis unreachable at rediss://127\.0\.0\.1:{port}/0", timeout=15, stream="stderr"
        )
        assert redis_mode(gw) == "local"
