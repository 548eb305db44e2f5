"""pixelfleet.balancer with real loopback sockets: fake nodes (an aiohttp health endpoint
plus a raw TCP server), connections made through the balancer and checked end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pixelfleet.balancer import Balancer, BalancerError, Node
from pixelfleet.net import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]
StartNode = Callable[..., Awaitable[tuple["FakeNode", Node]]]
WAIT = 10.0


@dataclass
class FakeNode:
    """A backend: ``GET <health_path>`` answers ``status`` and ``{"ok": ok}`` on the
    player port, and the ``raw`` port runs ``handler`` (echo by default)."""

    name: str
    ok: bool = True
    status: int = 200
    health_path: str = "/healthz"
    handler: Handler | None = None
    runner: web.AppRunner | None = None
    raw: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Node:
        app = web.Application()
        app.router.add_get(self.health_path, self._health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.raw = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        http_port = self.runner.addresses[0][1]
        return Node(self.name, {"player": http_port, "raw": _port(self.raw)}, health_port=http_port)

    async def stop(self) -> None:
        if self.raw is not None:
            self.raw.close()
        for task in self.tasks:
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": self.ok, "node": self.name}, status=self.status)

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._run(reader, writer))
        self.tasks.add(task)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await (self.handler or self._echo)(reader, writer)
        finally:
            writer.close()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.name.encode() + b"\n")
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def nodes() -> AsyncIterator[StartNode]:
    started: list[FakeNode] = []

    async def start(name: str, **kw: object) -> tuple[FakeNode, Node]:
        fake = FakeNode(name, **kw)  # type: ignore[arg-type]
        started.append(fake)
        return fake, await fake.start()

    yield start
    for fake in started:
        await fake.stop()


@contextlib.asynccontextmanager
async def running(*nodes: Node, health_period_s: float = 0.05) -> AsyncIterator[Balancer]:
    balancer = Balancer(nodes, {"player": 0, "raw": 0}, health_period_s=health_period_s)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.stop()


async def _open(balancer: Balancer) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection through the raw port, and the name of the node that answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port("raw"))
    name = (await asyncio.wait_for(reader.readline(), WAIT)).decode().strip()
    return name, reader, writer


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not check():  # noqa: ASYNC110 - polling the balancer's own state
            await asyncio.sleep(0.02)


async def test_connections_go_to_the_node_with_fewest_and_bytes_pass_both_ways(nodes: StartNode) -> None:
    _, a = await nodes("a")
    _, b = await nodes("b")
    async with running(a, b) as balancer:
        opened = [await _open(balancer) for _ in range(4)]
        assert sorted(name for name, _, _ in opened) == ["a", "a", "b", "b"]
        assert a.connections == b.connections == 2
        for i, (_, reader, writer) in enumerate(opened):
            writer.write(b"x" * 100_000 + str(i).encode())
            assert await asyncio.wait_for(reader.readexactly(100_001), WAIT) == b"x" * 100_000 + str(i).encode()
            writer.close()
        await _until(lambda: a.connections == b.connections == 0)
        # HTTP goes through the player port the same way
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{balancer.port('player')}/healthz") as resp:
                assert (await resp.json())["node"] in {"a", "b"}


async def test_a_dead_node_is_never_picked_and_a_refused_connect_tries_the_next(nodes: StartNode) -> None:
    _, live = await nodes("live")
    dead = Node("dead", {"player": free_port(), "raw": free_port()}, health_port=free_port())
    fake, refusing = await nodes("refusing")
    assert fake.raw is not None
    fake.raw.close()  # healthy by its check, but its raw port refuses
    await fake.raw.wait_closed()
    async with running(dead, refusing, live, health_period_s=60) as balancer:
        assert not dead.healthy and refusing.healthy
        for _ in range(3):
            name, _, writer = await _open(balancer)
            assert name == "live"
            writer.close()
        assert refusing.forwarded == {} and dead.forwarded == {}


async def test_a_node_turning_unhealthy_gets_no_new_connections_but_keeps_its_own(nodes: StartNode) -> None:
    fake_a, a = await nodes("a")
    fake_b, b = await nodes("b")
    async with running(a, b) as balancer:
        name, reader, writer = await _open(balancer)  # whichever node took it drains
        fake, draining, other = (fake_a, a, "b") if name == "a" else (fake_b, b, "a")
        fake.ok = False
        await _until(lambda: not draining.healthy)
        for _ in range(3):
            got, _, w = await _open(balancer)
            assert got == other
            w.close()
        writer.write(b"still here")  # the open connection was left alone
        assert await asyncio.wait_for(reader.readexactly(10), WAIT) == b"still here"
        fake.ok = True
        await _until(lambda: draining.healthy)
        writer.close()


async def test_readyz_503_counts_as_not_ready(nodes: StartNode) -> None:
    _, ready = await nodes("ready", health_path="/readyz")
    _, draining = await nodes("draining", health_path="/readyz", status=503)
    async with running(ready, draining) as balancer:
        assert ready.healthy and not draining.healthy
        assert ready.health_path == "/readyz"
        for _ in range(2):
            name, _, writer = await _open(balancer)
            assert name == "ready"
            writer.close()


async def test_no_healthy_node_closes_the_connection(nodes: StartNode) -> None:
    _, a = await nodes("a", ok=False)
    async with running(a) as balancer:
        reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port("raw"))
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()


async def test_half_close_is_passed_on_and_the_other_direction_goes_on(nodes: StartNode) -> None:
    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF
        writer.write(b"got " + request)
        await writer.drain()
        writer.close()

    _, a = await nodes("a", handler=reply_after_eof)
    async with running(a) as balancer:
        reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port("raw"))
        writer.write(b"hello")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), WAIT) == b"got hello"
        writer.close()
        await _until(lambda: a.connections == 0)


async def test_a_reader_that_stops_reading_stops_the_sender(nodes: StartNode) -> None:
    total = 64 * 1024 * 1024
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        chunk = b"z" * 65536
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.close()

    _, a = await nodes("a", handler=flood)
    async with running(a) as balancer:
        reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port("raw"))
        last = -1
        async with asyncio.timeout(WAIT):  # the sender stalls: nothing reads, the buffers are full
            while sent != last:
                last = sent
                await asyncio.sleep(0.3)
        assert sent < total
        received = 0
        while data := await asyncio.wait_for(reader.read(1 << 20), WAIT):
            received += len(data)
        assert received == total
        writer.close()


def test_only_loopback_unless_asked() -> None:
    node = Node("n", {"raw": 1}, health_port=1)
    with pytest.raises(BalancerError, match="not a loopback"):
        Balancer([node], {"raw": 0}, host="0.0.0.0")  # noqa: S104
    with pytest.raises(BalancerError, match="not a loopback"):
        Balancer([Node("far", {"raw": 1}, health_port=1, host="10.0.0.1")], {"raw": 0})
    with pytest.raises(BalancerError, match="no port for sfu"):
        Balancer([node], {"raw": 0, "sfu": 0})
    Balancer([Node("six", {"raw": 1}, health_port=1, host="::1")], {"raw": 0}, host="::1")
    Balancer([node], {"raw": 0}, host="0.0.0.0", allow_remote=True)  # noqa: S104
