"""Recorded NVML: a stand-in ``pynvml`` module that replays JSON fixtures, and the
recorder that writes such fixtures from the real library (``scripts/gpu-check --record``).

A fixture holds what each NVML call returned for each device, in the bindings' own
shapes: a struct becomes an object with its ctypes field names (``util.gpu``,
``session.encodeLatency``), a tuple or list stays a list, and a failure is
``{"error": "NVMLError_NotSupported"}``, replayed by raising that very pynvml class.
Calls that take an enum (clock, codec, sensor) are keyed by its value::

    {"source": "...", "nvmlSystemGetDriverVersion": "550.127.05",
     "devices": [{"nvmlDeviceGetName": "NVIDIA L4",
                  "nvmlDeviceGetUtilizationRates": {"gpu": 41, "memory": 18},
                  "nvmlDeviceGetEncoderCapacity": {"0": 62, "1": 62, "2": 71}, ...}]}

A call missing from a device's record raises ``NVMLError_FunctionNotFound`` (a driver
too old for it). ``init_error`` makes ``nvmlInit`` fail (a host without the driver).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpu_agent.probe import NvmlSampler

KEYED_BY_ARG = frozenset({"nvmlDeviceGetClockInfo", "nvmlDeviceGetEncoderCapacity",
                          "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature"})
SYSTEM_CALLS = ("nvmlSystemGetDriverVersion", "nvmlSystemGetNVMLVersion")


def _pynvml() -> Any:
    import pynvml  # type: ignore[import-untyped]

    return pynvml


def _revive(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _revive(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_revive(v) for v in value]
    return value


def _raise(name: str) -> None:
    n = _pynvml()
    cls = getattr(n, name, None)
    if not (isinstance(cls, type) and issubclass(cls, n.NVMLError)):
        cls = n.NVMLError_Unknown
    raise cls()


class RecordedNvml:
    """Quacks like the ``pynvml`` module for the calls ``NvmlSampler`` makes."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.devices: list[dict[str, Any]] = list(record.get("devices", []))
        self.calls = 0

    @classmethod
    def load(cls, path: str | Path) -> RecordedNvml:
        return cls(json.loads(Path(path).read_text()))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvmlDevice"):
            return lambda handle, *args: self._device_call(name, handle, *args)
        return getattr(_pynvml(), name)  # constants and the NVMLError classes

    def _answer(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"error"}:
            _raise(value["error"])
        return _revive(value)

    def _device_call(self, name: str, handle: int, *args: Any) -> Any:
        self.calls += 1
        device = self.devices[handle]
        if name not in device:
            _raise("NVMLError_FunctionNotFound")
        value = device[name]
        if name in KEYED_BY_ARG:
            key = str(args[0])
            if key not in value:
                _raise("NVMLError_InvalidArgument")
            value = value[key]
        return self._answer(value)

    def nvmlInitWithFlags(self, flags: int) -> None:
        if "init_error" in self.record:
            _raise(self.record["init_error"])

    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return str(self._answer(self.record.get("nvmlSystemGetDriverVersion", "unknown")))

    def nvmlSystemGetNVMLVersion(self) -> str:
        return str(self._answer(self.record.get("nvmlSystemGetNVMLVersion", "unknown")))

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.devices):
            _raise("NVMLError_InvalidArgument")
        return index


def RecordedSampler(path: str | Path) -> NvmlSampler:  # noqa: N802 - reads as a class
    """``NvmlSampler`` over a fixture: the real parsing code on recorded shapes."""
    return NvmlSampler(RecordedNvml.load(path))


# --- recording the real thing --------------------------------------------------------


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
        self._n = nvml or _pynvml()
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
