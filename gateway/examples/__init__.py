"""Example Thrift services, their backend server and handlers (demo and test fixtures).

May import: gateway.thrift, gateway.config.
"""
