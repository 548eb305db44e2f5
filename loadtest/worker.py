"""One load-generator process: runs its share of a scenario's sessions and streams
what happens as JSON lines on stdout (``progress`` twice a second, one ``result`` per
finished session, ``end`` last).

It watches itself: the CPU it uses (a fraction of one core) and how late its event loop
wakes up. Near a whole core, or with the loop late, the numbers measure the tester,
not the server, and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from typing import Any

import aiohttp
import msgspec
import orjson
import psutil

from loadtest import sessions_platform as plat
from loadtest import sessions_signaling as sig
from loadtest.children import die_with_parent
from loadtest.scenario import Plan, Scenario, plans, share
from loadtest.session_result import Result
from loadtest.synthetic_player import SyntheticPlayer  # noqa: F401 - imported now, not during a measured session
from matchmaker.client import MatchmakerApi
from streamer.synthetic import SyntheticStreamer  # noqa: F401 - likewise (aiortc, av)

TICK_S = 0.5


_OUT: Any = None  # the real stdout; fd 1 itself goes to stderr, so no library log can mix in


def emit(obj: dict[str, Any]) -> None:
    _OUT.write(orjson.dumps(obj) + b"\n")
    _OUT.flush()


class Worker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.s = msgspec.convert(cfg["scenario"], Scenario)
        self.cfg = cfg
        self.mine = share(plans(self.s), cfg["worker"], cfg["workers"])
        self.start_at: float = cfg["start_at"]
        per_worker = max(1, self.s.limits.max_concurrent // cfg["workers"])
        self.slots = asyncio.Semaphore(per_worker)
        self.started = self.done = self.ok = self.failed = self.open = 0
        self.proc = psutil.Process()

    async def session(self, http: aiohttp.ClientSession, api: MatchmakerApi | None, plan: Plan) -> Result:
        s, t = self.s, self.cfg["target"]
        timeout = s.limits.step_timeout_s
        if t["kind"] == "signaling":
            target = sig.SignalingTarget(t["player_url"], t["streamer_url"], self.cfg["run_id"])
            if plan.kind == "webrtc":
                return await sig.run_webrtc(target, plan, s.webrtc.input_probes, s.webrtc.timeout_s)
            if plan.kind == "abuse":
                return await sig.run_abuse(http, target.player_url, plan, timeout)
            return await sig.run_protocol(http, target, plan, s.session.ice_candidates, timeout)
        assert api is not None
        ptarget = plat.PlatformTarget(t["matchmaker_url"], s.app, self.cfg["run_id"], s.limits.queue_timeout_s)
        if plan.kind == "webrtc":
            return await plat.run_webrtc(api, ptarget, plan, s.webrtc.input_probes, s.webrtc.timeout_s)
        if plan.kind == "abuse":
            return await plat.run_abuse(http, api, ptarget, plan, timeout)
        return await plat.run_protocol(http, api, ptarget, plan, timeout)

    async def one(self, http: aiohttp.ClientSession, api: MatchmakerApi | None, plan: Plan) -> None:
        if self.slots.locked():  # the concurrency bound: refuse, never queue behind it
            r = Result(k=plan.k, kind=plan.kind, t0=time.time(), end=time.time(), abuse=plan.abuse)
            self.finish(r.fail("tester_max_concurrent"))
            return
        async with self.slots:
            self.open += 1
            try:
                r = await self.session(http, api, plan)
            except asyncio.CancelledError:
                r = Result(k=plan.k, kind=plan.kind, t0=time.time(), end=time.time(), abuse=plan.abuse)
                self.finish(r.fail("cancelled_at_drain"))
                raise
            finally:
                self.open -= 1
        self.finish(r)

    def finish(self, r: Result) -> None:
        self.done += 1
        self.ok += r.ok
        self.failed += not r.ok
        emit({"type": "result", **r.to_json()})

    async def ticker(self) -> None:
        cpu0, wall0 = sum(self.proc.cpu_times()[:2]), time.monotonic()
        while True:
            due = time.monotonic() + TICK_S
            await asyncio.sleep(TICK_S)
            lag = max(0.0, time.monotonic() - due)
            cpu1, wall1 = sum(self.proc.cpu_times()[:2]), time.monotonic()
            emit({
                "type": "progress", "worker": self.cfg["worker"], "t": time.time(), "started": self.started,
                "done": self.done, "ok": self.ok, "failed": self.failed, "open": self.open,
                "cpu": (cpu1 - cpu0) / max(1e-6, wall1 - wall0), "lag_ms": lag * 1000,
                "rss": self.proc.memory_info().rss,
            })  # fmt: skip
            cpu0, wall0 = cpu1, wall1

    async def run(self) -> None:
        ticker = asyncio.get_running_loop().create_task(self.ticker())
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=conn) as http:
            api = None
            if self.cfg["target"]["kind"] == "platform":
                api = MatchmakerApi(
                    self.cfg["target"]["matchmaker_url"], http=http, timeout_s=self.s.limits.step_timeout_s
                )
            tasks: set[asyncio.Task[None]] = set()
            for plan in self.mine:
                delay = self.start_at + plan.at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.started += 1
                task = asyncio.get_running_loop().create_task(self.one(http, api, plan))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            longest = max((p.length_s for p in self.mine), default=0.0)
            if self.cfg["target"]["kind"] == "platform":
                longest += self.s.limits.queue_timeout_s
            if tasks:
                _, late = await asyncio.wait(
                    tasks, timeout=longest + self.s.limits.drain_s + 2 * self.s.limits.step_timeout_s
                )
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        emit({"type": "end", "worker": self.cfg["worker"], "sessions": len(self.mine)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="JSON: scenario, worker, workers, start_at, target, run_id")
    args = p.parse_args(argv)
    die_with_parent()
    global _OUT  # noqa: PLW0603 - set once, before anything runs
    _OUT = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    import uvloop

    uvloop.run(Worker(orjson.loads(args.config)).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
