"""The pipe's own RESP packing (pixelfleet.redis_pipe.pack_command) writes the very
bytes redis-py would send, and refuses what redis-py refuses."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from pixelfleet.redis_pipe import pack_command


class Colour(enum.StrEnum):
    RED = "red"


def _redis_py(args: tuple[Any, ...]) -> bytes:
    return b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "pf:{t}:k"),
        ("SET", "k", "Ünïcødé"),
        ("EVALSHA", "a" * 40, 2, "k1", "k2", "1.5", 7, -3, 0.1, 1e300, b"\r\n\x00" * 40),
        ("HSET", "h", "f", memoryview(b"view")),
        ("SET", "k", Colour.RED),
        ("SET", "k", bytes(range(256)) * 300),
        ("PING",),
    ],
)
def test_pack_command_matches_redis_py(args: tuple[Any, ...]) -> None:
    assert pack_command(args) == _redis_py(args)


argument = st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=False))


@given(st.lists(argument, min_size=1, max_size=8))
def test_any_argument_list_matches_redis_py(args: list[Any]) -> None:
    assert pack_command(["EVALSHA", *args]) == _redis_py(("EVALSHA", *args))


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_what_redis_py_refuses_is_refused(bad: Any) -> None:
    with pytest.raises(DataError):
        _redis_py(("SET", "k", bad))
    with pytest.raises(TypeError):
        pack_command(("SET", "k", bad))
