"""The shipped Prometheus config, alert rules and Grafana dashboard are valid as shipped.

``promtool`` comes with Debian's ``prometheus`` package; tests that need it skip without it.
(tests/test_ops_live.py runs a real Prometheus with these rules against live nodes.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from gateway.processes import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
GRAFANA = REPO_ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
EXPORTED = {  # metric families a node's /metrics has (README, "Admin endpoint and metrics")
    "up",  # Prometheus' own, per target
    "gateway_calls_total",
    "gateway_backend_calls_total",
    "gateway_coalesced_local_total",
    "gateway_coalesced_remote_total",
    "gateway_cache_hits_total",
    "gateway_errors_total",
    "gateway_errors_by_kind_total",
    "gateway_in_flight",
    "gateway_oldest_in_flight_seconds",
    "gateway_redis_mode",
    "gateway_call_latency_seconds_bucket",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS
    )


def test_promtool_accepts_the_config() -> None:
    """`promtool check config` passes prometheus.yml (and the rule file it loads)."""
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` passes alerts.yml."""
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_fire_when_they_should() -> None:
    """`promtool test rules`: node down, Redis local-only > 1 min, ratio collapsed, a stuck
    call and a high error rate each fire on made-up series (and not on the healthy ones)."""
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert alerts == tested  # every alert has a test
    assert {
        "GatewayNodeDown",
        "GatewayRedisLocalOnly",
        "GatewayCoalescingRatioCollapsed",
        "GatewayCallStuck",
    } <= alerts


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    """Every panel queries the Prometheus data source variable, and every metric it names is
    one the gateway exports."""
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        exprs += [target["expr"] for target in panel["targets"]]
    named = {
        word for expr in exprs for word in re.findall(r"\b(gateway_\w+|up)\b(?=\s*[{\[)])", expr)
    }
    assert named and named <= EXPORTED, named - EXPORTED
