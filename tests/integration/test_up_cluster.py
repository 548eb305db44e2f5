"""``pixelfleet up --nodes N`` and its parts with real processes: node children behind the
local balancer, a node killed, a clean stop, and a player reaching a streamer that is
connected to another node."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import aiohttp

from loadtest.synthetic_player import SyntheticPlayer
from pixelfleet.up_cluster import Cluster
from signaling.config import Settings
from tests.conftest import StartProcess, require_binary

WAIT = 60.0


def _gone(pid: int) -> bool:
    """Exited (or a zombie waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def _until_gone(pids: list[int]) -> None:
    async with asyncio.timeout(WAIT):
        while not all(_gone(pid) for pid in pids):  # noqa: ASYNC110 - polling other processes
            await asyncio.sleep(0.05)


async def test_up_nodes_without_redis_server_says_how_to_install(tmp_path: Path, start_process: StartProcess) -> None:
    up = await start_process("up", "--nodes", "2", "--streamers", "0", env={**os.environ, "PATH": str(tmp_path)})
    assert await up.wait(WAIT) == 2
    err = up.output(None)
    assert "redis-server is not installed" in err and "--state-url redis://" in err


async def test_nodes_behind_the_balancer_share_the_load_survive_a_kill_and_stop_cleanly(tmp_path: Path) -> None:
    # memory:// state: each node alone, enough for the process and balancing side
    settings = Settings(player_port=0, streamer_port=0, sfu_port=0, shutdown_grace_s=1.0)
    cluster = Cluster(settings, 2, state_url="memory://", workdir=tmp_path)
    await cluster.start()
    try:
        assert cluster.balancer is not None
        pids = [child.proc.pid for child, _ in cluster.nodes]
        backends = cluster.balancer.nodes
        url = f"ws://127.0.0.1:{cluster.port('player')}/"
        async with aiohttp.ClientSession() as http:
            first = await http.ws_connect(url)
            second = await http.ws_connect(url)
            assert [n.connections for n in backends] == [1, 1]  # one player on each node
            for ws in (first, second):  # both reached a signalling node through the balancer
                assert (await ws.receive_json(timeout=WAIT))["type"] == "config"
            os.kill(pids[0], signal.SIGKILL)
            async with asyncio.timeout(WAIT):
                while backends[0].healthy:  # noqa: ASYNC110 - the balancer's own health loop
                    await asyncio.sleep(0.05)
            third = await http.ws_connect(url)
            assert (await third.receive_json(timeout=WAIT))["type"] == "config"
            assert backends[1].forwarded["player"] == 2
            # the agent asks the balancer whether its streamer streams; the node answering knows
            streamer = await http.ws_connect(f"ws://127.0.0.1:{cluster.nodes[1][1].streamer}/")
            await streamer.send_json({"type": "endpointId", "id": "Cam"})
            lookup = f"http://127.0.0.1:{cluster.port('player')}/api/streamers"

            async def found() -> bool:
                async with http.get(f"{lookup}/Cam") as resp:
                    return resp.status == 200

            async with asyncio.timeout(WAIT):
                while not await found():  # until the node has registered it
                    await asyncio.sleep(0.05)
            for _ in range(5):  # every time, not one in two
                async with http.get(f"{lookup}/Cam") as resp:
                    assert resp.status == 200 and (await resp.json())["streamerId"] == "Cam"
            async with http.get(f"{lookup}/Nobody") as resp:
                assert resp.status == 404
            for ws in (first, second, third, streamer):
                await ws.close()
    finally:
        await cluster.stop()
    await _until_gone(pids)
    assert cluster.nodes == [] and cluster.balancer is None


async def test_up_three_nodes_a_player_reaches_a_streamer_on_another_node(start_process: StartProcess) -> None:
    require_binary("redis-server")
    up = await start_process(
        "up",
        *("--nodes", "3", "--streamers", "1", "--width", "320", "--height", "240", "--fps", "15"),
        *("--player-port", "0", "--streamer-port", "0", "--sfu-port", "-1", "--log-format", "json"),
        new_session=True,
    )
    banner = await up.wait_for_line("pixelfleet is up", WAIT)
    page = banner.split("open ", 1)[1].split("?", 1)[0]
    nodes_line = await up.wait_for_line("  nodes: ", WAIT)
    redis_pid = int((await up.wait_for_line("  state: ", WAIT)).rsplit("pid ", 1)[1])
    nodes = [(int(pid), int(port)) for pid, port in re.findall(r"pid (\d+) \(:(\d+)\)", nodes_line)]
    assert len(nodes) == 3
    # Streamer1 is connected to one node: a player on each node reaches it, so at least two
    # of the three cross nodes; and one more comes in through the balancer, as a browser does.
    urls = [f"ws://127.0.0.1:{port}/" for _, port in nodes] + [page.replace("http://", "ws://")]
    for url in urls:
        async with SyntheticPlayer(url, "Streamer1") as player:
            await player.wait_frames(3, WAIT)
            assert player.subscribed_to == "Streamer1"
    assert await up.stop(signal.SIGINT, WAIT) == 0
    await _until_gone([pid for pid, _ in nodes] + [redis_pid])


async def test_up_nodes_with_turn_gives_every_node_the_local_coturn(start_process: StartProcess) -> None:
    require_binary("redis-server")
    require_binary("turnserver")
    up = await start_process(
        "up",
        *("--nodes", "2", "--turn", "--turn-port", "0", "--turn-force-relay", "--streamers", "1"),
        *("--width", "320", "--height", "240", "--fps", "15", "--player-port", "0", "--streamer-port", "0"),
        *("--sfu-port", "-1", "--log-format", "json"),
        new_session=True,
    )
    await up.wait_for_line("relay-only test", WAIT)
    output = up.output(None)
    coturn_port = next(json.loads(line) for line in output.splitlines() if '"coturn_started"' in line)["port"]
    nodes = [(int(pid), int(port)) for pid, port in re.findall(r"pid (\d+) \(:(\d+)\)", output)]
    assert len(nodes) == 2
    # Streamer1 is on one node; a relay-only player on each node still gets its frames, so
    # both nodes hand out the coturn's URL and credentials it accepts
    for _, port in nodes:
        async with SyntheticPlayer(f"ws://127.0.0.1:{port}/", "Streamer1") as player:
            await player.wait_frames(3, WAIT)
            assert player.peer_options["iceTransportPolicy"] == "relay"
            urls = [url for server in player.peer_options["iceServers"] for url in server["urls"]]
            assert f"turn:127.0.0.1:{coturn_port}?transport=udp" in urls
    for pid, _ in nodes:  # the generated secret is in the environment, never on a command line or in a log
        environ = dict(
            item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item
        )
        secret = environ[b"PIXELFLEET_TURN__SECRETS"]
        assert len(secret) >= 32 and secret not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert secret.decode() not in up.output(None)
    assert await up.stop(signal.SIGINT, WAIT) == 0
    await _until_gone([pid for pid, _ in nodes])
