"""The Thrift wire layer: pure functions on bytes (no Twisted, no Redis)."""
