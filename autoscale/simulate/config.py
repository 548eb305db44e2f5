"""The simulator's settings: time distributions, prices, Spot behaviour, the pool policy and
the forecast settings. Read from a JSON file (``pixelfleet simulate --config FILE``);
every field has a default, so ``{}`` is a valid file."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import msgspec

from autoscale.forecast import ForecastSettings
from autoscale.policy import PoolPolicy


class Dist(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``fixed``: always ``a``; ``uniform``: between ``a`` and ``b``; ``lognormal``: median
    ``a``, shape ``b`` (sigma of the log); ``exponential``: mean ``a``. Seconds."""

    kind: Literal["fixed", "uniform", "lognormal", "exponential"]
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.a < 0 or self.b < 0 or (self.kind == "uniform" and self.b < self.a):
            raise ValueError(f"bad {self.kind} distribution: a={self.a}, b={self.b}")

    def draw(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(max(self.a, 1e-9)), self.b)
        return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0

    @property
    def mean(self) -> float:
        if self.kind == "fixed" or self.kind == "exponential":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a * math.exp(self.b**2 / 2)


class Prices(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    on_demand_per_h: float
    spot_per_h: float


# Example hourly prices of a one-GPU instance; replace them with your region's current ones.
DEFAULT_PRICES = {
    "g5.xlarge": Prices(on_demand_per_h=1.006, spot_per_h=0.45),
    "g6.xlarge": Prices(on_demand_per_h=0.805, spot_per_h=0.36),
}


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    instance_type: str = "g5.xlarge"
    prices: dict[str, Prices] = msgspec.field(default_factory=lambda: dict(DEFAULT_PRICES))
    boot_s: Dist = Dist(kind="uniform", a=60.0, b=150.0)  # launch until the agent runs
    cold_start_s: Dist = Dist(kind="uniform", a=90.0, b=210.0)  # the UE build until it streams
    period_s: float = 60.0  # the autoscaler's control period
    spot: bool = True  # hosts above the On-Demand base are Spot (the burst group)
    on_demand_base: int | None = None  # None: the policy's min_hosts
    spot_refused: float = 0.05  # share of Spot launches refused, launched On-Demand instead
    spot_interruptions_per_h: float = 0.002  # per Spot host
    spot_notice_s: float = 120.0  # interruption notice: the host drains, then is reclaimed
    policy: PoolPolicy = PoolPolicy(min_hosts=2, max_hosts=2000)
    forecast: ForecastSettings = ForecastSettings()
    seed: int = 1

    def __post_init__(self) -> None:
        if self.instance_type not in self.prices:
            raise ValueError(f"no prices for instance_type {self.instance_type!r}; add it under prices")
        if self.period_s <= 0 or not 0 <= self.spot_refused <= 1 or self.spot_interruptions_per_h < 0:
            raise ValueError("period_s must be > 0, spot_refused in [0, 1], spot_interruptions_per_h >= 0")

    @property
    def price(self) -> Prices:
        return self.prices[self.instance_type]


def load_config(path: str | None) -> SimConfig:
    """The file's settings over the defaults; a bad file is a ``ValueError`` naming it."""
    if path is None:
        return SimConfig()
    try:
        return msgspec.json.decode(Path(path).read_bytes(), type=SimConfig)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
