"""The GPU agent: NVML telemetry, slot supervision and reporting on each GPU host."""

from gpu_agent.agent import Agent
from gpu_agent.client import HttpMatchmakerClient, LocalMatchmakerClient, MatchmakerClient
from gpu_agent.config import AgentSettings, load_agent_settings
from gpu_agent.probe import GpuSampler, HostSample, NvmlSampler

__all__ = ["Agent", "AgentSettings", "GpuSampler", "HostSample", "HttpMatchmakerClient", "LocalMatchmakerClient",
           "MatchmakerClient", "NvmlSampler", "load_agent_settings"]
