"""Several cores wired together by hand: the cluster rules with no Redis and no sockets.

``Wire`` plays the broker: it routes ``Relay`` actions to the core of the node an address
names, answers ``Claim`` with Epic's rule over every node's streamers, and copies
``Announce``/``Withdraw`` into the other cores' directory views.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from signaling import errors
from signaling import messages as m
from signaling.peer_links import (
    Address,
    DirectoryEntry,
    Kick,
    StreamerGone,
    Subscribe,
    SubscribeRefused,
    Unsubscribe,
    node_of,
)
from signaling.protocol import Announce, Claim, Close, Credential, Relay, Role, Send, SignalingCore, Withdraw


class Wire:
    def __init__(self, *nodes: str, **kwargs: Any) -> None:
        self.cores = {n: SignalingCore(node=n, cluster=True, player_id_prefix=f"P{n}-", **kwargs) for n in nodes}
        self.directory: dict[str, Address] = {}
        self.inbox: dict[Address, list[dict[str, Any]]] = {}
        self.closed: dict[Address, int] = {}

    def run(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Send):
                msg = a.message
                wire = dict(msg) if isinstance(msg, dict) else msgspec.json.decode(m.encode(msg))
                if a.origin is not None and node_of(a.origin) != node_of(a.to):
                    if not self.cores[node_of(a.to)].accepts(a.to, a.origin):
                        continue  # what the receiving broker drops
                self.inbox.setdefault(a.to, []).append(wire)
            elif isinstance(a, Close):
                self.closed[a.conn] = a.code
            elif isinstance(a, Relay):
                link = a.link
                assert isinstance(link, Subscribe | SubscribeRefused | Unsubscribe | StreamerGone | Kick)
                self.run(self.cores[node_of(link.to)].link(link))
            elif isinstance(a, Claim):
                self.run(self.cores[node_of(a.conn)].claimed(a.conn, self._claim(a)))
            elif isinstance(a, Announce):
                self.directory[a.streamer_id] = a.conn
                for core in self.cores.values():
                    core.listed(a.streamer_id, a.conn, a.streaming, a.holder)
            elif isinstance(a, Withdraw):
                self.directory.pop(a.streamer_id, None)
                for core in self.cores.values():
                    core.unlisted(a.streamer_id, a.conn)

    def _claim(self, claim: Claim) -> str:
        """What claim.lua does: Epic's rule over the whole directory, then list it (with
        the holder's credential)."""
        conn, wanted = claim.conn, claim.wanted
        if claim.exact and self.directory.get(wanted, conn) != conn:
            return ""
        pattern = re.compile(re.escape(wanted) + r"(\d*)")
        taken = [
            int(x.group(1) or 0) for sid, a in self.directory.items() if a != conn and (x := pattern.fullmatch(sid))
        ]
        committed = wanted if not taken else f"{wanted}{max(taken) + 1}"
        for sid, a in list(self.directory.items()):
            if a == conn:
                self.run([Withdraw(sid, conn)])
        self.run([Announce(committed, conn, False, claim.holder)])
        return committed

    def connect(self, node: str, role: Role) -> Address:
        conn, actions = self.cores[node].connect(role)
        self.run(actions)
        return conn

    def send(self, conn: Address, **msg: Any) -> None:
        self.run(self.cores[node_of(conn)].receive(conn, msg))

    def streamer(self, node: str, name: str) -> Address:
        conn = self.connect(node, Role.STREAMER)
        self.send(conn, type="endpointId", id=name)
        return conn

    def got(self, conn: Address) -> list[dict[str, Any]]:
        out, self.inbox[conn] = self.inbox.get(conn, []), []
        return out


def test_a_player_on_one_node_streams_from_a_streamer_on_another() -> None:
    w = Wire("a", "b")
    s = w.streamer("b", "Cam")
    assert w.got(s)[-1] == {"type": "endpointIdConfirm", "committedId": "Cam"}
    p = w.connect("a", Role.PLAYER)
    w.send(p, type="listStreamers")
    assert w.got(p)[-1] == {"type": "streamerList", "ids": ["Cam"]}
    w.send(p, type="subscribe", streamerId="Cam")
    assert w.got(s) == [{"type": "playerConnected", "playerId": "Pa-0", "dataChannel": True, "sfu": False}]
    w.send(s, type="offer", playerId="Pa-0", sdp="v=0")
    assert w.got(p) == [{"type": "offer", "playerId": "Pa-0", "sdp": "v=0"}]
    w.send(p, type="answer", sdp="v=1")
    assert w.got(s) == [{"type": "answer", "sdp": "v=1", "playerId": "Pa-0"}]


