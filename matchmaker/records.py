"""Where ended sessions are written: one JSON line per session, for billing and analytics.

Each ended session reaches exactly one sink write, because only the replica whose
``end_session`` call ended it gets the session back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from matchmaker.config import RECORDS_MEMORY_MAX
from matchmaker.models import Session

log = structlog.get_logger("matchmaker")


class SessionRecord(msgspec.Struct, kw_only=True):
    session_id: str
    tenant: str
    app: str
    slot_id: str
    host_id: str
    region: str
    created_at: float
    connected_at: float | None
    ended_at: float
    end_reason: str
    duration_s: float


def record_of(s: Session) -> SessionRecord:
    assert s.ended_at is not None and s.end_reason is not None
    return SessionRecord(
        session_id=s.session_id,
        tenant=s.tenant,
        app=s.app,
        slot_id=s.slot_id,
        host_id=s.host_id,
        region=s.region,
        created_at=s.created_at,
        connected_at=s.connected_at,
        ended_at=s.ended_at,
        end_reason=str(s.end_reason),
        duration_s=round(s.ended_at - s.created_at, 3),
    )


class RecordSink(Protocol):
    async def write(self, sessions: list[Session]) -> None: ...


class JsonLinesSink:
    """Appends to a file; the write runs in a thread so the event loop never blocks on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()

    async def write(self, sessions: list[Session]) -> None:
        if not sessions:
            return
        data = b"".join(self._encoder.encode(record_of(s)) + b"\n" for s in sessions)
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(data)


class MemorySink:
    """The last ``max_records`` records, in memory (``pixelfleet up``, tests, and a replica
    without ``--records``): bounded, so a long-running replica does not grow forever.
    Older records are dropped and counted in ``dropped``."""

    def __init__(self, max_records: int = RECORDS_MEMORY_MAX) -> None:
        self.records: deque[SessionRecord] = deque(maxlen=max_records)
        self.dropped = 0

    async def write(self, sessions: list[Session]) -> None:
        overflow = max(0, len(self.records) + len(sessions) - (self.records.maxlen or 0))
        if overflow and not self.dropped:
            log.warning(
                "records_dropped",
                kept=self.records.maxlen,
                hint="in-memory records keep only the last ones: use --records FILE to keep all",
            )
        self.dropped += overflow
        self.records.extend(record_of(s) for s in sessions)


def open_sink(path: str | None, memory_max: int = RECORDS_MEMORY_MAX) -> RecordSink:
    """The sink the settings name: a JSON-lines file, or the bounded in-memory ring."""
    return JsonLinesSink(path) if path else MemorySink(memory_max)
