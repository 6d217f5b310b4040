"""TLS settings and identity without processes: config keys, certificate loading, call keys."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.config import BackendTLS, ConfigError, ServerTLS, build_config
from gateway.processes import gateway_cli
from gateway.proxy.tls import load_certificates, peer_identity, server_context
from gateway.proxy.tls_upstream import client_creator
from gateway.thrift.callkey import CallIdentity

BACKEND = {"backends": {"default": {"address": "127.0.0.1:9091"}}}


def config(gateway: dict[str, Any], backend: dict[str, Any] | None = None, **rest: Any) -> Any:
    raw: dict[str, Any] = {"gateway": {"listen": "127.0.0.1:0", **gateway}}
    raw["backends"] = {"default": {"address": "127.0.0.1:9091", **(backend or {})}}
    raw.update(rest)
    return build_config(raw, {})


def test_tls_is_off_by_default() -> None:
    """Without tls_* keys there is no TLS listener, no backend TLS and key_peer is off."""
    cfg = config({})
    assert cfg.tls_listen is None and cfg.tls is None
    assert cfg.backends["default"].tls_options is None
    assert cfg.default_policy.key_peer is False


def test_server_tls_keys_parse_with_their_defaults() -> None:
    """tls_listen with tls_cert and tls_key gives TLS 1.2 minimum and no client CA."""
    cfg = config({"tls_listen": "127.0.0.1:0", "tls_cert": "c.pem", "tls_key": "k.pem"})
    assert cfg.tls == ServerTLS(cert="c.pem", key="k.pem", client_ca=None, min_version="1.2")
    assert cfg.tls_listen is not None and cfg.tls_listen.port == 0


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ({"tls_cert": "c.pem", "tls_key": "k.pem"}, "set gateway.tls_listen too"),
        ({"tls_listen": "127.0.0.1:0", "tls_cert": "c.pem"}, "gateway.tls_key: required"),
        (
            {
                "tls_listen": "127.0.0.1:0",
                "tls_cert": "c",
                "tls_key": "k",
                "tls_min_version": "1.0",
            },
            "tls_min_version: expected one of 1.2, 1.3",
        ),
        (
            {"tls_listen": "127.0.0.1:0", "tls_cert": "c", "tls_key": "k", "workers": 2},
            "not supported with workers > 1",
        ),
    ],
)
def test_bad_server_tls_settings_are_refused(gateway: dict[str, Any], message: str) -> None:
    """Incomplete or unsupported client-port TLS settings name the key at fault."""
    with pytest.raises(ConfigError, match=message):
        config(gateway)


def test_backend_tls_keys_parse() -> None:
    """tls = true with its options becomes a BackendTLS; verification needs no key."""
    opts = {"tls": True, "tls_ca": "ca.pem", "tls_server_name": "b.example"}
    cfg = config({}, {**opts, "tls_cert": "c.pem", "tls_key": "k.pem"})
    backend = cfg.backends["default"]
    assert backend.tls_options == BackendTLS("ca.pem", "b.example", "c.pem", "k.pem")
    assert config({}, {"tls": True}).backends["default"].tls_options == BackendTLS()


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"tls_ca": "ca.pem"}, "tls_ca is set but tls is not true"),
        ({"tls": True, "tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"tls": "yes"}, "backends.default.tls: expected bool"),
    ],
)
def test_bad_backend_tls_settings_are_refused(backend: dict[str, Any], message: str) -> None:
    """A backend's TLS options without tls = true, or half a client certificate, are errors."""
    with pytest.raises(ConfigError, match=message):
        config({}, backend)


def test_key_peer_needs_client_certificates() -> None:
    """key_peer without tls_client_ca is refused: every caller would be anonymous."""
    with pytest.raises(ConfigError, match=r"methods\.get\.key_peer: needs gateway\.tls_client_ca"):
        config({}, methods={"get": {"key_peer": True}})
    tls = {"tls_listen": "127.0.0.1:0", "tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"}
    cfg = config(tls, methods={"get": {"key_peer": True}})
    assert cfg.methods["get"].policy.key_peer is True


def test_peer_identity_keeps_keys_apart_and_leaves_others_unchanged() -> None:
    """A peer changes the call key; an empty peer gives the key calls always had."""
    plain = CallIdentity("b", "m", b"\x00")
    assert CallIdentity("b", "m", b"\x00", peer=b"").key == plain.key
    alice = CallIdentity("b", "m", b"\x00", peer=b"alice").key
    assert alice != plain.key != CallIdentity("b", "m", b"\x00", peer=b"bob").key
    # A peer cannot pass for a key header, nor a key header for a peer.
    assert CallIdentity("b", "m", b"\x00", headers=b"alice").key != alice


@pytest.fixture
def pki(tmp_path: Path) -> tuple[trustme.CA, Path, Path, Path]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_pem = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_pem))
    return ca, cert, key, ca_pem


def test_unusable_certificate_files_are_config_errors(
    pki: tuple[trustme.CA, Path, Path, Path], tmp_path: Path
) -> None:
    """Missing, non-PEM and mismatched files fail with one line naming the key and file."""
    _, cert, key, ca_pem = pki
    with pytest.raises(ConfigError, match=r"gateway\.tls_cert .*missing\.pem"):
        server_context(ServerTLS(cert=str(tmp_path / "missing.pem"), key=str(key)))
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_certificates(str(key), "gateway.tls_cert")
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(other.private_key_pem.bytes())
    with pytest.raises(ConfigError, match="does not match tls_cert"):
        server_context(ServerTLS(cert=str(cert), key=str(other_key)))
    with pytest.raises(ConfigError, match=r"backends\.x\.tls_ca"):
        client_creator(BackendTLS(ca=str(key)), "127.0.0.1", "backends.x")
    assert server_context(ServerTLS(cert=str(cert), key=str(key), client_ca=str(ca_pem)))


class _FakeTLS:
    def __init__(self, cert: Any) -> None:
        self._cert = cert

    def getPeerCertificate(self) -> Any:  # Twisted's name
        return self._cert


def test_peer_identity_is_issuer_and_subject(pki: tuple[trustme.CA, Path, Path, Path]) -> None:
    """A certificate's identity names its issuer and subject; no certificate is b""."""
    _, cert, _, _ = pki
    x509 = load_certificates(str(cert), "test")[0]
    identity = peer_identity(_FakeTLS(x509))
    parsed = x509.to_cryptography()
    assert parsed.subject.public_bytes() in identity and parsed.issuer.public_bytes() in identity
    assert peer_identity(_FakeTLS(None)) == b"" == peer_identity(object())


def test_check_config_and_serve_refuse_an_unreadable_certificate_alike(tmp_path: Path) -> None:
    """check-config reads the TLS files too: a missing tls_cert exits 2 with the very line
    `gateway serve` prints for it."""
    missing = tmp_path / "missing.pem"
    toml = tmp_path / "gw.toml"
    toml.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\ntls_listen = "127.0.0.1:0"\n'
        f'tls_cert = "{missing}"\ntls_key = "{missing}"\n'
        f'[backends.default]\naddress = "127.0.0.1:1"\n'
    )
    runs = [
        subprocess.run(gateway_cli(cmd, *args), capture_output=True, text=True, timeout=60)
        for cmd, args in (("check-config", [str(toml)]), ("serve", ["--config", str(toml)]))
    ]
    expected = f"gateway: config error: gateway.tls_cert {missing}: No such file or directory\n"
    assert [(r.returncode, r.stderr) for r in runs] == [(2, expected), (2, expected)]
