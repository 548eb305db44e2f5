"""The embedded agent of ``pixelfleet up``: the local synthetic streamers as one GPU host.

It registers the streamers as slots with the in-process matchmaker, heartbeats their
state (a slot is READY once its streamer has identified to signalling), and resets a
slot whose session ended by restarting its streamer process — what the GPU agent
does for UE instances on a real host.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from matchmaker.models import Heartbeat, HostRegistration, SlotReport, SlotSpec, SlotState
from matchmaker.service import Matchmaker

log = structlog.get_logger("local_fleet")


class Restartable(Protocol):
    def restart(self) -> None: ...


class LocalFleet:
    def __init__(self, matchmaker: Matchmaker, streamers: Sequence[tuple[str, Restartable]], *,
                 connection_of: Callable[[str], int | None], signaling_url: str,
                 tenant: str = "default", app: str = "default", host_id: str = "local",
                 period_s: float = 1.0) -> None:
        """``connection_of(streamer_id)`` is the signalling connection currently holding that
        id (None while it has not identified), so a restarted streamer is told apart."""
        self.mm = matchmaker
        self.streamers = list(streamers)
        self.connection_of = connection_of
        self.registration = HostRegistration(
            host_id=host_id, boot_id=secrets.token_hex(8), region="local", gpu_model="synthetic",
            signaling_url=signaling_url,
            slots=[SlotSpec(index=i, tenant=tenant, app=app, streamer_id=sid)
                   for i, (sid, _) in enumerate(self.streamers)])
        self.period_s = period_s
        self._resetting: dict[int, tuple[str, int | None]] = {}  # index -> (session, old connection)
        self._task: asyncio.Task[None] | None = None
        self._registered = False

    def _report(self, index: int) -> SlotReport:
        streamer_id, _ = self.streamers[index]
        conn = self.connection_of(streamer_id)
        pending = self._resetting.get(index)
        if pending is not None:
            session_id, old_conn = pending
            if conn is None or conn == old_conn:
                return SlotReport(index=index, state=SlotState.RESETTING)
            del self._resetting[index]
            return SlotReport(index=index, state=SlotState.READY, reset_for=session_id)
        return SlotReport(index=index, state=SlotState.READY if conn is not None else SlotState.STARTING)

    async def beat(self) -> None:
        hb = Heartbeat(boot_id=self.registration.boot_id,
                       slots=[self._report(i) for i in range(len(self.streamers))])
        reply = await self.mm.heartbeat(self.registration.host_id, hb)
        for reset in reply.reset:
            if reset.index not in self._resetting and reset.index < len(self.streamers):
                streamer_id, process = self.streamers[reset.index]
                log.info("slot_reset", slot=reset.index, streamer=streamer_id, session=reset.session_id)
                self._resetting[reset.index] = (reset.session_id, self.connection_of(streamer_id))
                process.restart()

    async def beat_ready(self) -> None:
        """Register and beat once now, so the slots are in the pool when ``up`` says so."""
        if not self._registered:
            await self.mm.register_host(self.registration)
            self._registered = True
        await self.beat()

    async def _run(self) -> None:
        while True:
            try:
                await self.beat_ready()
            except Exception as exc:  # noqa: BLE001 - keep beating; the matchmaker may be busy
                log.warning("heartbeat_failed", error=str(exc))
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
