"""docker-compose.yml describes a working 3-node cluster (checked statically: no Docker here)."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from gateway.cli import build_parser
from gateway.config import load_config
from gateway.processes import REPO_ROOT

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


GATEWAY_IMAGE = "thrift-gateway:local"
THIRD_PARTY = {"redis", "prometheus", "grafana"}  # services running someone else's image


def serve_nodes(services: dict[str, Any]) -> dict[str, Any]:
    return {
        name: gateway_args(s)
        for name, s in services.items()
        if str(s.get("command", "")).startswith("gateway serve")
    }


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD", test  # exec form: no shell needed
    return [str(word) for word in test[1:]]


def test_one_image_built_once_serves_every_gateway_service() -> None:
    """Exactly one service builds the image; every other non-third-party service runs that
    same image instead of building its own."""
    services = compose()
    builders = [name for name, s in services.items() if "build" in s]
    assert len(builders) == 1
    assert services[builders[0]]["image"] == GATEWAY_IMAGE
    for name, service in services.items():
        if name not in THIRD_PARTY:
            assert service.get("image") == GATEWAY_IMAGE, name


def test_every_long_running_service_has_a_real_healthcheck() -> None:
    """Each service that stays up has an exec-form healthcheck; ours use `gateway health`
    (which the real parser accepts) against the port that service listens on."""
    services = compose()
    for name, service in services.items():
        if service.get("profiles"):
            continue  # one-shot tools and optional extras
        argv = healthcheck_argv(service)
        if argv[0] != "gateway":
            assert name in THIRD_PARTY, name
            continue
        probe = build_parser().parse_args(argv[1:])
        assert probe.command == "health"
        args = gateway_args(service)
        port = int(probe.target.rpartition(":")[2].split("/")[0])
        if args.command == "serve":
            assert probe.target.startswith("http://") and probe.target.endswith("/healthz")
            assert port == int(args.admin.rpartition(":")[2]), name
        elif args.command == "dashboard":
            assert probe.target.endswith("/healthz")
            assert port == int(args.listen.rpartition(":")[2]), name
        else:
            assert probe.target.startswith("tcp://"), name
            assert port == listen_port(service), name


def conditions(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    assert isinstance(depends, dict), "depends_on must name conditions, not just services"
    return {name: spec["condition"] for name, spec in depends.items()}


def test_nothing_starts_before_what_it_needs_is_healthy() -> None:
    """Nodes wait for Redis and both backends to be healthy, the herd for all three nodes,
    the dashboard and status for Redis; every condition names a service with a healthcheck;
    Prometheus depends on nothing (it must alert whatever else is broken)."""
    services = compose()
    for name, service in services.items():
        for target, condition in conditions(service).items():
            assert condition == "service_healthy", (name, target)
            assert "healthcheck" in services[target], target
    for name in serve_nodes(services):
        assert set(conditions(services[name])) == {"redis", "supervisor-backend", "poetry-backend"}
    assert set(conditions(services["herd"])) == set(serve_nodes(services))
    assert set(conditions(services["dashboard"])) == {"redis"}
    assert set(conditions(services["status"])) == {"redis"}
    assert "depends_on" not in services["prometheus"]


def test_nodes_advertise_their_service_address() -> None:
    """What a node puts in its heartbeat (advertise, else listen with 0.0.0.0 replaced by
    the host name) is its service name and Thrift port: reachable from the other services."""
    services = compose()
    for name, args in serve_nodes(services).items():
        service = services[name]
        config = load_config(
            str(REPO_ROOT / args.config.removeprefix(IMAGE_ROOT)),
            {"listen": args.listen, "node_id": args.node_id, "advertise": args.advertise},
        )
        port = int(args.listen.rpartition(":")[2])
        if config.advertise is None:
            assert config.listen.host == "0.0.0.0"
            assert service["hostname"] == name  # what gethostname() returns in the container
        advertised = config.advertise or f"{service['hostname']}:{port}"
        host, _, advertised_port = advertised.rpartition(":")
        assert (host, int(advertised_port)) == (name, port)


def test_nodes_read_their_config_from_the_mounted_deploy_directory() -> None:
    """Each node's --config lies in the host's deploy/ directory, mounted read-only, so an
    edited deploy/gateway.toml reaches the node on SIGHUP (`docker compose kill -s HUP`)."""
    services = compose()
    for name, args in serve_nodes(services).items():
        assert "./deploy:/app/deploy:ro" in services[name]["volumes"], name
        assert args.config.startswith("/app/deploy/"), name


def test_prometheus_scrapes_exactly_the_nodes_admin_ports() -> None:
    """The mounted prometheus.yml scrapes every node's admin endpoint, and loads the alerts
    from the same mounted directory."""
    services = compose()
    prometheus = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    expected = {
        f"{name}:{args.admin.rpartition(':')[2]}" for name, args in serve_nodes(services).items()
    }
    assert targets == expected


def test_dashboard_service_reads_the_shared_redis() -> None:
    """The dashboard service runs `gateway dashboard` on the compose Redis, published."""
    services = compose()
    args = gateway_args(services["dashboard"])
    assert args.command == "dashboard" and args.redis == "redis://redis:6379/0"
    port = args.listen.rpartition(":")[2]
    assert f"{port}:{port}" in services["dashboard"]["ports"]


def test_herd_command_parses() -> None:
    """The herd service's command passes clients.herd's own argument parser."""
    from clients.herd import build_parser as herd_parser

    argv = shlex.split(compose()["herd"]["command"])
    assert argv[:3] == ["python", "-m", "clients.herd"]
    herd_parser().parse_args(argv[3:])


def test_grafana_provisioning_files_exist() -> None:
    """The optional grafana service mounts provisioning and dashboards that exist."""
    grafana = compose()["grafana"]
    for volume in grafana["volumes"]:
        source = volume.split(":")[0]
        assert (REPO_ROOT / source).exists(), source
