"""``gateway demo``: a local multi-node cluster and a thundering herd, for newcomers.

Modules: ``processes`` (start/stop the cluster), ``probe`` (admin endpoint readings),
``progress`` (the live line), ``summary`` (the result), ``run`` (the command itself).

May import: gateway.processes (it drives real node processes), gateway.ops,
gateway.localredis, clients.
"""

from gateway.demo.run import run_demo

__all__ = ["run_demo"]
