"""The agent's ``/metrics`` (prometheus-client, read from the agent at scrape time),
``/healthz`` (details), ``/livez`` and ``/readyz`` (its matchmaker reachable) on a small
aiohttp server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec
import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from gpu_agent.probe import CODECS
from gpu_agent.slots import Phase
from pixelfleet.prometheus import exposition_handler

if TYPE_CHECKING:
    from gpu_agent.agent import Agent

PREFIX = "pixelfleet_agent_"


class _Writer:
    """Metric families by name, in first-use order; a family's labels are those of its first sample."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def metric(self, name: str, kind: str, help_: str, value: float | int | None, /, **labels: object) -> None:
        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = self.families[name] = cls(PREFIX + name, help_, labels=list(labels))
        assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
        family.add_metric([str(v) for v in labels.values()], value)

    def summary(self, name: str, help_: str, count: int, total: float, /, **labels: object) -> None:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = SummaryMetricFamily(PREFIX + name, help_, labels=list(labels))
        assert isinstance(family, SummaryMetricFamily)
        family.add_metric([str(v) for v in labels.values()], count, total)


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        w = _Writer()
        write(self.agent, w)
        yield from w.families.values()


def registry_for(agent: Agent) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return registry


def render(agent: Agent) -> str:
    """The exposition text, as ``/metrics`` serves it."""
    return generate_latest(registry_for(agent)).decode()


def write(agent: Agent, w: _Writer) -> None:
    sample = agent.telemetry.latest
    host = agent.settings.host
    w.metric("up", "gauge", "1 while the agent runs", 1, host=host)
    w.metric("gpus", "gauge", "GPUs NVML reports", len(sample.gpus), host=host)
    w.metric("nvml_sample_seconds", "gauge", "time the last NVML sample took", round(sample.duration_s, 6))
    w.metric("nvml_samples_total", "counter", "NVML samples taken", agent.telemetry.samples)
    for g in sample.gpus:
        lab = {"gpu": g.index, "name": g.name}
        w.metric(
            "gpu_utilization_ratio",
            "gauge",
            "GPU busy, 0..1",
            None if g.utilization_gpu is None else g.utilization_gpu / 100,
            **lab,
        )
        w.metric("gpu_memory_used_bytes", "gauge", "framebuffer used", g.memory_used_bytes, **lab)
        w.metric("gpu_memory_total_bytes", "gauge", "framebuffer size", g.memory_total_bytes, **lab)
        w.metric("gpu_temperature_celsius", "gauge", "GPU temperature", g.temperature_c, **lab)
        w.metric("gpu_power_watts", "gauge", "board power draw", g.power_w, **lab)
        w.metric("gpu_power_limit_watts", "gauge", "enforced power limit", g.power_limit_w, **lab)
        for clock, mhz in g.clocks_mhz.items():
            w.metric("gpu_clock_mhz", "gauge", "current clocks (video = NVENC/NVDEC)", mhz, clock=clock, **lab)
        w.metric(
            "gpu_encoder_utilization_ratio",
            "gauge",
            "NVENC busy, 0..1",
            None if g.encoder_utilization is None else g.encoder_utilization / 100,
            **lab,
        )
        w.metric(
            "gpu_decoder_utilization_ratio",
            "gauge",
            "NVDEC busy, 0..1",
            None if g.decoder_utilization is None else g.decoder_utilization / 100,
            **lab,
        )
        w.metric("gpu_encoder_sessions", "gauge", "active NVENC sessions", g.encoder_session_count, **lab)
        w.metric("gpu_encoder_average_fps", "gauge", "NVENC average fps over sessions", g.encoder_average_fps, **lab)
        w.metric(
            "gpu_encoder_average_latency_seconds",
            "gauge",
            "NVENC average latency",
            None if g.encoder_average_latency_us is None else g.encoder_average_latency_us / 1e6,
            **lab,
        )
        for codec in CODECS:
            w.metric(
                "gpu_encoder_capacity_ratio",
                "gauge",
                "NVENC capacity per codec, 0..1",
                None if codec not in g.encoder_capacity else g.encoder_capacity[codec] / 100,
                codec=codec,
                **lab,
            )
        w.metric(
            "gpu_has_nvenc",
            "gauge",
            "1 if the GPU has a video encoder",
            None if g.has_nvenc is None else int(g.has_nvenc),
            **lab,
        )
        for query in g.unsupported:
            w.metric("gpu_query_unsupported", "gauge", "NVML query this GPU does not support", 1, query=query, **lab)
        w.metric("gpu_query_errors", "gauge", "NVML queries that failed in the last sample", len(g.errors), **lab)
    attribution = agent.slots.attribute(sample)
    for slot in agent.slots:
        lab = {"slot": slot.plan.index, "streamer_id": slot.plan.streamer_id}
        for phase in Phase:
            w.metric(
                "slot_phase",
                "gauge",
                "1 for the slot's current phase",
                int(slot.phase is phase),
                phase=str(phase),
                **lab,
            )
        w.metric("slot_starts_total", "counter", "streamer processes started", slot.starts, **lab)
        w.metric("slot_restarts_total", "counter", "unplanned restarts (crash, startup timeout)", slot.restarts, **lab)
        w.metric("slot_resets_total", "counter", "resets after a session", slot.resets, **lab)
        w.metric(
            "slot_credential_renewals_total",
            "counter",
            "restarts for a fresh streamer credential",
            slot.renewals,
            **lab,
        )
        w.metric(
            "slot_credential_renewals_kept_total",
            "counter",
            "renewals cancelled: the matchmaker answered that a session holds the slot",
            slot.renewal.kept,
            **lab,
        )
        w.metric("slot_last_cold_start_seconds", "gauge", "spawn to streaming, last start", slot.cold_start_s, **lab)
        w.summary(
            "slot_cold_start_seconds",
            "spawn to streaming, all starts that reached streaming",
            slot.cold_starts,
            round(slot.cold_start_total_s, 6),
            **lab,
        )
        use = attribution.get(slot.plan.index)
        if use is not None:
            w.metric("slot_gpu_memory_bytes", "gauge", "GPU memory of the slot's processes", use.memory_bytes, **lab)
            w.metric(
                "slot_encoder_sessions", "gauge", "NVENC sessions of the slot's processes", use.encoder_sessions, **lab
            )
    r = agent.reporter
    if r is not None:
        w.metric("registered", "gauge", "1 once the matchmaker knows this host", int(r.registered))
        w.metric("heartbeats_total", "counter", "heartbeats delivered", r.delivered, result="ok")
        w.metric("heartbeats_total", "counter", "heartbeats delivered", r.failed, result="failed")
        if r.last_delivered_at is not None:
            w.metric(
                "heartbeat_age_seconds",
                "gauge",
                "since the last delivered heartbeat",
                round(time.monotonic() - r.last_delivered_at, 3),
            )
    for reason in agent.drain_reasons:
        w.metric("draining", "gauge", "1 while draining, by reason", 1, reason=str(reason))
    cpu = agent.process.cpu_times()
    w.metric("process_cpu_seconds_total", "counter", "the agent's own CPU time", round(cpu.user + cpu.system, 3))


