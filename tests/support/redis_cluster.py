"""A real Redis Cluster of its own, with replicas, that a test may fail over or freeze.

The session-wide ``redis_cluster_url`` fixture (tests/conftest.py) has no replicas and is
shared; a failover test needs one it can disturb.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.conftest import _free_cluster_port, wait_for_ping

__all__ = ["RedisCluster"]


class RedisCluster:
    """``primaries`` shards with ``replicas`` each, on loopback ports; ``url`` names one
    node with ``?cluster=1`` (the client learns the others from it)."""

    def __init__(
        self, server: str, cli: str, folder: Path, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
    ) -> None:
        self.server, self.cli, self.folder = server, cli, folder
        self.primaries, self.replicas, self.node_timeout_ms = primaries, replicas, node_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.frozen: set[int] = set()
        self.killed: set[int] = set()
        self._logs: list[Any] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{min(p for p in self.procs if p not in self.away)}/?cluster=1"

    def ask(self, port: int, *command: str) -> Any:
        """One command to one node, on a connection of its own."""
        with redis.Redis(port=port, socket_timeout=5) as client:
            return client.execute_command(*command)

    def start(self) -> None:
        while len(self.procs) < self.primaries * (1 + self.replicas):
            port = _free_cluster_port()
            if port in self.procs:
                continue
            node_dir = self.folder / str(port)
            node_dir.mkdir(parents=True)
            argv = [self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            argv += ["--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir)]
            argv += ["--cluster-node-timeout", str(self.node_timeout_ms), "--save", "", "--appendonly", "no"]
            self._logs.append(open(node_dir / "redis.log", "wb"))  # noqa: SIM115 - closed in stop()
            self.procs[port] = subprocess.Popen(argv, stdout=self._logs[-1], stderr=subprocess.STDOUT)
        for port in self.procs:
            with redis.Redis(port=port) as client:
                wait_for_ping(client, "a Redis Cluster node")
        nodes = [f"127.0.0.1:{p}" for p in self.procs]
        subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )

    async def until_healthy(self, within_s: float = 60.0) -> None:
        """Every running node says ``cluster_state:ok`` and every shard has its replicas
        attached (a failover needs an in-sync replica)."""
        async with asyncio.timeout(within_s):
            while not await asyncio.to_thread(self._healthy):
                await asyncio.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            for port in self.procs:
                if port not in self.away and self.ask(port, "CLUSTER INFO").get("cluster_state") != "ok":
                    return False
            shards = self._shards()
        except redis.RedisError:
            return False
        return len(shards) == self.primaries and all(
            sum(n["role"] == "replica" and n["health"] == "online" for n in s["nodes"]) == self.replicas for s in shards
        )

    def _shards(self) -> list[dict[str, Any]]:
        """CLUSTER SHARDS, as plain dicts, from any running node."""
        port = next(p for p, proc in self.procs.items() if proc.poll() is None and p not in self.away)
        raw = self.ask(port, "CLUSTER SHARDS")
        return [_pairs(shard) | {"nodes": [_pairs(n) for n in _pairs(shard)["nodes"]]} for shard in raw]

    def shard_of(self, key: str) -> tuple[int, list[int]]:
        """(primary port, replica ports) of the shard that holds ``key``'s slot."""
        slot = int(self.ask(min(p for p in self.procs if p not in self.away), "CLUSTER KEYSLOT", key))
        for shard in self._shards():
            ranges = shard["slots"]
            if any(low <= slot <= high for low, high in zip(ranges[::2], ranges[1::2], strict=True)):
                nodes = [n for n in shard["nodes"] if n["health"] == "online" or n["role"] == "master"]
                primary = next(int(n["port"]) for n in nodes if n["role"] == "master")
                return primary, [int(n["port"]) for n in nodes if n["role"] == "replica"]
        raise LookupError(f"no shard holds slot {slot}")

    def primary_of(self, port: int) -> int:
        """The primary port of the shard that node ``port`` (primary or replica) is in."""
        for shard in self._shards():
            if any(int(n["port"]) == port for n in shard["nodes"]):
                return next(int(n["port"]) for n in shard["nodes"] if n["role"] == "master")
        raise LookupError(f"no shard has node {port}")

    def failover(self, replica: int) -> None:
        """A manual failover: the replica takes over its primary's slots, in step with it."""
        self.ask(replica, "CLUSTER FAILOVER")

    def kill(self, port: int) -> None:
        """SIGKILL, as a crash: the shard's replica takes over once the node timeout has passed."""
        self.procs[port].kill()
        self.procs[port].wait()
        self.killed.add(port)

    @property
    def away(self) -> set[int]:
        """Nodes that answer nothing: frozen or killed (never asked)."""
        return self.frozen | self.killed

    def freeze(self, port: int) -> None:
        """SIGSTOP: the node keeps its sockets and answers nothing, as a host that vanished."""
        self.frozen.add(port)
        self.procs[port].send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        for port, proc in self.procs.items():
            if port in self.frozen:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()


def _pairs(flat: Any) -> dict[str, Any]:
    """A RESP2 flat key/value list (or a RESP3 map) as a dict with str keys."""
    if isinstance(flat, dict):
        items = list(flat.items())
    else:
        items = list(zip(flat[::2], flat[1::2], strict=True))
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in items}
