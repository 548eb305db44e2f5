"""What one delta heartbeat costs Redis, script by script.

A fleet's heartbeats are most of its Redis time between allocations: a fleet of 96
hosts x 500 slots at a 2 s period sends 48 a second, each ``heartbeat_host`` on the
host's record and ``heartbeat_slots`` on each tenant's copy. This registers ``--hosts``
hosts of ``--slots`` slots (``--gpus`` GPUs each) in one tenant on a redis-server it
starts, sends each a full heartbeat, then times ``--beats`` delta heartbeats through
``RedisStore.heartbeat``: with no reports at all, and with one or two GPU load reports
(as ``--load-churn`` makes a fleet's GPUs move). Redis's own time per command comes from
SLOWLOG at threshold 0 (wall time inside Redis; every script is ``EVALSHA``, told apart by
its sha). It also times, in one Lua loop inside Redis, what reading a registered host's
tenant copy costs: the ``HGET`` alone, ``copy_flags`` (what allocation and
``heartbeat_slots`` do) and a whole ``cjson.decode``. Run it on a quiet box; to compare two
versions of the code, run this module from each (``PYTHONPATH=<export> python -m
loadtest.bench_heartbeat_scripts``).

    python -m loadtest.bench_heartbeat_scripts --beats 800 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import redis

from loadtest.bench_matchmaker_procs import RedisServer
from matchmaker.models import GpuReport, Heartbeat, HostRegistration, SlotReport, SlotSpec, SlotState
from matchmaker.redis_keys import TenantKeys
from matchmaker.redis_scripts import load_source
from matchmaker.store_redis import RedisStore

_SCRIPTS = ("heartbeat_host", "heartbeat_slots")
TTL_S = 10.0
PREFIX = "bhb"
_LOOPS = 2000
_COPY_READS = {  # Lua run on each pass, after ``raw`` is read
    "hget": "n = n + #raw",
    "copy_flags": "n = n + copy_flags(raw).i",
    "decode": "n = n + cjson.decode(raw).i",
}


def _registration(host: str, slots: int, gpus: int) -> HostRegistration:
    per_gpu = max(1, -(-slots // gpus))
    specs = [
        SlotSpec(index=i, tenant="bench", app=f"app-{i // per_gpu}", streamer_id=f"{host}-{i}", gpu=i // per_gpu)
        for i in range(slots)
    ]
    return HostRegistration(host_id=host, boot_id="b", signaling_url="ws://127.0.0.1:1", gpu_model="A10G", slots=specs)


def _by_command(log: list[dict[str, Any]], names: dict[str, str]) -> dict[str, list[int]]:
    """SLOWLOG entries -> command (scripts by name) -> [calls, microseconds]."""
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for entry in log:
        parts = entry["command"].split(b" ")
        name = parts[0].decode().lower()
        if name == "evalsha" and len(parts) > 1:
            name = names.get(parts[1].decode(), "evalsha:other")
        out[name][0] += 1
        out[name][1] += int(entry["duration"])
    return out


def _copy_reads(admin: redis.Redis, host: str) -> dict[str, float]:
    """Microseconds per read of one host's tenant copy, by way of reading it (see ``_COPY_READS``)."""
    src = load_source("heartbeat_slots")  # prelude and tenant.lua, then the script's body
    helpers = "".join(src.text.splitlines(keepends=True)[: sum(lines for _, lines in src.parts[:-1])])
    key = TenantKeys(PREFIX, "bench").hosts
    out = {}
    for name, body in _COPY_READS.items():
        loop = f"local raw = redis.call('HGET', KEYS[1], ARGV[1])\n  {body}"
        script = f"{helpers}local n = 0\nfor _ = 1, {_LOOPS} do\n  {loop}\nend\nreturn n\n"
        t0 = time.perf_counter()
        admin.eval(script, 1, key, host)
        out[name] = (time.perf_counter() - t0) / _LOOPS * 1e6
    return out


