"""docker-compose.yml describes a working 3-node cluster (checked statically: no Docker here)."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from gateway.cli import build_parser
from gateway.config import load_config
from gateway.testing import REPO_ROOT

IMAGE_ROOT = "/app/"  # where the Dockerfile copies the repository


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    return data["services"]


def gateway_args(service: dict[str, Any]) -> Any:
    argv = shlex.split(service["command"])
    assert argv[0] == "gateway", service["command"]
    return build_parser().parse_args(argv[1:])


def listen_port(service: dict[str, Any]) -> int:
    return int(gateway_args(service).listen.rpartition(":")[2])


def test_every_gateway_command_parses() -> None:
    """Each service running `gateway ...` passes the real argument parser."""
    services = compose()
    commands = [s for s in services.values() if str(s.get("command", "")).startswith("gateway")]
    assert len(commands) >= 6  # 3 nodes, 2 backends, status
    for service in commands:
        gateway_args(service)


def test_three_nodes_with_distinct_ids_share_redis() -> None:
    """Three serve nodes exist, with distinct node ids, all pointing at the redis service."""
    services = compose()
    nodes = {
        n: gateway_args(s)
        for n, s in services.items()
        if s.get("command", "").startswith("gateway serve")
    }
    assert len(nodes) == 3
    assert len({a.node_id for a in nodes.values()}) == 3
    for args in nodes.values():
        assert args.redis == "redis://redis:6379/0"
        assert "redis" in services  # the host name in the URL is a service


def test_node_config_loads_and_backends_line_up() -> None:
    """The mounted config parses, and each backend address names a service listening there."""
    services = compose()
    for name, service in services.items():
        if not service.get("command", "").startswith("gateway serve"):
            continue
        args = gateway_args(service)
        config = load_config(
            str(REPO_ROOT / args.config.removeprefix(IMAGE_ROOT)),
            {"listen": args.listen, "node_id": args.node_id, "redis": args.redis},
        )
        for backend in config.backends.values():
            target = services[backend.address.host]
            assert listen_port(target) == backend.address.port, (name, backend.name)


def test_published_ports_are_unique_and_map_to_listeners() -> None:
    """Host ports never collide, and each node publishes its listen and admin ports."""
    services = compose()
    host_ports: list[str] = []
    for service in services.values():
        for mapping in service.get("ports", []):
            host, _, container = mapping.partition(":")
            host_ports.append(host)
            if service.get("command", "").startswith("gateway serve"):
                args = gateway_args(service)
                assert container in (args.listen.rpartition(":")[2], args.admin.rpartition(":")[2])
    assert len(host_ports) == len(set(host_ports))


def test_herd_targets_are_the_gateway_nodes() -> None:
    """The load client's --targets are exactly the gateway services at their listen ports."""
    services = compose()
    argv = shlex.split(services["herd"]["command"])
    targets = argv[argv.index("--targets") + 1].split(",")
    nodes = {n for n, s in services.items() if s.get("command", "").startswith("gateway serve")}
    assert {t.partition(":")[0] for t in targets} == nodes
    for target in targets:
        host, _, port = target.partition(":")
        assert listen_port(services[host]) == int(port)
