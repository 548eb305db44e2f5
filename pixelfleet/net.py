"""Loopback ports for child servers: pick a free one, then wait until it accepts.

One copy for runtime code (``pixelfleet up``, coturn), the benchmarks and the tests, so a
fix to the races below is made once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

__all__ = ["NotListening", "free_port", "wait_for_port"]


class NotListening(RuntimeError):
    """Nothing accepted on the port in time, or the process meant to listen there ended."""


def free_port(host: str = "127.0.0.1", *, udp: bool = False, attempts: int = 50) -> int:
    """A TCP port the kernel just had free on ``host`` (and the same UDP port with ``udp``).

    Another process may take it before the caller binds it; servers that can listen on
    port 0 and report the port should do that instead.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp:
                return port
            with socket.socket(family, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((host, port))
                except OSError:
                    continue
                return port
    raise NotListening(f"no port free for both TCP and UDP on {host} after {attempts} tries")


async def wait_for_port(
    host: str, port: int, timeout_s: float = 10.0, *, exited: Callable[[], bool] | None = None, period_s: float = 0.05
) -> None:
    """Return once a TCP connection to ``host:port`` succeeds.

    ``exited`` is polled between tries, so a child that dies at start-up fails the wait
    at once instead of after the whole timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if exited is not None and exited():
            raise NotListening(f"the process meant to listen on {host}:{port} exited")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise NotListening(f"nothing listening on {host}:{port} after {timeout_s} s") from None
            await asyncio.sleep(period_s)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
