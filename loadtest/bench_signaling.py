"""Signalling benchmark: pixelfleet against a bare aiohttp relay, in one run.

Each server runs as its own child process so its CPU and RSS are read alone
(psutil); the load comes from separate generator processes (`loadtest.bench_client`)
driven over stdin/stdout. A round, for each server kind:

1. streamers: S streamers connect and identify (not timed);
2. handshake: P players join, at most `--inflight` at a time (split over generators);
3. relay: closed-loop windows of `--relay-seconds`, K messages in flight per pair; the
   kinds take turns (A B B A ...) for `--windows` windows each, and the ratios pair each
   pixelfleet window with its bare neighbour;
4. idle: on a fresh instance, RSS with no connection and at each `--idle` count of idle
   player sockets.

`--repeat` runs several rounds (alternating which kind goes first) and reports medians.

    python -m loadtest.bench_signaling --streamers 50 --players 500 --inflight 50 \\
        --relay-seconds 10 --idle 2000,5000 --generators 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import psutil

from loadtest.children import JsonLineChild, die_with_parent, tail
from pixelfleet.net import NotListening, free_port, wait_for_port

SERVERS = ("pixelfleet", "bare")
# Generous per-connection limits so the benchmark measures relaying, not throttling.
PIXELFLEET_ARGS: tuple[str, ...] = (
    "--player-rate",
    "1000000",
    "--player-burst",
    "1000000",
    "--streamer-rate",
    "10000000",
    "--streamer-burst",
    "10000000",
)
TARGETS = {
    "relay_ratio": ("relayed msgs/s, pixelfleet / bare (paired windows)", ">=", 0.75),
    "cpu_ratio": ("server CPU per message, pixelfleet / bare (paired)", "<=", 1.3),
    "handshake_p99_ms": ("pixelfleet handshake p99 (ms)", "<", 10.0),
    "kb_per_idle": ("pixelfleet RSS per idle connection (KB)", "<", 15.0),
}
now = time.monotonic
NCPU = psutil.cpu_count() or 1


# ----------------------------------------------------------------------------- helpers
def _child_env() -> dict[str, str]:
    """Our environment, with this checkout importable even where it is not installed."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    return env


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def percentile(values: Sequence[float], q: float, weights: Sequence[float] | None = None) -> float | None:
    """Linear-interpolated percentile (unweighted) or the weighted nearest rank."""
    if not values:
        return None
    if weights is None:
        s = sorted(values)
        k = (len(s) - 1) * q
        f = math.floor(k)
        c = min(f + 1, len(s) - 1)
        return s[f] + (s[c] - s[f]) * (k - f)
    pairs = sorted(zip(values, weights, strict=False))
    total = sum(weights)
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= q * total:
            return v
    return pairs[-1][0]


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("aiohttp", "uvloop", "orjson"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
    }


def run_queue(pids: Sequence[int]) -> tuple[float, int]:
    """Run-queue wait (s) and CPU turns of every thread of ``pids`` (see ProcTree.run_queue)."""
    delay_ns = turns = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    _on_cpu, waited, count = f.read().split()[:3]
                    delay_ns += int(waited)
                    turns += int(count)
    return delay_ns / 1e9, turns


