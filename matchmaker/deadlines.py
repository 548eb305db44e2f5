"""Time limits for many short store operations, with one timer for all of them.

``asyncio.timeout`` costs a ``Timeout`` object, a timer in the event loop's heap and, on
Python 3.11, a ``getpid()`` system call for each of its two ``get_running_loop()``; a store
operation is a few tens of microseconds of Python around one shared round trip, and a
replica's profile had 5 % of its samples in that bookkeeping. Here an operation costs a
dict entry. While any is live, one timer ticks every ``tick_s`` and cancels the tasks of
those past their limit, so a limit is kept at most a tick late. The cancellation is told
apart from any other the way ``asyncio.timeout`` does it: the entry records that it
cancelled, and ``leave`` takes that cancellation back (``uncancel``).
"""

from __future__ import annotations

import asyncio
import itertools
import time

__all__ = ["Deadlines", "Entry"]


class Entry:
    __slots__ = ("key", "due", "task", "expired")

    def __init__(self, key: int, due: float, task: asyncio.Task[object]) -> None:
        self.key = key
        self.due = due
        self.task = task
        self.expired = False  # this entry cancelled its task


class Deadlines:
    def __init__(self, tick_s: float = 0.05) -> None:
        self._tick_s = tick_s
        self._live: dict[int, Entry] = {}
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, task: asyncio.Task[object], limit_s: float) -> Entry:
        entry = Entry(next(self._keys), time.monotonic() + limit_s, task)
        self._live[entry.key] = entry
        if self._timer is None:
            self._timer = task.get_loop().call_later(min(self._tick_s, limit_s), self._tick)
        return entry

    def leave(self, entry: Entry) -> bool:
        """Unregister; True when this entry cancelled its task (the caller turns the
        CancelledError into a timeout). Its cancellation is taken back once."""
        if self._live.pop(entry.key, None) is not None and entry.expired:
            entry.task.uncancel()
        return entry.expired

    def _tick(self) -> None:
        self._timer = None
        if not self._live:
            return
        now = time.monotonic()
        for entry in list(self._live.values()):
            if not entry.expired and entry.due <= now:
                entry.expired = True
                entry.task.cancel()
        loop = next(iter(self._live.values())).task.get_loop()
        self._timer = loop.call_later(self._tick_s, self._tick)

    @property
    def live(self) -> int:
        return len(self._live)
