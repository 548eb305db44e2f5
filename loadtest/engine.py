"""``pixelfleet loadtest``: run a scenario against a target, or compare two reports.

    pixelfleet loadtest run loadtest/scenarios/signaling-steady.toml \\
        --signaling ws://127.0.0.1:8080 --streamer-url ws://127.0.0.1:8888 --json r.json --html r.html
    pixelfleet loadtest run loadtest/scenarios/platform-steady.toml --matchmaker http://127.0.0.1:8080
    pixelfleet loadtest compare old.json new.json --html cmp.html

The orchestrator spreads the sessions over ``--workers`` generator processes
(``loadtest.worker``), prints a progress line while they run, samples the servers
(``loadtest.observe``), and writes the report (``loadtest.report``). Documented in
docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import psutil

from loadtest import report as rep
from loadtest.children import die_with_parent
from loadtest.observe import Observer, TargetRefused, require_loopback, wait_records
from loadtest.scenario import Scenario, ScenarioError, load, plans

START_DELAY_S = 1.0  # workers start importing; the first arrival waits for all of them


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    return env


class Run:
    def __init__(self, s: Scenario, target: dict[str, Any], opts: argparse.Namespace) -> None:
        self.s, self.target, self.opts = s, target, opts
        self.workers = opts.workers or s.workers
        self.results: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []
        self.latest: dict[int, dict[str, Any]] = {}
        self.planned = len(plans(s))

    async def _worker(self, i: int, start_at: float, run_id: str) -> None:
        cfg = {
            "scenario": msgspec.to_builtins(self.s),
            "worker": i,
            "workers": self.workers,
            "start_at": start_at,
            "target": self.target,
            "run_id": run_id,
        }
        log = self.opts.worker_log_dir
        err = open(Path(log) / f"worker-{i}.log", "wb") if log else asyncio.subprocess.DEVNULL  # noqa: ASYNC230, SIM115
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "loadtest.worker", "--config", json.dumps(cfg),
                stdout=asyncio.subprocess.PIPE, stderr=err, env=_child_env(), preexec_fn=die_with_parent,
                limit=1 << 24,
            )  # fmt: skip
        finally:
            if not isinstance(err, int):
                err.close()
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                msg = orjson.loads(line)
                kind = msg.pop("type")
                if kind == "result":
                    self.results.append(msg)
                elif kind == "progress":
                    self.progress.append(msg)
                    self.latest[i] = msg
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"load generator {i} exited with {proc.returncode} (see --worker-log-dir)")

    def _line(self, start: float) -> str:
        done = len(self.results)
        ok = sum(1 for r in self.results if r["ok"])
        joins = [r["join_ms"] for r in self.results[-500:] if r.get("join_ms") is not None]
        p95 = rep.percentile(joins, 95)
        cpu = max((p["cpu"] for p in self.latest.values()), default=0.0)
        return (
            f"[loadtest] {time.time() - start:6.1f}s  sessions {done}/{self.planned}  ok {ok}  "
            f"failed {done - ok}  open {sum(p['open'] for p in self.latest.values())}  "
            f"join p95 {'-' if p95 is None else f'{p95:.0f} ms'}  generator cpu {cpu:.0%}"
        )

    async def _progress(self, start: float) -> None:
        while True:
            await asyncio.sleep(self.opts.progress_s)
            print(self._line(start), file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        observer = Observer(self.target, os.environ.get("PIXELFLEET_ADMIN_TOKEN"), self.opts.server_pid)
        run_id = secrets.token_hex(4)
        start = time.time() + START_DELAY_S
        watch = asyncio.get_running_loop().create_task(observer.run())
        live = None if self.opts.quiet else asyncio.get_running_loop().create_task(self._progress(start))
        try:
            await asyncio.gather(*(self._worker(i, start, run_id) for i in range(self.workers)))
            ids = {r["session_id"] for r in self.results if r["session_id"]}
            records = await wait_records(self.opts.records, ids, self.opts.records_wait_s)
            await asyncio.sleep(1.0)  # one more sample, so the report sees the server emptied
        finally:
            observer.stop()
            await watch
            if live is not None:
                live.cancel()
        if not self.opts.quiet:
            print(self._line(start), file=sys.stderr, flush=True)
        return rep.build(
            msgspec.to_builtins(self.s), self.target, sorted(self.results, key=lambda r: r["k"]), self.progress,
            observer.samples, start=start, end=time.time(), planned=self.planned, workers=self.workers,
            records=records, server_pid=observer.pid, observer_errors=observer.errors, machine=machine_info(),
        )  # fmt: skip


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "load_avg": list(os.getloadavg()),
    }


def target_of(opts: argparse.Namespace, s: Scenario) -> dict[str, Any]:
    if s.target == "signaling":
        if not opts.signaling or not opts.streamer_url:
            raise ScenarioError(
                "a signalling scenario needs --signaling ws://HOST:PLAYER_PORT and --streamer-url ws://HOST:STREAMER_PORT"
            )
        return {"kind": "signaling", "player_url": opts.signaling, "streamer_url": opts.streamer_url}
    if not opts.matchmaker:
        raise ScenarioError("a platform scenario needs --matchmaker http://HOST:PORT (pixelfleet up: the player port)")
    return {"kind": "platform", "matchmaker_url": opts.matchmaker}


def _scale(s: Scenario, factor: float) -> Scenario:
    """``--duration-scale``: every phase (and diurnal period, spike time) times ``factor``."""
    if factor == 1.0:
        return s
    phases = []
    for ph in s.phases:
        fields = msgspec.structs.asdict(ph)
        for key in ("duration_s", "period_s", "at_s", "width_s"):
            if key in fields:
                fields[key] *= factor
        phases.append(type(ph)(**fields))
    return msgspec.structs.replace(s, phases=phases)


def cmd_benchmark(opts: argparse.Namespace, s: Scenario) -> int:
    """A component benchmark as a scenario: it starts its own local servers."""
    from loadtest import benchmarks

    assert s.benchmark is not None
    try:
        args = benchmarks.check(s.benchmark, opts.scenario)
    except ScenarioError as exc:
        print(f"pixelfleet loadtest: {exc}", file=sys.stderr)
        return 2
    report = benchmarks.run(msgspec.to_builtins(s), s.benchmark, args, machine_info())
    if opts.json:
        Path(opts.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if opts.html:
        from loadtest.report_html import render_benchmark

        Path(opts.html).write_text(render_benchmark(report))
    print(benchmarks.summary(report))
    return 0


def cmd_run(opts: argparse.Namespace) -> int:
    try:
        s = load(opts.scenario)
        if s.target == "benchmark":
            return cmd_benchmark(opts, s)
        s = _scale(s, opts.duration_scale)
        target = target_of(opts, s)
        require_loopback([u for u in target.values() if "://" in u], opts.i_own_this_target)
    except (ScenarioError, TargetRefused) as exc:
        print(f"pixelfleet loadtest: {exc}", file=sys.stderr)
        return 2
    import uvloop

    report = uvloop.run(Run(s, target, opts).run())
    if opts.json:
        Path(opts.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if opts.html:
        from loadtest.report_html import render

        Path(opts.html).write_text(render(report))
    print(summary(report))
    if opts.fail_on_error and (report["sessions"]["failed"] or report["webrtc"]["errors_by_kind"]):
        return 1
    return 0


def summary(r: dict[str, Any]) -> str:
    s, lat, w = r["sessions"], r["latency_ms"], r["webrtc"]

    def f(v: Any, spec: str = ".1f") -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        f"scenario {r['scenario']['name']} ({r['target']['kind']}): {s['ok']}/{s['normal']} sessions ok, "
        f"{s['failed']} failed, {s['abusive']} abusive; {f(s['ok_per_s'], '.2f')} sessions/s",
        f"join ms p50 {f(lat['join']['p50'])} p95 {f(lat['join']['p95'])} p99 {f(lat['join']['p99'])}",
    ]
    if w["sample"]:
        t = w["ttff_ms"]
        lines.append(
            f"webrtc {w['connected']}/{w['sample']}: first frame ms p50 {f(t['p50'])} p95 {f(t['p95'])} "
            f"p99 {f(t['p99'])}; fps p50 {f(w['fps']['p50'])}; input rtt ms p50 {f(w['input_rtt_ms']['p50'])}"
        )
    if r["errors_by_kind"]:
        lines.append(f"errors: {r['errors_by_kind']}")
    lines.append(f"generator: {r['generator']['verdict']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pixelfleet loadtest", description="load test the platform (docs/loadtest.md)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a scenario file against a target")
    r.add_argument("scenario", help="scenario file (.toml or .json)")
    r.add_argument("--signaling", help="signalling target: the player WebSocket URL, ws://HOST:PORT")
    r.add_argument("--streamer-url", help="signalling target: the streamer WebSocket URL, ws://HOST:PORT")
    r.add_argument("--matchmaker", help="platform target: the matchmaker's root URL, http://HOST:PORT")
    r.add_argument("--workers", type=int, default=0, help="generator processes (default: the scenario's)")
    r.add_argument("--duration-scale", type=float, default=1.0, help="stretch (>1) or shrink every phase")
    r.add_argument("--json", help="write the JSON report here")
    r.add_argument("--html", help="write the HTML report (one file, plots inline) here")
    r.add_argument("--records", help="platform: the matchmaker's records file, to count its ended sessions")
    r.add_argument("--records-wait-s", type=float, default=20.0, help="how long to wait for those records")
    r.add_argument(
        "--server-pid", type=int, help="sample this process's CPU/RSS (default: whoever listens on the target port)"
    )
    r.add_argument("--worker-log-dir", help="write each generator's stderr here")
    r.add_argument("--progress-s", type=float, default=2.0, help="seconds between progress lines")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.add_argument("--fail-on-error", action="store_true", help="exit 1 if any non-abusive session failed")
    r.add_argument("--i-own-this-target", action="store_true", help="allow a target that is not a loopback address")
    c = sub.add_parser("compare", help="two reports side by side, with ratios")
    c.add_argument("base", help="the reference report (JSON)")
    c.add_argument("new", help="the report to check (JSON)")
    c.add_argument("--html", help="also write the comparison as HTML here")
    c.add_argument("--max-ratio", type=float, help="exit 1 if a lower-is-better figure grew by more than this ratio")
    opts = p.parse_args(argv)
    if opts.command == "run" and opts.workers < 0:
        p.error("--workers must be >= 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.command == "compare":
        from loadtest.compare import run_compare

        return run_compare(opts)
    return cmd_run(opts)


if __name__ == "__main__":
    sys.exit(main())
