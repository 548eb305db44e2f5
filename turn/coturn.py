"""A local coturn process for ``pixelfleet up --turn`` and for tests.

The command line is coturn 4.6's loopback set-up (``-n``, one listening and relay IP), with one change:
the secrets go into a private config file (``-c``, mode 0600 in a 0700 directory)
instead of ``--static-auth-secret`` flags, which every user could read in ``ps``.
``--allow-loopback-peers`` is on because both WebRTC peers of a one-box setup are on
127.0.0.1 (without it relay-only connections time out); never use it in production
(see ``deploy/coturn/``).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import structlog

from pixelfleet.net import NotListening, wait_for_port

__all__ = [
    "Coturn",
    "CoturnError",
    "CoturnOptions",
    "command_line",
    "find_turnserver",
    "port_is_free",
    "relay_port_range",
]

log = structlog.get_logger("turn")


class CoturnError(RuntimeError):
    """coturn is missing or did not start."""


@dataclass(frozen=True, slots=True)
class CoturnOptions:
    secrets: tuple[str, ...]  # newest first; coturn accepts any of them
    host: str = "127.0.0.1"
    port: int = 3478  # UDP and TCP listener
    min_port: int = 49160  # relay ports, one per allocation
    max_port: int = 49260
    realm: str = "pixelfleet"
    allow_loopback_peers: bool = True
    verbose: bool = False  # -v: log every allocation, not only auth failures

    def __repr__(self) -> str:
        return (
            f"CoturnOptions(host={self.host!r}, port={self.port}, "
            f"relay={self.min_port}-{self.max_port}, secrets=<{len(self.secrets)} hidden>)"
        )

    @property
    def urls(self) -> tuple[str, ...]:
        """What peers are given: STUN, and TURN over UDP and TCP (no TLS on loopback)."""
        where = f"{self.host}:{self.port}"
        return (f"stun:{where}", f"turn:{where}?transport=udp", f"turn:{where}?transport=tcp")


def find_turnserver() -> str:
    path = shutil.which("turnserver")
    if path is None:
        raise CoturnError("coturn's turnserver is not installed (Debian/Ubuntu: sudo apt-get install -y coturn)")
    return path


def command_line(binary: str, options: CoturnOptions, workdir: Path) -> list[str]:
    """The turnserver argv (no secrets in it; see ``config_file_text``)."""
    argv = [
        binary,
        "-c",
        str(workdir / "secrets.conf"),
        f"--listening-ip={options.host}",
        f"--relay-ip={options.host}",
        f"--listening-port={options.port}",
        f"--min-port={options.min_port}",
        f"--max-port={options.max_port}",
        f"--realm={options.realm}",
        "--use-auth-secret",
        "--fingerprint",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file=stdout",
        "--simple-log",
        "--no-software-attribute",
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
    ]
    if options.allow_loopback_peers:
        argv.append("--allow-loopback-peers")
    if options.verbose:
        argv.append("-v")
    return argv


def config_file_text(secrets: Sequence[str]) -> str:
    for secret in secrets:
        if not secret or any(c in secret for c in "\r\n#"):
            raise ValueError("a coturn secret must be non-empty, one line, without '#'")
    return "".join(f"static-auth-secret={secret}\n" for secret in secrets)


def port_is_free(host: str, port: int) -> bool:
    """Both UDP and TCP ``port`` can be bound now (else coturn would half-start, or a
    readiness probe would find somebody else's server)."""
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind((host, port))
            udp.bind((host, port))
    except OSError:
        return False
    return True


def relay_port_range(width: int = 40) -> tuple[int, int]:
    """A random relay range, so parallel instances rarely share one (coturn skips busy ports)."""
    low = random.randrange(49152, 65535 - width)
    return low, low + width - 1


class Coturn:
    """``async with Coturn(options) as turn:`` runs turnserver until the block ends."""

    def __init__(self, options: CoturnOptions, *, binary: str | None = None) -> None:
        self.options = options
        self._binary = binary
        self._workdir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def log_text(self, tail: int = 4000) -> str:
        """coturn's own log (auth failures name the username, never the password)."""
        if self._workdir is None or not (self._workdir / "turnserver.log").exists():
            return ""
        return (self._workdir / "turnserver.log").read_text(errors="replace")[-tail:]

    async def start(self, timeout_s: float = 10.0) -> None:
        binary = self._binary or find_turnserver()
        if not port_is_free(self.options.host, self.options.port):
            raise CoturnError(
                f"{self.options.host}:{self.options.port} is already in use "
                "(another TURN server?); pick another port (pixelfleet up --turn-port 0: any free one)"
            )
        workdir = self._workdir = Path(tempfile.mkdtemp(prefix="pixelfleet-coturn-"))  # 0700
        conf = workdir / "secrets.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(config_file_text(self.options.secrets))
        with open(workdir / "turnserver.log", "wb") as out:  # noqa: ASYNC230 - once, at start
            self._proc = await asyncio.create_subprocess_exec(
                *command_line(binary, self.options, workdir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await self._wait_listening(timeout_s)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "coturn_started",
            pid=self._proc.pid,
            host=self.options.host,
            port=self.options.port,
            relay_ports=f"{self.options.min_port}-{self.options.max_port}",
        )

    async def _wait_listening(self, timeout_s: float) -> None:
        proc = self._proc
        assert proc is not None
        try:
            await wait_for_port(
                self.options.host, self.options.port, timeout_s, exited=lambda: proc.returncode is not None
            )
        except NotListening as exc:
            raise CoturnError(f"turnserver: {exc} (exit code {proc.returncode}):\n{self.log_text()}") from None

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
