"""A store operation's time limit (matchmaker/deadlines.py under ``guarded``): past it
the caller gets BackendUnavailable and its task is left as it was; a cancellation from
anyone else stays a cancellation; nothing is left registered or ticking afterwards."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.asyncio import Redis

from matchmaker.redis_base import RedisBase, guarded
from matchmaker.store import BackendUnavailable


class SlowStore(RedisBase):
    @guarded
    async def wait(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @guarded
    async def nested(self, seconds: float) -> str:
        return await self.wait(seconds)


@pytest.fixture
async def store() -> SlowStore:
    return SlowStore(Redis(), timeout_s=0.2)  # never connects: nothing here talks to Redis


async def test_an_operation_past_its_limit_is_backend_unavailable_and_the_task_goes_on(store: SlowStore) -> None:
    with pytest.raises(BackendUnavailable, match="did not answer within 0.2 s"):
        await store.wait(30)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation left pending for this task
    assert await store.wait(0) == "done"
    assert store._deadlines.live == 0


async def test_operations_within_their_limit_leave_nothing_behind(store: SlowStore) -> None:
    assert await asyncio.gather(*(store.wait(0) for _ in range(50))) == ["done"] * 50
    assert await store.nested(0) == "done"
    assert store._deadlines.live == 0
    await asyncio.sleep(0.3)
    assert store._deadlines._timer is None  # idle: no timer ticking


async def test_only_the_slow_ones_of_many_time_out(store: SlowStore) -> None:
    outcomes = await asyncio.gather(
        *(store.wait(30 if i % 3 == 0 else 0.01) for i in range(30)), return_exceptions=True
    )
    for i, outcome in enumerate(outcomes):
        assert isinstance(outcome, BackendUnavailable) if i % 3 == 0 else outcome == "done", (i, outcome)


async def test_a_cancellation_from_outside_stays_a_cancellation(store: SlowStore) -> None:
    task = asyncio.create_task(store.wait(30))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(TimeoutError):  # the caller's own, shorter limit is the caller's
        await asyncio.wait_for(store.wait(30), 0.05)
    assert store._deadlines.live == 0


async def test_a_nested_operation_times_out_once(store: SlowStore) -> None:
    with pytest.raises(BackendUnavailable):
        await store.nested(30)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert store._deadlines.live == 0


def _attribute_error_in(filename: str) -> AttributeError:
    code = compile("None.writelines(b'')", filename, "exec")
    try:
        exec(code, {})  # noqa: S102 - a code object named after a module, raising there
    except AttributeError as exc:
        return exc
    raise AssertionError("no AttributeError")


class ClosingStore(RedisBase):
    @guarded
    async def fail(self, exc: BaseException) -> None:
        raise exc


async def test_a_connection_closed_under_a_call_by_redis_py_is_backend_unavailable() -> None:
    """redis-py's cluster client may close a connection in use while it reads the cluster
    anew (a node crashed): the AttributeError raised in its connection module is the backend
    going away; one raised anywhere else is a bug, and stays what it is."""
    store = ClosingStore(Redis(), timeout_s=1.0)
    inside = _attribute_error_in(os.path.join("site-packages", "redis", "asyncio", "connection.py"))
    with pytest.raises(BackendUnavailable, match="its connection closed under the call"):
        await store.fail(inside)
    with pytest.raises(AttributeError):
        await store.fail(_attribute_error_in(os.path.join("matchmaker", "store_redis.py")))
