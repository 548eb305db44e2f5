"""A redis-server on a fixed loopback TCP port that a test can kill and start again.

Clients keep the same URL across a restart, as they would with a real Redis that crashed
and came back; nothing is persisted, so it comes back empty.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import redis.asyncio

from pixelfleet.net import NotListening, free_port, wait_for_port

__all__ = ["RedisServer"]


class RedisServer:
    """``start()``, ``kill()`` (SIGKILL: a crash), ``start()`` again on the same port."""

    def __init__(
        self, binary: str, folder: Path, *extra: str, port: int | None = None, sentinel_config: str | None = None
    ) -> None:
        """``extra``: more redis-server flags; ``sentinel_config``: run a Sentinel with these
        ``sentinel …`` lines instead (written afresh at each start: a Sentinel rewrites it)."""
        self.binary, self.folder, self.extra, self.sentinel_config = binary, folder, extra, sentinel_config
        self.port = port or free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(host="127.0.0.1", port=self.port)

    async def start(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None and self.proc.returncode is None:
            raise RuntimeError(f"redis-server on {self.port} is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / f"redis-{self.port}-{self.starts}.log"
        self.starts += 1
        if self.sentinel_config is None:
            argv = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(self.folder), *self.extra]
        else:
            conf = self.folder / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.folder}\n{self.sentinel_config}")
            argv = [str(conf), "--sentinel", *self.extra]
        with open(log, "wb") as out:  # noqa: ASYNC230 - once, before the process
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        proc = self.proc
        try:
            await wait_for_port("127.0.0.1", self.port, timeout_s, exited=lambda: proc.returncode is not None)
        except NotListening as exc:
            raise RuntimeError(f"redis-server did not start on {self.port}: {log.read_text(errors='replace')}") from exc
        client = self.client()
        try:
            async with asyncio.timeout(timeout_s):
                while not await client.ping():  # noqa: ASYNC110 - bounded; PING answers once loaded
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL, as a crash: clients see their connections reset."""
        await self._end(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts and nothing answers, as when a host vanishes
        from the network (no reset reaches the clients). ``stop``/``kill`` end it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: a frozen server runs on, as a host that comes back to the network."""
        if self.proc is not None and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
            self.frozen = False

    async def stop(self) -> None:
        await self._end(signal.SIGKILL if self.frozen else signal.SIGTERM)

    async def _end(self, sig: int) -> None:
        proc, self.proc, self.frozen = self.proc, None, False
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
