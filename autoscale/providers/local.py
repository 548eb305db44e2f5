"""``local``: hosts on this box, each an embedded GPU agent (the same ``gpu_agent.Agent``
as on a fleet host) whose slots are synthetic streamer processes, talking to the
matchmaker in process. ``pixelfleet up --autoscale`` uses it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from autoscale.providers.base import ProviderHost

if TYPE_CHECKING:
    from gpu_agent.agent import Agent

log = structlog.get_logger("autoscale.local")


class LocalProvider:
    name = "local"

    def __init__(self, make_agent: Callable[[str], Agent], prefix: str = "auto") -> None:
        self.make_agent = make_agent
        self.prefix = prefix
        self.agents: dict[str, Agent] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._n = 0

    async def hosts(self) -> list[ProviderHost]:
        return [ProviderHost(host_id=h) for h in self.agents]

    async def launch(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            self._n += 1
            host_id = f"{self.prefix}-{self._n}"
            agent = self.make_agent(host_id)
            self.agents[host_id] = agent
            self._starting[host_id] = asyncio.create_task(self._start(host_id, agent))
            ids.append(host_id)
        log.info("local_launch", hosts=ids)
        return ids

    async def _start(self, host_id: str, agent: Agent) -> None:
        await agent.start()
        if agent.reporter is not None:
            await agent.reporter.beat_now()  # registered (starting) at once, READY as its streamers stream

    async def terminate(self, host_id: str) -> None:
        agent = self.agents.pop(host_id, None)
        task = self._starting.pop(host_id, None)
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        if agent is not None:
            await agent.stop()
            log.info("local_terminated", host=host_id)

    async def protect(self, busy: set[str]) -> None:
        return None  # nothing on this box scales in behind the controller's back

    async def poll_notices(self) -> list[str]:
        return []  # nothing on this box gets reclaimed

    async def aclose(self) -> None:
        for host_id in list(self.agents):
            await self.terminate(host_id)
