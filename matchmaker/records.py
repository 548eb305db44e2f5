"""Where ended sessions are written: one JSON line per session, for billing and analytics.

Each ended session reaches exactly one sink write, because only the replica whose
``end_session`` call ended it gets the session back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import msgspec

from matchmaker.models import Session


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
    return SessionRecord(session_id=s.session_id, tenant=s.tenant, app=s.app, slot_id=s.slot_id,
                         host_id=s.host_id, region=s.region, created_at=s.created_at,
                         connected_at=s.connected_at, ended_at=s.ended_at,
                         end_reason=str(s.end_reason), duration_s=round(s.ended_at - s.created_at, 3))


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
    """Keeps records in a list (tests, and ``pixelfleet up`` without a records file)."""

    def __init__(self) -> None:
        self.records: list[SessionRecord] = []

    async def write(self, sessions: list[Session]) -> None:
        self.records.extend(record_of(s) for s in sessions)
