"""Shared fixtures: real servers on free loopback ports."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from signaling.app import SignalingServer
from signaling.config import Settings

StartSignaling = Callable[..., Awaitable[SignalingServer]]


def require_binary(name: str) -> str:
    """Locally a missing binary skips the test; under CI=true or scripts/test it fails loudly."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true" or os.environ.get("PIXELFLEET_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def start_signaling() -> AsyncIterator[StartSignaling]:
    """Start in-process signalling servers on free ports; all are stopped afterwards."""
    servers: list[SignalingServer] = []

    async def start(**overrides: Any) -> SignalingServer:
        settings = Settings(**{"player_port": 0, "streamer_port": 0, "sfu_port": 0,
                               "shutdown_grace_s": 1.0, **overrides})
        server = SignalingServer(settings)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()
