"""Routing: which backend serves a call, under which upstream name, with which policy.

The route is also where a call's identity comes from (:meth:`Route.identify`): the backend,
the name the message is sent upstream under, and the arguments the method's policy keys on.
The upstream message is built from the same route, so the key always describes exactly what
the backend receives. A method's ``key_headers`` (THeader info headers that identify a call,
such as a tenant) join the identity too; other info headers never do. So does the caller's
verified client certificate, for a method with ``key_peer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.contracts import MethodPolicy
from gateway.errors import UnknownRoute
from gateway.thrift import (
    CallIdentity,
    HeaderInfo,
    Limits,
    MessageHeader,
    ProtocolKind,
    call_identity,
    key_headers,
)


@dataclass(frozen=True)
class Route:
    backend: str  # backend name
    upstream_name: str  # message name sent to the backend, exactly
    policy: MethodPolicy
    preview: int = 0  # characters of the arguments shown with hot keys (0: never)
    key_headers: tuple[bytes, ...] = ()  # the policy's key_headers, as header names on the wire
    # The method has a [methods] entry of its own: it always gets its own metric labels, so
    # clients inventing method names cannot push it into "_other".
    configured: bool = False

    def identify(
        self,
        message: bytes,
        protocol: ProtocolKind,
        header: MessageHeader,
        limits: Limits,
        info: HeaderInfo | None = None,
        peer: bytes = b"",
    ) -> CallIdentity:
        """The identity of ``message`` on this route (walks and validates its arguments);
        ``info`` is its THeader frame, whose ``key_headers`` are part of it; ``peer`` its
        caller's verified certificate, part of it for ``key_peer`` methods."""
        return call_identity(
            message,
            protocol,
            backend=self.backend,
            upstream_name=self.upstream_name,
            exclude_fields=self.policy.exclude_fields,
            limits=limits,
            header=header,
            headers=key_headers(info, self.key_headers) if self.key_headers else b"",
            peer=peer if self.policy.key_peer else b"",
        )


class Router:
    """Resolves a client's message name to a :class:`Route`.

    Backend: the method's own ``backend`` setting, else the multiplexed service's route, else
    the default backend. Policy: ``methods."Service:method"``, else ``methods.method``, else
    ``methods."*"``. Routes are memoised per name: the set of names is bounded by the IDL.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._memo: dict[tuple[str | None, str], Route] = {}

    def resolve(self, service: str | None, method: str) -> Route:
        memo_key = (service, method)
        route = self._memo.get(memo_key)
        if route is None:
            route = self._resolve(service, method)
            if len(self._memo) < 10_000:  # a client inventing names must not grow us forever
                self._memo[memo_key] = route
        return route

    def _resolve(self, service: str | None, method: str) -> Route:
        cfg = self._config
        method_cfg = None
        if service is not None:
            method_cfg = cfg.methods.get(f"{service}:{method}")
        if method_cfg is None:
            method_cfg = cfg.methods.get(method)
        policy = method_cfg.policy if method_cfg is not None else cfg.default_policy
        preview = method_cfg.preview if method_cfg is not None else 0
        backend_name = method_cfg.backend if method_cfg is not None else None
        if backend_name is None and service is not None:
            backend_name = cfg.routes.get(service)
        if backend_name is None:
            backend_name = cfg.default_backend
        if backend_name is None:
            label = f"{service}:{method}" if service else method
            raise UnknownRoute(f"gateway: no backend routes {label!r}")
        backend = cfg.backends[backend_name]
        upstream_service = service or backend.service
        if backend.multiplexed and upstream_service:
            upstream_name = f"{upstream_service}:{method}"
        else:
            upstream_name = method
        return Route(
            backend=backend_name,
            upstream_name=upstream_name,
            policy=policy,
            preview=preview,
            key_headers=tuple(sorted(name.encode() for name in policy.key_headers)),
            configured=method_cfg is not None,
        )
