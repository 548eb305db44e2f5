"""Where ended sessions are written: one JSON line per session, for billing and analytics.

The record format (``models.SessionRecord``) and its end reasons are documented in
docs/records.md. Records are written at least once: a record is taken from the store
under a lease and acknowledged after the write, so a replica that dies in between leaves
it to another, and a repeat carries the same ``session_id`` (the summary counts it once).
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from matchmaker.config import RECORDS_MEMORY_MAX
from matchmaker.models import RECORD_FORMAT_VERSION, Session, SessionRecord

__all__ = [
    "JsonLinesSink",
    "MemorySink",
    "RecordSink",
    "BothSinks",
    "open_sink",
    "record_of",
    "records_of",
    "times_ordered",
]

log = structlog.get_logger("matchmaker")


def record_of(s: Session) -> SessionRecord:
    """The record of an ended session. Durations never go below 0, so a record whose times
    are out of order (``times_ordered``) bills nothing for the missing span, not a credit."""
    if s.ended_at is None or s.end_reason is None:
        raise ValueError(f"session {s.session_id} has not ended: no record")
    held = max(0.0, s.ended_at - s.created_at)
    connected = 0.0 if s.connected_at is None else max(0.0, s.ended_at - s.connected_at)
    share = 1.0 if s.gpu_share is None else s.gpu_share
    return SessionRecord(
        format_version=RECORD_FORMAT_VERSION,
        session_id=s.session_id,
        tenant=s.tenant,
        app=s.app,
        region=s.region,
        host_id=s.host_id,
        slot_id=s.slot_id,
        streamer_id=s.streamer_id,
        client_key=s.client_key,
        created_at=s.created_at,
        connected_at=s.connected_at,
        ended_at=s.ended_at,
        end_reason=s.end_reason,
        duration_s=round(connected, 3),
        held_s=round(held, 3),
        gpu_share=share,
        gpu_seconds=round(held * share, 3),
    )


def times_ordered(r: SessionRecord) -> bool:
    """``created_at <= connected_at <= ended_at`` (the connect only when there was one)."""
    if r.connected_at is None:
        return r.created_at <= r.ended_at
    return r.created_at <= r.connected_at <= r.ended_at


def records_of(sessions: list[Session]) -> list[SessionRecord]:
    """The sessions' records. One whose times are out of order (a store bug) is still
    written, as it is: dropping it would lose billing data, and the times as they came are
    what tells the bug; a warning names it."""
    out = [record_of(s) for s in sessions]
    for r in out:
        if not times_ordered(r):
            log.warning(
                "record_times_out_of_order",
                session=r.session_id,
                created_at=r.created_at,
                connected_at=r.connected_at,
                ended_at=r.ended_at,
                reason=str(r.end_reason),
            )
    return out


class RecordSink(Protocol):
    async def write(self, sessions: list[Session]) -> None: ...


class JsonLinesSink:
    """Appends to a file, one record per line; the write runs in a thread so the event
    loop never blocks on disk. A batch is one ``write`` call, so a crash leaves at most
    the last line cut short (``pixelfleet records summary`` names it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()

    async def write(self, sessions: list[Session]) -> None:
        if not sessions:
            return
        data = b"".join(self._encoder.encode(r) + b"\n" for r in records_of(sessions))
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
        self.records.extend(records_of(sessions))


class BothSinks:
    """The records file and the table: a batch is acknowledged only once both hold it (a
    failure of either leaves it to a later flush, which may repeat it in the other)."""

    def __init__(self, *sinks: RecordSink) -> None:
        self.sinks = sinks

    async def write(self, sessions: list[Session]) -> None:
        for sink in self.sinks:
            await sink.write(sessions)


def open_sink(
    path: str | None,
    memory_max: int = RECORDS_MEMORY_MAX,
    *,
    table: str | None = None,
    retention_days: float = 400.0,
) -> RecordSink:
    """The sink the settings name: a DynamoDB table, a JSON-lines file, both, or else the
    bounded in-memory ring."""
    if table:
        from matchmaker.records_dynamodb import DynamoDbSink

        dynamo = DynamoDbSink(table, retention_days=retention_days)
        return BothSinks(JsonLinesSink(path), dynamo) if path else dynamo
    return JsonLinesSink(path) if path else MemorySink(memory_max)
