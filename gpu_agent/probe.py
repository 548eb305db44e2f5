"""GPU telemetry: the ``GpuSampler`` interface and ``NvmlSampler`` (nvidia-ml-py).

NVML calls are blocking driver calls, so ``Telemetry`` runs every sample in one
worker thread and the event loop never waits on the driver. Hosts without a GPU,
without the driver or without the NVML library are normal: the sample has no GPUs
and says why. A query the card does not support (H100/H200/A100 have no NVENC) is
listed in ``unsupported`` and not asked again; any other NVML error is listed in
``errors`` for that sample only. Nothing here raises to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Protocol

import msgspec

CODECS = ("h264", "hevc", "av1")  # NVML_ENCODER_QUERY_* 0, 1, 2 and codecType 0, 1, 2
CLOCKS = ("graphics", "sm", "mem", "video")  # NVML_CLOCK_* 0..3; video = the NVENC/NVDEC clock


class EncoderSession(msgspec.Struct, kw_only=True):
    session_id: int
    pid: int
    codec: str
    width: int
    height: int
    average_fps: int
    latency_us: int


class GpuProcess(msgspec.Struct, kw_only=True):
    pid: int
    used_memory_bytes: int | None = None  # None: NVML cannot tell (e.g. no permission, WDDM)
    sm_util: int | None = None  # % from nvmlDeviceGetProcessUtilization
    enc_util: int | None = None
    dec_util: int | None = None


class GpuSample(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    name: str
    uuid: str = ""
    utilization_gpu: int | None = None  # % of time a kernel or graphics work ran
    utilization_memory: int | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    clocks_mhz: dict[str, int] = {}
    encoder_utilization: int | None = None  # % NVENC busy
    decoder_utilization: int | None = None
    encoder_session_count: int | None = None
    encoder_average_fps: int | None = None
    encoder_average_latency_us: int | None = None
    encoder_capacity: dict[str, int] = {}  # codec -> 0..100, only codecs the card encodes
    has_nvenc: bool | None = None  # None: could not tell
    encoder_sessions: list[EncoderSession] = []
    processes: list[GpuProcess] = []
    unsupported: list[str] = []  # queries this card answers NotSupported / FunctionNotFound
    errors: dict[str, str] = {}  # other failures in this sample


class HostSample(msgspec.Struct, kw_only=True):
    gpus: list[GpuSample]
    driver: str | None = None
    nvml_version: str | None = None
    reason: str | None = None  # why there are no GPUs (no library, no driver, none found)
    sampled_at: float = 0.0  # time.time()
    duration_s: float = 0.0  # how long the NVML calls took


class GpuSampler(Protocol):
    """Blocking calls, made from one worker thread, never concurrently."""

    def open(self) -> None:
        """Initialise (NVML: nvmlInit). Never raises: failures show in the next sample."""

    def sample(self) -> HostSample: ...

    def close(self) -> None: ...


_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_InvalidArgument")
_NO_DATA = ("NVMLError_NotFound", "NVMLError_NoData")


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Gpu:
    """One device's handle and what it was found not to support."""

    def __init__(self, index: int, handle: Any) -> None:
        self.index = index
        self.handle = handle
        self.name = ""
        self.uuid = ""
        self.unsupported: set[str] = set()
        self.last_process_ts = 0


