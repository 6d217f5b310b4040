"""gateway.ops: see issue 18 (layout)."""
