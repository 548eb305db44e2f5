"""Scheduled events as an operator writes them: inline in a config, or in an events file the
controller re-reads whenever it changes, so a launch can be announced to a running pool.

An event's ``start`` and ``end`` are Unix seconds or ISO 8601 times with a UTC offset
(``2026-03-01T20:00:00+01:00``, or ``Z``). The file is a JSON list of events, or an
object ``{"events": [...]}``; see docs/autoscaling.md.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import msgspec
import structlog

from autoscale.forecast import ScheduledEvent

log = structlog.get_logger("autoscale.events")


def parse_time(value: float | str, what: str) -> float:
    """Unix seconds, or an ISO 8601 time with an offset, as Unix seconds."""
    if not isinstance(value, str):
        return float(value)
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is neither Unix seconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{what}: {value!r} has no UTC offset (add Z or +HH:MM)")
    return when.timestamp()


class EventSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A ``ScheduledEvent`` as written: the same fields, times as numbers or ISO 8601."""

    name: str = "event"
    start: float | str
    end: float | str
    players: float
    ramp_s: float = 600.0

    def __post_init__(self) -> None:
        self.event()  # refuse a bad time or window when decoded, not when first used

    def event(self) -> ScheduledEvent:
        return ScheduledEvent(
            name=self.name,
            start=parse_time(self.start, f"event {self.name!r} start"),
            end=parse_time(self.end, f"event {self.name!r} end"),
            players=self.players,
            ramp_s=self.ramp_s,
        )


class _EventsDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    events: list[EventSpec] = []


def decode_event_specs(data: bytes) -> list[EventSpec]:
    """An events file's content as written: a JSON list of events or ``{"events": [...]}``."""
    specs = msgspec.json.decode(data, type=list[EventSpec] | _EventsDoc)
    return specs.events if isinstance(specs, _EventsDoc) else specs


def decode_events(data: bytes) -> list[ScheduledEvent]:
    """An events file's content, times in Unix seconds."""
    return [s.event() for s in decode_event_specs(data)]


class EventsFile:
    """An events file watched by its modification time (and size): ``poll`` answers the
    events when the file changed since the last call, else None. A missing file means no
    events; a file that does not decode is logged and leaves the events as they were."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None  # (mtime ns, size); (-1, -1): missing
        self.error: str | None = None  # why the last change was refused, if it was

    def poll(self) -> list[ScheduledEvent] | None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (-1, -1)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        if stamp == (-1, -1):
            log.info("autoscale_events_loaded", path=str(self.path), events=0, missing=True)
            self.error = None
            return []
        try:
            events = decode_events(self.path.read_bytes())
        except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            self.error = f"{self.path}: {exc}"
            log.warning("autoscale_events_invalid", path=str(self.path), error=str(exc))
            return None
        self.error = None
        log.info("autoscale_events_loaded", path=str(self.path), events=len(events), names=[e.name for e in events])
        return events
