"""The Twisted server, routing, per-method policy and the upstream connection pool."""