class ProcTree:
    """CPU seconds and RSS of a process plus its live children."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def _all(self) -> list[psutil.Process]:
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return [self.proc]

    def cpu(self) -> float:
        total = 0.0
        for p in self._all():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(self) -> int:
        total = 0
        for p in self._all():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def run_queue(self) -> tuple[float, int]:
        """(seconds its threads waited runnable for a CPU, times they got one): Linux's
        ``/proc/<pid>/task/<tid>/schedstat``. (0, 0) where the kernel does not keep it."""
        return run_queue([p.pid for p in self._all()])


class ProcTrees(ProcTree):
    """Several process trees as one: a cluster's nodes, a phase's replicas or generators."""

    def __init__(self, trees: Sequence[ProcTree]) -> None:  # no psutil.Process of its own
        self.trees = list(trees)

    def cpu(self) -> float:
        return sum(t.cpu() for t in self.trees)

    def rss(self) -> int:
        return sum(t.rss() for t in self.trees)

    def run_queue(self) -> tuple[float, int]:
        waits = [t.run_queue() for t in self.trees]
        return sum(w for w, _ in waits), sum(n for _, n in waits)


class Snapshot:
    def __init__(self, server: ProcTree, gens: Sequence[ProcTree]) -> None:
        self.t = now()
        self.server = server.cpu()
        self.gens = [g.cpu() for g in gens]
        m = psutil.cpu_times()
        self.idle = m.idle + getattr(m, "iowait", 0.0)
        self.irq = getattr(m, "softirq", 0.0) + getattr(m, "irq", 0.0)
        self.steal = getattr(m, "steal", 0.0)
        self.total = sum(m)
        c0 = psutil.cpu_times(percpu=True)[0]
        self.cpu0_idle = c0.idle + getattr(c0, "iowait", 0.0)
        self.cpu0_total = sum(c0)

    def since(self, before: Snapshot) -> dict[str, Any]:
        wall = self.t - before.t
        gens = [a - b for a, b in zip(self.gens, before.gens, strict=False)]
        total = self.total - before.total
        busy = 1.0 - (self.idle - before.idle) / total if total > 0 else 0.0
        server, gen = (self.server - before.server) / wall, sum(gens) / wall
        irq = (self.irq - before.irq) / total * NCPU if total > 0 else 0.0
        total0 = self.cpu0_total - before.cpu0_total
        return {
            "wall_s": wall,
            "server_cpu_s": self.server - before.server,
            "server_cores": (self.server - before.server) / wall,
            "gen_cpu_s": sum(gens),
            "gen_cores": sum(gens) / wall,
            "gen_cores_each": [g / wall for g in gens],
            "machine_busy": busy,
            # Loopback TCP work the kernel does in softirq, charged to no process: it serves
            # both sides. What is left is other processes on the box (the orchestrator sleeps).
            "softirq_cores": irq,
            # Time the hypervisor gave our vCPUs to someone else (a VM's noisy neighbours).
            "steal_cores": (self.steal - before.steal) / total * NCPU if total > 0 else 0.0,
            "other_cores": max(0.0, busy * NCPU - server - gen - irq),
            # With --pin the server has CPU 0 to itself; how busy that core was (server plus
            # the kernel work its own syscalls trigger) says whether the server ran out.
            "cpu0_busy": 1.0 - (self.cpu0_idle - before.cpu0_idle) / total0 if total0 > 0 else 0.0,
        }


def saturation(cpu: dict[str, Any], pinned: bool) -> str:
    """Which side ran out of CPU: the single-threaded server, a generator, or the box."""
    s, g, o, k = cpu["server_cores"], cpu["gen_cores"], cpu["other_cores"], cpu["softirq_cores"]
    detail = f"server {s:.2f}, generators {g:.2f}, kernel softirq {k:.2f}, other {o:.2f} cores"
    if s >= 0.9 or (pinned and cpu["cpu0_busy"] >= 0.9):
        where = f"CPU 0 {cpu['cpu0_busy']:.0%} busy" if pinned else "its one core is busy"
        verdict = f"server: {where} ({detail})"
    elif max(cpu["gen_cores_each"], default=0.0) >= 0.9 or (pinned and g >= 0.9 * (NCPU - 1)):
        verdict = f"generators: their CPU is full ({detail})"
    elif cpu["machine_busy"] >= 0.85:
        verdict = f"machine: {cpu['machine_busy']:.0%} of {NCPU} cores busy ({detail})"
    else:
        verdict = f"neither: latency-bound ({detail})"
    if o >= 0.15:
        verdict += f"; other processes took {o:.2f} cores, so this run is noisy"
    return verdict


# ----------------------------------------------------------------------------- processes
class GenProc(JsonLineChild):
    """One generator child (``loadtest.bench_client``)."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process, log: str) -> None:
        super().__init__(f"generator {index}", proc, log)
        self.index = index
        self.tree = ProcTree(proc.pid)

    @classmethod
    async def start(cls, index: int, cfg: dict[str, Any], logdir: str, tag: str) -> GenProc:
        log = os.path.join(logdir, f"{tag}-generator{index}-{len(os.listdir(logdir))}.log")
        proc = await cls.spawn("loadtest.bench_client", cfg, log, limit=64 << 20, env=_child_env(), new_session=True)
        return cls(index, proc, log)


class Server:
    def __init__(self, kind: str, cmd: list[str], ports: dict[str, int], host: str, log: str) -> None:
        self.kind, self.cmd, self.ports, self.host, self.log = kind, cmd, ports, host, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, limit_s: float = 30.0) -> ProcTree:
        with open(self.log, "wb") as out:  # noqa: ASYNC230 - one small local file per child
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
                cwd=os.path.dirname(self.log),
                env=_child_env(),
            )  # not our cwd: `python -m` would put it first on sys.path, ahead of PYTHONPATH
        proc, deadline = self.proc, now() + limit_s
        try:
            for port in self.ports.values():
                await wait_for_port(
                    self.host, port, max(0.0, deadline - now()), exited=lambda: proc.returncode is not None
                )
        except NotListening as exc:
            raise RuntimeError(f"{self.kind}: {exc} (exit code {proc.returncode}):\n{tail(self.log)}") from None
        return ProcTree(proc.pid)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def server_command(kind: str, host: str, opts: argparse.Namespace) -> tuple[list[str], dict[str, int]]:
    player, streamer, sfu = free_port(host), free_port(host), free_port(host)
    if kind == "bare":
        ports = {"player": player, "streamer": streamer}
        if opts.bare_cmd:
            return shlex.split(opts.bare_cmd.format(host=host, player_port=player, streamer_port=streamer)), ports
        cmd = [sys.executable, "-m", "loadtest.bare_relay", "--host", host,
               "--player-port", str(player), "--streamer-port", str(streamer)]  # fmt: skip
        return cmd, ports
    ports = {"player": player, "streamer": streamer, "sfu": sfu}
    if opts.pixelfleet_cmd:
        template = opts.pixelfleet_cmd
        cmd = shlex.split(template.format(host=host, player_port=player, streamer_port=streamer, sfu_port=sfu))
    else:
        cmd = [sys.executable, "-m", "signaling", "--host", host, "--player-port", str(player),
               "--streamer-port", str(streamer), "--sfu-port", str(sfu)]  # fmt: skip
    extra = PIXELFLEET_ARGS if opts.server_arg is None else tuple(a for a in opts.server_arg if a)
    return [*cmd, *extra], ports


