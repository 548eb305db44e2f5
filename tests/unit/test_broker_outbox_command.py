"""The outbox's hand-packed SPUBLISH is the very bytes redis-py would send."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from signaling.broker_outbox import pipe_command


@pytest.mark.parametrize("payload", [b"", b"x", b"\r\n\x00" * 50, bytes(range(256)) * 300])
@pytest.mark.parametrize("channel", ["{pf:sig:A}:in", "{pf:sig:Ünï}:in"])
def test_pipe_command_matches_redis_py(channel: str, payload: bytes) -> None:
    expected = b"".join(Connection().pack_command("SPUBLISH", channel, payload))
    assert b"".join(pipe_command(channel, payload)) == expected
