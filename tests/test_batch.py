"""ScriptBatcher on a real redis-server: one script call per reactor turn, one reply each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.task import deferLater

from gateway.cluster.batch import BatchedScript, ScriptBatcher, hash_tag
from gateway.cluster.scripts import Script, ScriptRunner
from gateway.localredis import RedisServer
from gateway.redis.connection import RedisCommandError, RedisConnector

pytestmark = pytest.mark.integration

# Each item: KEYS[k], ARGV[a]; its reply: "<key>=<arg>" (or an error for the arg "fail").
ECHO = Script(
    "echo",
    """
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 0, #KEYS / nk - 1 do
  local a = ARGV[2 + i * na + 1]
  if a == 'fail' then return redis.error_reply('ERR asked to fail') end
  out[i + 1] = KEYS[i * nk + 1] .. '=' .. a
end
return out
""",
)
ONE = BatchedScript(ECHO, 1, 1)


@pytest_twisted.async_yield_fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[RedisConnector]:
    conn = RedisConnector(redis_server.url, reactor)
    conn.start()
    try:
        while not conn.is_up:
            await deferLater(reactor, 0.01, lambda: None)
        yield conn
    finally:
        await conn.stop()


@pytest_twisted.ensureDeferred
async def test_steps_of_one_turn_are_one_script_call(redis: RedisConnector) -> None:
    """Three steps queued in one turn go out as one EVALSHA, each getting its own reply."""
    batcher = ScriptBatcher(redis, ScriptRunner(redis), reactor, per_slot=False)
    replies = await gatherResults([batcher.run(ONE, [f"k{i}"], [f"v{i}"]) for i in range(3)])
    assert replies == [b"k0=v0", b"k1=v1", b"k2=v2"]
    assert (batcher.batches, batcher.items) == (1, 3)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_step_leaves_the_others_answered(redis: RedisConnector) -> None:
    """A step its caller cancelled before the batch was answered does not stop the others."""
    batcher = ScriptBatcher(redis, ScriptRunner(redis), reactor, per_slot=False)
    steps = [batcher.run(ONE, [f"k{i}"], [f"v{i}"]) for i in range(3)]
    steps[1].cancel()
    with pytest.raises(CancelledError):
        await steps[1]
    assert [await steps[0], await steps[2]] == [b"k0=v0", b"k2=v2"]


@pytest_twisted.ensureDeferred
async def test_an_error_reply_fails_every_step_of_the_batch(redis: RedisConnector) -> None:
    """Redis answering a batch with an error fails each of its steps with that error."""
    batcher = ScriptBatcher(redis, ScriptRunner(redis), reactor, per_slot=False)
    steps = [batcher.run(ONE, ["k0"], ["v0"]), batcher.run(ONE, ["k1"], ["fail"])]
    for step in steps:
        with pytest.raises(RedisCommandError, match="asked to fail"):
            await step


@pytest_twisted.ensureDeferred
async def test_per_slot_batches_split_by_hash_tag(redis: RedisConnector) -> None:
    """With per_slot, steps of different hash tags go in different script calls."""
    batcher = ScriptBatcher(redis, ScriptRunner(redis), reactor, per_slot=True)
    keys = ["a{01}:x", "a{02}:x", "a{01}:y"]
    replies = await gatherResults([batcher.run(ONE, [k], ["v"]) for k in keys])
    assert replies == [f"{k}=v".encode() for k in keys]
    assert (batcher.batches, batcher.items) == (2, 3)
    assert [hash_tag(k) for k in keys] == ["01", "02", "01"]


@pytest_twisted.ensureDeferred
async def test_gets_of_one_turn_are_one_mget(redis: RedisConnector) -> None:
    """GETs queued in one turn are one MGET; a missing key answers None."""
    await redis.execute("SET", "g1", "one")
    batcher = ScriptBatcher(redis, ScriptRunner(redis), reactor, per_slot=False)
    assert await gatherResults([batcher.get("g1"), batcher.get("g2")]) == [b"one", None]
    assert batcher.batches == 1
