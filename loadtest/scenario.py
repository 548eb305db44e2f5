"""Load-test scenarios: a small declarative file (TOML or JSON) and its arrival schedule.

A scenario says how players arrive over time (phases of ramp, steady, spike and
diurnal arrival rates), what each session does (length, spectators, ICE candidates,
reconnects), what fraction misbehaves, and how many sessions are real WebRTC peers.
Everything here is pure: the same file and seed give the same schedule in every worker
process, so a worker only needs its index to know its share.

The file format is in docs/loadtest.md.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

# Hard ceilings, whatever a file asks: the tester is bounded by construction.
MAX_SESSIONS = 1_000_000
MAX_DURATION_S = 24 * 3600.0
MAX_CONCURRENT = 100_000
MAX_SESSION_S = 24 * 3600.0
ABUSE_KINDS = ("malformed", "oversized", "flooding")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the problem."""


class Range(msgspec.Struct, forbid_unknown_fields=True):
    """A uniform draw between ``min`` and ``max`` (inclusive for integers)."""

    min: float
    max: float


class _Phase(msgspec.Struct, forbid_unknown_fields=True, tag_field="kind"):
    duration_s: float


class Steady(_Phase, tag="steady"):
    rate: float  # arrivals per second


class Ramp(_Phase, tag="ramp"):
    from_rate: float
    to_rate: float


class Spike(_Phase, tag="spike"):
    """``rate``, with ``peak_rate`` for ``width_s`` from ``at_s`` into the phase."""

    rate: float
    peak_rate: float
    at_s: float
    width_s: float


class Diurnal(_Phase, tag="diurnal"):
    """A day compressed into ``period_s``: a cosine from ``min_rate`` (t=0) to ``max_rate``."""

    min_rate: float
    max_rate: float
    period_s: float


Phase = Steady | Ramp | Spike | Diurnal


class SessionSpec(msgspec.Struct, forbid_unknown_fields=True):
    length_s: float | Range = 5.0
    spectators: int | Range = 0  # extra players on the same streamer (signalling target)
    ice_candidates: int = 4  # per side
    reconnect_probability: float = 0.0  # chance a session drops its socket once and comes back


class Abuse(msgspec.Struct, forbid_unknown_fields=True):
    fraction: float = 0.0
    kinds: list[Literal["malformed", "oversized", "flooding"]] = msgspec.field(
        default_factory=lambda: ["malformed", "oversized", "flooding"]
    )


class WebRtc(msgspec.Struct, forbid_unknown_fields=True):
    sample: int = 0  # this many sessions are real aiortc peers
    input_probes: int = 3  # input round trips measured per peer
    timeout_s: float = 20.0  # session request to first frame, at most


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    max_sessions: int = 10_000
    max_concurrent: int = 2_000
    drain_s: float = 15.0  # after the last arrival, how long sessions may take to finish
    step_timeout_s: float = 15.0  # any single wait (connect, offer, answer)
    queue_timeout_s: float = 120.0  # platform target: longest wait in the matchmaker's queue


class BenchmarkSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A component benchmark run as a scenario (loadtest/benchmarks.py)."""

    kind: Literal["signaling", "matchmaker"]
    options: dict[str, str | int | float | bool | list[str | int | float]] = {}
    timeout_s: float = 3600.0  # the whole run, at most (bounded by construction)


class Scenario(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    target: Literal["signaling", "platform", "benchmark"]
    phases: list[Phase] = []
    seed: int = 1
    arrivals: Literal["even", "poisson"] = "even"
    app: str = "default"  # platform target: the app players ask the matchmaker for
    workers: int = 1
    session: SessionSpec = msgspec.field(default_factory=SessionSpec)
    abuse: Abuse = msgspec.field(default_factory=Abuse)
    webrtc: WebRtc = msgspec.field(default_factory=WebRtc)
    limits: Limits = msgspec.field(default_factory=Limits)
    # target "benchmark": a component benchmark and its options (loadtest/benchmarks.py)
    benchmark: BenchmarkSpec | None = None

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)


def load(path: str | Path) -> Scenario:
    """Read and check a scenario file (``.toml`` or ``.json``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {p}: {exc.strerror}") from None
    return parse(data, "json" if p.suffix == ".json" else "toml", str(p))


def parse(data: bytes | str, fmt: Literal["toml", "json"] = "toml", where: str = "scenario") -> Scenario:
    try:
        if fmt == "json":
            scenario = msgspec.json.decode(data, type=Scenario)
        else:
            scenario = msgspec.toml.decode(data, type=Scenario)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    validate(scenario, where)
    return scenario


def validate(s: Scenario, where: str = "scenario") -> None:
    if (s.target == "benchmark") != (s.benchmark is not None):
        raise ScenarioError(f'{where}: a [benchmark] table goes with target = "benchmark", and only with it')
    if s.benchmark is not None:
        if s.phases:
            raise ScenarioError(f"{where}: a benchmark scenario has no phases (the benchmark paces itself)")
        return
    problems: list[str] = []
    if not s.phases:
        problems.append("phases: at least one phase is needed")
    for i, ph in enumerate(s.phases):
        rates = [v for k, v in msgspec.structs.asdict(ph).items() if k.endswith("rate")]
        if ph.duration_s <= 0 or any(r < 0 or not math.isfinite(r) for r in rates):
            problems.append(f"phases[{i}]: duration_s must be > 0 and rates >= 0")
        if isinstance(ph, Diurnal) and ph.period_s <= 0:
            problems.append(f"phases[{i}]: period_s must be > 0")
        if isinstance(ph, Spike) and ph.width_s < 0:
            problems.append(f"phases[{i}]: width_s must be >= 0")
    if s.duration_s > MAX_DURATION_S:
        problems.append(f"the phases last {s.duration_s:.0f} s, over the {MAX_DURATION_S:.0f} s ceiling")
    if not 1 <= s.limits.max_sessions <= MAX_SESSIONS:
        problems.append(f"limits.max_sessions must be 1..{MAX_SESSIONS}")
    if not 1 <= s.limits.max_concurrent <= MAX_CONCURRENT:
        problems.append(f"limits.max_concurrent must be 1..{MAX_CONCURRENT}")
    if s.limits.drain_s < 0 or s.limits.step_timeout_s <= 0 or s.limits.queue_timeout_s <= 0:
        problems.append("limits.drain_s must be >= 0, limits.step_timeout_s and queue_timeout_s > 0")
    if not 1 <= s.workers <= 64:
        problems.append("workers must be 1..64")
    length = s.session.length_s
    lo, hi = (length.min, length.max) if isinstance(length, Range) else (length, length)
    if not 0 <= lo <= hi <= MAX_SESSION_S:
        problems.append(f"session.length_s must be 0..{MAX_SESSION_S:.0f} with min <= max")
    sp = s.session.spectators
    if (sp.min < 0 or sp.max < sp.min) if isinstance(sp, Range) else sp < 0:
        problems.append("session.spectators must be >= 0 (with min <= max)")
    if s.target == "platform" and (isinstance(sp, Range) or sp > 0):
        problems.append("session.spectators: the platform target has one player per session token; use 0")
    if not 0 <= s.session.ice_candidates <= 100:
        problems.append("session.ice_candidates must be 0..100")
    if not 0 <= s.session.reconnect_probability <= 1:
        problems.append("session.reconnect_probability must be 0..1")
    if not 0 <= s.abuse.fraction <= 1 or (s.abuse.fraction > 0 and not s.abuse.kinds):
        problems.append("abuse.fraction must be 0..1, with at least one kind when above 0")
    if s.webrtc.sample < 0 or s.webrtc.input_probes < 0 or s.webrtc.timeout_s <= 0:
        problems.append("webrtc.sample and webrtc.input_probes must be >= 0, webrtc.timeout_s > 0")
    if problems:
        raise ScenarioError(f"{where}: " + "; ".join(problems))


# ----------------------------------------------------------------------------- arrivals
def rate_at(phase: Phase, t: float) -> float:
    """Arrivals per second ``t`` seconds into ``phase``."""
    if isinstance(phase, Steady):
        return phase.rate
    if isinstance(phase, Ramp):
        return phase.from_rate + (phase.to_rate - phase.from_rate) * min(1.0, t / phase.duration_s)
    if isinstance(phase, Spike):
        return phase.peak_rate if phase.at_s <= t < phase.at_s + phase.width_s else phase.rate
    return phase.min_rate + (phase.max_rate - phase.min_rate) * (1 - math.cos(2 * math.pi * t / phase.period_s)) / 2


def peak_rate(phase: Phase) -> float:
    if isinstance(phase, Steady):
        return phase.rate
    if isinstance(phase, Ramp):
        return max(phase.from_rate, phase.to_rate)
    if isinstance(phase, Spike):
        return max(phase.rate, phase.peak_rate)
    return max(phase.min_rate, phase.max_rate)


STEP_S = 0.001  # integration step of the even schedule


def arrival_times(s: Scenario) -> list[float]:
    """Seconds from the start at which sessions begin, at most ``limits.max_sessions``.

    ``even``: a session each time the integral of the rate crosses a whole number, so
    the count is the area under the rate curve (rounded down). ``poisson``: a
    non-homogeneous Poisson process (thinning), seeded by ``seed``.
    """
    out: list[float] = []
    cap = s.limits.max_sessions
    offset = 0.0
    rng = random.Random(s.seed)
    area = 0.0
    for phase in s.phases:
        if s.arrivals == "poisson":
            top = peak_rate(phase)
            t = 0.0
            while top > 0 and len(out) < cap:
                t += rng.expovariate(top)
                if t >= phase.duration_s:
                    break
                if rng.random() * top <= rate_at(phase, t):
                    out.append(offset + t)
        else:
            steps = max(1, round(phase.duration_s / STEP_S))
            dt = phase.duration_s / steps
            for i in range(steps):
                t = i * dt
                area += rate_at(phase, t + dt / 2) * dt
                while area >= 1.0 - 1e-9 and len(out) < cap:
                    area -= 1.0
                    out.append(offset + t + dt)
        offset += phase.duration_s
        if len(out) >= cap:
            break
    return out[:cap]


# ----------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class Plan:
    """What session ``k`` does; drawn from the seed and ``k`` alone."""

    k: int
    at: float  # seconds from the start
    kind: Literal["protocol", "webrtc", "abuse"]
    length_s: float
    spectators: int
    reconnect: bool
    abuse: str = ""


def _rng(seed: int, k: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _draw(v: float | Range, rng: random.Random, integer: bool = False) -> float:
    if not isinstance(v, Range):
        return v
    return float(rng.randint(int(v.min), int(v.max))) if integer else rng.uniform(v.min, v.max)


def webrtc_indices(total: int, sample: int) -> set[int]:
    """The sampled sessions, spread evenly over the run (not all at the start)."""
    n = min(sample, total)
    return {int((i + 0.5) * total / n) for i in range(n)} if n else set()


def plans(s: Scenario) -> list[Plan]:
    times = arrival_times(s)
    sampled = webrtc_indices(len(times), s.webrtc.sample)
    out = []
    for k, at in enumerate(times):
        rng = _rng(s.seed, k)
        abusive = k not in sampled and rng.random() < s.abuse.fraction
        kind: Literal["protocol", "webrtc", "abuse"] = "webrtc" if k in sampled else "abuse" if abusive else "protocol"
        out.append(
            Plan(
                k=k,
                at=at,
                kind=kind,
                length_s=_draw(s.session.length_s, rng),
                spectators=int(_draw(s.session.spectators, rng, integer=True)),
                reconnect=rng.random() < s.session.reconnect_probability,
                abuse=rng.choice(s.abuse.kinds) if abusive else "",
            )
        )
    return out


def share(all_plans: list[Plan], worker: int, workers: int) -> list[Plan]:
    """Worker ``worker``'s sessions: every ``workers``-th, so each sees the whole shape."""
    return all_plans[worker::workers]
