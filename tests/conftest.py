"""Shared fixtures: real servers on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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

    async def start(*, peer_options: Any = None, player_routes: Any = (), session_gate: Any = None,
                    **overrides: Any) -> SignalingServer:
        settings = Settings(**{"player_port": 0, "streamer_port": 0, "sfu_port": 0,
                               "shutdown_grace_s": 1.0, **overrides})
        server = SignalingServer(settings, peer_options=peer_options, player_routes=player_routes,
                                 session_gate=session_gate)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole test session, on a Unix socket (no port races)."""
    binary = require_binary("redis-server")
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        import redis

        client = redis.Redis(unix_socket_path=str(sock))
        for _ in range(200):
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not answer PING")
        client.close()
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)
