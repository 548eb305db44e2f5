"""Shared fixtures: real servers on free loopback ports."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from signaling.app import SignalingServer
from signaling.config import Settings
from tests.support.processes import Child, start_child

StartSignaling = Callable[..., Awaitable[SignalingServer]]
StartProcess = Callable[..., Awaitable[Child]]


def require_binary(name: str) -> str:
    """Locally a missing binary skips the test; under CI=true or scripts/test it fails loudly."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true" or os.environ.get("PIXELFLEET_TEST__STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def start_signaling() -> AsyncIterator[StartSignaling]:
    """Start in-process signalling servers on free ports; all are stopped afterwards."""
    servers: list[SignalingServer] = []

    async def start(
        *,
        peer_options: Any = None,
        player_routes: Any = (),
        session_gate: Any = None,
        collectors: Any = (),
        **overrides: Any,
    ) -> SignalingServer:
        settings = Settings(
            **{"player_port": 0, "streamer_port": 0, "sfu_port": 0, "shutdown_grace_s": 1.0, **overrides}
        )
        server = SignalingServer(
            settings,
            peer_options=peer_options,
            player_routes=player_routes,
            session_gate=session_gate,
            collectors=collectors,
        )
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def start_process(tmp_path: Path) -> AsyncIterator[StartProcess]:
    """``await start_process(*args, env=None, module="pixelfleet", new_session=False)``:
    ``python -m pixelfleet <args>`` (or ``-m <module>``), its output in ``tmp_path``;
    whatever is still running afterwards gets SIGTERM, then SIGKILL."""
    children: list[Child] = []

    async def start(
        *args: str, module: str = "pixelfleet", env: dict[str, str] | None = None, new_session: bool = False
    ) -> Child:
        name = " ".join((module, *args[:1]))
        log_path = tmp_path / f"{name.replace(' ', '-').replace('.', '-')}-{len(children)}.log"
        child = await start_child(name, *args, module=module, env=env, log_path=log_path, new_session=new_session)
        children.append(child)
        return child

    yield start
    for child in children:
        await child.stop()


def wait_for_ping(client: Any, what: str) -> None:
    """Poll PING (no sleeping on a guess) until the server answers, up to 10 s."""
    import redis

    for _ in range(200):
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    pytest.fail(f"{what} did not answer PING")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole test session, on a Unix socket (no port races)."""
    binary = require_binary("redis-server")
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        import redis

        client = redis.Redis(unix_socket_path=str(sock))
        wait_for_ping(client, "redis-server")
        client.close()
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


def _free_cluster_port() -> int:
    """A loopback port that is free together with its cluster bus port (port + 10000)."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-node Redis Cluster (3 primaries, no replicas) for the whole test session;
    the URL is that of one node with ``?cluster=1``."""
    binary = require_binary("redis-server")
    cli = require_binary("redis-cli")
    import redis

    folder = tmp_path_factory.mktemp("redis-cluster")
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        while len(ports) < 3:
            port = _free_cluster_port()
            if port in ports:
                continue
            node_dir = folder / str(port)
            node_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
            ports.append(port)
        clients = [redis.Redis(port=p) for p in ports]
        for client in clients:
            wait_for_ping(client, "a Redis Cluster node")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for _ in range(400):
            if all(c.cluster("info").get("cluster_state") == "ok" for c in clients):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the Redis Cluster did not reach cluster_state:ok")
        for client in clients:
            client.close()
        yield f"redis://127.0.0.1:{ports[0]}/?cluster=1"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


@pytest.fixture
async def coturn() -> AsyncIterator[Any]:
    """A real coturn on a free loopback port with two generated secrets (newest first)."""
    import secrets

    from pixelfleet.net import free_port
    from turn.coturn import Coturn, CoturnOptions, relay_port_range

    binary = require_binary("turnserver")
    low, high = relay_port_range(40)
    options = CoturnOptions(
        secrets=(secrets.token_urlsafe(24), secrets.token_urlsafe(24)),
        port=free_port(udp=True),
        min_port=low,
        max_port=high,
        realm="pixel.test",
    )
    turn = Coturn(options, binary=binary)
    await turn.start()
    try:
        yield turn
    finally:
        await turn.stop()
