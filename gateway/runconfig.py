"""The config a ``gateway serve`` / ``check-config`` process runs by: file plus flags.

Apart from gateway.app so that the supervisor of a multi-worker node (gateway.workers), which
gateway.app starts, can re-read the config on SIGHUP without importing gateway.app back.
"""

from __future__ import annotations

import argparse

from gateway.config import GatewayConfig, load_config_file
from gateway.workers.role import WorkerRole


def load_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The config of ``serve`` / ``check-config``: the file (may be None) plus the flags."""
    return load_file_from_args(args)[0]


def load_file_from_args(args: argparse.Namespace) -> tuple[GatewayConfig, str | None]:
    """:func:`load_from_args`, plus the SHA-256 of the config file (None without one).

    A worker of a multi-worker node adjusts the config its way (see gateway.workers): a
    reload then compares like with like and reports no spurious "restart needed"."""
    names = ("listen", "backend", "node_id", "admin", "advertise", "redis", "log_format", "workers")
    overrides = {name: getattr(args, name) for name in names}
    config, sha256 = load_config_file(args.config, overrides)
    worker = WorkerRole.from_args(args)
    return (config if worker is None else worker.configure(config)), sha256
