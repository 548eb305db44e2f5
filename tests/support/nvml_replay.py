"""Replayed NVML: a stand-in ``pynvml`` module that answers from a JSON fixture written by
``scripts/gpu-check --record`` (format: ``gpu_agent/recording.py``), so the real
``NvmlSampler`` parses every GPU shape we have seen on machines without a GPU.

A recorded failure ``{"error": "NVMLError_NotSupported"}`` is replayed by raising that
very pynvml class; a call missing from a device's record raises
``NVMLError_FunctionNotFound`` (a driver too old for it); ``init_error`` makes
``nvmlInit`` fail (a host without the driver).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpu_agent.probe import NvmlSampler
from gpu_agent.recording import KEYED_BY_ARG
from gpu_agent.recording import pynvml_module as _pynvml


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
