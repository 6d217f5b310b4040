"""Pure Deferred building blocks; nothing here imports the global reactor.

May import: gateway.reactors.
"""

from gateway.primitives.asyncdict import DeferredDict
from gateway.primitives.coalescer import Coalescer, UnhashableKey, coalesced
from gateway.primitives.deadlines import Deadline, Deadlines
from gateway.primitives.dispatch import DispatchQueue, QueueFull, QueueStopped
from gateway.primitives.pool import DeferredPool
from gateway.primitives.race import AllAttemptsFailed, first_success
from gateway.primitives.retry import RetryingCall, exponential_backoff

__all__ = [
    "AllAttemptsFailed",
    "Coalescer",
    "Deadline",
    "Deadlines",
    "DeferredDict",
    "DeferredPool",
    "DispatchQueue",
    "QueueFull",
    "QueueStopped",
    "RetryingCall",
    "UnhashableKey",
    "coalesced",
    "exponential_backoff",
    "first_success",
]
