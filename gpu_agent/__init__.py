"""The GPU agent: NVML telemetry, slot supervision and reporting on each GPU host.

Names are imported on first use, so ``python -m gpu_agent.check`` needs only msgspec
and nvidia-ml-py (a GPU host's bare Python can run it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_agent.agent import Agent
    from gpu_agent.client import HttpMatchmakerClient, LocalMatchmakerClient, MatchmakerClient
    from gpu_agent.config import AgentSettings
    from gpu_agent.probe import GpuSampler, HostSample, NvmlSampler

__all__ = [
    "Agent",
    "AgentSettings",
    "GpuSampler",
    "HostSample",
    "HttpMatchmakerClient",
    "LocalMatchmakerClient",
    "MatchmakerClient",
    "NvmlSampler",
]

_WHERE = {
    "Agent": "agent",
    "AgentSettings": "config",
    "GpuSampler": "probe",
    "HostSample": "probe",
    "NvmlSampler": "probe",
    "HttpMatchmakerClient": "client",
    "LocalMatchmakerClient": "client",
    "MatchmakerClient": "client",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'gpu_agent' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gpu_agent.{_WHERE[name]}"), name)
