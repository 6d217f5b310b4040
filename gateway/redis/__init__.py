"""gateway.redis: see issue 18 (layout)."""
