"""Ops tools against one live 3-node cluster under a herd: dashboard in Chromium, Prometheus.

One module-scoped cluster (redis-server, two example backends, three ``gateway serve``
nodes), a ``gateway dashboard`` and, where Debian's ``prometheus`` is installed, a real
Prometheus scraping two of the nodes every second; the herd runs while the tests look.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import Browser, find_chromium

from gateway.demo.processes import DemoCluster, Settings
from gateway.localredis import free_port
from gateway.processes import REPO_ROOT, ManagedProcess, gateway_cli, start_process

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
GRAFANA_DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
RATIO_QUERY = "sum(rate(gateway_calls_total[1m])) / sum(rate(gateway_backend_calls_total[1m]))"


@dataclass
class Live:
    cluster: DemoCluster
    dashboard_url: str
    herd: ManagedProcess
    prometheus_url: str | None
    workdir: Path


def prometheus_config(targets: list[str], workdir: Path) -> Path:
    """The shipped prometheus.yml, scraping ``targets`` every second, with the shipped rules."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(targets: list[str], workdir: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
    process = start_process(
        [
            "prometheus",
            f"--config.file={prometheus_config(targets, workdir)}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
    )
    return process, f"http://127.0.0.1:{port}"


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def wait_ready(url: str, process: ManagedProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{process.argv[0]} exited: {process.describe_output()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout}s: {process.describe_output()}")


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    workdir = Path(tempfile.mkdtemp(prefix="gw-ops-live-"))
    cluster = DemoCluster(
        Settings(nodes=3, clients=60, keys=3, poems=2, rounds=40, delay=0.1, timeout=10)
    )
    extra: list[ManagedProcess] = []
    try:
        cluster.start(lambda _: None)
        dashboard = start_process(
            gateway_cli("dashboard", "--redis", cluster.redis_url, "--listen", "127.0.0.1:0")
        )
        extra.append(dashboard)
        prometheus_url = None
        if shutil.which("prometheus"):
            admin = [f"127.0.0.1:{node.admin_port}" for node in cluster.nodes[:2]]
            prometheus, prometheus_url = start_prometheus(admin, workdir)
            extra.append(prometheus)
            wait_ready(f"{prometheus_url}/-/ready", prometheus)
            time.sleep(1.5)  # a scrape or two of the idle nodes: rates need a before
        dashboard_url = dashboard.wait_for_line(r"listening on (http://\S+)", timeout=20)[1]
        herd = cluster.start_herd()
        yield Live(cluster, dashboard_url, herd, prometheus_url, workdir)
    finally:
        for process in extra:
            process.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_dashboard_renders_live_cluster_in_chromium(live: Live, tmp_path: Path) -> None:
    """In a real headless Chromium the page shows the 3 nodes alive, a non-zero ratio and a
    drawn chart, refreshes by itself, and loads nothing from another origin."""
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    with Browser(binary) as browser:
        browser.navigate(live.dashboard_url)
        browser.wait_for(
            "document.querySelectorAll('#nodes tbody tr.alive').length === 3"
            " && parseFloat(document.getElementById('ratio').textContent) > 0"
            " && document.querySelectorAll('#chart polyline.calls').length > 0"
            " && parseFloat(document.getElementById('calls-rate').textContent) > 0",
            timeout=20,
        )
        updates = browser.evaluate("window.gatewayDashboard.updates")
        browser.wait_for(f"window.gatewayDashboard.updates > {updates}", timeout=5)
        nodes = browser.evaluate(
            "[...document.querySelectorAll('#nodes tbody tr')]"
            ".map(r => [r.cells[0].textContent, r.cells[1].textContent, r.cells[4].textContent])"
        )
        assert nodes == [[f"node-{i}", "alive", "cluster"] for i in (1, 2, 3)]
        assert browser.evaluate(
            "performance.getEntriesByType('resource')"
            ".every(e => e.name.startsWith(location.origin))"
        )
        assert browser.evaluate("document.getElementById('problem').hidden") is True
        if os.environ.get("GATEWAY_SCREENSHOT"):
            time.sleep(4)  # a fuller chart for the README's picture
        shot = tmp_path / "dashboard.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
        if os.environ.get("GATEWAY_SCREENSHOT"):  # refresh the README's picture on purpose
            shutil.copy(shot, os.environ["GATEWAY_SCREENSHOT"])


def test_dashboard_api_is_the_status_report(live: Live) -> None:
    """/api/status holds what `gateway status --json` prints: nodes (at the addresses they
    advertise), in_flight, hot_keys and history (every node's recent counter deltas, read
    back from its Redis stream)."""
    deadline = time.monotonic() + 10
    while True:
        report = get_json(live.dashboard_url + "api/status")
        history = report["history"]
        if all(sum(e["calls"] for e in history.get(f"node-{i}", [])) for i in (1, 2, 3)):
            break
        assert time.monotonic() < deadline, history
        time.sleep(0.3)
    assert report["redis_mode"] == "standalone"
    # What each node advertises: its concrete listen host and real (OS-chosen) port.
    addresses = {n["node_id"]: n["address"] for n in report["nodes"]}
    assert addresses == {node.node_id: node.address for node in live.cluster.nodes}
    assert isinstance(report["in_flight"], list) and isinstance(report["hot_keys"], list)
    status = subprocess.run(
        [*gateway_cli("status", "--redis", live.cluster.redis_url, "--json")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert set(json.loads(status.stdout)) == set(report)


def prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    reply = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def test_prometheus_computes_the_coalescing_ratio(live: Live) -> None:
    """A real Prometheus scraping two nodes answers the cluster ratio query with a value
    above 1, loads the shipped alert rules healthy, and evaluates every Grafana panel query."""
    if live.prometheus_url is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    url = live.prometheus_url
    deadline = time.monotonic() + 30
    while True:
        result = prometheus_query(url, RATIO_QUERY)
        if result and float(result[0]["value"][1]) > 1:
            break
        assert time.monotonic() < deadline, f"no ratio yet: {result}"
        time.sleep(0.5)
    targets = get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
    assert sorted(t["health"] for t in targets) == ["up", "up"]
    groups = get_json(f"{url}/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 6 and all(rule["health"] == "ok" for rule in rules), rules
    for panel in json.loads(GRAFANA_DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            prometheus_query(url, target["expr"])  # asserts the query parses and evaluates
