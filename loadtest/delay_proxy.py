"""A loopback TCP proxy that holds every chunk for a fixed time in each direction.

This box has no netem, so a Redis on it answers in tens of microseconds; a managed Redis
in another availability zone answers in hundreds. Put this in front of the local one and
a client sees the distance: each chunk leaves ``--delay-ms`` after it arrived, in order,
both ways (a round trip gains twice the delay). For benchmarks only.

Each direction of each connection is two threads on blocking sockets: one reads and
stamps chunks, one sleeps until a chunk is due and sends it. An event loop's timers are
no good here: libuv's (uvloop) count whole milliseconds, and epoll waits round up to
them, so a 0.25 ms delay would become 0 or 1 ms. The proxy's own cost still shows at
high chunk rates (a thread hand-off per chunk): compare modes at the same delay.

    python -m loadtest.delay_proxy --target unix:///tmp/redis.sock --delay-ms 0.5

Prints one JSON line ``{"port": N}`` once it listens; runs until killed (or, with
``--parent-pid``, until that process is gone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Sequence

_END = b""


def _open_target(target: str) -> socket.socket:
    if target.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target.removeprefix("unix://"))
        return sock
    host, _, port = target.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"the target must be on this machine: {target}")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _direction(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
    """Copy ``src`` to ``dst``, each chunk ``delay_s`` after it was read, in order."""
    held: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def read() -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(1 << 16):
                held.put((time.perf_counter() + delay_s, chunk))
        held.put((time.perf_counter() + delay_s, _END))

    def send() -> None:
        try:
            while True:
                due, chunk = held.get()
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if chunk is _END:
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=send, daemon=True).start()


def serve(listen_port: int, target: str, delay_s: float, parent_pid: int | None) -> None:
    # A thread woken while another holds the GIL waits out the switch interval (5 ms by
    # default): far more than the delays measured here.
    sys.setswitchinterval(5e-5)
    listener = socket.create_server(("127.0.0.1", listen_port))
    listener.settimeout(0.5)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    while parent_pid is None or _alive(parent_pid):
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        client.settimeout(None)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = _open_target(target)
        _direction(client, upstream, delay_s)
        _direction(upstream, client, delay_s)


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
    serve(opts.listen_port, opts.target, opts.delay_ms / 1000, opts.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
