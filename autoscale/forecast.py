"""Demand forecast of one pool (tenant, app, region): how many players may want a slot at
once over the next ``horizon_s`` (instance boot + UE cold start), as a quantile.

Explainable on purpose, three parts an operator can read in the decision log:

- **recent**: the demand now, plus its rising trend over ``recent_window_s`` carried over
  the horizon, plus Poisson noise at the quantile (``z * sqrt(level)``);
- **seasonal**: for each of the last ``history_days`` days, how much demand grew from this
  time of day to the peak of the following ``horizon_s`` (a ratio, so a busier day scales
  it); the median of those growths applied to the demand now (one odd day does not move
  it), plus the same Poisson noise at the quantile. With a week of history the same
  weekday is one of them (weekly seasonality is a day among the seven);
- **events**: players an operator announced (``ScheduledEvent``), ramping up over
  ``ramp_s`` before the start: the most of them due within the horizon.

The forecast is ``max(recent, seasonal)``; while an event is near or on, at least the usual
demand at this time of day (past days' peaks over the horizon, or the demand seen when the
event's window opened) plus the event's players. Demand is concurrent: slots in use
plus tickets queued.
"""

from __future__ import annotations

import math
from collections import deque
from statistics import NormalDist

import msgspec

DAY_S = 86_400.0


class ForecastSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    quantile: float = 0.9  # of the demand over the horizon
    bucket_s: float = 300.0  # history resolution: the peak demand of each bucket is kept
    recent_window_s: float = 900.0  # the trend is fitted over this much recent demand
    history_days: int = 7  # days of seasonal history kept and used
    max_growth: float = 4.0  # a seasonal growth ratio is clamped to [1/max_growth, max_growth]

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"forecast quantile must be in [0.5, 1), not {self.quantile}")
        if self.bucket_s <= 0 or self.recent_window_s <= 0 or self.history_days < 0 or self.max_growth < 1:
            raise ValueError("forecast bucket_s and recent_window_s must be > 0, history_days >= 0, max_growth >= 1")


class ScheduledEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operator's announcement: ``players`` more concurrent players from ``start`` to
    ``end`` (seconds on the forecaster's clock), ramping up over ``ramp_s`` before ``start``."""

    name: str = "event"
    start: float
    end: float
    players: float
    ramp_s: float = 600.0

    def __post_init__(self) -> None:
        if self.end <= self.start or self.players < 0 or self.ramp_s < 0:
            raise ValueError(f"event {self.name!r}: needs end > start, players >= 0, ramp_s >= 0")

    def expected(self, t: float) -> float:
        """Players of this event at time ``t``."""
        if t >= self.end or t < self.start - self.ramp_s:
            return 0.0
        if t >= self.start or self.ramp_s == 0:
            return self.players
        return self.players * (t - (self.start - self.ramp_s)) / self.ramp_s


class History(msgspec.Struct, kw_only=True):
    """The forecaster's seasonal memory, as saved between runs: the peak demand of each
    ``bucket_s`` bucket (bucket index = Unix time // bucket_s)."""

    bucket_s: float
    buckets: list[tuple[int, float]]


class Forecast(msgspec.Struct, frozen=True, kw_only=True):
    """One forecast with its parts, as the decision log records it."""

    at: float
    horizon_s: float
    quantile: float
    current: float  # demand now
    recent: float  # now + trend + noise
    seasonal: float | None  # None until a day of history covers this time of day
    seasonal_days: int  # how many past days gave a growth
    events: float  # announced players due within the horizon (their peak)
    value: float  # max(recent, seasonal), and at least usual + events while events > 0


def quantile_of(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty list."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class DemandForecaster:
    """Fed one observation per control period (``observe``), asked for a forecast
    (``forecast``). Memory is bounded: ``history_days`` of buckets and one recent window."""

    def __init__(self, settings: ForecastSettings | None = None, events: tuple[ScheduledEvent, ...] = ()) -> None:
        self.settings = settings or ForecastSettings()
        self.events = list(events)
        self._z = NormalDist().inv_cdf(self.settings.quantile)
        self._buckets: dict[int, float] = {}  # bucket index -> peak demand in it
        self._recent: deque[tuple[float, float]] = deque()
        self._oldest_bucket: int | None = None
        self._usual_level: float | None = None  # demand when an event's window opened

    def add_event(self, event: ScheduledEvent) -> None:
        self.events.append(event)

    def history(self) -> History:
        return History(bucket_s=self.settings.bucket_s, buckets=sorted(self._buckets.items()))

    def restore(self, history: History) -> bool:
        """Take saved seasonal memory (only at the same ``bucket_s``); whether it was taken.
        Observations already made win over saved ones for the same bucket."""
        if history.bucket_s != self.settings.bucket_s:
            return False
        for b, peak in history.buckets:
            self._buckets[b] = max(self._buckets.get(b, 0.0), peak)
        self._oldest_bucket = None  # pruned to history_days on the next observation
        return True

    def observe(self, t: float, demand: float) -> None:
        s = self.settings
        b = int(t // s.bucket_s)
        self._buckets[b] = max(self._buckets.get(b, 0.0), demand)
        self._recent.append((t, demand))
        while self._recent and self._recent[0][0] < t - s.recent_window_s:
            self._recent.popleft()
        keep_from = b - int((s.history_days * DAY_S + DAY_S) // s.bucket_s)
        if self._oldest_bucket is None or keep_from - self._oldest_bucket > len(self._buckets):
            self._buckets = {k: v for k, v in self._buckets.items() if k >= keep_from}  # first call, or a long gap
            self._oldest_bucket = keep_from
        while self._oldest_bucket < keep_from:
            self._buckets.pop(self._oldest_bucket, None)
            self._oldest_bucket += 1

    def _trend(self) -> float:
        """Least-squares slope of the recent window, players per second (0 when too few)."""
        n = len(self._recent)
        if n < 3:
            return 0.0
        mt = sum(t for t, _ in self._recent) / n
        md = sum(d for _, d in self._recent) / n
        var = sum((t - mt) ** 2 for t, _ in self._recent)
        if var == 0:
            return 0.0
        return sum((t - mt) * (d - md) for t, d in self._recent) / var

    def _peak(self, start: float, end: float) -> float | None:
        """Peak demand in the history buckets covering [start, end]; None if any is missing."""
        s = self.settings
        peak = None
        for b in range(int(start // s.bucket_s), int(end // s.bucket_s) + 1):
            v = self._buckets.get(b)
            if v is None:
                return None
            peak = v if peak is None else max(peak, v)
        return peak

    def forecast(self, t: float, horizon_s: float) -> Forecast:
        s = self.settings
        current = self._recent[-1][1] if self._recent else 0.0
        rise = max(0.0, self._trend()) * horizon_s
        recent = current + rise + self._z * math.sqrt(current + rise)
        growths: list[float] = []
        usual_peaks: list[float] = []
        for day in range(1, s.history_days + 1):
            then = t - day * DAY_S
            level_then = self._peak(then, then)
            ahead = self._peak(then, then + horizon_s)
            if level_then is None or ahead is None:
                continue
            usual_peaks.append(ahead)
            growths.append(min(s.max_growth, max(1.0 / s.max_growth, (ahead + 1.0) / (level_then + 1.0))))
        seasonal = None
        if growths:
            level = (current + 1.0) * quantile_of(growths, 0.5) - 1.0
            seasonal = level + self._z * math.sqrt(max(level, 0.0))
        steps = max(1, math.ceil(horizon_s / s.bucket_s))
        events = max(sum(e.expected(t + horizon_s * i / steps) for e in self.events) for i in range(steps + 1))
        base = max(recent, seasonal if seasonal is not None else 0.0)
        value = base
        if events > 0:
            # While an announced event is near or on: the usual demand at this time of day
            # (past days' peaks, or the demand seen when the event's window opened) plus
            # the announced players; never less than what the demand itself says.
            if self._usual_level is None:
                self._usual_level = current
            usual = quantile_of(usual_peaks, s.quantile) if usual_peaks else self._usual_level
            value = max(base, usual + events)
        else:
            self._usual_level = None
        return Forecast(
            at=t,
            horizon_s=horizon_s,
            quantile=s.quantile,
            current=current,
            recent=round(recent, 3),
            seasonal=None if seasonal is None else round(seasonal, 3),
            seasonal_days=len(growths),
            events=round(events, 3),
            value=round(value, 3),
        )