def _renice(tree: ProcTree, nice: int) -> None:
    """On a shared box, a negative nice keeps unrelated work from skewing the figures.

    Children run in their own session, so with scheduler autogroups (Linux desktop and
    server defaults) the group's nice is set too: a plain nice only ranks processes
    inside one group."""
    if not nice:
        return
    try:
        tree.proc.nice(nice)
        with contextlib.suppress(OSError), open(f"/proc/{tree.proc.pid}/autogroup", "w") as f:
            f.write(str(nice))
    except psutil.AccessDenied:
        print(f"[bench] cannot set nice {nice} (needs root); running at normal priority", file=sys.stderr)


async def quiesce(tree: ProcTree, limit_s: float = 30.0, window_s: float = 0.25) -> float:
    """Wait until the server has finished its backlog (e.g. thousands of closes): its CPU
    over a short window drops under 5%. Returns the seconds waited (bounded)."""
    start = now()
    while now() - start < limit_s:
        before = tree.cpu()
        await asyncio.sleep(window_s)
        if tree.cpu() - before < 0.05 * window_s:
            break
    return now() - start


async def quiet_machine(limit_s: float) -> float | None:
    """Wait (bounded) for other processes on the box to go quiet; returns the busy share seen."""
    if limit_s <= 0:
        return None
    deadline = now() + limit_s
    while True:
        psutil.cpu_percent(None)  # starts a measurement window
        await asyncio.sleep(0.5)
        busy: float = psutil.cpu_percent(None) / 100.0
        if busy < 0.15 or now() >= deadline:
            return busy


def cpu_speed_ms(rounds: int = 3) -> float:
    """CPU milliseconds a fixed pure-Python workload takes, the least of ``rounds``: the
    VM's speed at that moment. A shared host's vCPU is not a constant (on the development
    VM this took 33 to 74 ms before the phases of one afternoon's runs), and CPU per
    operation moves with it, so a benchmark reports this next to its figures. Lower is
    faster."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        table: dict[str, int] = {}
        acc = 0
        for i in range(150_000):
            acc += i * i % 7
            table[str(i & 4095)] = acc
        best = min(best, time.process_time() - started)
    return round(best * 1e3, 1)


# ----------------------------------------------------------------------------- profiling
class Profiler:
    """py-spy attached to the server for one phase (`--profile DIR`).

    Sampling, non-blocking: the server runs at nearly full speed, and py-spy's own CPU
    is not counted as the server's (it still competes for the box, so figures from a
    profiled run are for finding hot spots, not for the report)."""

    def __init__(self, proc: asyncio.subprocess.Process, out: str) -> None:
        self.proc, self.out = proc, out

    @classmethod
    async def start(cls, opts: argparse.Namespace, kind: str, phase: str, server: ProcTree) -> Profiler | None:
        if not opts.profile:
            return None
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        os.makedirs(opts.profile, exist_ok=True)
        out = os.path.join(opts.profile, f"{kind}-{phase}.txt")
        proc = await asyncio.create_subprocess_exec(
            exe, "record", "--pid", str(server.proc.pid), "--rate", "250", "--nonblocking", "--function",
            "--format", "raw", "-o", out, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # let it attach
        return cls(proc, out)

    async def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
        return hot_spots(self.out)


def hot_spots(path: str, top: int = 15) -> dict[str, Any]:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_short_frame(x) for x in stack.split(";")]
            total += n
            self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
            for fr in set(frames):
                incl_n[fr] = incl_n.get(fr, 0) + n

    def rank(d: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [[k, round(100.0 * v / total, 1)] for k, v in ranked] if total else []

    return {"file": path, "samples": total, "self_pct": rank(self_n), "inclusive_pct": rank(incl_n)}


def _short_frame(frame: str) -> str:
    """'handle (signaling/ws.py:180)' -> 'handle (signaling/ws.py)'."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name


