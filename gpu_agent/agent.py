"""The agent: telemetry + slots + reporting + exposition + draining, composed.

``Agent(settings, client)`` serves a fleet host (``HttpMatchmakerClient``) and
``pixelfleet up`` (``LocalMatchmakerClient``, synthetic streamers) with the same code;
``client=None`` supervises the slots without a matchmaker (``up --no-matchmaker``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import signal
import time

import psutil
import structlog

from gpu_agent.client import MatchmakerClient
from gpu_agent.cloudwatch import CloudWatchPublisher, cancel
from gpu_agent.config import AgentSettings
from gpu_agent.credentials import CredentialGate, acknowledged
from gpu_agent.drain import DrainReason, SpotNotice, SpotWatcher
from gpu_agent.k8s_disruption import DisruptionGuard, pod_ref
from gpu_agent.metrics import MetricsServer
from gpu_agent.probe import GpuSampler, NvmlSampler, Telemetry
from gpu_agent.reporting import Reporter
from gpu_agent.slot_plan import plan_slots
from gpu_agent.slots import Phase, SignalingWatch, SlotSet
from matchmaker.models import Heartbeat, HeartbeatReply, Host, HostRegistration, SlotSpec

log = structlog.get_logger("gpu_agent")


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        client: MatchmakerClient | None,
        *,
        sampler: GpuSampler | None = None,
        cloudwatch: CloudWatchPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.telemetry = Telemetry(sampler or NvmlSampler(), settings.sample_period_s)
        self.boot_id = secrets.token_hex(8)
        self.slots = SlotSet([], settings, SignalingWatch(settings.signaling_api_url))
        self.reporter: Reporter | None = None
        self.metrics: MetricsServer | None = None
        self.spot: SpotWatcher | None = None
        self.cloudwatch = cloudwatch
        self.disruption: DisruptionGuard | None = None  # Kubernetes: do-not-disrupt while a session runs
        self.drain_reasons: set[DrainReason] = set()
        self.finished = asyncio.Event()  # a SIGTERM drain has completed: the process may exit
        self.process = psutil.Process()
        self._drain_deadline: float | None = None  # time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._registration: HostRegistration | None = None
        self._gpu_model = settings.gpu_model

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.process.cpu_percent()  # prime psutil's counter
        sample = await self.telemetry.sample_once()
        if not self._gpu_model:
            self._gpu_model = sample.gpus[0].name if sample.gpus else "none"
        log.info(
            "gpus_found",
            count=len(sample.gpus),
            names=[g.name for g in sample.gpus],
            no_nvenc=[g.index for g in sample.gpus if g.has_nvenc is False],
            reason=sample.reason,
        )
        gate = CredentialGate()  # slots launch with the registration reply's credentials
        if self.client is not None:
            self.reporter = Reporter(
                self.client,
                self.registration,
                self.heartbeat,
                self._on_reply,
                period_s=s.heartbeat_period_s,
                retry_max_s=s.retry_max_s,
                full_every=s.full_heartbeat_every,
                on_registered=self._on_registered,
            )
            gate.matchmaker_tried = self.reporter.tried
        else:
            gate.matchmaker_tried.set()  # no credentials will come: signalling says whether it needs them
            gate.drain_first = False  # and no matchmaker to take a slot out of placement first
        self.slots = SlotSet(plan_slots(s, sample), s, self.slots.watch, self._changed, gate)
        if s.metrics_port >= 0:
            self.metrics = MetricsServer(self, s.metrics_host, s.metrics_port)
            await self.metrics.start()
            log.info("agent_metrics", url=f"http://{s.metrics_host}:{self.metrics.port}/metrics")
        self.slots.start()
        self.telemetry.start()
        if self.reporter is not None:
            self.reporter.start()
        if s.spot:
            self.spot = SpotWatcher(s.imds_url, self._spot_notice, poll_s=s.spot_poll_s)
            self.spot.start()
        if (pod := pod_ref(s)) is not None:
            live = lambda: any(not slot.idle for slot in self.slots)  # noqa: E731
            self.disruption = DisruptionGuard(pod, live, period_s=s.k8s_sync_period_s, timeout_s=s.request_timeout_s)
            self.disruption.start()
        if self.cloudwatch is not None:
            self._tasks.append(asyncio.create_task(self.cloudwatch.run(self, s.cloudwatch_period_s)))
        log.info(
            "agent_started",
            host=s.host,
            boot=self.boot_id,
            slots=len(self.slots),
            streamer=s.streamer,
            matchmaker=self.client is not None,
        )

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once every slot is READY (bounded: False after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not self.slots.ready():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        """Stop now: streamers stopped, the last state (all dead) sent, everything closed."""
        for task in self._tasks:
            await cancel(task)
        if self.spot is not None:
            await self.spot.aclose()
        if self.disruption is not None:
            await self.disruption.aclose()
        if self.reporter is not None:
            await self.reporter.stop()
        await self.slots.aclose()
        for slot in self.slots:
            slot.phase = Phase.STOPPED
        if self.reporter is not None and self.reporter.registered:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reporter.final()
        await self.telemetry.aclose()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.client is not None:
            await self.client.aclose()
        log.info("agent_stopped", host=self.settings.host)

    async def run_until_signal(self) -> None:
        """``pixelfleet agent``: SIGTERM drains, then exits; SIGINT or a second SIGTERM stops now."""
        loop = asyncio.get_running_loop()
        now = asyncio.Event()

        def on_term() -> None:
            if DrainReason.SIGTERM in self.drain_reasons:
                now.set()
            self.drain(DrainReason.SIGTERM)

        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, now.set)
        await self.start()
        try:
            waits = [asyncio.create_task(now.wait()), asyncio.create_task(self.finished.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        finally:
            await self.stop()

    # --- what the matchmaker hears ----------------------------------------------------------

    def registration(self) -> HostRegistration:
        if self._registration is None:
            s = self.settings
            on_gpu = collections.Counter(slot.plan.gpu for slot in self.slots)  # slots sharing each GPU
            self._registration = HostRegistration(
                host_id=s.host,
                boot_id=self.boot_id,
                region=s.region,
                az=s.az,
                gpu_model=self._gpu_model,
                signaling_url=s.signaling_url,
                slots=[
                    SlotSpec(
                        index=slot.plan.index,
                        tenant=s.tenant,
                        app=s.app,
                        streamer_id=slot.plan.streamer_id,
                        gpu_share=0.0 if slot.plan.gpu is None else 1.0 / on_gpu[slot.plan.gpu],
                        gpu=slot.plan.gpu,  # its load: that GPU's, reported once per heartbeat
                    )
                    for slot in self.slots
                ],
            )
        return self._registration

    def heartbeat(self) -> Heartbeat:
        sample = self.telemetry.latest
        gpu = max((g.utilization_gpu or 0 for g in sample.gpus), default=0) / 100.0
        enc = max((g.encoder_utilization or 0 for g in sample.gpus), default=0) / 100.0
        return Heartbeat(
            boot_id=self.boot_id,
            slots=self.slots.reports(),
            gpus=self.slots.gpu_reports(sample),
            credentials_expire_at=self.slots.credentials_expire_at(),
            gpu_load=gpu,
            nvenc_load=enc,
            draining=bool(self.drain_reasons - {DrainReason.ADMIN}),
        )

    def _changed(self) -> None:
        if self.reporter is not None:
            self.reporter.poke()
        if self.disruption is not None:
            self.disruption.poke()

    def _on_registered(self, host: Host) -> None:
        if isinstance(host.streamer_tokens, dict):  # before the first heartbeat: no launch without one
            self.slots.set_tokens(host.streamer_tokens)

    def _on_reply(self, reply: HeartbeatReply) -> None:
        if isinstance(reply.streamer_tokens, dict):  # the matchmaker's streamer credentials
            self.slots.set_tokens(reply.streamer_tokens)
        for r in reply.reset:
            self.slots.reset(r.index, r.session_id)
        sent = self.reporter.last_delivered if self.reporter is not None else None  # what this reply answers
        for index, busy in acknowledged(sent.slots if sent else (), reply).items():
            if 0 <= index < len(self.slots):  # a renewal's draining report, applied: restart, or keep if busy
                self.slots.slots[index].renewal_answer(busy)
        if reply.draining and DrainReason.ADMIN not in self.drain_reasons:
            self.drain(DrainReason.ADMIN)
        elif not reply.draining and DrainReason.ADMIN in self.drain_reasons:
            self._undrain(DrainReason.ADMIN)

    # --- draining ---------------------------------------------------------------------------

    def drain(self, reason: DrainReason, deadline: float | None = None) -> None:
        """Take no new sessions; let current ones end (``wait``) or end them (``end``).

        ``deadline`` (wall clock) ends whatever still runs then; SIGTERM sets one from
        ``drain_timeout_s``, a Spot notice from its time less ``spot_margin_s``.
        """
        s = self.settings
        if reason is DrainReason.SIGTERM and deadline is None:
            deadline = time.time() + s.drain_timeout_s
        if deadline is not None:
            self._drain_deadline = min(deadline, self._drain_deadline or deadline)
        if reason in self.drain_reasons:
            return
        first = not self.drain_reasons
        self.drain_reasons.add(reason)
        left = None if self._drain_deadline is None else round(self._drain_deadline - time.time(), 1)
        log.warning("host_draining", reason=str(reason), mode=s.drain_mode, deadline_in_s=left)
        for slot in self.slots:
            slot.draining = True
            if s.drain_mode == "end":
                slot.stop()
        if s.drain_mode == "wait" and reason is not DrainReason.ADMIN:
            # An operator's drain already keeps new sessions away, so idle slots stay warm
            # for an undrain; otherwise idle slots stop now, which the heartbeat reports.
            self._tasks.append(asyncio.create_task(self._stop_idle()))
        if reason is not DrainReason.ADMIN and self.client is not None:
            self._tasks.append(asyncio.create_task(self._tell_matchmaker()))
        if first:
            self._tasks.append(asyncio.create_task(self._watch_drain()))
        self._changed()

    async def _stop_idle(self) -> None:
        stopped = await asyncio.gather(*(slot.stop_if_idle() for slot in self.slots))
        log.info("drain_stopped_idle_slots", slots=[i for i, done in enumerate(stopped) if done])

    def _undrain(self, reason: DrainReason) -> None:
        self.drain_reasons.discard(reason)
        if self.drain_reasons:
            return
        log.info("host_undrained", reason=str(reason))
        self._drain_deadline = None
        for slot in self.slots:
            slot.resume()

    async def _tell_matchmaker(self) -> None:
        assert self.client is not None
        try:
            if await self.client.drain(self.settings.host):
                log.info("matchmaker_told_draining")
        except Exception as exc:  # noqa: BLE001 - the dead slots in the heartbeats say it too
            log.warning("matchmaker_drain_failed", error=f"{type(exc).__name__}: {exc}")

    async def _watch_drain(self) -> None:
        while self.drain_reasons:
            if self._drain_deadline is not None and time.time() >= self._drain_deadline:
                busy = [slot.plan.index for slot in self.slots if slot.phase is not Phase.STOPPED]
                if busy:
                    log.warning("drain_deadline_ending_sessions", slots=busy)
                for slot in self.slots:
                    slot.stop()
                self._drain_deadline = None
            if self.slots.stopped():
                if DrainReason.SIGTERM in self.drain_reasons:
                    log.info("drain_complete")
                    if self.reporter is not None:
                        await self.reporter.beat_now()
                    self.finished.set()
                    return
            await asyncio.sleep(0.2)

    def _spot_notice(self, notice: SpotNotice) -> None:
        margin = 0.0 if notice.action == "hibernate" else self.settings.spot_margin_s
        self.drain(DrainReason.SPOT, deadline=notice.time.timestamp() - margin)
