"""Recording NVML: wraps the real ``pynvml`` and keeps what every call returned as a
replay fixture (``scripts/gpu-check --record tests/data/nvml_<card>.json``).

A fixture holds what each NVML call returned for each device, in the bindings' own
shapes: a struct becomes an object with its ctypes field names (``util.gpu``,
``session.encodeLatency``), a tuple or list stays a list, and a failure is
``{"error": "NVMLError_NotSupported"}``. Calls that take an enum (clock, codec, sensor)
are keyed by its value::

    {"source": "...", "nvmlSystemGetDriverVersion": "550.127.05",
     "devices": [{"nvmlDeviceGetName": "NVIDIA L4",
                  "nvmlDeviceGetUtilizationRates": {"gpu": 41, "memory": 18},
                  "nvmlDeviceGetEncoderCapacity": {"0": 62, "1": 62, "2": 71}, ...}]}

The tests replay these files through the real ``NvmlSampler`` (``tests/support/nvml_replay.py``),
so every GPU shape we have seen is parsed on machines without a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

KEYED_BY_ARG = frozenset(
    {"nvmlDeviceGetClockInfo", "nvmlDeviceGetEncoderCapacity", "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"}
)
SYSTEM_CALLS = ("nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion")


def pynvml_module() -> Any:
    import pynvml

    return pynvml


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, SimpleNamespace):  # a replayed struct
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields is not None:
        return {f[0]: _plain(getattr(value, f[0])) for f in fields}
    return value


class RecordingNvml:
    """Wraps the real ``pynvml``; every device call's result is kept in fixture form."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._n = nvml or pynvml_module()
        self._handles: dict[int, int] = {}  # id(handle) -> index
        self.record: dict[str, Any] = {"source": "recorded by scripts/gpu-check --record", "devices": []}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._n, name)
        if name.startswith("nvmlDevice") and name not in ("nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex"):
            return lambda handle, *args: self._device_call(name, real, handle, *args)
        if name in SYSTEM_CALLS:
            return lambda: self._system_call(name, real)
        return real

    def _keep(self, name: str, handle: Any, args: tuple[Any, ...], value: Any) -> None:
        index = self._handles.get(id(handle))
        if index is None:
            return
        device = self.record["devices"][index]
        if name in KEYED_BY_ARG and args:
            device.setdefault(name, {})[str(int(args[0]))] = value
        else:
            device[name] = value

    def _device_call(self, name: str, real: Any, handle: Any, *args: Any) -> Any:
        try:
            result = real(handle, *args)
        except self._n.NVMLError as exc:
            self._keep(name, handle, args, {"error": type(exc).__name__})
            raise
        self._keep(name, handle, args, _plain(result))
        return result

    def _system_call(self, name: str, real: Any) -> Any:
        try:
            result = real()
        except self._n.NVMLError as exc:
            self.record[name] = {"error": type(exc).__name__}
            raise
        self.record[name] = _plain(result)
        return result

    def nvmlInitWithFlags(self, flags: int) -> None:
        try:
            self._n.nvmlInitWithFlags(flags)
        except self._n.NVMLError as exc:
            self.record["init_error"] = type(exc).__name__
            raise

    def nvmlDeviceGetCount(self) -> int:
        return int(self._n.nvmlDeviceGetCount())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        handle = self._n.nvmlDeviceGetHandleByIndex(index)
        self._handles[id(handle)] = index
        while len(self.record["devices"]) <= index:
            self.record["devices"].append({})
        return handle
