"""A loopback TCP proxy that holds every chunk for a fixed time in each direction.

This box has no netem, so a Redis on it answers in tens of microseconds; a managed Redis
in another availability zone answers in hundreds. Put this in front of the local one and
a client sees the distance: each chunk leaves ``--delay-ms`` after it arrived, in order,
both ways (a round trip gains twice the delay). For benchmarks only.

    python -m loadtest.delay_proxy --listen-port 0 --target unix:///tmp/redis.sock --delay-ms 0.5

Prints one JSON line ``{"port": N}`` once it listens; runs until killed (or, with
``--parent-pid``, until that process is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import sys
from collections.abc import Sequence

import uvloop


class _Delayed:
    """One direction: chunks written ``delay_s`` after they were read, in order."""

    def __init__(self, writer: asyncio.StreamWriter, delay_s: float) -> None:
        self._writer = writer
        self._delay_s = delay_s
        self._loop = asyncio.get_running_loop()
        self._due: collections.deque[tuple[float, bytes]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def put(self, chunk: bytes) -> None:
        self._due.append((self._loop.time() + self._delay_s, chunk))
        if self._timer is None:
            self._timer = self._loop.call_at(self._due[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        out = []
        while self._due and self._due[0][0] <= now:
            out.append(self._due.popleft()[1])
        if out and not self._writer.is_closing():
            self._writer.write(b"".join(out))
        if self._due:
            self._timer = self._loop.call_at(self._due[0][0], self._flush)


async def _pump(reader: asyncio.StreamReader, out: _Delayed, writer: asyncio.StreamWriter, delay_s: float) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            out.put(chunk)
    finally:
        await asyncio.sleep(delay_s)  # what is still held goes out first
        writer.close()


async def _open_target(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if target.startswith("unix://"):
        return await asyncio.open_unix_connection(target.removeprefix("unix://"))
    host, _, port = target.removeprefix("tcp://").rpartition(":")
    if host not in ("127.0.0.1", "::1", "[::1]", "localhost"):
        raise ValueError(f"the target must be on this machine: {target}")
    return await asyncio.open_connection(host.strip("[]"), int(port))


async def serve(listen_port: int, target: str, delay_s: float, parent_pid: int | None) -> None:
    async def accepted(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        t_reader, t_writer = await _open_target(target)
        up, down = _Delayed(t_writer, delay_s), _Delayed(c_writer, delay_s)
        await asyncio.gather(
            _pump(c_reader, up, t_writer, delay_s), _pump(t_reader, down, c_writer, delay_s), return_exceptions=True
        )

    server = await asyncio.start_server(accepted, "127.0.0.1", listen_port)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)
    async with server:
        while parent_pid is None or _alive(parent_pid):  # noqa: ASYNC110 - polls the parent
            await asyncio.sleep(0.5)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.delay_proxy", description=__doc__)
    ap.add_argument("--listen-port", type=int, default=0, help="loopback port to listen on (0: any free one)")
    ap.add_argument("--target", required=True, help="unix:///path or tcp://127.0.0.1:port")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every chunk")
    ap.add_argument("--parent-pid", type=int, help="exit once this process is gone")
    opts = ap.parse_args(argv)
    uvloop.run(serve(opts.listen_port, opts.target, opts.delay_ms / 1000, opts.parent_pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
