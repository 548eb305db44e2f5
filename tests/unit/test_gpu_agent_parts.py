"""GPU agent parts without processes: slot plans and command lines, settings, the
reporter against a flaky client, Prometheus text, CloudWatch batches (moto), the
in-process matchmaker client."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gpu_agent.client import LocalMatchmakerClient, Rejected, Unavailable, UnknownHost
from gpu_agent.cloudwatch import MAX_DATUMS, CloudWatchPublisher, batches, metric_data
from gpu_agent.config import AgentSettings
from gpu_agent.metrics import render
from gpu_agent.probe import Telemetry
from gpu_agent.reporting import Reporter
from gpu_agent.slot_plan import SlotPlan, plan_slots, slot_command
from gpu_agent.slots import Phase, SignalingWatch, SlotSet
from matchmaker.models import Heartbeat, HeartbeatReply, HostRegistration, SlotReport, SlotSpec, SlotState
from pixelfleet.settings import ConfigError, load_settings
from tests.support.nvml_replay import RecordedSampler

DATA = Path(__file__).parents[1] / "data"


def host_sample(name: str):  # type: ignore[no-untyped-def]
    return RecordedSampler(DATA / f"nvml_{name}.json").sample()


# --- settings, plans, command lines ---------------------------------------------------------


def test_settings_from_the_environment() -> None:
    s = load_settings(
        {
            "PIXELFLEET_AGENT__SLOTS_PER_GPU": "2",
            "PIXELFLEET_AGENT__GPU_SLOTS": "1,3",
            "PIXELFLEET_AGENT__ENV": '{"SDL_VIDEODRIVER": "offscreen"}',
            "PIXELFLEET_AGENT__SPOT": "true",
            "PIXELFLEET_TURN__TTL_S": "5",
        }
    ).agent
    assert s.slots_per_gpu == 2 and s.gpu_slots == [1, 3] and s.env == {"SDL_VIDEODRIVER": "offscreen"} and s.spot


@pytest.mark.parametrize(
    "env",
    [
        {"PIXELFLEET_AGENT__STREAMER": "unreal"},
        {"PIXELFLEET_AGENT__DRAIN_MODE": "now"},
        {"PIXELFLEET_AGENT__STREAMER": "ue"},
        {"PIXELFLEET_AGENT__SLOTZ": "1"},
        {"PIXELFLEET_AGENT__SLOTS": "many"},
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(env)


def test_slot_plans() -> None:
    l4 = host_sample("l4x4")
    s = AgentSettings(host_id="h")
    assert [(p.index, p.gpu) for p in plan_slots(s, l4)] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    two = plan_slots(AgentSettings(host_id="h", slots_per_gpu=2), l4)
    assert [p.gpu for p in two] == [0, 0, 1, 1, 2, 2, 3, 3] and two[1].streamer_id == "h-1"
    assert [p.gpu for p in plan_slots(AgentSettings(host_id="h", gpu_slots=[3, 0, 1]), l4)] == [0, 0, 0, 2]
    assert [p.gpu for p in plan_slots(AgentSettings(host_id="h", slots=3), l4)] == [0, 1, 2]
    none = host_sample("no_driver")
    assert [(p.gpu, p.streamer_id) for p in plan_slots(AgentSettings(host_id="h"), none)] == [(None, "h-0")]
    named = plan_slots(AgentSettings(slots=2, streamer_id="Streamer{n}"), none)
    assert [p.streamer_id for p in named] == ["Streamer1", "Streamer2"]


def test_ue_command_line_and_gpu_pinning() -> None:
    s = AgentSettings(
        host_id="g5",
        streamer="ue",
        ue_binary="/opt/game/Game.sh",
        streamer_url="ws://10.0.0.5:8888",
        codec="AV1",
        res_x=1280,
        res_y=720,
        extra_args=["-Log=slot{index}.log"],
        env={"GAME_SLOT": "{n}"},
    )
    plan = SlotPlan(index=1, streamer_id="g5-1", gpu=2, gpu_uuid="GPU-abc")
    argv, env = slot_command(s, plan)
    assert argv == [
        "/opt/game/Game.sh",
        "-PixelStreamingURL=ws://10.0.0.5:8888",
        "-PixelStreamingID=g5-1",
        "-RenderOffScreen",
        "-Unattended",
        "-ForceRes",
        "-ResX=1280",
        "-ResY=720",
        "-PixelStreamingEncoderCodec=AV1",
        "-graphicsadapter=2",
        "-Log=slot1.log",
    ]
    assert env == {
        "CUDA_VISIBLE_DEVICES": "GPU-abc",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GAME_SLOT": "2",
        "PIXELFLEET_SLOT": "1",
    }
    argv, env = slot_command(s, SlotPlan(index=0, streamer_id="g5-0"))  # no GPU: no adapter, no pinning
    assert not any("graphicsadapter" in a for a in argv) and "CUDA_VISIBLE_DEVICES" not in env


def test_synthetic_command_line() -> None:
    s = AgentSettings(streamer_url="ws://127.0.0.1:9", res_x=640, res_y=360, fps=15)
    argv, _ = slot_command(s, SlotPlan(index=0, streamer_id="Streamer1"))
    assert argv == [
        sys.executable,
        "-m",
        "pixelfleet",
        "streamer",
        "--url",
        "ws://127.0.0.1:9",
        "--id",
        "Streamer1",
        "--width",
        "640",
        "--height",
        "360",
        "--fps",
        "15",
    ]


# --- reporter -------------------------------------------------------------------------------


class FlakyClient:
    """Down for the first ``down`` calls, forgets the host once, records what it got."""

    def __init__(self, down: int = 0, forget_after: int | None = None) -> None:
        self.down = down
        self.forget_after = forget_after
        self.registered: list[HostRegistration] = []
        self.beats: list[Heartbeat] = []
        self.known = False
        self.reply = HeartbeatReply()

    async def register(self, registration: HostRegistration) -> None:
        if self.down > 0:
            self.down -= 1
            raise Unavailable("connection refused")
        self.registered.append(registration)
        self.known = True

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        if self.down > 0:
            self.down -= 1
            raise Unavailable("connection refused")
        if self.forget_after is not None and len(self.beats) == self.forget_after:
            self.known, self.forget_after = False, None
        if not self.known:
            raise UnknownHost("404")
        self.beats.append(heartbeat)
        return self.reply

    async def drain(self, host_id: str) -> bool:
        return False

    async def aclose(self) -> None:
        pass


REG = HostRegistration(
    host_id="h", boot_id="b", signaling_url="ws://x", slots=[SlotSpec(index=0, tenant="t", app="a", streamer_id="h-0")]
)


async def test_reporter_keeps_the_latest_state_until_the_matchmaker_is_back() -> None:
    client = FlakyClient(down=3)
    state = {"value": SlotState.STARTING}
    replies: list[HeartbeatReply] = []
    r = Reporter(
        client,
        lambda: REG,
        lambda: Heartbeat(boot_id="b", slots=[SlotReport(index=0, state=state["value"])]),
        replies.append,
        period_s=0.01,
        retry_max_s=0.01,
    )
    for _ in range(3):
        assert not await r.beat_now()
    assert r.failed == 3 and r.consecutive_failures == 3 and not r.registered
    state["value"] = SlotState.READY  # changed while down: the newest state is what goes out
    assert await r.beat_now()
    assert r.consecutive_failures == 0 and len(client.registered) == 1
    assert [b.slots[0].state for b in client.beats] == [SlotState.READY] and len(replies) == 1


async def test_reporter_registers_again_on_404() -> None:
    client = FlakyClient(forget_after=1)
    r = Reporter(client, lambda: REG, lambda: Heartbeat(boot_id="b", slots=[]), lambda _: None)
    assert await r.beat_now() and await r.beat_now()
    assert len(client.registered) == 2 and len(client.beats) == 2 and r.registrations == 2


async def test_reporter_loop_retries_with_backoff_and_stops() -> None:
    client = FlakyClient(down=4)
    r = Reporter(
        client, lambda: REG, lambda: Heartbeat(boot_id="b", slots=[]), lambda _: None, period_s=0.01, retry_max_s=0.05
    )
    r.start()
    for _ in range(400):
        if client.beats:
            break
        await asyncio.sleep(0.01)
    await r.stop()
    assert client.beats and r.failed == 4


# --- in-process client ------------------------------------------------------------------------


async def test_local_client_maps_store_errors() -> None:
    from matchmaker import store

    class Mm:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        async def heartbeat(self, host_id: str, hb: Heartbeat) -> HeartbeatReply:
            raise self.exc

    for exc, want in [(store.UnknownHost("x"), UnknownHost), (store.BackendUnavailable("x"), Unavailable)]:
        with pytest.raises(want):
            await LocalMatchmakerClient(Mm(exc)).heartbeat("h", Heartbeat(boot_id="b", slots=[]))  # type: ignore[arg-type]
    assert issubclass(Rejected, Exception)


# --- exposition -------------------------------------------------------------------------------


def fake_agent(sample_name: str = "l4x4", slots: int = 8) -> Any:
    s = AgentSettings(host_id="g6", app="game", slots=slots)
    t = Telemetry(RecordedSampler(DATA / f"nvml_{sample_name}.json"))
    t.latest = t.sampler.sample()
    slot_set = SlotSet(plan_slots(s, t.latest), s, SignalingWatch("http://127.0.0.1:9"))
    slot_set.slots[0].phase = Phase.READY
    slot_set.slots[0].cold_start_s, slot_set.slots[0].cold_starts = 1.5, 1
    slot_set.slots[0].cold_start_total_s = 1.5
    return SimpleNamespace(
        settings=s,
        telemetry=t,
        slots=slot_set,
        reporter=None,
        drain_reasons=set(),
        process=__import__("psutil").Process(),
    )


def test_prometheus_text() -> None:
    text = render(fake_agent())
    lines = text.splitlines()
    assert text.endswith("\n") and lines.count("# TYPE pixelfleet_agent_gpu_utilization_ratio gauge") == 1
    assert 'pixelfleet_agent_gpu_utilization_ratio{gpu="0",name="NVIDIA L4"} 0.64' in lines
    assert 'pixelfleet_agent_gpu_encoder_capacity_ratio{codec="av1",gpu="1",name="NVIDIA L4"} 0.61' in lines
    assert 'pixelfleet_agent_slot_phase{phase="ready",slot="0",streamer_id="g6-0"} 1.0' in lines
    assert 'pixelfleet_agent_slot_last_cold_start_seconds{slot="0",streamer_id="g6-0"} 1.5' in lines
    # cold starts are a typed summary (count and sum together), no longer two loose counters
    assert "# TYPE pixelfleet_agent_slot_cold_start_seconds summary" in lines
    assert 'pixelfleet_agent_slot_cold_start_seconds_count{slot="0",streamer_id="g6-0"} 1.0' in lines
    assert 'pixelfleet_agent_slot_cold_start_seconds_sum{slot="0",streamer_id="g6-0"} 1.5' in lines
    for line in lines:  # every sample line is "name{labels} number"
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    h100 = render(fake_agent("h100", 1))
    assert 'pixelfleet_agent_gpu_has_nvenc{gpu="0",name="NVIDIA H100 80GB HBM3"} 0.0' in h100
    assert 'query="encoder_utilization"' in h100 and "gpu_encoder_utilization_ratio{" not in h100


# --- CloudWatch -------------------------------------------------------------------------------


def test_batches_keep_within_the_api_limits() -> None:
    data = [{"MetricName": f"M{i}", "Value": float(i), "Unit": "Count", "Dimensions": []} for i in range(2500)]
    sizes = [len(b) for b in batches(data)]
    assert sizes == [MAX_DATUMS, MAX_DATUMS, 500]
    big = [{"MetricName": "M", "Value": 1.0, "Dimensions": [{"Name": "D", "Value": "x" * 1000}] * 30}] * 100
    chunks = list(batches(big, max_bytes=200_000))
    assert len(chunks) > 1 and sum(map(len, chunks)) == 100


def test_metric_data_skips_what_is_not_measured() -> None:
    data = metric_data(fake_agent("h100", 2))
    names = {d["MetricName"] for d in data}
    assert "EncoderUtilization" not in names and {"FreeSlots", "GpuUtilization", "ColdStartSeconds"} <= names
    assert all(len(d["Dimensions"]) <= 30 for d in data)


def test_cloudwatch_put_metric_data_with_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        client = boto3.client("cloudwatch", region_name="eu-west-1")
        calls: list[int] = []
        client.meta.events.register(
            "provide-client-params.cloudwatch.PutMetricData",
            lambda params, **_: calls.append(len(params["MetricData"])),
        )
        pub = CloudWatchPublisher(client, "PixelStreaming/Test")
        data = metric_data(fake_agent())
        many = data * (1 + 2 * MAX_DATUMS // len(data))
        assert pub.publish(many) == len(calls) == 3 and max(calls) <= MAX_DATUMS
        metrics = client.list_metrics(Namespace="PixelStreaming/Test")["Metrics"]
        assert {m["MetricName"] for m in metrics} >= {"FreeSlots", "Slots", "GpuUtilization", "EncoderSessions"}
        stats = client.get_metric_statistics(
            Namespace="PixelStreaming/Test",
            MetricName="FreeSlots",
            Statistics=["Maximum"],
            Period=60,
            Dimensions=[{"Name": "Host", "Value": "g6"}, {"Name": "App", "Value": "game"}],
            StartTime=__import__("datetime").datetime(2000, 1, 1),
            EndTime=__import__("datetime").datetime(2100, 1, 1),
        )
        assert stats["Datapoints"] and stats["Datapoints"][0]["Maximum"] == 1.0
        pub.client = boto3.client("cloudwatch", region_name="eu-west-1", endpoint_url="http://127.0.0.1:9")
        assert pub.publish(data) == 0 and pub.failures == 1  # a failure is logged, never raised


def test_exports() -> None:
    import gpu_agent

    assert sorted(gpu_agent.__all__) == gpu_agent.__all__
    for name in gpu_agent.__all__:
        assert getattr(gpu_agent, name) is not None
