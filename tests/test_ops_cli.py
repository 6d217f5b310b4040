"""What ops expect of the command line: --version, check-config, health, advertise, previews."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import build_parser, main
from gateway.config import ConfigError, advertised_address, build_config
from gateway.health import probe
from gateway.localredis import free_port
from gateway.processes import REPO_ROOT, gateway_cli

FLAGS: dict[str, str | None] = {"listen": "0.0.0.0:9090", "backend": "127.0.0.1:1"}


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    """``gateway <args>`` in this process (every command here returns before any reactor
    starts): exit code and output."""

    def run_gateway(*args: str) -> Done:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --version, bad flags
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Done(code, out.out, out.err)

    return run_gateway


def test_version() -> None:
    """`gateway --version` (a real process) prints the package version and exits 0."""
    done = subprocess.run(gateway_cli("--version"), capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"gateway {__version__}")


def test_check_config_accepts_the_shipped_config(run: Callable[..., Done]) -> None:
    """check-config on deploy/gateway.toml with the flags compose gives a node: exit 0 and
    one summary line."""
    done = run(
        "check-config", str(REPO_ROOT / "deploy" / "gateway.toml"),
        "--listen", "0.0.0.0:9090", "--node-id", "gw-1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gateway: config OK: ") and done.stdout.count("\n") == 1
    assert "2 backend(s), 4 method policies, redis configured" in done.stdout


def test_check_config_fails_with_the_same_line_as_serve(
    tmp_path: Path, run: Callable[..., Done]
) -> None:
    """A bad file exits 2 with exactly the one error line `gateway serve` prints for it."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nlisten = "127.0.0.1:0"\n[backends.x]\naddress = "h:1"\n'
                   '[methods.getPoem]\nmode = "cache"\n')  # fmt: skip
    checked = run("check-config", str(bad))
    served = run("serve", "--config", str(bad))
    assert checked.returncode == served.returncode == 2
    assert checked.stderr == served.stderr
    expected = "gateway: config error: methods.getPoem: mode = 'cache' needs ttl > 0\n"
    assert checked.stderr == expected
    assert checked.stdout == ""


def test_advertise_defaults_to_the_host_name_for_wildcard_listens() -> None:
    """Without advertise, 0.0.0.0 (or ::) is replaced by the host name and the real port is
    used; a concrete listen host is kept."""
    config = build_config({}, FLAGS)
    assert advertised_address(config, 9090) == f"{socket.gethostname()}:9090"
    config = build_config({}, {**FLAGS, "listen": "[::]:0"})
    assert advertised_address(config, 4242) == f"{socket.gethostname()}:4242"
    config = build_config({}, {**FLAGS, "listen": "10.1.2.3:0"})
    assert advertised_address(config, 4242) == "10.1.2.3:4242"


def test_advertise_host_or_host_and_port() -> None:
    """advertise = "HOST" takes the real listen port; "HOST:PORT" is used as given."""
    config = build_config({}, {**FLAGS, "advertise": "gw-1.internal"})
    assert advertised_address(config, 9090) == "gw-1.internal:9090"
    config = build_config({"gateway": {"advertise": "lb.example:19090"}}, FLAGS)
    assert advertised_address(config, 9090) == "lb.example:19090"


@pytest.mark.parametrize("bad", ["", "host:notaport", "host:0", "a b"])
def test_bad_advertise_is_a_config_error(bad: str) -> None:
    """A malformed advertise names the key."""
    with pytest.raises(ConfigError, match=r"^gateway\.advertise: "):
        build_config({"gateway": {"advertise": bad}}, FLAGS)


def test_preview_is_per_method_and_bounded() -> None:
    """[methods.X] preview sets that method's preview length; out of range or set for every
    method at once it is refused (arguments may hold personal data)."""
    config = build_config({"methods": {"getPoem": {"preview": 32}}}, FLAGS)
    assert config.methods["getPoem"].preview == 32
    assert build_config({"methods": {"m": {"mode": "coalesce"}}}, FLAGS).methods["m"].preview == 0
    with pytest.raises(ConfigError, match=r"^methods\.getPoem\.preview: expected 0\.\.256"):
        build_config({"methods": {"getPoem": {"preview": 1000}}}, FLAGS)
    with pytest.raises(ConfigError, match=r"^methods\.\*\.preview: set preview per method"):
        build_config({"methods": {"*": {"preview": 8}}}, FLAGS)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_health_probe(http_port: int) -> None:
    """health is OK for an HTTP 200 or an accepting TCP port; anything else says why."""
    assert probe(f"http://127.0.0.1:{http_port}/healthz", 2.0) is None
    assert probe(f"tcp://127.0.0.1:{http_port}", 2.0) is None
    assert probe(f"http://127.0.0.1:{http_port}/other", 2.0) == (
        f"http://127.0.0.1:{http_port}/other: HTTP 503"
    )
    closed = free_port()
    assert probe(f"tcp://127.0.0.1:{closed}", 2.0) is not None
    assert probe(f"http://127.0.0.1:{closed}/healthz", 2.0) is not None
    assert probe("ftp://x", 2.0) == "expected http://, https:// or tcp://, got 'ftp://x'"


def test_health_command_exit_codes(http_port: int, run: Callable[..., Done]) -> None:
    """`gateway health URL` exits 0 when healthy, else 1 with one line on stderr."""
    assert run("health", f"http://127.0.0.1:{http_port}/healthz").returncode == 0
    failed = run("health", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1


def test_new_commands_parse() -> None:
    """dashboard and status share the Redis view flags; dashboard shows two minutes."""
    args = build_parser().parse_args(["dashboard", "--redis", "redis://r:6379/0"])
    assert (args.listen, args.history, args.hot_minutes) == ("127.0.0.1:8080", 120, 5)
    args = build_parser().parse_args(["status", "--redis", "redis://r", "--history", "5"])
    assert args.history == 5