class NvmlSampler:
    """The real sampler. ``nvml`` is the pynvml module (tests pass a recorded stand-in)."""

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml
        self._gpus: list[_Gpu] = []
        self._reason: str | None = None
        self._driver: str | None = None
        self._nvml_version: str | None = None
        self._opened = False

    def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                self._reason = "nvidia-ml-py is not installed"
                return
            self._nvml = pynvml
        n = self._nvml
        try:
            n.nvmlInitWithFlags(n.NVML_INIT_FLAG_NO_GPUS)
        except n.NVMLError as exc:  # LibraryNotFound, DriverNotLoaded, NoPermission, ...
            self._reason = f"NVML unavailable: {_describe(exc)}"
            self._nvml = None
            return
        try:
            self._driver = str(n.nvmlSystemGetDriverVersion())
            with contextlib.suppress(n.NVMLError):
                self._nvml_version = str(n.nvmlSystemGetNVMLVersion())
            count = n.nvmlDeviceGetCount()
            for i in range(count):
                try:
                    gpu = _Gpu(i, n.nvmlDeviceGetHandleByIndex(i))
                    gpu.name = str(n.nvmlDeviceGetName(gpu.handle))
                    gpu.uuid = str(n.nvmlDeviceGetUUID(gpu.handle))
                except n.NVMLError as exc:  # e.g. GpuIsLost: report the others
                    self._reason = f"GPU {i}: {_describe(exc)}"
                    continue
                self._gpus.append(gpu)
        except n.NVMLError as exc:
            self._reason = f"NVML query failed: {_describe(exc)}"
        if not self._gpus and self._reason is None:
            self._reason = "no GPU found"

    def close(self) -> None:
        if self._nvml is not None and self._opened:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._nvml = None
        self._gpus = []

    def sample(self) -> HostSample:
        self.open()
        started = time.perf_counter()
        gpus = [self._sample_gpu(g) for g in self._gpus] if self._nvml is not None else []
        return HostSample(
            gpus=gpus,
            driver=self._driver,
            nvml_version=self._nvml_version,
            reason=None if gpus else (self._reason or "no GPU found"),
            sampled_at=time.time(),
            duration_s=time.perf_counter() - started,
        )

    # --- one GPU -----------------------------------------------------------------------

    def _call(self, gpu: _Gpu, out: GpuSample, label: str, fn: str, *args: Any) -> Any:
        """One query; None when unsupported (remembered) or failed (noted in ``errors``)."""
        if label in gpu.unsupported:
            return None
        try:
            return getattr(self._nvml, fn)(gpu.handle, *args)
        except AttributeError:  # an older nvidia-ml-py without this function
            gpu.unsupported.add(label)
        except Exception as exc:  # NVMLError subclasses, by name so any binding version works
            name = _error_name(exc)
            if name in _UNSUPPORTED:
                gpu.unsupported.add(label)
            elif name not in _NO_DATA:
                out.errors[label] = _describe(exc)
        return None

    def _sample_gpu(self, gpu: _Gpu) -> GpuSample:
        n: Any = self._nvml
        s = GpuSample(
            index=gpu.index,
            name=gpu.name,
            uuid=gpu.uuid,
            clocks_mhz={},
            encoder_capacity={},
            encoder_sessions=[],
            processes=[],
            unsupported=[],
            errors={},
        )
        if (util := self._call(gpu, s, "utilization", "nvmlDeviceGetUtilizationRates")) is not None:
            s.utilization_gpu, s.utilization_memory = int(util.gpu), int(util.memory)
        if (mem := self._call(gpu, s, "memory", "nvmlDeviceGetMemoryInfo")) is not None:
            s.memory_total_bytes, s.memory_used_bytes = int(mem.total), int(mem.used)
            s.memory_free_bytes = int(mem.free)
        temp = self._call(gpu, s, "temperature_v", "nvmlDeviceGetTemperatureV", n.NVML_TEMPERATURE_GPU)
        if temp is None and "temperature_v" in gpu.unsupported:  # drivers before nvmlDeviceGetTemperatureV
            temp = self._call(gpu, s, "temperature", "nvmlDeviceGetTemperature", n.NVML_TEMPERATURE_GPU)
        s.temperature_c = None if temp is None else int(temp)
        if (mw := self._call(gpu, s, "power", "nvmlDeviceGetPowerUsage")) is not None:
            s.power_w = int(mw) / 1000.0
        if (limit := self._call(gpu, s, "power_limit", "nvmlDeviceGetEnforcedPowerLimit")) is not None:
            s.power_limit_w = int(limit) / 1000.0
        for i, clock in enumerate(CLOCKS):
            if (mhz := self._call(gpu, s, f"clock_{clock}", "nvmlDeviceGetClockInfo", i)) is not None:
                s.clocks_mhz[clock] = int(mhz)
        if (enc := self._call(gpu, s, "encoder_utilization", "nvmlDeviceGetEncoderUtilization")) is not None:
            s.encoder_utilization = int(enc[0])
        if (dec := self._call(gpu, s, "decoder_utilization", "nvmlDeviceGetDecoderUtilization")) is not None:
            s.decoder_utilization = int(dec[0])
        if (stats := self._call(gpu, s, "encoder_stats", "nvmlDeviceGetEncoderStats")) is not None:
            s.encoder_session_count, s.encoder_average_fps, s.encoder_average_latency_us = (int(v) for v in stats)
        for i, codec in enumerate(CODECS):
            cap = self._call(gpu, s, f"encoder_capacity_{codec}", "nvmlDeviceGetEncoderCapacity", i)
            if cap is not None:
                s.encoder_capacity[codec] = int(cap)
        if "encoder_capacity_h264" not in gpu.unsupported:
            sessions = self._call(gpu, s, "encoder_sessions", "nvmlDeviceGetEncoderSessions") or []
            s.encoder_sessions = [
                EncoderSession(
                    session_id=int(e.sessionId),
                    pid=int(e.pid),
                    codec=CODECS[e.codecType] if 0 <= e.codecType < len(CODECS) else f"type{e.codecType}",
                    width=int(e.hResolution),
                    height=int(e.vResolution),
                    average_fps=int(e.averageFps),
                    latency_us=int(e.encodeLatency),
                )
                for e in sessions
            ]
        # NVENC is there when any codec's capacity answers; the name table backs it up
        # because EncoderStats may succeed with 0 sessions on an encoder-less card.
        if s.encoder_capacity:
            s.has_nvenc = True
        elif all(f"encoder_capacity_{c}" in gpu.unsupported for c in CODECS):
            s.has_nvenc = False
        s.processes = self._processes(gpu, s)
        s.unsupported = sorted(gpu.unsupported)
        return s

    def _processes(self, gpu: _Gpu, s: GpuSample) -> list[GpuProcess]:
        procs: dict[int, GpuProcess] = {}
        for label, fn in (
            ("graphics_processes", "nvmlDeviceGetGraphicsRunningProcesses"),
            ("compute_processes", "nvmlDeviceGetComputeRunningProcesses"),
        ):
            for p in self._call(gpu, s, label, fn) or []:
                mem = p.usedGpuMemory
                entry = procs.setdefault(int(p.pid), GpuProcess(pid=int(p.pid)))
                if mem is not None:
                    entry.used_memory_bytes = max(entry.used_memory_bytes or 0, int(mem))
        samples = (
            self._call(gpu, s, "process_utilization", "nvmlDeviceGetProcessUtilization", gpu.last_process_ts) or []
        )
        for u in samples:
            gpu.last_process_ts = max(gpu.last_process_ts, int(u.timeStamp))
            entry = procs.setdefault(int(u.pid), GpuProcess(pid=int(u.pid)))
            entry.sm_util, entry.enc_util, entry.dec_util = int(u.smUtil), int(u.encUtil), int(u.decUtil)
        return sorted(procs.values(), key=lambda p: p.pid)


class Telemetry:
    """Samples on a period in one worker thread; ``latest`` is the last sample."""

    def __init__(self, sampler: GpuSampler, period_s: float = 1.0) -> None:
        self.sampler = sampler
        self.period_s = period_s
        self.latest: HostSample = HostSample(gpus=[], reason="not sampled yet")
        self.samples = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nvml")
        self._task: asyncio.Task[None] | None = None

    async def sample_once(self) -> HostSample:
        loop = asyncio.get_running_loop()
        self.latest = await loop.run_in_executor(self._pool, self._sample)
        self.samples += 1
        return self.latest

    def _sample(self) -> HostSample:
        try:
            return self.sampler.sample()
        except Exception as exc:  # a sampler bug must not stop the agent
            return HostSample(gpus=[], reason=f"sampler failed: {_describe(exc)}", sampled_at=time.time())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.sample_once()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry")

    async def stop(self) -> None:
        """Stop the periodic loop (``start()`` again resumes it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def aclose(self) -> None:
        await self.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.sampler.close)
        self._pool.shutdown(wait=False)
