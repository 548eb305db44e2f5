"""A Redis primary, its replicas (one unless asked) and one Sentinel watching them, on
loopback ports.

``fail_over()`` kills the primary and waits until the Sentinel has promoted a replica
(``replica`` is then that one): what a client sees when the machine holding the primary dies.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.support.redis_server import RedisServer

__all__ = ["SentinelSet"]

SERVICE = "pfprimary"
_DOWN_AFTER_MS = 500  # how long the primary must be silent before the Sentinel acts


class SentinelSet:
    def __init__(self, binary: str, folder: Path, *, replicas: int = 1) -> None:
        self.folder = folder
        self.primary = RedisServer(binary, folder / "primary", "--repl-diskless-sync-delay", "0")
        self.replicas = [
            RedisServer(binary, folder / f"replica{i or ''}", "--replicaof", "127.0.0.1", str(self.primary.port))
            for i in range(replicas)
        ]
        self.replica = self.replicas[0]  # after ``fail_over``: the one promoted
        self.sentinel = RedisServer(
            binary,
            folder / "sentinel",
            sentinel_config=(
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} {_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            ),
        )

    @property
    def url(self) -> str:
        """The state URL for clients: the Sentinel, and the name it knows the primary by."""
        return f"redis://127.0.0.1:{self.sentinel.port}/0?sentinel={SERVICE}"

    async def start(self, timeout_s: float = 20.0) -> None:
        await self.primary.start()
        for replica in self.replicas:
            await replica.start()
            await self._until(replica, lambda info: info.get("master_link_status") == "up", "replication", timeout_s)
        await self.sentinel.start()
        client = self.sentinel.client()
        try:
            async with asyncio.timeout(timeout_s):
                while len(await client.sentinel_slaves(SERVICE)) < len(self.replicas):  # noqa: ASYNC110 - bounded
                    await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    async def primary_port(self) -> int:
        """The primary's port as the Sentinel reports it."""
        client = self.sentinel.client()
        try:
            address: Any = await client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            await client.aclose()
        return int(address[1])

    async def replicated(self, timeout_s: float = 20.0) -> None:
        """Return once every replica holds every write the primary has taken. Replication is
        asynchronous: a primary killed before this may take its last writes with it, as a
        real one would, which a test of what the client does next must rule out."""
        client = self.primary.client()
        try:
            offset = int((await client.info("replication"))["master_repl_offset"])
        finally:
            await client.aclose()
        for replica in self.replicas:
            await self._until(
                replica, lambda info: int(info.get("slave_repl_offset", -1)) >= offset, "catching up", timeout_s
            )

    async def cut_replication(self) -> None:
        """The primary drops its replicas' links. With the replicas frozen first, no write
        after this reaches them (not even into their sockets' buffers) until they reconnect."""
        client = self.primary.client()
        try:
            await client.client_kill_filter(_type="replica")
        finally:
            await client.aclose()

    async def fail_over(self, *, freeze: bool = False, timeout_s: float = 30.0) -> None:
        """Kill the primary (or, with ``freeze``, stop it dead with SIGSTOP: its clients get
        no reset, only silence); return once the Sentinel names the replica and it is a primary."""
        if freeze:
            self.primary.freeze()
        else:
            await self.primary.kill()
        ports = {r.port: r for r in self.replicas}
        async with asyncio.timeout(timeout_s):
            while (port := await self.primary_port()) not in ports:  # noqa: ASYNC110 - bounded
                await asyncio.sleep(0.1)
        self.replica = ports[port]
        await self._until(self.replica, lambda info: info.get("role") == "master", "promotion", timeout_s)

    async def stop(self) -> None:
        for server in (self.sentinel, *self.replicas, self.primary):
            await server.stop()

    @staticmethod
    async def _until(server: RedisServer, check: Any, what: str, timeout_s: float) -> None:
        client = server.client()
        try:
            async with asyncio.timeout(timeout_s):
                while not check(await client.info("replication")):  # noqa: ASYNC110 - bounded
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError(f"redis-server on {server.port}: no {what} within {timeout_s} s") from None
        finally:
            await client.aclose()
