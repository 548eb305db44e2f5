"""Placement policy: in which order to try the READY slots for a request. Pure.

- ``spread`` (default): least loaded first — the higher of the slot's NVENC and GPU
  load — so streams land where the encoder has headroom.
- ``pack``: hosts with the fewest free slots first, so whole hosts empty out and the
  autoscaler can give them back.

Both put slots in the requested region first (affinity, not a hard filter: a player
far away beats a player waiting), and drop slots whose GPU model differs when one is
asked for. Equal candidates are shuffled so replicas do not all race for one slot.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable

from matchmaker.models import AllocationRequest, Slot

POLICIES = ("spread", "pack")


def rank(
    candidates: list[Slot], request: AllocationRequest, policy: str = "spread", rng: random.Random | None = None
) -> list[Slot]:
    if policy not in POLICIES:
        raise ValueError(f"unknown placement policy {policy!r}; choose from {POLICIES}")
    # The module's generator unless one is given: a fresh Random() per call would seed
    # itself from os.urandom on every allocation (and random.random is reseeded on fork).
    rand = random.random if rng is None else rng.random
    pool = [s for s in candidates if not request.gpu_model or s.gpu_model == request.gpu_model]
    free_on_host = collections.Counter(s.host_id for s in pool)
    jitter = {s.slot_id: rand() for s in pool}

    key: Callable[[Slot], tuple[float, ...]]
    if policy == "spread":
        key = lambda s: (_away(s, request), load_pct(s), -free_on_host[s.host_id], jitter[s.slot_id])  # noqa: E731
    else:
        key = lambda s: (_away(s, request), free_on_host[s.host_id], load_pct(s), jitter[s.slot_id])  # noqa: E731
    return sorted(pool, key=key)


def load_pct(slot: Slot) -> int:
    """The load placement compares: whole percent of the higher of NVENC and GPU load
    (the Redis store's script rounds exactly so: floor(x * 100 + 0.5))."""
    return math.floor(max(slot.nvenc_load, slot.gpu_load) * 100 + 0.5)


def _away(slot: Slot, request: AllocationRequest) -> int:
    return 0 if not request.region or slot.region == request.region else 1
