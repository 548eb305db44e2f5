"""Which slot each GPU process and encoder session belongs to: NVML names processes, a
slot is its streamer's process group (the streamer may fork encoder helpers)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gpu_agent.probe import HostSample


@dataclass(slots=True)
class SlotGpu:
    """What NVML says about one slot's processes."""

    memory_bytes: int = 0
    sm_util: int = 0
    enc_util: int = 0
    encoder_sessions: int = 0


def attribute(groups: dict[int, int], sample: HostSample) -> dict[int, SlotGpu]:
    """Per slot index, from ``groups`` (process group id -> slot index)."""
    out: dict[int, SlotGpu] = {}
    group_of: dict[int, int | None] = {}

    def slot_of(pid: int) -> int | None:
        if pid not in group_of:
            try:
                group_of[pid] = groups.get(os.getpgid(pid))
            except OSError:  # gone, or another PID namespace
                group_of[pid] = groups.get(pid)
        return group_of[pid]

    for gpu in sample.gpus:
        for p in gpu.processes:
            if (index := slot_of(p.pid)) is not None:
                entry = out.setdefault(index, SlotGpu())
                entry.memory_bytes += p.used_memory_bytes or 0
                entry.sm_util += p.sm_util or 0
                entry.enc_util += p.enc_util or 0
        for e in gpu.encoder_sessions:
            if (index := slot_of(e.pid)) is not None:
                out.setdefault(index, SlotGpu()).encoder_sessions += 1
    return out
