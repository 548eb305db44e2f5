"""The GPU agent with real child processes (synthetic streamers) against a real
signalling server and a real matchmaker (in-process, over HTTP): slot lifecycle,
crash and restart, reset handshake, drains (admin, SIGTERM, Spot), bad input."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gpu_agent.agent import Agent
from gpu_agent.client import HttpMatchmakerClient
from gpu_agent.config import AgentSettings
from gpu_agent.drain import DrainReason
from gpu_agent.slots import Phase
from matchmaker.config import MatchmakerSettings
from matchmaker.models import Heartbeat, HeartbeatReply, SlotReport
from matchmaker.server import MatchmakerServer
from pixelfleet.net import free_port
from pixelfleet.settings import env_name
from tests.conftest import StartProcess, StartSignaling
from tests.support import waiting
from tests.support.nvml_replay import RecordedSampler

pytestmark = pytest.mark.integration

AGENT = "agent-token-0123456789"
ADMIN = "admin-token-0123456789"
TOKEN_SECRET = "session-secret-" + "y" * 32
DATA = Path(__file__).parents[1] / "data"
WAIT = 60.0  # bounds a broken run; never a performance limit


async def eventually(check: Callable[[], Any], what: str, within_s: float = WAIT) -> Any:
    return await waiting.eventually(check, what, within_s)


class RecordingClient(HttpMatchmakerClient):
    """The real HTTP client, keeping every heartbeat the matchmaker accepted, and each
    slot's report as the agent's full and delta heartbeats told it (``latest``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivered: list[Heartbeat] = []
        self.latest: dict[int, SlotReport] = {}
        self.snapshots_asked = 0

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        reply = await super().heartbeat(host_id, heartbeat)
        self.delivered.append(heartbeat)
        if heartbeat.full:
            self.latest = {}
        self.latest.update((r.index, r) for r in heartbeat.slots)
        self.snapshots_asked += reply.snapshot is True
        return reply

    def saw(self, index: int, state: str, reset_for: str | None = None) -> bool:
        return any(
            r.index == index and r.state == state and (reset_for is None or r.reset_for == reset_for)
            for hb in self.delivered
            for r in hb.slots
        )


@dataclass
class Stack:
    signaling: Any
    http: aiohttp.ClientSession
    mm_port: int
    servers: list[MatchmakerServer] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)

    @property
    def mm_url(self) -> str:
        return f"http://127.0.0.1:{self.mm_port}"

    async def start_matchmaker(self) -> MatchmakerServer:
        settings = MatchmakerSettings(
            port=self.mm_port,
            session_token_secret=TOKEN_SECRET,
            agent_token=AGENT,
            admin_token=ADMIN,
            allow_anonymous=True,
            sweep_interval_s=0.05,
            heartbeat_ttl_s=30.0,
        )
        server = MatchmakerServer(settings)
        await server.start()
        self.servers.append(server)
        return server

    def settings(self, **overrides: Any) -> AgentSettings:
        sig = self.signaling
        return AgentSettings(
            **{
                "host_id": "gpu-1",
                "app": "game",
                "matchmaker_url": self.mm_url,
                "agent_token": AGENT,
                "signaling_url": f"ws://127.0.0.1:{sig.player_port}",
                "streamer_url": f"ws://127.0.0.1:{sig.streamer_port}",
                "signaling_api_url": f"http://127.0.0.1:{sig.player_port}",
                "slots": 2,
                "res_x": 320,
                "res_y": 240,
                "fps": 10,
                "heartbeat_period_s": 0.2,
                "ready_poll_s": 0.1,
                "health_poll_s": 0.2,
                "backoff_initial_s": 0.2,
                "backoff_max_s": 1.0,
                "release_timeout_s": 5.0,
                "stop_timeout_s": 5.0,
                "startup_timeout_s": 45.0,
                "sample_period_s": 0.2,
                "metrics_port": 0,
                "retry_max_s": 0.5,
                "log_level": "warning",
                **overrides,
            }
        )

    async def start_agent(self, **overrides: Any) -> tuple[Agent, RecordingClient]:
        s = self.settings(**overrides)
        client = RecordingClient(s.matchmaker_url, s.agent_token, admin_token=s.admin_token, timeout_s=2.0)
        agent = Agent(s, client, sampler=RecordedSampler(DATA / "nvml_a10g.json"))
        self.agents.append(agent)
        await agent.start()
        return agent, client

    async def call(self, method: str, path: str, body: Any = None, token: str | None = ADMIN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, self.mm_url + "/api/v1" + path, headers=headers, data=None if body is None else orjson.dumps(body)
        ) as r:
            text = await r.read()
            return r.status, (orjson.loads(text) if text else None)

    async def slot_states(self) -> dict[str, str]:
        status, slots = await self.call("GET", "/admin/slots")
        return {s["slot_id"]: s["state"] for s in slots} if status == 200 else {}

    async def states_are(self, **wanted: str) -> bool:
        states = await self.slot_states()
        return all(states.get(f"gpu-1/{k[1:]}") == v for k, v in wanted.items())


