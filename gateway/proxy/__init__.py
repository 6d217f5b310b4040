"""The Twisted server, routing, per-method policy and the upstream connection pool.

May import: gateway.thrift, gateway.config, gateway.contracts, gateway.errors,
gateway.flights, gateway.observe, gateway.primitives, gateway.reactors, gateway.stats,
gateway.__version__.
"""
