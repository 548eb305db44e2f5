"""One helper for the tests that wait for a condition on real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest


async def eventually(check: Callable[[], Any], what: str, within_s: float) -> Any:
    """``check()`` (sync or async) until it is truthy; its value. ``within_s`` bounds a
    broken run, never a performance limit."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")
