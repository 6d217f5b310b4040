"""Multi-worker nodes (``workers = N``): N processes serve one node's client port.

* :mod:`.supervisor` - ``gateway serve`` with ``workers > 1``: binds the port, starts the
  workers, serves the node's admin endpoint and heartbeat, drains on SIGTERM;
* :mod:`.pool` - starts, watches and restarts the worker processes, forwards signals;
* :mod:`.sockets` - one SO_REUSEPORT listening socket per worker, bound by the supervisor;
* :mod:`.private_redis` - the node's own redis-server on a UNIX socket (no ``[redis]``);
* :mod:`.aggregate` - the node's counters, metrics and health from its workers' readings;
* :mod:`.fetch` - a reading of one worker, over its private admin socket;
* :mod:`.role` - the worker side: ``gateway serve`` started by a supervisor.

May import: gateway.proxy, gateway.cluster, gateway.ops, gateway.redis,
gateway.runconfig, gateway.config, gateway.localredis, gateway.logs, gateway.observe,
gateway.stats.
"""
