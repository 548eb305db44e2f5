"""A matchmaker over Redis always stops: ``aclose`` ends the sweep even when the
cancellation is lost.

redis-py (8.1, on CPython 3.11) can consume a task cancellation that lands while a
command is in flight: the command then completes normally and the sweep loop went on
sweeping, so ``aclose`` waited for it forever (seen as a replica ignoring SIGINT in the
concurrency test and as an API test whose teardown hung now and then). Cancelling the
sweep at random moments used to hang within a few tries.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from matchmaker.config import MatchmakerSettings
from matchmaker.records import MemorySink
from matchmaker.server import build_matchmaker

pytestmark = pytest.mark.integration


async def test_aclose_stops_the_sweep_whenever_it_lands(redis_url: str) -> None:
    rng = random.Random(7)
    for _ in range(40):
        settings = MatchmakerSettings(
            state_url=redis_url,
            key_prefix=f"t{uuid.uuid4().hex[:8]}",
            session_token_secret="s" * 40,
            sweep_interval_s=0.002,
        )
        mm = build_matchmaker(settings, sink=MemorySink())
        mm.start()
        task = mm._task  # noqa: SLF001 - the sweep task itself
        assert task is not None
        await asyncio.sleep(rng.uniform(0.002, 0.03))
        closing = asyncio.ensure_future(mm.aclose())
        await asyncio.wait({closing}, timeout=5)  # a bound that cancels nothing
        stopped = closing.done() and task.done()
        # Without the fix the sweep survives (and aclose waits on it): cancel it until it
        # dies, so that a failure fails this test instead of hanging the event loop.
        for _ in range(500):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.01)
        await asyncio.wait({closing}, timeout=5)
        assert stopped, "aclose() did not stop the sweep within 5 s"
