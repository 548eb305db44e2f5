"""``scripts/gpu-check``: run the real NVML sampler and print one JSON document.

Exit status 0 whenever the check ran, GPU or not: a host without GPU, driver or
library prints ``"gpus": []`` with the reason. ``--record FILE`` also writes what NVML
returned as a replay fixture (``gpu_agent.recording``) for the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib import metadata
from typing import Any

import msgspec

from gpu_agent.probe import NvmlSampler


def run(samples: int = 3, record: str | None = None) -> dict[str, Any]:
    recorder = None
    nvml: Any = None
    try:
        import pynvml

        nvml = pynvml
        if record:
            from gpu_agent.recording import RecordingNvml

            nvml = recorder = RecordingNvml(pynvml)
    except ImportError:
        pass
    sampler = NvmlSampler(nvml) if nvml is not None else NvmlSampler()
    started = time.perf_counter()
    sampler.open()
    open_s = time.perf_counter() - started
    durations = []
    sample = sampler.sample()
    for _ in range(max(samples, 1)):
        sample = sampler.sample()
        durations.append(sample.duration_s)
    sampler.close()
    try:
        binding = metadata.version("nvidia-ml-py")
    except metadata.PackageNotFoundError:
        binding = None
    out: dict[str, Any] = {
        "nvidia_ml_py": binding,
        "driver": sample.driver,
        "nvml_version": sample.nvml_version,
        "gpu_count": len(sample.gpus),
        "reason": sample.reason,
        "open_ms": round(open_s * 1e3, 3),
        "sample_ms": {
            "samples": len(durations),
            "median": round(statistics.median(durations) * 1e3, 3),
            "max": round(max(durations) * 1e3, 3),
        },
        "unsupported": {str(g.index): g.unsupported for g in sample.gpus},
        "errors": {str(g.index): g.errors for g in sample.gpus if g.errors},
        "has_nvenc": {str(g.index): g.has_nvenc for g in sample.gpus},
        "gpus": msgspec.to_builtins(sample.gpus),
    }
    if recorder is not None and record:
        with open(record, "w") as f:
            json.dump(recorder.record, f, indent=1)
            f.write("\n")
        out["recorded_to"] = record
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=3, help="timed samples after the first (default 3)")
    p.add_argument("--record", help="also write the raw NVML answers as a replay fixture to this file")
    args = p.parse_args(argv)
    json.dump(run(args.samples, args.record), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
