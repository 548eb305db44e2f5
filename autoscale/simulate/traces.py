"""Arrival traces: when each player arrives and how long they play.

Generators for a diurnal week, an unannounced spike and an announced event, and a CSV
loader for real arrivals (format in docs/autoscaling.md). Generated arrivals are a
non-homogeneous Poisson process (thinning) whose rate keeps the wanted number of players
playing at once: rate = players(t) / mean session length.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msgspec

from autoscale.events import EventSpec
from autoscale.forecast import DAY_S, ScheduledEvent
from autoscale.simulate.config import Dist

SESSION = Dist(kind="lognormal", a=1200.0, b=0.8)  # median 20 min, mean ~27 min


class Trace(msgspec.Struct, kw_only=True):
    name: str
    duration_s: float
    arrivals: list[float]  # seconds from the start, ascending
    sessions: list[float]  # session length of each arrival, seconds
    events: list[ScheduledEvent] = []  # what the operator announced (only ours is told)
    origin: float | None = None  # Unix time of t = 0, when the arrivals were ISO 8601 times


def diurnal_players(t: float, peak: float, trough: float, peak_hour: float = 20.0, weekend: float = 1.3) -> float:
    """Players at once at ``t`` (day 0 a Monday): a daily wave peaking at ``peak_hour``,
    busier by ``weekend`` on days 5 and 6."""
    hour = (t % DAY_S) / 3600.0
    wave = ((1.0 + math.cos(2 * math.pi * (hour - peak_hour) / 24.0)) / 2.0) ** 2
    level = trough + (peak - trough) * wave
    return level * (weekend if int(t // DAY_S) % 7 in (5, 6) else 1.0)


def _poisson(
    players: Callable[[float], float], max_players: float, duration_s: float, session: Dist, rng: random.Random
) -> tuple[list[float], list[float]]:
    rate_max = max_players / session.mean
    arrivals: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate_max)
        if t >= duration_s:
            break
        if rng.random() * max_players < players(t):
            arrivals.append(t)
    return arrivals, [session.draw(rng) for _ in arrivals]


def diurnal_week(
    days: int = 7, peak: float = 200.0, trough: float = 20.0, session: Dist = SESSION, seed: int = 1
) -> Trace:
    rng = random.Random(seed)
    duration = days * DAY_S
    arrivals, sessions = _poisson(lambda t: diurnal_players(t, peak, trough), peak * 1.3, duration, session, rng)
    return Trace(name="diurnal", duration_s=duration, arrivals=arrivals, sessions=sessions)


def spike(
    days: int = 7,
    peak: float = 200.0,
    trough: float = 20.0,
    at_s: float | None = None,
    extra: float = 300.0,
    length_s: float = 3600.0,
    onset_s: float = 120.0,
    session: Dist = SESSION,
    seed: int = 2,
) -> Trace:
    """A diurnal week and one unannounced surge of ``extra`` players (a streamer's shout-out),
    rising over ``onset_s``, at 15:00 on day 3 (the last day of a shorter trace) unless ``at_s``."""
    at = min(3, days - 1) * DAY_S + 15 * 3600.0 if at_s is None else at_s

    def players(t: float) -> float:
        surge = 0.0
        if at <= t < at + length_s:
            surge = extra * min(1.0, (t - at) / onset_s) if onset_s > 0 else extra
        return diurnal_players(t, peak, trough) + surge

    rng = random.Random(seed)
    duration = days * DAY_S
    arrivals, sessions = _poisson(players, peak * 1.3 + extra, duration, session, rng)
    return Trace(name="spike", duration_s=duration, arrivals=arrivals, sessions=sessions)


def scheduled_event(
    days: int = 7,
    peak: float = 200.0,
    trough: float = 20.0,
    start_s: float | None = None,
    players: float = 400.0,
    length_s: float = 3 * 3600.0,
    rush_s: float = 600.0,
    session: Dist = SESSION,
    seed: int = 3,
) -> Trace:
    """A diurnal week and an announced launch: ``players`` more at once from ``start_s``
    for ``length_s``, arriving in a rush over ``rush_s`` after the start. The operator
    announced it (``events``) with the start and the players, no ramp. The start: 20:00 on
    day 4 (the last day of a shorter trace) unless ``start_s``."""
    start = min(4, days - 1) * DAY_S + 20 * 3600.0 if start_s is None else start_s
    rng = random.Random(seed)
    duration = days * DAY_S
    arrivals, sessions = _poisson(lambda t: diurnal_players(t, peak, trough), peak * 1.3, duration, session, rng)
    # The rush: `players` arrivals spread over rush_s, then the rate that keeps them playing.
    extra = sorted(start + rng.uniform(0, rush_s) for _ in range(int(players)))
    t = start + rush_s
    while True:
        t += rng.expovariate(players / session.mean)
        if t >= min(start + length_s, duration):
            break
        extra.append(t)
    extra_sessions = [min(session.draw(rng), start + length_s - a + 600) for a in extra]
    merged = sorted(zip(arrivals + extra, sessions + extra_sessions, strict=True))
    event = ScheduledEvent(name="launch", start=start, end=start + length_s, players=players, ramp_s=0.0)
    return Trace(
        name="event",
        duration_s=duration,
        arrivals=[a for a, _ in merged],
        sessions=[s for _, s in merged],
        events=[event],
    )


GENERATORS: dict[str, Callable[[], Trace]] = {"diurnal": diurnal_week, "spike": spike, "event": scheduled_event}


def _seconds(value: str, origin: float | None) -> tuple[float, float | None]:
    """A number of seconds, or an ISO 8601 time (seconds from the first one)."""
    try:
        return float(value), origin
    except ValueError:
        ts = datetime.fromisoformat(value).timestamp()
        origin = ts if origin is None else origin
        return ts - origin, origin


def load_csv(path: str, name: str | None = None) -> Trace:
    """Columns ``arrival`` (seconds from the start, or ISO 8601) and ``duration_s``; other
    columns are ignored. Rows may come in any order. A bad row is a ``ValueError`` naming
    its line."""
    rows: list[tuple[float, float]] = []
    origin: float | None = None
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"arrival", "duration_s"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need arrival, duration_s)")
        for line, row in enumerate(reader, start=2):
            try:
                arrival, origin = _seconds(row["arrival"].strip(), origin)
                duration = float(row["duration_s"])
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if duration < 0 or not math.isfinite(duration) or not math.isfinite(arrival):
                raise ValueError(f"{path}:{line}: duration_s must be a finite number >= 0")
            rows.append((arrival, duration))
    if not rows:
        raise ValueError(f"{path}: no arrivals")
    rows.sort()
    start = min(0.0, rows[0][0])
    arrivals = [a - start for a, _ in rows]
    sessions = [d for _, d in rows]
    end = max(a + d for a, d in zip(arrivals, sessions, strict=True))
    return Trace(
        name=name or Path(path).stem,
        duration_s=end,
        arrivals=arrivals,
        sessions=sessions,
        origin=None if origin is None else origin + start,
    )


def with_events(trace: Trace, specs: list[EventSpec]) -> Trace:
    """``trace`` with announced events, on its clock. Arrivals in ISO 8601: event times are
    ISO 8601 or Unix seconds; arrivals in seconds: event times are seconds from the start."""
    if trace.origin is None and any(isinstance(t, str) for e in specs for t in (e.start, e.end)):
        raise ValueError(f"{trace.name}: ISO 8601 event times need a trace whose arrivals are ISO 8601 times")
    shift = trace.origin or 0.0
    events = [e.event() for e in specs]
    moved = [msgspec.structs.replace(e, start=e.start - shift, end=e.end - shift) for e in events]
    return msgspec.structs.replace(trace, events=[*trace.events, *moved])
