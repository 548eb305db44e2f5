"""Child processes of the benchmarks: load generators spoken to over stdin/stdout."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import signal
import sys
from typing import Any


def die_with_parent() -> None:
    """So a killed orchestrator leaves no child behind (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def tail(path: str, n: int = 3000) -> str:
    """The end of a child's log, for an error message."""
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return f.read()[-n:]
    return ""


class JsonLineChild:
    """A generator process: one JSON command line in, one JSON answer line out."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: str) -> None:
        self.name, self.proc, self.log = name, proc, log

    @staticmethod
    async def spawn(
        module: str,
        cfg: dict[str, Any],
        log: str,
        *,
        limit: int,
        env: dict[str, str] | None = None,
        new_session: bool = False,
    ) -> asyncio.subprocess.Process:
        with open(log, "wb") as err:  # noqa: ASYNC230 - one small local file per child
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                "--config",
                json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=limit,
                preexec_fn=die_with_parent,
                start_new_session=new_session,
                env=env,
            )

    async def call(self, timeout: float, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.name} exited during {cmd}:\n{tail(self.log)}")
        out: dict[str, Any] = json.loads(line)
        if not out.pop("ok"):
            raise RuntimeError(f"{self.name} failed {cmd}: {out.get('error')}\n{tail(self.log)}")
        return out

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call(10, "quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
