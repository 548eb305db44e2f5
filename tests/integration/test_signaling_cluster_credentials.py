"""Streamer credentials across the nodes of a cluster (issue 11): a streamer's credential id
and tenant are listed on every node, so the GPU agent (asking any node through the
balancer) tells its own streamer from a hijacker of its id, and tenant rules on listings
hold for streamers on other nodes exactly as on one node. Two in-process nodes with
credentials on, on a real Redis and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gpu_agent.config import AgentSettings
from gpu_agent.credentials import CredentialGate, read
from gpu_agent.slot_plan import SlotPlan
from gpu_agent.slots import Slot
from gpu_agent.watch import UNKNOWN_HOLDER, SignalingWatch
from pixelfleet.tokens import TokenKeys, mint, mint_streamer, verify_streamer
from signaling import errors
from signaling.app import SignalingServer
from signaling.broker_redis import RedisBroker
from signaling.config import Settings
from tests.support.ws_peers import WAIT, Peer

pytestmark = pytest.mark.integration

KEYS = TokenKeys.hs256("cluster-credential-secret-of-at-least-32-bytes")
ADMIN = "admin-" + "a" * 30
_node_ids = itertools.count()

Nodes = Callable[..., Awaitable[list[SignalingServer]]]


@pytest.fixture(params=["redis", "redis-cluster"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    """``await nodes(2)``: that many nodes with streamer credentials on, on a fresh key space."""
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    servers: list[SignalingServer] = []

    async def start(count: int, **overrides: Any) -> list[SignalingServer]:
        for _ in range(count):
            settings = Settings(
                player_port=0,
                streamer_port=0,
                sfu_port=0,
                shutdown_grace_s=1.0,
                state_url=url,
                node_id=f"cred{next(_node_ids)}",  # unique per test: nodes of other tests never meet these
                node_ttl_s=1.5,
                admin_token=ADMIN,
                **overrides,
            )
            server = SignalingServer(settings, streamer_keys=KEYS)
            await server.start()
            servers.append(server)
        return servers[-count:]

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def credential(streamer_id: str, tenant: str = "acme") -> tuple[str, str]:
    """A streamer credential and its jti."""
    token = mint_streamer(KEYS, tenant=tenant, host_id="h1", streamer_id=streamer_id, ttl_s=300)
    return token, verify_streamer(KEYS, token).token_id


async def identified(http: aiohttp.ClientSession, port: int | None, streamer_id: str, token: str | None) -> Peer:
    """A streamer (or SFU) connected with ``token`` that registered ``streamer_id``."""
    query = f"?token={token}" if token else ""
    peer = Peer(await http.ws_connect(f"ws://127.0.0.1:{port}/{query}"))
    await peer.send(type="endpointId", id=streamer_id)
    assert await peer.recv_type("endpointIdConfirm") == {"type": "endpointIdConfirm", "committedId": streamer_id}
    return peer


async def listing(http: aiohttp.ClientSession, server: SignalingServer, path: str, token: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.player_port}/api/streamers{path}"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


async def listed_ids(sfu: Peer) -> list[str]:
    await sfu.send(type="listStreamers")
    ids: list[str] = (await sfu.recv_type("streamerList"))["ids"]
    return ids


async def until_listed(http: aiohttp.ClientSession, server: SignalingServer, streamer_id: str, jti: str | None) -> Any:
    """Wait until ``server`` lists ``streamer_id`` streaming, held with credential ``jti``."""
    async with asyncio.timeout(WAIT):  # a hang guard: the directory event is on its way
        while True:
            status, body = await listing(http, server, f"/{streamer_id}", ADMIN)
            if status == 200 and body.get("credentialId") == jti and body.get("streaming"):
                return body
            await asyncio.sleep(0.02)


async def until_gone(http: aiohttp.ClientSession, server: SignalingServer, streamer_id: str) -> None:
    async with asyncio.timeout(WAIT):
        while (await listing(http, server, f"/{streamer_id}", ADMIN))[0] != 404:
            await asyncio.sleep(0.02)


async def test_a_streamer_on_one_node_is_listed_on_another_with_its_credential_and_tenant(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    a, b = await nodes(2)
    name = f"cam-{id(a)}"
    token, jti = credential(name)
    streamer = await identified(http, a.streamer_port, name, token)
    body = await until_listed(http, b, name, jti)
    listed = {"streamerId": name, "streaming": True, "node": a.core.node, "credentialId": jti, "tenant": "acme"}
    assert body == {**listed, "players": 0}  # as a's last beat counted them
    local = {"streamerId": name, "type": "Streamer", "streaming": True, "subscribers": [], "credentialId": jti}
    assert await listing(http, a, f"/{name}", ADMIN) == (200, {**local, "tenant": "acme"})
    # The slot's own credential reads it on either node, as the agent does through the balancer.
    for server in (a, b):
        watch = SignalingWatch(f"http://127.0.0.1:{server.player_port}")
        status = await watch.status(name, token)
        await watch.aclose()
        assert status is not None and status.streaming and status.credential_id == jti
        assert [e["streamerId"] for e in (await listing(http, server, "", token))[1]] == [name]
    # A caller of another tenant scoped to the same id (a session token) is not shown it, on any node.
    foreign = mint(KEYS, tenant="other", session_id="s-other", streamer_id=name, ttl_s=60)
    ours = mint(KEYS, tenant="acme", session_id="s-acme", streamer_id=name, ttl_s=60)
    for server in (a, b):
        assert (await listing(http, server, f"/{name}", foreign))[0] == 404
        assert await listing(http, server, "", foreign) == (200, [])
        assert (await listing(http, server, f"/{name}", ours))[1]["credentialId"] == jti
    # The admin sees every streamer with its holder, wherever it is.
    _, everything = await listing(http, b, "", ADMIN)
    assert {e["streamerId"]: e.get("tenant") for e in everything} == {name: "acme"}
    await streamer.still_served()


async def test_an_sfu_lists_its_tenants_streamers_on_every_node(nodes: Nodes, http: aiohttp.ClientSession) -> None:
    a, b = await nodes(2)
    mine, theirs = f"mine-{id(a)}", f"theirs-{id(a)}"
    held = [await identified(http, a.streamer_port, mine, credential(mine, "acme")[0])]  # open while tested
    their_token, their_jti = credential(theirs, "other")
    held.append(await identified(http, a.streamer_port, theirs, their_token))
    await until_listed(http, b, theirs, their_jti)  # b has both: mine was listed first
    sfu_id, (sfu_token, sfu_jti) = f"sfu-{id(a)}", credential(f"sfu-{id(a)}", "acme")
    sfu = await identified(http, b.sfu_port, sfu_id, sfu_token)
    assert sorted(await listed_ids(sfu)) == sorted([mine, sfu_id])
    other_sfu = await identified(http, b.sfu_port, f"osfu-{id(a)}", credential(f"osfu-{id(a)}", "other")[0])
    assert sorted(await listed_ids(other_sfu)) == sorted([theirs, f"osfu-{id(a)}"])
    # The same answer on the streamers' own node (where the SFU on b is the remote one).
    await until_listed(http, a, sfu_id, sfu_jti)
    local_id, (local_token, local_jti) = f"lsfu-{id(a)}", credential(f"lsfu-{id(a)}", "acme")
    local_sfu = await identified(http, a.sfu_port, local_id, local_token)
    assert sorted(await listed_ids(local_sfu)) == sorted([mine, sfu_id, local_id])
    await until_listed(http, b, local_id, local_jti)
    assert sorted(await listed_ids(sfu)) == sorted([mine, sfu_id, local_id])
    # Subscribing across nodes to another tenant's streamer is refused as if it did not exist
    # (the streamer's node decides, and an SFU is never sent subscribeFailed); its own works.
    await other_sfu.send(type="subscribe", streamerId=mine)
    await other_sfu.send(type="subscribe", streamerId=theirs)
    _, body = await listing(http, a, f"/{theirs}", ADMIN)
    async with asyncio.timeout(WAIT):  # a hang guard: the subscription crosses to a
        while not body["subscribers"]:
            await asyncio.sleep(0.02)
            _, body = await listing(http, a, f"/{theirs}", ADMIN)
    assert body["subscribers"] == [
        {"playerId": body["subscribers"][0]["playerId"], "type": "SFU", "subscribedTo": theirs}
    ]
    assert (await listing(http, a, f"/{mine}", ADMIN))[1]["subscribers"] == []
    for peer in held:
        await peer.still_served()


async def test_a_hijacker_of_the_id_on_another_node_shows_another_credential(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    """The slot's streamer left (it restarts); what takes its id elsewhere never passes as it."""
    (a,) = await nodes(1)
    (b,) = await nodes(1, require_streamer_token=False)  # a node that also admits streamers without one
    name = f"slot-{id(a)}"
    token, jti = credential(name)
    watch = SignalingWatch(f"http://127.0.0.1:{a.player_port}")
    real = await identified(http, a.streamer_port, name, token)
    await until_listed(http, b, name, jti)
    # A valid credential for another id cannot claim this one (4403), on any node.
    intruder = Peer(await http.ws_connect(f"ws://127.0.0.1:{b.streamer_port}/?token={credential('other-id')[0]}"))
    await intruder.send(type="endpointId", id=name)
    assert (await intruder.closed())[0] == errors.ID_NOT_ALLOWED
    await real.ws.close()
    await until_gone(http, b, name)  # the directory let the id go
    # Another credential for the same id (a different jti), connected to the other node.
    other_token, other_jti = credential(name)
    hijacker = await identified(http, b.streamer_port, name, other_token)
    await until_listed(http, a, name, other_jti)
    status = await watch.status(name, token)
    assert status is not None and status.streaming and status.credential_id == other_jti != jti
    await hijacker.ws.close()
    # No credential at all (a node that admits streamers without one): no credential id listed.
    await until_gone(http, a, name)
    squatter = await identified(http, b.streamer_port, name, None)
    body = await until_listed(http, a, name, None)
    assert "credentialId" not in body and "tenant" not in body
    status = await watch.status(name, token)  # the agent's view: a holder, of no credential of its own
    assert status is not None and status.credential_id == UNKNOWN_HOLDER != jti
    await watch.aclose()
    await squatter.still_served()