# ----------------------------------------------------------------------------- one server
class KindBench:
    """Every phase against one kind of server, on fresh instances of it: one for the load
    phases and one for the idle-RSS phase, so thousands of closed idle sockets (garbage for
    the cyclic GC, whose full pass stalls the loop) never land in the load figures. Each
    kind has its own generators, so two kinds can take turns in the relay phase."""

    def __init__(self, kind: str, opts: argparse.Namespace, logdir: str) -> None:
        self.kind, self.opts, self.logdir = kind, opts, logdir
        self.gens: list[GenProc] = []
        self.gtrees: list[ProcTree] = []
        self.servers: list[Server] = []
        self.server: Server | None = None
        self.stree: ProcTree | None = None
        self.result: dict[str, Any] = {"server": kind}
        self.profiles: dict[str, Any] = {}
        self.windows: list[dict[str, Any]] = []

    async def _start_server(self, tag: str) -> tuple[Server, ProcTree]:
        opts = self.opts
        cmd, ports = server_command(self.kind, opts.host, opts)
        log = os.path.join(self.logdir, f"{self.kind}-{tag}-{len(os.listdir(self.logdir))}.log")
        server = Server(self.kind, cmd, ports, opts.host, log)
        self.servers.append(server)
        tree = await server.start()
        if opts.pin and NCPU > 1:  # the server alone on CPU 0, so generators never steal its core
            tree.proc.cpu_affinity([0])
        _renice(tree, opts.nice)
        self.result.setdefault("cmd", " ".join(cmd))
        self.result.setdefault("logs", []).append(server.log)
        return server, tree

    async def load(self) -> None:
        """Generators, a fresh server, the streamers, then the (measured) handshakes."""
        opts, kind = self.opts, self.kind
        S, P, G = opts.streamers, opts.players, opts.generators
        # A streamer and its players live on one generator (one clock per handshake).
        for g in range(G):
            streamers = [s for s in range(S) if s % G == g]
            players = [[i, i % S] for i in range(P) if (i % S) % G == g]
            cfg = {"host": opts.host, "streamers": streamers, "players": players,
                   "client": opts.client, "timeout": opts.timeout}  # fmt: skip
            self.gens.append(await GenProc.start(g, cfg, self.logdir, kind))
        gens = self.gens
        await asyncio.gather(*(g.call(30, "hello") for g in gens))
        self.gtrees = gtrees = [g.tree for g in gens]
        for t in gtrees:
            if opts.pin and NCPU > 1:
                t.proc.cpu_affinity(list(range(1, NCPU)))
            _renice(t, opts.nice)

        server, stree = await self._start_server("load")
        self.server, self.stree = server, stree
        outs = await asyncio.gather(
            *(g.call(opts.timeout + 5, "streamers", port=server.ports["streamer"]) for g in gens)
        )
        self.result["streamers"] = sum(len(o["ids"]) for o in outs)
        await quiesce(stree)

        players_per_gen = [sum(1 for i in range(P) if (i % S) % G == g) for g in range(G)]
        inflight = [max(1, round(opts.inflight * n / P)) if n else 1 for n in players_per_gen]
        self.result["busy_before_handshake"] = await quiet_machine(opts.quiet_wait)
        prof = await Profiler.start(opts, kind, "handshake", stree)
        start_at = now() + 0.2
        calls = [asyncio.ensure_future(g.call(opts.timeout * 4 + P, "handshake", port=server.ports["player"],
                                              start_at=start_at, inflight=k))
                 for g, k in zip(gens, inflight, strict=False)]  # fmt: skip
        await asyncio.sleep(max(0.0, start_at - now()))
        before = Snapshot(stree, gtrees)
        outs = await asyncio.gather(*calls)
        cpu = Snapshot(stree, gtrees).since(before)
        if prof:
            self.profiles["handshake"] = await prof.stop()
        lat = [x for o in outs for x in o["latency"]]
        join = [x for o in outs for x in o["join"]]
        end = max(o["end"] for o in outs)
        failures: dict[str, int] = {}
        for o in outs:
            for k, v in o["failures"].items():
                failures[k] = failures.get(k, 0) + v
        self.result["handshake"] = {
            "ok": len(lat),
            "failed": sum(o["failed"] for o in outs),
            "failures": failures,
            "inflight": sum(inflight),
            "per_s": len(lat) / (end - start_at) if end > start_at else None,
            **{f"p{q}_ms": _ms(percentile(lat, q / 100)) for q in (50, 95, 99)},
            "max_ms": _ms(max(lat, default=None)),
            "join_p50_ms": _ms(percentile(join, 0.5)),
            "join_p99_ms": _ms(percentile(join, 0.99)),
            "cpu": cpu,
            "saturated": saturation(cpu, opts.pin and NCPU > 1),
        }

    async def relay_window(self) -> dict[str, Any]:
        """One closed-loop relay window of `--relay-seconds` (after a short warm-up)."""
        opts, gens, stree = self.opts, self.gens, self.stree
        assert stree is not None
        warmup, grace = opts.relay_warmup, 5.0
        busy_before = await quiet_machine(opts.quiet_wait)
        prof = await Profiler.start(opts, self.kind, "relay", stree) if not self.windows else None
        start_at = now() + warmup + 0.2
        calls = [
            asyncio.ensure_future(g.call(opts.relay_seconds + warmup + grace + 30, "relay", start_at=start_at,
                                         seconds=opts.relay_seconds, k=opts.k, warmup=warmup, grace=grace))
            for g in gens
        ]  # fmt: skip
        await asyncio.sleep(max(0.0, start_at - now()))
        before = Snapshot(stree, self.gtrees)
        await asyncio.sleep(max(0.0, start_at + opts.relay_seconds - now()))
        cpu = Snapshot(stree, self.gtrees).since(before)
        outs = await asyncio.gather(*calls)
        if prof:
            self.profiles["relay"] = await prof.stop()
        relayed = sum(o["hop_to_streamer"] + o["hop_to_player"] for o in outs)
        window = {
            "relayed": relayed,
            "per_s": relayed / opts.relay_seconds,
            "server_cpu_per_100k": cpu["server_cpu_s"] / relayed * 1e5 if relayed else None,
            "pairs": sum(o["pairs"] for o in outs),
            "lost": sum(o["lost"] for o in outs),
            "rtt": [x for o in outs for x in o["rtt"]],
            "rtt_w": [float(o["rtt_weight"]) for o in outs for _ in o["rtt"]],
            "cpu": cpu,
            "busy_before": busy_before,
        }
        self.windows.append(window)
        return window

    async def finish_load(self) -> None:
        """Fold the relay windows into one figure set, read the client counters, stop the server."""
        opts, ws = self.opts, self.windows
        if ws:
            relayed = sum(w["relayed"] for w in ws)
            secs = opts.relay_seconds * len(ws)
            cpu = {k: sum(w["cpu"][k] for w in ws) for k in ("wall_s", "server_cpu_s", "gen_cpu_s")}
            for k in (
                "server_cores",
                "gen_cores",
                "machine_busy",
                "softirq_cores",
                "steal_cores",
                "other_cores",
                "cpu0_busy",
            ):
                cpu[k] = statistics.fmean(w["cpu"][k] for w in ws)
            each = (w["cpu"]["gen_cores_each"] for w in ws)
            cpu["gen_cores_each"] = [statistics.fmean(c) for c in zip(*each, strict=False)]
            rtt = [x for w in ws for x in w["rtt"]]
            weights = [x for w in ws for x in w["rtt_w"]]
            self.result["relay"] = {
                "seconds": secs,
                "windows": len(ws),
                "k": opts.k,
                "pairs": min(w["pairs"] for w in ws),
                "relayed": relayed,
                "per_s": relayed / secs,
                "lost": sum(w["lost"] for w in ws),
                "rtt_p50_ms": _ms(percentile(rtt, 0.5, weights)),
                "rtt_p99_ms": _ms(percentile(rtt, 0.99, weights)),
                "server_cpu_per_100k": cpu["server_cpu_s"] / relayed * 1e5 if relayed else None,
                "gen_cpu_per_100k": cpu["gen_cpu_s"] / relayed * 1e5 if relayed else None,
                "cpu": cpu,
                "saturated": saturation(cpu, opts.pin and NCPU > 1),
                "per_window": [{k: w[k] for k in ("per_s", "server_cpu_per_100k", "busy_before")} for w in ws],
            }
        stats = await asyncio.gather(*(g.call(30, "stats") for g in self.gens))
        self.result["client_errors"] = sum(s["errors"] for s in stats)
        self.result["closed_by_server"] = sum(s["closed_by_server"] for s in stats)
        if self.server is not None:
            await self.server.stop()
        if self.profiles:
            self.result["profile"] = self.profiles

    async def idle(self) -> None:
        """RSS of a fresh server with 0 and then each `--idle` count of idle player sockets."""
        opts, gens = self.opts, self.gens
        if not opts.idle:
            return
        server, stree = await self._start_server("idle")
        await asyncio.sleep(opts.settle)
        rss = {0: stree.rss()}
        idle_failed, opened = 0, 0
        for level in opts.idle:
            per_gen = _split(level - opened, len(gens))
            outs = await asyncio.gather(*(
                g.call(opts.timeout * 10, "idle", port=server.ports["player"], count=n,
                       concurrency=max(1, opts.connect_concurrency // len(gens)))
                for g, n in zip(gens, per_gen, strict=False)
            ))  # fmt: skip
            idle_failed += sum(o["failed"] for o in outs)
            opened = level
            await asyncio.sleep(opts.settle)
            rss[level] = stree.rss()
        top = opts.idle[-1]
        self.result["idle"] = {
            "rss_bytes": {str(k): v for k, v in rss.items()},
            "failed": idle_failed,
            "kb_per_idle": (rss[top] - rss[0]) / 1024 / top,
            "kb_per_idle_marginal": (
                (rss[top] - rss[opts.idle[0]]) / 1024 / (top - opts.idle[0]) if len(opts.idle) > 1 else None
            ),
        }
        await asyncio.gather(*(g.call(30, "close_idle") for g in gens))
        await server.stop()

    async def close(self) -> None:
        await asyncio.gather(*(g.stop() for g in self.gens), return_exceptions=True)
        for server in self.servers:
            await server.stop()


async def bench_round(r: int, opts: argparse.Namespace, logdir: str) -> dict[str, dict[str, Any]]:
    """One round: every kind loads and handshakes, then they take turns in relay windows
    (A B B A ..., so slow drift in a shared box hits both alike and each window has a
    neighbour of the other kind to compare with), then each measures idle RSS."""
    order = opts.servers if r % 2 == 0 else opts.servers[::-1]
    benches = {k: KindBench(k, opts, logdir) for k in order}
    try:
        for k in order:
            print(f"[bench] round {r + 1}/{opts.repeat}: {k} handshakes …", file=sys.stderr, flush=True)
            await benches[k].load()
        for w in range(opts.windows):
            for k in order if w % 2 == 0 else order[::-1]:
                print(f"[bench] round {r + 1}/{opts.repeat}: {k} relay window {w + 1}/{opts.windows} …",
                      file=sys.stderr, flush=True)  # fmt: skip
                await benches[k].relay_window()
        for k in order:
            await benches[k].finish_load()
        for k in order:
            print(f"[bench] round {r + 1}/{opts.repeat}: {k} idle connections …", file=sys.stderr, flush=True)
            await benches[k].idle()
    finally:
        for b in benches.values():
            await b.close()
    return {k: benches[k].result for k in opts.servers}


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000.0


# ----------------------------------------------------------------------------- report
def ratios(res: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """pixelfleet against the bare relay. The relay ratios are the median over relay windows
    of each pixelfleet window against its neighbouring bare window (paired in time, so a
    box whose speed drifts between runs still compares like with like)."""
    pf, bare = res.get("pixelfleet"), res.get("bare")
    out: dict[str, Any] = {}
    pairs: dict[str, list[float]] = {"per_s": [], "server_cpu_per_100k": []}
    for a_run, b_run in zip((runs or {}).get("pixelfleet", []), (runs or {}).get("bare", []), strict=False):
        a_windows = _get(a_run, "relay", "per_window") or []
        b_windows = _get(b_run, "relay", "per_window") or []
        for wa, wb in zip(a_windows, b_windows, strict=False):
            for key, vals in pairs.items():
                if wa.get(key) and wb.get(key):
                    vals.append(wa[key] / wb[key])

    def get(r: dict[str, Any] | None, *path: str) -> float | None:
        for key in path:
            if r is None:
                return None
            r = r.get(key)
        return r  # type: ignore[return-value]

    a, b = get(pf, "relay", "per_s"), get(bare, "relay", "per_s")
    out["relay_ratio_of_medians"] = a / b if a and b else None
    a, b = get(pf, "relay", "server_cpu_per_100k"), get(bare, "relay", "server_cpu_per_100k")
    out["cpu_ratio_of_medians"] = a / b if a and b else None
    out["relay_ratio_windows"] = pairs["per_s"]
    out["cpu_ratio_windows"] = pairs["server_cpu_per_100k"]
    out["relay_ratio"] = statistics.median(pairs["per_s"]) if pairs["per_s"] else out["relay_ratio_of_medians"]
    out["cpu_ratio"] = (statistics.median(pairs["server_cpu_per_100k"]) if pairs["server_cpu_per_100k"]
                        else out["cpu_ratio_of_medians"])  # fmt: skip
    out["handshake_p99_ms"] = get(pf, "handshake", "p99_ms")
    out["kb_per_idle"] = get(pf, "idle", "kb_per_idle")
    checks = {}
    for key, (_, op, target) in TARGETS.items():
        v = out[key]
        checks[key] = None if v is None else {">=": v >= target, "<=": v <= target, "<": v < target}[op]
    out["met"] = checks
    return out


def _f(v: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def render(report: dict[str, Any]) -> str:
    res: dict[str, dict[str, Any]] = report["servers"]
    kinds = [k for k in SERVERS if k in res]
    cfg, m = report["config"], report["machine"]
    title = (
        f"Signalling benchmark: S={cfg['streamers']} P={cfg['players']} inflight={cfg['inflight']} "
        f"relay={cfg['windows']}x{cfg['relay_seconds']:g}s K={cfg['k']} generators={cfg['generators']} "
        f"client={cfg['client']}{' pinned' if cfg.get('pin') else ''}"
    )
    if cfg.get("repeat", 1) > 1:
        title += f" — median of {cfg['repeat']} rounds"
    machine = (
        f"machine: {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, "
        f"aiohttp {m.get('aiohttp')}, uvloop {m.get('uvloop')}"
    )
    lines = [title, machine, ""]
    rows: list[tuple[str, ...]] = [("", *kinds)]

    def row(label: str, *path: str, fmt: str = "{:,.0f}") -> None:
        vals = []
        for k in kinds:
            r: Any = res[k]
            for key in path:
                r = r.get(key) if isinstance(r, dict) else None
            vals.append(_f(r, fmt))
        rows.append((label, *vals))

    rows.append(
        (
            "handshakes ok / failed",
            *(f"{_get(res[k], 'handshake', 'ok')} / {_get(res[k], 'handshake', 'failed')}" for k in kinds),
        )
    )
    row("handshakes/s", "handshake", "per_s")
    for q in ("p50", "p95", "p99"):
        row(f"handshake latency {q} (ms)", "handshake", f"{q}_ms", fmt="{:.2f}")
    row("join latency p99 (ms, connect→done)", "handshake", "join_p99_ms", fmt="{:.2f}")
    row("handshake: server cores", "handshake", "cpu", "server_cores", fmt="{:.2f}")
    row("handshake: generator cores", "handshake", "cpu", "gen_cores", fmt="{:.2f}")
    row("relayed msgs/s", "relay", "per_s")
    row("relay round trip p50 (ms)", "relay", "rtt_p50_ms", fmt="{:.2f}")
    row("relay round trip p99 (ms)", "relay", "rtt_p99_ms", fmt="{:.2f}")
    row("relay lost messages", "relay", "lost")
    row("server CPU s / 100k relayed", "relay", "server_cpu_per_100k", fmt="{:.2f}")
    row("generator CPU s / 100k relayed", "relay", "gen_cpu_per_100k", fmt="{:.2f}")
    row("relay: server cores", "relay", "cpu", "server_cores", fmt="{:.2f}")
    row("relay: generator cores", "relay", "cpu", "gen_cores", fmt="{:.2f}")
    row("relay: machine busy", "relay", "cpu", "machine_busy", fmt="{:.0%}")
    if cfg.get("pin"):
        row("relay: CPU 0 (server's) busy", "relay", "cpu", "cpu0_busy", fmt="{:.0%}")
    row("relay: kernel softirq cores", "relay", "cpu", "softirq_cores", fmt="{:.2f}")
    row("relay: other processes' cores", "relay", "cpu", "other_cores", fmt="{:.2f}")
    row("relay: hypervisor steal (cores)", "relay", "cpu", "steal_cores", fmt="{:.2f}")
    for level in ["0", *map(str, cfg["idle"])]:
        rows.append(
            (f"server RSS, {level} idle conns (MB)", *(_mb(_get(res[k], "idle", "rss_bytes", level)) for k in kinds))
        )
    row("RSS per idle conn (KB, 0→max)", "idle", "kb_per_idle", fmt="{:.1f}")
    row("RSS per idle conn (KB, marginal)", "idle", "kb_per_idle_marginal", fmt="{:.1f}")
    row("idle connects failed", "idle", "failed")
    rows.append(
        (
            "client errors / closed by server",
            *(f"{res[k].get('client_errors', '—')} / {res[k].get('closed_by_server', '—')}" for k in kinds),
        )
    )
    if cfg.get("repeat", 1) > 1:
        for label in SPREAD:
            spreads = [_get(res[k], "spread", label) for k in kinds]
            rows.append((f"  min–max {label}", *("—" if v is None else _range(v) for v in spreads)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=False))]))
    lines.append("")
    for k in kinds:
        for phase in ("handshake", "relay"):
            if phase in res[k]:
                lines.append(f"{k} {phase}: saturated = {res[k][phase]['saturated']}")
    rat = report.get("ratios") or {}
    if rat:
        lines.append("")
        lines.append("targets:")
        for key, (label, op, target) in TARGETS.items():
            v, met = rat.get(key), rat.get("met", {}).get(key)
            verdict = "n/a" if met is None else ("MET" if met else "MISSED")
            lines.append(f"  {label:52s} {_f(v, '{:.3g}'):>8s}  target {op} {target:g}  {verdict}")
        for key in ("relay_ratio_windows", "cpu_ratio_windows"):
            if len(rat.get(key) or []) > 1:
                lines.append(f"  {key.replace('_', ' ')}: " + ", ".join(f"{x:.2f}" for x in rat[key]))
    for k in kinds:
        for phase, prof in (res[k].get("profile") or {}).items():
            lines.append("")
            lines.append(f"{k} {phase} hot spots (py-spy, {prof['samples']} samples, {prof['file']}):")
            lines.append(f"  {'self %':>7s}  function")
            for name, pct in prof["self_pct"][:12]:
                lines.append(f"  {pct:7.1f}  {name}")
            lines.append(f"  {'incl %':>7s}  function")
            for name, pct in prof["inclusive_pct"][:15]:
                lines.append(f"  {pct:7.1f}  {name}")
    return "\n".join(lines)


def _range(v: list[float]) -> str:
    fmt = "{:,.0f}" if max(v) >= 100 else "{:.2f}"
    return f"{fmt.format(v[0])}–{fmt.format(v[1])}"


def _get(r: Any, *path: str) -> Any:
    for key in path:
        r = r.get(key) if isinstance(r, dict) else None
    return r


def _mb(v: Any) -> str:
    return "—" if v is None else f"{v / 2**20:.1f}"


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench_signaling", description=__doc__.splitlines()[0])
    ap.add_argument("--streamers", type=int, default=50, help="S streamers (default 50)")
    ap.add_argument(
        "--players", type=int, default=500, help="P players, spread round-robin over streamers (default 500)"
    )
    ap.add_argument(
        "--inflight", type=int, default=50, help="handshakes in flight, all generators together (default 50)"
    )
    ap.add_argument("--relay-seconds", type=float, default=10.0, help="length of one relay window (default 10)")
    ap.add_argument(
        "--windows", type=int, default=3, help="relay windows per server per round, servers taking turns (default 3)"
    )
    ap.add_argument(
        "--relay-warmup", type=float, default=0.5, help="relay runs this long before counting (default 0.5)"
    )
    ap.add_argument("-k", "--k", type=int, default=1, help="relay messages in flight per pair (default 1)")
    ap.add_argument("--idle", default="2000,5000", help="idle connection counts to read RSS at, ascending ('' = skip)")
    ap.add_argument("--generators", type=int, default=2, help="generator processes (default 2)")
    ap.add_argument(
        "--client", choices=("raw", "aiohttp"), default="raw", help="generator WebSocket client (default raw)"
    )
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help="which servers, comma separated (default pixelfleet,bare)"
    )
    ap.add_argument(
        "--server-arg", action="append", help="extra pixelfleet argument (repeatable; replaces the built-in limits)"
    )
    ap.add_argument(
        "--pixelfleet-cmd", help="pixelfleet command template with {host} {player_port} {streamer_port} {sfu_port}"
    )
    ap.add_argument("--bare-cmd", help="bare relay command template with {host} {player_port} {streamer_port}")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument(
        "--connect-concurrency", type=int, default=100, help="idle connects in flight, all generators (default 100)"
    )
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before reading RSS (default 1)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-connection and per-handshake timeout (default 30)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each: every server, every phase); report medians")
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the server to CPU 0 and the generators to the other CPUs (default on)",
    )
    ap.add_argument(
        "--profile", metavar="DIR", help="record each server with py-spy per phase into DIR and list hot spots"
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="nice value for the server and generators; negative (root) shields them from other load",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each measured phase, wait up to this long for the box to be idle (default 10)",
    )
    ap.add_argument("--json", help="also write the full report to this file")
    opts = ap.parse_args(argv)
    opts.idle = sorted({int(x) for x in opts.idle.split(",") if x.strip()})
    opts.servers = [s.strip() for s in opts.servers.split(",") if s.strip()]
    bad = [s for s in opts.servers if s not in SERVERS]
    if bad:
        ap.error(f"unknown server(s) {bad}; choose from {SERVERS}")
    if opts.streamers < 1 or opts.players < 1 or opts.generators < 1:
        ap.error("--streamers, --players and --generators must be >= 1")
    return opts


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    logdir = tempfile.mkdtemp(prefix="bench-signaling-")
    report: dict[str, Any] = {
        "config": {
            k: getattr(opts, k)
            for k in (
                "streamers",
                "players",
                "inflight",
                "relay_seconds",
                "windows",
                "k",
                "idle",
                "generators",
                "client",
                "servers",
                "repeat",
                "pin",
                "nice",
            )
        },
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "logdir": logdir,
        "servers": {},
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in opts.servers}
    for r in range(opts.repeat):  # alternate the order so drift in the box hits both alike
        for kind, result in (await bench_round(r, opts, logdir)).items():
            runs[kind].append(result)
    report["servers"] = {k: summarize(v) for k, v in runs.items()}
    if opts.repeat > 1:
        report["runs"] = runs
    report["ratios"] = ratios(report["servers"], runs)
    return report


