"""Signalling nodes in one process sharing a real Redis (and a real Redis Cluster): the
cluster-wide protocol rules over real sockets. Killing, draining and Redis loss use
separate processes (test_signaling_nodes.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from pixelfleet.tokens import TokenKeys, mint
from signaling import errors
from signaling.app import SignalingServer
from signaling.sessions import SessionGate
from tests.conftest import StartSignaling
from tests.support.waiting import eventually
from tests.support.ws_peers import WAIT, Peer, connect_player, connect_streamer

pytestmark = pytest.mark.integration

KEYS = TokenKeys.hs256("cluster-test-secret-of-at-least-32-bytes")
_prefixes = itertools.count()

Nodes = Callable[..., Awaitable[list[SignalingServer]]]


@pytest.fixture(params=["redis", "redis-cluster"])
async def nodes(request: pytest.FixtureRequest, start_signaling: StartSignaling) -> Nodes:
    """``await nodes(3)``: that many nodes on a fresh key space of the shared Redis."""
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    run = next(_prefixes)

    async def start(count: int, **overrides: object) -> list[SignalingServer]:
        servers = []
        for i in range(count):
            node_id = f"n{run}x{i}"  # unique per test: nodes of other tests never meet these
            servers.append(await start_signaling(state_url=url, node_id=node_id, node_ttl_s=1.5, **overrides))
        return servers

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def listed_on(http: aiohttp.ClientSession, servers: list[SignalingServer], name: str) -> None:
    """Until each node's view of the directory has the streamer: its listing event travels
    apart from the streamer's own socket, so a player elsewhere may ask before it arrives."""
    for server in servers:

        async def listed(server: SignalingServer = server) -> bool:
            async with http.get(f"http://127.0.0.1:{server.player_port}/api/streamers/{name}") as r:
                return r.status == 200

        await eventually(listed, f"{name} listed on {server.core.node}", WAIT)