@pytest.fixture
async def stack(start_signaling: StartSignaling) -> AsyncIterator[Stack]:
    signaling = await start_signaling()
    http = aiohttp.ClientSession()
    st = Stack(signaling, http, free_port())
    try:
        yield st
    finally:
        for agent in st.agents:
            await agent.stop()
        for server in st.servers:
            await server.stop()
        await http.close()


@contextlib.asynccontextmanager
async def player_on(stack: Stack, streamer_id: str) -> AsyncIterator[None]:
    """A player subscribed to the streamer, as signalling's REST API will show it."""
    async with stack.http.ws_connect(f"ws://127.0.0.1:{stack.signaling.player_port}/") as ws:
        await ws.send_str(orjson.dumps({"type": "subscribe", "streamerId": streamer_id}).decode())

        async def subscribed() -> bool:
            url = f"http://127.0.0.1:{stack.signaling.player_port}/api/streamers/{streamer_id}"
            async with stack.http.get(url) as r:
                return bool((await r.json()).get("subscribers"))

        await eventually(subscribed, "the player subscribed")
        yield


async def busy_slot(stack: Stack) -> int:
    return int(next(s for s, st in (await stack.slot_states()).items() if st == "assigned").rsplit("/", 1)[1])


def pids(agent: Agent) -> list[int]:
    return [s.proc.pid for s in agent.slots if s.proc is not None]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- lifecycle ----------------------------------------------------------------------------


async def test_slots_start_connect_and_register_ready(stack: Stack) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent()
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "both slots READY in the matchmaker")
    assert client.saw(0, "starting") or client.saw(0, "ready")
    # Full heartbeat first, then deltas of what changed, each applied (no snapshot asked).
    await eventually(lambda: len(client.delivered) >= 4, "a few heartbeats")
    first = client.delivered[0]
    assert first.full and len(first.slots) == 2
    assert not all(hb.full for hb in client.delivered) and client.snapshots_asked == 0
    seqs = [hb.seq for hb in client.delivered]
    assert seqs == sorted(set(seqs))
    for slot in agent.slots:
        assert slot.phase is Phase.READY and slot.cold_start_s is not None and slot.cold_start_s > 0
        assert slot.plan.gpu == 0 and slot.plan.streamer_id == f"gpu-1-{slot.plan.index}"
    assert [s.gpu_share for s in agent.registration().slots] == [0.5, 0.5]  # two slots on one GPU
    status, hosts = await stack.call("GET", "/admin/hosts")
    assert hosts[0]["gpu_model"] == "NVIDIA A10G" and hosts[0]["gpu_load"] == pytest.approx(0.58)
    # Both slots are registered on GPU 0 and take its load from the heartbeat's one GPU report.
    assert [s.gpu for s in agent.registration().slots] == [0, 0]
    assert all(hb.slots == [] or all(r.gpu_load == 0 for r in hb.slots) for hb in client.delivered)
    assert [g.index for g in first.gpus] == [0]
    status, slots = await stack.call("GET", "/admin/slots")
    assert status == 200 and [s["gpu_load"] for s in slots] == [pytest.approx(0.58)] * 2
    assert agent.metrics is not None
    base = f"http://127.0.0.1:{agent.metrics.port}"
    async with stack.http.get(base + "/metrics") as r:
        text = await r.text()
    assert r.status == 200
    assert 'pixelfleet_agent_slot_phase{phase="ready",slot="0",streamer_id="gpu-1-0"} 1.0' in text
    assert 'pixelfleet_agent_slot_cold_start_seconds_count{slot="0",streamer_id="gpu-1-0"} 1.0' in text
    assert 'pixelfleet_agent_gpu_encoder_capacity_ratio{codec="h264",gpu="0",name="NVIDIA A10G"} 0.71' in text
    async with stack.http.get(base + "/readyz") as r:  # registered, heartbeats delivered
        assert r.status == 200 and (await r.json())["reasons"] == []
    async with stack.http.get(base + "/healthz") as r:
        health = await r.json()
    assert health["ok"] and health["registered"] and [s["phase"] for s in health["slots"]] == ["ready", "ready"]


