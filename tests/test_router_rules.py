"""Which policy and backend a method entry applies to (issue 16, "also check": README's
``[methods."Poetry:getPoem"] backend = …`` example claimed it routes plain callers).

The rule, on the real Router and config parser: a ``"Service:method"`` entry applies only
to callers that name that service (multiplexed); a plain caller of ``method`` uses
``methods.method``, else ``methods."*"``. So a plain caller is routed by ``methods.method``.
"""

from __future__ import annotations

from typing import Any

from gateway.config import build_config
from gateway.proxy.router import Router

FLAGS: dict[str, str | None] = {"listen": "127.0.0.1:0"}


def router(methods: dict[str, Any]) -> Router:
    return Router(
        build_config(
            {
                "backends": {
                    "default": {"address": "127.0.0.1:9001"},
                    "poetry": {"address": "127.0.0.1:9002"},
                },
                "methods": methods,
            },
            FLAGS,
        )
    )


def test_a_service_method_entry_never_applies_to_plain_callers() -> None:
    """``methods."Poetry:getPoem"`` with a backend and cache mode: multiplexed callers of
    Poetry:getPoem get both, a plain caller of getPoem gets neither (default backend, the
    default policy)."""
    r = router({"Poetry:getPoem": {"backend": "poetry", "mode": "cache", "ttl": 60}})
    multiplexed = r.resolve("Poetry", "getPoem")
    assert (multiplexed.backend, multiplexed.policy.mode) == ("poetry", "cache")
    plain = r.resolve(None, "getPoem")
    assert (plain.backend, plain.policy.mode) == ("default", "coalesce")


def test_a_plain_method_entry_routes_plain_callers() -> None:
    """``methods.getPoem`` with a backend routes plain callers there (and multiplexed callers
    of any service without an entry of their own)."""
    r = router({"getPoem": {"backend": "poetry"}, "Other:getPoem": {"mode": "passthrough"}})
    assert r.resolve(None, "getPoem").backend == "poetry"
    assert r.resolve("Poetry", "getPoem").backend == "poetry"
    other = r.resolve("Other", "getPoem")  # its own entry wins, whole: no backend of its own
    assert (other.backend, other.policy.mode) == ("default", "passthrough")