SPREAD = {
    "relay msgs/s": ("relay", "per_s"),
    "server CPU s / 100k": ("relay", "server_cpu_per_100k"),
    "handshake p99 (ms)": ("handshake", "p99_ms"),
    "RSS per idle conn (KB)": ("idle", "kb_per_idle"),
}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run as is; several: the median of every figure, plus min and max of the key ones.

    Text (such as the saturation verdict) comes from the run with the median relay rate."""
    if len(runs) == 1:
        return runs[0]
    by_rate = sorted(runs, key=lambda r: _get(r, "relay", "per_s") or 0.0)
    out: dict[str, Any] = _median_tree(runs, by_rate[len(by_rate) // 2])
    out["spread"] = {}
    for label, path in SPREAD.items():
        vals = [v for v in (_get(r, *path) for r in runs) if v is not None]
        out["spread"][label] = [min(vals), max(vals)] if vals else None
    out["n_runs"] = len(runs)
    return out


def _median_tree(items: list[Any], pick: Any) -> Any:
    if isinstance(pick, dict):
        return {k: _median_tree([i.get(k) if isinstance(i, dict) else None for i in items], v) for k, v in pick.items()}
    if items and all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return statistics.median_low(items)
    if items and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        return statistics.median(items)
    return pick


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    with contextlib.suppress(ValueError, OSError):  # children inherit it: 5,000 idle sockets need the room
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = asyncio.run(run(opts))
    print(render(report))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
