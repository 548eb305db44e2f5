"""The component benchmarks as scenarios of the load tester (``target = "benchmark"``).

The signalling and matchmaker benchmarks each start their own local servers and measure
one component at its limit; a scenario file names one and its options:

    name = "matchmaker-fleet"
    target = "benchmark"
    [benchmark]
    kind = "matchmaker"
    [benchmark.options]
    fleet = "96x500"
    repeat = 3

``pixelfleet loadtest run FILE --json r.json --html r.html`` runs it in a child process
(its own progress lines go to stderr), keeps its whole report under ``benchmark`` and
lifts its headline figures into ``figures`` (each with its direction), which is what
``pixelfleet loadtest compare`` puts side by side, so a benchmark regression check is the
same command as a platform one. Options are the benchmark's own flags with ``_`` for
``-``; a flag the benchmark does not have is an error that names it (docs/loadtest.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from loadtest.scenario import BenchmarkSpec, ScenarioError

MODULES: dict[str, str] = {"signaling": "loadtest.bench_signaling", "matchmaker": "loadtest.bench_matchmaker"}


def argv(spec: BenchmarkSpec) -> list[str]:
    """The benchmark's command line: ``relay_seconds = 10`` -> ``--relay-seconds 10``;
    ``true`` -> the flag alone, ``false`` -> ``--no-<flag>``; a list -> comma-joined."""
    out: list[str] = []
    for key, value in spec.options.items():
        if key == "json":
            raise ScenarioError("benchmark.options.json: the load tester writes the report itself (--json)")
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def check(spec: BenchmarkSpec, where: str = "scenario") -> list[str]:
    """Parse the options with the benchmark's own parser: an unknown or malformed option
    is a ScenarioError naming it, before anything starts."""
    args = argv(spec)
    parse: Callable[[Sequence[str]], argparse.Namespace] = importlib.import_module(MODULES[spec.kind]).parse_args
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parse(args)
    except SystemExit:
        last = [line for line in errors.getvalue().splitlines() if line.strip()]
        raise ScenarioError(f"{where}: benchmark.options: {last[-1] if last else 'refused'}") from None
    if not 0 < spec.timeout_s <= 24 * 3600:
        raise ScenarioError(f"{where}: benchmark.timeout_s must be 0..86400")
    return args


# ----------------------------------------------------------------------------- figures
Figures = dict[str, dict[str, Any]]


def _put(out: Figures, label: str, value: Any, lower_is_better: bool) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        out[label] = {"value": float(value), "lower_is_better": lower_is_better}


def _signaling(r: dict[str, Any]) -> Figures:
    out: Figures = {}
    for server, s in r.get("servers", {}).items():
        hs, relay, idle = s.get("handshake", {}), s.get("relay", {}), s.get("idle", {})
        _put(out, f"{server}: handshakes/s", hs.get("per_s"), False)
        _put(out, f"{server}: handshake p99 ms", hs.get("p99_ms"), True)
        _put(out, f"{server}: relayed msgs/s", relay.get("per_s"), False)
        _put(out, f"{server}: relay rtt p99 ms", relay.get("rtt_p99_ms"), True)
        _put(out, f"{server}: server CPU s / 100k relayed", relay.get("server_cpu_per_100k"), True)
        _put(out, f"{server}: KB per idle connection", idle.get("kb_per_idle"), True)
    from loadtest.bench_signaling import TARGETS  # key -> (label, ">=" | "<=" | "<", target)

    for key, value in r.get("ratios", {}).items():
        base = key.removesuffix("_of_medians")
        if base in TARGETS:
            _put(out, f"target {key}", value, TARGETS[base][1] != ">=")
    return out


def _matchmaker(r: dict[str, Any]) -> Figures:
    out: Figures = {}
    for p in r.get("phases", []):
        name = p["phase"] + (f" x{p['replicas']}" if p.get("replicas") is not None else "")
        _put(out, f"{name}: allocations/s", p.get("per_s"), False)
        _put(out, f"{name}: p99 ms", p.get("p99_ms"), True)
        for side, ms in p.get("cpu", {}).get("cpu_ms_per_op", {}).items():
            _put(out, f"{name}: {side} CPU ms / allocation", ms, True)
    ratios = r.get("ratios", {})
    _put(out, "ceiling ratio (closed loop, most replicas)", ratios.get("ceiling_ratio"), False)
    _put(out, "p99 ms at the fixed rate", ratios.get("fixed_p99_ms"), True)
    return out


FIGURES: dict[str, Callable[[dict[str, Any]], Figures]] = {
    "signaling": _signaling,
    "matchmaker": _matchmaker,
}


# ----------------------------------------------------------------------------- run
def run(scenario: dict[str, Any], spec: BenchmarkSpec, args: list[str], machine: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark as a child process and build the load tester's report from it."""
    with tempfile.TemporaryDirectory(prefix="pixelfleet-bench-") as folder:
        out = Path(folder) / "bench.json"
        cmd = [sys.executable, "-m", MODULES[spec.kind], *args, "--json", str(out)]
        start = time.time()
        # Its progress and summary go to our stderr as they come; our stdout stays the summary.
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:  # noqa: S603
            limit = threading.Timer(spec.timeout_s, proc.kill)
            limit.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stderr.write(line)
                code = proc.wait()
            finally:
                limit.cancel()
        end = time.time()
        if code != 0 or not out.exists():
            why = "ran past benchmark.timeout_s" if code == -9 else f"exited with {code}"
            raise RuntimeError(f"benchmark {spec.kind} {why}: {' '.join(cmd)}")
        raw = orjson.loads(out.read_bytes())
    return {
        "scenario": scenario,
        "target": {"kind": "benchmark", "benchmark": spec.kind},
        "command": " ".join(["python", "-m", MODULES[spec.kind], *args]),
        "started": start,
        "ended": end,
        "wall_s": round(end - start, 1),
        "machine": machine,
        "figures": FIGURES[spec.kind](raw),
        "benchmark": raw,
    }


def summary(report: dict[str, Any]) -> str:
    lines = [f"scenario {report['scenario']['name']} (benchmark {report['target']['benchmark']}), {report['wall_s']} s"]
    lines += [f"  {label}: {f['value']:.4g}" for label, f in report["figures"].items()]
    return "\n".join(lines)
