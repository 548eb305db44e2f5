"""``pixelfleet up --nodes N``: a signalling cluster on one box, to try it as it runs in
production (several nodes behind a load balancer, routing over Redis).

The ``up`` process runs a local ``redis-server`` (unless ``--state-url`` names one), N
``pixelfleet signaling --state-url redis://...`` child processes on free ports, and
``pixelfleet.balancer`` on the usual ``up`` ports in front of them; the embedded GPU
agent's synthetic streamers stay in this process and connect through the balancer like
every player, so each lands on whichever node the balancer picks. The agent asks the
balancer whether its streamers stream: any node answers for streamers on every node.

There is no embedded matchmaker here: the player page asks its own origin for
``/api/v1``, and a TCP balancer cannot send that path elsewhere; players pick a streamer
(``?StreamerId=``) as with ``up --no-matchmaker``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pixelfleet.balancer import Balancer, BalancerError, Node
from pixelfleet.children import ChildError, ChildProcess, python_module
from pixelfleet.net import free_port
from pixelfleet.shared_settings import SharedSettings

if TYPE_CHECKING:
    from gpu_agent.agent import Agent
    from pixelfleet.settings import PixelfleetSettings
    from signaling.config import Settings as SignalingSettings
    from turn.config import TurnSettings

__all__ = ["Cluster", "ClusterError", "NodePorts", "node_argv", "node_environment", "redis_argv", "run_cluster"]

log = structlog.get_logger("up")

# Settings each node gets its own value of (flags), not the up process's.
PER_NODE_FIELDS = frozenset({"host", "player_port", "streamer_port", "sfu_port"})
START_TIMEOUT_S = 30.0


class ClusterError(RuntimeError):
    """The cluster could not start: a missing binary, a node that exited, a bad address."""


@dataclass(frozen=True, slots=True)
class NodePorts:
    player: int
    streamer: int
    sfu: int  # -1: no SFU listener

    @classmethod
    def free(cls, *, sfu: bool) -> NodePorts:
        return cls(free_port(), free_port(), free_port() if sfu else -1)


def node_argv(ports: NodePorts, state_url: str, settings: SignalingSettings) -> list[str]:
    """The command line of one node (secrets never go here: ``ps`` shows it)."""
    return python_module(
        "pixelfleet",
        "signaling",
        "--host",
        "127.0.0.1",
        "--player-port",
        str(ports.player),
        "--streamer-port",
        str(ports.streamer),
        "--sfu-port",
        str(ports.sfu),
        "--state-url",
        state_url,
        "--log-level",
        settings.log_level,
        "--log-format",
        settings.log_format,
    )


def node_environment(
    settings: SignalingSettings, base: Mapping[str, str], turn: TurnSettings | None = None
) -> dict[str, str]:
    """``base`` plus the up process's signalling (and TURN) settings as variables, so a
    flag given to ``up`` (``--max-players``, ``--peer-options``, ``--turn``) reaches every
    node. Only values that differ from the defaults are written; addresses and shared
    settings are left out. TURN secrets go here, never on a command line: a process's
    environment is readable by its user only."""
    from signaling.config import Settings
    from turn.config import TurnSettings

    env = dict(base)
    for name in Settings.__struct_fields__:
        if name not in PER_NODE_FIELDS and name not in SharedSettings.__struct_fields__:
            _put(env, f"PIXELFLEET_{name.upper()}", getattr(settings, name), getattr(Settings(), name))
    if turn is not None:
        for name in TurnSettings.__struct_fields__:
            _put(env, f"PIXELFLEET_TURN__{name.upper()}", getattr(turn, name), getattr(TurnSettings(), name))
    return env


def _put(env: dict[str, str], key: str, value: Any, default: Any) -> None:
    """As ``pixelfleet.settings`` reads it back: JSON objects, comma-separated lists."""
    if value == default or value is None:
        return
    if isinstance(value, bool):
        env[key] = "true" if value else "false"
    elif isinstance(value, dict):
        env[key] = json.dumps(value)
    elif isinstance(value, list | tuple):
        if any("," in str(item) for item in value):
            raise ClusterError(f"{key}: an item with a comma cannot be passed to the nodes")
        env[key] = ",".join(str(item) for item in value)
    else:
        env[key] = str(value)


def redis_argv(binary: str, port: int) -> list[str]:
    """A throwaway Redis on loopback: no persistence, nothing written to disk."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