async def test_the_agent_counts_its_slot_ready_only_for_its_own_credential_on_any_node(
    nodes: Nodes, http: aiohttp.ClientSession
) -> None:
    """The agent asks one node (through the balancer); its streamer is on another. READY
    only for the credential it launched; an id an older node listed (no credential id in
    the directory) is unknown, and is not counted (docs/signaling-cluster.md, upgrades)."""
    a, b = await nodes(2)
    name = f"agent-{id(a)}"
    token, jti = credential(name)
    watch = SignalingWatch(f"http://127.0.0.1:{a.player_port}")
    slot = Slot(SlotPlan(0, name), AgentSettings(), watch, gate=CredentialGate())
    slot.credential = slot._launched = read(token)  # noqa: SLF001 - what it launched its streamer with

    async def ready() -> bool:
        status = await slot._status()  # noqa: SLF001 - the agent's READY check
        return status is not None and status.streaming

    real = await identified(http, b.streamer_port, name, token)
    await until_listed(http, a, name, jti)
    assert await ready()
    await real.ws.close()
    await until_gone(http, a, name)
    other_token, other_jti = credential(name)  # the same id, another credential
    hijacker = await identified(http, b.streamer_port, name, other_token)
    await until_listed(http, a, name, other_jti)
    assert not await ready()
    await hijacker.ws.close()
    await until_gone(http, a, name)
    # A node of the previous release lists the id: its entry and event carry no holder.
    broker = b.node.broker
    assert isinstance(broker, RedisBroker)
    await broker._r.hset(broker._k_dir, name, "oldnode/1|1")  # noqa: SLF001
    await broker._r.spublish(broker._events_channel, orjson.dumps(["+", name, "oldnode/1", "1"]))  # noqa: SLF001
    body = await until_listed(http, a, name, None)
    assert body == {"streamerId": name, "streaming": True, "node": "oldnode"}
    assert not await ready()
    await watch.aclose()


async def test_open_signalling_lists_holders_without_credentials_and_the_agent_trusts_them(
    start_signaling: Any, http: aiohttp.ClientSession
) -> None:
    """Open mode (no key): no holder has a credential, so none is listed and none is asked
    for, even from an agent that was handed one (a matchmaker with a key in front)."""
    server: SignalingServer = await start_signaling()
    name = f"open-{id(server)}"
    token, _ = credential(name)
    streamer = await identified(http, server.streamer_port, name, None)
    watch = SignalingWatch(f"http://127.0.0.1:{server.player_port}")
    slot = Slot(SlotPlan(0, name), AgentSettings(), watch, gate=CredentialGate())
    slot.credential = slot._launched = read(token)  # noqa: SLF001
    status = await slot._status()  # noqa: SLF001
    assert status is not None and status.streaming and status.credential_id is None
    await watch.aclose()
    await streamer.still_served()
