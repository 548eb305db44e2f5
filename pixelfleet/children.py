"""Child processes of a running command (``pixelfleet up --nodes``): started with their
output in a file, stopped with SIGTERM then SIGKILL, and ended by the kernel if the
parent dies first, so a killed ``up`` leaves nothing running.

(The tests' ``tests/support/processes.py`` is the same idea with pytest's failures.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pixelfleet.net import NotListening, wait_for_port

__all__ = ["ChildError", "ChildProcess", "python_module"]

_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child did not start, or ended before it served; the message quotes its output."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (the same virtualenv)."""
    return [sys.executable, "-m", module, *args]


class ChildProcess:
    """One child: ``await ChildProcess.start(...)``, ``await child.stop()``."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None
    ) -> ChildProcess:
        """In its own session, so a terminal's Ctrl+C reaches the parent only and the
        parent stops its children in order."""
        with open(log_path, "ab") as out:  # noqa: ASYNC230 - once, before the process
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(os.environ if env is None else env),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return cls(name, proc, log_path)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def output(self, tail: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-tail:]
        return ""

    async def wait_for_port(self, port: int, timeout_s: float, host: str = "127.0.0.1") -> None:
        try:
            await wait_for_port(host, port, timeout_s, exited=lambda: self.returncode is not None)
        except NotListening as exc:
            raise ChildError(
                f"{self.name} is not serving ({exc}; exit code {self.returncode}); its output "
                f"({self.log_path}):\n{self.output()}"
            ) from None

    async def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``: the exit code, None when killed."""
        if self.returncode is not None:
            return self.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
            return None
