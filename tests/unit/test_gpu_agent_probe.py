"""NvmlSampler on recorded NVML output shapes: A10G, 4 x L4, H100 (no NVENC), no driver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pynvml
import pytest

from gpu_agent.probe import HostSample, NvmlSampler, Telemetry
from gpu_agent.recording import RecordingNvml
from tests.support.nvml_replay import RecordedNvml, RecordedSampler

DATA = Path(__file__).parents[1] / "data"


def sample(name: str) -> HostSample:
    sampler = RecordedSampler(DATA / f"nvml_{name}.json")
    sampler.sample()
    return sampler.sample()


def test_a10g_reports_everything_but_av1_encode() -> None:
    s = sample("a10g")
    assert s.reason is None and s.driver == "550.127.05" and len(s.gpus) == 1
    g = s.gpus[0]
    assert (g.name, g.utilization_gpu, g.encoder_utilization, g.temperature_c) == ("NVIDIA A10G", 58, 23, 52)
    assert g.power_w == pytest.approx(118.45) and g.power_limit_w == 300.0
    assert g.clocks_mhz == {"graphics": 1710, "sm": 1710, "mem": 6251, "video": 1530}
    assert g.encoder_capacity == {"h264": 71, "hevc": 71} and g.has_nvenc is True
    assert g.unsupported == ["encoder_capacity_av1"]
    assert (g.encoder_session_count, g.encoder_average_fps, g.encoder_average_latency_us) == (1, 59, 4120)
    assert [(e.pid, e.codec, e.width, e.height) for e in g.encoder_sessions] == [(4242, "h264", 1920, 1080)]
    [p] = g.processes
    assert (p.pid, p.used_memory_bytes, p.sm_util, p.enc_util) == (4242, 6442450944, 55, 23)
    assert g.errors == {}


def test_l4_host_has_four_gpus_with_av1_sessions() -> None:
    s = sample("l4x4")
    assert [g.index for g in s.gpus] == [0, 1, 2, 3]
    assert all(g.has_nvenc and "av1" in g.encoder_capacity and not g.unsupported for g in s.gpus)
    assert [e.codec for e in s.gpus[0].encoder_sessions] == ["av1", "h264"]
    assert sum(len(g.processes) for g in s.gpus) == 8


def test_h100_encoder_queries_are_unsupported_not_errors() -> None:
    s = sample("h100")
    g = s.gpus[0]
    assert g.has_nvenc is False and g.encoder_capacity == {} and g.encoder_utilization is None
    assert g.unsupported == [
        "encoder_capacity_av1",
        "encoder_capacity_h264",
        "encoder_capacity_hevc",
        "encoder_utilization",
    ]
    assert g.decoder_utilization == 0 and g.encoder_session_count == 0  # NVDEC exists; stats answer zeros
    assert g.processes == [] and g.errors == {}  # process utilisation NotFound = no sample, not an error
    assert g.utilization_gpu == 0 and g.memory_total_bytes == 81559 * 1024**2


def test_unsupported_queries_are_not_asked_again() -> None:
    nvml = RecordedNvml.load(DATA / "nvml_h100.json")
    sampler = NvmlSampler(nvml)
    sampler.sample()
    first = nvml.calls
    sampler.sample()
    assert nvml.calls - first == first - 2 - 4  # name + uuid only at open; 4 unsupported queries skipped


def test_no_driver_is_an_empty_sample_with_the_reason() -> None:
    s = sample("no_driver")
    assert s.gpus == [] and "NVMLError_LibraryNotFound" in (s.reason or "")


def test_real_sampler_on_this_machine_never_raises() -> None:
    s = NvmlSampler().sample()  # CPU-only CI: no library; a GPU box: real data
    assert s.gpus or s.reason


def _record(**device: Any) -> dict[str, Any]:
    base: dict[str, Any] = json.loads((DATA / "nvml_a10g.json").read_text())
    base["devices"][0].update(device)
    return base


def test_a_failing_query_is_an_error_for_that_sample_only() -> None:
    sampler = NvmlSampler(RecordedNvml(_record(nvmlDeviceGetPowerUsage={"error": "NVMLError_GpuIsLost"})))
    g = sampler.sample().gpus[0]
    assert g.power_w is None and "GpuIsLost" in g.errors["power"] and g.utilization_gpu == 58
    assert "power" not in g.unsupported


def test_old_driver_falls_back_to_the_old_temperature_call() -> None:
    rec = _record(nvmlDeviceGetTemperature={"0": 47})
    del rec["devices"][0]["nvmlDeviceGetTemperatureV"]
    g = NvmlSampler(RecordedNvml(rec)).sample().gpus[0]
    assert g.temperature_c == 47 and "temperature_v" in g.unsupported


def test_a_lost_gpu_at_start_leaves_the_others() -> None:
    rec = json.loads((DATA / "nvml_l4x4.json").read_text())
    rec["devices"][1]["nvmlDeviceGetName"] = {"error": "NVMLError_GpuIsLost"}
    s = NvmlSampler(RecordedNvml(rec)).sample()
    assert [g.index for g in s.gpus] == [0, 2, 3]


def test_recording_the_recorded_gives_back_the_fixture() -> None:
    """``scripts/gpu-check --record`` writes what it reads, in the replay's own format."""
    original = json.loads((DATA / "nvml_l4x4.json").read_text())
    recorder = RecordingNvml(RecordedNvml(original))
    NvmlSampler(recorder).sample()
    for got, want in zip(recorder.record["devices"], original["devices"], strict=True):
        assert got == {k: v for k, v in want.items() if k in got} and len(got) >= len(want) - 1
    assert recorder.record["nvmlSystemGetDriverVersion"] == "550.127.05"
    replay = NvmlSampler(RecordedNvml(recorder.record)).sample()
    assert msgspec.json.encode(replay.gpus) == msgspec.json.encode(sample("l4x4").gpus)


def test_recorded_errors_are_the_real_pynvml_classes() -> None:
    nvml = RecordedNvml.load(DATA / "nvml_h100.json")
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetEncoderUtilization(0)


async def test_telemetry_samples_off_the_event_loop() -> None:
    import threading

    seen: list[str] = []

    class Sampler:
        def open(self) -> None: ...
        def close(self) -> None: ...

        def sample(self) -> HostSample:
            seen.append(threading.current_thread().name)
            raise RuntimeError("sampler bug")

    t = Telemetry(Sampler(), period_s=0.01)
    s = await t.sample_once()
    assert s.gpus == [] and "sampler bug" in (s.reason or "")
    assert seen and seen[0].startswith("nvml")
    await t.aclose()
