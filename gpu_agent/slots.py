"""Slot supervision: one streamer process per slot, from start to READY and back.

A slot's life (``Phase``; in brackets what the heartbeat reports)::

    STARTING [starting] --streaming in signalling--> READY [ready]
    READY --matchmaker: reset(session)--> RESETTING [resetting] --streaming again--> READY, reset_for=session
    any --process exits / never streams in startup_timeout_s / spawn fails--> BACKOFF [dead] --delay--> STARTING
    any --stop (drain)--> STOPPED [dead] --resume--> STARTING
    READY, idle, credential near expiry, its turn --> READY [draining] --matchmaker: not busy--> STARTING
                                                      (busy: a session holds it --> READY [ready])
    any idle, credential expired, not listed --> STARTING (restart)

Where signalling needs streamer credentials a slot starts only once it has one (from
the registration reply on), and an idle streamer is restarted with the newest before its
launch credential expires, once the matchmaker has taken it out of placement, a slot of
the host at a time (``credentials.py``; docs/protocol.md "Streamer credentials").

READY means the streamer has connected and identified to signalling, as its REST API
shows (``GET /api/streamers/{id}`` on the player port: ``{"streaming": true}``), not
merely that the process runs. Before a slot's process is started again, the agent
waits (at most ``release_timeout_s``) for signalling to drop the old streamer's id, so a
``streaming: true`` seen afterwards belongs to the new process (a second streamer
asking for a taken id would get a suffixed one and never show under the slot's id).

Each slot runs in its own process group (``start_new_session``): stopping a slot stops
the UE launcher script and the engine it forks. Cold start is measured from spawn to
the first poll that sees the streamer streaming (resolution: ``ready_poll_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from gpu_agent.config import AgentSettings
from gpu_agent.credentials import Credential, CredentialGate, Renewal, SlotRenewal, may_launch, read, renewal
from gpu_agent.gpu_attribution import SlotGpu, attribute
from gpu_agent.probe import HostSample
from gpu_agent.slot_plan import SlotPlan, slot_command
from gpu_agent.watch import SignalingWatch, StreamerStatus
from matchmaker.models import GpuReport, SlotReport, SlotState

log = structlog.get_logger("gpu_agent.slots")

__all__ = ["REPORTED", "Phase", "SignalingWatch", "Slot", "SlotGpu", "SlotSet", "StreamerStatus"]


class Phase(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESETTING = "resetting"
    BACKOFF = "backoff"
    STOPPED = "stopped"


REPORTED = {
    Phase.STARTING: SlotState.STARTING,
    Phase.READY: SlotState.READY,
    Phase.RESETTING: SlotState.RESETTING,
    Phase.BACKOFF: SlotState.DEAD,
    Phase.STOPPED: SlotState.DEAD,
}


# --- one slot ----------------------------------------------------------------------------


class _Failed(Exception):
    pass


class _Renew(Exception):  # noqa: N818 - a planned restart, not an error
    """Restart now with the newest credential: no backoff, not counted as a failure."""


class Slot:
    """Supervises one slot's streamer process (see the module docstring)."""

    def __init__(
        self,
        plan: SlotPlan,
        settings: AgentSettings,
        watch: SignalingWatch,
        on_change: Callable[[], None] = lambda: None,
        gate: CredentialGate | None = None,
    ) -> None:
        self.plan = plan
        self.s = settings
        self.watch = watch
        self.on_change = on_change
        self.gate = gate or CredentialGate(open_signalling=True)
        self.credential: Credential | None = None  # the newest (registration and heartbeat replies)
        self._launched: Credential | None = None  # the credential the running streamer got
        self._waiting_logged = False
        self.phase = Phase.STARTING
        self.reset_for: str | None = None  # the last session this slot was reset after
        self.pending_reset: str | None = None  # the session being reset after
        self.in_session = False  # a player was subscribed since the last reset
        self.draining = False  # stop instead of resetting when a session ends
        self.starts = 0
        self.restarts = 0  # unplanned: crash, startup timeout, lost streamer
        self.resets = 0
        self.renewals = 0  # restarts for a fresh credential (gpu_agent/credentials.py)
        self.last_renewal: str | None = None  # why the last one: before_expiry | expired
        self.renewal = SlotRenewal(plan.index, self.gate)  # one before expiry, in two phases
        self.cold_start_s: float | None = None
        self.cold_start_total_s = 0.0
        self.cold_starts = 0
        self.last_error: str | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._want_stop = False
        self._closing = False
        self._watchers: set[asyncio.Task[None]] = set()
        self._spawned_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- commands ------------------------------------------------------------------------

    def set_credential(self, token: str) -> None:
        """The matchmaker's newest credential for this slot: the next launch uses it."""
        if self.credential is not None and token == self.credential.token:
            return
        credential = read(token)
        if credential is None:
            log.warning("slot_credential_unreadable", slot=self.plan.index)
            return
        if self.credential is not None and credential.expires_at < self.credential.expires_at:
            return  # another replica's older one: keep the newest
        self.credential = credential
        self._wake.set()  # a slot waiting for a credential launches now

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"slot-{self.plan.index}")

    def renewal_answer(self, busy: bool) -> None:
        """The matchmaker applied this slot's ``draining`` report (busy: a session holds it)."""
        if self.renewal.answer(busy, time.monotonic()):
            self._wake.set()  # cleared: restart now; kept: report ready again now
            self.on_change()

    def reset(self, session_id: str) -> None:
        """The matchmaker says this slot's session ended: reset it (idempotent per session)."""
        if session_id in (self.reset_for, self.pending_reset):
            return
        self.pending_reset = session_id
        log.info("slot_reset_requested", slot=self.plan.index, session=session_id)
        self._wake.set()

    def stop(self) -> None:
        """Stop the streamer and keep it stopped (drain); ``resume()`` undoes it."""
        self._want_stop = True
        self._wake.set()

    def resume(self) -> None:
        self.draining = False
        if self._want_stop:
            self._want_stop = False
            self._wake.set()

    async def stop_if_idle(self) -> bool:
        """Drain: stop now unless a player is on this slot (asks signalling once more)."""
        if self.idle:
            status = await self._status()
            if status is not None and status.subscribers > 0:
                self.in_session = True
        if not self.idle:
            return False
        self.stop()
        return True

    @property
    def idle(self) -> bool:
        return not self.in_session and self.pending_reset is None

    def report(self) -> SlotReport:
        """State only: its load is its GPU's (``SlotSet.gpu_reports``)."""
        draining = self.phase is Phase.READY and self.renewal.reports_draining  # a renewal's first phase
        state = SlotState.DRAINING if draining else REPORTED[self.phase]
        return SlotReport(index=self.plan.index, state=state, reset_for=self.reset_for)

    async def aclose(self) -> None:
        task = self._task
        self._closing = self._want_stop = True
        self._wake.set()
        while task is not None and not task.done():  # cancel until it is done: a cancel can be lost
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        await self._kill()

    # --- supervision ---------------------------------------------------------------------

    def _set(self, phase: Phase) -> None:
        if phase is not self.phase:
            self.phase = phase
            log.info("slot_state", slot=self.plan.index, streamer=self.plan.streamer_id, state=str(phase))
            self.on_change()

    async def _sleep(self, seconds: float) -> None:
        """Sleep until the timeout or a command (reset, stop, resume) or the process exit."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    async def _supervise(self) -> None:
        delay = self.s.backoff_initial_s
        while not self._closing:
            if self._want_stop:
                self.renewal.end()
                await self._kill()
                self._set(Phase.STOPPED)
                while self._want_stop and not self._closing:
                    await self._sleep(3600)
                continue
            try:
                await self._launch()
                await self._until_streaming()
                delay = self.s.backoff_initial_s
                await self._serve()
            except _Renew as why:
                self.renewals, self.last_renewal = self.renewals + 1, str(why)
                log.info("slot_credential_renewal", slot=self.plan.index, streamer=self.plan.streamer_id, why=str(why))
                self.renewal.restarting()
                self._set(Phase.STARTING)
                await self._kill()
            except _Failed as exc:
                self.renewal.end()
                self.last_error = str(exc)
                self.restarts += 1
                log.warning(
                    "slot_failed",
                    slot=self.plan.index,
                    streamer=self.plan.streamer_id,
                    error=str(exc),
                    retry_in_s=delay,
                )
                await self._kill()
                self._set(Phase.BACKOFF)
                until = time.monotonic() + delay  # commands do not cut the backoff short, stop does
                while not self._want_stop and (left := until - time.monotonic()) > 0:
                    await self._sleep(left)
                delay = min(delay * 2, self.s.backoff_max_s)

    async def _status(self) -> StreamerStatus | None:
        """Signalling's view of this slot's id; streaming only if the holder is the streamer
        this slot launched (its credential's jti; docs/protocol.md "Streamer credentials")."""
        launched, newest = self._launched, self.credential
        # Asked with the newest credential: signalling refuses an expired one for listings too.
        auth = newest or launched
        status = await self.watch.status(self.plan.streamer_id, auth.token if auth else None)
        if status is not None and launched and status.credential_id not in (None, launched.jti):
            return StreamerStatus(streaming=False)  # another connection holds the id
        return status

    def _check_renewal(self, status: StreamerStatus | None) -> None:
        """Raise ``_Renew`` to restart with the newest credential now: at once when expired and
        not listed; before expiry on its turn, once out of placement (credentials.py)."""
        if status is None or self._launched is None:  # signalling not asked, or launched without one
            return
        why = renewal(
            self._launched,
            self.credential,
            now=time.time(),
            margin_s=self.gate.turns.lead_s(self.s.credential_renew_margin_s),
            idle=self.idle,
            connected=status.streaming,
        )
        if why is Renewal.EXPIRED:
            raise _Renew(why)  # it can never get back in: nothing to take out of placement
        if self.phase is not Phase.READY:
            return
        restart, changed = self.renewal.due(why, self._launched.expires_at, time.monotonic())
        if changed:
            self.on_change()  # the heartbeat says draining (or ready again) now
        if restart:
            raise _Renew(why)

    async def _until_launchable(self) -> None:
        """Wait for a credential, unless signalling takes streamers without one (credentials.py)."""
        gate = self.gate
        while not self._want_stop:
            if may_launch(self.credential, now=time.time(), open_signalling=gate.open_signalling):
                return
            pause = self.s.ready_poll_s  # the registration reply may be on its way
            if gate.matchmaker_tried.is_set() and gate.open_signalling is None:
                gate.open_signalling = await self.watch.open_to_streamers(self.plan.streamer_id)
                if gate.open_signalling is not None:
                    continue
                pause = self.s.health_poll_s  # signalling did not answer: ask again later
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info("slot_waiting_for_credential", slot=self.plan.index, streamer=self.plan.streamer_id)
            await self._sleep(pause)

    async def _launch(self) -> None:
        await self._until_launchable()  # first: signalling's listings need the credential too
        if self._want_stop:
            return
        await self._released()
        self.renewal.launching()
        self._set(Phase.RESETTING if self.pending_reset else Phase.STARTING)
        self._launched = self.credential if self.credential and self.credential.expires_at > time.time() else None
        self._waiting_logged = False
        self.in_session = False  # a new process: no player on it yet (a reset's end clears it too)
        argv, extra_env = slot_command(self.s, self.plan, self._launched.token if self._launched else None)
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv, env={**os.environ, **extra_env}, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
            )
        )
        try:
            self.proc = await asyncio.shield(spawn)
        except OSError as exc:  # no such file, not executable, ...
            raise _Failed(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        except asyncio.CancelledError:  # closing while spawning: do not leave the child behind
            with contextlib.suppress(Exception):
                _signal_group((await spawn).pid, signal.SIGKILL)
            raise
        self.starts += 1
        self._spawned_at = time.monotonic()
        log.info(
            "slot_spawned", slot=self.plan.index, streamer=self.plan.streamer_id, pid=self.proc.pid, gpu=self.plan.gpu
        )
        watcher = asyncio.create_task(self._notice_exit(self.proc))
        self._watchers.add(watcher)  # keep a reference until it is done
        watcher.add_done_callback(self._watchers.discard)

    async def _notice_exit(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self._wake.set()

    async def _until_streaming(self) -> None:
        deadline = self._spawned_at + self.s.startup_timeout_s
        while True:
            if self._want_stop:
                return
            if self._exited():
                raise _Failed(f"streamer exited with {self.proc.returncode if self.proc else None} before streaming")
            status = await self._status()
            if status is not None and not status.streaming:
                self._check_renewal(status)  # an expired credential never gets it in
            if status is not None and status.streaming:
                took = time.monotonic() - self._spawned_at
                self.cold_start_s, self.cold_starts = took, self.cold_starts + 1
                self.cold_start_total_s += took
                self.gate.turns.note_cold_start(took)
                log.info(
                    "slot_streaming", slot=self.plan.index, streamer=self.plan.streamer_id, cold_start_s=round(took, 3)
                )
                self._became_ready()
                return
            if time.monotonic() > deadline:
                raise _Failed(f"not streaming {self.s.startup_timeout_s:g} s after start (startup timeout)")
            await self._sleep(self.s.ready_poll_s)

    def _became_ready(self) -> None:
        self.renewal.end()  # a renewal's restart is done: the next slot's turn
        if self.pending_reset is not None:
            self.reset_for, self.pending_reset = self.pending_reset, None
            self.in_session = False
            self.resets += 1
            if self.draining:  # the session ended on a draining host: no new one comes
                self._want_stop = True
                return
        self._set(Phase.READY)

    async def _serve(self) -> None:
        """READY: watch the process and signalling until a reset, a stop or a failure."""
        lost_since: float | None = None
        while True:
            if self._want_stop:
                return
            if self.pending_reset is not None:
                if self.draining:
                    self._want_stop = True
                    return
                await self._reset()
                lost_since = None
                continue
            if self._exited():
                raise _Failed(f"streamer exited with {self.proc.returncode if self.proc else None}")
            status = await self._status()
            if self.pending_reset is not None or self._want_stop:
                continue
            if status is not None and status.streaming:
                self.in_session = self.in_session or status.subscribers > 0
            self._check_renewal(status)
            if status is not None:
                if status.streaming:
                    lost_since = None
                    self._set(Phase.READY)
                else:  # the streamer left signalling while its process runs
                    lost_since = lost_since or time.monotonic()
                    self._set(Phase.STARTING)
                    if time.monotonic() - lost_since > self.s.startup_timeout_s:
                        raise _Failed("streamer left signalling and did not come back")
            await self._sleep(self.s.health_poll_s if lost_since is None else self.s.ready_poll_s)

    async def _reset(self) -> None:
        session = self.pending_reset
        self._set(Phase.RESETTING)
        if self.s.reset_command and await self._run_reset_command(session or ""):
            self._spawned_at = time.monotonic()
            await self._until_streaming()
            return
        await self._kill()
        await self._launch()
        await self._until_streaming()

    async def _run_reset_command(self, session_id: str) -> bool:
        values = {
            "pid": self.proc.pid if self.proc else "",
            "index": self.plan.index,
            "streamer_id": self.plan.streamer_id,
            "session_id": session_id,
            "gpu": "" if self.plan.gpu is None else self.plan.gpu,
        }
        argv = [a.format(**values) for a in self.s.reset_command]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.warning("slot_reset_command_failed", slot=self.plan.index, error=str(exc))
            return False
        try:
            async with asyncio.timeout(self.s.reset_timeout_s):
                code = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            code = None
        if code != 0:
            log.warning("slot_reset_command_failed", slot=self.plan.index, code=code)
        return code == 0

    async def _released(self) -> None:
        """Wait (bounded) until signalling no longer lists this slot's streamer id."""
        deadline = time.monotonic() + self.s.release_timeout_s
        while time.monotonic() < deadline:
            status = await self._status()
            if status is not None and not status.streaming:
                return
            await asyncio.sleep(self.s.ready_poll_s)
        log.warning("slot_id_not_released", slot=self.plan.index, streamer=self.plan.streamer_id)

    async def _kill(self) -> None:
        """SIGTERM to the slot's process group, SIGKILL after ``stop_timeout_s``."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.s.stop_timeout_s):
                    await proc.wait()
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers the launcher forked
        self.proc = None


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- all slots ---------------------------------------------------------------------------


class SlotSet:
    def __init__(
        self,
        plans: Sequence[SlotPlan],
        settings: AgentSettings,
        watch: SignalingWatch,
        on_change: Callable[[], None] = lambda: None,
        gate: CredentialGate | None = None,
    ) -> None:
        self.gate = gate or CredentialGate(open_signalling=True)
        self.gate.turns.limit, self.gate.turns.slots = settings.credential_renew_concurrency, len(plans)
        self.slots = [Slot(p, settings, watch, on_change, self.gate) for p in plans]
        self.watch = watch

    def __iter__(self) -> Any:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def start(self) -> None:
        for slot in self.slots:
            slot.start()

    def credentials_expire_at(self) -> float:
        """The earliest expiry of the slots' newest credentials (0: a slot has none)."""
        return min((s.credential.expires_at if s.credential else 0.0 for s in self.slots), default=0.0)

    def set_tokens(self, tokens: dict[str, str]) -> None:
        """Streamer credentials by slot index; each streamer's next (re)start uses its newest."""
        for slot in self.slots:
            token = tokens.get(str(slot.plan.index))
            if token:
                slot.set_credential(token)

    def reset(self, index: int, session_id: str) -> None:
        if 0 <= index < len(self.slots):
            self.slots[index].reset(session_id)

    def ready(self) -> bool:
        return all(s.phase is Phase.READY for s in self.slots)

    def stopped(self) -> bool:
        return all(s.phase is Phase.STOPPED for s in self.slots)

    def reports(self) -> list[SlotReport]:
        """Each slot's state; no loads: a slot on a GPU is registered with it and takes
        that GPU's load from ``gpu_reports`` (a slot without a GPU has none)."""
        return [slot.report() for slot in self.slots]

    def gpu_reports(self, sample: HostSample) -> list[GpuReport]:
        """The load of each GPU that has slots, once (docs/matchmaker-api.md, "Loads per GPU")."""
        used = {slot.plan.gpu for slot in self.slots}
        return [
            GpuReport(
                index=g.index,
                gpu_load=(g.utilization_gpu or 0) / 100.0,
                nvenc_load=(g.encoder_utilization or 0) / 100.0,
            )
            for g in sample.gpus
            if g.index in used
        ]

    def attribute(self, sample: HostSample) -> dict[int, SlotGpu]:
        """GPU memory, SM/NVENC use and encoder sessions per slot, by the slot's process group."""
        return attribute({s.proc.pid: s.plan.index for s in self.slots if s.proc is not None}, sample)

    def summary(self) -> list[Mapping[str, Any]]:
        return [
            {
                "index": s.plan.index,
                "streamer_id": s.plan.streamer_id,
                "gpu": s.plan.gpu,
                "phase": str(s.phase),
                "pid": s.proc.pid if s.proc else None,
                "reset_for": s.reset_for,
                "restarts": s.restarts,
                "resets": s.resets,
                "credential_renewals": s.renewals,
                "credential_renewals_kept": s.renewal.kept,
                "cold_start_s": s.cold_start_s,
                "last_error": s.last_error,
            }
            for s in self.slots
        ]

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.slots))
        await self.watch.aclose()
