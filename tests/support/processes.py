"""Child processes for tests: ``pixelfleet <command>`` (or another module) started as a
user starts it, waited for until it serves, stopped the way its supervisor would stop it.

Output (stdout and stderr together) goes to a file, never to a pipe, so a chatty child
cannot block on a full pipe, and a failed wait can quote what the child said.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import NoReturn

import pytest

from pixelfleet.net import NotListening, wait_for_port

__all__ = ["Child", "start_child"]

ROOT = Path(__file__).parents[2]


class Child:
    """One started child process and the file its output goes to."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path, *, group: bool) -> None:
        self.name, self.proc, self.log_path, self.group = name, proc, log_path, group

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def output(self, tail: int | None = 6000) -> str:
        """What the child wrote so far (the last ``tail`` characters; all with None)."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return text if tail is None else text[-tail:]
        return ""

    def fail(self, why: str) -> NoReturn:
        pytest.fail(f"{self.name} {why}:\n{self.output()}", pytrace=False)

    async def wait_for_port(self, port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
        """Until ``host:port`` accepts; fails the test (with the child's output) if the
        child exits first or the time runs out."""
        try:
            await wait_for_port(host, port, timeout_s, exited=lambda: self.returncode is not None)
        except NotListening as exc:
            self.fail(f"is not serving ({exc}; exit code {self.returncode})")

    async def wait_until(
        self, check: Callable[[], Awaitable[bool] | bool], what: str, timeout_s: float = 30.0, period_s: float = 0.05
    ) -> None:
        """Until ``check()`` is true (an ``OSError`` from it counts as not yet), failing
        at once if the child exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.returncode is not None:
                self.fail(f"exited with {self.returncode} before {what}")
            with contextlib.suppress(OSError):
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
            if loop.time() > deadline:
                self.fail(f"did not reach {what} in {timeout_s} s")
            await asyncio.sleep(period_s)

    async def wait_for_line(self, needle: str, timeout_s: float = 30.0) -> str:
        """The first output line containing ``needle``, once the child has written it."""
        await self.wait_until(lambda: needle in self.output(None), f"a line with {needle!r}", timeout_s)
        return next(line for line in self.output(None).splitlines() if needle in line)

    async def wait(self, timeout_s: float = 30.0) -> int:
        """Its exit code, once it exits by itself (fails the test after ``timeout_s``)."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.fail(f"did not exit within {timeout_s} s")

    def send(self, sig: int) -> None:
        """Send ``sig`` to the child (its whole process group when started in its own)."""
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> int | None:
        """``sig``, then SIGKILL after ``grace_s``: the exit code, or None when it had to
        be killed. With a process group, whatever is left in the group is killed too."""
        code: int | None = self.returncode
        if code is None:
            self.send(sig)
            try:
                code = await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                code = None
        if self.group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        return code


async def start_child(
    name: str,
    *args: str,
    log_path: Path,
    module: str = "pixelfleet",
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> Child:
    """``python -m <module> <args>`` (``pixelfleet <args>`` by default) from the repository
    root, output to ``log_path``. ``new_session`` puts it in its own process group, so
    ``stop`` also ends the children it started."""
    with open(log_path, "wb") as out:  # noqa: ASYNC230 - once, before the process
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ if env is None else env),
            start_new_session=new_session,
            cwd=ROOT,
        )
    return Child(name, proc, log_path, group=new_session)