async def test_a_player_streams_from_a_streamer_on_another_node(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    a, b, c = await nodes(3)
    name = f"Cam{id(a)}"
    s = await connect_streamer(http, c.streamer_port, name)
    await listed_on(http, [a], name)
    p, pid = await connect_player(http, a.player_port, s, name)
    assert pid.startswith(f"Player{a.core.node}-")
    await s.send(type="offer", playerId=pid, sdp="v=0 offer")
    assert await p.recv_type("offer") == {"type": "offer", "playerId": pid, "sdp": "v=0 offer"}
    await p.send(type="answer", sdp="v=0 answer")
    assert await s.recv_type("answer") == {"type": "answer", "sdp": "v=0 answer", "playerId": pid}
    for i in range(50):  # ICE trickle both ways keeps its order across nodes
        await p.send(type="iceCandidate", candidate={"candidate": f"c{i}", "sdpMid": "0"})
    for i in range(50):
        assert (await s.recv_type("iceCandidate"))["candidate"]["candidate"] == f"c{i}"
    viewer = Peer(await http.ws_connect(f"ws://127.0.0.1:{b.player_port}/"))
    await viewer.recv_type("config")
    await viewer.send(type="listStreamers")
    assert name in (await viewer.recv_type("streamerList"))["ids"]
    # The GPU agent asks any node (through the balancer) whether its streamer is up.
    async with http.get(f"http://127.0.0.1:{b.player_port}/api/streamers/{name}") as r:
        body = await r.json()
    body.pop("players", None)  # as c's last beat said (test_player_counts_are_cluster_wide)
    assert body == {"streamerId": name, "streaming": True, "node": c.core.node}
    async with http.get(f"http://127.0.0.1:{c.player_port}/api/streamers/{name}") as r:
        assert (await r.json())["subscribers"] == [{"playerId": pid, "type": "Player", "subscribedTo": name}]


async def test_streamer_ids_are_unique_across_the_cluster(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    a, b = await nodes(2)
    name = f"Dup{id(a)}"
    first = await connect_streamer(http, a.streamer_port, name)
    second = Peer(await http.ws_connect(f"ws://127.0.0.1:{b.streamer_port}/"))
    await second.recv_type("config")
    await second.send(type="endpointId", id=name)
    assert await second.recv() == {"type": "endpointIdConfirm", "committedId": f"{name}1"}
    await first.still_served()


async def test_the_player_limit_and_kicks_hold_across_nodes(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    a, b = await nodes(2, max_players_per_streamer=1)
    name = f"Lim{id(a)}"
    s = await connect_streamer(http, a.streamer_port, name)
    await listed_on(http, [b], name)
    first, pid = await connect_player(http, b.player_port, s, name)
    second, _ = await connect_player(http, a.player_port)
    await second.send(type="subscribe", streamerId=name)
    failed = await second.recv_type("subscribeFailed")
    assert "is full" in failed["message"]
    await s.send(type="disconnectPlayer", playerId=pid, reason="bye")
    assert await first.closed() == (errors.INTERNAL_ERROR, "bye")
    assert await s.recv_type("playerDisconnected") == {"type": "playerDisconnected", "playerId": pid}
    third, _ = await connect_player(http, a.player_port, s, name)  # the place is free again
    await third.still_served()


async def test_a_streamer_leaving_closes_its_players_on_other_nodes(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    a, b = await nodes(2)
    name = f"Gone{id(a)}"
    s = await connect_streamer(http, a.streamer_port, name)
    await listed_on(http, [b], name)
    p, _ = await connect_player(http, b.player_port, s, name)
    await s.ws.close()
    code, _reason = await p.closed()
    assert code == errors.STREAMER_GONE


async def test_a_session_token_opens_one_socket_in_the_whole_cluster(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    a, b = await nodes(2)
    for server in (a, b):  # the gate the server would build from its settings
        gate = SessionGate(KEYS)
        gate.first_use = server.node.broker.first_use
        server.node.gate = gate
    token = mint(KEYS, tenant="t", session_id=f"s{id(a)}", streamer_id="x", ttl_s=60)
    first = await http.ws_connect(f"ws://127.0.0.1:{a.player_port}/?token={token}")
    assert (await asyncio.wait_for(first.receive_json(), WAIT))["type"] == "config"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"ws://127.0.0.1:{b.player_port}/?token={token}")
    assert refused.value.status == 401
    await first.close()


async def test_readyz_reports_a_node_that_serves(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    (a,) = await nodes(1)
    async with http.get(f"http://127.0.0.1:{a.player_port}/readyz") as r:
        assert r.status == 200 and await r.json() == {"ok": True, "reasons": []}
    async with http.get(f"http://127.0.0.1:{a.player_port}/livez") as r:
        assert r.status == 200


async def test_player_counts_are_cluster_wide(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    """``/api/status`` adds the cluster's totals to this node's counts, and a streamer on
    another node is listed with its players, as its node last reported them (each node
    writes its counts at its beat: at most about two thirds of a TTL old)."""
    a, b, c = await nodes(3)
    name = f"Count{id(a)}"
    s = await connect_streamer(http, c.streamer_port, name)
    await listed_on(http, [a, b], name)
    staying, _ = await connect_player(http, a.player_port, s, name)
    leaving, _ = await connect_player(http, b.player_port, s, name)
    idle, _ = await connect_player(http, a.player_port)  # connected, watching nothing: a player all the same

    async def status(server: SignalingServer) -> dict[str, object]:
        async with http.get(f"http://127.0.0.1:{server.player_port}/api/status") as r:
            body: dict[str, object] = await r.json()
            return body

    async def listed(server: SignalingServer) -> object:
        async with http.get(f"http://127.0.0.1:{server.player_port}/api/streamers/{name}") as r:
            return (await r.json()).get("players")

    everyone = {"streamer_count": 1, "player_count": 3, "nodes": 3}
    await eventually(lambda: until_field(status(a), "cluster", everyone), "a's cluster counts", WAIT)
    here = await status(a)
    assert (here["streamer_count"], here["player_count"]) == (0, 2)  # this node's own, as before
    await eventually(lambda: until_field(status(b), "cluster", everyone), "b's cluster counts", WAIT)
    await eventually(lambda: until_equal(listed(a), 2), "the far streamer's players", WAIT)
    await leaving.ws.close()
    await eventually(lambda: until_equal(listed(b), 1), "a player leaving is counted", WAIT)
    await c.stop()  # leaving the cluster: its streamer and counts go from every view
    assert (await staying.closed())[0] == errors.STREAMER_GONE
    gone = {"streamer_count": 0, "player_count": 1, "nodes": 2}
    await eventually(lambda: until_field(status(a), "cluster", gone), "c's counts gone", WAIT)
    await idle.still_served()


async def until_field(body: Awaitable[dict[str, object]], key: str, want: object) -> bool:
    return (await body).get(key) == want


async def until_equal(value: Awaitable[object], want: object) -> bool:
    return await value == want


async def test_frames_right_after_endpoint_id_wait_for_the_id_and_keep_their_order(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    """Frames are handled in the socket's read (signaling/ws_inbound.py) while a streamer's
    id claim is a round trip to Redis: those that come meanwhile are held, then run in
    order once the id is settled, as Epic's single server would have answered them."""
    (a,) = await nodes(1)
    name = f"Cam{id(a)}"
    s = Peer(await http.ws_connect(f"ws://127.0.0.1:{a.streamer_port}/"))
    await s.send(type="endpointId", id=name)  # before identify arrives, as UE may
    for i in range(20):
        await s.send(type="ping", time=i)
    assert [(await s.recv())["type"] for _ in range(3)] == ["identify", "config", "endpointIdConfirm"]
    assert [await s.recv() for _ in range(20)] == [{"type": "pong", "time": i} for i in range(20)]
    await listed_on(http, [a], name)


async def test_subscriptions_are_read_in_their_sockets_read(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    """signaling/broker_subscription.py takes both of a node's subscriptions over on the
    installed redis-py (plain and Cluster); if an upgrade changes what it relies on, this
    says so (the node would still work, through get_message(), a loop turn later)."""
    a, b = await nodes(2)
    for server in (a, b):

        def taken(server: SignalingServer = server) -> bool:
            return bool(server.node.broker.stats["read_in_socket"] >= 2)  # type: ignore[attr-defined]

        await eventually(taken, "both subscriptions taken", WAIT)
    name = f"Cam{id(a)}"
    s = await connect_streamer(http, b.streamer_port, name)
    await listed_on(http, [a], name)
    p, pid = await connect_player(http, a.player_port, s, name)
    for i in range(20):
        await s.send(type="iceCandidate", playerId=pid, candidate={"candidate": f"c{i}"})
    for i in range(20):
        assert (await p.recv_type("iceCandidate"))["candidate"]["candidate"] == f"c{i}"
