"""A fair share of a backend for every client connection.

Calls waiting for a backend slot wait in a :class:`FairQueue`: one FIFO per client
connection, served round-robin, one call per client per turn. Every call costs one slot for
as long as it is underway, so this is deficit round-robin with equal costs: a burst from one
client delays another client's call by about one service time per competing client, never by
the burst.

Which client a backend call belongs to travels implicitly (:func:`client_scope`): the server
opens a scope around each call it hands to the handler, the handler captures it and reopens
it where the backend is called - for a flight's leader that may be much later, once Redis has
decided - and the backend reads it (:func:`current_client`) when the call is submitted. Only a
leader's call reaches the backend, so a joined or cached call costs its client no slot.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

T = TypeVar("T")

# None: a call no client connection made (a stale-while-revalidate refresh, a test): those
# share one queue of their own.
_CLIENT: ContextVar[Hashable | None] = ContextVar("gateway_client", default=None)


def current_client() -> Hashable | None:
    """The client connection the call being made now belongs to (None: none)."""
    return _CLIENT.get()


@contextmanager
def client_scope(client: Hashable | None) -> Iterator[None]:
    """Backend calls made inside belong to ``client``."""
    token = _CLIENT.set(client)
    try:
        yield
    finally:
        _CLIENT.reset(token)


class FairQueue(Generic[T]):
    """Waiting items per client, popped round-robin across clients.

    Items that ended while waiting (their caller left, their timeout passed) are reported
    with :meth:`discard` and skipped lazily when reached; ``alive`` tells which are live.
    """

    def __init__(self, alive: Callable[[T], bool]) -> None:
        self._alive = alive
        self._queues: dict[Hashable | None, deque[T]] = {}
        self._counts: dict[Hashable | None, int] = {}  # live items per client
        self._ring: deque[Hashable | None] = deque()  # clients with a queue, in turn order
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def waiting(self, client: Hashable | None) -> int:
        return self._counts.get(client, 0)

    def push(self, client: Hashable | None, item: T) -> None:
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
            self._ring.append(client)
        queue.append(item)
        self._counts[client] = self._counts.get(client, 0) + 1
        self._len += 1

    def discard(self, client: Hashable | None) -> None:
        """One of ``client``'s items ended while waiting (its entry stays, skipped later)."""
        left = self._counts[client] - 1
        if left:
            self._counts[client] = left
        else:
            del self._counts[client]
        self._len -= 1

    def pop(self, eligible: Callable[[Hashable | None], bool]) -> T | None:
        """The next live item of the next client in turn that is ``eligible``; None if no
        eligible client has one. The client served goes to the back of the ring."""
        ring = self._ring
        for _ in range(len(ring)):
            client = ring[0]
            queue = self._queues[client]
            while queue and not self._alive(queue[0]):
                queue.popleft()
            if not queue:
                ring.popleft()
                del self._queues[client]
                continue
            ring.rotate(-1)
            if not eligible(client):
                continue
            self.discard(client)
            return queue.popleft()
        return None

    def heaviest(self) -> Hashable | None:
        """The client with the most live items waiting (the queue must not be empty)."""
        return max(self._counts, key=self._counts.__getitem__)

    def pop_newest(self, client: Hashable | None) -> T:
        """Take ``client``'s newest live item (it has one): the one to refuse first."""
        queue = self._queues[client]
        while not self._alive(queue[-1]):
            queue.pop()
        self.discard(client)
        return queue.pop()

    def drain(self) -> list[T]:
        """Every live item, emptying the queue."""
        items = [item for queue in self._queues.values() for item in queue if self._alive(item)]
        self._queues.clear()
        self._counts.clear()
        self._ring.clear()
        self._len = 0
        return items