async def _phase(server: RedisServer, store: RedisStore, opts: argparse.Namespace, gpu_reports: bool) -> dict[str, Any]:
    admin = server.client
    hosts = [f"h{h}" for h in range(opts.hosts)]
    seqs = dict.fromkeys(hosts, 0)
    rnd = random.Random(7)
    for host in hosts:
        await store.register_host(_registration(host, opts.slots, opts.gpus), time.time(), heartbeat_ttl_s=TTL_S)
        seqs[host] = 1
        full = Heartbeat(
            boot_id="b",
            seq=1,
            full=True,
            slots=[SlotReport(index=i, state=SlotState.READY) for i in range(opts.slots)],
            gpus=[GpuReport(index=g, nvenc_load=0.1, gpu_load=0.1) for g in range(opts.gpus)],
        )
        await store.heartbeat(host, full, time.time(), heartbeat_ttl_s=TTL_S)
    copy_reads = _copy_reads(admin, hosts[0])
    settings = ("slowlog-max-len", "slowlog-log-slower-than")
    kept = {name: str(admin.config_get(name)[name]) for name in settings}  # someone else's Redis gets them back
    admin.config_set("slowlog-max-len", max(1024, opts.beats * 64))  # every command of every beat
    admin.config_set("slowlog-log-slower-than", 0)
    admin.slowlog_reset()
    t0 = time.perf_counter()
    for n in range(opts.beats):
        host = hosts[n % len(hosts)]
        seqs[host] += 1
        gpus = []
        if gpu_reports:
            moved = rnd.sample(range(opts.gpus), min(opts.gpus, 1 if rnd.random() < 0.5 else 2))
            gpus = [GpuReport(index=g, nvenc_load=rnd.random(), gpu_load=rnd.random()) for g in moved]
        delta = Heartbeat(boot_id="b", seq=seqs[host], full=False, slots=[], gpus=gpus)
        await store.heartbeat(host, delta, time.time(), heartbeat_ttl_s=TTL_S)
    elapsed = time.perf_counter() - t0
    names = {hashlib.sha1(load_source(n).text.encode()).hexdigest(): n for n in _SCRIPTS}  # noqa: S324 - Redis's script id
    stats = _by_command(admin.slowlog_get(opts.beats * 64), names)
    for name, value in kept.items():
        admin.config_set(name, value)
    server.clear(PREFIX)
    per_beat = {k: us / opts.beats for k, (_, us) in stats.items()}
    return {
        "gpu_reports": gpu_reports,
        "beats": opts.beats,
        "client_us_per_beat": elapsed / opts.beats * 1e6,
        "redis_us_per_beat": sum(per_beat.values()),
        "us_per_call": {k: us / calls for k, (calls, us) in stats.items()},
        "us_per_beat": per_beat,
        "copy_read_us": copy_reads,
    }


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-hb-") as folder:
        server = RedisServer(opts.redis_url, folder)
        store = RedisStore.from_url(server.start(), prefix=PREFIX)
        try:
            phases = [await _phase(server, store, opts, gpu) for gpu in (False, True)]
        finally:
            await store.aclose()
            server.stop()
    return {"redis": server.version, "options": vars(opts), "phases": phases}


def render(report: dict[str, Any]) -> str:
    o = report["options"]
    lines = [f"delta heartbeats, {o['hosts']} hosts x {o['slots']} slots ({o['gpus']} GPUs), Redis {report['redis']}"]
    for p in report["phases"]:
        what = "one or two GPU load reports" if p["gpu_reports"] else "no reports"
        lines.append(
            f"  {what}: Redis {p['redis_us_per_beat']:.0f} us per beat, "
            f"client round trips {p['client_us_per_beat']:.0f} us per beat"
        )
        reads = ", ".join(f"{k} {v:.1f}" for k, v in p["copy_read_us"].items())
        lines.append(f"    a host copy read (us): {reads}")
        for name in (*_SCRIPTS, "zadd"):
            if name in p["us_per_call"]:
                lines.append(
                    f"    {name:16} {p['us_per_call'][name]:7.1f} us per call, {p['us_per_beat'][name]:7.1f} per beat"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.bench_heartbeat_scripts", description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--slots", type=int, default=500, help="slots per host (default 500, a fleet host's)")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs per host (default 8)")
    ap.add_argument("--beats", type=int, default=800, help="delta heartbeats per phase")
    ap.add_argument("--redis-url", help="use this Redis (default: start redis-server on a Unix socket)")
    ap.add_argument("--json", help="also write the report here")
    opts = ap.parse_args(argv)
    if min(opts.hosts, opts.slots, opts.gpus, opts.beats) < 1:
        ap.error("--hosts, --slots, --gpus and --beats: 1 or more")
    report = asyncio.run(run(opts))
    print(render(report))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
