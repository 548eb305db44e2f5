"""The HEALTHCHECK of the control-plane and agent images: one image runs several commands, so
the probe reads which one from the container's main process and asks that service's endpoint.

- ``pixelfleet signaling``: ``/readyz`` on the player port (503 while draining or while a
  cluster node is out of touch with Redis);
- ``pixelfleet matchmaker``: ``/readyz`` (503 while its state store fails or while draining);
- ``pixelfleet agent``: ``/readyz`` on the metrics port (503 while its matchmaker is unreachable).

Usage: ``python healthcheck.py [PID]`` (PID 1 by default). Exit 0 when the endpoint answers
2xx, 1 otherwise, with one line saying why. Standard library only: it runs in the image as is.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

COMMANDS = ("signaling", "matchmaker", "agent")
# (port setting, its flag, default port, path) per command
ENDPOINTS = {
    "signaling": ("PIXELFLEET_PLAYER_PORT", "--player-port", 80, "/readyz"),
    "matchmaker": ("PIXELFLEET_MATCHMAKER__PORT", "--port", 9999, "/readyz"),
    "agent": ("PIXELFLEET_AGENT__METRICS_PORT", "--metrics-port", 9102, "/readyz"),
}


class ProbeError(Exception):
    pass


def _flag(args: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` (the last one wins, as with argparse)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def probe_url(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The URL that tells whether the process started as ``argv`` serves; flags beat the
    environment, as in ``pixelfleet``'s own settings."""
    command = next((a for a in argv if a in COMMANDS), None)
    if command is None:
        raise ProbeError(f"no pixelfleet command ({', '.join(COMMANDS)}) in {' '.join(argv)!r}")
    setting, flag, default, path = ENDPOINTS[command]
    args = argv[argv.index(command) + 1 :]
    raw = _flag(args, flag) or env.get(setting) or str(default)
    try:
        port = int(raw)
    except ValueError:
        raise ProbeError(f"{setting}/{flag}: not a port: {raw!r}") from None
    if port <= 0:
        raise ProbeError(f"{command} has no fixed HTTP port ({setting}={port})")
    return f"http://127.0.0.1:{port}{path}"


def process_argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def process_env(pid: int) -> dict[str, str]:
    """The process's environment at start (``docker run -e`` reaches PID 1, not the probe)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = [a.decode(errors="replace").partition("=") for a in f.read().split(b"\0") if a]
    except PermissionError:
        return dict(os.environ)
    return {k: v for k, _, v in pairs}


def check(url: str, timeout_s: float = 3.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback http only
            if not 200 <= response.status < 300:
                raise ProbeError(f"{url}: HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise ProbeError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProbeError(f"{url}: {exc}") from None


def main(argv: Sequence[str]) -> int:
    pid = int(argv[0]) if argv else 1
    try:
        url = probe_url(process_argv(pid), process_env(pid))
        check(url)
    except (ProbeError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(f"healthy: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
