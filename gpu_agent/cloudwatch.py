"""Optional CloudWatch metrics: ``put_metric_data`` in batches within the API limits.

Limits (CloudWatch's PutMetricData documentation): at most 1,000 datums per request, 1 MB per POST, 30
dimensions per datum, finite values only. The agent sends one batch set every
``cloudwatch_period_s`` (60 s by default: the request rate is an account quota), from
a worker thread, since boto3 blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog

from gpu_agent.slots import Phase

if TYPE_CHECKING:
    from gpu_agent.agent import Agent

log = structlog.get_logger("gpu_agent.cloudwatch")

MAX_DATUMS = 1000
MAX_BYTES = 900_000  # under the 1 MB POST limit, leaving room for the query encoding's overhead
MAX_DIMENSIONS = 30


def metric_data(agent: Agent) -> list[dict[str, Any]]:
    """This host's datums: slot counts by phase, cold start, and per-GPU load."""
    host = agent.settings.host
    base = [{"Name": "Host", "Value": host}, {"Name": "App", "Value": agent.settings.app}]
    data: list[dict[str, Any]] = []

    def add(name: str, value: float | int | None, unit: str, dims: list[dict[str, str]]) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        data.append({"MetricName": name, "Dimensions": dims[:MAX_DIMENSIONS], "Value": float(value), "Unit": unit})

    counts = {p: 0 for p in Phase}
    for slot in agent.slots:
        counts[slot.phase] += 1
    add("FreeSlots", counts[Phase.READY], "Count", base)
    for phase, n in counts.items():
        add("Slots", n, "Count", [*base, {"Name": "Phase", "Value": str(phase)}])
    colds = [s.cold_start_s for s in agent.slots if s.cold_start_s is not None]
    if colds:
        add("ColdStartSeconds", max(colds), "Seconds", base)
    add("SlotRestarts", sum(s.restarts for s in agent.slots), "Count", base)
    for g in agent.telemetry.latest.gpus:
        dims = [*base, {"Name": "Gpu", "Value": str(g.index)}]
        add("GpuUtilization", g.utilization_gpu, "Percent", dims)
        add("EncoderUtilization", g.encoder_utilization, "Percent", dims)
        add("EncoderSessions", g.encoder_session_count, "Count", dims)
        add("GpuMemoryUsed", g.memory_used_bytes, "Bytes", dims)
    return data


def batches(
    data: list[dict[str, Any]], *, max_datums: int = MAX_DATUMS, max_bytes: int = MAX_BYTES
) -> Iterator[list[dict[str, Any]]]:
    """Split into requests of at most ``max_datums`` datums and about ``max_bytes`` (JSON size)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for datum in data:
        n = len(json.dumps(datum, separators=(",", ":"))) * 2  # query encoding roughly doubles it
        if batch and (len(batch) >= max_datums or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(datum)
        size += n
    if batch:
        yield batch


class CloudWatchPublisher:
    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.requests = 0
        self.failures = 0

    def publish(self, data: list[dict[str, Any]]) -> int:
        """Blocking: one ``put_metric_data`` per batch; returns the requests made."""
        sent = 0
        for batch in batches(data):
            try:
                self.client.put_metric_data(Namespace=self.namespace, MetricData=batch)
            except Exception as exc:  # botocore ClientError, endpoint errors: log, keep the agent going
                self.failures += 1
                log.warning("cloudwatch_put_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            sent += 1
            self.requests += 1
        return sent

    async def run(self, agent: Agent, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            await asyncio.to_thread(self.publish, metric_data(agent))


def make_publisher(namespace: str, region: str = "") -> CloudWatchPublisher:
    import boto3

    return CloudWatchPublisher(boto3.client("cloudwatch", **({"region_name": region} if region else {})), namespace)


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
