"""Example clients for the gateway and its example backends (blocking, Twisted, herd)."""
