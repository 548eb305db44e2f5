"""A small TCP load balancer for trying a signalling cluster on one box (and for tests).

It stands where a Network Load Balancer stands in production: one listening port per
role (player page and WebSocket, streamer, SFU), each accepted connection forwarded to
the healthy node with the fewest open connections, and the bytes spliced both ways
untouched (WebSocket upgrades included). A node is healthy while its player port
answers ``GET /readyz`` (or ``/healthz`` where there is no ``/readyz``) with 200 and
``{"ok": true}``; a draining node (503, or ``ok: false``) gets no new connections but
keeps the ones it has, as an NLB's deregistration does.

Buffers are bounded: a side is read only after the other side's write buffer drained
below its low-water mark, so a slow reader slows its sender instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog

__all__ = ["Balancer", "BalancerError", "Node"]

log = structlog.get_logger("balancer")

CHUNK = 64 * 1024  # bytes read at a time, and the write buffer's high-water mark
HEALTH_PATHS = ("/readyz", "/healthz")  # the first one a node serves (not 404) is used


class BalancerError(RuntimeError):
    """A bad address, or no listening port."""


@dataclass(eq=False)
class Node:
    """One backend: its port per role, and the port its health check is asked on."""

    name: str
    ports: Mapping[str, int]  # role -> port, e.g. {"player": 9001, "streamer": 9002}
    health_port: int
    host: str = "127.0.0.1"
    healthy: bool = False  # unknown counts as unhealthy until the first check passes
    connections: int = 0  # open forwarded connections, all roles together
    forwarded: dict[str, int] = field(default_factory=dict)  # role -> connections so far
    health_path: str | None = None  # found on the first answer that is not 404


class Balancer:
    """``await start()`` listens on ``listen`` (role -> port, 0 = any free), ``stop()``
    closes everything. ``port(role)`` is where a role listens once started."""

    def __init__(
        self,
        nodes: Sequence[Node],
        listen: Mapping[str, int],
        *,
        host: str = "127.0.0.1",
        connect_timeout_s: float = 3.0,
        health_period_s: float = 0.5,
        allow_remote: bool = False,
    ) -> None:
        if not nodes:
            raise BalancerError("a balancer needs at least one node")
        if not allow_remote:
            for address in (host, *(n.host for n in nodes)):
                if not _is_loopback(address):
                    raise BalancerError(f"{address} is not a loopback address (127.0.0.1, ::1); this balancer is local")
        for node in nodes:
            if missing := set(listen) - set(node.ports):
                raise BalancerError(f"node {node.name} has no port for {', '.join(sorted(missing))}")
        self.nodes, self.listen, self.host = list(nodes), dict(listen), host
        self.connect_timeout_s, self.health_period_s = connect_timeout_s, health_period_s
        self._servers: dict[str, asyncio.Server] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._health_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._turn = itertools.count()  # rotates ties, so equal nodes take turns

    def port(self, role: str) -> int:
        return int(self._servers[role].sockets[0].getsockname()[1])

    async def start(self) -> None:
        """One round of health checks, then listen (so the first connection has a node)."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=max(self.health_period_s, 1.0)))
        try:
            await self.check_health()
            for role, port in self.listen.items():
                self._servers[role] = await asyncio.start_server(
                    functools.partial(self._accept, role), self.host, port, limit=CHUNK
                )
        except BaseException:
            await self.stop()
            raise
        self._health_task = asyncio.create_task(self._health_loop())
        log.info("balancer_listening", host=self.host, ports={r: self.port(r) for r in self._servers})

    async def stop(self) -> None:
        for server in self._servers.values():
            server.close()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        if self._http is not None:
            await self._http.close()

    # ---- choosing a node --------------------------------------------------------

    def pick(self, exclude: frozenset[Node] = frozenset()) -> Node | None:
        """The healthy node with the fewest open connections (ties take turns)."""
        candidates = [n for n in self.nodes if n.healthy and n not in exclude]
        if not candidates:
            return None
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda n: n.connections)

    async def check_health(self) -> None:
        """Ask every node at once; a node that does not answer in time is unhealthy."""
        await asyncio.gather(*(self._check(node) for node in self.nodes))

    async def _check(self, node: Node) -> None:
        assert self._http is not None
        healthy = False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            for path in (node.health_path,) if node.health_path else HEALTH_PATHS:
                url = f"http://{_bracket(node.host)}:{node.health_port}{path}"
                async with self._http.get(url) as resp:
                    if resp.status == 404 and path != HEALTH_PATHS[-1]:
                        continue
                    node.health_path = path
                    body = await resp.json(content_type=None) if resp.status == 200 else None
                    healthy = isinstance(body, dict) and body.get("ok") is True
                    break
        if node.healthy != healthy:
            log.info("balancer_node_health", node=node.name, healthy=healthy)
        node.healthy = healthy

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_period_s)
            await self.check_health()

    # ---- forwarding -------------------------------------------------------------

    def _accept(self, role: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._forward(role, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, role: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        tried: frozenset[Node] = frozenset()
        try:
            while (node := self.pick(tried)) is not None:
                try:
                    node_r, node_w = await asyncio.wait_for(
                        asyncio.open_connection(node.host, node.ports[role], limit=CHUNK), self.connect_timeout_s
                    )
                except (OSError, TimeoutError) as exc:
                    log.warning(
                        "balancer_connect_failed", node=node.name, role=role, error=str(exc) or type(exc).__name__
                    )
                    node.healthy = False  # until the next check says otherwise
                    tried |= {node}
                    continue
                node.connections += 1
                node.forwarded[role] = node.forwarded.get(role, 0) + 1
                try:
                    await _splice(client_r, client_w, node_r, node_w)
                finally:
                    node.connections -= 1
                return
            log.warning("balancer_no_healthy_node", role=role)
        finally:
            await _close(client_w)


async def _splice(
    a_r: asyncio.StreamReader, a_w: asyncio.StreamWriter, b_r: asyncio.StreamReader, b_w: asyncio.StreamWriter
) -> None:
    """Both directions until both have ended; a reset on either side ends both."""
    for w in (a_w, b_w):
        w.transport.set_write_buffer_limits(high=CHUNK)
    pumps = [asyncio.create_task(_pump(a_r, b_w)), asyncio.create_task(_pump(b_r, a_w))]
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        if any(not t.cancelled() and t.exception() is not None for t in done):
            for t in pumps:
                t.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for t in pumps:
            t.cancel()
        await _close(b_w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the far side (the other direction goes on)."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()  # backpressure: no more reading while the far side is full
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def _close(writer: asyncio.StreamWriter, grace_s: float = 1.0) -> None:
    """Close after flushing what is buffered; a peer that reads nothing is cut off."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), grace_s)
    except (OSError, TimeoutError):
        writer.transport.abort()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