def test_streamer_ids_are_unique_across_nodes_by_epics_rule() -> None:
    w = Wire("a", "b", "c")
    first, second, third = w.streamer("a", "Cam"), w.streamer("b", "Cam"), w.streamer("c", "Cam")
    assert w.got(first)[-1]["committedId"] == "Cam"
    assert w.got(second)[-1]["committedId"] == "Cam1"
    assert w.got(third)[-1]["committedId"] == "Cam2"
    # Temporary ids too: two unidentified streamers on two nodes.
    w.connect("a", Role.STREAMER)
    w.connect("b", Role.STREAMER)
    assert sorted(sid for sid in w.directory if sid.startswith("Unknown")) == ["UnknownStreamer", "UnknownStreamer1"]


def test_the_player_limit_holds_across_nodes() -> None:
    w = Wire("a", "b", max_players_per_streamer=1)
    s = w.streamer("a", "Cam")
    first, second = w.connect("a", Role.PLAYER), w.connect("b", Role.PLAYER)
    w.send(first, type="subscribe", streamerId="Cam")
    w.got(second)
    w.send(second, type="subscribe", streamerId="Cam")
    assert w.got(second) == [{"type": "subscribeFailed", "message": "Streamer Cam is full. Max players = 1."}]
    assert [x["type"] for x in w.got(s)][-2:] == ["endpointIdConfirm", "playerConnected"]
    w.send(second, type="offer", sdp="v=0")  # refused: its messages no longer reach the streamer
    assert w.got(s) == []


def test_leaving_and_kicking_across_nodes() -> None:
    w = Wire("a", "b")
    s = w.streamer("a", "Cam")
    p1, p2 = w.connect("b", Role.PLAYER), w.connect("b", Role.PLAYER)
    for p in (p1, p2):
        w.send(p, type="subscribe", streamerId="Cam")
    w.got(s)
    w.run(w.cores["b"].disconnect(p1))
    assert w.got(s) == [{"type": "playerDisconnected", "playerId": "Pb-0"}]
    w.send(s, type="disconnectPlayer", playerId="Pb-1", reason="bye")
    assert w.closed[p2] == errors.INTERNAL_ERROR
    assert w.got(s) == [{"type": "playerDisconnected", "playerId": "Pb-1"}]


def test_a_streamer_leaving_closes_remote_players_and_tells_remote_sfus() -> None:
    w = Wire("a", "b", "c")
    s = w.streamer("a", "Cam")
    sfu = w.connect("b", Role.SFU)
    w.send(sfu, type="endpointId", id="SFU")  # an SFU is a streamer ...
    w.send(sfu, type="subscribe", streamerId="Cam")  # ... and a subscriber of Cam
    w.send(sfu, type="startStreaming")
    viewer = w.connect("c", Role.PLAYER)
    w.send(viewer, type="subscribe", streamerId="SFU")
    direct = w.connect("c", Role.PLAYER)
    w.send(direct, type="subscribe", streamerId="Cam")
    w.got(sfu)
    w.run(w.cores["a"].disconnect(s))
    assert w.closed[direct] == errors.STREAMER_GONE
    viewer_id = w.cores["c"].peer(viewer).player_id  # its player on another node: told as Epic's server does
    assert w.got(sfu) == [{"type": "streamerDisconnected"}, {"type": "playerDisconnected", "playerId": viewer_id}]
    assert w.closed[viewer] == errors.STREAMER_GONE  # watched Cam through the SFU
    assert sfu not in w.closed  # the SFU stays
    assert "Cam" not in dict(w.cores["c"].listings())


def test_node_loss_tells_each_side_exactly_once() -> None:
    w = Wire("a", "b", "c")
    sa = w.streamer("a", "OnA")
    sb = w.streamer("b", "OnB")
    pb = w.connect("b", Role.PLAYER)
    w.send(pb, type="subscribe", streamerId="OnA")
    pc = w.connect("c", Role.PLAYER)
    w.send(pc, type="subscribe", streamerId="OnB")
    pa = w.connect("a", Role.PLAYER)
    w.send(pa, type="subscribe", streamerId="OnA")  # same node: untouched by b's loss
    w.got(sa)
    w.got(sb)
    for node in ("a", "c"):
        w.run(w.cores[node].node_lost("b"))
    assert w.got(sa) == [{"type": "playerDisconnected", "playerId": "Pb-0"}]
    assert w.closed == {pc: errors.STREAMER_GONE}
    assert [sid for sid, _ in w.cores["c"].listings()] == ["OnA"]
    w.send(pa, type="answer", sdp="v=1")
    assert w.got(sa) == [{"type": "answer", "sdp": "v=1", "playerId": "Pa-0"}]
    w.run(w.cores["a"].node_lost("b"))  # told twice: nothing more happens
    assert w.got(sa) == [] and w.closed == {pc: errors.STREAMER_GONE}