def health(agent: Agent) -> dict[str, object]:
    sample = agent.telemetry.latest
    r = agent.reporter
    return {
        "ok": True,
        "host_id": agent.settings.host,
        "draining": sorted(map(str, agent.drain_reasons)),
        "registered": None if r is None else r.registered,
        "matchmaker_error": None if r is None else r.last_error,
        "gpus": [
            {"index": g.index, "name": g.name, "has_nvenc": g.has_nvenc, "unsupported": g.unsupported}
            for g in sample.gpus
        ],
        "no_gpu_reason": sample.reason,
        "slots": agent.slots.summary(),
    }


def not_ready(agent: Agent) -> list[str]:
    """Why the agent cannot serve: its matchmaker has not taken its registration or its last
    heartbeat (unreachable, or refusing). An agent without a matchmaker is always ready."""
    r = agent.reporter
    if r is None:
        return []
    if not r.registered:
        return ["not registered with the matchmaker"]
    if r.last_error is not None:
        return [f"matchmaker unreachable: {r.last_error}"]
    return []


class MetricsServer:
    def __init__(self, agent: Agent, host: str, port: int) -> None:
        self.agent = agent
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def livez(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def readyz(request: web.Request) -> web.Response:
            reasons = not_ready(self.agent)
            return web.json_response({"ok": not reasons, "reasons": reasons}, status=503 if reasons else 200)

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(body=msgspec.json.encode(health(self.agent)), content_type="application/json")

        app = web.Application()
        app.router.add_get("/metrics", exposition_handler(registry_for(self.agent)))
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/livez", livez)
        app.router.add_get("/readyz", readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None)  # noqa: SLF001 - read back port 0
        assert sockets
        self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def own_process() -> psutil.Process:
    return psutil.Process()
