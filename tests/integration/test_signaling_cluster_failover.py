"""Signalling nodes on a Redis Cluster whose shard primary fails over under them.

A node listens on its own inbox channel (sharded pub/sub). When the primary of the shard
that holds that channel freezes (its host vanished: no reset reaches anyone), the
subscription looks alive and hears nothing; the node finds out from its own heartbeat
records (docs/signaling-cluster.md, Redis loss), is not ready meanwhile, and subscribes
again once the cluster has promoted the replica. A manual ``CLUSTER FAILOVER`` must not
break anything either.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import aiohttp
import pytest

from signaling.app import SignalingServer
from signaling.broker_redis import RedisBroker
from tests.conftest import StartSignaling
from tests.support.redis_cluster import RedisCluster
from tests.support.waiting import eventually
from tests.support.ws_peers import Peer, connect_player, connect_streamer

pytestmark = pytest.mark.integration

WITHIN_S = 60.0  # a hang guard for a promotion on a busy box, never a timing assertion
TTL_S = 3.0  # above the cluster's 2 s node timeout: a promotion's stall is no node loss
_offers = itertools.count()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def node_id_off(cluster: RedisCluster, avoid: set[int], skip: str = "") -> str:
    """A node id whose inbox channel is on none of the shards (primary ports) in ``avoid``."""
    for n in itertools.count():
        candidate = f"fo{n}"
        if candidate != skip and cluster.shard_of(f"{{pf:sig:{candidate}}}:in")[0] not in avoid:
            return candidate
    raise AssertionError("unreachable")


def pick_nodes(cluster: RedisCluster) -> tuple[str, str]:
    """Ids for a streamer's node and a player's node. The player's node's inbox is alone on
    its shard: not with the URL's seed node (the client's way in must outlive the freeze),
    nor with the shared keys (its beats go on: only the inbox is cut, the case that was
    never noticed), nor with the other node's inbox."""
    avoid = {cluster.primary_of(min(cluster.procs)), cluster.shard_of("{pf:sig}:nodes")[0]}
    b = node_id_off(cluster, avoid)
    a = node_id_off(cluster, {cluster.shard_of(f"{{pf:sig:{b}}}:in")[0]}, skip=b)
    return a, b


async def until_it_arrives(sender: Peer, receiver: Peer, kind: str, **fields: str) -> None:
    """``kind`` messages from ``sender`` (on one node) until one reaches ``receiver`` (on the
    other): routed messages are at-most-once, so those sent while an inbox was away are lost."""

    async def one() -> bool:
        sdp = f"v=0 {kind} {next(_offers)}"
        await sender.send(type=kind, sdp=sdp, **fields)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while True:
                    msg = await receiver.recv()
                    if msg["type"] == kind and msg["sdp"] == sdp:
                        return True
        return False

    await eventually(one, f"an {kind} across nodes", WITHIN_S)


async def watch_readiness(http: aiohttp.ClientSession, server: SignalingServer, seen: list[int]) -> None:
    """``/readyz`` status codes as they change (each new one appended)."""
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{server.player_port}/readyz") as r:
                if not seen or seen[-1] != r.status:
                    seen.append(r.status)
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("how", ["frozen", "failover"])
async def test_a_nodes_inbox_follows_its_shard_to_the_promoted_replica(
    how: str, failover_cluster: RedisCluster, start_signaling: StartSignaling, http: aiohttp.ClientSession
) -> None:
    cluster = failover_cluster
    a_id, b_id = await asyncio.to_thread(pick_nodes, cluster)
    a = await start_signaling(state_url=cluster.url, node_id=a_id, node_ttl_s=TTL_S)
    b = await start_signaling(state_url=cluster.url, node_id=b_id, node_ttl_s=TTL_S)
    broker = b.node.broker
    assert isinstance(broker, RedisBroker)
    streamer = await connect_streamer(http, a.streamer_port, "Cam")
    player, player_id = await connect_player(http, b.player_port, streamer, "Cam")
    await until_it_arrives(streamer, player, "offer", playerId=player_id)

    primary, replicas = await asyncio.to_thread(cluster.shard_of, broker.inbox(b_id))
    seen: list[int] = []
    watcher = asyncio.create_task(watch_readiness(http, b, seen))
    await eventually(lambda: seen == [200], "b ready before", WITHIN_S)
    resubscribed = broker.stats["resubscribed"]
    if how == "frozen":
        cluster.freeze(primary)  # its replica is promoted after the cluster's node timeout
        await eventually(lambda: 503 in seen, "b not ready while its inbox is away", WITHIN_S)
    else:
        await asyncio.to_thread(cluster.failover, replicas[0])
    await eventually(lambda: await_new_primary(cluster, broker.inbox(b_id), primary), "the promotion", WITHIN_S)
    await eventually(lambda: seen[-1] == 200, "b ready again", WITHIN_S)

    await until_it_arrives(streamer, player, "offer", playerId=player_id)  # a -> b
    await until_it_arrives(player, streamer, "answer")  # and back
    watcher.cancel()
    if how == "frozen":  # not ready while away, then ready again (the order of first sightings)
        assert seen[0] == 200 and 503 in seen and seen[-1] == 200
        assert broker.stats["resubscribed"] > resubscribed
    await player.still_served()
    await streamer.still_served()


def await_new_primary(cluster: RedisCluster, key: str, old: int) -> bool:
    try:
        return cluster.shard_of(key)[0] != old
    except Exception:  # noqa: BLE001 - the cluster may answer nothing mid-promotion
        return False