class Cluster:
    """Redis (local unless ``state_url`` is given), ``count`` nodes and the balancer."""

    def __init__(
        self,
        settings: SignalingSettings,
        count: int,
        *,
        state_url: str | None = None,
        workdir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        turn: TurnSettings | None = None,
    ) -> None:
        if count < 1:
            raise ClusterError(f"--nodes {count}: at least 1")
        self.settings, self.count, self.state_url, self.turn = settings, count, state_url, turn
        self._own_workdir = workdir is None  # a temporary one: removed by stop(remove_logs=True)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pixelfleet-cluster-"))
        self.environ = os.environ if environ is None else environ
        self.redis: ChildProcess | None = None
        self.nodes: list[tuple[ChildProcess, NodePorts]] = []
        self.balancer: Balancer | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        state_url = self.state_url or await self._start_redis()
        env = node_environment(self.settings, self.environ, self.turn)
        sfu = self.settings.sfu_port >= 0
        for i in range(1, self.count + 1):
            ports = NodePorts.free(sfu=sfu)
            argv = node_argv(ports, state_url, self.settings)
            child = await ChildProcess.start(f"node{i}", argv, self.workdir / f"node{i}.log", env=env)
            self.nodes.append((child, ports))
        for child, ports in self.nodes:
            await child.wait_for_port(ports.player, START_TIMEOUT_S)
        s = self.settings
        listen = {"player": s.player_port, "streamer": s.streamer_port} | ({"sfu": s.sfu_port} if sfu else {})
        backends = [
            Node(child.name, {"player": p.player, "streamer": p.streamer, "sfu": p.sfu}, health_port=p.player)
            for child, p in self.nodes
        ]
        try:
            self.balancer = Balancer(backends, listen, host=s.host, allow_remote=not _loopback_only(s.host))
            await self.balancer.start()
        except (BalancerError, OSError) as exc:
            raise ClusterError(f"the balancer cannot listen on {s.host}: {exc}") from None
        await self._wait_healthy(backends)

    async def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterError(
                "redis-server is not installed (Debian/Ubuntu: sudo apt-get install -y redis-server), "
                "or give an existing one: --state-url redis://HOST:PORT/0"
            )
        port = free_port()
        self.redis = await ChildProcess.start("redis-server", redis_argv(binary, port), self.workdir / "redis.log")
        await self.redis.wait_for_port(port, START_TIMEOUT_S)
        return f"redis://127.0.0.1:{port}/0"

    async def _wait_healthy(self, backends: list[Node]) -> None:
        assert self.balancer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not all(n.healthy for n in backends):
            for child, _ in self.nodes:
                if child.returncode is not None:
                    raise ClusterError(f"{child.name} exited with {child.returncode}:\n{child.output()}")
            if loop.time() > deadline:
                sick = ", ".join(n.name for n in backends if not n.healthy)
                raise ClusterError(f"not healthy after {START_TIMEOUT_S} s: {sick} (logs in {self.workdir})")
            await asyncio.sleep(0.1)

    async def stop(self, *, remove_logs: bool = False) -> None:
        """Balancer first (no new connections), then the nodes (they drain), then Redis.
        The logs stay unless ``remove_logs`` (a clean exit): a failed start points at them."""
        if self.balancer is not None:
            await self.balancer.stop()
            self.balancer = None
        grace = self.settings.shutdown_grace_s + 5
        await asyncio.gather(*(child.stop(grace) for child, _ in self.nodes))
        self.nodes.clear()
        if self.redis is not None:
            await self.redis.stop()
            self.redis = None
        if remove_logs and self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def port(self, role: str) -> int:
        assert self.balancer is not None
        return self.balancer.port(role)


def _loopback_only(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost", "[::1]"}


class _BalancerPorts:
    """Where the embedded agent's streamers connect: the balancer, like everyone."""

    def __init__(self, cluster: Cluster) -> None:
        self.player_port, self.streamer_port = cluster.port("player"), cluster.port("streamer")


async def _up_cluster(args: argparse.Namespace, platform: PixelfleetSettings) -> None:
    from pixelfleet.cli import serve_until_signal
    from pixelfleet.up import _connect_host, _embedded_agent, _local_coturn, _turn_banner

    s = platform.signaling
    state_url = None if s.state_url.startswith("memory:") else s.state_url
    coturn, turn = _local_coturn(args, platform.turn) if args.turn else (None, platform.turn)
    cluster = Cluster(s, args.nodes, state_url=state_url, turn=turn)
    agent: Agent | None = None
    ids = [f"Streamer{i}" for i in range(1, args.streamers + 1)]

    async def start() -> None:
        nonlocal agent
        try:
            if coturn is not None:
                await coturn.start()
            await cluster.start()
            if ids:
                agent = _embedded_agent(args, platform, _BalancerPorts(cluster), None)
                await agent.start()
                await agent.wait_ready(START_TIMEOUT_S)
        except BaseException:
            await stop(clean=False)
            raise
        host = _connect_host(s.host)
        page = f"http://{host}:{cluster.port('player')}/"
        nodes = ", ".join(f"{c.name} pid {c.proc.pid} (:{p.player})" for c, p in cluster.nodes)
        redis = cluster.redis
        state = state_url or f"a local redis-server, pid {redis.proc.pid if redis else '?'}"
        print(
            f"\npixelfleet is up, {args.nodes} signalling nodes behind a local balancer: open "
            f"{page}?StreamerId={ids[0] if ids else '<id>'}\n"
            f"  streamers: {', '.join(ids) or 'none'} (no matchmaker in a cluster: pick one with ?StreamerId=)\n"
            f"  nodes: {nodes}\n"
            f"  state: {state}\n"
            f"  node logs: {cluster.workdir} (removed at exit)\n"
            f"  UE builds: -PixelStreamingURL=ws://{host}:{cluster.port('streamer')}\n"
            f"{_turn_banner(coturn, page)}"
            f"  stop with Ctrl+C\n",
            flush=True,
        )

    async def stop(*, clean: bool = True) -> None:
        """``clean``: a requested stop, the logs go; a failed start keeps them."""
        if agent is not None:
            await agent.stop()
        await cluster.stop(remove_logs=clean)
        if coturn is not None:
            await coturn.stop()

    await serve_until_signal(start, stop)


def run_cluster(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    """``up --nodes N`` (N > 1); exit code 2 with one clear line when it cannot start."""
    import uvloop

    from turn.coturn import CoturnError, find_turnserver

    try:
        if args.turn:
            find_turnserver()
        uvloop.run(_up_cluster(args, settings))
    except (ClusterError, ChildError, CoturnError) as exc:
        print(f"pixelfleet up --nodes: {exc}", file=sys.stderr)
        return 2
    return 0
