"""Cross-node coordination through Redis: leases, shared results, pub/sub, stats keys."""
