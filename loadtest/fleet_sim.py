"""A simulated GPU fleet for the matchmaker benchmark (one child process of several).

Each simulated host does over HTTP what ``gpu_agent`` does: registers (``POST
/api/v1/hosts``, the agent token), then heartbeats on the agent's schedule
(``gpu_agent.reporting.Reporter``: a beat, then wait up to the period or until a slot
changes, 20 ms to let simultaneous changes land in one beat; after a failure, back off
0.25 s doubling up to 10 s; a 404 re-registers). A beat carries every slot's report
(state, ``reset_for``) and, where the matchmaker's ``Heartbeat`` has ``gpus``, each
GPU's whole-percent loads once (slots registered with their ``gpu``), else each slot
carries its GPU's loads: the body the agent sends. When the
matchmaker's ``Heartbeat`` has ``seq``/``full`` (delta heartbeats), ``delta`` mode sends
a full beat first, after a failure, when the reply asks for a snapshot and every
``full_every`` beats, and otherwise only the slots whose state, ``reset_for`` or
whole-percent load changed (and the GPUs whose loads changed) since the last
acknowledged beat.

A reset in a heartbeat reply is played as the agent's slot does it: the slot reports
``resetting`` at once (a beat is due), then after ``reset_s`` ``ready`` with
``reset_for`` set to the ended session (another beat). GPU loads move as a random walk:
each period a GPU's load changes by a few percent with probability ``load_churn``.

``queue`` players (in one process) ask for slots of an app with fewer slots than
players, so a queue forms: a 202 is followed by status polls until the ticket is
served; each session is then reported connected, lasts an exponential time and is
reported disconnected (the signalling side's events), and the player asks again.

The orchestrator drives it over stdin/stdout (``loadtest.children.JsonLineChild``):
``prepare`` (register every host and deliver its first beat), ``start`` (beat),
``stats`` (counters since the previous ``stats``), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import sys
import time
import uuid
from typing import Any

import msgspec
import orjson

from loadtest.children import die_with_parent
from matchmaker.client import ApiError, MatchmakerApi, Unreachable
from matchmaker.models import (
    Assigned,
    GpuReport,
    Heartbeat,
    HeartbeatReply,
    HostRegistration,
    SlotReport,
    SlotSpec,
    SlotState,
    Waiting,
)

now = time.monotonic
DELTA_PROTOCOL = "seq" in Heartbeat.__struct_fields__  # the matchmaker speaks delta heartbeats
GPU_PROTOCOL = "gpus" in Heartbeat.__struct_fields__  # ... and per-GPU loads
HOLDS_PROTOCOL = "credentials_expire_at" in Heartbeat.__struct_fields__  # ... and says what it holds
Views = list[tuple[int, tuple[Any, ...]]]


def heartbeat_mode(requested: str) -> str:
    """``delta`` only where the protocol has it; ``auto`` picks it when it does."""
    if requested == "auto":
        return "delta" if DELTA_PROTOCOL else "full"
    if requested == "delta" and not DELTA_PROTOCOL:
        raise ValueError("--heartbeats delta: this matchmaker's Heartbeat has no seq/full fields yet")
    return requested


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.beats_ok = self.beats_failed = self.full_beats = self.delta_beats = 0
        self.slot_reports = self.registrations = self.resets = self.snapshots_asked = 0
        self.gpu_reports = 0
        self.body_bytes = self.body_samples = 0
        self.beat_ms: list[float] = []
        self.queue_asked = self.queue_waited = self.queue_served = self.queue_refused = 0
        self.queue_polls = self.queue_sessions_ended = 0
        self.queue_wait_ms: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def take(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items()}
        self.reset()
        return out


class SimHost:
    """One agent: its slots as the agent sees them, and its reporter loop."""

    def __init__(self, spec: list[Any], cfg: dict[str, Any], api: MatchmakerApi, stats: Counters) -> None:
        self.host_id, self.app, n = spec[0], spec[1], int(spec[2])
        self.cfg, self.api, self.stats = cfg, api, stats
        self.rnd = random.Random(f"{cfg['seed']}-{self.host_id}")
        self.boot_id = uuid.uuid4().hex
        self.n = n
        gpus = max(1, min(int(cfg["gpus_per_host"]), n))
        self.gpu_of = [i * gpus // n for i in range(n)]
        self.gpu_pct = [self.rnd.randint(20, 80) for _ in range(gpus)]
        self.enc_pct = [self.rnd.randint(10, 60) for _ in range(gpus)]
        self.state = [SlotState.READY] * n
        self.reset_for: list[str | None] = [None] * n
        self.pending: dict[int, str] = {}  # slot -> the session it is being reset after
        self.mode = cfg["mode"]
        self.acked: list[tuple[Any, ...] | None] = [None] * n
        # Per-GPU loads (as gpu_agent reports them): slots carry only state and reset_for.
        self.per_gpu = bool(cfg.get("gpu_reports", GPU_PROTOCOL))
        self.acked_gpu: list[tuple[Any, ...] | None] = [None] * gpus
        self.held_until = 0.0  # earliest exp of the streamer credentials held (0: none)
        self.need_full = True
        self.since_full = 0
        self.seq = 0
        self.registered = False
        self.failures = 0
        self.poked = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # --- the agent's side of the protocol ---------------------------------------------------

    def registration(self) -> HostRegistration:
        return HostRegistration(
            host_id=self.host_id,
            boot_id=self.boot_id,
            region="eu",
            gpu_model="L4",
            signaling_url="ws://127.0.0.1:1",
            slots=[
                SlotSpec(
                    index=i,
                    tenant=self.cfg["tenant"],
                    app=self.app,
                    streamer_id=f"{self.host_id}-{i}",
                    gpu_share=1.0 / (self.n / len(self.gpu_pct)),
                    **({"gpu": self.gpu_of[i]} if self.per_gpu else {}),
                )
                for i in range(self.n)
            ],
        )

    def _view(self, i: int) -> tuple[Any, ...]:
        if self.per_gpu:
            return (self.state[i], self.reset_for[i], 0, 0)
        g = self.gpu_of[i]
        return (self.state[i], self.reset_for[i], self.gpu_pct[g], self.enc_pct[g])

    def heartbeat(self) -> tuple[Heartbeat, Views, Views]:
        """The next beat, and the slot and GPU views it carries (acknowledged once it is)."""
        self.seq += 1
        full = self.mode == "full" or self.need_full or self.since_full + 1 >= self.cfg["full_every"]
        views = [(i, self._view(i)) for i in range(self.n)]
        gviews = [(g, (self.gpu_pct[g], self.enc_pct[g])) for g in range(len(self.gpu_pct))] if self.per_gpu else []
        if not full:
            views = [(i, v) for i, v in views if v != self.acked[i]]
            gviews = [(g, v) for g, v in gviews if v != self.acked_gpu[g]]
        slots = [
            SlotReport(index=i, state=v[0], reset_for=v[1], gpu_load=v[2] / 100.0, nvenc_load=v[3] / 100.0)
            for i, v in views
        ]
        extra: dict[str, Any] = {"seq": self.seq, "full": full} if DELTA_PROTOCOL else {}
        if HOLDS_PROTOCOL:
            extra["credentials_expire_at"] = self.held_until
        if self.per_gpu:
            extra["gpus"] = [GpuReport(index=g, gpu_load=v[0] / 100.0, nvenc_load=v[1] / 100.0) for g, v in gviews]
        hb = Heartbeat(
            boot_id=self.boot_id,
            slots=slots,
            gpu_load=max(self.gpu_pct) / 100.0,
            nvenc_load=max(self.enc_pct) / 100.0,
            **extra,
        )
        return hb, views, gviews

    def _acknowledged(self, hb: Heartbeat, views: Views, gviews: Views, reply: HeartbeatReply) -> None:
        full = bool(getattr(hb, "full", True))
        if full:
            self.acked = [None] * self.n
            self.acked_gpu = [None] * len(self.acked_gpu)
            self.since_full = 0
            self.need_full = False
            self.stats.full_beats += 1
        else:
            self.since_full += 1
            self.stats.delta_beats += 1
        for i, v in views:
            self.acked[i] = v
        for g, v in gviews:
            self.acked_gpu[g] = v
        if getattr(reply, "snapshot", False) is True:  # UNSET where the matchmaker has no deltas
            self.need_full = True
            self.stats.snapshots_asked += 1
        for r in reply.reset:
            self._reset(r.index, r.session_id)

    def _reset(self, index: int, session_id: str) -> None:
        if not 0 <= index < self.n or session_id in (self.reset_for[index], self.pending.get(index)):
            return
        self.stats.resets += 1
        self.pending[index] = session_id
        self.state[index] = SlotState.RESETTING
        self.poked.set()
        asyncio.get_running_loop().call_later(self.cfg["reset_s"], self._reset_done, index, session_id)

    def _reset_done(self, index: int, session_id: str) -> None:
        if self.pending.get(index) != session_id:
            return
        del self.pending[index]
        self.state[index] = SlotState.READY
        self.reset_for[index] = session_id
        self.poked.set()

    def _move_loads(self) -> None:
        churn = self.cfg["load_churn"]
        for loads in (self.gpu_pct, self.enc_pct):
            for g, pct in enumerate(loads):
                if self.rnd.random() < churn:
                    loads[g] = min(100, max(0, pct + self.rnd.choice((-3, -2, -1, 1, 2, 3))))

    # --- the reporter --------------------------------------------------------------------

    def _take_tokens(self, tokens: object) -> None:
        """As the agent does: the earliest expiry of the streamer credentials it holds."""
        if isinstance(tokens, dict) and tokens:
            self.held_until = min(_exp(t) for t in tokens.values())

    async def register(self) -> None:
        host = await self.api.register_host(self.registration())
        self._take_tokens(getattr(host, "streamer_tokens", None))
        self.registered = True
        self.seq = 0
        self.need_full = True
        self.stats.registrations += 1

    async def beat(self) -> bool:
        try:
            if not self.registered:
                await self.register()
            hb, views, gviews = self.heartbeat()
            if self.stats.beats_ok % 8 == 0:
                self.stats.body_bytes += len(msgspec.json.encode(hb))
                self.stats.body_samples += 1
            t0 = now()
            try:
                reply = await self.api.heartbeat(self.host_id, hb)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
                await self.register()
                hb, views, gviews = self.heartbeat()
                t0 = now()
                reply = await self.api.heartbeat(self.host_id, hb)
        except (ApiError, Unreachable) as exc:
            self.failures += 1
            self.need_full = True
            self.stats.beats_failed += 1
            self.stats.error(f"heartbeat {getattr(exc, 'status', 'unreachable')} {getattr(exc, 'code', '')}".rstrip())
            return False
        self.stats.beat_ms.append(round((now() - t0) * 1e3, 3))
        self.stats.beats_ok += 1
        self.stats.slot_reports += len(hb.slots)
        self.stats.gpu_reports += len(getattr(hb, "gpus", ()))
        self.failures = 0
        self._take_tokens(getattr(reply, "streamer_tokens", None))
        self._acknowledged(hb, views, gviews, reply)
        return True

    async def run(self) -> None:
        period = self.cfg["period"]
        await asyncio.sleep(self.rnd.random() * period)  # agents are not in step
        while True:
            self._move_loads()
            if await self.beat():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await self.poked.wait()
                await asyncio.sleep(0.02)
            else:
                await asyncio.sleep(min(10.0, 0.25 * 2 ** min(self.failures, 10)))
            self.poked.clear()


class QueuePlayers:
    """Players of an app with fewer slots than players: a queue forms and is served."""

    def __init__(self, cfg: dict[str, Any], apis: list[MatchmakerApi], stats: Counters) -> None:
        self.cfg, self.apis, self.stats = cfg, apis, stats
        self.rnd = random.Random(cfg["seed"])

    async def player(self, k: int) -> None:
        q = self.cfg["queue"]
        api = self.apis[k % len(self.apis)]
        while True:
            try:
                await self._one(api, q)
            except (ApiError, Unreachable) as exc:
                self.stats.error(f"queue {getattr(exc, 'status', 'unreachable')}")
                await asyncio.sleep(q["poll_s"])

    async def _one(self, api: MatchmakerApi, q: dict[str, Any]) -> None:
        t0 = now()
        self.stats.queue_asked += 1
        reply = await api.create_session(q["app"], caller_token=self.cfg["caller_token"])
        if isinstance(reply, Waiting):
            self.stats.queue_waited += 1
            ticket: Any = reply
            while isinstance(ticket, Waiting):
                await asyncio.sleep(q["poll_s"])
                self.stats.queue_polls += 1
                ticket = await api.ticket(reply.ticket_id, caller_token=self.cfg["caller_token"])
            if not isinstance(ticket, Assigned):
                self.stats.queue_refused += 1
                return
            self.stats.queue_served += 1
            self.stats.queue_wait_ms.append(round((now() - t0) * 1e3, 1))
            reply = ticket
        await api.session_event(reply.session_id, reply.token, "connected")
        await asyncio.sleep(self.rnd.expovariate(1.0 / q["session_mean_s"]))
        await api.session_event(reply.session_id, reply.token, "disconnected")
        self.stats.queue_sessions_ended += 1
        await asyncio.sleep(0.1)


class Fleet:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stats = Counters()
        self.apis = [
            MatchmakerApi(
                f"http://127.0.0.1:{p}",
                agent_token=cfg["agent_token"],
                caller_token=cfg["caller_token"],
                timeout_s=30,
            )
            for p in cfg["ports"]
        ]
        self.hosts = [SimHost(h, cfg, self.apis[i % len(self.apis)], self.stats) for i, h in enumerate(cfg["hosts"])]
        self.tasks: list[asyncio.Task[None]] = []

    async def prepare(self) -> None:
        """Every host registered and its first (full) beat delivered, a few at a time."""
        sem = asyncio.Semaphore(8)

        async def one(h: SimHost) -> None:
            async with sem:
                if not await h.beat():
                    raise RuntimeError(f"{h.host_id}: first heartbeat failed: {self.stats.errors}")

        await asyncio.gather(*(one(h) for h in self.hosts))

    def start(self) -> None:
        self.tasks += [asyncio.create_task(h.run()) for h in self.hosts]
        q = self.cfg.get("queue")
        if q:
            players = QueuePlayers(self.cfg, self.apis, self.stats)
            self.tasks += [asyncio.create_task(players.player(k)) for k in range(q["players"])]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for api in self.apis:
            await api.aclose()


async def serve(cfg: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    fleet = Fleet(cfg)

    def answer(obj: dict[str, Any]) -> None:
        out.write(orjson.dumps(obj) + b"\n")
        out.flush()

    try:
        while line := await reader.readline():
            cmd = orjson.loads(line)
            try:
                if cmd["cmd"] == "prepare":
                    await fleet.prepare()
                    answer({"ok": True, **fleet.stats.take()})
                elif cmd["cmd"] == "start":
                    fleet.start()
                    answer({"ok": True})
                elif cmd["cmd"] == "stats":
                    answer({"ok": True, **fleet.stats.take()})
                elif cmd["cmd"] == "quit":
                    answer({"ok": True})
                    break
                else:
                    answer({"ok": False, "error": f"unknown command {cmd['cmd']!r}"})
            except Exception as exc:  # reported to the orchestrator, which fails the phase
                answer({"ok": False, "error": repr(exc)})
    finally:
        await fleet.close()


def _exp(token: str) -> float:
    """A JWT's ``exp``, read, not verified (the agent's credentials.read does the same)."""
    payload = token.split(".")[1]
    return float(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True, help="JSON configuration from the orchestrator")
    args = p.parse_args(argv)
    die_with_parent()
    import uvloop

    uvloop.run(serve(orjson.loads(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
