"""Register, then heartbeat the slot states and loads, whatever the matchmaker does.

Each heartbeat is built from the state when it is sent, so the newest state always
supersedes what could not be delivered: while the matchmaker is down the reporter
keeps the latest state (and every slot's ``reset_for``) and retries with backoff up to
``retry_max_s``; once it answers, that state is delivered. A 404 means the matchmaker
forgot the host (restarted, or declared it dead): register again, then beat. A slot
change wakes the reporter at once instead of waiting for the period.

A heartbeat is full (every slot and every GPU) or a delta (only the slots whose report
changed since the last one the matchmaker acknowledged: state, ``reset_for``, or a load's
whole percent, what placement compares; and only the GPUs whose loads changed so).
Full: the first after a registration, the next after any failed or unanswered one or a
reply asking for a snapshot, and at least every ``full_every``; numbered ``seq`` from 1
per registration, so the matchmaker can tell a delta it cannot apply
(docs/matchmaker-api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

import msgspec
import structlog

from gpu_agent.client import HostConflict, MatchmakerClient, MatchmakerError, Rejected, UnknownHost
from matchmaker.models import GpuReport, Heartbeat, HeartbeatReply, Host, HostRegistration, SlotReport

log = structlog.get_logger("gpu_agent.reporting")

ReportKey = tuple[str, str | None, int, int]


def _pct(load: float) -> int:
    """Whole percent, as the matchmaker's placement rounds it (tenant.lua load_pct)."""
    return math.floor(load * 100 + 0.5)


def report_key(r: SlotReport) -> ReportKey:
    """What a delta compares: a slot is sent again when any of these changed."""
    return (r.state.value, r.reset_for, _pct(r.nvenc_load), _pct(r.gpu_load))


def gpu_key(g: GpuReport) -> tuple[int, int]:
    """A GPU is sent again when either load's whole percent changed."""
    return (_pct(g.nvenc_load), _pct(g.gpu_load))


class Reporter:
    def __init__(
        self,
        client: MatchmakerClient,
        registration: Callable[[], HostRegistration],
        heartbeat: Callable[[], Heartbeat],
        on_reply: Callable[[HeartbeatReply], None],
        *,
        period_s: float = 2.0,
        retry_max_s: float = 10.0,
        full_every: int = 30,
        on_registered: Callable[[Host], None] = lambda _host: None,
    ) -> None:
        self.client = client
        self.registration = registration
        self.heartbeat = heartbeat
        self.on_reply = on_reply
        self.on_registered = on_registered  # the registration reply (streamer credentials)
        self.tried = asyncio.Event()  # set once the first try (registration, heartbeat) is over
        self.period_s = period_s
        self.retry_max_s = retry_max_s
        self.full_every = full_every
        self.seq = 0  # the last heartbeat's number in this registration
        self.full_sent = 0  # full heartbeats sent (the rest were deltas)
        # Each slot's report key as the matchmaker holds it after the last acknowledged
        # heartbeat; None: it may hold anything, so the next heartbeat is full.
        self._acked: dict[int, ReportKey] | None = None
        self._acked_gpus: dict[int, tuple[int, int]] = {}  # the same, per GPU (with _acked)
        self._deltas = 0  # deltas sent since the last full heartbeat
        self.registered = False
        self.registrations = 0
        self.delivered = 0
        self.failed = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_delivered: Heartbeat | None = None  # during on_reply: the heartbeat it answers
        self.last_delivered_at: float | None = None  # time.monotonic()
        self._lock = asyncio.Lock()
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def host_id(self) -> str:
        return self.registration().host_id

    def poke(self) -> None:
        """Something changed: beat now (ignored while backing off from failures)."""
        self._poked.set()

    async def beat_now(self) -> bool:
        """One try: register if needed, heartbeat; True once the matchmaker has the state."""
        async with self._lock:
            try:
                await self._beat()
            except MatchmakerError as exc:
                self._acked = None  # it may or may not have been applied: full next
                self._failed(exc)
                return False
            finally:
                self.tried.set()
        if self.consecutive_failures:
            log.info("matchmaker_reachable_again", after_failures=self.consecutive_failures)
        self.consecutive_failures = 0
        self.last_error = None
        return True

    async def _beat(self) -> None:
        if not self.registered:
            await self._register()
        state = self.heartbeat()
        hb = self._next(state)
        try:
            reply = await self.client.heartbeat(self.host_id, hb)
        except (UnknownHost, HostConflict) as exc:
            log.info("host_unknown_to_matchmaker", error=str(exc))
            self.registered = False
            await self._register()
            state = self.heartbeat()
            hb = self._next(state)
            reply = await self.client.heartbeat(self.host_id, hb)
        self.delivered += 1
        self.last_delivered, self.last_delivered_at = hb, time.monotonic()
        if reply.snapshot is True:
            self._acked = None
            log.info("matchmaker_asked_full_heartbeat", seq=hb.seq, full=hb.full)
        else:
            self._acked = {r.index: report_key(r) for r in state.slots}
            self._acked_gpus = {g.index: gpu_key(g) for g in state.gpus}
        self.on_reply(reply)

    def _next(self, state: Heartbeat) -> Heartbeat:
        """The heartbeat to send for ``state`` (every slot's report): full or a delta."""
        self.seq += 1
        acked = self._acked
        if acked is None or self._deltas + 1 >= self.full_every:
            self._deltas = 0
            self.full_sent += 1
            return msgspec.structs.replace(state, seq=self.seq, full=True)
        self._deltas += 1
        changed = [r for r in state.slots if acked.get(r.index) != report_key(r)]
        gpus = [g for g in state.gpus if self._acked_gpus.get(g.index) != gpu_key(g)]
        return msgspec.structs.replace(state, slots=changed, gpus=gpus, seq=self.seq, full=False)

    async def _register(self) -> None:
        reg = self.registration()
        host = await self.client.register(reg)
        if host is not None:
            self.on_registered(host)
        self.registered = True
        self.registrations += 1
        self.seq, self._acked = 0, None  # the matchmaker holds no report of this registration yet
        log.info("host_registered", host=reg.host_id, boot=reg.boot_id, slots=len(reg.slots))

    def _failed(self, exc: MatchmakerError) -> None:
        self.failed += 1
        self.consecutive_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.consecutive_failures == 1 or self.consecutive_failures % 30 == 0:  # not once per try
            level = log.error if isinstance(exc, Rejected) else log.warning
            level("heartbeat_failed", error=self.last_error, failures=self.consecutive_failures)

    def _retry_in(self) -> float:
        return float(min(self.retry_max_s, 0.25 * 2 ** min(self.consecutive_failures, 10)))

    async def _run(self) -> None:
        while True:
            ok = await self.beat_now()
            if ok:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.period_s):
                        await self._poked.wait()
                await asyncio.sleep(0.02)  # let simultaneous slot changes land in one beat
            else:
                await asyncio.sleep(self._retry_in())
            self._poked.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reporter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def final(self, tries: int = 3) -> bool:
        """Deliver the current (last) state before exiting: a few quick tries, no more."""
        for attempt in range(tries):
            if await self.beat_now():
                return True
            await asyncio.sleep(min(0.5 * 2**attempt, 2.0))
        return False