async def test_a_killed_slot_is_reported_dead_restarted_and_ready_again(stack: Stack) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent()
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "both slots READY")
    victim = agent.slots.slots[1]
    old_pid = victim.proc.pid if victim.proc else 0
    os.killpg(old_pid, signal.SIGKILL)
    await eventually(lambda: client.saw(1, "dead"), "the crash reported to the matchmaker")
    await eventually(
        lambda: victim.phase is Phase.READY and victim.proc is not None and victim.proc.pid != old_pid,
        "slot 1 restarted",
    )
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "slot 1 READY again in the matchmaker")
    assert victim.restarts == 1 and "exited" in (victim.last_error or "")
    assert agent.slots.slots[0].restarts == 0 and not alive(old_pid)


@pytest.mark.parametrize("how", ["restart", "reset-command"])
async def test_session_end_resets_the_slot_then_ready_with_reset_for(stack: Stack, how: str, tmp_path: Path) -> None:
    await stack.start_matchmaker()
    marker = tmp_path / "reset.log"
    extra: dict[str, Any] = {"slots": 1}
    if how == "reset-command":
        extra["reset_command"] = [
            sys.executable,
            "-c",
            f"import sys; open({str(marker)!r}, 'a').write(' '.join(sys.argv[1:]))",
            "{index}",
            "{session_id}",
        ]
    agent, client = await stack.start_agent(**extra)
    await eventually(lambda: stack.states_are(s0="ready"), "the slot READY")
    status, session = await stack.call("POST", "/sessions", {"app": "game"}, token=None)
    assert status == 201, session
    assert await stack.states_are(s0="assigned")
    first_pid = pids(agent)
    status, _ = await stack.call("DELETE", f"/admin/sessions/{session['session_id']}")
    assert status == 200
    sid = session["session_id"]
    await eventually(lambda: client.saw(0, "ready", reset_for=sid), "ready with reset_for the ended session")
    await eventually(lambda: stack.states_are(s0="ready"), "the slot READY after its reset")
    slot = agent.slots.slots[0]
    assert slot.resets == 1 and slot.reset_for == sid and slot.restarts == 0
    if how == "restart":
        assert pids(agent) != first_pid and client.saw(0, "resetting")
    else:
        assert pids(agent) == first_pid and marker.read_text() == f"0 {sid}"
    status, again = await stack.call("POST", "/sessions", {"app": "game"}, token=None)
    assert status == 201 and again["streamer_id"] == "gpu-1-0"


# --- draining -------------------------------------------------------------------------------


async def test_admin_drain_keeps_sessions_stops_slots_as_they_end_and_undrain_resumes(stack: Stack) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent()
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "both slots READY")
    status, session = await stack.call("POST", "/sessions", {"app": "game"}, token=None)
    assert status == 201
    busy = int(next(s for s, st in (await stack.slot_states()).items() if st == "assigned").rsplit("/", 1)[1])
    idle = 1 - busy
    assert (await stack.call("POST", "/admin/hosts/gpu-1/drain", {"draining": True}))[0] == 200
    await eventually(lambda: DrainReason.ADMIN in agent.drain_reasons, "the agent to see the admin drain")
    assert agent.slots.slots[idle].phase is Phase.READY and agent.slots.slots[busy].phase is Phase.READY
    assert (await stack.call("POST", "/sessions", {"app": "game"}, token=None))[0] == 202  # queued: no slot
    await stack.call("DELETE", f"/admin/sessions/{session['session_id']}")
    await eventually(lambda: agent.slots.slots[busy].phase is Phase.STOPPED, "the finished slot stopped")
    await eventually(lambda: stack.states_are(**{f"s{busy}": "dead"}), "the stopped slot reported dead")
    assert agent.slots.slots[idle].phase is Phase.READY  # warm for an undrain
    assert (await stack.call("POST", "/admin/hosts/gpu-1/drain", {"draining": False}))[0] == 200
    await eventually(lambda: not agent.drain_reasons and agent.slots.ready(), "undrained: both slots READY again")
    # The queued player gets the warm slot; the restarted one is READY again.
    await eventually(
        lambda: stack.states_are(**{f"s{idle}": "assigned", f"s{busy}": "ready"}),
        "the matchmaker using both slots again",
    )


