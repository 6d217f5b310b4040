"""A Thrift coalescing gateway: identical in-flight calls reach the backend once."""

__version__ = "0.1.0"