def test_a_cut_off_node_drops_only_its_cross_node_links() -> None:
    w = Wire("a", "b")
    s = w.streamer("a", "Cam")
    local, remote = w.connect("a", Role.PLAYER), w.connect("b", Role.PLAYER)
    for p in (local, remote):
        w.send(p, type="subscribe", streamerId="Cam")
    w.got(s)
    w.run(w.cores["a"].cut_off())
    assert w.got(s) == [{"type": "playerDisconnected", "playerId": "Pb-0"}]
    assert w.closed == {}  # b's player is b's business (b sees a as lost)
    assert list(w.cores["a"].local_listings()) == [DirectoryEntry("Cam", s, True)]


def test_a_claim_answered_after_the_streamer_left_gives_the_id_back() -> None:
    core = SignalingCore(node="a", cluster=True)
    conn, actions = core.connect(Role.STREAMER)
    assert any(isinstance(a, Claim) for a in actions)
    assert core.disconnect(conn) == []  # nothing listed yet
    assert core.claimed(conn, "UnknownStreamer") == [Withdraw("UnknownStreamer", conn)]


def test_a_claim_that_could_not_reach_the_directory_uses_the_local_view() -> None:
    core = SignalingCore(node="a", cluster=True)
    core.listed("Cam", Address("b/0"), True)
    conn, _ = core.connect(Role.STREAMER)
    core.claimed(conn, None)
    out = core.receive(conn, {"type": "endpointId", "id": "Cam"})
    assert out == [Claim(conn, "Cam")]
    confirm = [a for a in core.claimed(conn, None) if isinstance(a, Send)]
    assert confirm[0].message == m.EndpointIdConfirm(committedId="Cam1")


def credential(streamer_id: str, tenant: str, jti: str) -> Credential:
    return Credential(streamer_id, tenant, jti, 4_000_000_000)


def test_every_node_sees_a_holders_credential_and_tenant() -> None:
    """The directory carries each holder's jti and tenant, so an SFU on another node lists
    its tenant's streamers (as on one node) and nothing else."""
    w = Wire("a", "b")
    s, actions = w.cores["b"].connect(Role.STREAMER, credential=credential("cam-x", "acme", "jti-1"))
    w.run(actions)
    w.send(s, type="endpointId", id="cam-x")
    listing = w.cores["a"].listing("cam-x")
    assert listing is not None and (listing.credential_id, listing.tenant) == ("jti-1", "acme")
    w.streamer("b", "Open")  # open mode: no credential, no tenant
    remote = w.cores["a"].listing("Open")
    assert remote is not None and remote.credential_id is None and remote == w.cores["b"].listing("Open")
    ours, _ = w.cores["a"].connect(Role.SFU, credential=credential("sfu-1", "acme", "jti-s"))
    theirs, _ = w.cores["a"].connect(Role.SFU, credential=credential("sfu-2", "other", "jti-t"))
    assert w.cores["a"].listed_streamer_ids(w.cores["a"].peer(ours)) == ["cam-x"]
    assert w.cores["a"].listed_streamer_ids(w.cores["a"].peer(theirs)) == []
    # One the directory lists without a holder (an older node's entry): unknown, not shown.
    w.cores["a"].listed("cam-old", Address("c/0"), True)
    assert w.cores["a"].listed_streamer_ids(w.cores["a"].peer(ours)) == ["cam-x"]


def test_a_relisted_streamer_keeps_its_holder() -> None:
    """After the directory was lost, a node lists its streamers again with their credentials."""
    w = Wire("a")
    s, actions = w.cores["a"].connect(Role.STREAMER, credential=credential("cam-x", "acme", "jti-1"))
    w.run(actions)
    w.send(s, type="endpointId", id="cam-x")
    (entry,) = w.cores["a"].local_listings()
    assert entry.holder is not None and entry.holder == ("jti-1", "acme")