async def test_sigterm_drains_waits_for_the_session_then_exits(stack: Stack, start_process: StartProcess) -> None:
    """``pixelfleet agent`` as a real process: SIGTERM stops the idle slot at once, lets
    the player's session run until drain_timeout_s, then ends it and exits 0."""
    await stack.start_matchmaker()
    s = stack.settings(metrics_port=free_port())
    env = {
        **os.environ,
        **{
            env_name("agent", k): str(v)
            for k, v in {
                "host_id": s.host_id,
                "app": s.app,
                "matchmaker_url": s.matchmaker_url,
                "agent_token": AGENT,
                "signaling_url": s.signaling_url,
                "streamer_url": s.streamer_url,
                "signaling_api_url": s.signaling_api_url,
                "slots": 2,
                "res_x": 320,
                "res_y": 240,
                "fps": 10,
                "heartbeat_period_s": 0.2,
                "ready_poll_s": 0.1,
                "health_poll_s": 0.2,
                "metrics_port": s.metrics_port,
                "drain_timeout_s": 5.0,
                "log_format": "json",
            }.items()
        },
    }  # no admin token: the heartbeat tells
    agent = await start_process("agent", env=env)
    slot_pids: list[int] = []
    try:
        await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "both slots READY")
        async with stack.http.get(f"http://127.0.0.1:{s.metrics_port}/healthz") as r:
            slot_pids = [x["pid"] for x in (await r.json())["slots"]]
        status, session = await stack.call("POST", "/sessions", {"app": "game"}, token=None)
        assert status == 201
        index = await busy_slot(stack)
        busy, idle = f"gpu-1/{index}", f"gpu-1/{1 - index}"
        async with player_on(stack, f"gpu-1-{index}"):
            agent.send(signal.SIGTERM)
            await eventually(lambda: _state_is(stack, idle, "dead"), "the idle slot stopped and reported dead")
            status, hosts = await stack.call("GET", "/admin/hosts")
            assert hosts[0]["draining"] is True  # told by its heartbeat (the agent has no admin token)
            assert (await stack.slot_states())[busy] == "assigned"  # the session goes on
            code = await agent.wait(WAIT)
        assert code == 0, agent.output()
        await eventually(lambda: _state_is(stack, busy, "dead"), "the last slot reported dead")
        status, live = await stack.call("GET", "/admin/sessions")
        assert session["session_id"] not in [x["session_id"] for x in live]  # ended at the deadline
        await eventually(lambda: not any(alive(p) for p in slot_pids), "every streamer process gone")
    finally:
        await agent.stop(signal.SIGKILL)
        for pid in slot_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


async def _state_is(stack: Stack, slot_id: str, state: str) -> bool:
    return (await stack.slot_states()).get(slot_id) == state


class StandInImds:
    """EC2 instance metadata on loopback: IMDSv2 token, then ``spot/instance-action``."""

    def __init__(self) -> None:
        self.action: tuple[int, bytes] = (404, b"")
        self.token = "imds-token-" + os.urandom(8).hex()
        self.unauthorised = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        async def token(request: web.Request) -> web.Response:
            assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
            return web.Response(text=self.token)

        async def action(request: web.Request) -> web.Response:
            if request.headers.get("X-aws-ec2-metadata-token") != self.token:
                self.unauthorised += 1
                return web.Response(status=401)
            status, body = self.action
            return web.Response(status=status, body=body, content_type="text/plain")

        app = web.Application()
        app.router.add_put("/latest/api/token", token)
        app.router.add_get("/latest/meta-data/spot/instance-action", action)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def imds() -> AsyncIterator[StandInImds]:
    server = StandInImds()
    await server.start()
    yield server
    await server.stop()


