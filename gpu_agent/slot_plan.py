"""Which slots a host runs, on which GPU, and each slot's streamer command line.

Pure functions of the agent's settings and one GPU sample: ``slots.py`` supervises the
processes these describe.
"""

from __future__ import annotations

import sys
import urllib.parse
from dataclasses import dataclass
from typing import Any

from gpu_agent.config import AgentSettings
from gpu_agent.probe import HostSample

SYNTHETIC_COMMAND = (
    "{python}",
    "-m",
    "pixelfleet",
    "streamer",
    "--url",
    "{streamer_url}",
    "--id",
    "{streamer_id}",
    "--width",
    "{res_x}",
    "--height",
    "{res_y}",
    "--fps",
    "{fps}",
)
UE_COMMAND = (
    "{ue_binary}",
    "-PixelStreamingURL={streamer_url}",
    "-PixelStreamingID={streamer_id}",
    "-RenderOffScreen",
    "-Unattended",
    "-ForceRes",
    "-ResX={res_x}",
    "-ResY={res_y}",
    "-PixelStreamingEncoderCodec={codec}",
    "-graphicsadapter={gpu}",
)
# Per-slot GPU: UE renders on -graphicsadapter (Vulkan adapter index; NVML index assumed
# to match on an NVIDIA-only host, unverified) and its NVENC encoder opens CUDA, which
# CUDA_VISIBLE_DEVICES=<GPU UUID> pins to the same board whatever CUDA's own ordering.
# NVIDIA_VISIBLE_DEVICES only acts when a container starts, so it is not set here.
GPU_ENV = {"CUDA_VISIBLE_DEVICES": "{gpu_uuid}", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


@dataclass(frozen=True, slots=True)
class SlotPlan:
    index: int
    streamer_id: str
    gpu: int | None = None
    gpu_uuid: str = ""


def plan_slots(s: AgentSettings, sample: HostSample) -> list[SlotPlan]:
    """How many slots, on which GPU: ``gpu_slots`` per GPU, else ``slots`` spread over the
    GPUs (or GPU-less), else ``slots_per_gpu`` per GPU (one slot on a host without GPU)."""
    gpus = [(g.index, g.uuid) for g in sample.gpus]
    placed: list[tuple[int, str] | None]
    if s.gpu_slots and gpus:
        placed = [gpus[g] for g, count in enumerate(s.gpu_slots[: len(gpus)]) for _ in range(count)]
    elif s.slots:
        placed = [gpus[i % len(gpus)] if gpus else None for i in range(s.slots)]
    elif gpus:
        placed = [g for g in gpus for _ in range(s.slots_per_gpu)]
    else:
        placed = [None]
    return [
        SlotPlan(
            index=i,
            streamer_id=s.streamer_id.format(host=s.host, index=i, n=i + 1),
            gpu=None if g is None else g[0],
            gpu_uuid="" if g is None else g[1],
        )
        for i, g in enumerate(placed)
    ]


def with_token(url: str, token: str | None) -> str:
    """The streamer URL carrying its credential as ``?token=`` (what UE's -PixelStreamingURL can carry)."""
    if not token:
        return url
    return f"{url}{'&' if '?' in url else '?'}token={urllib.parse.quote(token, safe='')}"


def slot_command(s: AgentSettings, plan: SlotPlan, token: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment of one slot's streamer; ``token`` is its
    streamer credential (from the matchmaker's ``streamer_tokens``)."""
    values: dict[str, Any] = {
        "python": sys.executable,
        "streamer_url": with_token(s.streamer_url, token),
        "streamer_id": plan.streamer_id,
        "res_x": s.res_x,
        "res_y": s.res_y,
        "fps": s.fps,
        "codec": s.codec,
        "ue_binary": s.ue_binary,
        "index": plan.index,
        "n": plan.index + 1,
        "host": s.host,
        "gpu": "" if plan.gpu is None else plan.gpu,
        "gpu_uuid": plan.gpu_uuid,
    }
    template = s.command or (UE_COMMAND if s.streamer == "ue" else SYNTHETIC_COMMAND)
    argv = [a.format(**values) for a in (*template, *s.extra_args) if plan.gpu is not None or "{gpu" not in a]
    env = {k: v.format(**values) for k, v in GPU_ENV.items()} if plan.gpu is not None else {}
    env.update({k: v.format(**values) for k, v in s.env.items()})
    env["PIXELFLEET_SLOT"] = str(plan.index)
    return argv, env