async def test_spot_notice_drains_the_host(stack: Stack, imds: StandInImds) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent(
        spot=True, imds_url=f"http://127.0.0.1:{imds.port}", spot_poll_s=0.1, spot_margin_s=2.0
    )
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "both slots READY")
    status, session = await stack.call("POST", "/sessions", {"app": "game"}, token=None)
    assert status == 201
    busy = await busy_slot(stack)
    idle = 1 - busy
    await eventually(lambda: agent.spot is not None and agent.spot.polls >= 3, "a few quiet polls")
    assert not agent.drain_reasons and agent.spot is not None and agent.spot.garbage == 0
    async with player_on(stack, f"gpu-1-{busy}"):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 10))
        imds.action = (200, orjson.dumps({"action": "terminate", "time": when}))
        await eventually(lambda: DrainReason.SPOT in agent.drain_reasons, "the agent to drain on the notice")
        assert agent.spot.notice is not None and agent.spot.notice.action == "terminate"
        await eventually(lambda: agent.slots.slots[idle].phase is Phase.STOPPED, "the idle slot stopped")
        await eventually(lambda: client.saw(idle, "dead"), "the idle slot reported dead")
        # The busy slot keeps its player until the notice time less the margin.
        assert client.latest[busy].state == "ready"
        await eventually(lambda: agent.slots.stopped(), "the busy slot stopped at notice time - margin")
    await eventually(lambda: stack.states_are(s0="dead", s1="dead"), "both slots dead in the matchmaker")
    status, live = await stack.call("GET", "/admin/sessions")
    assert session["session_id"] not in [x["session_id"] for x in live]
    assert imds.unauthorised == 0


# --- bad input ------------------------------------------------------------------------------


async def test_a_slot_command_that_does_not_exist_is_dead_and_retried(stack: Stack) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent(slots=1, streamer="ue", ue_binary="/nonexistent/Game.sh")
    slot = agent.slots.slots[0]
    await eventually(lambda: slot.restarts >= 2, "a couple of retries")
    assert slot.phase in (Phase.BACKOFF, Phase.STARTING)
    assert "cannot start '/nonexistent/Game.sh'" in (slot.last_error or "")
    await eventually(lambda: client.saw(0, "dead"), "the slot reported dead")
    assert await stack.states_are(s0="dead")


async def test_a_streamer_that_never_connects_hits_the_startup_timeout(stack: Stack) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent(
        slots=1, command=[sys.executable, "-c", "import time; time.sleep(120)"], startup_timeout_s=1.0
    )
    slot = agent.slots.slots[0]
    await eventually(lambda: slot.proc is not None, "the process to start")
    first = slot.proc.pid if slot.proc else 0
    await eventually(lambda: slot.restarts >= 1, "the startup timeout")
    assert "startup timeout" in (slot.last_error or "")
    await eventually(lambda: not alive(first), "the stuck process killed")
    await eventually(lambda: client.saw(0, "dead"), "the slot reported dead")
    assert slot.cold_start_s is None


async def test_matchmaker_down_then_back_gets_the_last_state(stack: Stack) -> None:
    agent, client = await stack.start_agent()  # nothing listens on mm_port yet
    await eventually(lambda: agent.slots.ready(), "slots READY locally")
    assert agent.reporter is not None
    await eventually(lambda: agent.reporter is not None and agent.reporter.failed >= 3, "failed tries")
    assert not agent.reporter.registered and agent.reporter.last_error
    assert agent.metrics is not None
    readyz = f"http://127.0.0.1:{agent.metrics.port}/readyz"

    async def ready() -> tuple[int, list[str]]:
        async with stack.http.get(readyz) as r:
            return r.status, (await r.json())["reasons"]

    assert await ready() == (503, ["not registered with the matchmaker"])
    await stack.start_matchmaker()
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "the last state delivered")
    assert await ready() == (200, [])
    # The matchmaker restarts with an empty store: 404 -> register again -> ready again.
    await stack.servers.pop().stop()
    registrations = agent.reporter.registrations
    await eventually(lambda: agent.reporter is not None and agent.reporter.consecutive_failures >= 2, "down again")
    status, reasons = await ready()
    assert status == 503 and reasons[0].startswith("matchmaker unreachable: ")
    await stack.start_matchmaker()
    await eventually(lambda: stack.states_are(s0="ready", s1="ready"), "state delivered after re-registering")
    assert agent.reporter.registrations == registrations + 1


async def test_wrong_agent_token_is_rejected_and_reported_not_fatal(stack: Stack) -> None:
    await stack.start_matchmaker()
    agent, client = await stack.start_agent(slots=1, agent_token="not-the-token")
    await eventually(lambda: agent.reporter is not None and agent.reporter.failed >= 2, "rejected tries")
    assert agent.reporter is not None and "Rejected" in (agent.reporter.last_error or "")
    await eventually(lambda: agent.slots.ready(), "the slot still supervised")
